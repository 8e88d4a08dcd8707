#!/usr/bin/env bash
# Execute + measure every real program of ../shared/data with CadQuery 2.8.0 (in one Python process,
# import excluded, best of 3 passes) and with `cadvlm exec` (one whole process: start-up, loading the
# guest, reading files, JSON output included; best of 5), in the same run; print ms/program and the ratio.
# The guest cache is warmed once first (a first start on a new machine or after a rebuild compiles the
# guest, ~0.5 s; that cold start is printed too).
# Needs a Python with cadquery: CQ_PYTHON=/path/to/venv/bin/python (see ../shared/oracle/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
CQ_PYTHON="${CQ_PYTHON:-python3}"
DATA="${DATA:-../shared/data}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cadvlm-target}"
cargo build --release --quiet --no-default-features --features cli
bin="$CARGO_TARGET_DIR/release/cadvlm"
files=("$DATA"/semantics/*.py "$DATA"/gencad-programs/*.py "$DATA"/gencad-test100-dev/*.py "$DATA"/recode-programs/*.py)
n=${#files[@]}
cq_ms=$("$CQ_PYTHON" benches/cadquery_baseline.py "${files[@]}")
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 )); }
cold_dir=$(mktemp -d)
cold_us=$(CADVLM_CACHE_DIR="$cold_dir" ms "$bin" exec --json "${files[0]}")
rm -rf "$cold_dir"
"$bin" exec --json "${files[0]}" >/dev/null   # warm the guest cache
one_us=$(for i in 1 2 3 4 5; do ms "$bin" exec --json "${files[0]}"; done | sort -n | head -1)
all_us=$(for i in 1 2 3 4 5; do ms "$bin" exec --json "${files[@]}"; done | sort -n | head -1)
"$bin" exec --json --timing "${files[@]}" 2>&1 >/dev/null | sed 's/^/  /'
ours_ms=$(python3 -c "print(f'{$all_us / 1e3 / $n:.3f}')")
echo "programs: $n (ok or not, all counted)"
echo "cadquery: ${cq_ms} ms/program (execute + volume + bbox + n_solids + validity, after import, best of 3)"
echo "cadvlm:   ${ours_ms} ms/program ($(python3 -c "print($all_us/1e3)") ms for the whole process, best of 5)"
echo "cadvlm exec of one program: $(python3 -c "print($one_us/1e3)") ms wall (warm guest cache), $(python3 -c "print($cold_us/1e3)") ms (cold: compiles the guest)"
python3 -c "print(f'ratio: {float(\"$cq_ms\") / float(\"$ours_ms\"):.1f}x')"
