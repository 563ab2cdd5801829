#!/usr/bin/env bash
# DHCP benchmark (issue 3): perfdhcp DORA against dialtone (release build, durable leases: every
# ACK waits for its fsync'd group commit) and against Kea (memfile), in the same lab and the same
# run. For each server the -r rate is stepped up; the best rate is the highest completed
# 4-way-exchange rate whose drops stay at or below 0.5% (past its peak a server completes fewer).
#
# Both servers: the same vendor-class rule (option 60 == "dialtone-phone" -> class softphone),
# the same pool (100.66.0.0/15, 131,072 addresses), relayed traffic (perfdhcp -l, giaddr
# 100.64.0.2), pinned to CPU 1 (dialtone's dataplane worker too, which pins itself); perfdhcp
# pinned to CPU 0. 100,000 distinct clients (-R).
#
# For the length of the run the default socket receive buffer (net.core.rmem_default, not
# namespaced) is raised to --rmem bytes (default 4 MiB, at most net.core.rmem_max) and restored on
# exit: perfdhcp reads one relay socket for all its clients, and with the kernel's default 208 KiB
# it overflowed on bursts of replies (UdpRcvbufErrors in its namespace), which the drop rule then
# charged to the server. Kea's socket gets the same default; dialtone sets its own (1 MiB).
# --rmem 0 leaves the setting alone.
#
# Usage: perf/dhcp.sh [--prefix P] [--period SECONDS] [--runs N] [--rates "R1 R2 ..."] [--rmem BYTES]
# Needs root, scripts/setup.sh's packages (kea-admin for perfdhcp, kea-dhcp4-server), cargo.
set -euo pipefail

prefix=pdh
period=5
runs=1
rmem=4194304
rates="500 1000 1500 2000 3000 4000 5000 6000 7000 8000 10000 12000 15000 18000 22000 26000 30000"
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --period) period=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --rmem) rmem=$2; shift 2 ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/dialtone-perf-dhcp.XXXXXX)
gwns=$prefix-gw
phns=$prefix-phones
server_pid=
old_rmem=$(sysctl -n net.core.rmem_default)
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  sysctl -qw net.core.rmem_default="$old_rmem" || true
  "$repo/scripts/lab.sh" down --prefix "$prefix" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ "$rmem" -gt 0 ]; then
  rmem_max=$(sysctl -n net.core.rmem_max)
  [ "$rmem" -gt "$rmem_max" ] && rmem=$rmem_max
  sysctl -qw net.core.rmem_default="$rmem"
fi

cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin dialtone
dialtone=$repo/target/release/dialtone

"$repo/scripts/lab.sh" up --prefix "$prefix" >/dev/null
# One /10 LAN so that the pool holds 100,000 clients.
ip -n "$gwns" addr flush dev lan0
ip -n "$gwns" addr add 100.64.0.1/10 dev lan0
ip -n "$phns" addr add 100.64.0.2/10 dev eth0

cat >"$work/dialtone.toml" <<EOF
[lan]
interface = "lan0"
address = "100.64.0.1/10"

[wan]
interface = "wan0"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"

[store]
path = "$work/dialtone.redb"

[logging]
level = "warn"

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

# The dataplane worker pins itself to dataplane.cpus (default [0]), outside taskset's mask:
# keep it on the server's CPU so that the whole server runs on CPU 1 and perfdhcp has CPU 0.
[dataplane]
cpus = [1]

[[class]]
name = "softphone"
vendor_class = { exact = "dialtone-phone" }
ports_per_phone = 64
lan_pool = "100.66.0.0/15"
public_pool = "198.51.100.0/24"
lease_time = "1h"
EOF

cat >"$work/kea.json" <<EOF
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "lan0/100.64.0.1" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$work/kea-leases4.csv", "lfc-interval": 0 },
    "valid-lifetime": 3600,
    "client-classes": [ { "name": "softphone", "test": "option[60].text == 'dialtone-phone'" } ],
    "subnet4": [ { "id": 1, "subnet": "100.64.0.0/10",
                   "pools": [ { "pool": "100.66.0.0/15", "client-class": "softphone" } ],
                   "option-data": [ { "name": "routers", "data": "100.64.0.1" },
                                    { "name": "domain-name-servers", "data": "100.64.0.1" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
                   "output_options": [ { "output": "$work/kea.log" } ] } ]
} }
EOF

start_dialtone() {
  rm -f "$work/dialtone.redb"
  ip netns exec "$gwns" taskset -c 1 "$dialtone" run --config "$work/dialtone.toml" 2>"$work/dialtone.log" &
  server_pid=$!
  for _ in $(seq 100); do grep -q "dhcp server started" "$work/dialtone.log" 2>/dev/null && return; sleep 0.1; done
  # logging level warn hides the start line: wait for the socket instead.
  for _ in $(seq 100); do ip netns exec "$gwns" ss -uln | grep -q ':67 ' && return; sleep 0.1; done
  echo "dialtone did not start:" >&2; cat "$work/dialtone.log" >&2; exit 1
}
start_kea() {
  rm -f "$work"/kea-leases4.csv*
  KEA_PIDFILE_DIR=$work KEA_LOCKFILE_DIR=$work ip netns exec "$gwns" kea-dhcp4 -t "$work/kea.json" >/dev/null
  KEA_PIDFILE_DIR=$work KEA_LOCKFILE_DIR=$work ip netns exec "$gwns" taskset -c 1 kea-dhcp4 -c "$work/kea.json" >"$work/kea.out" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do ip netns exec "$gwns" ss -uln | grep -q ':67 ' && return; sleep 0.1; done
  echo "kea did not start:" >&2; cat "$work/kea.out" >&2; exit 1
}
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  # Kea leaves its PID file in the namespace-shared run directory.
  sleep 0.5
}

