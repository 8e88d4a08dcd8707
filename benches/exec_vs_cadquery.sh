#!/usr/bin/env bash
# Execute + measure every real program with CadQuery 2.8.0 (in one Python process, import excluded)
# and with `cadvlm exec` (one process), in the same run; print ms/program for each and the ratio.
# Needs a Python with cadquery: CQ_PYTHON=/path/to/venv/bin/python (see ../shared/oracle/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
CQ_PYTHON="${CQ_PYTHON:-python3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cadvlm-target}"
cargo build --release --quiet --no-default-features --features cli
files=(fixtures/cadquery/gencad-programs/*.py fixtures/cadquery/gencad-test100-dev/*.py)
cq_ms=$("$CQ_PYTHON" benches/cadquery_baseline.py "${files[@]}")
# best of 5 runs of our process (whole process: start-up, reading, JSON output included)
ours_ms=$(for i in 1 2 3 4 5; do "$CARGO_TARGET_DIR/release/cadvlm" exec --json --timing "${files[@]}" 2>&1 >/dev/null | sed -E 's/.*\(([0-9.]+) ms per program\)/\1/'; done | sort -g | head -1)
echo "programs: ${#files[@]}"
echo "cadquery: ${cq_ms} ms/program (execute + volume + bbox + n_solids + validity, after import)"
echo "cadvlm:   ${ours_ms} ms/program (execute + volume + bbox + n_solids + validity, whole process)"
python3 -c "print(f'ratio: {float(\"$cq_ms\") / float(\"$ours_ms\"):.1f}x')"
