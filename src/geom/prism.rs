//! Prisms: a planar even-odd region of lines, arcs and circles, extruded along its plane normal.
//!
//! The region lives in the local `(u, v)` coordinates of a [`Frame`]; the prism spans `w ∈ [w0, w1]`
//! along the frame's normal. [`Prism::ray_spans`] gives the exact parameter intervals where a world
//! ray is inside the prism, tagged with the surface each interval enters and leaves through.

use serde::{Deserialize, Serialize};
use std::f64::consts::{PI, TAU};

use super::vec3::{Aabb, V3, add, cross, dot, normalize, scale, sub};

/// Distance below which two sketch points are the same (CadQuery's `close()` uses 1e-6).
pub const POINT_TOL: f64 = 1e-6;

/// An orthonormal frame: local `(u, v, w)` maps to `origin + u·x + v·y + w·z`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub origin: V3,
    pub x: V3,
    pub y: V3,
    pub z: V3,
}

impl Frame {
    /// CadQuery's `Plane(origin, xDir, normal)`: z = normal normalised, x = xDir projected onto the
    /// plane and normalised, y = z × x. `None` if the normal is zero or xDir is parallel to it.
    pub fn from_cadquery(origin: V3, x_dir: V3, normal: V3) -> Option<Frame> {
        let z = normalize(normal)?;
        let x = normalize(sub(x_dir, scale(z, dot(x_dir, z))))?;
        let y = cross(z, x);
        Some(Frame { origin, x, y, z })
    }
    pub fn to_world(&self, u: f64, v: f64, w: f64) -> V3 {
        add(
            self.origin,
            add(scale(self.x, u), add(scale(self.y, v), scale(self.z, w))),
        )
    }
    pub fn to_local(&self, p: V3) -> V3 {
        let q = sub(p, self.origin);
        [dot(q, self.x), dot(q, self.y), dot(q, self.z)]
    }
    pub fn dir_to_local(&self, d: V3) -> V3 {
        [dot(d, self.x), dot(d, self.y), dot(d, self.z)]
    }
}

/// One edge of a sketch loop, in local 2D coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Edge2 {
    Line {
        a: [f64; 2],
        b: [f64; 2],
    },
    /// Circular arc from angle `a0` sweeping `sweep` radians (positive = counter-clockwise).
    Arc {
        c: [f64; 2],
        r: f64,
        a0: f64,
        sweep: f64,
    },
    Circle {
        c: [f64; 2],
        r: f64,
    },
}

/// Below this sine of the angle between `mid − start` and `end − start`, a three-point arc's points
/// are collinear (OCC's limit, measured).
const ARC_COLLINEAR_SIN: f64 = 8e-9;

/// Why a sketch profile cannot become a valid solid.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("zero-length line from ({0}, {1})")]
    ZeroLengthLine(f64, f64),
    #[error("threePointArc points are collinear or coincident")]
    CollinearArc,
    #[error("circle radius must be positive, got {0}")]
    BadRadius(f64),
    #[error(
        "loop {0} is not connected (an edge does not start where the previous one ends, e.g. a moveTo inside a loop)"
    )]
    Disconnected(usize),
    #[error("loop {0} crosses itself")]
    SelfCrossing(usize),
    #[error(
        "loop {0} is nested {1} deep (an island inside a hole); OCC makes no valid solid of it"
    )]
    TooDeep(usize, usize),
    #[error("extrusion distance is zero")]
    ZeroExtrude,
    #[error("the profile has zero area")]
    ZeroArea,
}

impl Edge2 {
    /// Three-point arc through `p0`, `p1` (mid) ending at `p2`.
    pub fn arc3(p0: [f64; 2], p1: [f64; 2], p2: [f64; 2]) -> Result<Edge2, ProfileError> {
        let (ax, ay) = (p1[0] - p0[0], p1[1] - p0[1]);
        let (bx, by) = (p2[0] - p0[0], p2[1] - p0[1]);
        let d = 2.0 * (ax * by - ay * bx);
        let scale_ = (ax * ax + ay * ay).max(bx * bx + by * by);
        // OCC's GC_MakeArcOfCircle refuses points whose directions from the start differ by less
        // than ~8e-9 rad (measured with CadQuery 2.8: a sagitta of 3e-9 × the chord fails, 5e-9
        // works, at chords 0.1, 1 and 10); so do we.
        let sin =
            (ax * by - ay * bx).abs() / ((ax * ax + ay * ay).sqrt() * (bx * bx + by * by).sqrt());
        if !(sin > ARC_COLLINEAR_SIN) || scale_ < POINT_TOL * POINT_TOL {
            return Err(ProfileError::CollinearArc);
        }
        let (a2, b2) = (ax * ax + ay * ay, bx * bx + by * by);
        let cx = p0[0] + (by * a2 - ay * b2) / d;
        let cy = p0[1] + (ax * b2 - bx * a2) / d;
        let r = ((p0[0] - cx).powi(2) + (p0[1] - cy).powi(2)).sqrt();
        let ang = |p: [f64; 2]| (p[1] - cy).atan2(p[0] - cx);
        let (a0, am, a1) = (ang(p0), ang(p1), ang(p2));
        let ccw_to_end = (a1 - a0).rem_euclid(TAU);
        let ccw_to_mid = (am - a0).rem_euclid(TAU);
        let sweep = if ccw_to_mid < ccw_to_end {
            ccw_to_end
        } else {
            ccw_to_end - TAU
        };
        Ok(Edge2::Arc {
            c: [cx, cy],
            r,
            a0,
            sweep,
        })
    }

