//! Orthographic ray-cast renderer of solids: the GenCAD-Code image style and cadrille's four views.
//!
//! Dependency-free (it also builds for wasm32): [`render`] returns an RGB buffer; PNG encoding and
//! parallel batches live in `crate::data`. Each pixel casts one ray; its first hit gives the surface,
//! depth and normal. Faces are flat grey lit by a headlight (every face whose normal is an axis comes
//! out at exactly (141,141,138) in an isometric view, as in the real images; curved faces are shaded),
//! and 1-pixel black lines are drawn where the visible *surface* changes (silhouettes, feature edges,
//! occlusion boundaries, and the seam of full cylinders, which OpenCascade draws). Coplanar faces of
//! different prisms are one surface, as after CadQuery's `clean()`, so no line is drawn between them.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::csg::{RayScratch, Solid};
use super::measure::{MeasureOptions, bbox};
use super::prism::Edge2;
use super::vec3::{Aabb, V3, add, cross, dot, normalize, scale, sub};

/// The camera direction of the GenCAD-Code images (from the part towards the viewer), Z up.
pub const GENCAD_VIEW: V3 = [1.0, -1.0, 1.0];
/// cadrille's four view directions (tiles in reading order).
pub const MULTIVIEW_VIEWS: [V3; 4] = [
    [1.0, 1.0, 1.0],
    [-1.0, -1.0, -1.0],
    [-1.0, 1.0, -1.0],
    [1.0, -1.0, 1.0],
];
/// Framing of the GenCAD-Code images: the projected bounding box is fitted into a centred box of
/// 400×300 pixels of the 448×448 image (width share, height share). Found on the real images: flat
/// wide parts span 400 px, tall or cube-like ones 300 px, in between `300·w/h`.
pub const GENCAD_FIT: [f64; 2] = [400.0 / 448.0, 300.0 / 448.0];
/// Framing of a multiview tile (square).
pub const MULTIVIEW_FIT: [f64; 2] = [0.8, 0.8];
/// Grey level of a face whose normal is a coordinate axis in the isometric view.
pub const FACE_GREY: u8 = 141;

/// Which image style to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// One isometric view, white background, grey faces, black edges (GenCAD-Code).
    Gencad,
    /// Four views tiled 2×2 with thin borders (cadrille).
    Multiview,
}

impl Style {
    /// Default image side for this style (GenCAD: 448; multiview: four 128-pixel tiles).
    pub fn default_size(self) -> u32 {
        match self {
            Style::Gencad => 448,
            Style::Multiview => 256,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Gencad => "gencad",
            Style::Multiview => "multiview",
        }
    }
}

impl std::str::FromStr for Style {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gencad" => Ok(Style::Gencad),
            "multiview" | "cadrille" => Ok(Style::Multiview),
            _ => Err(format!(
                "unknown render style `{s}` (expected gencad or multiview)"
            )),
        }
    }
}

/// Settings of one render. `zoom` and `shift` are the training-time framing jitter (1 and 0: none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderOptions {
    pub style: Style,
    /// Image side in pixels (square); a multiview tile is half of it.
    pub size: u32,
    /// The projected bounding box is fitted into a centred box of `fit[0]`×`fit[1]` of the (tile)
    /// side, keeping its aspect (defaults: [`GENCAD_FIT`], [`MULTIVIEW_FIT`]).
    pub fit: [f64; 2],
    /// Scales the fitted size (framing jitter).
    pub zoom: f64,
    /// Shift of the part's centre, as a share of the side (x right, y down).
    pub shift: [f64; 2],
    /// Camera direction of the `gencad` style (towards the viewer), Z up.
    pub view: V3,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            style: Style::Gencad,
            size: 448,
            fit: GENCAD_FIT,
            zoom: 1.0,
            shift: [0.0, 0.0],
            view: GENCAD_VIEW,
        }
    }
}

impl RenderOptions {
    /// Defaults for a style at its default size.
    pub fn style(style: Style) -> RenderOptions {
        let fit = match style {
            Style::Gencad => GENCAD_FIT,
            Style::Multiview => MULTIVIEW_FIT,
        };
        RenderOptions {
            style,
            size: style.default_size(),
            fit,
            ..Default::default()
        }
    }
}

