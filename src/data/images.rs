//! PNG encoding/decoding of renders, parallel batch rendering (synthetic programs as training samples,
//! with framing jitter), and the golden comparison of our renders against real GenCAD-Code images
//! (framing-normalised foreground-mask IoU, face grey).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::synth::{Rng, SynthConfig, SynthError, SynthProgram, fxhash, generate};
use crate::cad::{self, Limits};
use crate::geom::csg::RayScratch;
use crate::geom::render::{
    self, RenderOptions, RgbImage, foreground_mask, mask_iou, normalize_mask, render_with,
};

/// Errors of the image helpers.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: not a decodable PNG: {msg}")]
    Decode { what: String, msg: String },
    #[error("PNG encoding failed: {0}")]
    Encode(String),
    #[error("{path}: the program does not execute: {msg}")]
    Program { path: PathBuf, msg: String },
    #[error("{path}: cannot render: {source}")]
    Render {
        path: PathBuf,
        source: render::RenderError,
    },
    #[error("{0}: no `ID.png` + `ID.py` pairs found")]
    NoPairs(PathBuf),
}

/// Encode an RGB image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, ImageError> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            &img.pixels,
            img.width,
            img.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| ImageError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decode PNG bytes to RGB (alpha is dropped, grey expanded). `what` names the source in errors.
pub fn decode_png(bytes: &[u8], what: &str) -> Result<RgbImage, ImageError> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .map_err(|e| ImageError::Decode {
            what: what.to_string(),
            msg: e.to_string(),
        })?
        .to_rgb8();
    Ok(RgbImage {
        width: img.width(),
        height: img.height(),
        pixels: img.into_raw(),
    })
}

/// Read and decode a PNG file.
pub fn read_png(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode_png(&bytes, &path.display().to_string())
}