    pub fn start(&self) -> [f64; 2] {
        match *self {
            Edge2::Line { a, .. } => a,
            Edge2::Arc { c, r, a0, .. } => [c[0] + r * a0.cos(), c[1] + r * a0.sin()],
            Edge2::Circle { c, r } => [c[0] + r, c[1]],
        }
    }
    pub fn end(&self) -> [f64; 2] {
        match *self {
            Edge2::Line { b, .. } => b,
            Edge2::Arc { c, r, a0, sweep } => {
                [c[0] + r * (a0 + sweep).cos(), c[1] + r * (a0 + sweep).sin()]
            }
            Edge2::Circle { .. } => self.start(),
        }
    }

    /// Whether angle `theta` lies on the arc, half-open at the end: [start, end).
    fn arc_contains(a0: f64, sweep: f64, theta: f64) -> bool {
        if sweep >= 0.0 {
            (theta - a0).rem_euclid(TAU) < sweep
        } else {
            (a0 - theta).rem_euclid(TAU) < -sweep
        }
    }

    /// Parameters `t` where the 2D line `p + t·d` crosses this edge (half-open at the edge's end, so
    /// a line through a shared vertex counts once). `d` must be non-zero.
    pub fn crossings(&self, p: [f64; 2], d: [f64; 2], out: &mut Vec<(f64, u32)>, tag: u32) {
        match *self {
            Edge2::Line { a, b } => {
                let e = [b[0] - a[0], b[1] - a[1]];
                let den = d[0] * e[1] - d[1] * e[0];
                if den == 0.0 {
                    return;
                }
                let ap = [a[0] - p[0], a[1] - p[1]];
                let s = (ap[0] * d[1] - ap[1] * d[0]) / den;
                if (0.0..1.0).contains(&s) {
                    out.push(((ap[0] * e[1] - ap[1] * e[0]) / den, tag));
                }
            }
            Edge2::Arc { c, r, a0, sweep } => {
                for t in circle_roots(c, r, p, d).into_iter().flatten() {
                    let q = [p[0] + t * d[0] - c[0], p[1] + t * d[1] - c[1]];
                    if Self::arc_contains(a0, sweep, q[1].atan2(q[0])) {
                        out.push((t, tag));
                    }
                }
            }
            Edge2::Circle { c, r } => {
                for t in circle_roots(c, r, p, d).into_iter().flatten() {
                    out.push((t, tag));
                }
            }
        }
    }

    /// Twice the signed area contribution `∮ x dy − y dx` of this edge.
    fn area2(&self) -> f64 {
        match *self {
            Edge2::Line { a, b } => a[0] * b[1] - a[1] * b[0],
            Edge2::Arc { c, r, sweep, .. } => {
                let (s, e) = (self.start(), self.end());
                c[0] * (e[1] - s[1]) - c[1] * (e[0] - s[0]) + r * r * sweep
            }
            Edge2::Circle { r, .. } => TAU * r * r,
        }
    }

    /// Outward-agnostic unit normal of the edge's surface at local point `q` (for shading).
    pub fn normal_at(&self, q: [f64; 2]) -> [f64; 2] {
        match *self {
            Edge2::Line { a, b } => {
                let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
                let n = (ex * ex + ey * ey).sqrt().max(1e-300);
                [ey / n, -ex / n]
            }
            Edge2::Arc { c, .. } | Edge2::Circle { c, .. } => {
                let (dx, dy) = (q[0] - c[0], q[1] - c[1]);
                let n = (dx * dx + dy * dy).sqrt().max(1e-300);
                [dx / n, dy / n]
            }
        }
    }

    /// Local 2D points to bound this edge along direction `dir` (a 2D projection of a world axis):
    /// the endpoints plus circle extremes that the edge actually reaches.
    fn extreme_points(&self, out: &mut Vec<[f64; 2]>, dirs: &[[f64; 2]]) {
        match *self {
            Edge2::Line { a, b } => {
                out.push(a);
                out.push(b);
            }
            Edge2::Arc { c, r, a0, sweep } => {
                out.push(self.start());
                out.push(self.end());
                for dv in dirs {
                    if dv[0] == 0.0 && dv[1] == 0.0 {
                        continue;
                    }
                    let th = dv[1].atan2(dv[0]);
                    for t in [th, th + PI] {
                        if Self::arc_contains(a0, sweep, t) {
                            out.push([c[0] + r * t.cos(), c[1] + r * t.sin()]);
                        }
                    }
                }
            }
            Edge2::Circle { c, r } => {
                for dv in dirs {
                    if dv[0] == 0.0 && dv[1] == 0.0 {
                        continue;
                    }
                    let th = dv[1].atan2(dv[0]);
                    for t in [th, th + PI] {
                        out.push([c[0] + r * t.cos(), c[1] + r * t.sin()]);
                    }
                }
                out.push(self.start());
            }
        }
    }

