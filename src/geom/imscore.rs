//! Image score: how well a render of a candidate program matches an input image of a part, from the
//! two images alone (no program, no ground truth). Pure functions over [`RgbImage`]s.
//!
//! Both images are brought to one framing as the real GenCAD-Code data frames parts: the foreground
//! (pixels whose smallest channel is below [`FG_THRESHOLD`]) is cropped to its bounding box, scaled so
//! that its larger side spans `side` cells with the aspect kept, and centred in a `side`×`side` grid
//! ([`Normalized`]). Each cell keeps the share of its source pixels that are foreground and whether any
//! of them is a black line pixel (largest channel below [`LINE_THRESHOLD`]: silhouettes, feature edges,
//! hole outlines). The score ([`score`]) is
//!
//! `total = (1 − w) · mask_iou + w · edge`,
//!
//! - `mask_iou` = Σ min(a, b) / Σ max(a, b) over the cells' foreground shares (the soft silhouette IoU);
//! - `edge` = 1 / (1 + d / τ), where `d` is the symmetric chamfer distance between the two line maps
//!   in cells (the mean, over the line cells of each image, of the distance to the nearest line cell of
//!   the other, each distance truncated at [`EDGE_TRUNCATE`], the two directions averaged), τ =
//!   [`EDGE_TAU`]; 1 when neither image has lines, 0 when only one has;
//! - `w` = [`ImageScoreConfig::edge_weight`].
//!
//! Scale and position drop out (the crop), as they do in IoU_best; the silhouette carries the outline
//! and the line term the inner structure that the silhouette hides (holes seen face-on, steps, bosses).

use serde::{Deserialize, Serialize};

use super::render::RgbImage;

/// A pixel is foreground when its smallest channel is below this (the background is white).
pub const FG_THRESHOLD: u8 = 230;
/// A pixel is a line pixel when its largest channel is below this (lines are drawn black).
pub const LINE_THRESHOLD: u8 = 90;
/// Line distances are truncated at this many cells, so one missing line does not dominate.
pub const EDGE_TRUNCATE: f32 = 8.0;
/// Chamfer distance (cells) at which the line term is ½.
pub const EDGE_TAU: f32 = 1.5;

/// Settings of the image score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageScoreConfig {
    /// Side of the normalised grid in cells.
    pub side: usize,
    /// Weight of the line term (0: silhouette only).
    pub edge_weight: f64,
}

impl Default for ImageScoreConfig {
    fn default() -> Self {
        ImageScoreConfig {
            side: 96,
            edge_weight: 0.5,
        }
    }
}

impl ImageScoreConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=512).contains(&self.side) {
            return Err(format!(
                "image score side must be in 16..=512, got {}",
                self.side
            ));
        }
        if !(0.0..=1.0).contains(&self.edge_weight) {
            return Err(format!(
                "image score edge_weight must be in 0..=1, got {}",
                self.edge_weight
            ));
        }
        Ok(())
    }
}

/// An image in the normalised framing.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalized {
    pub side: usize,
    /// Foreground share of each cell, row-major.
    pub fg: Vec<f32>,
    /// Whether each cell holds a line pixel.
    pub line: Vec<bool>,
    /// Distance (cells, 3-4 chamfer metric / 3) from each cell to the nearest line cell, truncated.
    pub dist: Vec<f32>,
    /// Number of line cells.
    pub n_line: usize,
}

/// The score's parts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    pub mask_iou: f64,
    pub edge: f64,
    pub total: f64,
}

