# cadvlm's cadquery backend runner (embedded in src/sandbox/cadquery.rs): one request on stdin, one JSON answer on stdout.
# The program runs in this process after rlimits are set; see cadquery.rs for what this does and does not protect against.
import ast, json, resource, sys


def answer(**kw):
    base = {"ok": False, "error": None, "error_kind": None, "volume": None, "bbox": None, "n_solids": None, "valid": None, "iou": None}
    base.update(kw)
    sys.stdout.write(json.dumps(base))
    sys.stdout.flush()


def fail(kind, msg):
    answer(error=msg, error_kind=kind)
    sys.exit(0)


req = json.loads(sys.stdin.read())
try:
    import cadquery as cq
    import numpy as np
    from OCP.GProp import GProp_GProps
    from OCP.BRepGProp import BRepGProp
    from OCP.Bnd import Bnd_Box
    from OCP.BRepBndLib import BRepBndLib
    from OCP.BRepCheck import BRepCheck_Analyzer
    from OCP.TopExp import TopExp_Explorer
    from OCP.TopAbs import TopAbs_SOLID
    from OCP.gp import gp_Trsf, gp_Vec
    from OCP.BRepBuilderAPI import BRepBuilderAPI_Transform
    from OCP.BRepAlgoAPI import BRepAlgoAPI_Common, BRepAlgoAPI_Fuse
except Exception as e:  # noqa
    fail("crash", f"cannot import cadquery: {e}")

# Limits apply from here on: address space (current + memory_mb), CPU seconds, no file writes, no core dumps.
with open("/proc/self/statm") as f:
    vm_now = int(f.read().split()[0]) * resource.getpagesize()
mem = vm_now + int(req["memory_bytes"])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
cpu = int(req["cpu_s"])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run(code):
    try:
        tree = compile(code, "<program>", "exec")
    except SyntaxError as e:
        fail("syntax", f"line {e.lineno}, column {e.offset}: {e.msg}")
    g = {"__name__": "__program__"}
    try:
        exec(tree, g)
    except MemoryError:
        fail("out_of_memory", "the program needed more memory than allowed")
    except Exception as e:  # noqa
        tb = e.__traceback__
        line = 0
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<program>":
                line = tb.tb_lineno
            tb = tb.tb_next
        fail("runtime", f"line {line}, column 1: {type(e).__name__}: {e}")
    cand = None
    for name in ["solid", "result", "r"]:
        if isinstance(g.get(name), (cq.Workplane, cq.Shape)):
            cand = g[name]
            break
    if cand is None:
        names = [t.id for st in ast.parse(code).body if isinstance(st, ast.Assign) for t in st.targets if isinstance(t, ast.Name)]
        for name in reversed(names):
            if isinstance(g.get(name), (cq.Workplane, cq.Shape)):
                cand = g[name]
                break
    if cand is None:
        fail("no_result", "line 1, column 1: no Workplane/Shape result found")
    shapes = [o for o in cand.vals() if isinstance(o, cq.Shape)] if isinstance(cand, cq.Workplane) else [cand]
    solids = [s for s in shapes if s.Solids()]
    if not solids:
        fail("no_result", "line 1, column 1: the result contains no solid")
    shp = solids[0] if len(solids) == 1 else solids[0].fuse(*solids[1:])
    return shp.wrapped


def props(s):
    p = GProp_GProps()
    BRepGProp.VolumeProperties_s(s, p)
    return p


def bbox(s):
    b = Bnd_Box()
    BRepBndLib.AddOptimal_s(s, b, False, False)
    return list(b.Get())


def transform(s, scale, translate, rot=None):
    t = gp_Trsf()
    t.SetTranslation(gp_Vec(*translate))
    sc = gp_Trsf()
    sc.SetScaleFactor(scale)
    tr = sc.Multiplied(t)
    if rot is not None:
        r = gp_Trsf()
        r.SetValues(*rot[0], 0.0, *rot[1], 0.0, *rot[2], 0.0)
        tr = r.Multiplied(tr)
    return BRepBuilderAPI_Transform(s, tr, True).Shape()


def bool_vol(a, b, op):
    bo = (BRepAlgoAPI_Common if op == "common" else BRepAlgoAPI_Fuse)(a, b)
    if not bo.IsDone():
        raise RuntimeError(f"boolean {op} failed")
    return props(bo.Shape()).Mass()


def unitcube(s):
    b = bbox(s)
    ext = max(b[i + 3] - b[i] for i in range(3))
    return transform(s, 1.0 / ext if ext > 1e-7 else 1.0, [-(b[i] + b[i + 3]) / 2 for i in range(3)])


def iou_best(a, b):
    def mp(s):
        p = props(s)
        c = p.CentreOfMass()
        m = p.MatrixOfInertia()
        return np.array([c.X(), c.Y(), c.Z()]), np.array([[m.Value(i, j) for j in (1, 2, 3)] for i in (1, 2, 3)]), p.Mass()
    cs, Is, vs = mp(a)
    ct, It, vt = mp(b)
    ps, Vs = np.linalg.eigh(Is)
    pt, Vt = np.linalg.eigh(It)
    na = transform(a, 1 / np.sqrt(np.abs(ps).sum() / vs), -cs)
    nb = transform(b, 1 / np.sqrt(np.abs(pt).sum() / vt), -ct)
    rots = [Vt @ Vs.T]
    for i in range(3):
        al = 1 - 2 * np.array([i > 0, (i + 1) % 2, i % 3 <= 1])
        rots.append(Vt @ (al[None, :] * Vs).T)
    best = 0.0
    for R in rots:
        try:
            aa = transform(na, 1.0, (0, 0, 0), R)
            best = max(best, bool_vol(aa, nb, "common") / bool_vol(aa, nb, "fuse"))
        except Exception:  # noqa
            pass
    return best


try:
    shape = run(req["program"])
    n = 0
    e = TopExp_Explorer(shape, TopAbs_SOLID)
    while e.More():
        n += 1
        e.Next()
    out = {"ok": True, "volume": props(shape).Mass(), "bbox": bbox(shape), "n_solids": n, "valid": bool(BRepCheck_Analyzer(shape).IsValid())}
    if req.get("target") is not None:
        tshape = run(req["target"])
        norm = req.get("normalize") or "unitcube"
        if norm == "best":
            out["iou"] = iou_best(shape, tshape)
        else:
            a, b = (unitcube(shape), unitcube(tshape)) if norm == "unitcube" else (shape, tshape)
            va, vb = props(a).Mass(), props(b).Mass()
            vi = bool_vol(a, b, "common")
            out["iou"] = vi / (va + vb - vi) if va + vb - vi > 0 else 0.0
    answer(**out)
except MemoryError:
    fail("out_of_memory", "the program needed more memory than allowed")
except SystemExit:
    raise
except Exception as e:  # noqa
    fail("invalid_geometry", f"line 1, column 1: {type(e).__name__}: {e}")
