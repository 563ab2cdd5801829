#!/usr/bin/env bash
# Installs every system package that dialtone's build, tests, demo and benchmarks need.
# Idempotent: when everything is present it changes nothing and downloads nothing.
# Runs as root (apt-get). Services that packages would start (kea, tftpd-hpa, nginx) are kept
# stopped: the lab starts its own instances inside network namespaces.
set -euo pipefail

packages=(
  # build: C toolchain for the XDP program (clang -target bpf, libbpf's headers) and -sys crates;
  # xsk-rs's use_cc_build compiles libxdp and libbpf from source: m4 preprocesses libxdp's
  # dispatcher, llc builds its BPF objects, bindgen needs libclang
  build-essential pkg-config clang llvm libelf-dev zlib1g-dev libbpf-dev m4 libclang-dev
  # lab
  iproute2 ethtool iputils-ping procps psmisc tcpdump nftables
  # real DHCP clients and the DHCP peer for comparison (perfdhcp is in kea-admin)
  udhcpc isc-dhcp-client dhcpcd-base kea-dhcp4-server kea-admin
  # real TFTP clients and the TFTP peer
  tftp-hpa atftp tftpd-hpa curl
  # HTTP load and the HTTP peer
  wrk nginx-light bc
  # golden packet vectors and traffic tools
  python3 python3-scapy netsniff-ng openssl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} system packages present"
else
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  # Keep package services from starting outside the lab while they install.
  policy=/usr/sbin/policy-rc.d
  made_policy=no
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=yes
  fi
  trap '[ "$made_policy" = yes ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: installed ${#missing[@]} packages"
fi

# The Rust toolchain comes with the machine (rustup); components used by scripts/test.sh:
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
command -v cargo >/dev/null || { echo "setup: cargo not found" >&2; exit 1; }
