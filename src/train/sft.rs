//! Supervised fine-tuning: teacher forcing with the loss on code tokens only, gradient accumulation,
//! AdamW + warmup/cosine + clipping, atomic checkpoints, exact resume, periodic generate-execute
//! validation (VSR, IoU), `metrics.parquet` and a progress bar. Full fine-tuning, or LoRA / QLoRA
//! with [`train_sft_adapted`] (see `train::adapt`): the random f32 base is written once as
//! `base.safetensors` so that a resumed run quantizes the very same weights.
//!
//! The data order is a pure function of (seed, global sample index): sample `k` is element `k mod n`
//! of epoch `k / n`'s seeded permutation. Resuming from step `s` therefore needs only `s`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::optim::GradientsAccumulator;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::adapt::Adaptation;
use super::checkpoint::{self, CheckpointMeta};
use super::optim::{AdamW, OptimConfig, lr_at};
use crate::cad::{Limits, fmt::canonicalize};
use crate::eval::{Sample, evaluate_samples, patches_tensor, prefix_tokens, summarize};
use crate::model::generate::GenerateConfig;
use crate::model::vlm::{TokenBatch, Vlm};
use crate::model::{VlmConfig, weights};
use crate::tokenizer::CodeTokenizer;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Optimizer steps in all (the cosine schedule spans them).
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub optim: OptimConfig,
    pub log_every: usize,
    /// Generate-execute validation every N steps (0 = only at the end).
    pub val_every: usize,
    /// Validation images (greedy, one program each).
    pub val_samples: usize,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    pub seed: u64,
    /// Longest code (tokens, with `<|end|>`) kept for training; longer programs are skipped.
    pub max_code_tokens: usize,
    /// Decimals of the canonical program printer.
    pub decimals: u32,
    pub max_new_tokens: usize,
    /// Weight of the auxiliary loss: mean squared error of the model's shape head (`aux_head`)
    /// against [`shape_targets`] of the executed target program. It makes the image encoding carry
    /// the part's proportions from the first steps, so that the decoder has something to read (without
    /// it the small model learns the code text and ignores the image; see reports/model-sft-cpu.md).
    /// 0 = off; needs a model with `aux_outputs` > 0 (the named sizes have it).
    pub aux_weight: f64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            optim: OptimConfig::default(),
            log_every: 10,
            val_every: 0,
            val_samples: 16,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            seed: 0,
            max_code_tokens: 448,
            decimals: 4,
            max_new_tokens: 448,
            aux_weight: 0.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Eval(#[from] crate::eval::EvalError),
    #[error("{0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("training data: {0}")]
    Data(String),
    #[error("{0}")]
    Lora(#[from] crate::model::lora::LoraError),
}

/// The f32 base weights of an adapted (LoRA / QLoRA) run, in its run folder.
pub const BASE_FILE: &str = "base.safetensors";

fn ioerr(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.display().to_string(), msg: e.to_string() }
}

/// A training example: the image at model resolution and its tokens.
#[derive(Clone, Debug)]
pub struct Example {
    pub sample: Sample,
    /// Prompt tokens + `<|begin|>`.
    pub prefix: Vec<u32>,
    /// Canonical code tokens + `<|end|>`.
    pub code: Vec<u32>,
    /// [`shape_targets`] of the program (empty unless `aux_weight` > 0).
    pub aux: Vec<f32>,
}

