#!/usr/bin/env python3
"""Our Chamfer distance against the same computation on CadQuery's tessellation.

The CadQuery side is cadrille's evaluate.py (github.com/col14m/cadrille): `shape.tessellate(0.001, 0.1)`,
the mesh centred on its bbox centre and scaled by 1 / its largest extent, 8192 points per mesh from
`trimesh.sample.sample_surface`, `scipy.spatial.cKDTree` nearest neighbours,
CD = mean(d²(B→A)) + mean(d²(A→B)). Each pair's reference is averaged over --repeats samplings (the
metric is random; the mean is what ours must match). Our side is `cadvlm iou A B --json` (its `chamfer`).

Pairs, per folder of real programs (sorted): each program against the next one (different parts),
against itself (the sampling floor), and against a copy with every extrusion depth ×1.15 (a near miss).

usage: chamfer_vs_cadquery.py [--cadvlm BIN] [--fixture OUT.jsonl] [--repeats R] [--limit N] DIR...
  --fixture writes the CadQuery values (and the programs of perturbed copies) for tests/chamfer.rs;
  without --cadvlm only the CadQuery side is computed.
Run with the CadQuery venv: /work/venv-cq/bin/python benches/chamfer_vs_cadquery.py ../shared/data/gencad-test100-dev
"""
import argparse, glob, json, os, re, subprocess, sys, tempfile, time, zlib

import numpy as np
import trimesh
from scipy.spatial import cKDTree

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "shared", "oracle"))
import cadquery as cq  # noqa: E402
import cq_oracle as O  # noqa: E402

N_POINTS = 8192


def mesh_of(code):
    """cadrille's compound_to_mesh + the unit-cube normalisation of its run_cd_single."""
    shape = cq.Shape.cast(O.run_program(code))
    vertices, faces = shape.tessellate(0.001, 0.1)
    mesh = trimesh.Trimesh([(v.x, v.y, v.z) for v in vertices], faces)
    center = (mesh.bounds[0] + mesh.bounds[1]) / 2.0
    mesh.apply_translation(-center)
    extent = np.max(mesh.extents)
    if extent > 1e-7:
        mesh.apply_scale(1.0 / extent)
    return mesh


def cd_mesh(a, b, seed):
    """cadrille's compute_chamfer_distance."""
    pa, _ = trimesh.sample.sample_surface(a, N_POINTS, seed=seed)
    pb, _ = trimesh.sample.sample_surface(b, N_POINTS, seed=seed + 1_000_003)
    da, _ = cKDTree(pa).query(pb, k=1)
    db, _ = cKDTree(pb).query(pa, k=1)
    return float(np.mean(np.square(da)) + np.mean(np.square(db)))


def perturb(code):
    """Every extrusion depth ×1.15 (keeps the profile valid)."""
    return re.sub(r"extrude\(\s*([-0-9.eE+]+)", lambda m: f"extrude({float(m.group(1)) * 1.15!r}", code)


def ours(binary, a_code, b_code, sandbox):
    with tempfile.TemporaryDirectory() as d:
        pa, pb = os.path.join(d, "a.py"), os.path.join(d, "b.py")
        open(pa, "w").write(a_code)
        open(pb, "w").write(b_code)
        out = subprocess.run([binary, "iou", pa, pb, "--json", "--sandbox", sandbox],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1]).get("chamfer")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--cadvlm")
    ap.add_argument("--sandbox", default="native")
    ap.add_argument("--fixture")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0, help="programs per folder (0: all)")
    args = ap.parse_args()

    rows = []
    for d in args.dirs:
        files = sorted(glob.glob(os.path.join(d, "*.py")))
        if args.limit:
            files = files[: args.limit]
        folder = os.path.basename(os.path.normpath(d))
        codes = {f: open(f).read() for f in files}
        meshes = {}
        for f in files:
            try:
                meshes[f] = mesh_of(codes[f])
            except Exception as e:  # noqa
                print(f"skip {f}: {type(e).__name__}: {e}", file=sys.stderr)
        ok = [f for f in files if f in meshes]
        pairs = []
        for i, f in enumerate(ok):
            pairs.append(("next", f, ok[(i + 1) % len(ok)], None))
            pairs.append(("self", f, f, None))
            p = perturb(codes[f])
            if p != codes[f]:
                pairs.append(("extrude*1.15", f, f, p))
        for kind, fa, fb, b_code in pairs:
            try:
                mb = meshes[fb] if b_code is None else mesh_of(b_code)
            except Exception as e:  # noqa
                print(f"skip perturbed {fb}: {e}", file=sys.stderr)
                continue
            seed0 = zlib.crc32(f"{os.path.basename(fa)} {os.path.basename(fb)} {kind}".encode()) % (1 << 30)
            cds = [cd_mesh(meshes[fa], mb, seed0 + 17 * r) for r in range(args.repeats)]
            row = {"a": f"{folder}/{os.path.basename(fa)}", "b": f"{folder}/{os.path.basename(fb)}", "kind": kind,
                   "cd_cadquery": float(np.mean(cds)), "cd_cadquery_std": float(np.std(cds)), "repeats": args.repeats}
            if b_code is not None:
                row["b_program"] = b_code
            if args.cadvlm:
                t = time.perf_counter()
                row["cd_ours"] = ours(args.cadvlm, codes[fa], b_code if b_code is not None else codes[fb], args.sandbox)
                row["ours_s"] = time.perf_counter() - t
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "b_program"}), file=sys.stderr, flush=True)

    if args.fixture:
        with open(args.fixture, "w") as f:
            for r in rows:
                f.write(json.dumps({k: v for k, v in r.items() if k not in ("cd_ours", "ours_s")}) + "\n")

    both = [r for r in rows if r.get("cd_ours") is not None]
    if both:
        print(f"{len(both)} pairs; CD×1000 (CadQuery mean of {args.repeats} samplings | ours):")
        for kind in sorted({r["kind"] for r in both}) + ["all"]:
            sel = [r for r in both if kind == "all" or r["kind"] == kind]
            ref = np.array([r["cd_cadquery"] for r in sel]) * 1000
            our = np.array([r["cd_ours"] for r in sel]) * 1000
            rel = np.abs(our - ref) / ref
            print(f"  {kind:13s} n={len(sel):3d}  mean {ref.mean():8.3f} | {our.mean():8.3f} ({our.mean() / ref.mean() - 1:+.2%})"
                  f"  median {np.median(ref):7.3f} | {np.median(our):7.3f} ({np.median(our) / np.median(ref) - 1:+.2%})"
                  f"  |rel diff| mean {rel.mean():.2%} median {np.median(rel):.2%} max {rel.max():.2%}")


if __name__ == "__main__":
    main()
