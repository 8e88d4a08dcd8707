//! Procedural generator of DeepCAD-like CadQuery programs, printed exactly in the GenCAD-Code style.
//!
//! A program is 1–N sketches. Each sketch sits on one of GenCAD's plane frames (XY, XZ, YZ, −YZ, or
//! occasionally a tilted one on DeepCAD's π/128 angle grid), its origin and extrusion distance on the
//! 1/128 grid within ±0.75, its loop coordinates DeepCAD-style quantised profile coordinates
//! (`k/95` of the sketch size). Loops are lines, three-point arcs and circles (outer loops with holes);
//! extrusions one- or two-sided, positive or negative; later sketches union onto or cut into the part.
//! Every emitted program executes to a non-empty solid (others are redrawn); programs are deduplicated;
//! the output depends only on the config and the seed (each candidate has its own RNG stream, so the
//! parallel generation is deterministic). Rendering them as training samples: `data::images`.

use std::collections::HashSet;
use std::fmt::Write as _;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cad::{self, Limits};
/// The generator and hash moved down to `geom::rng` (the Chamfer sampler needs them there).
pub use crate::geom::rng::{Rng, fxhash};
use crate::geom::{MeasureOptions, measure};

/// Settings of the generator (the defaults match the statistics of real GenCAD-Code programs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    /// Weights of 1, 2, … sketches per program.
    pub sketch_weights: Vec<f64>,
    /// Probability that a later sketch cuts instead of adding material.
    pub p_cut: f64,
    /// Probability of a tilted sketch plane.
    pub p_tilted: f64,
    /// Probability of a two-sided (`both=True`) extrusion.
    pub p_both: f64,
    /// Probability that the first sketch is extruded in the negative direction.
    pub p_negative: f64,
    /// Probability that an outer loop gets holes.
    pub p_holes: f64,
    /// Attempts per program before giving up on a candidate index.
    pub max_attempts: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            sketch_weights: vec![0.64, 0.15, 0.08, 0.05, 0.03, 0.025, 0.015, 0.01],
            p_cut: 0.22,
            p_tilted: 0.01,
            p_both: 0.08,
            p_negative: 0.04,
            p_holes: 0.32,
            max_attempts: 40,
        }
    }
}

/// Why generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("synth config: {0}")]
    Config(String),
    #[error("could not draw a valid program for candidate {index} in {attempts} attempts")]
    Exhausted { index: u64, attempts: usize },
    #[error("rendering {id}: {msg}")]
    Render { id: String, msg: String },
}

impl SynthConfig {
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: &str| Err(SynthError::Config(m.to_string()));
        if self.sketch_weights.is_empty()
            || self.sketch_weights.iter().any(|w| !(*w >= 0.0))
            || self.sketch_weights.iter().sum::<f64>() <= 0.0
        {
            return bad("sketch_weights must be non-negative with a positive sum");
        }
        for (name, p) in [
            ("p_cut", self.p_cut),
            ("p_tilted", self.p_tilted),
            ("p_both", self.p_both),
            ("p_negative", self.p_negative),
            ("p_holes", self.p_holes),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(SynthError::Config(format!(
                    "{name} = {p} is not a probability"
                )));
            }
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1");
        }
        Ok(())
    }
}

/// One generated program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthProgram {
    pub id: String,
    pub code: String,
}

/// Python's `repr` of a float (shortest round-trip; exponent as `e-05`).
pub fn py_float(x: f64) -> String {
    let s = format!("{x:?}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = if let Some(d) = e.strip_prefix('-') {
                ('-', d)
            } else {
                ('+', e)
            };
            let m = m.strip_suffix(".0").unwrap_or(m);
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// A plane frame as printed: origin, x direction, normal.
#[derive(Clone, Copy, Debug)]
struct Frame3 {
    x: [f64; 3],
    y: [f64; 3],
    z: [f64; 3],
}

const E17: f64 = 6.123233995736766e-17;
/// GenCAD's four axis frames (xDir, normal) with their exact printed values, and how often they occur.
const FRAMES: [([f64; 3], [f64; 3], f64); 4] = [
    ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0], 0.47),
    ([1.0, E17, -E17], [E17, -1.0, E17], 0.36),
    ([3.749399456654644e-33, 1.0, -E17], [1.0, 0.0, E17], 0.13),
    ([-1.0, E17, -E17], [E17, 1.0, E17], 0.04),
];

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn rot(v: [f64; 3], axis: usize, ang: f64) -> [f64; 3] {
    let (s, c) = ang.sin_cos();
    let (i, j) = ((axis + 1) % 3, (axis + 2) % 3);
    let mut o = v;
    o[i] = c * v[i] - s * v[j];
    o[j] = s * v[i] + c * v[j];
    o
}

