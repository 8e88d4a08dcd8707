#!/usr/bin/env bash
# Training and sampling speed of the VLM (sizes small and base) in cadvlm against the same model in
# PyTorch eager, on this CPU, in one run (see benches/train_vs_pytorch.py for what is compared).
# Makes a venv with PyTorch (CPU wheel index first, else PyPI) under ~/.cache/cadvlm-bench-torch:
# PyTorch is a benchmark reference only; the project does not depend on it.
# Builds `cadvlm` (release) if needed. Arguments go to the Python script (e.g. --threads 1,
# --sizes small, --repeats 3, --profile). The markdown table is printed last and also written to
# $OUT (default reports/train-vs-pytorch-table.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cadvlm-target}"
VENV="${TORCH_VENV:-$HOME/.cache/cadvlm-bench-torch}"
OUT="${OUT:-reports/train-vs-pytorch-table.md}"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --timeout 20 --retries 1 torch --index-url https://download.pytorch.org/whl/cpu \
    || "$VENV/bin/pip" install --quiet torch
  "$VENV/bin/pip" install --quiet numpy || true
fi
if [ -z "${CADVLM_BIN:-}" ]; then
  cargo build --release --quiet
  export CADVLM_BIN="$CARGO_TARGET_DIR/release/cadvlm"
fi
log=$(mktemp)
{
  echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$VENV/bin/python" -W ignore benches/train_vs_pytorch.py --bin "$CADVLM_BIN" "$@"
  echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$log"
mkdir -p "$(dirname "$OUT")"
grep -E '^(\||# )' "$log" > "$OUT"
rm -f "$log"
