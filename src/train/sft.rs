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
use burn::optim::GradientsAccumulator;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::adapt::Adaptation;
use super::checkpoint::{self, CheckpointMeta};
use super::metrics::{MetricRow, read_metrics, write_metrics};
use super::optim::{AdamW, OptimConfig, lr_at};
use super::{TrainError, ioerr};
use crate::cad::{Limits, fmt::canonicalize};
use crate::data::Sample;
use crate::data::images::resize_rgb_u8;
use crate::exec::{Executor, SandboxConfig, Scored, score_program};
use crate::model::generate::{GenerateConfig, generate_programs};
use crate::model::inputs::{patches_tensor, prefix_tokens};
use crate::model::tokenizer::CodeTokenizer;
use crate::model::vlm::{TokenBatch, Vlm};
use crate::model::{VlmConfig, run_dir, weights};

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
    /// The executor of the validation programs (the recipe's `[sandbox]`; model output, so wasm by default).
    #[serde(skip)]
    pub sandbox: SandboxConfig,
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
            sandbox: SandboxConfig::default(),
        }
    }
}

/// The f32 base weights of an adapted (LoRA / QLoRA) run, in its run folder.
pub const BASE_FILE: &str = "base.safetensors";

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
    let ext = [
        b.max[0] - b.min[0],
        b.max[1] - b.min[1],
        b.max[2] - b.min[2],
    ];
    let m = ext[0].max(ext[1]).max(ext[2]);
    if !(m.is_finite() && m > 0.0) {
        return None;
    }
    let boxv = ext[0] * ext[1] * ext[2];
    let fill = if boxv > 0.0 {
        (volume(
            &solid,
            &MeasureOptions {
                pieces: 8,
                component_grid: 0,
            },
        ) / boxv)
            .clamp(0.0, 1.0)
    } else {
        0.0
    };
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
pub fn prepare_examples(
    samples: Vec<Sample>,
    tok: &CodeTokenizer,
    c: &VlmConfig,
    cfg: &SftConfig,
) -> Result<(Vec<Example>, usize), TrainError> {
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
        let small = resize_rgb_u8(&s.rgb, s.width, s.height, z);
        s.rgb = small;
        s.width = z;
        s.height = z;
        s.program = code_text;
        out.push(Example {
            sample: s,
            prefix,
            code,
            aux,
        });
    }
    Ok((out, skipped))
}

