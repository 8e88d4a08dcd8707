//! Evaluation: load image/program samples (an `index.jsonl` folder or a GenCAD-Code parquet folder),
//! generate programs, execute them, and score VSR and IoU (`raw`, `unitcube`, `best`) against the targets.
//!
//! [`score_program`] is the one place that executes model output; it uses the native executor now and
//! can be switched to the wasm sandbox without touching callers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::cad::{self, Limits};
use crate::geom::{self, Normalize};
use crate::model::VlmConfig;
use crate::model::generate::{GenerateConfig, generate};
use crate::model::vision::image_to_patches;
use crate::model::vlm::{Vlm, repeat_rows};
use crate::tokenizer::CodeTokenizer;

/// The GenCAD-Code prompt.
pub const GENCAD_PROMPT: &str = "Generate the CADQuery code needed to create the CAD for the provided image. Just the code, no other words.";

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {msg}")]
    Data { path: String, msg: String },
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

fn derr(path: &Path, msg: impl std::fmt::Display) -> EvalError {
    EvalError::Data { path: path.display().to_string(), msg: msg.to_string() }
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
    let img = image::load_from_memory(bytes).map_err(|e| format!("cannot decode image: {e}"))?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((img.into_raw(), w, h))
}

/// [`decode_image`], then downscaled to `size×size` when given.
pub fn decode_image_at(bytes: &[u8], size: Option<usize>) -> Result<(Vec<u8>, usize, usize), String> {
    let (rgb, w, h) = decode_image(bytes)?;
    Ok(match size {
        Some(s) => (crate::model::vision::resize_rgb_u8(&rgb, w, h, s), s, s),
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
pub fn load_samples(dir: &Path, limit: Option<usize>) -> Result<Vec<Sample>, EvalError> {
    load_samples_at(dir, limit, None)
}

/// [`load_samples`], each image downscaled to `resize×resize` as it is read (keeps big sets small in memory).
pub fn load_samples_at(dir: &Path, limit: Option<usize>, resize: Option<usize>) -> Result<Vec<Sample>, EvalError> {
    let limit = limit.unwrap_or(usize::MAX);
    let index = dir.join("index.jsonl");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| derr(&index, e))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            if out.len() >= limit {
                break;
            }
            let l: IndexLine = serde_json::from_str(line).map_err(|e| derr(&index, format!("line {}: {e}", i + 1)))?;
            let img_path = dir.join(&l.image);
            let bytes = std::fs::read(&img_path).map_err(|e| derr(&img_path, e))?;
            let (rgb, width, height) = decode_image_at(&bytes, resize).map_err(|e| derr(&img_path, e))?;
            let py = dir.join(&l.cadquery);
            let program = std::fs::read_to_string(&py).map_err(|e| derr(&py, e))?;
            out.push(Sample { id: l.deepcad_id, prompt: l.prompt.unwrap_or_else(|| GENCAD_PROMPT.to_string()), program, rgb, width, height });
        }
        return Ok(out);
    }
    let files = parquet_files(dir).map_err(|e| derr(dir, e))?;
    if files.is_empty() {
        return Err(derr(dir, "neither index.jsonl nor any .parquet file here; give a folder like gencad-test100-dev or a shard folder"));
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
pub fn read_parquet_samples(path: &Path, limit: usize, resize: Option<usize>, out: &mut Vec<Sample>) -> Result<(), EvalError> {
    let rows = crate::data::shards::read_shard(path).map_err(|e| derr(path, e))?;
    for r in rows.into_iter().take(limit) {
        let (rgb, width, height) = decode_image_at(&r.image_png, resize).map_err(|e| derr(path, format!("{}: {e}", r.id)))?;
        out.push(Sample { id: r.id, prompt: r.prompt, program: r.code, rgb, width, height });
    }
    Ok(())
}

/// Execution + IoU of one generated program against its target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Scored {
    pub ok: bool,
    pub error: Option<String>,
    pub iou_raw: Option<f64>,
    pub iou_unitcube: Option<f64>,
    pub iou_best: Option<f64>,
}

/// Execute `pred` and measure it against the `target` program (the only place that runs model output).
pub fn score_program(pred: &str, target: &str) -> Scored {
    let limits = Limits::default();
    let p = match cad::execute(pred, &limits) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return Scored { ok: false, error: Some("empty solid".into()), iou_raw: None, iou_unitcube: None, iou_best: None },
        Err(e) => return Scored { ok: false, error: Some(e.to_string()), iou_raw: None, iou_unitcube: None, iou_best: None },
    };
    match cad::execute(target, &limits) {
        Ok(t) => Scored {
            ok: true,
            error: None,
            iou_raw: Some(geom::iou(&p, &t, Normalize::Raw)),
            iou_unitcube: Some(geom::iou(&p, &t, Normalize::UnitCube)),
            iou_best: Some(geom::iou(&p, &t, Normalize::Best)),
        },
        Err(e) => Scored { ok: true, error: Some(format!("target program fails: {e}")), iou_raw: None, iou_unitcube: None, iou_best: None },
    }
}