/// Execute a program and render it. `path` only names the program in errors.
pub fn render_program(
    src: &str,
    path: &Path,
    opts: &RenderOptions,
    scratch: &mut RayScratch,
) -> Result<RgbImage, ImageError> {
    let solid = cad::execute(src, &Limits::default()).map_err(|e| ImageError::Program {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    render_with(&solid, opts, scratch).map_err(|source| ImageError::Render {
        path: path.to_path_buf(),
        source,
    })
}

/// Render many programs in parallel (all cores); one result per program, in order.
pub fn render_batch(
    programs: &[String],
    opts: &RenderOptions,
) -> Vec<Result<RgbImage, ImageError>> {
    programs
        .par_iter()
        .enumerate()
        .map_init(RayScratch::default, |scratch, (i, src)| {
            render_program(src, Path::new(&format!("program #{i}")), opts, scratch)
        })
        .collect()
}

/// Place images side by side (tops aligned, white gaps of `gap` pixels).
pub fn side_by_side(images: &[&RgbImage], gap: u32) -> RgbImage {
    let w =
        images.iter().map(|i| i.width).sum::<u32>() + gap * images.len().saturating_sub(1) as u32;
    let h = images.iter().map(|i| i.height).max().unwrap_or(0);
    let mut out = RgbImage::new(w.max(1), h.max(1), [255; 3]);
    let mut x0 = 0;
    for img in images {
        for y in 0..img.height {
            for x in 0..img.width {
                out.put(x0 + x, y, img.get(x, y));
            }
        }
        x0 += img.width + gap;
    }
    out
}

/// Stack images vertically (left aligned, white gaps).
pub fn stack(images: &[RgbImage], gap: u32) -> RgbImage {
    let w = images.iter().map(|i| i.width).max().unwrap_or(0);
    let h =
        images.iter().map(|i| i.height).sum::<u32>() + gap * images.len().saturating_sub(1) as u32;
    let mut out = RgbImage::new(w.max(1), h.max(1), [255; 3]);
    let mut y0 = 0;
    for img in images {
        for y in 0..img.height {
            for x in 0..img.width {
                out.put(x, y0 + y, img.get(x, y));
            }
        }
        y0 += img.height + gap;
    }
    out
}

/// One real-vs-ours comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GoldenRow {
    pub id: String,
    /// Foreground-mask IoU after the framing normalisation (crop to bbox, larger side 224, centred).
    pub mask_iou: f64,
    /// Larger side of the foreground bbox in pixels: real, ours.
    pub extent_real: usize,
    pub extent_ours: usize,
    /// Most common non-white, non-black grey in our render and in the real image.
    pub grey_ours: Option<u8>,
    pub grey_real: Option<u8>,
    /// Share of foreground pixels that are black lines: real, ours.
    pub line_share_real: f64,
    pub line_share_ours: f64,
    /// Foreground-mask IoU with no normalisation (same framing rule on both sides).
    pub raw_mask_iou: f64,
    /// Centre of our foreground bbox minus the real one, pixels (x right, y down).
    pub centre_offset: [f64; 2],
    /// Mean |grey difference| over pixels that are face (not line, not background) in both images.
    pub face_grey_mae: f64,
}

/// Foreground threshold of the golden check (smallest channel below it).
pub const FG_THRESHOLD: u8 = 230;
/// Side of the normalised masks.
pub const NORM_SIDE: usize = 224;

fn mode_grey(img: &RgbImage) -> Option<u8> {
    let mut hist = [0usize; 256];
    for p in img.pixels.chunks_exact(3) {
        if p[0] == p[1] && p[0] > 20 && p[0] < 250 {
            hist[p[0] as usize] += 1;
        }
    }
    let (g, n) = hist.iter().enumerate().max_by_key(|(_, n)| **n)?;
    (*n > 0).then_some(g as u8)
}

fn extent(mask: &[bool], w: usize, h: usize) -> usize {
    render::mask_bbox(mask, w, h).map_or(0, |[x0, y0, x1, y1]| (x1 - x0 + 1).max(y1 - y0 + 1))
}

fn bbox_centre(mask: &[bool], w: usize, h: usize) -> [f64; 2] {
    render::mask_bbox(mask, w, h).map_or([0.0, 0.0], |[x0, y0, x1, y1]| {
        [0.5 * (x0 + x1) as f64, 0.5 * (y0 + y1) as f64]
    })
}

fn line_share(img: &RgbImage, mask: &[bool]) -> f64 {
    let fg = mask.iter().filter(|&&b| b).count().max(1);
    let black = img
        .pixels
        .chunks_exact(3)
        .filter(|p| p[0] < 40 && p[1] < 40 && p[2] < 40)
        .count();
    black as f64 / fg as f64
}

/// Compare one real image with our render of the same part.
pub fn compare(id: &str, real: &RgbImage, ours: &RgbImage) -> GoldenRow {
    let mr = foreground_mask(real, FG_THRESHOLD);
    let mo = foreground_mask(ours, FG_THRESHOLD);
    let (rw, rh) = (real.width as usize, real.height as usize);
    let (ow, oh) = (ours.width as usize, ours.height as usize);
    let nr = normalize_mask(&mr, rw, rh, NORM_SIDE);
    let no = normalize_mask(&mo, ow, oh, NORM_SIDE);
    let (cr, co) = (bbox_centre(&mr, rw, rh), bbox_centre(&mo, ow, oh));
    let (mut diff, mut nface) = (0.0, 0usize);
    if (rw, rh) == (ow, oh) {
        for (a, b) in real.pixels.chunks_exact(3).zip(ours.pixels.chunks_exact(3)) {
            let face = |p: &[u8]| p[0] > 40 && p[0] < 250;
            if face(a) && face(b) {
                diff += (a[0] as f64 - b[0] as f64).abs();
                nface += 1;
            }
        }
    }
    GoldenRow {
        id: id.to_string(),
        raw_mask_iou: if (rw, rh) == (ow, oh) {
            mask_iou(&mr, &mo)
        } else {
            0.0
        },
        centre_offset: [co[0] - cr[0], co[1] - cr[1]],
        face_grey_mae: diff / nface.max(1) as f64,
        mask_iou: mask_iou(&nr, &no),
        extent_real: extent(&mr, rw, rh),
        extent_ours: extent(&mo, ow, oh),
        grey_ours: mode_grey(ours),
        grey_real: mode_grey(real),
        line_share_real: line_share(real, &mr),
        line_share_ours: line_share(ours, &mo),
    }
}

/// `ID.png` + `ID.py` pairs in a directory, sorted by id.
pub fn golden_pairs(dir: &Path) -> Result<Vec<(String, PathBuf, PathBuf)>, ImageError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ImageError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|s| s.to_str()) == Some("png") {
            let py = p.with_extension("py");
            if py.exists() {
                let id = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("")
                    .to_string();
                out.push((id, p, py));
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(ImageError::NoPairs(dir.to_path_buf()));
    }
    Ok(out)
}

/// Render every pair's program (at the real image's size) and compare; rows in id order, plus our
/// renders. A program that fails to execute or render is an error row (`Err`).
pub fn golden(
    dir: &Path,
    opts: &RenderOptions,
) -> Result<Vec<(Result<GoldenRow, ImageError>, Option<(RgbImage, RgbImage)>)>, ImageError> {
    let pairs = golden_pairs(dir)?;
    Ok(pairs
        .par_iter()
        .map_init(RayScratch::default, |scratch, (id, png, py)| {
            let mut run = || -> Result<(GoldenRow, RgbImage, RgbImage), ImageError> {
                let real = read_png(png)?;
                let src = std::fs::read_to_string(py).map_err(|source| ImageError::Read {
                    path: py.clone(),
                    source,
                })?;
                let o = RenderOptions {
                    size: real.width.min(real.height),
                    ..opts.clone()
                };
                let ours = render_program(&src, py, &o, scratch)?;
                Ok((compare(id, &real, &ours), real, ours))
            };
            match run() {
                Ok((row, real, ours)) => (Ok(row), Some((real, ours))),
                Err(e) => (Err(e), None),
            }
        })
        .collect())
}

