#!/usr/bin/env bash
# TFTP benchmark in the lab: `dialtone run` in P-gw against tftpd-hpa in P-gw, same files, same
# run, same client (examples/tftp-fleet) in P-phones.
#
#   perf/tftp/lab.sh [--prefix P] [--phones N] [--runs R]
#
# dialtone serves 100.64.0.1:69 (its LAN address); tftpd-hpa serves 100.64.0.2:69, an extra
# address on lan0, from the same directory (the yealink-t5 class root). The clients send from
# 100.64.16.200, an address of the yealink-t5 pool without a lease: the firmware needs none.
#
# (a) one 16 MiB image, R runs each, each side's best options: dialtone blksize 1468 +
#     windowsize 64 (its configured maximum); tftpd-hpa blksize 1468 (it has no windowsize).
#     Median and best time, MB/s, failures, ratio of medians.
# (b) N phones (default 1000) fetching a 1 MiB image at once (blksize 1468, windowsize 16 asked of
#     both; tftpd-hpa ignores windowsize), R runs each: median time, aggregate MB/s, failures,
#     and the most threads the dialtone process had during the run (tftpd-hpa forks a process
#     per transfer: its peak process count is shown too).
#
# Builds the release binary and the fleet client first. Set CARGO_PROFILE_RELEASE_LTO=false and
# CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 to build faster (slightly slower code). The lab (prefix
# P, default ptftp) and the working directory are removed on exit.
set -euo pipefail

prefix=ptftp
phones=1000
runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --phones) phones="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        *) echo "usage: $0 [--prefix P] [--phones N] [--runs R]" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "$0")/../.." && pwd)"
command -v in.tftpd >/dev/null || { echo "in.tftpd (tftpd-hpa) not installed" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin dialtone
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p dialtone-tftp --example tftp-fleet
dialtone="$repo/target/release/dialtone"
fleet="$repo/target/release/examples/tftp-fleet"

work="$(mktemp -d /tmp/dialtone-tftp-lab.XXXXXX)"
gw_pid=""
hpa_pid=""
cleanup() {
    [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
    [ -n "$hpa_pid" ] && kill "$hpa_pid" 2>/dev/null || true
    "$repo/scripts/lab.sh" down --prefix "$prefix" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"$repo/scripts/lab.sh" up --prefix "$prefix" >/dev/null
in_gw() { ip netns exec "$prefix-gw" "$@"; }
in_phones() { ip netns exec "$prefix-phones" "$@"; }

sed "s|/var/lib/dialtone|$work|" "$repo/config/examples/dialtone.toml" > "$work/dialtone.toml"
sed -i "s|^max_transfers = .*|max_transfers = $((phones > 4096 ? phones : 4096))|" "$work/dialtone.toml"
root="$work/tftp/yealink-t5"
mkdir -p "$root"
head -c $((16 * 1024 * 1024)) /dev/urandom > "$root/image16m.bin"
head -c $((1024 * 1024)) /dev/urandom > "$root/image1m.bin"

in_gw ip addr add 100.64.0.2/16 dev lan0
in_phones ip addr add 100.64.16.200/16 dev eth0
# `ip netns exec` execs the program, so $! is the server's own pid (not a subshell's).
ip netns exec "$prefix-gw" "$dialtone" run --config "$work/dialtone.toml" 2> "$work/dialtone.log" &
gw_pid=$!
ip netns exec "$prefix-gw" in.tftpd -L -s -a 100.64.0.2:69 "$root" &
hpa_pid=$!
for _ in $(seq 100); do grep -q "dialtone running" "$work/dialtone.log" && break; sleep 0.1; done
grep -q "dialtone running" "$work/dialtone.log" || { cat "$work/dialtone.log"; exit 1; }
sleep 0.5

field() { sed -n "s|.*$1=\([^ ]*\).*|\1|p"; }
median() { sort -n | sed -n "$(( (runs + 1) / 2 ))p"; }
peak_tasks() { # pid-or-name outfile: samples the thread count (or tftpd process count) every 20 ms
    local max=0 n
    while :; do
        if [ "$1" = hpa ]; then n=$(pgrep -c -x in.tftpd || true); else n=$(ls "/proc/$1/task" 2>/dev/null | wc -l); fi
        [ "${n:-0}" -gt "$max" ] && max=$n && echo "$max" > "$2"
        sleep 0.02
    done
}

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "# date: $(date -u +%Y-%m-%dT%H:%MZ), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## (a) one 16 MiB image, $runs runs each"
for side in dialtone hpa; do
    if [ "$side" = dialtone ]; then server=100.64.0.1:69; opts="1468 64"; else server=100.64.0.2:69; opts="1468"; fi
    times=()
    fails=0
    for _ in $(seq "$runs"); do
        # shellcheck disable=SC2086
        out="$(in_phones "$fleet" "$server" image16m.bin 1 $opts)"
        [ "$(echo "$out" | field failed)" = 0 ] || { fails=$((fails + 1)); echo "$side: FAILED: $out"; }
        times+=("$(echo "$out" | field time | tr -d s)")
    done
    med="$(printf '%s\n' "${times[@]}" | median)"
    best="$(printf '%s\n' "${times[@]}" | sort -n | head -1)"
    echo "$side: median ${med}s ($(awk "BEGIN{printf \"%.1f\", 16.777216/$med}") MB/s), best ${best}s, failed runs $fails, runs: ${times[*]}"
    eval "med_a_$side=$med"
done
echo "ratio (a), tftpd-hpa median time / dialtone median time: $(awk "BEGIN{printf \"%.2f\", $med_a_hpa/$med_a_dialtone}")"

echo "# dialtone threads at rest: $(ls "/proc/$gw_pid/task" | wc -l), of which TFTP workers: $(cat /proc/"$gw_pid"/task/*/comm | grep -c '^tftp-' || true)"
echo "## (b) $phones phones x 1 MiB at once, $runs runs each"
for side in dialtone hpa; do
    if [ "$side" = dialtone ]; then server=100.64.0.1:69; watch="$gw_pid"; else server=100.64.0.2:69; watch=hpa; fi
    rates=()
    times=()
    failed=()
    echo 0 > "$work/peak"
    peak_tasks "$watch" "$work/peak" &
    sampler=$!
    for _ in $(seq "$runs"); do
        out="$(in_phones "$fleet" "$server" image1m.bin "$phones" 1468 16)"
        rates+=("$(echo "$out" | field MB/s)")
        times+=("$(echo "$out" | field time | tr -d s)")
        failed+=("$(echo "$out" | field failed)")
        echo "$side: $out" | head -2 >&2
        sleep 1
    done
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    rate="$(printf '%s\n' "${rates[@]}" | median)"
    med="$(printf '%s\n' "${times[@]}" | median)"
    if [ "$side" = dialtone ]; then what="threads"; else what="in.tftpd processes"; fi
    echo "$side: median ${med}s, median aggregate ${rate} MB/s, failures per run: ${failed[*]}, peak $what: $(cat "$work/peak"), runs (s): ${times[*]}"
    eval "rate_b_$side=$rate"
done
echo "ratio (b), median aggregate MB/s dialtone / tftpd-hpa: $(awk "BEGIN{printf \"%.2f\", $rate_b_dialtone/$rate_b_hpa}")"
echo "# dialtone /metrics (tftp):"
in_gw curl -sS -H "Authorization: Bearer lab-management-token-not-for-production" http://127.0.0.1:9000/metrics \
    | grep -E '^dialtone_tftp_(transfers|timeouts|retransmitted|send_drops|refused_total\{reason="busy")' | grep -v ' 0$' || true