/// One evaluated generation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleResult {
    pub id: String,
    pub sample: usize,
    pub program: String,
    pub finished: bool,
    pub n_tokens: usize,
    #[serde(flatten)]
    pub score: Scored,
}

/// `eval.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalSummary {
    pub n: usize,
    pub samples_per_image: usize,
    pub vsr: f64,
    pub iou_unitcube_mean_valid: f64,
    pub iou_unitcube_mean_all: f64,
    pub iou_best_mean_valid: f64,
    pub iou_best_mean_all: f64,
    pub iou_raw_mean_valid: f64,
    pub iou_raw_mean_all: f64,
    /// Best-of-K IoU_best per image, averaged (equals the mean for K = 1).
    pub iou_best_at_k_mean: f64,
    pub unfinished: usize,
    /// Distinct generated programs: far below `n` means the model writes the same program whatever
    /// the image (a collapse that mean IoU alone hides). Absent in older eval.json files.
    #[serde(default)]
    pub distinct_programs: usize,
    pub seconds: f64,
}

/// Aggregate results (pure).
pub fn summarize(results: &[SampleResult], k: usize, seconds: f64) -> EvalSummary {
    let n = results.len();
    let valid: Vec<&SampleResult> = results.iter().filter(|r| r.score.ok && r.score.iou_best.is_some()).collect();
    let mean = |f: &dyn Fn(&Scored) -> Option<f64>, over: f64| (0.0 + valid.iter().filter_map(|r| f(&r.score)).sum::<f64>()) / over.max(1.0);
    let nv = valid.len() as f64;
    let mut best_at_k: BTreeMap<&str, f64> = BTreeMap::new();
    for r in results {
        let e = best_at_k.entry(r.id.as_str()).or_insert(0.0);
        *e = e.max(r.score.iou_best.unwrap_or(0.0));
    }
    EvalSummary {
        n,
        samples_per_image: k,
        vsr: if n == 0 { 0.0 } else { results.iter().filter(|r| r.score.ok).count() as f64 / n as f64 },
        iou_unitcube_mean_valid: mean(&|s| s.iou_unitcube, nv),
        iou_unitcube_mean_all: mean(&|s| s.iou_unitcube, n as f64),
        iou_best_mean_valid: mean(&|s| s.iou_best, nv),
        iou_best_mean_all: mean(&|s| s.iou_best, n as f64),
        iou_raw_mean_valid: mean(&|s| s.iou_raw, nv),
        iou_raw_mean_all: mean(&|s| s.iou_raw, n as f64),
        iou_best_at_k_mean: if best_at_k.is_empty() { 0.0 } else { best_at_k.values().sum::<f64>() / best_at_k.len() as f64 },
        unfinished: results.iter().filter(|r| !r.finished).count(),
        distinct_programs: results.iter().map(|r| r.program.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
        seconds,
    }
}

/// Prompt tokens followed by `<|begin|>`.
pub fn prefix_tokens(tok: &CodeTokenizer, prompt: &str) -> Result<Vec<u32>, EvalError> {
    let mut p = tok.encode(prompt)?;
    p.push(tok.begin);
    Ok(p)
}

/// Patches of a batch of samples: `[batch, n_patches, patch_dim]`.
pub fn patches_tensor<B: Backend>(samples: &[&Sample], c: &VlmConfig, device: &B::Device) -> Tensor<B, 3> {
    let mut v = Vec::with_capacity(samples.len() * c.grid() * c.grid() * c.patch_dim());
    for s in samples {
        v.extend(image_to_patches(&s.rgb, s.width, s.height, c));
    }
    Tensor::from_data(TensorData::new(v, [samples.len(), c.grid() * c.grid(), c.patch_dim()]), device)
}

/// Generate `k` programs per sample (batched; rows grouped by prompt), execute and score them.
pub fn evaluate_samples<B: Backend>(
    model: &Vlm<B>,
    c: &VlmConfig,
    tok: &CodeTokenizer,
    samples: &[Sample],
    gen_cfg: &GenerateConfig,
    k: usize,
    batch: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<Vec<SampleResult>, EvalError> {
    let k = k.max(1);
    let per_batch = (batch / k).max(1);
    let mut out = Vec::with_capacity(samples.len() * k);
    let mut groups: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups.entry(s.prompt.as_str()).or_default().push(s);
    }
    let mut done = 0;
    for (prompt, group) in groups {
        let prefix = prefix_tokens(tok, prompt)?;
        for (ci, chunk) in group.chunks(per_batch).enumerate() {
            let image = model.encode_image(patches_tensor::<B>(chunk, c, device)); // [chunk, n_img, hidden]
            let image = if k > 1 { repeat_rows(image, k) } else { image }; // [chunk·k, n_img, hidden]
            let cfg = GenerateConfig { seed: gen_cfg.seed.wrapping_add(ci as u64), ..gen_cfg.clone() };
            let gens = generate(model, image, &prefix, tok.end, c.max_seq_len, &cfg);
            for (i, g) in gens.into_iter().enumerate() {
                let s = chunk[i / k];
                let program = tok.decode(&g.tokens)?;
                let score = score_program(&program, &s.program);
                out.push(SampleResult { id: s.id.clone(), sample: i % k, program, finished: g.finished, n_tokens: g.tokens.len(), score });
            }
            done += chunk.len();
            progress(done);
        }
    }
    Ok(out)
}

/// Write the per-sample parquet (id, sample, program, ok, error, IoUs).
pub fn write_results_parquet(path: &Path, results: &[SampleResult]) -> Result<(), EvalError> {
    use polars::prelude::*;
    let mut df = DataFrame::new(results.len(), vec![
        Column::new("id".into(), results.iter().map(|r| r.id.clone()).collect::<Vec<_>>()),
        Column::new("sample".into(), results.iter().map(|r| r.sample as u32).collect::<Vec<_>>()),
        Column::new("program".into(), results.iter().map(|r| r.program.clone()).collect::<Vec<_>>()),
        Column::new("finished".into(), results.iter().map(|r| r.finished).collect::<Vec<_>>()),
        Column::new("n_tokens".into(), results.iter().map(|r| r.n_tokens as u32).collect::<Vec<_>>()),
        Column::new("ok".into(), results.iter().map(|r| r.score.ok).collect::<Vec<_>>()),
        Column::new("error".into(), results.iter().map(|r| r.score.error.clone()).collect::<Vec<_>>()),
        Column::new("iou_raw".into(), results.iter().map(|r| r.score.iou_raw).collect::<Vec<_>>()),
        Column::new("iou_unitcube".into(), results.iter().map(|r| r.score.iou_unitcube).collect::<Vec<_>>()),
        Column::new("iou_best".into(), results.iter().map(|r| r.score.iou_best).collect::<Vec<_>>()),
    ])
    .map_err(|e| derr(path, e))?;
    let tmp = path.with_extension("parquet.tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| derr(&tmp, e))?;
    ParquetWriter::new(f).finish(&mut df).map_err(|e| derr(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| derr(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_and_summary() {
        let cube = "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude(1.0)\nsolid=solid0\n";
        let s = score_program(cube, cube);
        assert!(s.ok && (s.iou_best.unwrap() - 1.0).abs() < 1e-6, "{s:?}");
        let bad = score_program("import os", cube);
        assert!(!bad.ok && bad.error.is_some());
        let r = |ok: Scored| SampleResult { id: "a".into(), sample: 0, program: String::new(), finished: true, n_tokens: 1, score: ok };
        let sum = summarize(&[r(s), r(bad)], 1, 0.0);
        assert_eq!(sum.n, 2);
        assert!((sum.vsr - 0.5).abs() < 1e-12);
        assert!((sum.iou_best_mean_valid - 1.0).abs() < 1e-6);
        assert!((sum.iou_best_mean_all - 0.5).abs() < 1e-6);
    }
}

/// A trained run folder (`config.json`, `tokenizer.json`, `model.safetensors`), loaded for inference.
pub fn load_run<B: Backend>(run: &Path, device: &B::Device) -> Result<(Vlm<B>, VlmConfig, CodeTokenizer), EvalError> {
    let cp = run.join("config.json");
    let text = std::fs::read_to_string(&cp).map_err(|e| derr(&cp, format!("{e} (is {} a trained run folder?)", run.display())))?;
    let c: VlmConfig = serde_json::from_str(&text).map_err(|e| derr(&cp, e))?;
    c.validate()?;
    let tok = CodeTokenizer::load(&run.join("tokenizer.json"))?;
    if tok.vocab_size() != c.vocab_size {
        return Err(derr(&cp, format!("vocab_size {} but tokenizer.json has {}", c.vocab_size, tok.vocab_size())));
    }
    let model = crate::model::weights::load_module(Vlm::<B>::new(&c, device), &run.join("model.safetensors"))?;
    Ok((model, c, tok))
}