    /// A few points along the edge (for nesting tests and intersection checks).
    fn sample(&self, n: usize, out: &mut Vec<[f64; 2]>) {
        match *self {
            Edge2::Line { a, b } => {
                for i in 0..n {
                    let s = (i as f64 + 0.5) / n as f64;
                    out.push([a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1])]);
                }
            }
            Edge2::Arc { c, r, a0, sweep } => {
                for i in 0..n {
                    let t = a0 + sweep * (i as f64 + 0.5) / n as f64;
                    out.push([c[0] + r * t.cos(), c[1] + r * t.sin()]);
                }
            }
            Edge2::Circle { c, r } => {
                for i in 0..n {
                    let t = TAU * (i as f64 + 0.5) / n as f64;
                    out.push([c[0] + r * t.cos(), c[1] + r * t.sin()]);
                }
            }
        }
    }
}

/// Roots `t` of |p + t d − c|² = r².
fn circle_roots(c: [f64; 2], r: f64, p: [f64; 2], d: [f64; 2]) -> [Option<f64>; 2] {
    let f = [p[0] - c[0], p[1] - c[1]];
    let a = d[0] * d[0] + d[1] * d[1];
    let b = f[0] * d[0] + f[1] * d[1];
    let cc = f[0] * f[0] + f[1] * f[1] - r * r;
    let disc = b * b - a * cc;
    if disc <= 0.0 || a == 0.0 {
        return [None, None];
    }
    let s = disc.sqrt();
    // numerically stable pair
    let q = -b - b.signum() * s;
    let q = if q == 0.0 { -s } else { q };
    let (t1, t2) = (q / a, cc / q);
    [Some(t1.min(t2)), Some(t1.max(t2))]
}

/// A closed loop of edges (a circle is a loop of one edge).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Loop {
    pub edges: Vec<Edge2>,
}

impl Loop {
    /// Signed area (positive = counter-clockwise).
    pub fn signed_area(&self) -> f64 {
        0.5 * self.edges.iter().map(Edge2::area2).sum::<f64>()
    }

    fn sample(&self, per_edge: usize) -> Vec<[f64; 2]> {
        let mut pts = Vec::new();
        for e in &self.edges {
            e.sample(per_edge, &mut pts);
        }
        pts
    }

    /// Even-odd containment of a 2D point by this loop alone.
    fn contains(&self, q: [f64; 2]) -> bool {
        let mut xs = Vec::new();
        // an irrational-ish direction avoids passing exactly through grid vertices
        let d = [0.937_268_393_1, 0.348_615_127_7];
        for e in &self.edges {
            e.crossings(q, d, &mut xs, 0);
        }
        xs.iter().filter(|(t, _)| *t > 0.0).count() % 2 == 1
    }
}

/// A planar even-odd region times `w ∈ [w0, w1]` along the frame normal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prism {
    pub frame: Frame,
    pub loops: Vec<Loop>,
    pub w0: f64,
    pub w1: f64,
    /// Exact world bounding box.
    pub bbox: Aabb,
    /// Area of the even-odd region (exact when `exact_area`).
    pub area: f64,
    /// False when loops cross each other: `area` is then only an estimate.
    pub exact_area: bool,
    /// Whether OpenCascade calls the solid of this profile valid (false when loops touch, except
    /// two outer loops side by side).
    #[serde(default = "yes")]
    pub valid: bool,
    /// Tag offset: the surfaces of this prism are tagged `tag_base + {0: w0 cap, 1: w1 cap, 2+k: side k}`.
    pub tag_base: u32,
    /// Number of edges over all loops (side surfaces).
    pub n_edges: u32,
}

/// The parity structure of a validated profile: nesting depth of each loop.
impl Prism {
    /// Validate the loops (connectivity, crossings, nesting ≤ 2) and build the prism.
    pub fn new(frame: Frame, loops: Vec<Loop>, w0: f64, w1: f64) -> Result<Prism, ProfileError> {
        if !(w1 - w0 > 0.0) {
            return Err(ProfileError::ZeroExtrude);
        }
        for (i, l) in loops.iter().enumerate() {
            check_loop(i, l)?;
        }
        // Loops that cross each other: OCC still builds a face (outer wire minus the others) and
        // reports it valid, so we keep the even-odd region; its area then comes from rays.
        // Loops that touch (a shared point, tangency, overlapping edges): OCC still builds the solid
        // (its volume is the even-odd region's) but calls it invalid, unless both are outer loops
        // side by side (separate faces).
        let mut crossing = vec![false; loops.len()];
        let mut touching = Vec::new();
        for i in 0..loops.len() {
            for j in i + 1..loops.len() {
                let (touch, cross) = loops_meet(&loops[i], &loops[j]);
                if touch {
                    touching.push((i, j));
                }
                if cross {
                    crossing[i] = true;
                    crossing[j] = true;
                }
            }
        }
        // nesting depth: how many other loops contain a point of this loop (not one they touch)
        let mut area = 0.0;
        let mut depths = Vec::with_capacity(loops.len());
        for (i, l) in loops.iter().enumerate() {
            let depth = nesting_depth(&loops, i);
            if depth >= 2 && !crossing[i] {
                return Err(ProfileError::TooDeep(i, depth + 1));
            }
            depths.push(depth);
            let a = l.signed_area().abs();
            area += if depth % 2 == 0 { a } else { -a };
        }
        let valid = touching
            .iter()
            .all(|&(i, j)| depths[i] == 0 && depths[j] == 0);
        let self_touching = loops.iter().any(touches_itself);
        let exact_area = !crossing.contains(&true) && !self_touching;
        if exact_area && !(area > 1e-12) {
            return Err(ProfileError::ZeroArea);
        }
        let n_edges = loops.iter().map(|l| l.edges.len() as u32).sum();
        let mut p = Prism {
            frame,
            loops,
            w0,
            w1,
            bbox: Aabb::EMPTY,
            area,
            exact_area,
            valid,
            tag_base: 0,
            n_edges,
        };
        p.bbox = p.exact_bbox();
        Ok(p)
    }

