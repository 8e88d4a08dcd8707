//! Volume, bounding box, mass properties and connected components of solids, by exact ray spans.
//!
//! Rays run along one world axis `A`, in rows along a second axis `R`, stacked along the third `S`.
//! Along each ray the span lengths are exact. Across rows and across rays of a row the integrand is
//! piecewise polynomial for axis-aligned prisms, with breakpoints at the profile vertices, circle
//! extremes and slab ends; we integrate each piece with 2-point Gauss–Legendre (exact to cubics), so a
//! union of axis-aligned polygonal prisms comes out exact to rounding and curved or tilted profiles
//! converge fast. Only prisms extruded along `S` (or tilted) need plain subdivision in `R`.

use serde::{Deserialize, Serialize};

use super::csg::{RayScratch, Solid, length};
use super::prism::{Edge2, Prism, Span};
use super::vec3::{Aabb, V3};

/// Resolution settings for [`measure`] and IoU.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct MeasureOptions {
    /// Maximum piece length as a fraction of the extent, for rows (S) and within rows (R).
    pub pieces: usize,
    /// Grid size per side for counting connected components (0 = skip counting).
    pub component_grid: usize,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            pieces: 24,
            component_grid: 32,
        }
    }
}

/// What `cadvlm exec` reports for a solid.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measure {
    pub volume: f64,
    pub bbox: [f64; 6],
    pub n_solids: usize,
    pub valid: bool,
}

/// Volume, centre of mass and inertia tensor about the centre of mass (OCC's `MatrixOfInertia`).
#[derive(Clone, Copy, Debug)]
pub struct MassProps {
    pub volume: f64,
    pub center: V3,
    pub inertia: [[f64; 3]; 3],
}

/// Graded pieces across each circle or arc (see `s_breaks`).
const CIRCLE_PIECES: usize = 16;

const GAUSS2: [f64; 2] = [-0.577_350_269_189_625_8, 0.577_350_269_189_625_8];

/// Axis roles: rays along `a`, rows along `r`, rows stacked along `s`.
#[derive(Clone, Copy, Debug)]
pub struct Axes {
    pub a: usize,
    pub r: usize,
    pub s: usize,
}

/// Which world axis a prism's normal is aligned with, if its whole frame is axis-aligned.
fn aligned_axis(p: &Prism) -> Option<usize> {
    let f = &p.frame;
    let is_axis = |v: V3| {
        let k = (0..3)
            .max_by(|&i, &j| v[i].abs().total_cmp(&v[j].abs()))
            .unwrap();
        ((v[k].abs() - 1.0).abs() < 1e-12).then_some(k)
    };
    is_axis(f.x)?;
    is_axis(f.y)?;
    is_axis(f.z)
}

/// Pick axes so that as few prisms as possible are extruded along `s` (those need subdivision).
pub fn choose_axes(solids: &[&Solid]) -> Axes {
    let mut count = [0usize; 3];
    let mut tilted = 0;
    for s in solids {
        for p in &s.prisms {
            match aligned_axis(p) {
                Some(k) => count[k] += 1,
                None => tilted += 1,
            }
        }
    }
    let _ = tilted;
    // s: the axis with fewest prisms; a: the axis with most (rays parallel to most extrusions)
    let s = (0..3).rev().min_by_key(|&k| count[k]).unwrap();
    let a = (0..3)
        .filter(|&k| k != s)
        .max_by_key(|&k| (count[k], k))
        .unwrap();
    let r = 3 - s - a;
    Axes { a, r, s }
}

/// Collect the S-coordinates where the integrand over rows may kink, for one prism.
fn s_breaks(p: &Prism, ax: Axes, out: &mut Vec<f64>) {
    s_breaks_with(p, ax, CIRCLE_PIECES, out)
}

/// [`s_breaks`] with `circle_pieces` graded pieces across each circle (2 = just its extremes).
fn s_breaks_with(p: &Prism, ax: Axes, circle_pieces: usize, out: &mut Vec<f64>) {
    let f = &p.frame;
    // every vertex and circle extreme in world coordinates, projected on S
    let dir = [f.x[ax.s], f.y[ax.s]];
    for l in &p.loops {
        for e in &l.edges {
            let mut pts = vec![e.start(), e.end()];
            if let Edge2::Circle { c, r } | Edge2::Arc { c, r, .. } = *e {
                // Chebyshev-spaced lines across the circle: the chord length has a square-root
                // singularity at the extremes, which graded pieces integrate accurately.
                let n = dir[0].hypot(dir[1]);
                if n > 1e-12 {
                    for k in 0..=circle_pieces {
                        let q = (k as f64 * std::f64::consts::PI / circle_pieces as f64).cos();
                        pts.push([c[0] + q * r * dir[0] / n, c[1] + q * r * dir[1] / n]);
                    }
                }
            }
            for q in pts {
                out.push(f.to_world(q[0], q[1], p.w0)[ax.s]);
                out.push(f.to_world(q[0], q[1], p.w1)[ax.s]);
            }
        }
    }
}

