//! Chamfer distance between two solids, computed as cadrille and CAD-Recode compute it.
//!
//! What we follow is cadrille's `evaluate.py` (github.com/col14m/cadrille; the same script serves
//! CAD-Recode's numbers, by the same group): each shape is tessellated, moved so that the centre
//! of its bounding box is at the origin and scaled by 1 / (largest bbox extent) — the unit-cube
//! normalisation of [`Normalize::UnitCube`](super::Normalize) — then `n_points = 8192` points are
//! drawn uniformly by area on each surface (`trimesh.sample.sample_surface`), and
//!
//! ```text
//! CD = mean_{p ∈ B} min_{q ∈ A} ‖p − q‖² + mean_{q ∈ A} min_{p ∈ B} ‖q − p‖²
//! ```
//!
//! (`scipy.spatial.cKDTree` nearest neighbours, *squared* distances, the *sum* of the two directed
//! means). Papers report it ×1000, as the mean and the median over the valid predictions.
//!
//! Our solids have no mesh, so the points come from rays: a ray along axis `a` at a uniformly random
//! position over the bounding box's face meets a surface element of unit normal `n` and area `dA`
//! with probability `|n·a|·dA / P_a` (`P_a` the face's area). Choosing the axis with probability
//! `P_a / ΣP` makes the hits' density `(|n_x| + |n_y| + |n_z|)·dA / ΣP`; weighting each hit by `w = 1 / (|n_x| + |n_y| + |n_z|)` (between 1/√3 and 1) leaves points uniform by area.
//! Every span end of a ray is a surface point (after dropping the rounding-size slivers and gaps
//! that coincident faces of a boolean can leave). To keep the points i.i.d. like trimesh's, a ray
//! does not give all its hits: it gives a number of points with mean `Σw / C` (`C` the largest
//! `Σw` of 256 pilot rays), each one of its hits with probability `w / Σw` (rarely more than one) — the same density,
//! without the pairs that all hits would make (a thin plate's top and bottom points right above
//! each other: a clustered cloud whose CD with itself was 50 % above CadQuery's). Nearest
//! neighbours: a small k-d tree ([`KdTree`]).
//!
//! As in cadrille, the two clouds are independent samples, so the CD of a shape with itself is the
//! sampling floor (≈ 2·area / (π·n) for a surface of `area`; 0.47×10⁻³ for a cube at 8192 points),
//! not 0. The sampling is deterministic: the two solids draw from two fixed streams of
//! [`ChamferOptions::seed`], assigned by a hash of the normalised solids, so `chamfer(a, b) ==
//! chamfer(b, a)` exactly.

use std::borrow::Cow;

use super::csg::{RayScratch, Solid};
use super::iou::unitcube;
use super::measure::MeasureOptions;
use super::prism::Span;
use super::rng::{Rng, hash_bytes};
use super::vec3::V3;

/// Rays cast first to bound the weight sum of one ray.
const PILOT_RAYS: usize = 256;

/// cadrille's / CAD-Recode's point count per surface.
pub const CADRILLE_POINTS: usize = 8192;

/// How [`chamfer_with`] samples and places the shapes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChamferOptions {
    /// Points per surface (cadrille: 8192).
    pub n_points: usize,
    /// Unit-cube normalisation of both shapes first (cadrille: yes); `false` compares them as placed.
    pub unit_cube: bool,
    /// Seed of the two sampling streams.
    pub seed: u64,
}

impl Default for ChamferOptions {
    fn default() -> Self {
        ChamferOptions {
            n_points: CADRILLE_POINTS,
            unit_cube: true,
            seed: 0xC4A3_F3E8_D15C_0DE5,
        }
    }
}

