#!/usr/bin/env bash
# The whole check, as CI runs it: system packages, formatting, lints, unit, property and
# end-to-end tests. End-to-end tests build their own network namespaces and need root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test (unit, property and end-to-end)"
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: end-to-end tests create network namespaces: run as root" >&2
  exit 1
fi
cargo test --workspace --locked -- --test-threads="$(nproc)"
