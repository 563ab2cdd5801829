#!/usr/bin/env bash
# Dataplane benchmark (issue 5): 64-byte UDP from many leased phones through the gateway, in the
# same lab and the same run for up to three gateways:
#   dialtone   `dialtone run` with its AF_XDP dataplane (NAPPT), worker on CPU 1 (config cpus = [1])
#   nftables   Linux forwarding in P-gw with nftables SNAT: a map phone address -> public address
#              built from the same DHCP leases (dialtone's DHCP with the dataplane disabled), ports
#              preserved; the gateway's receive processing steered to CPU 1 with RPS on lan0
#   forwarder  `dialtone-xdp-forward` (plain AF_XDP forwarding, MAC rewrite only: the I/O ceiling)
#              on CPU 1 (taskset and config cpus = [1])
# With XDP attached (dialtone, forwarder), veth receives through NAPI, which by default runs in
# softirq on the sending CPU (the generator's CPU 0): the gateway's XDP program and the copy into
# the UMEM load the generator's core, which then offers at most about 0.4-0.5 Mpps through them,
# while RPS moves nftables' receive work to CPU 1. --napi threaded moves the XDP gateways'
# receive work to CPU 1 as well: threaded NAPI on lan0 and wan0 (/sys/class/net/<dev>/threaded,
# set once the gateway has attached its program), the NAPI threads (napi/<dev>-<id>, found with
# perf/napi_threads.py) pinned to CPU 1 at SCHED_FIFO 50, so that they preempt the busy-polling
# worker as softirq would (at the gateway's nice, veth's 256-frame ring overflowed behind the
# worker: 8% loss at 100,000 frames/s). It works (CPU 0's softirq time fell from about 85% to
# 15%, the generator offered 1.3 Mpps), but on this machine, a 2-vCPU guest where every thread
# wake-up and context switch costs tens of µs, it halved the XDP gateways' best rate (dialtone
# 375,000 -> 175,000 frames/s, p50 26 -> 55 µs, 2026-12-01): softirq stays the default.
# The far end's receive processing (the receiver's) is steered to CPU 0 by RPS on P-net's eth0.
# Each step prints the CPU time of both cores (busy and softirq, from /proc/stat).
# The gateway, generator and receiver run at nice -10: the machine's cores are shared with other
# work (builds), which must not take the measured processes' cores half of the time.
# Phones lease from dialtone's DHCP (dialtone-gen lease). dialtone-gen sends from P-phones over
# AF_XDP and dialtone-recv receives in P-net on a TPACKET_V3 ring, both pinned to CPU 0 (taskset
# and --cpu 0); the receiver checks every translation (none for the forwarder, which translates
# nothing) and records one-way latency.
#
# For each gateway: the highest offered rate whose loss stays under 0.1% (coarse steps, then
# bisection; a step counts only if the generator really offered the rate; a failing step is tried
# twice), one step as fast as the generator can send (to tell a gateway limit from a generator
# limit), then p50/p99/p99.9 latency at half of dialtone's best rate (half of the first
# gateway's when dialtone is not run).
#
# Environment: FRAMES_PER_WORKER (default 16384) sets the gateways' dataplane.frames_per_worker.
# Usage: perf/dataplane.sh [--prefix P] [--phones N] [--flows K] [--period S] [--runs N]
#                          [--gateways "dialtone nftables forwarder"] [--rates "R1 R2 ..."]
#                          [--napi softirq|threaded]
# Needs root, scripts/setup.sh's packages (nftables, jq), cargo.
set -euo pipefail

prefix=pdp
phones=1000
flows=4
period=4
runs=3
gateways="dialtone nftables forwarder"
rates="25000 50000 100000 150000 200000 300000 400000 600000 800000 1000000 1500000 2000000"
napi=softirq
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --phones) phones=$2; shift 2 ;;
    --flows) flows=$2; shift 2 ;;
    --period) period=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --gateways) gateways=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --napi) napi=$2; shift 2 ;;
    *) sed -n '2,41p' "$0"; exit 2 ;;
  esac
