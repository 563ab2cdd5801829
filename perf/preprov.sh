#!/usr/bin/env bash
# Benchmark perf/preprov: device inquiries (GET /v1/contact/{id}) under keep-alive load with
# DEVICES registered devices, against nginx serving a static file of the same size in the same
# lab and the same run (the HTTP ceiling of this machine). Prints a Markdown table of medians.
#
#   perf/preprov.sh                 # defaults below
#   DEVICES=1000000 RUNS=5 DURATION=10 CONNECTIONS=64 perf/preprov.sh
#
# Pinning: both servers run on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU (2 threads).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-1000000}
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
SERVER_THREADS=${SERVER_THREADS:-1}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}

scripts/setup.sh >/dev/null
cargo build --release --locked --bin dialtone 2>/dev/null
bin=$PWD/target/release/dialtone

prefix=pp$$
work=$(mktemp -d /tmp/dialtone-perf-preprov.XXXXXX)
gw_pid=
nginx_pid=
cleanup() {
  [ -z "$gw_pid" ] || { kill "$gw_pid" 2>/dev/null; wait "$gw_pid" 2>/dev/null; } || true
  [ -z "$nginx_pid" ] || { kill "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null; } || true
  scripts/lab.sh down --prefix "$prefix" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/lab.sh up --prefix "$prefix" >/dev/null
ip -n "$prefix-phones" addr add 100.64.200.10/16 dev eth0
ip -n "$prefix-phones" addr add 100.64.200.11/16 dev eth0
in_phones() { ip netns exec "$prefix-phones" "$@"; }

# The lab configuration, with the per-source limit lifted (all load comes from one address) and
# SERVER_THREADS runtime threads (one per server CPU: a second thread on the same CPU only adds
# time-slice waits to the tail latency).
sed -e "s#/var/lib/dialtone#$work#g" \
    -e 's#^admin_token = .*#&\nrate_per_source = 1000000\nburst_per_source = 1000000\nthreads = '"$SERVER_THREADS"'#' \
    config/examples/dialtone.toml > "$work/dialtone.toml"
ip netns exec "$prefix-gw" taskset -c "$SERVER_CPU" "$bin" run --config "$work/dialtone.toml" 2> "$work/gw.log" &
gw_pid=$!
for _ in $(seq 100); do grep -q "pre-provisioning service started" "$work/gw.log" && break; sleep 0.1; done
grep -q "pre-provisioning service started" "$work/gw.log" || { cat "$work/gw.log"; exit 1; }

admin="Authorization: Bearer lab-admin-token-not-for-production"
token=$(in_phones curl -sS -X POST -H "$admin" --data '{"name":"acme","role":"entity"}' http://100.64.0.1:8080/v1/accounts |
  sed -n 's/.*"token":"\([0-9a-f]*\)".*/\1/p')
[ -n "$token" ] || { echo "could not create the entity account"; exit 1; }

echo "registering $DEVICES devices..." >&2
start=$(date +%s.%N)
chunk=100000
for ((first = 0; first < DEVICES; first += chunk)); do
  last=$(( first + chunk < DEVICES ? first + chunk : DEVICES ))
  python3 -c "import sys; sys.stdout.write(''.join('aa%010x,prov.acme.example\n' % i for i in range($first, $last)))" > "$work/chunk.csv"
  code=$(in_phones curl -sS -o "$work/import.json" -w '%{http_code}' -X POST -H "Authorization: Bearer $token" \
    --data-binary "@$work/chunk.csv" http://100.64.0.1:8080/v1/bulk/devices)
  [ "$code" = 200 ] || { echo "import failed ($code): $(head -c 300 "$work/import.json")"; exit 1; }
done
import_secs=$(echo "$(date +%s.%N) - $start" | bc)
echo "registered in ${import_secs}s" >&2

# nginx serves a file of exactly the size of one inquiry answer.
in_phones curl -sS http://100.64.0.1:8080/v1/contact/aa0000000001 > "$work/answer.json"
mkdir -p "$work/www/v1/contact"
cp "$work/answer.json" "$work/www/v1/contact/aa0000000001"
chmod -R a+rX "$work"   # nginx workers drop root
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 1000000;
  server { listen 100.64.0.1:8088; root $work/www; }
}
NGINX
ip netns exec "$prefix-gw" taskset -c "$SERVER_CPU" nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
sleep 0.5

# One wrk run: prints "requests_per_sec p50_ms p99_ms".
run_wrk() {
  local url=$1; shift
  in_phones taskset -c "$CLIENT_CPU" env DEVICES="$DEVICES" \
    wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url" > "$work/wrk.out"
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
  errors=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out")
  [ -z "$errors" ] || { echo "wrk saw $errors non-2xx answers" >&2; cat "$work/wrk.out" >&2; exit 1; }
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { # wrk prints 512.00us, 1.20ms or 1.01s
  case "$1" in
    *us) echo "$1" | sed 's/us//' | awk '{printf "%.3f", $1/1000}' ;;
    *ms) echo "$1" | sed 's/ms//' ;;
    *s) echo "$1" | sed 's/s//' | awk '{printf "%.3f", $1*1000}' ;;
  esac
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: > "$work/dialtone.runs"; : > "$work/nginx.runs"
for run in $(seq "$RUNS"); do
  run_wrk http://100.64.0.1:8080 -s perf/preprov.lua >> "$work/dialtone.runs"
  run_wrk http://100.64.0.1:8088/v1/contact/aa0000000001 >> "$work/nginx.runs"
  echo "run $run: dialtone $(tail -1 "$work/dialtone.runs") | nginx $(tail -1 "$work/nginx.runs")" >&2
done

# Inquiries while 2,000 slow clients (another address) hold connections open with unfinished
# requests: wrk at 8 connections, latency percentiles only.
: > "$work/slow.runs"
for run in $(seq "$RUNS"); do
  in_phones taskset -c "$CLIENT_CPU" python3 perf/slow_clients.py 2000 100.64.200.11 100.64.0.1 8080 \
    /v1/contact/aa0000000001 3600 > "$work/slow.out" 2>&1 &
  slow_pid=$!
  for _ in $(seq 100); do grep -q holding "$work/slow.out" && break; sleep 0.1; done
  grep -q "holding 2000" "$work/slow.out" || { cat "$work/slow.out"; exit 1; }
  # Shorter than the read timeout (5 s), so the slow clients are all held for the whole run.
  CONNECTIONS_SAVED=$CONNECTIONS; CONNECTIONS=8
  DURATION_SAVED=$DURATION; DURATION=4
  run_wrk http://100.64.0.1:8080 -s perf/preprov.lua >> "$work/slow.runs"
  CONNECTIONS=$CONNECTIONS_SAVED; DURATION=$DURATION_SAVED
  kill "$slow_pid" 2>/dev/null; wait "$slow_pid" 2>/dev/null || true
  echo "slow run $run: $(tail -1 "$work/slow.runs")" >&2
done
s_rps=$(cut -d' ' -f1 "$work/slow.runs" | median); s_p50=$(cut -d' ' -f2 "$work/slow.runs" | median)
s_p99=$(cut -d' ' -f3 "$work/slow.runs" | median)

d_rps=$(cut -d' ' -f1 "$work/dialtone.runs" | median); n_rps=$(cut -d' ' -f1 "$work/nginx.runs" | median)
d_p50=$(cut -d' ' -f2 "$work/dialtone.runs" | median); n_p50=$(cut -d' ' -f2 "$work/nginx.runs" | median)
d_p99=$(cut -d' ' -f3 "$work/dialtone.runs" | median); n_p99=$(cut -d' ' -f3 "$work/nginx.runs" | median)
ratio=$(echo "scale=2; $d_rps / $n_rps" | bc)
threads=$(ls "/proc/$gw_pid/task" | wc -l)

cat <<TABLE
| server | requests/s | p50 ms | p99 ms |
|---|---|---|---|
| dialtone GET /v1/contact (random of $DEVICES devices) | $d_rps | $d_p50 | $d_p99 |
| nginx static file, same size ($(wc -c < "$work/answer.json") bytes) | $n_rps | $n_p50 | $n_p99 |
| ratio dialtone / nginx | $ratio | | |
| dialtone while 2,000 slow clients are held (wrk -c8, 4 s) | $s_rps | $s_p50 | $s_p99 |

medians of $RUNS runs of ${DURATION}s, wrk -t2 -c$CONNECTIONS on CPU $CLIENT_CPU, servers on CPU $SERVER_CPU;
registering $DEVICES devices by bulk CSV took ${import_secs}s; gateway threads: $threads
TABLE