impl Frame3 {
    fn new(x: [f64; 3], z: [f64; 3]) -> Frame3 {
        Frame3 {
            x,
            y: cross(z, x),
            z,
        }
    }
    fn world(&self, o: [f64; 3], u: f64, v: f64, w: f64) -> [f64; 3] {
        std::array::from_fn(|i| o[i] + u * self.x[i] + v * self.y[i] + w * self.z[i])
    }
}

/// One piece of a loop after the start point: a line to, or a three-point arc through `mid` to `to`.
#[derive(Clone, Copy, Debug)]
enum Seg {
    Line([f64; 2]),
    Arc([f64; 2], [f64; 2]),
}

/// A closed loop in sketch units (multiples of size/95 before scaling), or a circle.
#[derive(Clone, Debug)]
enum Shape {
    /// Start point then segments; the last segment ends where `close()` draws the line to the start.
    Path {
        start: [f64; 2],
        segs: Vec<Seg>,
    },
    Circle {
        c: [f64; 2],
        r: f64,
    },
}

impl Shape {
    /// Polyline approximation (for containment and spacing tests).
    fn polyline(&self) -> Vec<[f64; 2]> {
        match self {
            Shape::Circle { c, r } => (0..32)
                .map(|k| {
                    let t = k as f64 * std::f64::consts::TAU / 32.0;
                    [c[0] + r * t.cos(), c[1] + r * t.sin()]
                })
                .collect(),
            Shape::Path { start, segs } => {
                let mut pts = vec![*start];
                let mut cur = *start;
                for s in segs {
                    match *s {
                        Seg::Line(p) => {
                            pts.push(p);
                            cur = p;
                        }
                        Seg::Arc(m, p) => {
                            if let Some(arc) = arc_points(cur, m, p, 8) {
                                pts.extend(arc);
                            } else {
                                pts.push(p);
                            }
                            cur = p;
                        }
                    }
                }
                pts
            }
        }
    }
    fn bbox(&self) -> [f64; 4] {
        let p = self.polyline();
        let mut b = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for q in p {
            b[0] = b[0].min(q[0]);
            b[1] = b[1].min(q[1]);
            b[2] = b[2].max(q[0]);
            b[3] = b[3].max(q[1]);
        }
        b
    }
}

/// Points along the circular arc from `a` through `m` to `b` (excluding `a`, including `b`).
fn arc_points(a: [f64; 2], m: [f64; 2], b: [f64; 2], n: usize) -> Option<Vec<[f64; 2]>> {
    let (ax, ay) = (m[0] - a[0], m[1] - a[1]);
    let (bx, by) = (b[0] - a[0], b[1] - a[1]);
    let d = 2.0 * (ax * by - ay * bx);
    if d.abs() < 1e-12 {
        return None;
    }
    let (a2, b2) = (ax * ax + ay * ay, bx * bx + by * by);
    let c = [
        a[0] + (by * a2 - ay * b2) / d,
        a[1] + (ax * b2 - bx * a2) / d,
    ];
    let r = ((a[0] - c[0]).powi(2) + (a[1] - c[1]).powi(2)).sqrt();
    let ang = |p: [f64; 2]| (p[1] - c[1]).atan2(p[0] - c[0]);
    let (t0, tm, t1) = (ang(a), ang(m), ang(b));
    let tau = std::f64::consts::TAU;
    let ccw_end = (t1 - t0).rem_euclid(tau);
    let ccw_mid = (tm - t0).rem_euclid(tau);
    let sweep = if ccw_mid < ccw_end {
        ccw_end
    } else {
        ccw_end - tau
    };
    Some(
        (1..=n)
            .map(|k| {
                let t = t0 + sweep * k as f64 / n as f64;
                [c[0] + r * t.cos(), c[1] + r * t.sin()]
            })
            .collect(),
    )
}