done
case $napi in softirq|threaded) ;; *) echo "--napi softirq|threaded" >&2; exit 2 ;; esac

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/dialtone-perf-dataplane.XXXXXX)
gwns=$prefix-gw
phns=$prefix-phones
netns=$prefix-net
gateway_pid=
# The generator and receiver run at nice -10 on CPU 0, where the receiver's softirq runs too (and,
# with --napi softirq, the XDP gateways' veth receive). Softirq work that overflows its budget
# moves to ksoftirqd, which at nice 0 would wait behind the generator for milliseconds: for the
# run, ksoftirqd gets the same nice -10, and its own nice back at exit.
declare -A softirqd_nice
for pid in $(pgrep -x 'ksoftirqd/[0-9]+'); do
  softirqd_nice[$pid]=$(ps -o ni= -p "$pid" | tr -d ' ')
  renice -n -10 -p "$pid" >/dev/null
done
# With autogroup scheduling (kernel.sched_autogroup_enabled = 1), the scheduler first shares a
# core between sessions, and nice counts only inside a session: the nice -10 would not keep
# another session's build off the measured cores. For the run, the script's session gets nice -10
# as well (/proc/PID/autogroup), and its own back at exit.
autogroup_nice=
if [ -w /proc/$$/autogroup ]; then
  autogroup_nice=$(awk '{ print $NF }' /proc/$$/autogroup)
  echo -10 >/proc/$$/autogroup