/// Indices of global samples `k0..k0+len` (see the module doc).
pub fn sample_indices(
    seed: u64,
    n: usize,
    k0: usize,
    len: usize,
    cache: &mut Option<(usize, Vec<usize>)>,
) -> Vec<usize> {
    (k0..k0 + len)
        .map(|k| {
            let epoch = k / n;
            if cache.as_ref().is_none_or(|c| c.0 != epoch) {
                let mut p: Vec<usize> = (0..n).collect();
                p.shuffle(&mut StdRng::seed_from_u64(
                    seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ));
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
pub fn batch_indices(
    seed: u64,
    lengths: &[usize],
    g: usize,
    bs: usize,
    cache: &mut Option<(usize, Vec<usize>)>,
) -> Vec<usize> {
    let chunk = g / BUCKET;
    let mut idx = sample_indices(seed, lengths.len(), chunk * BUCKET * bs, BUCKET * bs, cache);
    idx.sort_by_key(|&i| (lengths[i], i));
    let mut order: Vec<usize> = (0..BUCKET).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed.wrapping_add(0x5151) ^ (chunk as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    ));
    let j = order[g % BUCKET];
    idx[j * bs..(j + 1) * bs].to_vec()
}

/// One row of `metrics.parquet`.
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

/// Train (or resume) an SFT run in `run`, as `adapt` says: full fine-tuning, LoRA, or QLoRA (quantized
/// base + adapters). `stop_at` ends early after that step (used to test resume). With adapters, checkpoints hold the adapters and the remaining f32 parameters, and the
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
        return Err(TrainError::Data(format!(
            "sft.aux_weight > 0 but some examples lack their {} shape targets (prepare them with the same sft config)",
            c.aux_outputs
        )));
    }
    if train.is_empty() {
        return Err(TrainError::Data(
            "no training examples (all skipped?)".into(),
        ));
    }
    std::fs::create_dir_all(run).map_err(|e| ioerr(run, e))?;
    AB::seed(device, cfg.seed);
    let mut model = c.init::<AB>(device);
    let latest = checkpoint::latest(run)?;
    if !adapt.is_full() {
        // the f32 base the adapters train on, kept so that a resumed run quantizes the same weights
        let base = run.join(BASE_FILE);
        if base.exists() {
            model = weights::load_module(model, &base)?;
        } else if let Some(dir) = &latest {
            return Err(TrainError::Data(format!(
                "{}: there is a checkpoint but no {BASE_FILE} to rebuild its base from; use a new run name",
                dir.display()
            )));
        } else {
            weights::save_module(&model, &base)?;
        }
        model = adapt.prepare(model, device)?;
    }
    let mut opt = AdamW::<AB::InnerBackend>::new(cfg.optim.clone());
    let executor = if val.is_empty() || cfg.val_samples == 0 {
        None
    } else {
        Some(crate::exec::executor(&cfg.sandbox)?)
    };
    let (mut step, mut tokens, mut secs0, mut resumed_from) = (0usize, 0u64, 0.0f64, None);
    if let Some(dir) = latest {
        let meta: CheckpointMeta = checkpoint::read_meta(&dir)?;
        if &meta.config != c {
            return Err(TrainError::Data(format!(
                "{}: checkpoint was trained with another model config; use a new run name",
                dir.display()
            )));
        }
        check_adaptation(&dir, &meta.adapt, adapt)?;
        model = checkpoint::restore(&dir, model, &mut opt, meta.step, device)?;
        (step, tokens, secs0, resumed_from) =
            (meta.step, meta.tokens, meta.seconds, Some(meta.step));
    }
    let mut metrics = read_metrics(run, step);
    let end = stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    let pb = super::step_bar(cfg.steps, step, show_progress);
    let t0 = Instant::now();
    let mut window = (Instant::now(), 0u64, 0.0f64, 0usize); // (since, tokens, loss sum, steps)
    let mut aux_window = 0.0f64;
    let mut perm_cache = None;
    let mut losses = Vec::new();
    let lengths: Vec<usize> = train
        .iter()
        .map(|e| e.prefix.len() + e.code.len())
        .collect();
    while step < end {
        let lr = lr_at(&cfg.optim, step, cfg.steps);
        let mut acc = GradientsAccumulator::<Vlm<AB>>::new();
        let mut loss_sum = 0.0;
        for micro in 0..cfg.grad_accum {
            let idx = batch_indices(
                cfg.seed,
                &lengths,
                step * cfg.grad_accum + micro,
                cfg.batch_size,
                &mut perm_cache,
            );
            let exs: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
            let rows: Vec<(Vec<u32>, Vec<u32>)> = exs
                .iter()
                .map(|e| (e.prefix.clone(), e.code.clone()))
                .collect();
            let batch = TokenBatch::from_rows(&rows, tok.pad);
            let samples: Vec<&Sample> = exs.iter().map(|e| &e.sample).collect();
            let patches = patches_tensor::<AB>(&samples, c, device); // [batch, n_patches, patch_dim]
            let targets = use_aux.then(|| {
                let v: Vec<f32> = exs.iter().flat_map(|e| e.aux.iter().copied()).collect();
                burn::tensor::Tensor::<AB, 2>::from_data(
                    burn::tensor::TensorData::new(v, [exs.len(), c.aux_outputs]),
                    device,
                ) // [batch, aux_outputs]
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
                aux_loss: use_aux.then(|| aux_window / window.3 as f64),
                ..Default::default()
            });
            window = (Instant::now(), 0, 0.0, 0);
            aux_window = 0.0;
        }
        let do_val = !val.is_empty()
            && cfg.val_samples > 0
            && ((cfg.val_every > 0 && step % cfg.val_every == 0) || step == cfg.steps);
        if do_val {
            let s = validate(
                &model.valid(),
                c,
                tok,
                &val[..cfg.val_samples.min(val.len())],
                cfg,
                executor.as_deref(),
                device,
            )?;
            super::say(
                &pb,
                format!(
                    "step {step}: val VSR {:.3}  IoU_unitcube(all) {:.3}  IoU_best(all) {:.3}",
                    s.vsr, s.iou_unitcube, s.iou_best
                ),
            );
            let r = row.get_or_insert(MetricRow {
                step,
                tokens,
                seconds: secs,
                ..Default::default()
            });
            r.val_vsr = Some(s.vsr);
            r.val_iou_unitcube = Some(s.iou_unitcube);
            r.val_iou_best = Some(s.iou_best);
            window.0 = Instant::now(); // validation time is not training throughput
            window.1 = 0;
        }
        if let Some(r) = row {
            metrics.push(r);
            write_metrics(run, &metrics)?;
        }
        if step % cfg.checkpoint_every.max(1) == 0 || step == end {
            let meta = CheckpointMeta {
                step,
                tokens,
                seconds: secs,
                config: c.clone(),
                adapt: adapt.clone(),
            };
            checkpoint::save(run, step, &model, &opt.state(), &meta, cfg.keep_checkpoints)?;
        }
    }
    pb.finish_and_clear();
    if step == cfg.steps {
        run_dir::save_run(run, &adapt.export(model.valid(), run, device)?, c)?;
    }
    let _ = std::io::stderr().flush();
    Ok(SftOutcome {
        run: run.to_path_buf(),
        step,
        resumed_from,
        losses,
        metrics,
    })
}

/// Greedy validation of SFT: the share of programs that execute and the mean IoUs over all images
/// (failures count 0), each program executed in the sandbox and scored against its target.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ValStats {
    pub vsr: f64,
    pub iou_unitcube: f64,
    pub iou_best: f64,
}

