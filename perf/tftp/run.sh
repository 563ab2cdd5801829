#!/usr/bin/env bash
# TFTP benchmark: dialtone's TFTP server against tftpd-hpa, same machine, same run, same client.
#
#   perf/tftp/run.sh [--phones N] [--runs R]
#
# (a) one 16 MiB image, each server with its best options (dialtone: blksize 1468 + windowsize 64;
#     tftpd-hpa has no windowsize: blksize 1468), R runs each, best and median time;
# (b) N phones (default 1000) downloading a 1 MiB image at once (blksize 1468, windowsize 16 asked
#     of both; tftpd-hpa ignores windowsize), time, aggregate MB/s, failures, and the dialtone
#     process's thread count.
# Both servers listen on 127.0.0.1 only (ports 16969 and 16970); everything they serve lives in a
# temporary directory removed on exit. The client is examples/tftp-fleet (one thread, N sockets).
# Needs: tftpd-hpa (in.tftpd), a release build (done here).
set -euo pipefail

phones=1000
runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --phones) phones="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        *) echo "usage: $0 [--phones N] [--runs R]" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "$0")/../.." && pwd)"
command -v in.tftpd >/dev/null || { echo "in.tftpd (tftpd-hpa) not installed" >&2; exit 1; }
cargo build --release --quiet -p dialtone-tftp --examples --manifest-path "$repo/Cargo.toml"
bin="$repo/target/release/examples"

work="$(mktemp -d /tmp/dialtone-tftp-perf.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/root"
head -c $((16 * 1024 * 1024)) /dev/urandom > "$work/root/image16m.bin"
head -c $((1024 * 1024)) /dev/urandom > "$work/root/image1m.bin"
sed "s|^tftp_root = \"/var/lib/dialtone/tftp/yealink-t5\"|tftp_root = \"$work/root\"|" \
    "$repo/config/examples/dialtone.toml" > "$work/dialtone.toml"
# max_transfers must hold the whole fleet.
sed -i "s|^max_transfers = .*|max_transfers = $((phones > 4096 ? phones : 4096))|" "$work/dialtone.toml"

"$bin/tftp-lab" "$work/dialtone.toml" --listen 127.0.0.1:16969 \
    --lease 127.0.0.1=yealink-t5,80:5e:c0:a1:b2:c3,100.64.16.5 > "$work/dialtone.log" 2>&1 &
dialtone_pid=$!
pids+=("$dialtone_pid")
in.tftpd -L -s -a 127.0.0.1:16970 "$work/root" &
pids+=("$!")
sleep 1

field() { sed -n "s|.*$1=\([^ ]*\).*|\1|p"; }

echo "# machine: $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## (a) one 16 MiB image, $runs runs each"
for side in dialtone hpa; do
    if [ "$side" = dialtone ]; then port=16969; opts="1468 64"; else port=16970; opts="1468"; fi
    times=()
    for _ in $(seq "$runs"); do
        # shellcheck disable=SC2086
        out="$("$bin/tftp-fleet" "127.0.0.1:$port" image16m.bin 1 $opts)"
        [ "$(echo "$out" | field failed)" = 0 ] || echo "$side: FAILED: $out"
        times+=("$(echo "$out" | field time | tr -d s)")
    done
    sorted="$(printf '%s\n' "${times[@]}" | sort -n)"
    best="$(echo "$sorted" | head -1)"
    median="$(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p")"
    echo "$side: best ${best}s ($(awk "BEGIN{printf \"%.1f\", 16.777216/$best}") MB/s), median ${median}s, runs: ${times[*]}"
    eval "best_$side=$best"
done
echo "ratio (a), tftpd-hpa time / dialtone time, best: $(awk "BEGIN{printf \"%.2f\", $best_hpa/$best_dialtone}")"

echo "## (b) $phones phones x 1 MiB at once"
out_d="$("$bin/tftp-fleet" 127.0.0.1:16969 image1m.bin "$phones" 1468 16)"
threads="$(ls "/proc/$dialtone_pid/task" | wc -l)"
out_h="$("$bin/tftp-fleet" 127.0.0.1:16970 image1m.bin "$phones" 1468 16)"
echo "dialtone:  $out_d  (process threads: $threads)"
echo "tftpd-hpa: $out_h"
echo "ratio (b), aggregate MB/s dialtone / tftpd-hpa: $(awk "BEGIN{printf \"%.2f\", $(echo "$out_d" | field MB/s)/$(echo "$out_h" | field MB/s)}")"