/// Why a Chamfer distance cannot be computed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ChamferError {
    #[error("the {0} solid is empty: it has no surface to sample")]
    Empty(&'static str),
    #[error("no ray met the surface of the {0} solid in {1} tries (a degenerate solid)")]
    NoSurface(&'static str, usize),
    #[error("the number of points must be positive")]
    NoPoints,
}

/// The Chamfer distance of cadrille / CAD-Recode between two solids (not ×1000): unit-cube
/// normalisation, 8192 points uniform by area on each surface, the sum of both directed mean squared
/// nearest-neighbour distances. Symmetric and deterministic.
pub fn chamfer(a: &Solid, b: &Solid) -> Result<f64, ChamferError> {
    chamfer_with(a, b, &ChamferOptions::default())
}

/// [`chamfer`] with other options.
pub fn chamfer_with(a: &Solid, b: &Solid, opts: &ChamferOptions) -> Result<f64, ChamferError> {
    if opts.n_points == 0 {
        return Err(ChamferError::NoPoints);
    }
    if a.is_empty() {
        return Err(ChamferError::Empty("first"));
    }
    if b.is_empty() {
        return Err(ChamferError::Empty("second"));
    }
    let mo = MeasureOptions::default();
    let place = |s: &Solid| -> Solid {
        if opts.unit_cube {
            unitcube(s, &mo)
        } else {
            s.clone()
        }
    };
    let (na, nb) = (place(a), place(b));
    // streams by content, so that swapping the arguments swaps the streams too
    let (ha, hb) = (solid_hash(&na), solid_hash(&nb));
    let (sa, sb) = if ha <= hb { (1, 2) } else { (2, 1) };
    let pa = sample_surface(&na, opts.n_points, &mut Rng::new(opts.seed, sa))
        .map_err(|e| e.named("first"))?;
    let pb = sample_surface(&nb, opts.n_points, &mut Rng::new(opts.seed, sb))
        .map_err(|e| e.named("second"))?;
    Ok(chamfer_points(&pa, &pb))
}

impl ChamferError {
    fn named(self, which: &'static str) -> ChamferError {
        match self {
            ChamferError::Empty(_) => ChamferError::Empty(which),
            ChamferError::NoSurface(_, n) => ChamferError::NoSurface(which, n),
            e => e,
        }
    }
}

fn solid_hash(s: &Solid) -> u64 {
    // the serialised DAG: equal solids hash equal (serialising a Solid cannot fail)
    let bytes = serde_json::to_vec(s)
        .map(Cow::Owned)
        .unwrap_or(Cow::Borrowed(&[][..]));
    hash_bytes(&bytes)
}

/// The CD of two point clouds: mean squared distance from each point of `b` to `a`, plus the same
/// from `a` to `b` (0 if either is empty).
pub fn chamfer_points(a: &[V3], b: &[V3]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (ta, tb) = (KdTree::new(a), KdTree::new(b));
    let ab: f64 = b.iter().map(|&p| ta.nearest_d2(p)).sum::<f64>() / b.len() as f64;
    let ba: f64 = a.iter().map(|&p| tb.nearest_d2(p)).sum::<f64>() / a.len() as f64;
    ab + ba
}

/// `n` points drawn i.i.d. uniformly by area on the surface of `s` (see the module documentation).
/// Fewer only if `s` is so degenerate that `256·n` rays did not find them all.
pub fn sample_surface(s: &Solid, n: usize, rng: &mut Rng) -> Result<Vec<V3>, ChamferError> {
    if n == 0 {
        return Err(ChamferError::NoPoints);
    }
    if s.is_empty() {
        return Err(ChamferError::Empty("given"));
    }
    let bb = s.bbox_bound();
    let ext = bb.extent();
    let size = bb.max_extent();
    if !(size > 0.0) || !size.is_finite() {
        return Err(ChamferError::Empty("given"));
    }
    // projected areas of the box along x, y, z
    let proj = [ext[1] * ext[2], ext[0] * ext[2], ext[0] * ext[1]];
    // spans shorter than this, and gaps between spans shorter than this, are rounding
    let eps = 1e-9 * (1.0 + size);
    let max_rays = 256 * n + 10_000;
    let mut pts: Vec<V3> = Vec::with_capacity(n);
    let mut scratch = RayScratch::default();
    let (mut hits, mut weighted) = (Vec::new(), Vec::new());
    let mut cast = |rng: &mut Rng, weighted: &mut Vec<(V3, f64)>| -> f64 {
        let a = rng.weighted(&proj);
        let (j, k) = ((a + 1) % 3, (a + 2) % 3);
        let mut o = [0.0; 3];
        o[a] = bb.min[a] - size;
        o[j] = bb.min[j] + rng.f() * ext[j];
        o[k] = bb.min[k] + rng.f() * ext[k];
        let mut d = [0.0; 3];
        d[a] = 1.0;
        surface_hits(s.ray_spans(o, d, &mut scratch), eps, &mut hits);
        weighted.clear();
        let mut sum = 0.0;
        for &(t, tag) in &hits {
            let mut p = o;
            p[a] += t;
            let nrm = s.surface_normal(tag, p);
            let l1 = nrm.iter().map(|x| x.abs()).sum::<f64>();
            let l2 = nrm.iter().map(|x| x * x).sum::<f64>().sqrt();
            // 1 / |n|₁ of the unit normal; a degenerate normal counts as axis-aligned
            let w = if l2 > 0.0 && l1 > 0.0 { l2 / l1 } else { 1.0 };
            weighted.push((p, w));
            sum += w;
        }
        sum
    };
    // C: the largest weight sum of a ray among pilot rays (the pilot's points are not used)
    let mut c: f64 = 1.0;
    for _ in 0..PILOT_RAYS {
        c = c.max(cast(rng, &mut weighted));
    }
    let mut rays = 0usize;
    'rays: while pts.len() < n && rays < max_rays {
        rays += 1;
        let sum = cast(rng, &mut weighted);
        if !(sum > 0.0) {
            continue;
        }
        // E[points of this ray] = Σw / C, each one of its hits with probability w / Σw
        let expect = sum / c;
        let m = expect.floor() as usize + rng.chance(expect.fract()) as usize;
        for _ in 0..m {
            let mut x = rng.f() * sum;
            let mut pick = weighted[weighted.len() - 1].0;
            for &(p, w) in &weighted {
                if x < w {
                    pick = p;
                    break;
                }
                x -= w;
            }
            pts.push(pick);
            if pts.len() == n {
                break 'rays;
            }
        }
    }
    if pts.is_empty() {
        return Err(ChamferError::NoSurface("given", rays));
    }
    Ok(pts)
}