    /// The image of this prism under `x ↦ s·R·(x − c)` (`R` orthogonal, `s` > 0).
    pub fn transformed(&self, rot: &[[f64; 3]; 3], s: f64, c: V3) -> Prism {
        let m = |v: V3| -> V3 { [dot(rot[0], v), dot(rot[1], v), dot(rot[2], v)] };
        let f = &self.frame;
        let frame = Frame {
            origin: scale(m(sub(f.origin, c)), s),
            x: m(f.x),
            y: m(f.y),
            z: m(f.z),
        };
        let sc = |p: [f64; 2]| [p[0] * s, p[1] * s];
        let loops = self
            .loops
            .iter()
            .map(|l| Loop {
                edges: l
                    .edges
                    .iter()
                    .map(|e| match *e {
                        Edge2::Line { a, b } => Edge2::Line { a: sc(a), b: sc(b) },
                        Edge2::Arc { c, r, a0, sweep } => Edge2::Arc {
                            c: sc(c),
                            r: r * s,
                            a0,
                            sweep,
                        },
                        Edge2::Circle { c, r } => Edge2::Circle { c: sc(c), r: r * s },
                    })
                    .collect(),
            })
            .collect();
        let mut p = Prism {
            frame,
            loops,
            w0: self.w0 * s,
            w1: self.w1 * s,
            bbox: Aabb::EMPTY,
            area: self.area * s * s,
            ..*self
        };
        p.bbox = p.exact_bbox();
        p
    }

    /// Number of loops not inside another loop (the separate faces of the profile).
    pub fn outer_loops(&self) -> usize {
        (0..self.loops.len())
            .filter(|&i| nesting_depth(&self.loops, i) == 0)
            .count()
    }

    pub fn volume(&self) -> f64 {
        self.area * (self.w1 - self.w0)
    }

    fn exact_bbox(&self) -> Aabb {
        let f = &self.frame;
        let dirs: Vec<[f64; 2]> = (0..3).map(|i| [f.x[i], f.y[i]]).collect();
        let mut pts = Vec::new();
        for l in &self.loops {
            for e in &l.edges {
                e.extreme_points(&mut pts, &dirs);
            }
        }
        let mut b = Aabb::EMPTY;
        for p in pts {
            b.add_point(f.to_world(p[0], p[1], self.w0));
            b.add_point(f.to_world(p[0], p[1], self.w1));
        }
        b
    }

    /// The edge with side index `k` (over all loops in order).
    pub fn edge(&self, k: usize) -> Option<&Edge2> {
        self.loops.iter().flat_map(|l| l.edges.iter()).nth(k)
    }

    /// Exact spans of the ray `o + t·d` inside the prism, sorted, as `(t_in, t_out, tag_in, tag_out)`.
    pub fn ray_spans(&self, o: V3, d: V3, out: &mut Vec<Span>, scratch: &mut Vec<(f64, u32)>) {
        let f = &self.frame;
        let lo = f.to_local(o);
        let ld = f.dir_to_local(d);
        // the w-slab
        let (ta, tb, tag_a, tag_b) = if ld[2].abs() < 1e-15 {
            if lo[2] < self.w0 || lo[2] > self.w1 {
                return;
            }
            (f64::NEG_INFINITY, f64::INFINITY, u32::MAX, u32::MAX)
        } else {
            let t0 = (self.w0 - lo[2]) / ld[2];
            let t1 = (self.w1 - lo[2]) / ld[2];
            if t0 < t1 {
                (t0, t1, self.tag_base, self.tag_base + 1)
            } else {
                (t1, t0, self.tag_base + 1, self.tag_base)
            }
        };
        let p = [lo[0], lo[1]];
        let d2 = [ld[0], ld[1]];
        let planar = d2[0].abs() < 1e-12 && d2[1].abs() < 1e-12;
        scratch.clear();
        if planar {
            // ray parallel to the prism axis: point-in-region
            let dd = [0.937_268_393_1, 0.348_615_127_7];
            for (k, e) in self.loops.iter().flat_map(|l| l.edges.iter()).enumerate() {
                e.crossings(p, dd, scratch, k as u32);
            }
            if scratch.iter().filter(|(t, _)| *t > 0.0).count() % 2 == 1 {
                out.push(Span {
                    t0: ta,
                    t1: tb,
                    f0: tag_a,
                    f1: tag_b,
                });
            }
            return;
        }
        for (k, e) in self.loops.iter().flat_map(|l| l.edges.iter()).enumerate() {
            e.crossings(p, d2, scratch, self.tag_base + 2 + k as u32);
        }
        scratch.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in scratch.chunks_exact(2) {
            let (s0, s1) = (pair[0], pair[1]);
            let (mut t0, mut f0) = s0;
            let (mut t1, mut f1) = s1;
            if ta > t0 {
                t0 = ta;
                f0 = tag_a;
            }
            if tb < t1 {
                t1 = tb;
                f1 = tag_b;
            }
            if t0 < t1 {
                out.push(Span { t0, t1, f0, f1 });
            }
        }
    }

