#!/usr/bin/env bash
# The Python package's tests (run by ../test.sh after the cargo tests): a venv in the cache with
# maturin, pytest and numpy; `pip install ./python` (its Rust build shares $CARGO_TARGET_DIR, so it
# is incremental) only when a source file changed since the last install; then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cadvlm-target}"
venv="${CADVLM_PYVENV:-$HOME/.cache/cadvlm-pyvenv}"
export PATH="$venv/bin:$PATH"  # the build backend runs the venv's `maturin`
if ! "$venv/bin/python" -c "import pytest, numpy" 2>/dev/null || ! "$venv/bin/maturin" --version >/dev/null 2>&1; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check maturin pytest numpy
fi
# everything the extension is built from (not the tests)
stamp=$(find Cargo.toml Cargo.lock build.rs src guest/src guest/Cargo.toml python/Cargo.toml \
    python/pyproject.toml python/src python/cadvlm -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.cadvlm-stamp" 2>/dev/null)" != "$stamp" ] || ! "$venv/bin/python" -c "import cadvlm" 2>/dev/null; then
    echo "python: building and installing ./python (maturin, release)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./python
    echo "$stamp" > "$venv/.cadvlm-stamp"
fi
# from the root: `python -m pytest` puts the working directory first on sys.path, and python/cadvlm
# (the sources, without the built extension) must not shadow the installed package
exec "$venv/bin/python" -m pytest -q python/tests "$@"
