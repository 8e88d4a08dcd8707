//! The Hugging Face Qwen2-VL image processor and chat template, bit for bit: `smart_resize` (both sides
//! multiples of `patch·merge`, pixel count within `[min_pixels, max_pixels]`, Python's round-half-even),
//! Pillow's bicubic resampling of 8-bit images (fixed-point; the pass order of Pillow ≤ 12 or of 13, see
//! [`PillowResize`]), rescale by
//! 1/255, OpenAI-CLIP mean/std, and the patch flattening order (merge blocks, then `C, T, P, P`).

use std::path::Path;

use super::QwenError;

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's constants as `transformers` writes them (rounded to f32 here).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// The processor's defaults (`shortest_edge`, `longest_edge`).
pub const MIN_PIXELS: usize = 56 * 56;
pub const MAX_PIXELS: usize = 28 * 28 * 1280;

/// The image processor's settings (`preprocessor_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Whose resampling to reproduce (not in the file: it depends on the Pillow installed next to
    /// `transformers`).
    pub pillow: PillowResize,
}

impl Default for PreprocessConfig {
    /// `Qwen2VLImageProcessor`'s class defaults.
    fn default() -> Self {
        PreprocessConfig {
            min_pixels: MIN_PIXELS,
            max_pixels: MAX_PIXELS,
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            pillow: PillowResize::UpTo12,
        }
    }
}

impl PreprocessConfig {
    /// Parse a `preprocessor_config.json`: `size.{shortest,longest}_edge` (transformers 5) with
    /// `min_pixels` / `max_pixels` (Hub files) taking precedence, as the processor's constructor does.
    pub fn from_json(text: &str) -> Result<Self, QwenError> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| QwenError::Config(format!("preprocessor config: {e}")))?;
        let mut c = PreprocessConfig::default();
        let num = |x: Option<&serde_json::Value>| x.and_then(|x| x.as_u64()).map(|x| x as usize);
        if let Some(n) = num(v.pointer("/size/shortest_edge")) {
            c.min_pixels = n;
        }
        if let Some(n) = num(v.pointer("/size/longest_edge")) {
            c.max_pixels = n;
        }
        if let Some(n) = num(v.get("min_pixels")) {
            c.min_pixels = n;
        }
        if let Some(n) = num(v.get("max_pixels")) {
            c.max_pixels = n;
        }
        for (k, f) in [
            ("patch_size", &mut c.patch_size),
            ("merge_size", &mut c.merge_size),
            ("temporal_patch_size", &mut c.temporal_patch_size),
        ] {
            if let Some(n) = num(v.get(k)) {
                *f = n;
            }
        }
        let triple = |k: &str| -> Result<Option<[f32; 3]>, QwenError> {
            match v.get(k).and_then(|a| a.as_array()) {
                None => Ok(None),
                Some(a) if a.len() == 3 && a.iter().all(|x| x.is_number()) => {
                    Ok(Some([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(0.0) as f32)))
                }
                Some(_) => Err(QwenError::Config(format!(
                    "preprocessor config: {k} must be 3 numbers"
                ))),
            }
        };
        if let Some(m) = triple("image_mean")? {
            c.image_mean = m;
        }
        if let Some(s) = triple("image_std")? {
            c.image_std = s;
        }
        if c.patch_size == 0
            || c.merge_size == 0
            || c.temporal_patch_size == 0
            || c.image_std.contains(&0.0)
            || c.min_pixels > c.max_pixels
        {
            return Err(QwenError::Config(format!(
                "preprocessor config: invalid settings {c:?}"
            )));
        }
        Ok(c)
    }

    /// `dir/preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, QwenError> {
        let p = dir.join("preprocessor_config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| QwenError::Io {
            path: p.display().to_string(),
            msg: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|e| QwenError::Io {
            path: p.display().to_string(),
            msg: e.to_string(),
        })
    }

    /// `pixel_values` and `image_grid_thw` of one image with these settings.
    pub fn preprocess(&self, img: &ImageInput) -> Result<(Vec<f32>, [usize; 3]), QwenError> {
        preprocess_normalized(img, self)
    }
}

