"""Write synthetic GenCAD-style programs whose sketch loops touch or cross, for differential tests
of the executor against CadQuery/OpenCascade (valid flag, volume, IoU).

Usage: python benches/touching_programs.py OUT_DIR [N] [SEED]
then:  .venv-cq/bin/python ../shared/oracle/cq_reference.py OUT_DIR > OUT_DIR/reference-cadquery.jsonl

Kinds (round-robin): tangent hole circles, a hole tangent to the outer boundary, a hole polygon sharing
a vertex with the outer loop, a hole sharing part of an edge with the outer loop, two outer polygons
sharing a vertex, two outer rectangles sharing an edge, a circle tangent inside a circle, a bow-tie
(self-crossing) loop, a loop touching itself at a vertex, two crossing loops, a hole arc tangent to an
outer arc. Coordinates are exact binary fractions where tangency must be exact.
"""
import math
import os
import random
import sys

PLANES = [
    "cq.Plane(cq.Vector({ox}, {oy}, {oz}), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0))",
    "cq.Plane(cq.Vector({ox}, {oy}, {oz}), cq.Vector(1.0, 6.123233995736766e-17, -6.123233995736766e-17), cq.Vector(6.123233995736766e-17, -1.0, 6.123233995736766e-17))",
    "cq.Plane(cq.Vector({ox}, {oy}, {oz}), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0))",
]


def q(x):
    """Round to a multiple of 1/256 (exact in binary)."""
    return round(x * 256) / 256


def poly(pts):
    s = f"moveTo({pts[0][0]}, {pts[0][1]})"
    for p in pts[1:]:
        s += f".lineTo({p[0]}, {p[1]})"
    return s + ".close()"


def circ(c, r):
    return f"moveTo({c[0]}, {c[1]}).circle({r})"


def rect(x0, y0, x1, y1):
    return poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def kind_tangent_holes(R):
    w, h = q(R.uniform(1.0, 1.6)), q(R.uniform(0.8, 1.2))
    r1, r2 = q(R.uniform(0.1, 0.25)), q(R.uniform(0.1, 0.25))
    cx, cy = q(w * 0.4), q(h * 0.5)
    if R.random() < 0.5:  # side by side along x: exact tangency
        c2 = (cx + r1 + r2, cy)
    else:  # along y
        c2 = (cx, cy + r1 + r2)
    return [rect(0.0, 0.0, w, h), circ((cx, cy), r1), circ(c2, r2)]


def kind_hole_tangent_outer(R):
    w, h = q(R.uniform(1.0, 1.6)), q(R.uniform(0.8, 1.2))
    r = q(R.uniform(0.1, 0.3))
    cx = q(R.uniform(r + 0.1, w - r - 0.1))
    return [rect(0.0, 0.0, w, h), circ((cx, r), r)]  # touches y = 0 from inside


def kind_hole_shares_vertex(R):
    w, h = q(R.uniform(1.0, 1.6)), q(R.uniform(0.8, 1.2))
    a, b = q(R.uniform(0.3, 0.6)), q(R.uniform(0.3, 0.6))
    return [rect(0.0, 0.0, w, h), poly([(0.0, 0.0), (a, q(b / 3)), (q(a / 3), b)])]


def kind_hole_shares_edge(R):
    w, h = q(R.uniform(1.0, 1.6)), q(R.uniform(0.8, 1.2))
    x0, x1 = q(R.uniform(0.2, 0.5)), q(R.uniform(0.6, 0.9))
    d = q(R.uniform(0.2, 0.5))
    return [rect(0.0, 0.0, w, h), rect(x0, 0.0, x1, d)]


def kind_outers_share_vertex(R):
    a, b = q(R.uniform(0.4, 0.8)), q(R.uniform(0.4, 0.8))
    return [poly([(0.0, 0.0), (a, 0.0), (a, b)]), poly([(a, b), (q(2 * a), b), (q(2 * a), q(2 * b))])]