# CPU time (clock ticks, all threads) the server has used so far.
server_ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }

# One perfdhcp run: prints "<ACKs received per second of sending> <drop % over both exchanges>
# <server CPU microseconds per ACK>".
perf_run() {
  local rate=$1 out t0 t1
  t0=$(server_ticks)
  out=$(taskset -c 0 ip netns exec "$phns" perfdhcp -4 -l 100.64.0.2 -r "$rate" -R 100000 -p "$period" \
          -W 2000000 -o 60,6469616c746f6e652d70686f6e65 100.64.0.1 2>&1 || true)
  t1=$(server_ticks)
  echo "$out" >>"$work/perfdhcp.log"
  awk -v period="$period" -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" '
    /Statistics for:/ { ex = $0 }
    /sent packets:/ { sent[ex] = $3 }
    /received packets:/ { recv[ex] = $3 }
    END {
      s = 0; r = 0
      for (k in sent) { s += sent[k]; r += recv[k] }
      drop = (s > 0) ? 100 * (s - r) / s : 100
      # Completed leases: ACKs received, over the sending period (not the exit wait).
      for (k in recv) if (k ~ /REQUEST-ACK/) acks = recv[k]
      cpu = (acks > 0) ? 1e6 * ticks / hz / acks : 0
      printf "%.0f %.2f %.1f\n", acks / period, drop, cpu
    }' <<<"$out"
}

# Steps the rate up; prints "<best leases/s> <its drop %> <offered rate> <server CPU us per ACK>".
search() {
  local best=0 best_drop=0 best_rate=0 best_cpu=0 r line got drop cpu misses=0
  for r in $rates; do
    line=$(perf_run "$r"); read -r got drop cpu <<<"$line"
    echo "  $1 -r $r: $got leases/s, drops $drop%, server CPU $cpu us per lease" >&2
    if awk -v d="$drop" 'BEGIN { exit !(d <= 0.5) }'; then
      if [ "$got" -gt "$best" ]; then best=$got; best_drop=$drop; best_rate=$r; best_cpu=$cpu; misses=0; fi
    else
      misses=$((misses + 1))
      # Two steps in a row past the limit: the peak is behind us.
      [ "$misses" -ge 2 ] && break
    fi
  done
  echo "$best $best_drop $best_rate $best_cpu"
}

median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

d_all= k_all= d_info= k_info= d_cpu= k_cpu=
for run in $(seq "$runs"); do
  echo "run $run/$runs: dialtone" >&2
  start_dialtone; res=$(search dialtone); stop_server
  d_all="$d_all ${res%% *}"; d_info="$d_info [$res]"; d_cpu="$d_cpu ${res##* }"
  echo "run $run/$runs: kea" >&2
  start_kea; res=$(search kea); stop_server
  k_all="$k_all ${res%% *}"; k_info="$k_info [$res]"; k_cpu="$k_cpu ${res##* }"
done
d=$(echo $d_all | median)
k=$(echo $k_all | median)
ratio=$(awk -v d="$d" -v k="$k" 'BEGIN { if (k > 0) printf "%.2f", d / k; else print "n/a" }')
# Server capacity: leases per second of one fully used core, from the CPU each ACK cost at the best
# step. It shows the server's own ceiling when the single perfdhcp process is the limit.
dc=$(echo $d_cpu | median)
kc=$(echo $k_cpu | median)
cap() { awk -v c="$1" 'BEGIN { if (c > 0) printf "%.0f", 1e6 / c; else print "n/a" }'; }
cap_ratio=$(awk -v d="$dc" -v k="$kc" 'BEGIN { if (d > 0) printf "%.2f", k / d; else print "n/a" }')

echo
echo "nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%FT%TZ)"
echo "load average at the end: $(cut -d" " -f1-3 /proc/loadavg) (other processes share these cores)"
echo "net.core.rmem_default during the run: $(sysctl -n net.core.rmem_default) bytes"
echo "per run [best leases/s, drop %, offered rate, server CPU us per lease]: dialtone$d_info kea$k_info"
echo
echo "| server | best leases/s (median of $runs) | drops at best | ratio | server CPU per lease | leases per CPU-second | ratio |"
echo "|---|---|---|---|---|---|---|"
echo "| dialtone (redb, fsync group commit) | $d | <= 0.5% | $ratio x | $dc us | $(cap "$dc") | $cap_ratio x |"
echo "| Kea $(kea-dhcp4 -v 2>/dev/null | head -1) (memfile) | $k | <= 0.5% | 1 x | $kc us | $(cap "$kc") | 1 x |"