/// X-breakpoints (along R) of one axis-aligned prism in the row at S = `s`; `false` if the prism's
/// spans vary continuously along the row (extruded along S, or tilted) and need subdivision.
fn r_breaks(
    p: &Prism,
    ax: Axes,
    s: f64,
    out: &mut Vec<f64>,
    scratch: &mut Vec<(f64, u32)>,
) -> bool {
    match aligned_axis(p) {
        Some(n) if n == ax.a => {
            // region in the plane ⟂ A; the row is the line S = s, running along R
            let mut o = [0.0; 3];
            o[ax.s] = s;
            o[ax.a] = p.frame.origin[ax.a];
            let mut d = [0.0; 3];
            d[ax.r] = 1.0;
            let lo = p.frame.to_local(o);
            let ld = p.frame.dir_to_local(d);
            scratch.clear();
            for l in &p.loops {
                for e in &l.edges {
                    e.crossings([lo[0], lo[1]], [ld[0], ld[1]], scratch, 0);
                }
            }
            out.extend(scratch.iter().map(|(t, _)| *t));
            true
        }
        Some(n) if n == ax.r => {
            out.push(p.frame.origin[ax.r] + p.frame.z[ax.r] * p.w0);
            out.push(p.frame.origin[ax.r] + p.frame.z[ax.r] * p.w1);
            true
        }
        _ => {
            out.push(p.bbox.min[ax.r]);
            out.push(p.bbox.max[ax.r]);
            false
        }
    }
}

/// Sorted unique breakpoints inside `[lo, hi]`, with the ends, each gap split into pieces ≤ `max_piece`.
fn pieces(mut b: Vec<f64>, lo: f64, hi: f64, max_piece: f64) -> Vec<(f64, f64)> {
    b.retain(|x| x.is_finite() && *x > lo && *x < hi);
    b.push(lo);
    b.push(hi);
    b.sort_by(f64::total_cmp);
    b.dedup_by(|x, y| (*x - *y).abs() < 1e-12);
    let mut out = Vec::new();
    for w in b.windows(2) {
        let (x0, x1) = (w[0], w[1]);
        let n = (((x1 - x0) / max_piece).ceil() as usize).max(1);
        for i in 0..n {
            out.push((
                x0 + (x1 - x0) * i as f64 / n as f64,
                x0 + (x1 - x0) * (i + 1) as f64 / n as f64,
            ));
        }
    }
    out
}