    /// World-space unit normal of surface `tag` (relative to this prism's base) at world point `p`.
    pub fn normal(&self, local_tag: u32, p: V3) -> V3 {
        match local_tag {
            0 | 1 => self.frame.z,
            k => {
                let q = self.frame.to_local(p);
                let n2 = self
                    .edge(k as usize - 2)
                    .map(|e| e.normal_at([q[0], q[1]]))
                    .unwrap_or([0.0, 0.0]);
                add(scale(self.frame.x, n2[0]), scale(self.frame.y, n2[1]))
            }
        }
    }
}

/// One interval of a ray inside a solid: parameters and the surface tags it enters / leaves through.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    pub t0: f64,
    pub t1: f64,
    pub f0: u32,
    pub f1: u32,
}

fn yes() -> bool {
    true
}

/// How many other loops contain loop `i`, judged at a point of `i` that lies on no other loop (loops
/// may touch), else at its first point.
fn nesting_depth(loops: &[Loop], i: usize) -> usize {
    let pts = loops[i].sample(4);
    let free = |p: &[f64; 2]| {
        loops
            .iter()
            .enumerate()
            .all(|(j, o)| j == i || !o.edges.iter().any(|e| on_edge(e, *p, 1e-6)))
    };
    let p = pts.iter().copied().find(free).unwrap_or(pts[0]);
    loops
        .iter()
        .enumerate()
        .filter(|(j, o)| *j != i && o.contains(p))
        .count()
}

/// Whether two non-adjacent edges of a loop meet, only ever at vertices they share (a figure
/// eight): OCC makes a valid solid of such a loop.
fn touches_itself(l: &Loop) -> bool {
    let n = l.edges.len();
    (0..n).any(|a| {
        (a + 1..n).any(|b| {
            let adjacent = b == a + 1 || (a == 0 && b == n - 1);
            !adjacent && edges_intersect(&l.edges[a], &l.edges[b], false)
        })
    })
}

/// Whether every meeting point of edges `a` and `b` is an endpoint of both.
fn meet_only_at_shared_vertices(a: &Edge2, b: &Edge2) -> bool {
    let ends = |e: &Edge2| [e.start(), e.end()];
    edge_edge_points(a, b)
        .into_iter()
        .filter(|&p| on_edge(a, p, 1e-7) && on_edge(b, p, 1e-7))
        .all(|p| {
            ends(a).into_iter().any(|v| dist(p, v) < 1e-6)
                && ends(b).into_iter().any(|v| dist(p, v) < 1e-6)
        })
        && !carriers_overlap(a, b)
}

/// Whether two edges lie on the same line or circle and share more than a point.
fn carriers_overlap(a: &Edge2, b: &Edge2) -> bool {
    let same = match (carrier(a), carrier(b)) {
        (Carrier::Line(p, d), Carrier::Line(q, e)) => {
            let n = d[0].hypot(d[1]) * e[0].hypot(e[1]);
            (d[0] * e[1] - d[1] * e[0]).abs() <= 1e-12 * n
                && ((q[0] - p[0]) * d[1] - (q[1] - p[1]) * d[0]).abs() <= 1e-9 * d[0].hypot(d[1])
        }
        (Carrier::Circle(c1, r1), Carrier::Circle(c2, r2)) => {
            dist(c1, c2) < 1e-9 && (r1 - r2).abs() < 1e-9
        }
        _ => false,
    };
    same && {
        let mut pts = Vec::new();
        a.sample(5, &mut pts);
        pts.iter().filter(|&&p| on_edge(b, p, 1e-7)).count() > 2
    }
}

fn check_loop(i: usize, l: &Loop) -> Result<(), ProfileError> {
    for e in &l.edges {
        match *e {
            Edge2::Line { a, b } => {
                if ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt() < POINT_TOL {
                    return Err(ProfileError::ZeroLengthLine(a[0], a[1]));
                }
            }
            Edge2::Circle { r, .. } | Edge2::Arc { r, .. } => {
                if !(r > POINT_TOL) || !r.is_finite() {
                    return Err(ProfileError::BadRadius(r));
                }
            }
        }
    }
    let n = l.edges.len();
    if n == 1 && matches!(l.edges[0], Edge2::Circle { .. }) {
        return Ok(());
    }
    for k in 0..n {
        let (e, nx) = (l.edges[k].end(), l.edges[(k + 1) % n].start());
        if ((e[0] - nx[0]).powi(2) + (e[1] - nx[1]).powi(2)).sqrt() > 1e-5 {
            return Err(ProfileError::Disconnected(i));
        }
    }
    // self-crossing: non-adjacent edges must not intersect, except at a vertex both pass through
    // (a figure eight, which OCC accepts); adjacent ones only at their shared vertex
    for a in 0..n {
        for b in a + 1..n {
            // adjacent edges share a vertex; OCC tolerates them grazing each other near it
            let adjacent = b == a + 1 || (a == 0 && b == n - 1);
            if !adjacent
                && edges_intersect(&l.edges[a], &l.edges[b], false)
                && !meet_only_at_shared_vertices(&l.edges[a], &l.edges[b])
            {
                return Err(ProfileError::SelfCrossing(i));
            }
        }
    }
    if l.signed_area().abs() < 1e-12 {
        return Err(ProfileError::ZeroArea);
    }
    Ok(())
}