/// An 8-bit RGB image, row-major `[height, width, 3]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInput {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl ImageInput {
    /// Decode a PNG (or any format the `image` crate was built with) to RGB.
    pub fn open(path: &Path) -> Result<Self, QwenError> {
        let img = image::open(path)
            .map_err(|e| QwenError::Io {
                path: path.display().to_string(),
                msg: e.to_string(),
            })?
            .to_rgb8();
        Ok(ImageInput {
            width: img.width() as usize,
            height: img.height() as usize,
            rgb: img.into_raw(),
        })
    }
}

/// `smart_resize(height, width, factor, min_pixels, max_pixels)` → `(height', width')`.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), QwenError> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(QwenError::Input(format!(
            "cannot resize a {height}×{width} image with factor {factor}"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(QwenError::Input(format!(
            "absolute aspect ratio must be smaller than 200, got {}",
            h.max(w) / h.min(w)
        )));
    }
    let mut hb = (h / f).round_ties_even() * f;
    let mut wb = (w / f).round_ties_even() * f;
    if hb * wb > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output index, the first input index and
/// the fixed-point weights.
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C truncation
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|v| *v /= ww);
            }
            let one = (1u64 << PRECISION_BITS) as f64;
            let ki = k
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            (xmin, ki)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Which Pillow's pass order to reproduce: the two 8-bit passes round in between, so the order shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PillowResize {
    /// Pillow ≤ 12: horizontal pass, then vertical.
    #[default]
    UpTo12,
    /// Pillow 13 (python-pillow/Pillow#9549): vertical first when the height loses more than twice as many
    /// pixels as the width (found by comparing against Pillow 13.0.0 on 170 random size pairs).
    From13,
}