/// The surface crossings of one ray's spans: every span end, after dropping spans shorter than
/// `eps` and closing gaps shorter than `eps` (faces that coincide up to rounding).
fn surface_hits(spans: &[Span], eps: f64, out: &mut Vec<(f64, u32)>) {
    out.clear();
    let mut cur: Option<Span> = None;
    for s in spans {
        if !(s.t1 - s.t0 > eps) {
            continue;
        }
        match &mut cur {
            Some(c) if s.t0 - c.t1 <= eps => {
                c.t1 = s.t1;
                c.f1 = s.f1;
            }
            _ => {
                if let Some(c) = cur.take() {
                    out.push((c.t0, c.f0));
                    out.push((c.t1, c.f1));
                }
                cur = Some(*s);
            }
        }
    }
    if let Some(c) = cur {
        out.push((c.t0, c.f0));
        out.push((c.t1, c.f1));
    }
}

/// A k-d tree over 3D points for exact nearest-neighbour queries: median splits on the widest axis,
/// implicit (heap-numbered) nodes, leaves of up to [`KdTree::LEAF`] points.
#[derive(Clone, Debug)]
pub struct KdTree {
    pts: Vec<V3>,
    /// Split axis and value of each inner node (node 1 is the root; children 2i and 2i + 1).
    split: Vec<(u8, f64)>,
}

impl KdTree {
    pub const LEAF: usize = 8;