/// How two loops meet: `(touch, cross)`. Touching (a shared vertex, a vertex on the other loop,
/// tangency, overlapping edges) makes OCC's solid invalid; a proper crossing does not.
fn loops_meet(a: &Loop, b: &Loop) -> (bool, bool) {
    let (mut touch, mut cross) = (false, false);
    for ea in &a.edges {
        for eb in &b.edges {
            if !edges_intersect(ea, eb, false) {
                continue;
            }
            let tangent = carriers_tangent(ea, eb);
            let on_vertex = edge_edge_points(ea, eb).into_iter().any(|p| {
                on_edge(ea, p, 1e-7)
                    && on_edge(eb, p, 1e-7)
                    && [ea.start(), ea.end(), eb.start(), eb.end()]
                        .into_iter()
                        .any(|v| dist(p, v) < 1e-6)
            });
            if tangent || on_vertex {
                touch = true;
            } else {
                cross = true;
            }
        }
    }
    (touch, cross)
}

/// Whether the carriers of two edges are tangent (or the same line / circle).
fn carriers_tangent(a: &Edge2, b: &Edge2) -> bool {
    match (carrier(a), carrier(b)) {
        (Carrier::Line(_, d), Carrier::Line(_, e)) => {
            (d[0] * e[1] - d[1] * e[0]).abs() <= 1e-12 * d[0].hypot(d[1]) * e[0].hypot(e[1])
        }
        (Carrier::Line(p, d), Carrier::Circle(c, r))
        | (Carrier::Circle(c, r), Carrier::Line(p, d)) => {
            let n = d[0].hypot(d[1]);
            let dist_line = ((c[0] - p[0]) * d[1] - (c[1] - p[1]) * d[0]).abs() / n;
            (dist_line - r).abs() < 1e-7
        }
        (Carrier::Circle(c1, r1), Carrier::Circle(c2, r2)) => {
            let dd = dist(c1, c2);
            (dd - (r1 + r2)).abs() < 1e-7 || (dd - (r1 - r2).abs()).abs() < 1e-7
        }
    }
}

/// Whether two edges meet (apart from a shared endpoint when `adjacent`).
fn edges_intersect(a: &Edge2, b: &Edge2, adjacent: bool) -> bool {
    // Intersect `a` (as a line or circle) with `b` and keep points inside both edges' extents.
    let pts = edge_edge_points(a, b);
    let tol = 1e-7;
    pts.into_iter().any(|p| {
        if adjacent {
            let shared = [a.start(), a.end()].into_iter().any(|q| {
                [b.start(), b.end()]
                    .into_iter()
                    .any(|r| dist(q, r) < 1e-5 && dist(p, q) < 1e-5)
            });
            if shared {
                return false;
            }
        }
        on_edge(a, p, tol) && on_edge(b, p, tol)
    })
}

fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

fn on_edge(e: &Edge2, p: [f64; 2], tol: f64) -> bool {
    match *e {
        Edge2::Line { a, b } => {
            let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
            let l2 = ex * ex + ey * ey;
            let s = ((p[0] - a[0]) * ex + (p[1] - a[1]) * ey) / l2;
            let l = l2.sqrt();
            s >= -tol / l && s <= 1.0 + tol / l && dist(p, [a[0] + s * ex, a[1] + s * ey]) < tol
        }
        Edge2::Arc { c, r, a0, sweep } => {
            let th = (p[1] - c[1]).atan2(p[0] - c[0]);
            let slack = tol / r;
            ((dist(p, c) - r).abs() < tol)
                && (Edge2::arc_contains(
                    a0 - sweep.signum() * slack,
                    sweep + sweep.signum() * 2.0 * slack,
                    th,
                ))
        }
        Edge2::Circle { c, r } => (dist(p, c) - r).abs() < tol,
    }
}