/// Integrate `f(spans of each solid, r, s) -> [f64; K]` over the box `bb` (world coordinates) with
/// rays along `ax.a`. `f` returns per-ray line integrals; the result is their area integral. With
/// `polynomial_in_r`, every row piece uses 2 Gauss nodes (for integrands like `r²·length`), else
/// pieces where all prisms are constant along the row use one midpoint node (exact for constants).
pub fn integrate<const K: usize>(
    solids: &[&Solid],
    bb: &Aabb,
    ax: Axes,
    opts: &MeasureOptions,
    polynomial_in_r: bool,
    mut f: impl FnMut(&[&[Span]], f64, f64) -> [f64; K],
) -> [f64; K] {
    let mut acc = [0.0; K];
    if bb.is_empty() {
        return acc;
    }
    let n = opts.pieces.max(1) as f64;
    let ext = bb.extent();
    let (s_lo, s_hi) = (bb.min[ax.s], bb.max[ax.s]);
    let (r_lo, r_hi) = (bb.min[ax.r], bb.max[ax.r]);
    let mut sb = Vec::new();
    for sol in solids {
        for p in &sol.prisms {
            s_breaks(p, ax, &mut sb);
        }
    }
    let s_pieces = pieces(sb, s_lo, s_hi, ext[ax.s].max(1e-300) / n);
    let mut scratches: Vec<RayScratch> = solids.iter().map(|_| RayScratch::default()).collect();
    let mut crossings = Vec::new();
    let mut rb = Vec::new();
    let mut varying = Vec::new();
    let mut spans_buf: Vec<Vec<Span>> = solids.iter().map(|_| Vec::new()).collect();
    for (s0, s1) in s_pieces {
        let (sm, sh) = (0.5 * (s0 + s1), 0.5 * (s1 - s0));
        for g in GAUSS2 {
            let s = sm + sh * g;
            let ws = sh; // Gauss-Legendre weight 1 × half-width
            rb.clear();
            varying.clear();
            for sol in solids {
                for p in &sol.prisms {
                    if p.bbox.min[ax.s] > s || p.bbox.max[ax.s] < s {
                        continue;
                    }
                    let mut tmp = Vec::new();
                    let constant = r_breaks(p, ax, s, &mut tmp, &mut crossings);
                    if !constant && tmp.len() == 2 {
                        varying.push((tmp[0], tmp[1]));
                    }
                    rb.extend(tmp);
                }
            }
            for (r0, r1) in pieces(rb.clone(), r_lo, r_hi, f64::INFINITY) {
                let needs_sub = varying.iter().any(|&(a, b)| a < r1 && b > r0);
                let sub = if needs_sub {
                    pieces(Vec::new(), r0, r1, ext[ax.r].max(1e-300) / n)
                } else {
                    vec![(r0, r1)]
                };
                for (x0, x1) in sub {
                    let (xm, xh) = (0.5 * (x0 + x1), 0.5 * (x1 - x0));
                    let two = needs_sub || polynomial_in_r;
                    let nodes: &[f64] = if two { &GAUSS2 } else { &[0.0] };
                    let wx = if two { xh } else { 2.0 * xh };
                    for &gx in nodes {
                        let r = xm + xh * gx;
                        let mut o = [0.0; 3];
                        o[ax.r] = r;
                        o[ax.s] = s;
                        o[ax.a] = 0.0;
                        let mut d = [0.0; 3];
                        d[ax.a] = 1.0;
                        for (k, sol) in solids.iter().enumerate() {
                            let sp = sol.ray_spans(o, d, &mut scratches[k]);
                            spans_buf[k].clear();
                            spans_buf[k].extend_from_slice(sp);
                        }
                        let refs: Vec<&[Span]> = spans_buf.iter().map(|v| v.as_slice()).collect();
                        let v = f(&refs, r, s);
                        for k in 0..K {
                            acc[k] += v[k] * wx * ws;
                        }
                    }
                }
            }
        }
    }
    acc
}

/// Volume of a solid (exact for a single prism; see the module doc for the general case).
pub fn volume(solid: &Solid, opts: &MeasureOptions) -> f64 {
    if solid.is_empty() {
        return 0.0;
    }
    if solid.prisms.len() == 1 && solid.union_only() && solid.prisms[0].exact_area {
        return solid.prisms[0].volume();
    }
    let ax = choose_axes(&[solid]);
    integrate(
        &[solid],
        &solid.bbox_bound(),
        ax,
        opts,
        false,
        |sp, _, _| [length(sp[0])],
    )[0]
}

/// Exact-where-possible bounding box: the prisms' exact box for union-only solids. With cuts or
/// intersections, each side of the conservative box is kept if rays just inside it find material
/// (the common case: holes and pockets rarely remove a whole extreme face); otherwise that axis's
/// extremes come from the spans of rays along it.
pub fn bbox(solid: &Solid, opts: &MeasureOptions) -> Aabb {
    let bound = solid.bbox_bound();
    if solid.union_only() || bound.is_empty() {
        return bound;
    }
    let ext = bound.extent();
    let mut b = bound;
    let mut scratch = RayScratch::default();
    for i in 0..3 {
        let (j, k) = ((i + 1) % 3, (i + 2) % 3);
        let mut lines = Vec::new();
        for p in &solid.prisms {
            s_breaks_with(p, Axes { a: 0, r: 0, s: k }, 2, &mut lines);
        }
        let ks: Vec<f64> = pieces(
            lines,
            bound.min[k],
            bound.max[k],
            ext[k].max(1e-300) / opts.pieces.max(1) as f64,
        )
        .into_iter()
        .map(|(x0, x1)| 0.5 * (x0 + x1))
        .collect();
        let attained = |c: f64, scratch: &mut RayScratch| {
            ks.iter().any(|&kv| {
                let mut o = [0.0; 3];
                o[i] = c;
                o[k] = kv;
                let mut d = [0.0; 3];
                d[j] = 1.0;
                !solid.ray_spans(o, d, scratch).is_empty()
            })
        };
        let eps = 1e-9 * ext[i].max(1e-12);
        let lo_ok = attained(bound.min[i] + eps, &mut scratch);
        let hi_ok = attained(bound.max[i] - eps, &mut scratch);
        if lo_ok && hi_ok {
            continue;
        }
        let ax = Axes { a: i, r: j, s: k };
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        integrate(&[solid], &bound, ax, opts, false, |sp, _, _| {
            if let (Some(f), Some(l)) = (sp[0].first(), sp[0].last()) {
                lo = lo.min(f.t0);
                hi = hi.max(l.t1);
            }
            [0.0]
        });
        if !lo_ok {
            b.min[i] = lo.max(bound.min[i]);
        }
        if !hi_ok {
            b.max[i] = hi.min(bound.max[i]);
        }
    }
    b
}

