#!/usr/bin/env bash
# dialtone lab: three network namespaces joined by multi-queue veth pairs.
#
#   P-phones                P-gw                          P-net
#   eth0  <---------->  lan0 100.64.0.1/16
#   (DHCP from dialtone)    wan0 192.0.2.1/24  <------->  eth0 192.0.2.254/24 (next hop)
#                                                         lo   203.0.113.10/24 (far-end servers)
#                                                         route 198.51.100.0/24 via 192.0.2.1
#
# Usage: scripts/lab.sh up|down|status [--prefix P] [--queues N]
#   up      builds the lab (idempotent: running it again changes nothing)
#   down    removes every namespace of the prefix (and so its veths) after stopping their processes
#   status  prints the namespaces, links and addresses
# Nothing outside the three namespaces is changed.
#
# dialtone's dataplane attaches its XDP program to lan0 and wan0 itself (native mode on veth) and
# sends through copy-mode AF_XDP sockets, whose frames enter the peer's stack as ordinary packets:
# the peers (the phones' and the far network's eth0) need no XDP program of their own (that is
# needed only for XDP_TX/XDP_REDIRECT into a veth, which dialtone does not use). Each veth has
# --queues queues (default: one per CPU); with n dataplane workers, worker i polls queues
# i, i+n, ... so any queue count works.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

action=${1:-}
[ -n "$action" ] || usage
shift
prefix=dt
queues=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
    --queues) queues=${2:?--queues needs a value}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "lab.sh: unknown argument $1" >&2; usage ;;
  esac
done
case "$prefix" in
  *[!A-Za-z0-9_-]*|"") echo "lab.sh: prefix must be letters, digits, - or _" >&2; exit 2 ;;
esac
case "$queues" in
  ''|*[!0-9]*|0) echo "lab.sh: --queues must be a positive number" >&2; exit 2 ;;
esac

phones=$prefix-phones
gw=$prefix-gw
net=$prefix-net

have_ns() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
have_link() { ip -n "$1" link show "$2" >/dev/null 2>&1; }
add_addr() { # ns dev cidr: add the address unless present
  ip -n "$1" -4 addr show dev "$2" | grep -qw "inet ${3}" || ip -n "$1" addr add "$3" dev "$2"
}
no_offload() { # veth checksum offload would leave partial checksums on frames: full checksums only
  ip netns exec "$1" ethtool -K "$2" tx off rx off >/dev/null 2>&1 || true
}

up() {
  for ns in "$phones" "$gw" "$net"; do
    have_ns "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
  done

  if ! have_link "$gw" lan0; then
    ip -n "$gw" link add lan0 numtxqueues "$queues" numrxqueues "$queues" type veth \
      peer name eth0 netns "$phones" numtxqueues "$queues" numrxqueues "$queues"
  fi
  if ! have_link "$gw" wan0; then
    ip -n "$gw" link add wan0 numtxqueues "$queues" numrxqueues "$queues" type veth \
      peer name eth0 netns "$net" numtxqueues "$queues" numrxqueues "$queues"
  fi

  add_addr "$gw" lan0 100.64.0.1/16
  add_addr "$gw" wan0 192.0.2.1/24
  add_addr "$net" eth0 192.0.2.254/24
  add_addr "$net" lo 203.0.113.10/24
  for pair in "$gw lan0" "$gw wan0" "$phones eth0" "$net eth0"; do
    set -- $pair
    ip -n "$1" link set "$2" up
    no_offload "$1" "$2"
  done
  # The public pools are routed to the gateway, as a carrier's core would.
  ip -n "$net" route replace 198.51.100.0/24 via 192.0.2.1
  # The gateway forwards only through dialtone's dataplane, never through the kernel.
  ip netns exec "$gw" sysctl -qw net.ipv4.ip_forward=0
  echo "lab $prefix is up: $phones, $gw, $net ($queues queues per veth)"
}

down() {
  for ns in "$phones" "$gw" "$net"; do
    if have_ns "$ns"; then
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
      ip netns del "$ns"
    fi
  done
  echo "lab $prefix is down"
}

status() {
  for ns in "$phones" "$gw" "$net"; do
    if have_ns "$ns"; then
      echo "== $ns"
      ip -n "$ns" -br addr
    else
      echo "== $ns (absent)"
    fi
  done
}

case "$action" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
