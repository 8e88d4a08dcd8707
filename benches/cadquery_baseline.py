"""Time CadQuery 2.8.0 on execute + volume + bbox + n_solids + validity per program (after import).

Usage: python cadquery_baseline.py FILE.py ...   -> prints the mean ms per program (best of 3 passes).
Uses ../shared/oracle/cq_oracle.py's definitions (run_program, describe) when it is beside the checkout.
"""
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "shared", "oracle"))
import cq_oracle as O  # noqa: E402
import cadquery  # noqa: E402,F401  (import cost excluded)

files = sys.argv[1:]
srcs = [open(f).read() for f in files]
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    for s in srcs:
        try:
            O.describe(O.run_program(s))
        except Exception:
            pass
    best = min(best, time.perf_counter() - t)
print(f"{1e3 * best / len(srcs):.3f}")