fi
cleanup() {
  napi_threads_off
  [ -n "$autogroup_nice" ] && echo "$autogroup_nice" >/proc/$$/autogroup
  for pid in "${!softirqd_nice[@]}"; do renice -n "${softirqd_nice[$pid]}" -p "$pid" >/dev/null 2>&1 || true; done
  [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null && wait "$gateway_pid" 2>/dev/null
  "$repo/scripts/lab.sh" down --prefix "$prefix" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p dialtone -p dialtone-traffic --bins
bin=$repo/target/release
for g in $gateways; do
  if [ "$g" = forwarder ]; then
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p dialtone-xdp --bin dialtone-xdp-forward 2>/dev/null || {
      echo "dialtone-xdp-forward is not in this tree: the forwarder is skipped" >&2
      gateways=$(echo "$gateways" | sed 's/forwarder//')
    }
  fi
done

"$repo/scripts/lab.sh" up --prefix "$prefix" >/dev/null
wan_mac=$(ip netns exec "$gwns" cat /sys/class/net/wan0/address)
# The far end drops the test traffic at ingress, after the receiver's packet tap has seen it:
# otherwise every frame would cost an ICMP port unreachable back through the gateway.
ip netns exec "$netns" nft -f - <<EOF
table netdev sink {
  chain in {
    type filter hook ingress device "eth0" priority 0; policy accept;
    ip daddr 203.0.113.10 udp dport 9 drop
  }
}
EOF
# Receive processing: the gateway's on CPU 1, the far end's (receiver) on CPU 0.
ip netns exec "$gwns" sh -c 'for q in /sys/class/net/lan0/queues/rx-*/rps_cpus /sys/class/net/wan0/queues/rx-*/rps_cpus; do echo 2 > $q; done'
ip netns exec "$netns" sh -c 'for q in /sys/class/net/eth0/queues/rx-*/rps_cpus; do echo 1 > $q; done'

# Bench configuration: 64-port blocks, 32,768 LAN offsets, 33 public addresses in use.
write_config() { # $1 = true|false: the dataplane runs
  cat >"$work/dialtone.toml" <<EOF
[lan]
interface = "lan0"
address = "100.64.0.1/16"

[wan]
interface = "wan0"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"

[store]
path = "$work/dialtone.redb"

[logging]
level = "warn"

[dataplane]
enabled = $1
cpus = [1]
frames_per_worker = ${FRAMES_PER_WORKER:-16384}

[dhcp]
dns = ["100.64.0.1"]

[tftp]
enabled = false

[preprov]
enabled = false

[provisioning]
enabled = false

[management]
listen = "127.0.0.1:9000"
token = "perf-management-token"

[[class]]
name = "bench"
vendor_class = { exact = "dialtone-bench" }
ports_per_phone = 64
lan_pool = "100.64.128.0/17"
public_pool = "198.51.100.0/26"
lease_time = "1h"
tftp_root = "$work"
EOF
}

wait_dhcp() {
  for _ in $(seq 100); do ip netns exec "$gwns" ss -uln | grep -q ':67 ' && return; sleep 0.1; done
  echo "the gateway's DHCP did not start:" >&2; cat "$work/gateway.log" >&2; exit 1
}
start_dialtone() { # $1 = true|false
  write_config "$1"
  rm -f "$work/dialtone.redb"
  ip netns exec "$gwns" nice -n -10 taskset -c 1 "$bin/dialtone" run --config "$work/dialtone.toml" 2>"$work/gateway.log" &
  gateway_pid=$!
  wait_dhcp
  sleep 0.5
  [ "$1" = true ] && napi_threads_on
  return 0
}
stop_gateway() {
  napi_threads_off
  [ -n "$gateway_pid" ] && { kill "$gateway_pid" 2>/dev/null || true; wait "$gateway_pid" 2>/dev/null || true; }
  gateway_pid=
}
# --napi threaded: veth's receive work for the XDP gateways (the XDP program, the copy into the
# UMEM) in NAPI threads on CPU 1 instead of softirq on the sending CPU. veth has NAPI instances
# only while an XDP program is attached (before, the sysfs write fails with EOPNOTSUPP), and
# makes new ones, with new threads, at every attach: so this runs after each start of an XDP
# gateway, and napi_threads_off before its stop, while the instances still exist (threaded = 1
# would otherwise stay set on the device). The threads' pids come from the kernel
# (napi_threads.py): their names alone (napi/lan0-<id>) do not tell one namespace's lan0 from
# another's.
napi_threads_on() {
  [ "$napi" = threaded ] || return 0
  local dev id pid n=0
  for dev in lan0 wan0; do ip netns exec "$gwns" sh -c "echo 1 > /sys/class/net/$dev/threaded"; done
  while read -r dev id pid; do
    taskset -p -c 1 "$pid" >/dev/null
    chrt -f -p 50 "$pid"
    n=$((n + 1))
  done < <(ip netns exec "$gwns" /usr/bin/python3 "$repo/perf/napi_threads.py" lan0 wan0)
  [ "$n" -gt 0 ] || { echo "no NAPI threads on lan0/wan0 after threaded = 1" >&2; exit 1; }
  echo "  $n NAPI threads of lan0/wan0 on CPU 1, SCHED_FIFO 50" >&2
}
napi_threads_off() {
  [ "$napi" = threaded ] || return 0
  ip netns exec "$gwns" sh -c 'for d in lan0 wan0; do echo 0 > /sys/class/net/$d/threaded; done' 2>/dev/null || true
}

lease_phones() {
  ip netns exec "$phns" taskset -c 0 "$bin/dialtone-gen" lease --config "$work/dialtone.toml" --interface eth0 \
    --vendor-class dialtone-bench --phones "$phones" --out "$work/leases.json" >"$work/lease.json"
  local got
  got=$(jq .leased "$work/lease.json")
  if [ "$got" -ne "$phones" ]; then echo "only $got of $phones phones leased" >&2; cat "$work/lease.json" >&2; exit 1; fi
}
nft_snat_on() {
  ip netns exec "$gwns" sysctl -qw net.ipv4.ip_forward=1
  # The kernel routes by its table (dialtone by wan.next_hop): the far end via the next hop.
  ip -n "$gwns" route replace default via 192.0.2.254
  {
    echo "table ip dialtone_snat {"
    echo "  map phones {"
    echo "    type ipv4_addr : ipv4_addr"
    echo "    elements = {"
    jq -r '.leases | map("      \(.address) : \(.public)") | join(",\n")' "$work/leases.json"
    echo "    }"
    echo "  }"
    echo "  chain post {"
    echo "    type nat hook postrouting priority srcnat; policy accept;"
    echo "    oifname \"wan0\" snat ip to ip saddr map @phones"
    echo "  }"
    echo "}"
  } >"$work/snat.nft"
  ip netns exec "$gwns" nft -f "$work/snat.nft"
}
nft_snat_off() {
  ip netns exec "$gwns" nft delete table ip dialtone_snat 2>/dev/null || true
  ip netns exec "$gwns" sysctl -qw net.ipv4.ip_forward=0
  ip -n "$gwns" route del default 2>/dev/null || true
  ip netns exec "$gwns" conntrack -F >/dev/null 2>&1
}
start_forwarder() {
  write_config false
  ip netns exec "$gwns" nice -n -10 taskset -c 1 "$bin/dialtone-xdp-forward" --config "$work/dialtone.toml" 2>"$work/gateway.log" &
  gateway_pid=$!
  sleep 2
  kill -0 "$gateway_pid" 2>/dev/null || { echo "dialtone-xdp-forward exited:" >&2; cat "$work/gateway.log" >&2; exit 1; }
  napi_threads_on
}

# Where frames were dropped outside the gateway's own counters: veth drops on each of the four
# ends, the kernel's per-CPU backlog drops (/proc/net/softnet_stat, all CPUs) and the receiver's
# ring drops; and, when dialtone's dataplane runs, its AF_XDP sockets' own drops (read by the
# workers every 250 ms). Prints "phones.eth0 tx, gw.lan0 rx, gw.wan0 tx, net.eth0 rx, backlog,
# socket rx ring full, socket fill ring empty".
drop_counters() {
  local a b c d e m
  a=$(ip -n "$phns" -s -j link show eth0 | jq '.[0].stats64.tx.dropped')
  b=$(ip -n "$gwns" -s -j link show lan0 | jq '.[0].stats64.rx.dropped')
  c=$(ip -n "$gwns" -s -j link show wan0 | jq '.[0].stats64.tx.dropped')
  d=$(ip -n "$netns" -s -j link show eth0 | jq '.[0].stats64.rx.dropped')
  e=0
  while read -r _ dropped _; do e=$((e + 0x$dropped)); done </proc/net/softnet_stat
  m=$(ip netns exec "$gwns" curl -s -m 2 -H "Authorization: Bearer perf-management-token" \
        http://127.0.0.1:9000/metrics 2>/dev/null || true)
  echo "$a $b $c $d $e $(awk '/^dialtone_dataplane_socket_drops_total.*rx_ring_full/ { r += $NF }
      /^dialtone_dataplane_socket_drops_total.*fill_ring_empty/ { f += $NF } END { print r + 0, f + 0 }' <<<"$m")"
}
# CPU time of CPU 0 and 1 from /proc/stat (user nice system idle iowait irq softirq steal).
cpu_times() { awk '$1 == "cpu0" || $1 == "cpu1" { printf "%s %s %s %s %s %s %s %s ", $2, $3, $4, $5, $6, $7, $8, $9 }' /proc/stat; }
cpu_delta() { # before, after: "cpu0 busy B% (softirq S%), cpu1 ..." over the interval
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); split(b, y, " ")
    for (c = 0; c < 2; c++) {
      t = 0; for (i = 1; i <= 8; i++) t += y[c * 8 + i] - x[c * 8 + i]
      idle = y[c * 8 + 4] - x[c * 8 + 4] + y[c * 8 + 5] - x[c * 8 + 5]
      si = y[c * 8 + 7] - x[c * 8 + 7]; st = y[c * 8 + 8] - x[c * 8 + 8]
      if (t <= 0) t = 1
      printf "%scpu%d busy %.0f%% (softirq %.0f%%, steal %.0f%%)", (c ? ", " : ""), c, (t - idle) * 100 / t, si * 100 / t, st * 100 / t
    }
  }'
}
drop_delta() { # before, after
  local -a x=($1) y=($2)
  echo "veth drops phones.eth0 tx $((y[0] - x[0])), gw.lan0 rx $((y[1] - x[1])), gw.wan0 tx $((y[2] - x[2])), net.eth0 rx $((y[3] - x[3])); backlog drops $((y[4] - x[4])); dialtone sockets rx ring full $((y[5] - x[5])), fill ring empty $((y[6] - x[6]))"
}

# One step: prints "<sent> <received> <achieved pps> <loss %> <mistranslated> <out_of_block> <port_changed> <p50> <p99> <p999> <max>"
step() { # $1 = rate, $2 = check|nocheck
  local rate=$1 check=() ready=$work/ready
  [ "$2" = nocheck ] && check=(--no-check)
  rm -f "$ready"
  ip netns exec "$netns" nice -n -10 "$bin/dialtone-recv" --config "$work/dialtone.toml" --interface eth0 --cpu 0 \
    --idle 1 --duration $((period + 15)) --ready-file "$ready" "${check[@]}" >"$work/recv.json" &
  local recv_pid=$!
  for _ in $(seq 100); do [ -f "$ready" ] && break; sleep 0.05; done
  local before cpu_before cpu_after
  before=$(drop_counters)
  cpu_before=$(cpu_times)
  ip netns exec "$phns" nice -n -10 "$bin/dialtone-gen" send --config "$work/dialtone.toml" --interface eth0 \
    --leases "$work/leases.json" --rate "$rate" --duration "$period" --cpu 0 --flows "$flows" >"$work/send.json"
  cpu_after=$(cpu_times)
  wait "$recv_pid"
  echo "    $(drop_delta "$before" "$(drop_counters)"); receiver ring drops $(jq -r '.ring_drops // "n/a"' "$work/recv.json")" >&2
  echo "    while sending: $(cpu_delta "$cpu_before" "$cpu_after")" >&2
  jq -r --slurpfile r "$work/recv.json" '
    .send as $s | $r[0] as $r |
    [$s.sent, $r.received, ($s.achieved_pps | floor),
     (if $s.sent > 0 then (($s.sent - $r.received) * 100 / $s.sent) else 100 end),
     $r.mistranslated, $r.out_of_block, $r.port_changed,
     $r.latency.p50_ns, $r.latency.p99_ns, $r.latency.p999_ns, $r.latency.max_ns] | map(tostring) | join(" ")' \
    "$work/send.json"
}

passes() { # step line, rate: loss under 0.1% and the generator offered at least 98% of the rate
  awk -v rate="$2" '{ exit !($4 < 0.1 && $3 >= 0.98 * rate) }' <<<"$1"
}

# Coarse steps up the rate list, then bisection between the best pass and the first failure.
# Prints "<best rate> <its step line>".
search() { # $1 = name, $2 = check|nocheck
  local best=0 best_line="" fail=0 r line lo hi mid
  for r in $rates; do
    line=$(try_rate "$1" "$r" "$2")
    if passes "$line" "$r"; then best=$r; best_line=$line; else fail=$r; break; fi
  done
  if [ "$fail" -gt 0 ]; then
    lo=$best; hi=$fail
    for _ in 1 2 3; do
      mid=$(( (lo + hi) / 2 ))
      line=$(try_rate "$1" "$mid" "$2")
      if passes "$line" "$mid"; then lo=$mid; best=$mid; best_line=$line; else hi=$mid; fi
    done
  fi
  echo "$best $best_line"
}

# A step that fails is tried once more: the cores are shared, and one stall of the generator
# (another process on CPU 0) must not end the search.
try_rate() { # $1 = name, $2 = rate, $3 = check|nocheck
  local line
  line=$(step "$2" "$3")
  echo "  $1 $2 pps: $line" >&2
  if ! passes "$line" "$2"; then
    line=$(step "$2" "$3")
    echo "  $1 $2 pps (again): $line" >&2
  fi
  echo "$line"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A best lat_p50 lat_p99 lat_p999 mis runs_info maxinfo
for g in dialtone nftables forwarder; do best[$g]=""; lat_p50[$g]=""; lat_p99[$g]=""; lat_p999[$g]=""; mis[$g]=0; runs_info[$g]=""; maxinfo[$g]=""; done

for run in $(seq "$runs"); do
  half=
  for g in $gateways; do
    echo "run $run/$runs: $g" >&2
    case $g in
      dialtone) start_dialtone true; lease_phones; res=$(search dialtone check) ;;
      nftables) start_dialtone false; lease_phones; nft_snat_on; res=$(search nftables check) ;;
      forwarder)
        # Leases from dialtone's DHCP first (the generator needs phones), then the forwarder alone.
        start_dialtone false; lease_phones; stop_gateway; start_forwarder; res=$(search forwarder nocheck) ;;
    esac
    b=${res%% *}
    best[$g]="${best[$g]} $b"
    # As fast as the generator can: is the gateway or the generator the limit?
    check=check; [ "$g" = forwarder ] && check=nocheck
    line=$(step 0 "$check")
    echo "  $g at the generator's maximum: $line" >&2
    read -r _ _ gmax gloss _ <<<"$line"
    maxinfo[$g]="${maxinfo[$g]} ${gmax}@${gloss}%"
    [ -z "$half" ] && [ "$b" -gt 0 ] && half=$(( b / 2 ))
    if [ -z "$half" ]; then
      echo "  $g: no rate passed, no latency run" >&2
      [ "$g" = nftables ] && nft_snat_off
      stop_gateway
      continue
    fi
    check=check; [ "$g" = forwarder ] && check=nocheck
    line=$(step "$half" "$check")
    echo "  $g latency at $half pps: $line" >&2
    read -r _ _ _ _ m _ _ p50 p99 p999 _ <<<"$line"
    lat_p50[$g]="${lat_p50[$g]} $p50"; lat_p99[$g]="${lat_p99[$g]} $p99"; lat_p999[$g]="${lat_p999[$g]} $p999"
    mis[$g]=$(( ${mis[$g]} + m ))
    runs_info[$g]="${runs_info[$g]} [$b pps; $half pps: p50 $p50 p99 $p99 ns]"
    [ "$g" = nftables ] && nft_snat_off
    stop_gateway
  done
