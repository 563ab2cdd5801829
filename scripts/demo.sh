#!/usr/bin/env bash
# dialtone demo: installs what it needs, builds, starts the lab, checks the default
# configuration, runs the gateway in the lab and shows what it does. Tears everything down on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "== building (release)"
cargo build --release --locked --bin dialtone
bin=target/release/dialtone

prefix=demo$$
work=$(mktemp -d /tmp/dialtone-demo.XXXXXX)
gw_pid=
cleanup() {
  [ -z "$gw_pid" ] || kill -TERM "$gw_pid" 2>/dev/null || true
  scripts/lab.sh down --prefix "$prefix" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== lab"
scripts/lab.sh up --prefix "$prefix"

echo "== the default configuration and its capacity plan"
"$bin" check-config config/examples/dialtone.toml

# The demo keeps its state in a scratch directory instead of /var/lib/dialtone.
sed -e "s#/var/lib/dialtone#$work#g" config/examples/dialtone.toml > "$work/dialtone.toml"

echo "== starting the gateway in $prefix-gw"
ip netns exec "$prefix-gw" "$bin" run --config "$work/dialtone.toml" 2> "$work/gateway.log" &
gw_pid=$!
sleep 1
if ! kill -0 "$gw_pid" 2>/dev/null; then
  echo "demo: the gateway did not start:" >&2
  cat "$work/gateway.log" >&2
  exit 1
fi
cat "$work/gateway.log"

echo "== stopping the gateway (SIGTERM)"
kill -TERM "$gw_pid"
rc=0
wait "$gw_pid" || rc=$?
gw_pid=
cat "$work/gateway.log" | tail -n 1
if [ "$rc" -ne 0 ]; then
  echo "demo: the gateway exited with $rc" >&2
  exit 1
fi
echo "== demo finished: gateway started on the lab config and stopped cleanly"