/// Candidate intersection points of the carriers (lines / circles) of two edges.
fn edge_edge_points(a: &Edge2, b: &Edge2) -> Vec<[f64; 2]> {
    match (carrier(a), carrier(b)) {
        (Carrier::Line(p, d), Carrier::Line(q, e)) => {
            let den = d[0] * e[1] - d[1] * e[0];
            let len = (d[0].hypot(d[1])) * (e[0].hypot(e[1]));
            if den.abs() <= 1e-12 * len {
                // parallel: overlapping collinear segments count as an intersection
                let qp = [q[0] - p[0], q[1] - p[1]];
                if (qp[0] * d[1] - qp[1] * d[0]).abs() <= 1e-9 * d[0].hypot(d[1]) {
                    let (sa, sb) = (a.start(), a.end());
                    let (ta, tb) = (b.start(), b.end());
                    // points of each inside the other reveal the overlap
                    let mut v = Vec::new();
                    for m in [mid(sa, sb), mid(ta, tb)] {
                        v.push(m);
                    }
                    for pnt in [ta, tb] {
                        if on_edge(a, pnt, 1e-9) && dist(pnt, sa) > 1e-5 && dist(pnt, sb) > 1e-5 {
                            v.push(pnt);
                        }
                    }
                    return v;
                }
                return vec![];
            }
            let qp = [q[0] - p[0], q[1] - p[1]];
            let s = (qp[0] * e[1] - qp[1] * e[0]) / den;
            vec![[p[0] + s * d[0], p[1] + s * d[1]]]
        }
        (Carrier::Line(p, d), Carrier::Circle(c, r))
        | (Carrier::Circle(c, r), Carrier::Line(p, d)) => {
            let mut v = Vec::new();
            // treat tangency as touching: use a small tolerance on the discriminant
            let f = [p[0] - c[0], p[1] - c[1]];
            let a2 = d[0] * d[0] + d[1] * d[1];
            let b = f[0] * d[0] + f[1] * d[1];
            let cc = f[0] * f[0] + f[1] * f[1] - r * r;
            let disc = b * b - a2 * cc;
            if disc >= -1e-12 * a2 * r * r {
                let s = disc.max(0.0).sqrt();
                for t in [(-b - s) / a2, (-b + s) / a2] {
                    v.push([p[0] + t * d[0], p[1] + t * d[1]]);
                }
            }
            v
        }
        (Carrier::Circle(c1, r1), Carrier::Circle(c2, r2)) => {
            let dd = dist(c1, c2);
            if dd < 1e-12 {
                if (r1 - r2).abs() < 1e-9 {
                    // same circle: overlapping arcs intersect if they share interior points
                    let mut v = Vec::new();
                    a.sample(8, &mut v);
                    return v;
                }
                return vec![];
            }
            if dd > r1 + r2 + 1e-9 || dd < (r1 - r2).abs() - 1e-9 {
                return vec![];
            }
            let aa = (r1 * r1 - r2 * r2 + dd * dd) / (2.0 * dd);
            let h = (r1 * r1 - aa * aa).max(0.0).sqrt();
            let (ux, uy) = ((c2[0] - c1[0]) / dd, (c2[1] - c1[1]) / dd);
            let m = [c1[0] + aa * ux, c1[1] + aa * uy];
            vec![
                [m[0] - h * uy, m[1] + h * ux],
                [m[0] + h * uy, m[1] - h * ux],
            ]
        }
    }
}

fn mid(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [(a[0] + b[0]) * 0.5, (a[1] + b[1]) * 0.5]
}

enum Carrier {
    Line([f64; 2], [f64; 2]),
    Circle([f64; 2], f64),
}