    pub fn new(points: &[V3]) -> KdTree {
        let mut pts = points.to_vec();
        let (mut depth, mut m) = (0u32, pts.len());
        while m > Self::LEAF {
            m = m.div_ceil(2);
            depth += 1;
        }
        let mut split = vec![(0u8, 0.0); 1usize << (depth + 1)];
        build(&mut pts, 1, &mut split);
        KdTree { pts, split }
    }

    pub fn len(&self) -> usize {
        self.pts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pts.is_empty()
    }

    /// Squared distance from `q` to the nearest point (∞ for an empty tree).
    pub fn nearest_d2(&self, q: V3) -> f64 {
        let mut best = f64::INFINITY;
        self.search(q, 1, 0, self.pts.len(), &mut best);
        best
    }

    fn search(&self, q: V3, node: usize, lo: usize, hi: usize, best: &mut f64) {
        if hi - lo <= Self::LEAF {
            for p in &self.pts[lo..hi] {
                let d2 = (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2);
                if d2 < *best {
                    *best = d2;
                }
            }
            return;
        }
        let (ax, v) = self.split[node];
        let mid = lo + (hi - lo) / 2;
        let diff = q[ax as usize] - v;
        let (near, far) = if diff < 0.0 {
            ((2 * node, lo, mid), (2 * node + 1, mid, hi))
        } else {
            ((2 * node + 1, mid, hi), (2 * node, lo, mid))
        };
        self.search(q, near.0, near.1, near.2, best);
        if diff * diff < *best {
            self.search(q, far.0, far.1, far.2, best);
        }
    }
}