/// Volume, centre of mass and inertia about the centre (OCC's convention: I_xx = ∫(y²+z²), I_xy = −∫xy).
pub fn mass_props(solid: &Solid, opts: &MeasureOptions) -> MassProps {
    let bb = solid.bbox_bound();
    let ax = choose_axes(&[solid]);
    let c0 = bb.center();
    // moments about c0 along the ray axis: shift t by c0[a]
    let m = integrate(&[solid], &bb, ax, opts, true, |sp, r, s| {
        let (r, s) = (r - c0[ax.r], s - c0[ax.s]);
        let (mut l0, mut l1, mut l2) = (0.0, 0.0, 0.0);
        for x in sp[0] {
            let (t0, t1) = (x.t0 - c0[ax.a], x.t1 - c0[ax.a]);
            l0 += t1 - t0;
            l1 += (t1 * t1 - t0 * t0) / 2.0;
            l2 += (t1 * t1 * t1 - t0 * t0 * t0) / 3.0;
        }
        // [V, ∫a, ∫r, ∫s, ∫aa, ∫rr, ∫ss, ∫ar, ∫as, ∫rs]
        [
            l0,
            l1,
            r * l0,
            s * l0,
            l2,
            r * r * l0,
            s * s * l0,
            r * l1,
            s * l1,
            r * s * l0,
        ]
    });
    let v = m[0];
    let mut first = [0.0; 3];
    first[ax.a] = m[1];
    first[ax.r] = m[2];
    first[ax.s] = m[3];
    let mut second = [[0.0; 3]; 3];
    let idx = [
        (ax.a, ax.a, 4),
        (ax.r, ax.r, 5),
        (ax.s, ax.s, 6),
        (ax.a, ax.r, 7),
        (ax.a, ax.s, 8),
        (ax.r, ax.s, 9),
    ];
    for (i, j, k) in idx {
        second[i][j] = m[k];
        second[j][i] = m[k];
    }
    let cm = if v > 0.0 {
        [first[0] / v, first[1] / v, first[2] / v]
    } else {
        [0.0; 3]
    };
    // central second moments
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = second[i][j] - v * cm[i] * cm[j];
        }
    }
    let tr = c[0][0] + c[1][1] + c[2][2];
    let mut inertia = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            inertia[i][j] = if i == j { tr - c[i][i] } else { -c[i][j] };
        }
    }
    let center = [cm[0] + c0[0], cm[1] + c0[1], cm[2] + c0[2]];
    MassProps {
        volume: v,
        center,
        inertia,
    }
}