/// The foreground's inclusive pixel box `[x0, y0, x1, y1]`, or `None` for an empty image.
fn fg_box(img: &RgbImage) -> Option<[usize; 4]> {
    let (w, h) = (img.width as usize, img.height as usize);
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for (k, p) in img.pixels.chunks_exact(3).enumerate() {
        if p[0].min(p[1]).min(p[2]) < FG_THRESHOLD {
            let (x, y) = (k % w, k / w);
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    (x0 != usize::MAX && y1 < h).then_some([x0, y0, x1, y1])
}

/// Bring `img` to the normalised framing (`None` when it has no foreground).
pub fn normalize(img: &RgbImage, side: usize) -> Option<Normalized> {
    let w = img.width as usize;
    if w == 0 || img.pixels.len() < 3 * w * img.height as usize {
        return None;
    }
    let [x0, y0, x1, y1] = fg_box(img)?;
    let (bw, bh) = ((x1 - x0 + 1) as f64, (y1 - y0 + 1) as f64);
    let s = side as f64 / bw.max(bh); // cells per pixel
    let (ox, oy) = (0.5 * (side as f64 - bw * s), 0.5 * (side as f64 - bh * s));
    let mut fg = vec![0f32; side * side];
    let mut line = vec![false; side * side];
    // each cell covers the source pixels whose centres fall in it (at least the nearest one)
    for j in 0..side {
        let (v0, v1) = ((j as f64 - oy) / s, (j as f64 + 1.0 - oy) / s);
        if v1 <= 0.0 || v0 >= bh {
            continue;
        }
        let (r0, r1) = pixel_range(v0, v1, bh as usize);
        for i in 0..side {
            let (u0, u1) = ((i as f64 - ox) / s, (i as f64 + 1.0 - ox) / s);
            if u1 <= 0.0 || u0 >= bw {
                continue;
            }
            let (c0, c1) = pixel_range(u0, u1, bw as usize);
            let (mut n, mut f, mut l) = (0u32, 0u32, false);
            for y in r0..r1 {
                let row = (y0 + y) * w;
                for x in c0..c1 {
                    let p = &img.pixels[3 * (row + x0 + x)..3 * (row + x0 + x) + 3];
                    n += 1;
                    f += (p[0].min(p[1]).min(p[2]) < FG_THRESHOLD) as u32;
                    l |= p[0].max(p[1]).max(p[2]) < LINE_THRESHOLD;
                }
            }
            fg[j * side + i] = f as f32 / n.max(1) as f32;
            line[j * side + i] = l;
        }
    }
    let dist = distance_transform(&line, side);
    let n_line = line.iter().filter(|&&b| b).count();
    Some(Normalized {
        side,
        fg,
        line,
        dist,
        n_line,
    })
}

/// Source pixel indices whose centres lie in `[a, b)` (at least the pixel under the midpoint).
fn pixel_range(a: f64, b: f64, n: usize) -> (usize, usize) {
    let lo = (a - 0.5).ceil().max(0.0) as usize;
    let hi = ((b - 0.5).ceil().max(0.0) as usize).min(n);
    if lo < hi {
        (lo, hi)
    } else {
        let m = ((0.5 * (a + b)).floor().max(0.0) as usize).min(n - 1);
        (m, m + 1)
    }
}

/// Two-pass 3-4 chamfer distance transform (in cells) to the nearest `true` cell, truncated at
/// [`EDGE_TRUNCATE`]; all cells are at the truncation distance when there is none.
pub fn distance_transform(line: &[bool], side: usize) -> Vec<f32> {
    let big = 3.0 * EDGE_TRUNCATE;
    let mut d: Vec<f32> = line.iter().map(|&b| if b { 0.0 } else { big }).collect();
    for j in 0..side {
        for i in 0..side {
            let k = j * side + i;
            let mut v = d[k];
            if i > 0 {
                v = v.min(d[k - 1] + 3.0);
            }
            if j > 0 {
                v = v.min(d[k - side] + 3.0);
                if i > 0 {
                    v = v.min(d[k - side - 1] + 4.0);
                }
                if i + 1 < side {
                    v = v.min(d[k - side + 1] + 4.0);
                }
            }
            d[k] = v;
        }
    }
    for j in (0..side).rev() {
        for i in (0..side).rev() {
            let k = j * side + i;
            let mut v = d[k];
            if i + 1 < side {
                v = v.min(d[k + 1] + 3.0);
            }
            if j + 1 < side {
                v = v.min(d[k + side] + 3.0);
                if i + 1 < side {
                    v = v.min(d[k + side + 1] + 4.0);
                }
                if i > 0 {
                    v = v.min(d[k + side - 1] + 4.0);
                }
            }
            d[k] = v;
        }
    }
    d.iter().map(|v| (v / 3.0).min(EDGE_TRUNCATE)).collect()
}

/// Mean distance from the line cells of `a` to the lines of `b`.
fn directed(a: &Normalized, b: &Normalized) -> f32 {
    let s: f32 = a
        .line
        .iter()
        .zip(&b.dist)
        .filter(|(l, _)| **l)
        .map(|(_, d)| *d)
        .sum();
    s / a.n_line.max(1) as f32
}

/// The score of `candidate` against `target` (both normalised with the same side). Symmetric.
pub fn score(target: &Normalized, candidate: &Normalized, edge_weight: f64) -> ImageScore {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in target.fg.iter().zip(&candidate.fg) {
        num += a.min(*b) as f64;
        den += a.max(*b) as f64;
    }
    let mask_iou = if den > 0.0 { num / den } else { 1.0 };
    let edge = match (target.n_line, candidate.n_line) {
        (0, 0) => 1.0,
        (0, _) | (_, 0) => 0.0,
        _ => {
            let d = 0.5 * (directed(target, candidate) + directed(candidate, target));
            1.0 / (1.0 + (d / EDGE_TAU) as f64)
        }
    };
    ImageScore {
        mask_iou,
        edge,
        total: (1.0 - edge_weight) * mask_iou + edge_weight * edge,
    }
}

/// [`score`] of two images; `None` when either has no foreground.
pub fn image_score(
    target: &RgbImage,
    candidate: &RgbImage,
    cfg: &ImageScoreConfig,
) -> Option<ImageScore> {
    Some(score(
        &normalize(target, cfg.side)?,
        &normalize(candidate, cfg.side)?,
        cfg.edge_weight,
    ))
}

/// Spearman's rank correlation of two equally long series (ties get their mean rank); `None` for
/// fewer than 3 points or a constant series.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut k = 0;
    while k < idx.len() {
        let mut e = k;
        while e + 1 < idx.len() && v[idx[e + 1]] == v[idx[k]] {
            e += 1;
        }
        for &i in &idx[k..=e] {
            r[i] = 0.5 * (k + e) as f64 + 1.0;
        }
        k = e + 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cad::{Limits, execute};
    use crate::geom::render::{RenderOptions, render};

    fn prog(w: f64, d: f64, h: f64, hole: Option<f64>) -> String {
        let hole = hole.map_or(String::new(), |r| {
            format!(".moveTo({}, {}).circle({r})", w / 2.0, d / 2.0)
        });
        format!(
            "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({w}, 0.0).lineTo({w}, {d}).lineTo(0.0, {d}).lineTo(0.0, 0.0).close(){hole}\nsolid0=wp_sketch0.add(loop0).extrude({h})\nsolid=solid0\n"
        )
    }

    fn img(p: &str, size: u32) -> RgbImage {
        render(
            &execute(p, &Limits::default()).unwrap(),
            &RenderOptions {
                size,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn identical_images_score_one_and_framing_drops_out() {
        let a = img(&prog(1.0, 0.6, 0.3, Some(0.15)), 448);
        let b = img(&prog(1.0, 0.6, 0.3, Some(0.15)), 160); // same part, other size
        let c = img(&prog(2.0, 1.2, 0.6, Some(0.3)), 224); // scaled part
        let cfg = ImageScoreConfig::default();
        let s = image_score(&a, &a, &cfg).unwrap();
        assert!((s.total - 1.0).abs() < 1e-9, "{s:?}");
        assert!(image_score(&a, &b, &cfg).unwrap().total > 0.85);
        assert!(image_score(&a, &c, &cfg).unwrap().total > 0.85);
    }

    #[test]
    fn closer_shapes_score_higher() {
        let cfg = ImageScoreConfig::default();
        let t = img(&prog(1.0, 0.6, 0.3, Some(0.15)), 448);
        let near = image_score(&t, &img(&prog(1.0, 0.6, 0.31, Some(0.15)), 128), &cfg).unwrap();
        let no_hole = image_score(&t, &img(&prog(1.0, 0.6, 0.3, None), 128), &cfg).unwrap();
        let far = image_score(&t, &img(&prog(0.4, 0.6, 1.0, None), 128), &cfg).unwrap();
        assert!(
            near.total > no_hole.total && no_hole.total > far.total,
            "{near:?} {no_hole:?} {far:?}"
        );
        // the hole is invisible to nothing but the lines
        assert!(no_hole.edge < near.edge);
    }

    #[test]
    fn empty_image_has_no_score() {
        let white = RgbImage::new(32, 32, [255, 255, 255]);
        assert!(normalize(&white, 32).is_none());
        assert!(image_score(&white, &white, &ImageScoreConfig::default()).is_none());
        assert!(
            normalize(
                &RgbImage {
                    width: 4,
                    height: 4,
                    pixels: vec![0; 5]
                },
                16
            )
            .is_none()
        );
    }

    #[test]
    fn spearman_matches_hand_values() {
        assert!(
            (spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]).unwrap() - 1.0).abs()
                < 1e-12
        );
        assert!(
            (spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12
        );
        // ties: ranks [1.5, 1.5, 3] vs [1, 2, 3] → r = 0.866
        assert!((spearman(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap() - 0.8660254).abs() < 1e-6);
        assert!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_none());
    }
}