fn inside_poly(p: [f64; 2], poly: &[[f64; 2]]) -> bool {
    let mut inside = false;
    let n = poly.len();
    for i in 0..n {
        let (a, b) = (poly[i], poly[(i + 1) % n]);
        if (a[1] > p[1]) != (b[1] > p[1])
            && p[0] < a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
        {
            inside = !inside;
        }
    }
    inside
}

fn seg_dist(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
    let l2 = ex * ex + ey * ey;
    let t = if l2 > 0.0 {
        (((p[0] - a[0]) * ex + (p[1] - a[1]) * ey) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((p[0] - a[0] - t * ex).powi(2) + (p[1] - a[1] - t * ey).powi(2)).sqrt()
}

fn poly_dist(p: [f64; 2], poly: &[[f64; 2]]) -> f64 {
    (0..poly.len())
        .map(|i| seg_dist(p, poly[i], poly[(i + 1) % poly.len()]))
        .fold(f64::INFINITY, f64::min)
}

/// A loop's outline on the 95-grid, counter-clockwise from (0, 0)-ish.
fn outer_shape(rng: &mut Rng) -> Shape {
    let g = |rng: &mut Rng, lo: i64, hi: i64| rng.int(lo, hi) as f64;
    let kind = rng.weighted(&[0.54, 0.10, 0.06, 0.04, 0.18, 0.04, 0.04]);
    match kind {
        // rectangle: one side the full 95
        0 => {
            let (mut w, mut h) = (95.0, g(rng, 6, 95));
            if rng.chance(0.5) {
                std::mem::swap(&mut w, &mut h);
            }
            rect_path(0.0, 0.0, w, h)
        }
        // rectilinear: L, U, T or stepped outline
        1 => rectilinear(rng),
        // rounded rectangle (quarter arcs at some corners)
        2 => {
            let (w, h) = if rng.chance(0.5) {
                (95.0, g(rng, 30, 95))
            } else {
                (g(rng, 30, 95), 95.0)
            };
            let r = g(rng, 4, (w.min(h) / 2.0 - 2.0) as i64);
            rounded_rect(w, h, r, rng)
        }
        // slot: two lines and two half circles
        3 => {
            let (w, h) = (95.0, g(rng, 10, 45));
            let r = h / 2.0;
            Shape::Path {
                start: [w - r, 0.0],
                segs: vec![
                    Seg::Arc([w, r], [w - r, h]),
                    Seg::Line([r, h]),
                    Seg::Arc([0.0, r], [r, 0.0]),
                ],
            }
        }
        // circle touching the sketch origin on the u axis (as in GenCAD)
        4 => {
            let r = if rng.chance(0.5) {
                50.0
            } else {
                g(rng, 44, 50)
            };
            Shape::Circle { c: [50.0, 0.0], r }
        }
        // star-shaped polygon (5–8 vertices)
        5 => {
            let n = rng.int(5, 8) as usize;
            let mut angs: Vec<f64> = (0..n)
                .map(|k| (k as f64 + 0.15 + 0.7 * rng.f()) * std::f64::consts::TAU / n as f64)
                .collect();
            angs.sort_by(f64::total_cmp);
            let pts: Vec<[f64; 2]> = angs
                .iter()
                .map(|t| {
                    let r = 28.0 + 19.0 * rng.f();
                    [(47.5 + r * t.cos()).round(), (47.5 + r * t.sin()).round()]
                })
                .collect();
            Shape::Path {
                start: pts[0],
                segs: pts[1..]
                    .iter()
                    .map(|p| Seg::Line(*p))
                    .chain([Seg::Line(pts[0])])
                    .collect(),
            }
        }
        // rectangle with one bulging arc side
        _ => {
            let (w, h) = (95.0, g(rng, 20, 70));
            let bulge = g(rng, 5, 25);
            Shape::Path {
                start: [w, 0.0],
                segs: vec![
                    Seg::Arc([w + bulge, h / 2.0], [w, h]),
                    Seg::Line([0.0, h]),
                    Seg::Line([0.0, 0.0]),
                ],
            }
        }
    }
}

fn rect_path(x: f64, y: f64, w: f64, h: f64) -> Shape {
    Shape::Path {
        start: [x + w, y],
        segs: vec![
            Seg::Line([x + w, y + h]),
            Seg::Line([x, y + h]),
            Seg::Line([x, y]),
        ],
    }
}

fn rounded_rect(w: f64, h: f64, r: f64, rng: &mut Rng) -> Shape {
    let s = std::f64::consts::FRAC_1_SQRT_2;
    // corners counter-clockwise from bottom-right, with the travel direction into and out of each
    let corners = [
        ([w, 0.0], [1.0, 0.0], [0.0, 1.0]),
        ([w, h], [0.0, 1.0], [-1.0, 0.0]),
        ([0.0, h], [-1.0, 0.0], [0.0, -1.0]),
        ([0.0, 0.0], [0.0, -1.0], [1.0, 0.0]),
    ];
    let round: [bool; 4] = std::array::from_fn(|_| rng.chance(0.75));
    let mut segs = Vec::new();
    for (k, (c, din, dout)) in corners.iter().enumerate() {
        if round[k] {
            let p_in = [c[0] - r * din[0], c[1] - r * din[1]];
            let p_out = [c[0] + r * dout[0], c[1] + r * dout[1]];
            let cc = [p_in[0] + r * dout[0], p_in[1] + r * dout[1]];
            let m = [
                cc[0] + r * s * (din[0] - dout[0]),
                cc[1] + r * s * (din[1] - dout[1]),
            ];
            segs.push(Seg::Line(p_in));
            segs.push(Seg::Arc(m, p_out));
        } else {
            segs.push(Seg::Line(*c));
        }
    }
    closed(segs)
}

/// A closed sequence of segments (ending where it starts, the first one a line) in GenCAD's order:
/// `moveTo` the end of the first line, the rest, then `close()` draws the first line.
fn closed(mut segs: Vec<Seg>) -> Shape {
    let first = segs.remove(0);
    let Seg::Line(start) = first else {
        unreachable!("the first segment of a loop is a line")
    };
    Shape::Path { start, segs }
}

fn rectilinear(rng: &mut Rng) -> Shape {
    let g = |rng: &mut Rng, lo: i64, hi: i64| rng.int(lo, hi) as f64;
    let (w, h) = (95.0, g(rng, 30, 95));
    match rng.int(0, 3) {
        // L: notch out the top-right corner
        0 => {
            let (a, b) = (g(rng, 10, 80), g(rng, 8, (h - 6.0) as i64));
            Shape::Path {
                start: [w, 0.0],
                segs: vec![
                    Seg::Line([w, b]),
                    Seg::Line([a, b]),
                    Seg::Line([a, h]),
                    Seg::Line([0.0, h]),
                    Seg::Line([0.0, 0.0]),
                ],
            }
        }
        // U: a slot from the top
        1 => {
            let t = g(rng, 6, 30);
            let d = g(rng, 6, (h - 6.0) as i64);
            Shape::Path {
                start: [w, 0.0],
                segs: vec![
                    Seg::Line([w, h]),
                    Seg::Line([w - t, h]),
                    Seg::Line([w - t, h - d]),
                    Seg::Line([t, h - d]),
                    Seg::Line([t, h]),
                    Seg::Line([0.0, h]),
                    Seg::Line([0.0, 0.0]),
                ],
            }
        }
        // T: a stem below a bar
        2 => {
            let bar = g(rng, 8, (h - 8.0) as i64);
            let x0 = g(rng, 10, 40);
            let x1 = g(rng, 55, 85);
            Shape::Path {
                start: [x1, 0.0],
                segs: vec![
                    Seg::Line([x1, h - bar]),
                    Seg::Line([w, h - bar]),
                    Seg::Line([w, h]),
                    Seg::Line([0.0, h]),
                    Seg::Line([0.0, h - bar]),
                    Seg::Line([x0, h - bar]),
                    Seg::Line([x0, 0.0]),
                ],
            }
        }
        // stepped profile
        _ => {
            let steps = rng.int(2, 4) as usize;
            let mut segs = Vec::new();
            let mut xs: Vec<f64> = (0..steps - 1).map(|_| g(rng, 10, 85)).collect();
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            let mut x = w;
            let mut y = h;
            segs.push(Seg::Line([w, h]));
            for (k, nx) in xs.iter().rev().enumerate() {
                let ny = (h * (xs.len() - k) as f64 / (xs.len() + 1) as f64)
                    .round()
                    .max(4.0);
                if ny >= y || *nx >= x {
                    continue;
                }
                segs.push(Seg::Line([*nx, y]));
                segs.push(Seg::Line([*nx, ny]));
                x = *nx;
                y = ny;
            }
            segs.push(Seg::Line([0.0, y]));
            segs.push(Seg::Line([0.0, 0.0]));
            Shape::Path {
                start: [w, 0.0],
                segs,
            }
        }
    }
}

/// Holes inside `outer` (circles mostly, sometimes a rectangle), kept apart from each other and the outline.
fn holes(rng: &mut Rng, outer: &Shape) -> Vec<Shape> {
    let poly = outer.polyline();
    let b = outer.bbox();
    let mut out: Vec<Shape> = Vec::new();
    let n = *[1usize, 1, 1, 2, 2, 4, 3, 1]
        .get(rng.int(0, 7) as usize)
        .unwrap_or(&1);
    let symmetric = n == 4 && rng.chance(0.7);
    let r0 = rng.int(2, 14) as f64;
    for k in 0..n.max(if symmetric { 4 } else { 0 }) {
        for _try in 0..12 {
            let cand = if symmetric {
                let (mx, my) = (rng.int(6, 20) as f64, rng.int(6, 20) as f64);
                let c = [
                    [b[0] + mx, b[1] + my],
                    [b[2] - mx, b[1] + my],
                    [b[0] + mx, b[3] - my],
                    [b[2] - mx, b[3] - my],
                ][k];
                Shape::Circle {
                    c,
                    r: r0.min(mx - 2.0).min(my - 2.0).max(1.0),
                }
            } else if rng.chance(0.75) {
                let r = rng.int(2, 22) as f64;
                let c = [
                    rng.int(b[0] as i64, b[2] as i64) as f64,
                    rng.int(b[1] as i64, b[3] as i64) as f64,
                ];
                Shape::Circle { c, r }
            } else {
                let (w, h) = (rng.int(6, 40) as f64, rng.int(6, 40) as f64);
                let (x, y) = (
                    rng.int(b[0] as i64, (b[2] - w) as i64) as f64,
                    rng.int(b[1] as i64, (b[3] - h) as i64) as f64,
                );
                rect_path(x, y, w, h)
            };
            let pl = cand.polyline();
            let ok_in = pl
                .iter()
                .all(|p| inside_poly(*p, &poly) && poly_dist(*p, &poly) > 2.0);
            let ok_apart = out.iter().all(|o| {
                let op = o.polyline();
                pl.iter()
                    .all(|p| !inside_poly(*p, &op) && poly_dist(*p, &op) > 2.0)
                    && op.iter().all(|p| !inside_poly(*p, &pl))
            });
            if ok_in && ok_apart {
                out.push(cand);
                break;
            }
        }
    }
    out
}

/// One sketch of a program: frame, origin, size, loops (on the 95-grid), extrusion.
struct Sketch {
    frame_x: [f64; 3],
    frame_z: [f64; 3],
    origin: [f64; 3],
    size: f64,
    loops: Vec<Shape>,
    dist: f64,
    both: bool,
    op: Op,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    First,
    Union,
    Cut,
}

fn grid128(x: f64) -> f64 {
    (x * 128.0).round() / 128.0
}

fn draw_frame(rng: &mut Rng, cfg: &SynthConfig) -> ([f64; 3], [f64; 3]) {
    let k = rng.weighted(&FRAMES.map(|f| f.2));
    let (x, z) = (FRAMES[k].0, FRAMES[k].1);
    if rng.chance(cfg.p_tilted) {
        let (a1, a2) = (rng.int(-24, 24) as f64, rng.int(-24, 24) as f64);
        let step = std::f64::consts::PI / 128.0;
        let (x, z) = (rot(x, 0, a1 * step), rot(z, 0, a1 * step));
        let (x, z) = (rot(x, 1, a2 * step), rot(z, 1, a2 * step));
        return (x, z);
    }
    (x, z)
}

/// Draw a whole program (may be invalid; the caller executes it).
fn draw_program(cfg: &SynthConfig, rng: &mut Rng) -> String {
    let n = rng.weighted(&cfg.sketch_weights) + 1;
    let mut sketches: Vec<Sketch> = Vec::new();
    // world bbox of the part so far
    let mut bb = [[f64::INFINITY; 3], [f64::NEG_INFINITY; 3]];
    for i in 0..n {
        let (fx, fz) = draw_frame(rng, cfg);
        let fr = Frame3::new(fx, fz);
        let op = if i == 0 {
            Op::First
        } else if rng.chance(cfg.p_cut) {
            Op::Cut
        } else {
            Op::Union
        };
        let mut loops = Vec::new();
        let outer = outer_shape(rng);
        let with_holes = rng.chance(cfg.p_holes);
        let hs = if with_holes {
            holes(rng, &outer)
        } else {
            Vec::new()
        };
        loops.push(outer);
        loops.extend(hs);
        let ob = loops[0].bbox();
        let (size, origin, dist, both);
        if i == 0 {
            size = grid128(
                [1.5, 1.5, 1.5, 1.125, 0.75, 1.0, 0.5, 0.25][rng.int(0, 7) as usize]
                    * (0.6 + 0.4 * rng.f()),
            )
            .max(2.0 / 128.0);
            let half = size * 0.5;
            let (u0, v0) = (
                -grid128(half * (ob[0] + ob[2]) / 95.0),
                -grid128(half * (ob[1] + ob[3]) / 95.0),
            );
            let w0 = if rng.chance(0.7) {
                0.0
            } else {
                grid128((rng.f() - 0.5) * 0.5)
            };
            origin = fr.world([0.0; 3], u0, v0, w0);
            both = rng.chance(cfg.p_both);
            let d = grid128(
                size * [0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0][rng.int(0, 7) as usize]
                    * (0.5 + rng.f()),
            )
            .max(1.0 / 128.0);
            dist = if !both && rng.chance(cfg.p_negative) {
                -d
            } else {
                d
            };
        } else {
            // place on a face of the current bbox, extruding outwards (union) or inwards (cut)
            let ext: Vec<f64> = (0..3)
                .map(|k| (bb[1][k] - bb[0][k]).max(1.0 / 128.0))
                .collect();
            let in_u = (0..3).map(|k| fr.x[k].abs() * ext[k]).sum::<f64>();
            let in_v = (0..3).map(|k| fr.y[k].abs() * ext[k]).sum::<f64>();
            let along = (0..3).map(|k| fr.z[k].abs() * ext[k]).sum::<f64>();
            let s_max = in_u.min(in_v).max(2.0 / 128.0);
            size = grid128(s_max * (0.25 + 0.7 * rng.f())).max(1.0 / 128.0);
            // local coordinates of the bbox in this frame
            let corners: Vec<[f64; 3]> = (0..8)
                .map(|c| [bb[c & 1][0], bb[(c >> 1) & 1][1], bb[(c >> 2) & 1][2]])
                .collect();
            let loc = |p: [f64; 3]| [dot(p, fr.x), dot(p, fr.y), dot(p, fr.z)];
            let lc: Vec<[f64; 3]> = corners.iter().map(|p| loc(*p)).collect();
            let lo: [f64; 3] =
                std::array::from_fn(|k| lc.iter().map(|p| p[k]).fold(f64::INFINITY, f64::min));
            let hi: [f64; 3] =
                std::array::from_fn(|k| lc.iter().map(|p| p[k]).fold(f64::NEG_INFINITY, f64::max));
            let prof_w = size * (ob[2] - ob[0]) / 95.0;
            let prof_h = size * (ob[3] - ob[1]) / 95.0;
            let u = lo[0] + rng.f() * (hi[0] - lo[0] - prof_w).max(0.0) - size * ob[0] / 95.0;
            let v = lo[1] + rng.f() * (hi[1] - lo[1] - prof_h).max(0.0) - size * ob[1] / 95.0;
            let top = rng.chance(if op == Op::Cut { 0.7 } else { 0.85 });
            let depth = grid128(along * (0.1 + 0.9 * rng.f())).max(1.0 / 128.0);
            let boss = grid128(along.min(size) * (0.15 + 0.85 * rng.f())).max(1.0 / 128.0);
            both = rng.chance(cfg.p_both * 0.8);
            let (w, d) = match (op, top) {
                (Op::Cut, true) => (hi[2], if both { depth } else { -depth }),
                (Op::Cut, false) => (lo[2], depth),
                (_, true) => (hi[2], boss),
                (_, false) => (lo[2], -boss),
            };
            let (w, d) = if both && op != Op::Cut {
                (0.5 * (lo[2] + hi[2]), boss)
            } else {
                (w, d)
            };
            let p = fr.world([0.0; 3], u, v, w);
            origin = [grid128(p[0]), grid128(p[1]), grid128(p[2])];
            dist = d;
        }
        // update the bbox (conservatively, from the profile bbox and the extrusion)
        let (w0, w1) = if both {
            (-dist.abs(), dist.abs())
        } else {
            (dist.min(0.0), dist.max(0.0))
        };
        if op != Op::Cut {
            for c in 0..8 {
                let u = size * if c & 1 == 0 { ob[0] } else { ob[2] } / 95.0;
                let v = size * if c & 2 == 0 { ob[1] } else { ob[3] } / 95.0;
                let w = if c & 4 == 0 { w0 } else { w1 };
                let p = fr.world(origin, u, v, w);
                for k in 0..3 {
                    bb[0][k] = bb[0][k].min(p[k]);
                    bb[1][k] = bb[1][k].max(p[k]);
                }
            }
        }
        sketches.push(Sketch {
            frame_x: fx,
            frame_z: fz,
            origin,
            size,
            loops,
            dist,
            both,
            op,
        });
    }
    print_program(&sketches)
}

fn vec3(v: [f64; 3]) -> String {
    format!(
        "cq.Vector({}, {}, {})",
        py_float(v[0]),
        py_float(v[1]),
        py_float(v[2])
    )
}

fn print_program(sketches: &[Sketch]) -> String {
    let mut s = String::from("import cadquery as cq\n");
    let mut loop_id = 0;
    for (i, sk) in sketches.iter().enumerate() {
        let k = sk.size / 95.0;
        let pt =
            |p: [f64; 2]| format!("{}, {}", py_float(p[0] * k + 0.0), py_float(p[1] * k + 0.0));
        let _ = writeln!(s, "# Generating a workplane for sketch {i}");
        let _ = writeln!(
            s,
            "wp_sketch{i} = cq.Workplane(cq.Plane({}, {}, {}))",
            vec3(sk.origin),
            vec3(sk.frame_x),
            vec3(sk.frame_z)
        );
        let mut names = Vec::new();
        for l in &sk.loops {
            let _ = write!(s, "loop{loop_id}=wp_sketch{i}");
            match l {
                Shape::Circle { c, r } => {
                    let _ = write!(s, ".moveTo({}).circle({})", pt(*c), py_float(r * k));
                }
                Shape::Path { start, segs } => {
                    let _ = write!(s, ".moveTo({})", pt(*start));
                    for sg in segs {
                        match sg {
                            Seg::Line(p) => {
                                let _ = write!(s, ".lineTo({})", pt(*p));
                            }
                            Seg::Arc(m, p) => {
                                let _ = write!(s, ".threePointArc(({}), ({}))", pt(*m), pt(*p));
                            }
                        }
                    }
                    s.push_str(".close()");
                }
            }
            s.push('\n');
            names.push(loop_id);
            loop_id += 1;
        }
        let _ = write!(s, "solid{i}=wp_sketch{i}");
        for n in &names {
            let _ = write!(s, ".add(loop{n})");
        }
        if sk.both {
            let _ = writeln!(s, ".extrude({}, both=True)", py_float(sk.dist));
        } else {
            let _ = writeln!(s, ".extrude({})", py_float(sk.dist));
        }
        match sk.op {
            Op::First => s.push_str("solid=solid0"),
            Op::Union => {
                let _ = write!(s, "solid=solid.union(solid{i})");
            }
            Op::Cut => {
                let _ = write!(s, "solid=solid.cut(solid{i})");
            }
        }
        if i + 1 < sketches.len() {
            s.push('\n');
        }
    }
    s
}

/// Whether a program executes to a valid, non-degenerate solid.
pub fn is_valid_program(code: &str) -> bool {
    let Ok(solid) = cad::execute(code, &Limits::default()) else {
        return false;
    };
    if solid.is_empty() {
        return false;
    }
    let m = measure(
        &solid,
        &MeasureOptions {
            pieces: 8,
            component_grid: 0,
        },
    );
    let ext = (0..3)
        .map(|k| m.bbox[k + 3] - m.bbox[k])
        .fold(0.0, f64::max);
    m.valid && m.volume > 1e-9 && ext > 1e-4 && ext < 100.0
}

/// Candidate `index` of the stream `seed`: the first valid draw of its RNG.
fn candidate(cfg: &SynthConfig, seed: u64, index: u64) -> Result<String, SynthError> {
    let mut rng = Rng::new(seed, index);
    for _ in 0..cfg.max_attempts {
        let code = draw_program(cfg, &mut rng);
        if is_valid_program(&code) {
            return Ok(code);
        }
    }
    Err(SynthError::Exhausted {
        index,
        attempts: cfg.max_attempts,
    })
}

/// Id of the `index`-th program of a seed.
pub fn synth_id(seed: u64, index: u64) -> String {
    format!("synth{seed}/{index:08}")
}

/// `count` distinct valid programs for `seed` (in parallel, deterministic). Candidates that exhaust
/// their attempts or repeat an earlier program are skipped and later indices fill in.
pub fn generate(
    cfg: &SynthConfig,
    seed: u64,
    count: usize,
) -> Result<Vec<SynthProgram>, SynthError> {
    generate_with_progress(cfg, seed, count, &|_| {})
}

/// [`generate`] calling `progress(n)` as batches of `n` programs are accepted.
pub fn generate_with_progress(
    cfg: &SynthConfig,
    seed: u64,
    count: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<SynthProgram>, SynthError> {
    cfg.validate()?;
    let mut out = Vec::with_capacity(count);
    let mut seen: HashSet<u64> = HashSet::new();
    let mut next: u64 = 0;
    let mut failures = 0usize;
    while out.len() < count {
        let want = count - out.len();
        let batch = (want + want / 8 + 16) as u64;
        let cands: Vec<(u64, Result<String, SynthError>)> = (next..next + batch)
            .into_par_iter()
            .map(|i| (i, candidate(cfg, seed, i)))
            .collect();
        next += batch;
        let before = out.len();
        for (i, c) in cands {
            if out.len() >= count {
                break;
            }
            match c {
                Ok(code) => {
                    if seen.insert(fxhash(&code)) {
                        out.push(SynthProgram {
                            id: synth_id(seed, i),
                            code,
                        });
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures > 100 + count {
                        return Err(e);
                    }
                }
            }
        }
        progress(out.len() - before);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_float_matches_python_repr() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(-0.75), "-0.75");
        assert_eq!(py_float(0.0), "0.0");
        assert_eq!(py_float(6.123233995736766e-17), "6.123233995736766e-17");
        assert_eq!(py_float(3.749399456654644e-33), "3.749399456654644e-33");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(0.06842105263157895), "0.06842105263157895");
    }

    #[test]
    fn rng_is_deterministic_and_spread() {
        let (mut a, mut b) = (Rng::new(7, 3), Rng::new(7, 3));
        let xs: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = Rng::new(7, 4);
        assert_ne!(xs[0], c.next_u64());
        let mean = (0..10_000).map(|_| a.f()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02);
    }
}