/// Resize to `s×s` RGB bytes (box average), e.g. to keep training images at model resolution.
pub fn resize_rgb_u8(rgb: &[u8], w: usize, h: usize, s: usize) -> Vec<u8> {
    if w == s && h == s {
        return rgb.to_vec();
    }
    resize_rgb(rgb, w, h, s)
        .iter()
        .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// Resize to `s×s` RGB floats in [0, 1]: each output pixel averages the source box it covers.
pub fn resize_rgb(rgb: &[u8], w: usize, h: usize, s: usize) -> Vec<f32> {
    if w == s && h == s {
        return rgb.iter().map(|&v| v as f32 / 255.0).collect();
    }
    let mut out = vec![0f32; s * s * 3];
    for oy in 0..s {
        let y0 = oy as f64 * h as f64 / s as f64;
        let y1 = (oy + 1) as f64 * h as f64 / s as f64;
        for ox in 0..s {
            let x0 = ox as f64 * w as f64 / s as f64;
            let x1 = (ox + 1) as f64 * w as f64 / s as f64;
            let mut acc = [0f64; 3];
            let mut wsum = 0.0;
            let mut y = y0.floor() as usize;
            while (y as f64) < y1 && y < h {
                let wy = (y1.min(y as f64 + 1.0) - y0.max(y as f64)).max(0.0);
                let mut x = x0.floor() as usize;
                while (x as f64) < x1 && x < w {
                    let wx = (x1.min(x as f64 + 1.0) - x0.max(x as f64)).max(0.0);
                    let wgt = wx * wy;
                    for ch in 0..3 {
                        acc[ch] += wgt * rgb[(y * w + x) * 3 + ch] as f64;
                    }
                    wsum += wgt;
                    x += 1;
                }
                y += 1;
            }
            for ch in 0..3 {
                out[(oy * s + ox) * 3 + ch] = (acc[ch] / wsum.max(1e-12) / 255.0) as f32;
            }
        }
    }
    out
}

/// A synthetic program rendered as a training sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub id: String,
    pub program: String,
    pub image_png: Vec<u8>,
}

/// Framing jitter for training renders: the fitted size is scaled by a factor drawn from `zoom`
/// and the part shifted by up to ±`shift` of the side (deterministic per sample id).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jitter {
    pub zoom: [f64; 2],
    pub shift: f64,
}

impl Default for Jitter {
    /// Zoom 0.9–1.05 and shift ±2.5 %: the real framing (400×300 box in 448) then never clips.
    fn default() -> Self {
        Jitter {
            zoom: [0.9, 1.05],
            shift: 0.025,
        }
    }
}

impl Jitter {
    pub const NONE: Jitter = Jitter {
        zoom: [1.0, 1.0],
        shift: 0.0,
    };
    /// The render options for the sample `id`.
    pub fn apply(&self, base: &RenderOptions, id: &str) -> RenderOptions {
        let mut rng = Rng::new(fxhash(id), 0x4a17);
        let zoom = self.zoom[0] + (self.zoom[1] - self.zoom[0]) * rng.f();
        let shift = [
            self.shift * (2.0 * rng.f() - 1.0),
            self.shift * (2.0 * rng.f() - 1.0),
        ];
        RenderOptions {
            zoom: base.zoom * zoom,
            shift,
            ..base.clone()
        }
    }
}

/// Render programs to PNG samples in parallel (all cores), in order.
pub fn render_samples(
    programs: &[SynthProgram],
    opts: &RenderOptions,
    jitter: Jitter,
) -> Result<Vec<Rendered>, SynthError> {
    programs
        .par_iter()
        .map_init(RayScratch::default, |scratch, p| {
            render_sample(p, opts, jitter, scratch)
        })
        .collect()
}

/// Render one program to a PNG sample.
pub fn render_sample(
    p: &SynthProgram,
    opts: &RenderOptions,
    jitter: Jitter,
    scratch: &mut RayScratch,
) -> Result<Rendered, SynthError> {
    let err = |msg: String| SynthError::Render {
        id: p.id.clone(),
        msg,
    };
    let solid = cad::execute(&p.code, &Limits::default()).map_err(|e| err(e.to_string()))?;
    let o = jitter.apply(opts, &p.id);
    let img = render_with(&solid, &o, scratch).map_err(|e| err(e.to_string()))?;
    let png = encode_png(&img).map_err(|e| err(e.to_string()))?;
    Ok(Rendered {
        id: p.id.clone(),
        program: p.code.clone(),
        image_png: png,
    })
}

/// Generate and render `count` samples (see [`generate`] and [`render_samples`]).
pub fn synth_samples(
    cfg: &SynthConfig,
    seed: u64,
    count: usize,
    opts: &RenderOptions,
    jitter: Jitter,
) -> Result<Vec<Rendered>, SynthError> {
    let progs = generate(cfg, seed, count)?;
    render_samples(&progs, opts, jitter)
}
