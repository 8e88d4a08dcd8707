//! Image/program samples for training and evaluation: an `index.jsonl` folder (`ID.png` + `ID.py`,
//! the layout of `../shared/data/gencad-test100-dev`) or GenCAD-Code parquet shards, images decoded
//! to RGB8 (optionally downscaled as they are read).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::GENCAD_PROMPT;

/// A sample folder that cannot be read: the path and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct SampleError {
    pub path: String,
    pub msg: String,
}

fn derr(path: &Path, msg: impl std::fmt::Display) -> SampleError {
    SampleError {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// One image with its ground-truth program.
#[derive(Clone, Debug)]
pub struct Sample {
    pub id: String,
    pub prompt: String,
    pub program: String,
    /// RGB8, row-major.
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

/// Decode a PNG (or any format `image` reads) into RGB8.
pub fn decode_image(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize), String> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| format!("cannot decode image: {e}"))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((img.into_raw(), w, h))
}

/// [`decode_image`], then downscaled to `size×size` when given.
pub fn decode_image_at(
    bytes: &[u8],
    size: Option<usize>,
) -> Result<(Vec<u8>, usize, usize), String> {
    let (rgb, w, h) = decode_image(bytes)?;
    Ok(match size {
        Some(s) => (super::images::resize_rgb_u8(&rgb, w, h, s), s, s),
        None => (rgb, w, h),
    })
}

#[derive(Deserialize)]
struct IndexLine {
    deepcad_id: String,
    image: String,
    cadquery: String,
    #[serde(default)]
    prompt: Option<String>,
}

/// Load samples from `dir`: `index.jsonl` (+ image and program files) or `*.parquet` files in the
/// GenCAD-Code schema (searched recursively). At most `limit` samples, in file order.
pub fn load_samples(dir: &Path, limit: Option<usize>) -> Result<Vec<Sample>, SampleError> {
    load_samples_at(dir, limit, None)
}

/// [`load_samples`], each image downscaled to `resize×resize` as it is read (keeps big sets small in memory).
pub fn load_samples_at(
    dir: &Path,
    limit: Option<usize>,
    resize: Option<usize>,
) -> Result<Vec<Sample>, SampleError> {
    let limit = limit.unwrap_or(usize::MAX);
    let index = dir.join("index.jsonl");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| derr(&index, e))?;
        let mut out = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            if out.len() >= limit {
                break;
            }
            let l: IndexLine = serde_json::from_str(line)
                .map_err(|e| derr(&index, format!("line {}: {e}", i + 1)))?;
            let img_path = dir.join(&l.image);
            let bytes = std::fs::read(&img_path).map_err(|e| derr(&img_path, e))?;
            let (rgb, width, height) =
                decode_image_at(&bytes, resize).map_err(|e| derr(&img_path, e))?;
            let py = dir.join(&l.cadquery);
            let program = std::fs::read_to_string(&py).map_err(|e| derr(&py, e))?;
            out.push(Sample {
                id: l.deepcad_id,
                prompt: l.prompt.unwrap_or_else(|| GENCAD_PROMPT.to_string()),
                program,
                rgb,
                width,
                height,
            });
        }
        return Ok(out);
    }
    let files = parquet_files(dir).map_err(|e| derr(dir, e))?;
    if files.is_empty() {
        return Err(derr(
            dir,
            "neither index.jsonl nor any .parquet file here; give a folder like gencad-test100-dev or a shard folder",
        ));
    }
    let mut out = Vec::new();
    for f in files {
        if out.len() >= limit {
            break;
        }
        read_parquet_samples(&f, limit - out.len(), resize, &mut out)?;
    }
    Ok(out)
}

fn parquet_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Read GenCAD-Code parquet rows (`data::shards`), images decoded (and downscaled to `resize`).
pub fn read_parquet_samples(
    path: &Path,
    limit: usize,
    resize: Option<usize>,
    out: &mut Vec<Sample>,
) -> Result<(), SampleError> {
    let rows = crate::data::shards::read_shard(path).map_err(|e| derr(path, e))?;
    for r in rows.into_iter().take(limit) {
        let (rgb, width, height) = decode_image_at(&r.image_png, resize)
            .map_err(|e| derr(path, format!("{}: {e}", r.id)))?;
        out.push(Sample {
            id: r.id,
            prompt: r.prompt,
            program: r.code,
            rgb,
            width,
            height,
        });
    }
    Ok(())
}
