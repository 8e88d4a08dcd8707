#!/usr/bin/env bash
# Set-up + the test suite (the README's test command). Incremental: the target dir persists.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cadvlm-target}"
# the sandbox guest builds for wasm32-wasip1; rustup does not add a missing target by itself
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
cargo test --workspace --no-fail-fast "$@"
