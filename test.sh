#!/usr/bin/env bash
# Set-up + the test suite (the README's test command). Incremental: the target dir persists.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cadvlm-target}"
# the sandbox guest builds for wasm32-wasip1; rustup does not add a missing target by itself
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
# python/ (the pyo3 extension) is built by maturin below, not here: linking it needs Python
cargo test --workspace --exclude cadvlm-python --no-fail-fast "$@"
# the Python package: a cached venv, `pip install ./python`, pytest (fails the script if a test fails)
python/run_tests.sh