def kind_outers_share_edge(R):
    a, b, c = q(R.uniform(0.4, 0.8)), q(R.uniform(0.4, 0.8)), q(R.uniform(0.3, 0.7))
    return [rect(0.0, 0.0, a, b), rect(a, 0.0, a + c, b)]


def kind_circle_in_circle(R):
    r1 = q(R.uniform(0.5, 0.8))
    r2 = q(R.uniform(0.15, r1 - 0.1))
    return [circ((0.0, 0.0), r1), circ((r1 - r2, 0.0), r2)]


def kind_bowtie(R):
    a, b = q(R.uniform(0.5, 1.0)), q(R.uniform(0.3, 0.8))
    return [poly([(0.0, 0.0), (a, b), (a, 0.0), (0.0, b)])]


def kind_self_touch(R):
    a, b = q(R.uniform(0.4, 0.8)), q(R.uniform(0.3, 0.6))
    # a figure eight through (a, b/2): two triangles joined at one vertex, one loop
    m = (a, q(b / 2))
    return [poly([(0.0, 0.0), m, (q(2 * a), 0.0), (q(2 * a), b), m, (0.0, b)])]


def kind_crossing(R):
    w, h = q(R.uniform(0.8, 1.2)), q(R.uniform(0.6, 1.0))
    dx, dy = q(R.uniform(0.2, 0.5)), q(R.uniform(0.2, 0.5))
    return [rect(0.0, 0.0, w, h), rect(dx, dy, w + dx, h + dy)]


def kind_arc_tangent(R):
    # a slot-like outer loop (two arcs, two lines) and a hole circle tangent to its right arc inside
    L, r = q(R.uniform(0.6, 1.0)), q(R.uniform(0.25, 0.4))
    rh = q(R.uniform(0.08, r - 0.05))
    outer = (f"moveTo(0.0, {-r}).lineTo({L}, {-r}).threePointArc(({L + r}, 0.0), ({L}, {r}))"
             f".lineTo(0.0, {r}).threePointArc(({-r}, 0.0), (0.0, {-r})).close()")
    return [outer, circ((L + r - rh, 0.0), rh)]


KINDS = [kind_tangent_holes, kind_hole_tangent_outer, kind_hole_shares_vertex, kind_hole_shares_edge,
         kind_outers_share_vertex, kind_outers_share_edge, kind_circle_in_circle, kind_bowtie,
         kind_self_touch, kind_crossing, kind_arc_tangent]


def program(R, k):
    loops = KINDS[k % len(KINDS)](R)
    plane = R.choice(PLANES).format(ox=q(R.uniform(-0.5, 0.5)), oy=q(R.uniform(-0.5, 0.5)), oz=q(R.uniform(-0.5, 0.5)))
    lines = ["import cadquery as cq", f"# kind: {KINDS[k % len(KINDS)].__name__[5:]}", f"wp_sketch0 = cq.Workplane({plane})"]
    names = []
    for i, l in enumerate(loops):
        lines.append(f"loop{i}=wp_sketch0.{l}")
        names.append(f"loop{i}")
    adds = "".join(f".add({n})" for n in names)
    lines.append(f"solid0=wp_sketch0{adds}.extrude({q(R.uniform(0.05, 0.5))})")
    lines.append("solid=solid0")
    if R.random() < 0.3:  # union with a plain box elsewhere, as GenCAD programs do
        lines.append(f"wp_sketch1 = cq.Workplane({PLANES[0].format(ox=0.0, oy=0.0, oz=-0.25)})")
        lines.append(f"loop{len(loops)}=wp_sketch1.{rect(-0.5, -0.5, 0.25, 0.25)}")
        lines.append(f"solid1=wp_sketch1.add(loop{len(loops)}).extrude(0.125)")
        lines.append("solid=solid.union(solid1)")
    return "\n".join(lines) + "\n"


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 66
    R = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    os.makedirs(out, exist_ok=True)
    for k in range(n):
        with open(os.path.join(out, f"t{k:03d}.py"), "w") as f:
            f.write(program(R, k))


if __name__ == "__main__":
    main()