/// The shape descriptors the auxiliary head regresses, all in [0, 1] and all visible in a render:
/// the bounding box extents along x, y, z over the largest one, the fill ratio (volume / box
/// volume), the number of sketches / 4 (capped at 1), and whether the program has arcs, circles and
/// cuts. `None` when the program does not execute to a non-empty solid.
pub fn shape_targets(program: &str, limits: &Limits) -> Option<[f32; crate::model::AUX_OUTPUTS]> {
    use crate::geom::measure::{MeasureOptions, volume};
    let solid = crate::cad::execute(program, limits).ok()?;
    if solid.is_empty() {
        return None;
    }
    let b = solid.bbox_bound();
    let ext = [b.max[0] - b.min[0], b.max[1] - b.min[1], b.max[2] - b.min[2]];
    let m = ext[0].max(ext[1]).max(ext[2]);
    if !(m.is_finite() && m > 0.0) {
        return None;
    }
    let boxv = ext[0] * ext[1] * ext[2];
    let fill = if boxv > 0.0 { (volume(&solid, &MeasureOptions { pieces: 8, component_grid: 0 }) / boxv).clamp(0.0, 1.0) } else { 0.0 };
    let sketches = program.matches("cq.Workplane(").count() as f64;
    let has = |s: &str| -> f32 { if program.contains(s) { 1.0 } else { 0.0 } };
    Some([
        (ext[0] / m) as f32,
        (ext[1] / m) as f32,
        (ext[2] / m) as f32,
        fill as f32,
        (sketches / 4.0).min(1.0) as f32,
        has("Arc(").max(has(".arc(")),
        has("circle("),
        has(".cut("),
    ])
}

/// Canonicalize, tokenize and downscale samples; programs that do not parse or are too long are skipped
/// (their count is returned).
pub fn prepare_examples(samples: Vec<Sample>, tok: &CodeTokenizer, c: &VlmConfig, cfg: &SftConfig) -> Result<(Vec<Example>, usize), TrainError> {
    let limits = Limits::default();
    let mut out = Vec::with_capacity(samples.len());
    let mut skipped = 0;
    let room = c.max_seq_len.saturating_sub(c.n_image_tokens());
    for mut s in samples {
        let Ok(code_text) = canonicalize(&s.program, cfg.decimals, &limits) else {
            skipped += 1;
            continue;
        };
        let aux = if cfg.aux_weight > 0.0 && c.aux_outputs > 0 {
            match shape_targets(&code_text, &limits) {
                Some(t) => t[..c.aux_outputs.min(t.len())].to_vec(),
                None => {
                    skipped += 1;
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        let prefix = prefix_tokens(tok, &s.prompt)?;
        let mut code = tok.encode(&code_text)?;
        code.push(tok.end);
        if code.len() > cfg.max_code_tokens || prefix.len() + code.len() > room {
            skipped += 1;
            continue;
        }
        // store at model resolution: patches are cheap to cut from it, and memory stays small
        let z = c.image_size;
        let small = crate::model::vision::resize_rgb_u8(&s.rgb, s.width, s.height, z);
        s.rgb = small;
        s.width = z;
        s.height = z;
        s.program = code_text;
        out.push(Example { sample: s, prefix, code, aux });
    }
    Ok((out, skipped))
}

/// Indices of global samples `k0..k0+len` (see the module doc).
pub fn sample_indices(seed: u64, n: usize, k0: usize, len: usize, cache: &mut Option<(usize, Vec<usize>)>) -> Vec<usize> {
    (k0..k0 + len)
        .map(|k| {
            let epoch = k / n;
            if cache.as_ref().is_none_or(|c| c.0 != epoch) {
                let mut p: Vec<usize> = (0..n).collect();
                p.shuffle(&mut StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                *cache = Some((epoch, p));
            }
            cache.as_ref().unwrap().1[k % n]
        })
        .collect()
}

/// Batches per length bucket: each run of `BUCKET` batches draws `BUCKET × batch` samples of the data
/// stream, sorts them by length and cuts them into batches (little padding), in a seeded order.
pub const BUCKET: usize = 32;

/// Example indices of global batch `g` (micro-batch counter), a pure function of (seed, g).
pub fn batch_indices(seed: u64, lengths: &[usize], g: usize, bs: usize, cache: &mut Option<(usize, Vec<usize>)>) -> Vec<usize> {
    let chunk = g / BUCKET;
    let mut idx = sample_indices(seed, lengths.len(), chunk * BUCKET * bs, BUCKET * bs, cache);
    idx.sort_by_key(|&i| (lengths[i], i));
    let mut order: Vec<usize> = (0..BUCKET).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(0x5151) ^ (chunk as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)));
    let j = order[g % BUCKET];
    idx[j * bs..(j + 1) * bs].to_vec()
}

/// One row of `metrics.parquet`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetricRow {
    pub step: usize,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub tokens: u64,
    pub seconds: f64,
    pub val_vsr: Option<f64>,
    pub val_iou_unitcube: Option<f64>,
    pub val_iou_best: Option<f64>,
    /// Mean auxiliary shape loss of the logging window (`sft.aux_weight` > 0).
    #[serde(default)]
    pub aux_loss: Option<f64>,
}

/// Write `metrics.jsonl` (the log) and `metrics.parquet` (the same rows).
pub fn write_metrics(run: &Path, rows: &[MetricRow]) -> Result<(), TrainError> {
    use polars::prelude::*;
    let jl = run.join("metrics.jsonl");
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r).map_err(|e| ioerr(&jl, e))?);
        s.push('\n');
    }
    std::fs::write(&jl, s).map_err(|e| ioerr(&jl, e))?;
    let pq = run.join("metrics.parquet");
    let col_f = |n: &str, f: &dyn Fn(&MetricRow) -> Option<f64>| Column::new(n.into(), rows.iter().map(f).collect::<Vec<_>>());
    let mut df = DataFrame::new(rows.len(), vec![
        Column::new("step".into(), rows.iter().map(|r| r.step as u64).collect::<Vec<_>>()),
        col_f("loss", &|r| r.loss),
        col_f("lr", &|r| r.lr),
        col_f("grad_norm", &|r| r.grad_norm),
        col_f("tokens_per_s", &|r| r.tokens_per_s),
        Column::new("tokens".into(), rows.iter().map(|r| r.tokens).collect::<Vec<_>>()),
        Column::new("seconds".into(), rows.iter().map(|r| r.seconds).collect::<Vec<_>>()),
        col_f("val_vsr", &|r| r.val_vsr),
        col_f("val_iou_unitcube", &|r| r.val_iou_unitcube),
        col_f("val_iou_best", &|r| r.val_iou_best),
        col_f("aux_loss", &|r| r.aux_loss),
    ])
    .map_err(|e| ioerr(&pq, e))?;
    let tmp = pq.with_extension("parquet.tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| ioerr(&tmp, e))?;
    ParquetWriter::new(f).finish(&mut df).map_err(|e| ioerr(&pq, e))?;
    std::fs::rename(&tmp, &pq).map_err(|e| ioerr(&pq, e))
}

