//! Intersection over union of two solids under the three normalisations of `../shared/DESIGN.md`.

use serde::{Deserialize, Serialize};

use super::csg::{Op, Solid, combine, length};
use super::measure::{MeasureOptions, bbox, choose_axes, integrate, mass_props};
use super::prism::Span;

/// How the two shapes are placed before comparing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// As written.
    Raw,
    /// cadrille / CAD-Recode: bbox centre to the origin, scale 1 / max extent.
    UnitCube,
    /// CAD-Coder's `IOU_best`: centre of mass, scale by sqrt(trace(inertia) / volume), principal axes
    /// aligned, best of the identity and the three two-axis flips.
    Best,
}

impl std::str::FromStr for Normalize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" | "none" => Ok(Normalize::Raw),
            "unitcube" => Ok(Normalize::UnitCube),
            "best" | "cadcoder" => Ok(Normalize::Best),
            _ => Err(format!(
                "unknown normalisation `{s}` (expected raw, unitcube or best)"
            )),
        }
    }
}

const IDENTITY: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// vol(A ∩ B) / vol(A ∪ B) as placed; 0 if both are empty.
pub fn iou_raw(a: &Solid, b: &Solid, opts: &MeasureOptions) -> f64 {
    let bb = a.bbox_bound().union(&b.bbox_bound());
    let ax = choose_axes(&[a, b]);
    let mut buf: Vec<Span> = Vec::new();
    let [inter, uni] = integrate(&[a, b], &bb, ax, opts, false, |sp, _, _| {
        buf.clear();
        combine(Op::Intersect, sp[0], sp[1], &mut buf);
        let i = length(&buf);
        buf.clear();
        combine(Op::Union, sp[0], sp[1], &mut buf);
        [i, length(&buf)]
    });
    if uni > 0.0 {
        (inter / uni).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The solid moved so that its bbox centre is the origin and scaled by 1 / its largest extent
/// ([`Normalize::UnitCube`]; also the Chamfer distance's placement).
pub fn unitcube(s: &Solid, opts: &MeasureOptions) -> Solid {
    let bb = bbox(s, opts);
    let ext = bb.max_extent();
    let k = if ext > 1e-7 { 1.0 / ext } else { 1.0 };
    s.transformed(&IDENTITY, k, bb.center())
}

/// Symmetric 3×3 eigen-decomposition (Jacobi). Eigenvalues ascending; eigenvectors are the columns.
pub fn eigh3(m: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut a = m;
    let mut v = IDENTITY;
    for _ in 0..64 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        let scale = a[0][0].abs() + a[1][1].abs() + a[2][2].abs();
        if off <= 1e-18 * scale.max(1e-300) {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            for k in 0..3 {
                let (akp, akq) = (a[k][p], a[k][q]);
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let (apk, aqk) = (a[p][k], a[q][k]);
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for k in 0..3 {
                let (vkp, vkq) = (v[k][p], v[k][q]);
                v[k][p] = c * vkp - s * vkq;
                v[k][q] = s * vkp + c * vkq;
            }
        }
    }
    let mut idx = [0, 1, 2];
    idx.sort_by(|&i, &j| a[i][i].total_cmp(&a[j][j]));
    let w = [a[idx[0]][idx[0]], a[idx[1]][idx[1]], a[idx[2]][idx[2]]];
    let mut vs = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            vs[r][c] = v[r][idx[c]];
        }
    }
    (w, vs)
}

fn matmul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

fn transpose(a: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut t = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            t[i][j] = a[j][i];
        }
    }
    t
}

fn right_handed((w, mut v): ([f64; 3], [[f64; 3]; 3])) -> ([f64; 3], [[f64; 3]; 3]) {
    let det = v[0][0] * (v[1][1] * v[2][2] - v[1][2] * v[2][1])
        - v[0][1] * (v[1][0] * v[2][2] - v[1][2] * v[2][0])
        + v[0][2] * (v[1][0] * v[2][1] - v[1][1] * v[2][0]);
    if det < 0.0 {
        for row in v.iter_mut() {
            row[2] = -row[2];
        }
    }
    (w, v)
}

fn best(a: &Solid, b: &Solid, opts: &MeasureOptions) -> f64 {
    let (pa, pb) = (mass_props(a, opts), mass_props(b, opts));
    if !(pa.volume > 0.0 && pb.volume > 0.0) {
        return 0.0;
    }
    // Right-handed principal frames: the four sign patterns below are then exactly the proper
    // rotations between the two frames (as with OCC's numpy frames in CAD-Coder's script).
    let (ea, va) = right_handed(eigh3(pa.inertia));
    let (eb, vb) = right_handed(eigh3(pb.inertia));
    let sa = (ea.iter().map(|x| x.abs()).sum::<f64>() / pa.volume).sqrt();
    let sb = (eb.iter().map(|x| x.abs()).sum::<f64>() / pb.volume).sqrt();
    let nb = b.transformed(&IDENTITY, 1.0 / sb, pb.center);
    let flips = [
        [1.0, 1.0, 1.0],
        [1.0, -1.0, -1.0],
        [-1.0, 1.0, -1.0],
        [-1.0, -1.0, 1.0],
    ];
    let mut best = 0.0f64;
    for al in flips {
        // R = Vb · diag(al) · Vaᵀ
        let mut d = va;
        for r in 0..3 {
            for c in 0..3 {
                d[r][c] *= al[c];
            }
        }
        let rot = matmul(&vb, &transpose(&d));
        let na = a.transformed(&rot, 1.0 / sa, pa.center);
        best = best.max(iou_raw(&na, &nb, opts));
    }
    best
}

/// IoU of two solids under a normalisation (a pure function of the two shapes).
pub fn iou(a: &Solid, b: &Solid, norm: Normalize) -> f64 {
    iou_with(a, b, norm, &MeasureOptions::default())
}

pub fn iou_with(a: &Solid, b: &Solid, norm: Normalize, opts: &MeasureOptions) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    match norm {
        Normalize::Raw => iou_raw(a, b, opts),
        Normalize::UnitCube => iou_raw(&unitcube(a, opts), &unitcube(b, opts), opts),
        Normalize::Best => best(a, b, opts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigh3_diagonalises() {
        let m = [[2.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 1.0]];
        let (w, v) = eigh3(m);
        assert!(w[0] <= w[1] && w[1] <= w[2]);
        for c in 0..3 {
            for r in 0..3 {
                let mv: f64 = (0..3).map(|k| m[r][k] * v[k][c]).sum();
                assert!((mv - w[c] * v[r][c]).abs() < 1e-10);
            }
        }
    }
}