/// An 8-bit RGB image, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: u32, height: u32, fill: [u8; 3]) -> RgbImage {
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for _ in 0..width as usize * height as usize {
            pixels.extend_from_slice(&fill);
        }
        RgbImage {
            width,
            height,
            pixels,
        }
    }
    pub fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
    pub fn put(&mut self, x: u32, y: u32, c: [u8; 3]) {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        self.pixels[i..i + 3].copy_from_slice(&c);
    }
}

/// Why a render could not be made.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error("the solid is empty: nothing to render")]
    Empty,
    #[error("image size {0} is out of range (8 to 8192 pixels)")]
    BadSize(u32),
    #[error("render option {0}")]
    BadOption(String),
}

/// An orthographic camera: world point `p` lands at pixel `centre_px + ppu·(p·right, −p·up)`.
#[derive(Clone, Copy, Debug)]
pub struct Camera {
    /// Unit vector from the scene towards the viewer.
    pub dir: V3,
    pub right: V3,
    pub up: V3,
    /// Screen coordinates `(p·right, p·up)` shown at the image centre.
    pub centre: [f64; 2],
    /// Pixels per world unit.
    pub ppu: f64,
}

impl Camera {
    /// Basis for a view from direction `dir` with world Z up (Y up if `dir` is vertical).
    pub fn basis(dir: V3) -> Option<(V3, V3, V3)> {
        let d = normalize(dir)?;
        let fwd = scale(d, -1.0);
        let right = normalize(cross(fwd, [0.0, 0.0, 1.0]))
            .or_else(|| normalize(cross(fwd, [0.0, 1.0, 0.0])))?;
        let up = cross(right, fwd);
        Some((d, right, up))
    }