fn read_metrics(run: &Path, upto: usize) -> Vec<MetricRow> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<MetricRow>(l).ok())
        .filter(|r| r.step <= upto)
        .collect()
}

/// What a finished (or stopped) run did.
#[derive(Clone, Debug)]
pub struct SftOutcome {
    pub run: PathBuf,
    pub step: usize,
    pub resumed_from: Option<usize>,
    /// (step, loss) of every step this call trained.
    pub losses: Vec<(usize, f64)>,
    pub metrics: Vec<MetricRow>,
}

/// Save the final model as `model.safetensors` + `config.json` (the files `eval` loads).
pub fn save_final<B: burn::tensor::backend::Backend>(run: &Path, model: &Vlm<B>, c: &VlmConfig) -> Result<(), TrainError> {
    weights::save_module(model, &run.join("model.safetensors"))?;
    let p = run.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(c).map_err(|e| ioerr(&p, e))?).map_err(|e| ioerr(&p, e))
}

/// A checkpoint resumes only under the LoRA / quantization settings it was trained with.
pub fn check_adaptation(dir: &Path, had: &Adaptation, want: &Adaptation) -> Result<(), TrainError> {
    if had.same_training(want) {
        return Ok(());
    }
    let show = |a: &Adaptation| serde_json::to_string(a).unwrap_or_default();
    Err(TrainError::Data(format!(
        "{}: checkpoint was trained with {} but the recipe asks for {} ([model] quantize / [lora]); use a new run name or the old settings",
        dir.display(),
        show(had),
        show(want)
    )))
}