impl ValStats {
    /// Over `scores` (pure).
    pub fn of(scores: &[Scored]) -> ValStats {
        let n = scores.len().max(1) as f64;
        let valid = || scores.iter().filter(|s| s.ok && s.iou_best.is_some());
        ValStats {
            vsr: scores.iter().filter(|s| s.ok).count() as f64 / n,
            // 0.0 + …: the sum of no terms is −0.0
            iou_unitcube: (0.0 + valid().filter_map(|s| s.iou_unitcube).sum::<f64>()) / n,
            iou_best: (0.0 + valid().filter_map(|s| s.iou_best).sum::<f64>()) / n,
        }
    }
}

fn validate<B: burn::tensor::backend::Backend>(
    model: &Vlm<B>,
    c: &VlmConfig,
    tok: &CodeTokenizer,
    val: &[Example],
    cfg: &SftConfig,
    executor: Option<&dyn Executor>,
    device: &B::Device,
) -> Result<ValStats, TrainError> {
    let Some(ex) = executor else {
        return Ok(ValStats::default());
    };
    let samples: Vec<&Sample> = val.iter().map(|e| &e.sample).collect();
    let gen_cfg = GenerateConfig {
        max_new_tokens: cfg.max_new_tokens,
        ..Default::default()
    };
    let programs = generate_programs(
        model,
        c,
        tok,
        &samples,
        1,
        &gen_cfg,
        16,
        device,
        &mut |_| {},
    )?;
    let scores: Vec<Scored> = programs
        .iter()
        .zip(&samples)
        .map(|(p, s)| score_program(ex, &p.program, &s.program))
        .collect();
    Ok(ValStats::of(&scores))
}

use burn::tensor::ElementConversion as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_targets_of_a_box_and_a_cylinder() {
        let plane = "cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))";
        let boxp = format!(
            "import cadquery as cq\nwp_sketch0 = {plane}\nloop0=wp_sketch0.moveTo(2.0, 0.0).lineTo(2.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude(0.5)\nsolid=solid0\n"
        );
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
        assert!(
            shape_targets(
                "import cadquery as cq\nsolid = nonsense(",
                &Limits::default()
            )
            .is_none()
        );
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