impl PillowResize {
    fn vertical_first(self, in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> bool {
        self == PillowResize::From13
            && in_h > out_h
            && (in_h - out_h) as i64 > 2 * (in_w as i64 - out_w as i64)
    }
}

/// One 8-bit pass along x of a `[h, w, 3]` buffer to width `out_w`.
fn pass_x(src: &[u8], h: usize, w: usize, out_w: usize) -> Vec<u8> {
    let k = coeffs(w, out_w);
    let mut out = vec![0u8; h * out_w * 3];
    for y in 0..h {
        for (xx, (xmin, ks)) in k.iter().enumerate() {
            for c in 0..3 {
                let mut s: i64 = 1 << (PRECISION_BITS - 1);
                for (j, &kv) in ks.iter().enumerate() {
                    s += src[(y * w + xmin + j) * 3 + c] as i64 * kv as i64;
                }
                out[(y * out_w + xx) * 3 + c] = clip8(s);
            }
        }
    }
    out
}

/// One 8-bit pass along y of a `[h, w, 3]` buffer to height `out_h`.
fn pass_y(src: &[u8], h: usize, w: usize, out_h: usize) -> Vec<u8> {
    let k = coeffs(h, out_h);
    let mut out = vec![0u8; out_h * w * 3];
    for (yy, (ymin, ks)) in k.iter().enumerate() {
        for x in 0..w {
            for c in 0..3 {
                let mut s: i64 = 1 << (PRECISION_BITS - 1);
                for (j, &kv) in ks.iter().enumerate() {
                    s += src[((ymin + j) * w + x) * 3 + c] as i64 * kv as i64;
                }
                out[(yy * w + x) * 3 + c] = clip8(s);
            }
        }
    }
    out
}

/// `PIL.Image.resize((w, h), BICUBIC)` of an 8-bit RGB image, as Pillow ≤ 12 computes it.
pub fn resize_bicubic(img: &ImageInput, out_h: usize, out_w: usize) -> ImageInput {
    resize_bicubic_as(img, out_h, out_w, PillowResize::UpTo12)
}

/// `PIL.Image.resize((w, h), BICUBIC)` in the pass order of `pillow`.
pub fn resize_bicubic_as(
    img: &ImageInput,
    out_h: usize,
    out_w: usize,
    pillow: PillowResize,
) -> ImageInput {
    let (ih, iw) = (img.height, img.width);
    let mut cur = img.rgb.clone();
    if pillow.vertical_first(ih, iw, out_h, out_w) {
        if out_h != ih {
            cur = pass_y(&cur, ih, iw, out_h);
        }
        if out_w != iw {
            cur = pass_x(&cur, out_h, iw, out_w);
        }
    } else {
        if out_w != iw {
            cur = pass_x(&cur, ih, iw, out_w);
        }
        if out_h != ih {
            cur = pass_y(&cur, ih, out_w, out_h);
        }
    }
    ImageInput {
        width: out_w,
        height: out_h,
        rgb: cur,
    }
}

/// `pixel_values` (row-major `[n_patches, 3·T·P·P]`) and `image_grid_thw` of one image, as
/// `Qwen2VLImageProcessor` with default sizes computes them.
pub fn preprocess_image(
    img: &ImageInput,
    patch: usize,
    merge: usize,
    temporal: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(Vec<f32>, [usize; 3]), QwenError> {
    let c = PreprocessConfig {
        min_pixels,
        max_pixels,
        patch_size: patch,
        merge_size: merge,
        temporal_patch_size: temporal,
        ..PreprocessConfig::default()
    };
    preprocess_normalized(img, &c)
}

fn preprocess_normalized(
    img: &ImageInput,
    c: &PreprocessConfig,
) -> Result<(Vec<f32>, [usize; 3]), QwenError> {
    let (patch, merge, temporal) = (c.patch_size, c.merge_size, c.temporal_patch_size);
    if patch == 0 || merge == 0 || temporal == 0 {
        return Err(QwenError::Input(
            "patch, merge and temporal sizes must be positive".into(),
        ));
    }
    if img.rgb.len() != img.width * img.height * 3 {
        return Err(QwenError::Input(format!(
            "{}×{} RGB image has {} bytes",
            img.width,
            img.height,
            img.rgb.len()
        )));
    }
    let (h, w) = smart_resize(
        img.height,
        img.width,
        patch * merge,
        c.min_pixels,
        c.max_pixels,
    )?;
    let r = if (h, w) == (img.height, img.width) {
        img.clone()
    } else {
        resize_bicubic_as(img, h, w, c.pillow)
    };
    // rescale (in f64, then f32) and normalize (f32), channel-first
    let (mean, std) = (c.image_mean, c.image_std);
    let norm = |y: usize, x: usize, c: usize| -> f32 {
        let v = (r.rgb[(y * w + x) * 3 + c] as f64 * (1.0 / 255.0)) as f32;
        (v - mean[c]) / std[c]
    };
    let (gh, gw) = (h / patch, w / patch);
    let dim = 3 * temporal * patch * patch;
    let mut out = Vec::with_capacity(gh * gw * dim);
    for by in 0..gh / merge {
        for bx in 0..gw / merge {
            for iy in 0..merge {
                for ix in 0..merge {
                    for c in 0..3 {
                        for _t in 0..temporal {
                            for py in 0..patch {
                                for px in 0..patch {
                                    out.push(norm(
                                        (by * merge + iy) * patch + py,
                                        (bx * merge + ix) * patch + px,
                                        c,
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((out, [1, gh, gw]))
}

/// The chat template's text for one user turn of an image then `prompt`, with the default system
/// message and the generation prompt; `<|image_pad|>` repeated `n_image_tokens` times (1 → the template's
/// own rendering, before the processor expands it).
pub fn chat_prompt(prompt: &str, n_image_tokens: usize) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>{}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n",
        "<|image_pad|>".repeat(n_image_tokens)
    )
}

/// `tokenizer.json` of a model directory.
pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer, QwenError> {
    let p = dir.join("tokenizer.json");
    if !p.is_file() {
        return Err(QwenError::Io {
            path: p.display().to_string(),
            msg: "missing tokenizer.json".into(),
        });
    }
    tokenizers::Tokenizer::from_file(&p)
        .map_err(|e| QwenError::Tokenizer(format!("{}: {e}", p.display())))
}

/// Token ids of `text` (special tokens in the text are matched, none are added).
pub fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>, QwenError> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| QwenError::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec())
}