/// Number of connected components. Rays run in the plane of most sketches (so thin walls are
/// crossed, not missed) on a tensor grid whose lines include every profile vertex and circle extreme
/// (so a thin gap between two parts gets a column of rays that hit nothing); neighbouring rays whose
/// spans overlap or touch are connected. Touching solids count as one, as OCC's fuse makes them one.
pub fn components(solid: &Solid, grid: usize) -> usize {
    if solid.is_empty() || grid == 0 {
        return 0;
    }
    // one extrude, no crossing loops: each outer loop (with its holes) is one solid
    if solid.prisms.len() == 1 && solid.union_only() && solid.prisms[0].exact_area {
        return solid.prisms[0].outer_loops();
    }
    let bb = solid.bbox_bound();
    let vol_axes = choose_axes(&[solid]);
    // rays along an axis that most prisms are NOT extruded along
    let a = vol_axes.s;
    let ax = Axes {
        a,
        r: (a + 1) % 3,
        s: (a + 2) % 3,
    };
    let ext = bb.extent();
    let lines = |axis: usize| {
        let mut b = Vec::new();
        for p in &solid.prisms {
            let other = Axes {
                a: 0,
                r: 0,
                s: axis,
            };
            s_breaks_with(p, other, 2, &mut b);
        }
        let mut b = if b.len() > 4 * grid { Vec::new() } else { b };
        b.retain(|x| x.is_finite());
        pieces(
            b,
            bb.min[axis],
            bb.max[axis],
            ext[axis].max(1e-300) / grid as f64,
        )
        .into_iter()
        .map(|(x0, x1)| 0.5 * (x0 + x1))
        .collect::<Vec<f64>>()
    };
    let (rs, ss) = (lines(ax.r), lines(ax.s));
    let (nr, ns) = (rs.len(), ss.len());
    let mut scratch = RayScratch::default();
    let mut spans: Vec<Vec<Span>> = Vec::with_capacity(nr * ns);
    for &r in &rs {
        for &s in &ss {
            let mut o = [0.0; 3];
            o[ax.r] = r;
            o[ax.s] = s;
            let mut d = [0.0; 3];
            d[ax.a] = 1.0;
            spans.push(solid.ray_spans(o, d, &mut scratch).to_vec());
        }
    }
    let mut offset = Vec::with_capacity(spans.len() + 1);
    let mut total = 0;
    for s in &spans {
        offset.push(total);
        total += s.len();
    }
    let mut parent: Vec<usize> = (0..total).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for i in 0..nr {
        for j in 0..ns {
            let k = i * ns + j;
            for nb in [(i + 1 < nr).then(|| k + ns), (j + 1 < ns).then(|| k + 1)]
                .into_iter()
                .flatten()
            {
                for (x, sx) in spans[k].iter().enumerate() {
                    for (y, sy) in spans[nb].iter().enumerate() {
                        if sx.t0 <= sy.t1 && sy.t0 <= sx.t1 {
                            let (u, v) = (
                                find(&mut parent, offset[k] + x),
                                find(&mut parent, offset[nb] + y),
                            );
                            if u != v {
                                parent[u] = v;
                            }
                        }
                    }
                }
            }
        }
    }
    (0..total).filter(|&x| find(&mut parent, x) == x).count()
}

/// Everything `cadvlm exec` reports.
pub fn measure(solid: &Solid, opts: &MeasureOptions) -> Measure {
    let bb = bbox(solid, opts);
    Measure {
        volume: volume(solid, opts),
        bbox: bb.to_array(),
        n_solids: components(solid, opts.component_grid),
        valid: !solid.is_empty() && solid.prisms.iter().all(|p| p.valid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cad::{Limits, execute};

    fn prog(body: &str) -> Solid {
        execute(
            &format!("import cadquery as cq\n{body}"),
            &Limits::default(),
        )
        .unwrap()
    }

    #[test]
    fn box_mass_props_are_exact() {
        // a 1 × 2 × 3 box with its corner at (1, 0, -1)
        let s = prog(
            "w = cq.Workplane(cq.Plane(cq.Vector(1, 0, -1), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)))\nsolid = w.moveTo(0, 0).lineTo(1, 0).lineTo(1, 2).lineTo(0, 2).close().extrude(3)\n",
        );
        let m = mass_props(&s, &MeasureOptions::default());
        assert!((m.volume - 6.0).abs() < 1e-12);
        for (c, e) in m.center.iter().zip([1.5, 1.0, 0.5]) {
            assert!((c - e).abs() < 1e-12, "{:?}", m.center);
        }
        let (a, b, c) = (1.0f64, 2.0f64, 3.0f64);
        let v = 6.0;
        let expect = [
            v * (b * b + c * c) / 12.0,
            v * (a * a + c * c) / 12.0,
            v * (a * a + b * b) / 12.0,
        ];
        for i in 0..3 {
            assert!(
                (m.inertia[i][i] - expect[i]).abs() < 1e-10,
                "{:?}",
                m.inertia
            );
            for j in 0..3 {
                if i != j {
                    assert!(m.inertia[i][j].abs() < 1e-10);
                }
            }
        }
    }

    #[test]
    fn cylinder_volume_and_inertia() {
        let s = prog(
            "w = cq.Workplane(cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 1, 0)))\nc = w.moveTo(0.2, 0.1).circle(0.5)\nb = cq.Workplane(cq.Plane(cq.Vector(5, 5, 5), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1))).moveTo(0, 0).lineTo(0.1, 0).lineTo(0.1, 0.1).close().extrude(0.1)\nsolid = w.extrude(2).union(b)\n",
        );
        let m = mass_props(&s, &MeasureOptions::default());
        let vc = std::f64::consts::PI * 0.25 * 2.0;
        assert!((m.volume - (vc + 0.0005)).abs() / vc < 1e-4, "{}", m.volume);
    }
}