    /// A camera from `dir` that fits the projected `bbox` into a centred box of `fit[0]·w` × `fit[1]·h`
    /// pixels (aspect kept), then shifts it by `shift` (shares of the side).
    pub fn framing(
        dir: V3,
        bbox: &Aabb,
        w: u32,
        h: u32,
        fit: [f64; 2],
        shift: [f64; 2],
    ) -> Option<Camera> {
        let (dir, right, up) = Camera::basis(dir)?;
        let (mut x0, mut x1, mut y0, mut y1) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for k in 0..8 {
            let p = [
                if k & 1 == 0 { bbox.min[0] } else { bbox.max[0] },
                if k & 2 == 0 { bbox.min[1] } else { bbox.max[1] },
                if k & 4 == 0 { bbox.min[2] } else { bbox.max[2] },
            ];
            let (x, y) = (dot(p, right), dot(p, up));
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let side = w.min(h) as f64;
        let ppu =
            (fit[0] * w as f64 / (x1 - x0).max(1e-9)).min(fit[1] * h as f64 / (y1 - y0).max(1e-9));
        // shift the part by `shift`·side pixels: the image centre moves the opposite way
        let centre = [
            0.5 * (x0 + x1) - shift[0] * side / ppu,
            0.5 * (y0 + y1) + shift[1] * side / ppu,
        ];
        Some(Camera {
            dir,
            right,
            up,
            centre,
            ppu,
        })
    }

    /// World-space ray (origin outside `bbox`, unit direction) through the centre of pixel `(i, j)`.
    fn ray(&self, i: f64, j: f64, w: u32, h: u32, far: f64) -> (V3, V3) {
        let x = self.centre[0] + (i + 0.5 - 0.5 * w as f64) / self.ppu;
        let y = self.centre[1] - (j + 0.5 - 0.5 * h as f64) / self.ppu;
        let o = add(
            add(scale(self.right, x), scale(self.up, y)),
            scale(self.dir, far),
        );
        (o, scale(self.dir, -1.0))
    }
}

/// The geometric surface behind each surface tag, with coplanar / coaxial tags merged.
#[derive(Clone, Copy, Debug)]
enum SurfKind {
    Plane {
        n: V3,
    },
    /// A cylinder about the line `c + s·a`; `seam` = (x, y) frame of the angle when it is a full circle.
    Cylinder {
        a: V3,
        c: V3,
        r: f64,
        seam: Option<(V3, V3)>,
    },
}

#[derive(Clone, Copy, Debug)]
struct Surf {
    id: u32,
    kind: SurfKind,
}

/// Per-solid table from global surface tag to merged surface.
pub struct Surfaces {
    by_tag: Vec<Option<Surf>>,
}

fn canon_dir(n: V3) -> V3 {
    let k = (0..3).find(|&i| n[i].abs() > 1e-9).unwrap_or(2);
    if n[k] < 0.0 { scale(n, -1.0) } else { n }
}

fn q(x: f64) -> i64 {
    (x * 1e6).round() as i64
}

impl Surfaces {
    pub fn new(solid: &Solid) -> Surfaces {
        let n_tags = solid
            .prisms
            .iter()
            .map(|p| (p.tag_base + 2 + p.n_edges) as usize)
            .max()
            .unwrap_or(0);
        let mut by_tag = vec![None; n_tags];
        let mut ids: HashMap<(u8, [i64; 7]), u32> = HashMap::new();
        let mut intern = |key: (u8, [i64; 7])| {
            let n = ids.len() as u32;
            *ids.entry(key).or_insert(n)
        };
        for p in &solid.prisms {
            let f = &p.frame;
            let z = f.z;
            for (cap, w) in [(0u32, p.w0), (1, p.w1)] {
                let n = canon_dir(z);
                let d = dot(n, f.to_world(0.0, 0.0, w));
                let id = intern((0, [q(n[0]), q(n[1]), q(n[2]), q(d), 0, 0, 0]));
                by_tag[(p.tag_base + cap) as usize] = Some(Surf {
                    id,
                    kind: SurfKind::Plane { n: z },
                });
            }
            for (k, e) in p.loops.iter().flat_map(|l| l.edges.iter()).enumerate() {
                let tag = (p.tag_base + 2 + k as u32) as usize;
                let s = match *e {
                    Edge2::Line { a, b } => {
                        let n2 = e.normal_at(a);
                        let nw = add(scale(f.x, n2[0]), scale(f.y, n2[1]));
                        let n = canon_dir(nw);
                        let d = dot(n, f.to_world(a[0], a[1], 0.0));
                        let _ = b;
                        Surf {
                            id: intern((0, [q(n[0]), q(n[1]), q(n[2]), q(d), 0, 0, 0])),
                            kind: SurfKind::Plane { n: nw },
                        }
                    }
                    Edge2::Arc { c, r, .. } | Edge2::Circle { c, r } => {
                        let a = canon_dir(z);
                        let cw = f.to_world(c[0], c[1], 0.0);
                        let c0 = sub(cw, scale(a, dot(cw, a)));
                        let seam = matches!(e, Edge2::Circle { .. }).then(|| {
                            let sx = occ_auto_x(z);
                            (sx, cross(z, sx))
                        });
                        let full = seam.is_some() as i64;
                        let id = intern((
                            1,
                            [
                                q(a[0]),
                                q(a[1]),
                                q(a[2]),
                                q(c0[0]),
                                q(c0[1]),
                                q(c0[2]),
                                q(r) * 2 + full,
                            ],
                        ));
                        Surf {
                            id,
                            kind: SurfKind::Cylinder { a, c: cw, r, seam },
                        }
                    }
                };
                by_tag[tag] = Some(s);
            }
        }
        Surfaces { by_tag }
    }
}

/// The X direction OpenCascade's `gp_Ax2(P, V)` picks for a main direction `V`: where the seam of a
/// full circle (and so of its cylinder face) lies. CadQuery builds `circle()` wires with it from the
/// world normal, so a cylinder along X shows its seam on top (checked on the real images).
pub fn occ_auto_x(v: V3) -> V3 {
    let (a, b, c) = (v[0], v[1], v[2]);
    let (aa, ba, ca) = (a.abs(), b.abs(), c.abs());
    let d = if ba <= aa && ba <= ca {
        if aa > ca { [-c, 0.0, a] } else { [c, 0.0, -a] }
    } else if aa <= ba && aa <= ca {
        if ba > ca { [0.0, -c, b] } else { [0.0, c, -b] }
    } else if aa > ba {
        [-b, a, 0.0]
    } else {
        [b, -a, 0.0]
    };
    normalize(d).unwrap_or([1.0, 0.0, 0.0])
}

/// What one pixel's ray hit.
#[derive(Clone, Copy, Debug)]
struct Hit {
    /// Merged surface id; `BG` for background.
    id: u32,
    depth: f32,
    /// |n·v| in [0, 1].
    facing: f32,
    /// Angle around a full cylinder, from its seam (radians in [0, 2π)); negative if none.
    angle: f32,
    /// Surface tag of the hit (`u32::MAX` for none).
    tag: u32,
}

const BG: u32 = u32::MAX;
const UNKNOWN: u32 = u32::MAX - 1;

/// Linear-light intensity of a face at `|n·v|` = `facing` (a headlight): `A + B·facing`, then the
/// sRGB-like gamma 2.2. Fitted on the real images: axis faces in the isometric view (|n·v| = 1/√3)
/// are exactly 141, the brightest cylinder pixels (|n·v| = √(2/3)) 160, grazing ones ~90; the blue
/// channel is 0.96 of the others in linear light (141 → 138).
const SHADE_A: f64 = 0.061_38;
const SHADE_B: f64 = 0.364_08;

fn shade(facing: f64, k: f64) -> u8 {
    let lin = (SHADE_A + SHADE_B * facing.clamp(0.0, 1.0)) * k;
    (255.0 * lin.powf(1.0 / 2.2)).round().clamp(0.0, 255.0) as u8
}

/// Grey level (red and green channels) of a face at `|n·v|`.
pub fn face_grey(facing: f64) -> u8 {
    shade(facing, 1.0)
}

fn face_rgb(facing: f64) -> [u8; 3] {
    let g = face_grey(facing);
    [g, g, shade(facing, 0.96)]
}

/// Render `solid` in the given style.
pub fn render(solid: &Solid, opts: &RenderOptions) -> Result<RgbImage, RenderError> {
    let mut scratch = RayScratch::default();
    render_with(solid, opts, &mut scratch)
}

/// [`render`] with caller-owned ray buffers (reuse them across renders on one thread).
pub fn render_with(
    solid: &Solid,
    opts: &RenderOptions,
    scratch: &mut RayScratch,
) -> Result<RgbImage, RenderError> {
    if !(8..=8192).contains(&opts.size) {
        return Err(RenderError::BadSize(opts.size));
    }
    if !(opts.fit.iter().all(|f| *f > 0.0 && f.is_finite())
        && opts.zoom > 0.0
        && opts.zoom.is_finite())
    {
        return Err(RenderError::BadOption(format!(
            "fit {:?} and zoom {} must be positive",
            opts.fit, opts.zoom
        )));
    }
    if !opts.shift.iter().all(|s| s.is_finite() && s.abs() <= 1.0) {
        return Err(RenderError::BadOption(format!(
            "shift {:?} must be within ±1",
            opts.shift
        )));
    }
    if solid.is_empty() {
        return Err(RenderError::Empty);
    }
    let bb = bbox(
        solid,
        &MeasureOptions {
            pieces: 8,
            component_grid: 0,
        },
    );
    if bb.is_empty() {
        return Err(RenderError::Empty);
    }
    let surfs = Surfaces::new(solid);
    let fit = [opts.fit[0] * opts.zoom, opts.fit[1] * opts.zoom];
    match opts.style {
        Style::Gencad => {
            let cam = Camera::framing(opts.view, &bb, opts.size, opts.size, fit, opts.shift)
                .ok_or_else(|| {
                    RenderError::BadOption(format!("view direction {:?} is zero", opts.view))
                })?;
            let mut img = RgbImage::new(opts.size, opts.size, [255; 3]);
            draw_view(
                solid,
                &surfs,
                &bb,
                &cam,
                &mut img,
                (0, 0, opts.size, opts.size),
                scratch,
            );
            Ok(img)
        }
        Style::Multiview => {
            let t = opts.size / 2;
            let mut img = RgbImage::new(opts.size, opts.size, [255; 3]);
            for (k, v) in MULTIVIEW_VIEWS.iter().enumerate() {
                let (x0, y0) = ((k as u32 % 2) * t, (k as u32 / 2) * t);
                let cam =
                    Camera::framing(*v, &bb, t, t, fit, opts.shift).expect("fixed non-zero views");
                draw_view(solid, &surfs, &bb, &cam, &mut img, (x0, y0, t, t), scratch);
                // thin border around the tile
                for i in 0..t {
                    for (x, y) in [
                        (x0 + i, y0),
                        (x0 + i, y0 + t - 1),
                        (x0, y0 + i),
                        (x0 + t - 1, y0 + i),
                    ] {
                        img.put(x, y, [0; 3]);
                    }
                }
            }
            Ok(img)
        }
    }
}

/// Cast the rays of one view and draw it into the rectangle `(x0, y0, w, h)` of `img`.
fn draw_view(
    solid: &Solid,
    surfs: &Surfaces,
    bb: &Aabb,
    cam: &Camera,
    img: &mut RgbImage,
    rect: (u32, u32, u32, u32),
    scratch: &mut RayScratch,
) {
    let (x0, y0, w, h) = rect;
    let (wu, hu) = (w as usize, h as usize);
    let far = {
        let mut m = f64::NEG_INFINITY;
        for k in 0..8 {
            let p = [
                if k & 1 == 0 { bb.min[0] } else { bb.max[0] },
                if k & 2 == 0 { bb.min[1] } else { bb.max[1] },
                if k & 4 == 0 { bb.min[2] } else { bb.max[2] },
            ];
            m = m.max(dot(p, cam.dir));
        }
        m + 1.0 + 1e-3 * bb.max_extent()
    };
    // only pixels inside the projected bbox can hit anything
    let (mut px0, mut px1, mut py0, mut py1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for k in 0..8 {
        let p = [
            if k & 1 == 0 { bb.min[0] } else { bb.max[0] },
            if k & 2 == 0 { bb.min[1] } else { bb.max[1] },
            if k & 4 == 0 { bb.min[2] } else { bb.max[2] },
        ];
        let x = (dot(p, cam.right) - cam.centre[0]) * cam.ppu + 0.5 * w as f64;
        let y = -(dot(p, cam.up) - cam.centre[1]) * cam.ppu + 0.5 * h as f64;
        px0 = px0.min(x);
        px1 = px1.max(x);
        py0 = py0.min(y);
        py1 = py1.max(y);
    }
    let clampi = |v: f64, n: usize| (v.max(0.0).min(n as f64)) as usize;
    let (i0, i1) = (clampi(px0.floor() - 1.0, wu), clampi(px1.ceil() + 1.0, wu));
    let (j0, j1) = (clampi(py0.floor() - 1.0, hu), clampi(py1.ceil() + 1.0, hu));

    let sliver = 1e-9 * (1.0 + bb.max_extent());
    let bg = Hit {
        id: BG,
        depth: f32::INFINITY,
        facing: 0.0,
        angle: -1.0,
        tag: u32::MAX,
    };
    let mut hits = vec![bg; wu * hu];
    for j in j0..j1 {
        for i in i0..i1 {
            let (o, d) = cam.ray(i as f64, j as f64, w, h, far);
            let spans = solid.ray_spans(o, d, scratch);
            // skip slivers that coincident faces of a cut leave behind (length ~1e-16)
            let Some(s) = spans.iter().find(|s| s.t1 > 0.0 && s.t1 - s.t0 > sliver) else {
                continue;
            };
            let t = s.t0.max(0.0);
            let p = add(o, scale(d, t));
            let mut hit = Hit {
                id: UNKNOWN,
                depth: t as f32,
                facing: (1.0f64 / 3.0).sqrt() as f32,
                angle: -1.0,
                tag: s.f0,
            };
            if let Some(Some(sf)) = surfs.by_tag.get(s.f0 as usize) {
                hit.id = sf.id;
                let n = match sf.kind {
                    SurfKind::Plane { n } => n,
                    SurfKind::Cylinder { a, c, seam, .. } => {
                        let r = sub(p, c);
                        let r = sub(r, scale(a, dot(r, a)));
                        if let Some((sx, sy)) = seam {
                            let ang = dot(r, sy).atan2(dot(r, sx));
                            hit.angle = ang.rem_euclid(std::f64::consts::TAU) as f32;
                        }
                        normalize(r).unwrap_or(cam.dir)
                    }
                };
                hit.facing = dot(n, cam.dir).abs() as f32;
            }
            hits[j * wu + i] = hit;
        }
    }

    // Edge pixels: for each 4-neighbour pair across a surface change, mark the nearer pixel. Lines
    // are B-rep edges only: where the front surface is a cylinder and the other pixel's ray misses
    // its (infinite) cylinder, the change is the smooth contour, which OpenCascade does not draw.
    let mut line = vec![false; wu * hu];
    let contour = |front: &Hit, bi: usize, bj: usize| -> bool {
        let Some(Some(Surf {
            kind: SurfKind::Cylinder { a, c, r, .. },
            ..
        })) = surfs.by_tag.get(front.tag as usize)
        else {
            return false;
        };
        let (o, d) = cam.ray(bi as f64, bj as f64, w, h, far);
        let wv = sub(o, *c);
        let wp = sub(wv, scale(*a, dot(wv, *a)));
        let dp = sub(d, scale(*a, dot(d, *a)));
        let (dd, wd, ww) = (dot(dp, dp), dot(wp, dp), dot(wp, wp));
        wd * wd - dd * (ww - r * r) < 0.0
    };
    let boundary = |a: &Hit, b: &Hit| -> bool {
        if a.id != b.id {
            return true;
        }
        a.angle >= 0.0 && b.angle >= 0.0 && (a.angle - b.angle).abs() > std::f32::consts::PI
    };
    for j in j0.saturating_sub(1)..(j1 + 1).min(hu) {
        for i in i0.saturating_sub(1)..(i1 + 1).min(wu) {
            let a = hits[j * wu + i];
            for (ni, nj) in [(i + 1, j), (i, j + 1)] {
                if ni >= wu || nj >= hu {
                    continue;
                }
                let b = hits[nj * wu + ni];
                if (a.id == BG && b.id == BG) || !boundary(&a, &b) {
                    continue;
                }
                let seam = a.id == b.id;
                if a.depth <= b.depth {
                    if seam || !contour(&a, ni, nj) {
                        line[j * wu + i] = true;
                    }
                } else if seam || !contour(&b, i, j) {
                    line[nj * wu + ni] = true;
                }
            }
        }
    }
    thin_lines(&mut line, wu, hu);

    for j in 0..hu {
        for i in 0..wu {
            let hit = hits[j * wu + i];
            let c = if line[j * wu + i] {
                [0, 0, 0]
            } else if hit.id == BG {
                continue;
            } else {
                face_rgb(hit.facing as f64)
            };
            img.put(x0 + i as u32, y0 + j as u32, c);
        }
    }
}

/// Remove the redundant corner pixels of 4-connected staircases, so that lines are 8-connected and
/// one pixel wide like rasterised lines (only "simple" pixels with ≥ 2 line neighbours are removed, so
/// no line is broken or shortened).
fn thin_lines(line: &mut [bool], w: usize, h: usize) {
    if w < 3 || h < 3 {
        return;
    }
    // neighbour ring in order: E, NE, N, NW, W, SW, S, SE
    const RING: [(isize, isize); 8] = [
        (1, 0),
        (1, -1),
        (0, -1),
        (-1, -1),
        (-1, 0),
        (-1, 1),
        (0, 1),
        (1, 1),
    ];
    for j in 1..h - 1 {
        for i in 1..w - 1 {
            if !line[j * w + i] {
                continue;
            }
            let mut x = [false; 8];
            for (k, (di, dj)) in RING.iter().enumerate() {
                x[k] = line[(j as isize + dj) as usize * w + (i as isize + di) as usize];
            }
            let count = x.iter().filter(|&&b| b).count();
            if count < 2 {
                continue;
            }
            // only corners of staircases: two perpendicular 4-neighbours
            let (e, n, wv, s) = (x[0], x[2], x[4], x[6]);
            if !((e || wv) && (n || s)) {
                continue;
            }
            // Yokoi connectivity number for 8-connectivity: simple iff 1
            let nx: Vec<bool> = x.iter().map(|b| !b).collect();
            let mut c = 0;
            for k in [0, 2, 4, 6] {
                let (a, b, d) = (nx[k], nx[(k + 1) % 8], nx[(k + 2) % 8]);
                c += (a as i32) - (a && b && d) as i32;
            }
            if c == 1 {
                line[j * w + i] = false;
            }
        }
    }
}

/// Foreground mask of an image (pixels whose smallest channel is below `threshold`; the issue's
/// golden check uses 230).
pub fn foreground_mask(img: &RgbImage, threshold: u8) -> Vec<bool> {
    img.pixels
        .chunks_exact(3)
        .map(|p| p[0].min(p[1]).min(p[2]) < threshold)
        .collect()
}

/// The inclusive pixel box `[x0, y0, x1, y1]` of a `w`×`h` mask's set pixels (`None` when empty).
pub fn mask_bbox(mask: &[bool], w: usize, h: usize) -> Option<[usize; 4]> {
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for j in 0..h {
        for i in 0..w {
            if mask[j * w + i] {
                x0 = x0.min(i);
                x1 = x1.max(i);
                y0 = y0.min(j);
                y1 = y1.max(j);
            }
        }
    }
    (x0 != usize::MAX).then_some([x0, y0, x1, y1])
}

/// The framing normalisation of the golden check: crop a mask to its bounding box, scale it (nearest
/// neighbour) so its larger side is `side` pixels with the aspect kept, centred in `side`×`side`.
pub fn normalize_mask(mask: &[bool], w: usize, h: usize, side: usize) -> Vec<bool> {
    let mut out = vec![false; side * side];
    let Some([x0, y0, x1, y1]) = mask_bbox(mask, w, h) else {
        return out;
    };
    let (bw, bh) = ((x1 - x0 + 1) as f64, (y1 - y0 + 1) as f64);
    let s = side as f64 / bw.max(bh);
    let (ow, oh) = (bw * s, bh * s);
    let (ox, oy) = (0.5 * (side as f64 - ow), 0.5 * (side as f64 - oh));
    for j in 0..side {
        for i in 0..side {
            let (u, v) = ((i as f64 + 0.5 - ox) / s, (j as f64 + 0.5 - oy) / s);
            if u < 0.0 || v < 0.0 || u >= bw || v >= bh {
                continue;
            }
            out[j * side + i] = mask[(y0 + v as usize) * w + x0 + u as usize];
        }
    }
    out
}

/// IoU of two boolean masks of the same size (1 if both are empty).
pub fn mask_iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut i, mut u) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        i += (*x && *y) as usize;
        u += (*x || *y) as usize;
    }
    if u == 0 { 1.0 } else { i as f64 / u as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cad::{Limits, execute};

    const BOX: &str = "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude(1.0)\nsolid=solid0\n";

    #[test]
    fn cube_is_grey_hexagon_with_black_outline() {
        let s = execute(BOX, &Limits::default()).unwrap();
        let img = render(
            &s,
            &RenderOptions {
                size: 128,
                ..Default::default()
            },
        )
        .unwrap();
        let (mut grey, mut black, mut white, mut other) = (0, 0, 0, 0);
        for p in img.pixels.chunks_exact(3) {
            match (p[0], p[1], p[2]) {
                (141, 141, 138) => grey += 1,
                (0, 0, 0) => black += 1,
                (255, 255, 255) => white += 1,
                _ => other += 1,
            }
        }
        assert_eq!(other, 0, "axis-aligned faces must all be the flat grey");
        assert!(
            grey > 3000 && black > 100 && white > 5000,
            "grey {grey} black {black} white {white}"
        );
        // the centre pixel is the cube's front corner: inside the part
        assert_ne!(img.get(64, 64), [255, 255, 255]);
        // corners of the image are background
        assert_eq!(img.get(0, 0), [255, 255, 255]);
        assert_eq!(img.get(127, 127), [255, 255, 255]);
    }

    #[test]
    fn framing_fills_the_requested_share() {
        let s = execute(BOX, &Limits::default()).unwrap();
        for size in [64u32, 200] {
            let img = render(
                &s,
                &RenderOptions {
                    size,
                    ..Default::default()
                },
            )
            .unwrap();
            let m = foreground_mask(&img, 230);
            let w = size as usize;
            let rows: Vec<usize> = (0..w).filter(|&j| (0..w).any(|i| m[j * w + i])).collect();
            let ext = rows.last().unwrap() - rows.first().unwrap() + 1;
            // a cube's projected bbox (its hexagon) is taller than wide: the height limits the fit
            let want = GENCAD_FIT[1] * size as f64;
            assert!(
                (ext as f64 - want).abs() <= 2.0,
                "size {size}: extent {ext}, want {want}"
            );
        }
    }

    #[test]
    fn multiview_has_four_framed_tiles() {
        let s = execute(BOX, &Limits::default()).unwrap();
        let img = render(&s, &RenderOptions::style(Style::Multiview)).unwrap();
        assert_eq!((img.width, img.height), (256, 256));
        for (cx, cy) in [(64, 64), (192, 64), (64, 192), (192, 192)] {
            assert_ne!(
                img.get(cx, cy),
                [255, 255, 255],
                "tile centred at ({cx},{cy}) is empty"
            );
            assert_eq!(img.get(cx - 60, cy - 60), [255, 255, 255]);
        }
        assert_eq!(img.get(128, 10), [0, 0, 0], "border between the tiles");
    }

    #[test]
    fn bad_options_are_errors() {
        let s = execute(BOX, &Limits::default()).unwrap();
        assert_eq!(
            render(
                &s,
                &RenderOptions {
                    size: 2,
                    ..Default::default()
                }
            ),
            Err(RenderError::BadSize(2))
        );
        assert!(matches!(
            render(
                &s,
                &RenderOptions {
                    zoom: 0.0,
                    ..Default::default()
                }
            ),
            Err(RenderError::BadOption(_))
        ));
        assert!(matches!(
            render(
                &s,
                &RenderOptions {
                    view: [0.0; 3],
                    ..Default::default()
                }
            ),
            Err(RenderError::BadOption(_))
        ));
    }

    #[test]
    fn shading_matches_the_real_greys() {
        assert_eq!(face_rgb(1.0 / 3f64.sqrt()), [141, 141, 138]);
        assert_eq!(face_grey((2.0f64 / 3.0).sqrt()), 160);
        assert!((88..=93).contains(&face_grey(0.115)));
    }

    #[test]
    fn occ_seam_directions() {
        // Z normal: seam along +X; X normal (GenCAD's YZ plane): seam on top (+Z)
        assert_eq!(occ_auto_x([0.0, 0.0, 1.0]), [1.0, 0.0, 0.0]);
        let x = occ_auto_x([1.0, 0.0, 6.123233995736766e-17]);
        assert!((x[2] - 1.0).abs() < 1e-12 && x[0].abs() < 1e-12, "{x:?}");
        for v in [[0.3, -0.8, 0.5], [1.0, 2.0, 3.0], [-1.0, 0.0, 0.0]] {
            let n = normalize(v).unwrap();
            assert!(dot(occ_auto_x(n), n).abs() < 1e-12);
        }
    }

    #[test]
    fn thinning_makes_staircases_8_connected() {
        // a 4-connected staircase: (0,0),(1,0),(1,1),(2,1),(2,2)... in a 6×6 grid
        let (w, h) = (6, 6);
        let mut line = vec![false; w * h];
        for k in 0..4 {
            line[k * w + k + 1] = true;
            line[(k + 1) * w + k + 1] = true;
        }
        let before = line.iter().filter(|&&b| b).count();
        thin_lines(&mut line, w, h);
        let after = line.iter().filter(|&&b| b).count();
        assert!(after < before && after >= 4, "{before} -> {after}");
    }

    #[test]
    fn mask_normalisation_is_scale_invariant() {
        let mut a = vec![false; 100 * 100];
        let mut b = vec![false; 50 * 50];
        for j in 10..30 {
            for i in 20..60 {
                a[j * 100 + i] = true;
            }
        }
        for j in 5..15 {
            for i in 3..23 {
                b[j * 50 + i] = true;
            }
        }
        let na = normalize_mask(&a, 100, 100, 224);
        let nb = normalize_mask(&b, 50, 50, 224);
        assert!(mask_iou(&na, &nb) > 0.98);
        assert!(mask_iou(&na, &vec![false; 224 * 224]) < 0.01);
    }
}
