"""Execute + measure the real programs through the `cadvlm` Python package and with CadQuery 2.8.0, in one run.

Usage (with the package installed, e.g. the venv of python/run_tests.sh):

    ~/.cache/cadvlm-pyvenv/bin/python benches/python_vs_cadquery.py [--cq-python PY] [--min-ratio 50]

The programs: the GenCAD-Code ground truths and model outputs of ../shared/data (gencad-programs,
gencad-test100-dev), or their checked-in copies under fixtures/cadquery. CadQuery runs in its own
interpreter (`--cq-python`, `$CQ_PYTHON`, else a venv made at ~/.cache/cadvlm-cq-venv with
`pip install cadquery==2.8.0`) through benches/cadquery_baseline.py: execute + volume + bbox + n_solids
+ validity per program, after import, best of 3 passes, one thread. Ours: the same measurements by
`cadvlm.execute` (the wasm sandbox, one call per program from Python, one thread), best of 5 passes;
also `execute_many` on one thread and on all cores, and the native backend, for reference.
Exits 1 when the one-thread ratio is below --min-ratio.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cadvlm

ROOT = Path(__file__).resolve().parents[1]


def programs():
    for base in (ROOT.parent / "shared" / "data", ROOT / "fixtures" / "cadquery"):
        files = sorted((base / "gencad-programs").glob("*.py")) + sorted(
            (base / "gencad-test100-dev").glob("*.py")
        )
        if files:
            return files
    sys.exit("no programs found under ../shared/data or fixtures/cadquery")


def cadquery_python(arg):
    if arg:
        return arg
    if os.environ.get("CQ_PYTHON"):
        return os.environ["CQ_PYTHON"]
    venv = Path.home() / ".cache" / "cadvlm-cq-venv"
    py = venv / "bin" / "python"
    works = py.exists() and subprocess.run([str(py), "-c", "import cadquery"], capture_output=True).returncode == 0
    if not works:
        print(f"making {venv} with cadquery 2.8.0 (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "cadquery==2.8.0"], check=True)
    return str(py)


def best_ms(fn, n_programs, passes):
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best / n_programs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cq-python", help="a Python with cadquery 2.8.0")
    ap.add_argument("--min-ratio", type=float, default=50.0)
    args = ap.parse_args()

    files = programs()
    srcs = [f.read_text() for f in files]
    cq = subprocess.run(
        [cadquery_python(args.cq_python), str(ROOT / "benches" / "cadquery_baseline.py"), *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    )
    cq_ms = float(cq.stdout.strip().splitlines()[-1])

    cadvlm.execute(srcs[0])  # compile the wasm guest once (about a second), as CadQuery's import is excluded
    reports = [cadvlm.execute(s) for s in srcs]
    ok = sum(r["ok"] for r in reports)
    ours = {
        "execute, wasm, 1 thread": best_ms(lambda: [cadvlm.execute(s) for s in srcs], len(srcs), 5),
        "execute_many, wasm, 1 thread": best_ms(lambda: cadvlm.execute_many(srcs, threads=1), len(srcs), 5),
        f"execute_many, wasm, {os.cpu_count()} threads": best_ms(lambda: cadvlm.execute_many(srcs), len(srcs), 5),
        "execute, native, 1 thread": best_ms(
            lambda: [cadvlm.execute(s, sandbox="native") for s in srcs], len(srcs), 5
        ),
    }
    print(f"programs: {len(srcs)} ({ok} execute to a solid in cadvlm)")
    print(f"cadquery 2.8.0: {cq_ms:.3f} ms/program (execute + volume + bbox + n_solids + validity, after import, 1 thread)")
    for name, ms in ours.items():
        print(f"cadvlm {name}: {ms:.3f} ms/program  ({cq_ms / ms:.1f}x)")
    ratio = cq_ms / ours["execute, wasm, 1 thread"]
    print(f"ratio (one call per program, wasm sandbox, 1 thread): {ratio:.1f}x (required: >= {args.min_ratio:g}x)")
    sys.exit(0 if ratio >= args.min_ratio else 1)


if __name__ == "__main__":
    main()
