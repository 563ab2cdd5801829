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

# Firmware for the Yealink class, served by TFTP from its class root.
mkdir -p "$work/tftp/yealink-t5/yealink"
head -c 262144 /dev/urandom > "$work/tftp/yealink-t5/yealink/t5.rom"

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

echo "== a factory-fresh Yealink phone (MAC 80:5e:c0:00:00:01) asks for a lease"
cat > "$work/udhcpc.sh" <<'HOOK'
#!/bin/sh
case "$1" in
  bound)
    ip addr replace "$ip/$mask" dev "$interface"
    echo "   leased $ip/$mask, router $router, tftp server $siaddr, boot file $boot_file"
    echo "   option 159 (RFC 7618 port parameters): $opt159"
    ;;
esac
HOOK
chmod +x "$work/udhcpc.sh"
in_phones() { ip netns exec "$prefix-phones" "$@"; }
in_phones ip link set eth0 address 80:5e:c0:00:00:01
in_phones udhcpc -i eth0 -f -q -n -t 5 -T 1 -V "Yealink SIP-T54W" -O 159 -s "$work/udhcpc.sh" 2>/dev/null
echo "== its port block, decoded: ports the phone may use on its shared public address"
ip netns exec "$prefix-gw" "$bin" leases --config "$work/dialtone.toml" | python3 -c '
import json, sys
for l in json.load(sys.stdin)["leases"]:
    print("   %s %s -> public %s ports %d-%d (class %s, until %s)" % (l["mac"], l["address"], l["public_ip"], l["port_lo"], l["port_hi"], l["class"], l["expiry"]))'
echo "== it fetches its operational software over TFTP (windowsize 16, blksize 1468)"
in_phones atftp --option "windowsize 16" --option "blksize 1468" -g -r yealink/t5.rom -l "$work/fetched.rom" 100.64.0.1 2>/dev/null
if cmp -s "$work/fetched.rom" "$work/tftp/yealink-t5/yealink/t5.rom"; then
  echo "   yealink/t5.rom: $(wc -c < "$work/fetched.rom") bytes, identical to the served image"
else
  echo "demo: the firmware did not arrive intact" >&2
  exit 1
fi

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
echo "== demo finished: a phone leased its address and port block, fetched its firmware, and the gateway stopped cleanly"
