#!/usr/bin/env bash
# dialtone demo: installs what it needs, builds, starts the lab, checks the default
# configuration, runs the gateway in the lab and shows what it does. Tears everything down on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "== building (release)"
cargo build --release --locked -p dialtone -p dialtone-fleet
bin=target/release/dialtone
fleet=target/release/dialtone-fleet

prefix=demo$$
work=$(mktemp -d /tmp/dialtone-demo.XXXXXX)
gw_pid=
echo_pid=
cleanup() {
  [ -z "$echo_pid" ] || kill "$echo_pid" 2>/dev/null || true
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

# Operational software: the Yealink image and the softphone image, each in its class's TFTP root.
mkdir -p "$work/tftp/yealink-t5/yealink" "$work/tftp/softphone/softphone"
head -c 262144 /dev/urandom > "$work/tftp/yealink-t5/yealink/t5.rom"
head -c 262144 /dev/urandom > "$work/tftp/softphone/softphone/firmware.bin"
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
soft_sha=$(sha_of "$work/tftp/softphone/softphone/firmware.bin")
yea_sha=$(sha_of "$work/tftp/yealink-t5/yealink/t5.rom")
# The softphone classes' parameters state the image's digest and size (the phone refuses
# software it cannot verify).
sed -i -e "s#^firmware_version = \"softphone-1.0\"#firmware_version = \"softphone-1.0\"\nfirmware_sha256 = \"$soft_sha\"\nfirmware_size = \"262144\"#" "$work/dialtone.toml"

echo "== starting the gateway in $prefix-gw"
ip netns exec "$prefix-gw" "$bin" run --config "$work/dialtone.toml" 2> "$work/gateway.log" &
gw_pid=$!
for _ in $(seq 1 100); do grep -q "dialtone running" "$work/gateway.log" && break; sleep 0.1; done
if ! grep -q "dialtone running" "$work/gateway.log"; then
  echo "demo: the gateway did not start:" >&2
  cat "$work/gateway.log" >&2
  exit 1
fi
cat "$work/gateway.log"
until=firmware
if grep -q "dataplane started" "$work/gateway.log"; then
  until=line
  ip netns exec "$prefix-net" "$fleet" echo --listen 203.0.113.10:7 2> "$work/echo.log" &
  echo_pid=$!
fi

in_gw() { ip netns exec "$prefix-gw" "$@"; }
in_phones() { ip netns exec "$prefix-phones" "$@"; }
api() { # METHOD PATH TOKEN BODY -> body; fails on HTTP >= 400
  in_gw curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $3" -H "Content-Type: application/json" \
    --data-binary "$4" "http://127.0.0.1:8080$2"
}

echo "== a provisioning entity registers its devices in the pre-provisioning service (claims 000: 1-12)"
token=$(api POST /v1/accounts lab-admin-token-not-for-production '{"name":"acme","role":"entity"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
api PUT /v1/devices/805ec0000001 "$token" '{"contact":"100.64.0.1:8081"}' > /dev/null
api PUT /v1/devices/805ec0000001/parameters "$token" \
  "{\"sip_user\":\"1001\",\"firmware_sha256\":\"$yea_sha\",\"firmware_size\":\"262144\",\"firmware_version\":\"t5-66.86\"}" > /dev/null
api PUT /v1/devices/02dc00000102 "$token" '{"contact":"100.64.0.1:8081"}' > /dev/null
api PUT /v1/devices/02dc00000102/parameters "$token" '{"class":"softphone-zt","sip_user":"1002"}' > /dev/null
api PUT /v1/devices/02dc00000103 "$token" '{"contact":"100.64.0.1:8081"}' > /dev/null
api PUT /v1/devices/02dc00000103/parameters "$token" '{"class":"softphone-zt","sip_user":"1003"}' > /dev/null
api GET "/v1/devices" "$token" '' | python3 -c '
import json, sys
for d in json.load(sys.stdin)["devices"]:
    print("   %-14s -> %s" % (d["device_id"], d["contact"]))'

factory() { # FILE MAC VENDOR_CLASS [PROVISIONING_CONTACT]
  local contact=""
  [ -z "${4:-}" ] || contact=",\"provisioning_contact\":\"$4\""
  printf '{"device_id":"%s","mac":"%s","vendor_class":"%s","preprov_contact":"100.64.0.1:8080"%s}\n' \
    "$(echo "$2" | tr -d :)" "$2" "$3" "$contact" > "$1"
}
boot() { # FILE: the phone agent, one line per step
  in_phones "$bin" phone --nvram "$1" --iface eth0 --until "$until" --attempts 3 | sed 's/^/   /'
}

echo "== phone 1: a Yealink T54W (class yealink-t5), provisioned from DHCP options 66/67 and its per-phone file"
factory "$work/yealink.json" 80:5e:c0:00:00:01 "Yealink SIP-T54W"
boot "$work/yealink.json"
echo "== phone 2: a factory-fresh softphone (class softphone-zt): DHCP names no provisioning server,"
echo "   so it asks the pre-provisioning server with its device ID and stores the answer in NVRAM"
factory "$work/zt.json" 02:dc:00:00:01:02 dialtone-phone-zt
boot "$work/zt.json"
echo "   its NVRAM now: $(tr -d '\n' < "$work/zt.json")"
echo "== phone 2 again (a reboot): the contact comes from NVRAM, the installed firmware is kept"
boot "$work/zt.json"
echo "== phone 3: a softphone whose NVRAM already holds its provisioning contact (set at the factory)"
factory "$work/nv.json" 02:dc:00:00:01:03 dialtone-phone-zt 100.64.0.1:8081
boot "$work/nv.json"
echo "== phone 4: a softphone of class softphone, provisioned from DHCP options"
factory "$work/soft.json" 02:dc:00:00:01:04 dialtone-phone
boot "$work/soft.json"
if [ "$until" = firmware ]; then
  echo "   (line step skipped: this gateway runs without the NAPPT dataplane)"
fi

echo "== the leases and port blocks, as the gateway records them"
in_gw "$bin" leases --config "$work/dialtone.toml" | python3 -c '
import json, sys
for l in json.load(sys.stdin)["leases"]:
    print("   %s %s -> public %s ports %d-%d (class %s)" % (l["mac"], l["address"], l["public_ip"], l["port_lo"], l["port_hi"], l["class"]))'

echo "== a short fleet run: 200 phones, 40 % zero-touch, from one process on the phones' interface"
in_gw "$fleet" register --service 127.0.0.1:8080 --admin-token lab-admin-token-not-for-production \
  --phones 200 --first-mac 02:dc:00:02:00:00 --zero-touch-percent 40 | sed 's/^/   /'
in_phones "$fleet" run --iface eth0 --phones 200 --first-mac 02:dc:00:02:00:00 --zero-touch-percent 40 \
  --nvram-contact-percent 0 --concurrency 32 --until "$until" | sed 's/^/   /'

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
echo "== demo finished: phones of three classes found their provisioning (DHCP options, pre-provisioning, NVRAM),"
echo "   fetched and verified their firmware, a fleet booted, and the gateway stopped cleanly"