/// Train (or resume) an SFT run in `run` with full fine-tuning. `stop_at` ends early after that step
/// (used to test resume).
#[allow(clippy::too_many_arguments)]
pub fn train_sft<AB: AutodiffBackend>(
    run: &Path,
    cfg: &SftConfig,
    c: &VlmConfig,
    tok: &CodeTokenizer,
    train: &[Example],
    val: &[Example],
    device: &AB::Device,
    stop_at: Option<usize>,
    show_progress: bool,
) -> Result<SftOutcome, TrainError> {
    train_sft_adapted::<AB>(run, cfg, c, &Adaptation::default(), tok, train, val, device, stop_at, show_progress)
}

/// As [`train_sft`], training as `adapt` says: full fine-tuning, LoRA, or QLoRA (quantized base +
/// adapters). With adapters, checkpoints hold the adapters and the remaining f32 parameters, and the
/// final `model.safetensors` is the merged f32 model (adapters alone: `adapters.safetensors`).
#[allow(clippy::too_many_arguments)]
pub fn train_sft_adapted<AB: AutodiffBackend>(
    run: &Path,
    cfg: &SftConfig,
    c: &VlmConfig,
    adapt: &Adaptation,
    tok: &CodeTokenizer,
    train: &[Example],
    val: &[Example],
    device: &AB::Device,
    stop_at: Option<usize>,
    show_progress: bool,
) -> Result<SftOutcome, TrainError> {
    adapt.validate(c).map_err(TrainError::Data)?;
    if cfg.aux_weight > 0.0 && c.aux_outputs == 0 {
        return Err(TrainError::Data("sft.aux_weight > 0 needs a model with an auxiliary head (aux_outputs > 0); set sft.aux_weight = 0".into()));
    }
    let use_aux = cfg.aux_weight > 0.0;
    if use_aux && train.iter().any(|e| e.aux.len() != c.aux_outputs) {
        return Err(TrainError::Data(format!("sft.aux_weight > 0 but some examples lack their {} shape targets (prepare them with the same sft config)", c.aux_outputs)));
    }
    if train.is_empty() {
        return Err(TrainError::Data("no training examples (all skipped?)".into()));
    }
    std::fs::create_dir_all(run).map_err(|e| ioerr(run, e))?;
    AB::seed(device, cfg.seed);
    let mut model = Vlm::<AB>::new(c, device);
    let latest = checkpoint::latest(run)?;
    if !adapt.is_full() {
        // the f32 base the adapters train on, kept so that a resumed run quantizes the same weights
        let base = run.join(BASE_FILE);
        if base.exists() {
            model = weights::load_module(model, &base)?;
        } else if let Some(dir) = &latest {
            return Err(TrainError::Data(format!("{}: there is a checkpoint but no {BASE_FILE} to rebuild its base from; use a new run name", dir.display())));
        } else {
            weights::save_module(&model, &base)?;
        }
        model = adapt.prepare(model, device)?;
    }
    let mut opt = AdamW::<AB::InnerBackend>::new(cfg.optim.clone());
    let (mut step, mut tokens, mut secs0, mut resumed_from) = (0usize, 0u64, 0.0f64, None);
    if let Some(dir) = latest {
        let meta = checkpoint::read_meta(&dir)?;
        if &meta.config != c {
            return Err(TrainError::Data(format!("{}: checkpoint was trained with another model config; use a new run name", dir.display())));
        }
        check_adaptation(&dir, &meta.adapt, adapt)?;
        model = weights::load_module(model, &dir.join("model.safetensors"))?;
        let st = weights::read_safetensors(&dir.join("optimizer.safetensors"))?;
        opt.load_state(meta.step, &st, device);
        (step, tokens, secs0, resumed_from) = (meta.step, meta.tokens, meta.seconds, Some(meta.step));
    }
    let mut metrics = read_metrics(run, step);
    let end = stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    let pb = if show_progress { indicatif::ProgressBar::new(cfg.steps as u64) } else { indicatif::ProgressBar::hidden() };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(step as u64);
    let t0 = Instant::now();
    let mut window = (Instant::now(), 0u64, 0.0f64, 0usize); // (since, tokens, loss sum, steps)
    let mut aux_window = 0.0f64;
    let mut perm_cache = None;
    let mut losses = Vec::new();
    let lengths: Vec<usize> = train.iter().map(|e| e.prefix.len() + e.code.len()).collect();
    while step < end {
        let lr = lr_at(&cfg.optim, step, cfg.steps);
        let mut acc = GradientsAccumulator::<Vlm<AB>>::new();
        let mut loss_sum = 0.0;
        for micro in 0..cfg.grad_accum {
            let idx = batch_indices(cfg.seed, &lengths, step * cfg.grad_accum + micro, cfg.batch_size, &mut perm_cache);
            let exs: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
            let rows: Vec<(Vec<u32>, Vec<u32>)> = exs.iter().map(|e| (e.prefix.clone(), e.code.clone())).collect();
            let batch = TokenBatch::from_rows(&rows, tok.pad);
            let samples: Vec<&Sample> = exs.iter().map(|e| &e.sample).collect();
            let patches = patches_tensor::<AB>(&samples, c, device); // [batch, n_patches, patch_dim]
            let targets = use_aux.then(|| {
                let v: Vec<f32> = exs.iter().flat_map(|e| e.aux.iter().copied()).collect();
                burn::tensor::Tensor::<AB, 2>::from_data(burn::tensor::TensorData::new(v, [exs.len(), c.aux_outputs]), device) // [batch, aux_outputs]
            });
            let (nll, aux) = model.sft_losses(patches, &batch, targets);
            let nll = nll.div_scalar(cfg.grad_accum as f64);
            loss_sum += nll.clone().into_scalar().elem::<f64>();
            let loss = match aux {
                Some(a) => {
                    let a = a.div_scalar(cfg.grad_accum as f64);
                    aux_window += a.clone().into_scalar().elem::<f64>();
                    nll.add(a.mul_scalar(cfg.aux_weight))
                }
                None => nll,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            acc.accumulate(&model, grads);
            window.1 += batch.n_target_tokens() as u64;
            tokens += batch.n_target_tokens() as u64;
        }
        let (m, gnorm) = opt.step(model, acc.grads(), lr);
        model = m;
        step += 1;
        losses.push((step, loss_sum));
        window.2 += loss_sum;
        window.3 += 1;
        let secs = secs0 + t0.elapsed().as_secs_f64();
        let tps = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
        pb.set_position(step as u64);
        pb.set_message(format!("loss {loss_sum:.4}  lr {lr:.2e}  {tps:.0} tok/s"));
        let mut row = None;
        if step % cfg.log_every.max(1) == 0 || step == cfg.steps {
            row = Some(MetricRow {
                step,
                loss: Some(window.2 / window.3 as f64),
                lr: Some(lr),
                grad_norm: Some(gnorm),
                tokens_per_s: Some(tps),
                tokens,
                seconds: secs,
                val_vsr: None,
                val_iou_unitcube: None,
                val_iou_best: None,
                aux_loss: use_aux.then(|| aux_window / window.3 as f64),
            });
            window = (Instant::now(), 0, 0.0, 0);
            aux_window = 0.0;
        }
        let do_val = !val.is_empty() && cfg.val_samples > 0 && ((cfg.val_every > 0 && step % cfg.val_every == 0) || step == cfg.steps);
        if do_val {
            let inner = model.valid();
            let vs: Vec<Sample> = val.iter().take(cfg.val_samples).map(|e| e.sample.clone()).collect();
            let gen_cfg = GenerateConfig { max_new_tokens: cfg.max_new_tokens, ..Default::default() };
            let res = evaluate_samples(&inner, c, tok, &vs, &gen_cfg, 1, 16, device, |_| {})?;
            let s = summarize(&res, 1, 0.0);
            pb.println(format!(
                "step {step}: val VSR {:.3}  IoU_unitcube(all) {:.3}  IoU_best(all) {:.3}",
                s.vsr, s.iou_unitcube_mean_all, s.iou_best_mean_all
            ));
            let r = row.get_or_insert(MetricRow {
                step,
                loss: None,
                lr: None,
                grad_norm: None,
                tokens_per_s: None,
                tokens,
                seconds: secs,
                val_vsr: None,
                val_iou_unitcube: None,
                val_iou_best: None,
                aux_loss: None,
            });
            r.val_vsr = Some(s.vsr);
            r.val_iou_unitcube = Some(s.iou_unitcube_mean_all);
            r.val_iou_best = Some(s.iou_best_mean_all);
            window.0 = Instant::now(); // validation time is not training throughput
            window.1 = 0;
        }
        if let Some(r) = row {
            metrics.push(r);
            write_metrics(run, &metrics)?;
        }
        if step % cfg.checkpoint_every.max(1) == 0 || step == end {
            let meta = CheckpointMeta { step, tokens, seconds: secs, config: c.clone(), adapt: adapt.clone() };
            checkpoint::save(run, &model, &opt.state(), &meta, cfg.keep_checkpoints)?;
        }
    }
    pb.finish_and_clear();
    if step == cfg.steps {
        save_final(run, &adapt.export(model.valid(), run, device)?, c)?;
    }
    let _ = std::io::stderr().flush();
    Ok(SftOutcome { run: run.to_path_buf(), step, resumed_from, losses, metrics })
}

use burn::tensor::ElementConversion as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_targets_of_a_box_and_a_cylinder() {
        let plane = "cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))";
        let boxp = format!("import cadquery as cq\nwp_sketch0 = {plane}\nloop0=wp_sketch0.moveTo(2.0, 0.0).lineTo(2.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude(0.5)\nsolid=solid0\n");
        let t = shape_targets(&boxp, &Limits::default()).unwrap();
        assert_eq!(t, [1.0, 0.5, 0.25, 1.0, 0.25, 0.0, 0.0, 0.0]);
        // a cylinder of radius 0.5 and height 2 with a box cut away: fill = (π/4·2 − 0.1·0.1·2) / 2
        let cyl = format!(
            "import cadquery as cq\nwp_sketch0 = {plane}\nloop0=wp_sketch0.moveTo(0.0, 0.0).circle(0.5)\nsolid0=wp_sketch0.add(loop0).extrude(2.0)\nsolid=solid0\nwp_sketch1 = {plane}\nloop1=wp_sketch1.moveTo(0.1, 0.0).lineTo(0.1, 0.1).lineTo(0.0, 0.1).lineTo(0.0, 0.0).close()\nsolid1=wp_sketch1.add(loop1).extrude(2.0)\nsolid=solid.cut(solid1)\n"
        );
        let t = shape_targets(&cyl, &Limits::default()).unwrap();
        assert_eq!(&t[..3], &[0.5, 0.5, 1.0]);
        let fill = (std::f64::consts::FRAC_PI_4 * 2.0 - 0.02) / 2.0;
        assert!((t[3] as f64 - fill).abs() < 2e-3, "fill {} vs {fill}", t[3]);
        assert_eq!(&t[4..], &[0.5, 0.0, 1.0, 1.0]);
        assert!(shape_targets("import cadquery as cq\nsolid = nonsense(", &Limits::default()).is_none());
    }

    #[test]
    fn bucketed_batches_cover_the_stream_once_and_are_reproducible() {
        let lengths: Vec<usize> = (0..100).map(|i| (i * 37) % 91).collect();
        let bs = 4;
        let mut cache = None;
        let mut seen = Vec::new();
        for g in 0..BUCKET {
            let b = batch_indices(3, &lengths, g, bs, &mut cache);
            assert_eq!(b.len(), bs);
            // a fresh cache gives the same batch (resume needs nothing but g)
            assert_eq!(b, batch_indices(3, &lengths, g, bs, &mut None));
            seen.extend(b);
        }
        // one bucket = the first BUCKET·bs samples of the stream, each exactly once
        let mut want = sample_indices(3, lengths.len(), 0, BUCKET * bs, &mut None);
        want.sort();
        seen.sort();
        assert_eq!(seen, want);
        // batches are length-sorted runs
        let b = batch_indices(3, &lengths, 5, bs, &mut None);
        let l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
        assert!(l.windows(2).all(|w| w[0] <= w[1]), "{l:?}");
    }
}