fn carrier(e: &Edge2) -> Carrier {
    match *e {
        Edge2::Line { a, b } => Carrier::Line(a, [b[0] - a[0], b[1] - a[1]]),
        Edge2::Arc { c, r, .. } | Edge2::Circle { c, r } => Carrier::Circle(c, r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x0: f64, y0: f64, s: f64) -> Loop {
        let p = [[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]];
        Loop {
            edges: (0..4)
                .map(|i| Edge2::Line {
                    a: p[i],
                    b: p[(i + 1) % 4],
                })
                .collect(),
        }
    }
    fn xy() -> Frame {
        Frame::from_cadquery([0.0; 3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]).unwrap()
    }

    #[test]
    fn arc3_semicircle_area() {
        let arc = Edge2::arc3([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]).unwrap();
        let l = Loop {
            edges: vec![
                arc,
                Edge2::Line {
                    a: [-1.0, 0.0],
                    b: [1.0, 0.0],
                },
            ],
        };
        assert!((l.signed_area() - PI / 2.0).abs() < 1e-12);
        let cw = Edge2::arc3([1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]).unwrap();
        let l = Loop {
            edges: vec![
                cw,
                Edge2::Line {
                    a: [-1.0, 0.0],
                    b: [1.0, 0.0],
                },
            ],
        };
        assert!((l.signed_area() + PI / 2.0).abs() < 1e-12);
        assert_eq!(
            Edge2::arc3([0.0, 0.0], [1.0, 1.0], [2.0, 2.0]),
            Err(ProfileError::CollinearArc)
        );
    }

    #[test]
    fn square_with_hole_area_and_spans() {
        let hole = Loop {
            edges: vec![Edge2::Circle {
                c: [0.5, 0.5],
                r: 0.25,
            }],
        };
        let p = Prism::new(xy(), vec![square(0.0, 0.0, 1.0), hole], 0.0, 2.0).unwrap();
        assert!((p.area - (1.0 - PI / 16.0)).abs() < 1e-12);
        let (mut out, mut sc) = (Vec::new(), Vec::new());
        // a ray along x through the hole centre: [0, .25] and [.75, 1]
        p.ray_spans([-1.0, 0.5, 1.0], [1.0, 0.0, 0.0], &mut out, &mut sc);
        assert_eq!(out.len(), 2);
        assert!((out[0].t0 - 1.0).abs() < 1e-12 && (out[0].t1 - 1.25).abs() < 1e-12);
        // a ray along z outside the hole: the whole slab
        out.clear();
        p.ray_spans([0.1, 0.1, -5.0], [0.0, 0.0, 1.0], &mut out, &mut sc);
        assert_eq!(out.len(), 1);
        assert!((out[0].t0 - 5.0).abs() < 1e-12 && (out[0].t1 - 7.0).abs() < 1e-12);
        out.clear();
        p.ray_spans([0.5, 0.5, -5.0], [0.0, 0.0, 1.0], &mut out, &mut sc);
        assert!(out.is_empty());
    }

    #[test]
    fn invalid_profiles() {
        let island = square(0.4, 0.4, 0.2);
        let hole = Loop {
            edges: vec![Edge2::Circle {
                c: [0.5, 0.5],
                r: 0.3,
            }],
        };
        assert!(matches!(
            Prism::new(xy(), vec![square(0.0, 0.0, 1.0), hole, island], 0.0, 1.0),
            Err(ProfileError::TooDeep(..))
        ));
        // two outer loops touching at a vertex: separate faces, valid in OCC
        let touching = square(1.0, 1.0, 1.0);
        let p = Prism::new(xy(), vec![square(0.0, 0.0, 1.0), touching], 0.0, 1.0).unwrap();
        assert!(p.valid && p.exact_area && (p.area - 2.0).abs() < 1e-12);
        // a hole touching its outer loop: OCC makes the solid but calls it invalid
        let tangent = Loop {
            edges: vec![Edge2::Circle {
                c: [0.5, 0.25],
                r: 0.25,
            }],
        };
        let p = Prism::new(xy(), vec![square(0.0, 0.0, 1.0), tangent], 0.0, 1.0).unwrap();
        assert!(!p.valid);
        assert!((p.area - (1.0 - PI / 16.0)).abs() < 1e-12, "{}", p.area);
        let crossing = square(0.5, 0.5, 1.0);
        let p = Prism::new(xy(), vec![square(0.0, 0.0, 1.0), crossing], 0.0, 1.0).unwrap();
        assert!(!p.exact_area);
        let bow = Loop {
            edges: vec![
                Edge2::Line {
                    a: [0.0, 0.0],
                    b: [1.0, 1.0],
                },
                Edge2::Line {
                    a: [1.0, 1.0],
                    b: [1.0, 0.0],
                },
                Edge2::Line {
                    a: [1.0, 0.0],
                    b: [0.0, 1.0],
                },
                Edge2::Line {
                    a: [0.0, 1.0],
                    b: [0.0, 0.0],
                },
            ],
        };
        assert!(matches!(
            Prism::new(xy(), vec![bow], 0.0, 1.0),
            Err(ProfileError::SelfCrossing(0))
        ));
        // a figure eight (one loop through the same vertex twice): valid in OCC, area from rays
        let line = |a: [f64; 2], b: [f64; 2]| Edge2::Line { a, b };
        let (m, pts) = ([1.0, 0.5], [[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]]);
        let eight = Loop {
            edges: vec![
                line(pts[0], m),
                line(m, pts[1]),
                line(pts[1], pts[2]),
                line(pts[2], m),
                line(m, pts[3]),
                line(pts[3], pts[0]),
            ],
        };
        let p = Prism::new(xy(), vec![eight], 0.0, 1.0).unwrap();
        assert!(p.valid && !p.exact_area);
    }

    #[test]
    fn nearly_collinear_arcs_are_refused_where_occ_refuses_them() {
        // (chord, sagitta, OCC makes the arc) — CadQuery 2.8 via ../shared/oracle
        for (chord, sag, occ) in [
            (1.0, 0.0, false),
            (1.0, 1e-12, false),
            (1.0, 1e-9, false),
            (1.0, 2e-9, false),
            (1.0, 5e-9, true),
            (1.0, 1e-8, true),
            (1.0, 1e-7, true),
            (10.0, 3e-8, false),
            (10.0, 1e-7, true),
            (0.1, 3e-10, false),
            (0.1, 1e-9, true),
        ] {
            let got = Edge2::arc3([0.0, 0.0], [chord / 2.0, sag], [chord, 0.0]).is_ok();
            assert_eq!(got, occ, "chord {chord}, sagitta {sag}");
        }
    }

    #[test]
    fn tilted_bbox_is_exact() {
        let f = Frame::from_cadquery([0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]).unwrap();
        let c = Loop {
            edges: vec![Edge2::Circle {
                c: [0.0, 0.0],
                r: 1.0,
            }],
        };
        let p = Prism::new(f, vec![c], 0.0, 1.0).unwrap();
        let s = 0.5f64.sqrt();
        // y axis of the frame = z × x = (0, s, -s)... circle extent in y and z is s each side
        assert!((p.bbox.max[0] - 1.0).abs() < 1e-12);
        assert!((p.bbox.max[1] - (s + s)).abs() < 1e-12, "{:?}", p.bbox);
    }
}