fn build(pts: &mut [V3], node: usize, split: &mut [(u8, f64)]) {
    if pts.len() <= KdTree::LEAF {
        return;
    }
    let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    for p in pts.iter() {
        for i in 0..3 {
            lo[i] = lo[i].min(p[i]);
            hi[i] = hi[i].max(p[i]);
        }
    }
    let ax = (0..3)
        .max_by(|&i, &j| (hi[i] - lo[i]).total_cmp(&(hi[j] - lo[j])))
        .unwrap_or(0);
    let mid = pts.len() / 2;
    pts.select_nth_unstable_by(mid, |p, q| p[ax].total_cmp(&q[ax]));
    split[node] = (ax as u8, pts[mid][ax]);
    let (l, r) = pts.split_at_mut(mid);
    build(l, 2 * node, split);
    build(r, 2 * node + 1, split);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cad::{Limits, execute};
    use std::f64::consts::PI;

    fn prog(body: &str) -> Solid {
        execute(
            &format!("import cadquery as cq\n{body}"),
            &Limits::default(),
        )
        .unwrap()
    }

    /// An axis-aligned box `[x0, x0+w] × [y0, y0+h] × [z0, z0+d]`.
    fn boxed(x0: f64, y0: f64, z0: f64, w: f64, h: f64, d: f64) -> Solid {
        prog(&format!(
            "wp = cq.Workplane(cq.Plane(cq.Vector({x0}, {y0}, {z0}), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n\
             l = wp.moveTo(0.0, 0.0).lineTo({w}, 0.0).lineTo({w}, {h}).lineTo(0.0, {h}).close()\n\
             solid = wp.add(l).extrude({d})\n"
        ))
    }

    fn cylinder(r: f64, h: f64) -> Solid {
        prog(&format!(
            "wp = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n\
             solid = wp.add(wp.moveTo(0.0, 0.0).circle({r})).extrude({h})\n"
        ))
    }

    #[test]
    fn kdtree_matches_brute_force() {
        let mut rng = Rng::new(3, 9);
        let pts: Vec<V3> = (0..1000)
            .map(|_| [rng.f(), rng.f() * 0.3, rng.f() * 2.0])
            .collect();
        let tree = KdTree::new(&pts);
        assert_eq!(tree.len(), 1000);
        for _ in 0..300 {
            let q = [rng.f() * 1.4 - 0.2, rng.f(), rng.f() * 2.5 - 0.2];
            let brute = pts
                .iter()
                .map(|p| (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2))
                .fold(f64::INFINITY, f64::min);
            assert_eq!(tree.nearest_d2(q), brute);
        }
        assert_eq!(KdTree::new(&[]).nearest_d2([0.0; 3]), f64::INFINITY);
    }

    #[test]
    fn samples_are_uniform_by_area_on_flat_and_curved_faces() {
        // a 1 × 1 × 0.1 plate: caps 2 of its 2.4 area
        let plate = boxed(0.0, 0.0, 0.0, 1.0, 1.0, 0.1);
        let pts = sample_surface(&plate, 20_000, &mut Rng::new(1, 1)).unwrap();
        assert_eq!(pts.len(), 20_000);
        let caps = pts
            .iter()
            .filter(|p| p[2].abs() < 1e-9 || (p[2] - 0.1).abs() < 1e-9)
            .count() as f64
            / pts.len() as f64;
        assert!((caps - 2.0 / 2.4).abs() < 0.01, "cap fraction {caps}");
        // every point is on the surface
        for p in &pts {
            let on = [p[0], p[1]]
                .iter()
                .any(|x| x.abs() < 1e-9 || (x - 1.0).abs() < 1e-9)
                || p[2].abs() < 1e-9
                || (p[2] - 0.1).abs() < 1e-9;
            assert!(on, "{p:?} is not on the plate's surface");
        }
        // a cylinder r = 0.5, h = 1: the side is π of its 1.5π area, uniform in angle and height
        let cyl = cylinder(0.5, 1.0);
        let pts = sample_surface(&cyl, 20_000, &mut Rng::new(2, 1)).unwrap();
        let side: Vec<&V3> = pts
            .iter()
            .filter(|p| p[2] > 1e-9 && p[2] < 1.0 - 1e-9)
            .collect();
        let frac = side.len() as f64 / pts.len() as f64;
        assert!((frac - 2.0 / 3.0).abs() < 0.012, "side fraction {frac}");
        for p in &side {
            assert!(((p[0] * p[0] + p[1] * p[1]).sqrt() - 0.5).abs() < 1e-9);
        }
        // uniform in angle: the quadrant |x| > |y| (diagonal-facing normals are the ones kept least)
        let near_axes = side.iter().filter(|p| p[0].abs() > p[1].abs()).count() as f64;
        assert!((near_axes / side.len() as f64 - 0.5).abs() < 0.015);
        let diag = side
            .iter()
            .filter(|p| {
                let a = p[1].atan2(p[0]).rem_euclid(PI / 2.0);
                (a - PI / 4.0).abs() < PI / 8.0
            })
            .count() as f64;
        assert!((diag / side.len() as f64 - 0.5).abs() < 0.015, "{diag}");
    }

    #[test]
    fn identical_solids_give_the_sampling_floor() {
        // Poisson floor for two independent samples of n points on area A: 2·A / (π·n); unit cube A = 6
        let cube = boxed(0.0, 0.0, 0.0, 2.0, 2.0, 2.0);
        let cd = chamfer(&cube, &cube).unwrap();
        let floor = 2.0 * 6.0 / (PI * CADRILLE_POINTS as f64);
        assert!(
            cd > 0.9 * floor && cd < 1.25 * floor,
            "cd {cd} vs floor {floor}"
        );
        // with more points the floor falls as 1/n
        let opts = ChamferOptions {
            n_points: 4 * CADRILLE_POINTS,
            ..Default::default()
        };
        let cd4 = chamfer_with(&cube, &cube, &opts).unwrap();
        assert!((cd4 * 4.0 / cd - 1.0).abs() < 0.15, "{cd} {cd4}");
    }

    #[test]
    fn thin_plates_are_sampled_independently_on_both_faces() {
        // i.i.d. points on both faces of a 1 × 1 × 0.001 plate form one layer of density n / 1:
        // CD with itself ≈ 2 · 1 / (π·n). Pairs of points from the same ray would double it.
        let plate = boxed(0.0, 0.0, 0.0, 1.0, 1.0, 0.001);
        let cd = chamfer(&plate, &plate).unwrap();
        let iid = 2.0 / (PI * CADRILLE_POINTS as f64);
        assert!(cd > 0.9 * iid && cd < 1.2 * iid, "cd {cd} vs i.i.d. {iid}");
    }

    #[test]
    fn symmetric_deterministic_and_normalised() {
        let a = boxed(0.0, 0.0, 0.0, 1.0, 1.0, 1.0);
        let b = cylinder(0.5, 1.0);
        let ab = chamfer(&a, &b).unwrap();
        assert_eq!(ab, chamfer(&b, &a).unwrap());
        assert_eq!(ab, chamfer(&a, &b).unwrap());
        // unit-cube normalisation: moving and scaling a shape changes nothing
        let b2 = cylinder(5.0, 10.0);
        let moved = boxed(3.0, -7.0, 2.0, 10.0, 10.0, 10.0);
        let ab2 = chamfer(&moved, &b2).unwrap();
        assert!((ab2 / ab - 1.0).abs() < 0.05, "{ab} {ab2}");
        // well above the floor of identical shapes
        assert!(ab > 5.0 * chamfer(&a, &a).unwrap());
    }

    #[test]
    fn translated_cube_matches_the_analytic_value() {
        // Unit cubes A = [0,1]³ and B = A + (δ,0,0), as placed. From A: the x=0 face is δ from B;
        // on the x=1 face (inside B) the distance is min(δ, y, 1−y, z, 1−z); on the four side faces
        // a point at x < δ is δ − x away, the rest lie on B's faces. B → A is the mirror image.
        let delta = 0.2;
        let a = boxed(0.0, 0.0, 0.0, 1.0, 1.0, 1.0);
        let b = boxed(delta, 0.0, 0.0, 1.0, 1.0, 1.0);
        let m = 1000;
        let mut inner = 0.0;
        for i in 0..m {
            for j in 0..m {
                let (y, z) = ((i as f64 + 0.5) / m as f64, (j as f64 + 0.5) / m as f64);
                inner += delta.min(y).min(1.0 - y).min(z).min(1.0 - z).powi(2);
            }
        }
        inner /= (m * m) as f64;
        let one_way = (delta * delta + inner + 4.0 * delta.powi(3) / 3.0) / 6.0;
        let expect = 2.0 * one_way;
        let opts = ChamferOptions {
            n_points: 100_000,
            unit_cube: false,
            ..Default::default()
        };
        let cd = chamfer_with(&a, &b, &opts).unwrap();
        assert!(
            (cd / expect - 1.0).abs() < 0.03,
            "cd {cd} expected {expect}"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let a = boxed(0.0, 0.0, 0.0, 1.0, 1.0, 1.0);
        let mut builder = crate::geom::csg::Builder::default();
        let root = builder.empty();
        let empty = builder.solid(root);
        assert_eq!(chamfer(&a, &empty), Err(ChamferError::Empty("second")));
        assert_eq!(chamfer(&empty, &a), Err(ChamferError::Empty("first")));
        let zero = ChamferOptions {
            n_points: 0,
            ..Default::default()
        };
        assert_eq!(chamfer_with(&a, &a, &zero), Err(ChamferError::NoPoints));
    }

    #[test]
    fn coincident_faces_leave_no_internal_points() {
        // two boxes stacked face to face: the shared face is inside the union, not on its surface
        let s = prog(
            "wp = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n\
             a = wp.add(wp.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).close()).extrude(0.3)\n\
             wq = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.3), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n\
             b = wq.add(wq.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).close()).extrude(0.7)\n\
             solid = a.union(b)\n",
        );
        let pts = sample_surface(&s, 5000, &mut Rng::new(5, 5)).unwrap();
        let inside = pts
            .iter()
            .filter(|p| {
                (p[2] - 0.3).abs() < 1e-9
                    && p[0] > 1e-9
                    && p[0] < 1.0 - 1e-9
                    && p[1] > 1e-9
                    && p[1] < 1.0 - 1e-9
            })
            .count();
        assert_eq!(inside, 0);
    }
}