done

us() { awk -v ns="$1" 'BEGIN { if (ns == "") print "n/a"; else printf "%.1f", ns / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
declare -A med p50 p99 p999
for g in $gateways; do
  med[$g]=$(echo ${best[$g]} | median)
  p50[$g]=$(echo ${lat_p50[$g]} | median); p99[$g]=$(echo ${lat_p99[$g]} | median); p999[$g]=$(echo ${lat_p999[$g]} | median)
done
d=${med[dialtone]:-0}; n=${med[nftables]:-0}; f=${med[forwarder]:-0}

echo
echo "nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), $(date -u +%FT%TZ)"
echo "load average at the end: $(cut -d" " -f1-3 /proc/loadavg) (other processes share these cores)"
echo "$phones phones x $flows ports, 64-byte frames, $period s per step, $runs runs; latency at $half pps (half of the first gateway's best)"
if [ "$napi" = threaded ]; then
  echo "XDP gateways' veth receive: threaded NAPI on CPU 1 (SCHED_FIFO 50)"
else
  echo "XDP gateways' veth receive: softirq on the sending CPU (CPU 0)"
fi
for g in $gateways; do echo "per run $g:${runs_info[$g]}; mistranslated in all latency runs: ${mis[$g]}"; done
for g in $gateways; do echo "generator at its maximum through $g, per run (pps sent @ loss):${maxinfo[$g]}"; done
echo
echo "| gateway | best rate, loss < 0.1% (median of $runs) | p50 µs | p99 µs | p99.9 µs |"
echo "|---|---|---|---|---|"
for g in $gateways; do
  echo "| $g | ${med[$g]} pps | $(us "${p50[$g]}") | $(us "${p99[$g]}") | $(us "${p999[$g]}") |"
done
echo
echo "| ratio | value |"
echo "|---|---|"
echo "| dialtone / nftables | $(ratio "$d" "$n") x |"
echo "| dialtone / forwarder | $(ratio "$d" "$f") x |"
