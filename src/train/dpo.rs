//! Direct Preference Optimization on executed-IoU preferences: iterative rounds of (sample K programs
//! per image with the current policy → execute and score them in the sandbox → pairs → DPO steps
//! against a frozen reference).
//!
//! - [`dpo_loss`] is the sigmoid DPO loss (Rafailov et al. 2023; with the label smoothing of cDPO) as
//!   a pure function of per-sequence summed log-probs, with TRL's statistics; [`dpo_loss_tensor`] is
//!   the same on tensors (the one that is differentiated), tested against it.
//! - Log-probs are summed over code tokens (and `<|end|>`) only; one forward scores
//!   `[chosen; rejected]` with the image encoded once and repeated.
//! - The reference is the SFT model, frozen (an inner-backend copy: no gradient can reach it);
//!   with `reset_reference` it becomes the policy at the start of each round. With LoRA / QLoRA
//!   ([`train_dpo_adapted`], `train::adapt`) the policy is the SFT model as a (quantized) frozen base
//!   plus adapters, and the reference is that same policy with its adapters switched off
//!   ([`with_adapters_disabled`]): no second copy of the model.
//! - Per round, the rollouts are cached as `rollouts/round-NN.parquet`; checkpoints are atomic and a
//!   stopped run resumes from the last one (the pair order is a pure function of the step).
//! - `metrics.parquet` / `metrics.jsonl` use TRL's names: `loss`, `rewards/chosen`, `rewards/rejected`,
//!   `rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected`, plus `rollout/*`
//!   rows at the start of each round.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use super::adapt::Adaptation;
use super::checkpoint::{self, CheckpointMeta};
use super::optim::{AdamW, OptimConfig, lr_at};
use super::rollout::{self, Pair, PairConfig, Rollout, RolloutConfig};
use super::sft::{TrainError, check_adaptation, sample_indices};
use crate::model::lora::with_adapters_disabled;
use crate::eval::{Sample, patches_tensor, prefix_tokens};
use crate::model::vlm::{TokenBatch, Vlm};
use crate::model::{VlmConfig, weights};
use crate::tokenizer::CodeTokenizer;

/// `[dpo]` of a recipe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DpoConfig {
    /// A finished SFT run folder to start from (its tokenizer, config, weights and data are reused);
    /// None: this recipe's own SFT stage.
    pub sft_run: Option<PathBuf>,
    /// Sample → pair → train rounds.
    pub rounds: usize,
    /// Training images sampled per round (a seeded subset of the training split).
    pub images_per_round: usize,
    /// Optimizer steps per round.
    pub steps_per_round: usize,
    /// Pairs per optimizer step.
    pub batch_pairs: usize,
    /// KL strength β of the implicit reward β·log(π/π_ref).
    pub beta: f64,
    /// cDPO label smoothing ε ∈ [0, 0.5): the share of pairs assumed mislabelled.
    pub label_smoothing: f64,
    /// Make the reference the policy at the start of every round (else the SFT model throughout).
    pub reset_reference: bool,
    /// Weight α of an added NLL term on the chosen programs (per code token), as in RPO / iterative
    /// RPO (Pang et al. 2024): keeps the chosen programs' likelihood from falling. 0 = plain DPO.
    pub nll_weight: f64,
    pub optim: OptimConfig,
    pub log_every: usize,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub rollout: RolloutConfig,
    pub pairs: PairConfig,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            sft_run: None,
            rounds: 2,
            images_per_round: 64,
            steps_per_round: 20,
            batch_pairs: 8,
            beta: 0.1,
            label_smoothing: 0.0,
            reset_reference: false,
            nll_weight: 0.0,
            optim: OptimConfig { lr: 1e-4, warmup_steps: 5, min_lr_ratio: 0.1, weight_decay: 0.0, ..Default::default() },
            log_every: 1,
            checkpoint_every: 10,
            keep_checkpoints: 2,
            seed: 0,
            rollout: RolloutConfig::default(),
            pairs: PairConfig::default(),
        }
    }
}

impl DpoConfig {
    /// Every check that can fail before work starts.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("dpo.rounds", self.rounds),
            ("dpo.images_per_round", self.images_per_round),
            ("dpo.steps_per_round", self.steps_per_round),
            ("dpo.batch_pairs", self.batch_pairs),
            ("dpo.rollout.k", self.rollout.k),
            ("dpo.rollout.batch", self.rollout.batch),
        ] {
            if v == 0 {
                return Err(format!("{k} must be > 0"));
            }
        }
        if self.rollout.k < 2 {
            return Err("dpo.rollout.k must be ≥ 2: a pair needs two samples of the same image".into());
        }
        if self.rollout.temperature <= 0.0 {
            return Err("dpo.rollout.temperature must be > 0: greedy decoding gives K identical programs".into());
        }
        if !(self.beta > 0.0) {
            return Err(format!("dpo.beta = {}: use a positive value, e.g. 0.1", self.beta));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!("dpo.label_smoothing = {}: use a value in [0, 0.5)", self.label_smoothing));
        }
        if !(self.optim.lr > 0.0 && self.optim.lr < 1.0) {
            return Err(format!("dpo.optim.lr = {}: use a value in (0, 1), e.g. 1e-4", self.optim.lr));
        }
        if !(self.nll_weight >= 0.0) {
            return Err(format!("dpo.nll_weight = {}: use a value ≥ 0", self.nll_weight));
        }
        if self.pairs.margin < 0.0 {
            return Err(format!("dpo.pairs.margin = {}: use a value ≥ 0", self.pairs.margin));
        }
        Ok(())
    }

    pub fn total_steps(&self) -> usize {
        self.rounds * self.steps_per_round
    }
}

/// Checks of `[dpo]` that depend on `[model] quantize` / `[lora]`.
pub fn validate_with(cfg: &DpoConfig, adapt: &Adaptation) -> Result<(), String> {
    if cfg.reset_reference && !adapt.is_full() {
        return Err("dpo.reset_reference = true needs full fine-tuning: with [lora] the reference is the base with the adapters off; set dpo.reset_reference = false or drop [lora]".into());
    }
    Ok(())
}

/// Batch means of the DPO loss and TRL's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DpoStats {
    pub loss: f64,
    /// β·(log π(y_w) − log π_ref(y_w)).
    pub reward_chosen: f64,
    /// β·(log π(y_l) − log π_ref(y_l)).
    pub reward_rejected: f64,
    pub margin: f64,
    /// Share of pairs with reward_chosen > reward_rejected.
    pub accuracy: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
}

fn log_sigmoid_f64(x: f64) -> f64 {
    // log σ(x) = −softplus(−x), computed stably on both sides
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

/// The sigmoid DPO loss over a batch of per-sequence summed log-probs (pure):
/// `h = β[(π_w − ref_w) − (π_l − ref_l)]`, `loss = −(1−ε)·log σ(h) − ε·log σ(−h)`, averaged.
pub fn dpo_loss(policy_chosen: &[f64], policy_rejected: &[f64], ref_chosen: &[f64], ref_rejected: &[f64], beta: f64, label_smoothing: f64) -> DpoStats {
    let n = policy_chosen.len();
    assert!(n > 0 && policy_rejected.len() == n && ref_chosen.len() == n && ref_rejected.len() == n, "dpo_loss: batch sizes differ or are 0");
    let mut s = DpoStats::default();
    for i in 0..n {
        let rc = beta * (policy_chosen[i] - ref_chosen[i]);
        let rr = beta * (policy_rejected[i] - ref_rejected[i]);
        let h = rc - rr;
        s.loss += -(1.0 - label_smoothing) * log_sigmoid_f64(h) - label_smoothing * log_sigmoid_f64(-h);
        s.reward_chosen += rc;
        s.reward_rejected += rr;
        s.accuracy += if rc > rr { 1.0 } else { 0.0 };
        s.logps_chosen += policy_chosen[i];
        s.logps_rejected += policy_rejected[i];
    }
    let n = n as f64;
    s.loss /= n;
    s.reward_chosen /= n;
    s.reward_rejected /= n;
    s.accuracy /= n;
    s.logps_chosen /= n;
    s.logps_rejected /= n;
    s.margin = s.reward_chosen - s.reward_rejected;
    s
}

/// [`dpo_loss`]'s loss on tensors (differentiable in the policy log-probs): all inputs `[batch]`.
pub fn dpo_loss_tensor<B: Backend>(
    policy_chosen: Tensor<B, 1>,
    policy_rejected: Tensor<B, 1>,
    ref_chosen: Tensor<B, 1>,
    ref_rejected: Tensor<B, 1>,
    beta: f64,
    label_smoothing: f64,
) -> Tensor<B, 1> {
    let h = policy_chosen.sub(ref_chosen).sub(policy_rejected.sub(ref_rejected)).mul_scalar(beta); // [batch]
    let pos = log_sigmoid(h.clone()).mul_scalar(-(1.0 - label_smoothing)); // [batch]
    let neg = log_sigmoid(h.neg()).mul_scalar(-label_smoothing); // [batch]
    pos.add(neg).mean() // [1]
}

/// One preference pair ready for the model: the image and both token rows.
#[derive(Clone, Debug)]
pub struct PairExample<'a> {
    pub image: &'a Sample,
    /// Prompt tokens + `<|begin|>`.
    pub prefix: Vec<u32>,
    /// Code tokens (+ `<|end|>` if the sample finished).
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// Token rows `[chosen_0..chosen_b, rejected_0..rejected_b]` of a batch of pairs.
pub fn pair_token_batch(pairs: &[&PairExample], pad: u32) -> TokenBatch {
    let rows: Vec<(Vec<u32>, Vec<u32>)> = pairs
        .iter()
        .map(|p| (p.prefix.clone(), p.chosen.clone()))
        .chain(pairs.iter().map(|p| (p.prefix.clone(), p.rejected.clone())))
        .collect();
    TokenBatch::from_rows(&rows, pad)
}

/// Summed code log-probs of `[chosen; rejected]` with each image encoded once: `[2·batch]`.
pub fn pair_logprobs<B: Backend>(model: &Vlm<B>, patches: Tensor<B, 3>, tokens: &TokenBatch) -> Tensor<B, 1> {
    let img = model.encode_image(patches); // [batch, n_img, hidden]
    let img = Tensor::cat(vec![img.clone(), img], 0); // [2·batch, n_img, hidden]: chosen rows, then rejected rows
    model.sequence_logprobs(img, tokens) // [2·batch]
}

fn to_vec<B: Backend>(t: Tensor<B, 1>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().expect("f64 data")
}

/// Reference log-probs (chosen, rejected) of a batch of pairs, no gradient.
pub fn reference_logprobs<B: Backend>(reference: &Vlm<B>, c: &VlmConfig, pairs: &[&PairExample], pad: u32, device: &B::Device) -> Vec<(f64, f64)> {
    let imgs: Vec<&Sample> = pairs.iter().map(|p| p.image).collect();
    let tokens = pair_token_batch(pairs, pad);
    let lp = to_vec(pair_logprobs(reference, patches_tensor::<B>(&imgs, c, device), &tokens)); // [2·batch]
    let b = pairs.len();
    (0..b).map(|i| (lp[i], lp[b + i])).collect()
}

/// One DPO optimizer step of `policy` on `pairs` whose reference log-probs are `refs`
/// (plus `nll_weight` × the mean NLL per chosen code token). Returns the updated policy, the batch
/// statistics (of the DPO part) and the gradient norm before clipping.
#[allow(clippy::too_many_arguments)]
pub fn dpo_train_step<AB: AutodiffBackend>(
    policy: Vlm<AB>,
    opt: &mut AdamW<AB::InnerBackend>,
    c: &VlmConfig,
    pairs: &[&PairExample],
    refs: &[(f64, f64)],
    beta: f64,
    label_smoothing: f64,
    nll_weight: f64,
    lr: f64,
    pad: u32,
    device: &AB::Device,
) -> (Vlm<AB>, DpoStats, f64) {
    let b = pairs.len();
    let imgs: Vec<&Sample> = pairs.iter().map(|p| p.image).collect();
    let tokens = pair_token_batch(pairs, pad);
    let lp = pair_logprobs(&policy, patches_tensor::<AB>(&imgs, c, device), &tokens); // [2·batch]
    let pc = lp.clone().narrow(0, 0, b); // [batch]
    let pr = lp.narrow(0, b, b); // [batch]
    let rc_v: Vec<f32> = refs.iter().map(|r| r.0 as f32).collect();
    let rr_v: Vec<f32> = refs.iter().map(|r| r.1 as f32).collect();
    let rc = Tensor::<AB, 1>::from_floats(rc_v.as_slice(), device); // [batch]
    let rr = Tensor::<AB, 1>::from_floats(rr_v.as_slice(), device); // [batch]
    let pcv = to_vec(pc.clone().inner());
    let prv = to_vec(pr.clone().inner());
    let n_chosen: usize = pairs.iter().map(|p| p.chosen.len()).sum();
    let nll = pc.clone().sum().neg().div_scalar(n_chosen.max(1) as f64); // [1]
    let mut loss = dpo_loss_tensor(pc, pr, rc, rr, beta, label_smoothing); // [1]
    if nll_weight > 0.0 {
        loss = loss.add(nll.mul_scalar(nll_weight));
    }
    let stats = dpo_loss(&pcv, &prv, &refs.iter().map(|r| r.0).collect::<Vec<_>>(), &refs.iter().map(|r| r.1).collect::<Vec<_>>(), beta, label_smoothing);
    let grads = GradientsParams::from_grads(loss.backward(), &policy);
    let (policy, gnorm) = opt.step(policy, grads, lr);
    (policy, stats, gnorm)
}

/// One row of the DPO `metrics.parquet`: a training step (`loss`, `rewards/*`, `logps/*`) or the
/// rollouts of a round (`rollout/*`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DpoMetricRow {
    pub step: usize,
    pub round: usize,
    pub loss: Option<f64>,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: Option<f64>,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: Option<f64>,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: Option<f64>,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: Option<f64>,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: Option<f64>,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub seconds: f64,
    #[serde(rename = "rollout/reward_mean")]
    pub rollout_reward_mean: Option<f64>,
    #[serde(rename = "rollout/vsr")]
    pub rollout_vsr: Option<f64>,
    #[serde(rename = "rollout/iou_mean_all")]
    pub rollout_iou_mean_all: Option<f64>,
    #[serde(rename = "rollout/pairs")]
    pub rollout_pairs: Option<f64>,
}

/// Write `metrics.jsonl` and `metrics.parquet` (TRL's column names).
pub fn write_dpo_metrics(run: &Path, rows: &[DpoMetricRow]) -> Result<(), TrainError> {
    use polars::prelude::*;
    let io = |p: &Path, e: &dyn std::fmt::Display| TrainError::Io { path: p.display().to_string(), msg: e.to_string() };
    let jl = run.join("metrics.jsonl");
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r).map_err(|e| io(&jl, &e))?);
        s.push('\n');
    }
    std::fs::write(&jl, s).map_err(|e| io(&jl, &e))?;
    let f = |n: &str, g: &dyn Fn(&DpoMetricRow) -> Option<f64>| Column::new(n.into(), rows.iter().map(g).collect::<Vec<_>>());
    let pq = run.join("metrics.parquet");
    let mut df = DataFrame::new(rows.len(), vec![
        Column::new("step".into(), rows.iter().map(|r| r.step as u64).collect::<Vec<_>>()),
        Column::new("round".into(), rows.iter().map(|r| r.round as u64).collect::<Vec<_>>()),
        f("loss", &|r| r.loss),
        f("rewards/chosen", &|r| r.rewards_chosen),
        f("rewards/rejected", &|r| r.rewards_rejected),
        f("rewards/margins", &|r| r.rewards_margins),
        f("rewards/accuracies", &|r| r.rewards_accuracies),
        f("logps/chosen", &|r| r.logps_chosen),
        f("logps/rejected", &|r| r.logps_rejected),
        f("lr", &|r| r.lr),
        f("grad_norm", &|r| r.grad_norm),
        Column::new("seconds".into(), rows.iter().map(|r| r.seconds).collect::<Vec<_>>()),
        f("rollout/reward_mean", &|r| r.rollout_reward_mean),
        f("rollout/vsr", &|r| r.rollout_vsr),
        f("rollout/iou_mean_all", &|r| r.rollout_iou_mean_all),
        f("rollout/pairs", &|r| r.rollout_pairs),
    ])
    .map_err(|e| io(&pq, &e))?;
    let tmp = pq.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, &e))?;
    ParquetWriter::new(file).finish(&mut df).map_err(|e| io(&pq, &e))?;
    std::fs::rename(&tmp, &pq).map_err(|e| io(&pq, &e))
}

/// Rows of `metrics.jsonl` up to `step` (for resume).
pub fn read_dpo_metrics(run: &Path, upto: usize) -> Vec<DpoMetricRow> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<DpoMetricRow>(l).ok())
        .filter(|r| r.step <= upto)
        .collect()
}

/// What a DPO run did.
#[derive(Clone, Debug)]
pub struct DpoOutcome {
    pub run: PathBuf,
    pub step: usize,
    pub resumed_from: Option<usize>,
    pub metrics: Vec<DpoMetricRow>,
    /// Rollout statistics per round (this call's and cached rounds').
    pub rounds: Vec<rollout::RolloutStats>,
}

fn ioerr(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.display().to_string(), msg: e.to_string() }
}

/// Pair examples of a round: prefix + re-encoded program tokens (+ `<|end|>` for finished samples);
/// pairs too long for the model are dropped.
pub fn pair_examples<'a>(
    rollouts: &[Rollout],
    pairs: &[Pair],
    images: &'a [Sample],
    tok: &CodeTokenizer,
    c: &VlmConfig,
) -> Result<Vec<PairExample<'a>>, TrainError> {
    let room = c.max_seq_len.saturating_sub(c.n_image_tokens());
    let code = |r: &Rollout| -> Result<Vec<u32>, TrainError> {
        let mut t = tok.encode(&r.program)?;
        if r.finished {
            t.push(tok.end);
        }
        Ok(t)
    };
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        let (w, l) = (&rollouts[p.chosen], &rollouts[p.rejected]);
        let image = &images[w.image];
        let prefix = prefix_tokens(tok, &image.prompt)?;
        let (cw, cl) = (code(w)?, code(l)?);
        if prefix.len() + cw.len().max(cl.len()) > room || cw.is_empty() && cl.is_empty() {
            continue;
        }
        out.push(PairExample { image, prefix, chosen: cw, rejected: cl });
    }
    Ok(out)
}

fn save_reference<B: Backend>(run: &Path, model: &Vlm<B>, round: usize) -> Result<(), TrainError> {
    let p = run.join("reference.safetensors");
    let tmp = run.join("reference.safetensors.tmp");
    weights::save_module(model, &tmp)?;
    std::fs::rename(&tmp, &p).map_err(|e| ioerr(&p, e))?;
    let j = run.join("reference.json");
    std::fs::write(&j, format!("{{\"round\": {round}}}\n")).map_err(|e| ioerr(&j, e))
}

/// Train (or resume) DPO in `run`, starting from the SFT weights `init` (`model.safetensors`), with
/// full fine-tuning. `images` are the training images (at model resolution or any size); `stop_at`
/// ends after that step.
#[allow(clippy::too_many_arguments)]
pub fn train_dpo<AB: AutodiffBackend>(
    run: &Path,
    cfg: &DpoConfig,
    c: &VlmConfig,
    tok: &CodeTokenizer,
    init: &Path,
    images: &[Sample],
    device: &AB::Device,
    stop_at: Option<usize>,
    show_progress: bool,
) -> Result<DpoOutcome, TrainError> {
    train_dpo_adapted::<AB>(run, cfg, c, &Adaptation::default(), tok, init, images, device, stop_at, show_progress)
}

/// As [`train_dpo`], training as `adapt` says. With adapters, the SFT weights are the frozen
/// (quantized) base, the reference is the policy with adapters off, and `reset_reference` is refused.
#[allow(clippy::too_many_arguments)]
pub fn train_dpo_adapted<AB: AutodiffBackend>(
    run: &Path,
    cfg: &DpoConfig,
    c: &VlmConfig,
    adapt: &Adaptation,
    tok: &CodeTokenizer,
    init: &Path,
    images: &[Sample],
    device: &AB::Device,
    stop_at: Option<usize>,
    show_progress: bool,
) -> Result<DpoOutcome, TrainError> {
    adapt.validate(c).map_err(TrainError::Data)?;
    validate_with(cfg, adapt).map_err(TrainError::Data)?;
    cfg.validate().map_err(TrainError::Data)?;
    if images.is_empty() {
        return Err(TrainError::Data("DPO needs training images".into()));
    }
    std::fs::create_dir_all(run).map_err(|e| ioerr(run, e))?;
    AB::seed(device, cfg.seed);
    // the base is the SFT model, rebuilt (and quantized) the same way on resume
    let mut policy = adapt.prepare(weights::load_module(Vlm::<AB>::new(c, device), init)?, device)?;
    let mut opt = AdamW::<AB::InnerBackend>::new(cfg.optim.clone());
    let (mut step, mut tokens, mut secs0, mut resumed_from) = (0usize, 0u64, 0.0f64, None);
    if let Some(dir) = checkpoint::latest(run)? {
        let meta = checkpoint::read_meta(&dir)?;
        if &meta.config != c {
            return Err(TrainError::Data(format!("{}: checkpoint has another model config; use a new run name", dir.display())));
        }
        check_adaptation(&dir, &meta.adapt, adapt)?;
        policy = weights::load_module(policy, &dir.join("model.safetensors"))?;
        let st = weights::read_safetensors(&dir.join("optimizer.safetensors"))?;
        opt.load_state(meta.step, &st, device);
        (step, tokens, secs0, resumed_from) = (meta.step, meta.tokens, meta.seconds, Some(meta.step));
    }
    // the frozen reference: the SFT weights, or the policy at the start of the current round;
    // with adapters (None here) the policy with its adapters off
    let ref_file = run.join("reference.safetensors");
    let mut reference: Option<Vlm<AB::InnerBackend>> = if !adapt.is_full() {
        None
    } else if cfg.reset_reference && step > 0 && ref_file.exists() {
        Some(weights::load_module(Vlm::new(c, device), &ref_file)?)
    } else {
        Some(weights::load_module(Vlm::new(c, device), init)?)
    };
    let mut metrics = read_dpo_metrics(run, step);
    let total = cfg.total_steps();
    let end = stop_at.map_or(total, |s| s.min(total));
    let t0 = Instant::now();
    let mut round_stats = Vec::new();
    let pb = if show_progress { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(step as u64);
    while step < end {
        let round = step / cfg.steps_per_round;
        let round_start = round * cfg.steps_per_round;
        if cfg.reset_reference && round > 0 && step == round_start {
            let r = policy.valid();
            save_reference(run, &r, round)?;
            reference = Some(r);
        }
        // 1. rollouts of this round (cached)
        let rpath = run.join("rollouts").join(format!("round-{round:02}.parquet"));
        let round_imgs: Vec<usize> = rollout::round_images(images.len(), cfg.images_per_round, cfg.seed, round);
        let imgs: Vec<Sample> = round_imgs.iter().map(|&i| images[i].clone()).collect();
        let rs = if rpath.exists() {
            rollout::read_rollouts(&rpath).map_err(|e| TrainError::Data(e.to_string()))?
        } else {
            pb.set_message(format!("round {round}: sampling {} × {} programs", imgs.len(), cfg.rollout.k));
            let t = Instant::now();
            let inner = policy.valid();
            let rs = rollout::sample_rollouts(&inner, c, tok, &imgs, &cfg.rollout, cfg.seed ^ ((round as u64) << 32), round, step, device, |_| {})
                .map_err(|e| TrainError::Data(e.to_string()))?;
            rollout::write_rollouts(&rpath, &rs).map_err(|e| TrainError::Data(e.to_string()))?;
            pb.println(format!("round {round}: {} rollouts in {:.1} s", rs.len(), t.elapsed().as_secs_f64()));
            rs
        };
        // 2. pairs
        let keep = cfg.pairs.hard_threshold.map(|t| rollout::hard_examples(&rs, t));
        let pairs = rollout::select_pairs(&rs, &cfg.pairs, keep.as_ref(), cfg.seed ^ round as u64);
        let examples = pair_examples(&rs, &pairs, &imgs, tok, c)?;
        let st = rollout::rollout_stats(&rs, examples.len());
        pb.println(format!(
            "round {round}: reward mean {:.3}  VSR {:.3}  IoU(all) {:.3}  {} pairs",
            st.reward_mean, st.vsr, st.iou_mean_all, st.pairs
        ));
        if !metrics.iter().any(|m| m.round == round && m.rollout_pairs.is_some()) {
            metrics.push(DpoMetricRow {
                step: round_start,
                round,
                seconds: secs0 + t0.elapsed().as_secs_f64(),
                rollout_reward_mean: Some(st.reward_mean),
                rollout_vsr: Some(st.vsr),
                rollout_iou_mean_all: Some(st.iou_mean_all),
                rollout_pairs: Some(st.pairs as f64),
                ..Default::default()
            });
            write_dpo_metrics(run, &metrics)?;
        }
        round_stats.push(st);
        let round_end = (round_start + cfg.steps_per_round).min(end);
        if examples.is_empty() {
            pb.println(format!("round {round}: no pair has a reward gap ≥ {}; the round trains nothing", cfg.pairs.margin));
            step = round_end;
            let meta = CheckpointMeta { step, tokens, seconds: secs0 + t0.elapsed().as_secs_f64(), config: c.clone(), adapt: adapt.clone() };
            checkpoint::save(run, &policy, &opt.state(), &meta, cfg.keep_checkpoints)?;
            continue;
        }
        // 3. DPO steps; reference log-probs computed once per pair per round
        let mut ref_cache: Vec<Option<(f64, f64)>> = vec![None; examples.len()];
        let mut perm = None;
        while step < round_end {
            let local = step - round_start;
            let idx = sample_indices(cfg.seed ^ (round as u64 + 1), examples.len(), local * cfg.batch_pairs, cfg.batch_pairs, &mut perm);
            let missing: Vec<usize> = idx.iter().copied().filter(|&i| ref_cache[i].is_none()).collect();
            if !missing.is_empty() {
                let ms: Vec<&PairExample> = missing.iter().map(|&i| &examples[i]).collect();
                let ref_lp = match &reference {
                    Some(r) => reference_logprobs(r, c, &ms, tok.pad, device),
                    None => with_adapters_disabled(|| reference_logprobs(&policy.valid(), c, &ms, tok.pad, device)),
                };
                for (i, v) in missing.iter().zip(ref_lp) {
                    ref_cache[*i] = Some(v);
                }
            }
            let batch: Vec<&PairExample> = idx.iter().map(|&i| &examples[i]).collect();
            let refs: Vec<(f64, f64)> = idx.iter().map(|&i| ref_cache[i].expect("reference log-probs computed above")).collect();
            let lr = lr_at(&cfg.optim, step, total);
            let (p, s, gnorm) = dpo_train_step(policy, &mut opt, c, &batch, &refs, cfg.beta, cfg.label_smoothing, cfg.nll_weight, lr, tok.pad, device);
            policy = p;
            tokens += batch.iter().map(|p| (p.chosen.len() + p.rejected.len()) as u64).sum::<u64>();
            step += 1;
            let secs = secs0 + t0.elapsed().as_secs_f64();
            pb.set_position(step as u64);
            pb.set_message(format!("round {round} loss {:.4} margin {:.3} acc {:.2}", s.loss, s.margin, s.accuracy));
            if step % cfg.log_every.max(1) == 0 || step == round_end {
                metrics.push(DpoMetricRow {
                    step,
                    round,
                    loss: Some(s.loss),
                    rewards_chosen: Some(s.reward_chosen),
                    rewards_rejected: Some(s.reward_rejected),
                    rewards_margins: Some(s.margin),
                    rewards_accuracies: Some(s.accuracy),
                    logps_chosen: Some(s.logps_chosen),
                    logps_rejected: Some(s.logps_rejected),
                    lr: Some(lr),
                    grad_norm: Some(gnorm),
                    seconds: secs,
                    ..Default::default()
                });
                write_dpo_metrics(run, &metrics)?;
            }
            if step % cfg.checkpoint_every.max(1) == 0 || step == round_end {
                let meta = CheckpointMeta { step, tokens, seconds: secs, config: c.clone(), adapt: adapt.clone() };
                checkpoint::save(run, &policy, &opt.state(), &meta, cfg.keep_checkpoints)?;
            }
        }
    }
    pb.finish_and_clear();
    if step == total {
        super::sft::save_final(run, &adapt.export(policy.valid(), run, device)?, c)?;
    }
    Ok(DpoOutcome { run: run.to_path_buf(), step, resumed_from, metrics, rounds: round_stats })
}

/// Make `run` reuse the finished SFT run `src`: its data folder (symlinked), tokenizer, model config,
/// weights and SFT metrics (copied), so the recipe's data, tokenizer and SFT stages are "reused".
/// Evaluations are not copied: the recipe evaluates the SFT model itself, with its own decoding.
pub fn adopt_sft_run(src: &Path, run: &Path) -> Result<Vec<String>, TrainError> {
    if !src.join("model.safetensors").exists() || !src.join("tokenizer.json").exists() {
        return Err(TrainError::Data(format!(
            "dpo.sft_run = {:?}: no finished SFT run there (model.safetensors + tokenizer.json); run its recipe first, e.g. cadvlm recipe recipes/sft.toml",
            src
        )));
    }
    std::fs::create_dir_all(run).map_err(|e| ioerr(run, e))?;
    let mut done = Vec::new();
    let data = run.join("data");
    if !data.exists() && src.join("data").exists() {
        let abs = std::fs::canonicalize(src.join("data")).map_err(|e| ioerr(&src.join("data"), e))?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&abs, &data).map_err(|e| ioerr(&data, e))?;
        #[cfg(not(unix))]
        return Err(TrainError::Data(format!("dpo.sft_run: cannot link {} on this platform; copy it to {}", abs.display(), data.display())));
        done.push("data".to_string());
    }
    for f in ["tokenizer.json", "config.json", "model.safetensors", "metrics.jsonl", "metrics.parquet"] {
        let (a, b) = (src.join(f), run.join(f));
        if a.exists() && !b.exists() {
            let tmp = run.join(format!("{f}.tmp"));
            std::fs::copy(&a, &tmp).map_err(|e| ioerr(&a, e))?;
            std::fs::rename(&tmp, &b).map_err(|e| ioerr(&b, e))?;
            done.push(f.to_string());
        }
    }
    Ok(done)
}

/// The recipe's `dpo` stage: train (or resume) DPO into `run/dpo/` from `run/model.safetensors`, then
/// evaluate the DPO model on the recipe's evaluation sets with the recipe's decoding, into
/// `run/dpo/eval/<set>/` (the SFT model's results are in `run/eval/<set>/`).
pub fn recipe_stage<AB: AutodiffBackend>(
    r: &crate::recipe::Recipe,
    cfg: &DpoConfig,
    run_dir: &Path,
    tok: &CodeTokenizer,
    c: &VlmConfig,
    device: &AB::Device,
    show_progress: bool,
    stages: &mut Vec<(String, String, String)>,
) -> Result<(), TrainError> {
    use crate::eval::{EvalSummary, evaluate_samples, load_samples, summarize, write_results_parquet};
    let dir = run_dir.join("dpo");
    let init = run_dir.join("model.safetensors");
    if dir.join("model.safetensors").exists() {
        stages.push(("dpo".into(), "reused".into(), dir.display().to_string()));
    } else {
        let pool = (cfg.images_per_round * cfg.rounds).min(r.data.n_train.max(1));
        let images = load_samples(&crate::recipe::split_dir(r, run_dir, "train"), Some(pool))?;
        let t = Instant::now();
        let out = train_dpo_adapted::<AB>(&dir, cfg, c, &r.adaptation(), tok, &init, &images, device, None, show_progress)?;
        let last = out.metrics.iter().rev().find(|m| m.loss.is_some());
        stages.push((
            "dpo".into(),
            "done".into(),
            format!(
                "{} steps in {:.0} s, last loss {:.4}, accuracy {:.2}",
                out.step,
                t.elapsed().as_secs_f64(),
                last.and_then(|m| m.loss).unwrap_or(f64::NAN),
                last.and_then(|m| m.rewards_accuracies).unwrap_or(f64::NAN)
            ),
        ));
    }
    // evaluate the DPO model exactly as the eval stage evaluated the SFT model
    let model = weights::load_module(Vlm::<AB::InnerBackend>::new(c, device), &dir.join("model.safetensors"))?;
    let mut sets: Vec<(String, PathBuf)> = Vec::new();
    if r.eval.synth_test {
        sets.push(("synth-test".into(), crate::recipe::split_dir(r, run_dir, "test")));
    }
    for d in &r.eval.dirs {
        sets.push((d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "dir".into()), d.clone()));
    }
    let eval_root = dir.join("eval");
    std::fs::create_dir_all(&eval_root).map_err(|e| ioerr(&eval_root, e))?;
    let map: std::collections::BTreeMap<&str, String> = sets
        .iter()
        .map(|(n, d)| (n.as_str(), std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()).display().to_string()))
        .collect();
    let sj = eval_root.join("sets.json");
    std::fs::write(&sj, serde_json::to_string_pretty(&map).unwrap_or_default()).map_err(|e| ioerr(&sj, e))?;
    for (name, data) in sets {
        let out = eval_root.join(&name);
        let ej = out.join("eval.json");
        if ej.exists() {
            stages.push((format!("dpo eval {name}"), "reused".into(), ej.display().to_string()));
            continue;
        }
        std::fs::create_dir_all(&out).map_err(|e| ioerr(&out, e))?;
        let samples = load_samples(&data, r.eval.limit)?;
        let gen_cfg = crate::model::generate::GenerateConfig {
            max_new_tokens: r.eval.max_new_tokens,
            temperature: r.eval.temperature,
            top_p: r.eval.top_p,
            seed: r.sft.seed,
        };
        let t = Instant::now();
        let res = evaluate_samples(&model, c, tok, &samples, &gen_cfg, r.eval.samples, r.eval.batch, device, |_| {})?;
        let s: EvalSummary = summarize(&res, r.eval.samples, t.elapsed().as_secs_f64());
        write_results_parquet(&out.join("samples.parquet"), &res)?;
        std::fs::write(&ej, serde_json::to_string_pretty(&s).unwrap_or_default()).map_err(|e| ioerr(&ej, e))?;
        stages.push((
            format!("dpo eval {name}"),
            "done".into(),
            format!("n {} VSR {:.3} IoU_best(all) {:.3} IoU_unitcube(all) {:.3}", s.n, s.vsr, s.iou_best_mean_all, s.iou_unitcube_mean_all),
        ));
    }
    Ok(())
}

/// The scalar of a one-element tensor (used by tests and callers that log).
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_matches_hand_computed_values() {
        // h = β[(πw − rw) − (πl − rl)] = 0.1·[(−10 + 12) − (−20 + 18)] = 0.4
        let s = dpo_loss(&[-10.0], &[-20.0], &[-12.0], &[-18.0], 0.1, 0.0);
        // −log σ(0.4) = ln(1 + e^−0.4) = 0.513015...
        assert!((s.loss - 0.513_015_3).abs() < 1e-6, "{s:?}");
        assert!((s.reward_chosen - 0.2).abs() < 1e-12 && (s.reward_rejected + 0.2).abs() < 1e-12);
        assert!((s.margin - 0.4).abs() < 1e-12);
        assert_eq!(s.accuracy, 1.0);
        assert_eq!((s.logps_chosen, s.logps_rejected), (-10.0, -20.0));
        // policy = reference: h = 0, loss = ln 2 for any smoothing
        let s = dpo_loss(&[-3.0, -5.0], &[-4.0, -1.0], &[-3.0, -5.0], &[-4.0, -1.0], 0.5, 0.2);
        assert!((s.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(s.accuracy, 0.0);
        // label smoothing ε = 0.1, h = 0.4: 0.9·ln(1+e^−0.4) + 0.1·ln(1+e^0.4) = 0.461714 + 0.091301
        let s = dpo_loss(&[-10.0], &[-20.0], &[-12.0], &[-18.0], 0.1, 0.1);
        assert!((s.loss - (0.9 * 0.513_015_3 + 0.1 * 0.913_015_3)).abs() < 1e-6, "{s:?}");
        // a wrongly ordered pair: h = 1·(−1 − 1) = −2, loss = ln(1 + e²) = 2.126928
        let s = dpo_loss(&[-6.0], &[-4.0], &[-5.0], &[-5.0], 1.0, 0.0);
        assert!((s.loss - 2.126_928_0).abs() < 1e-6);
        assert_eq!(s.accuracy, 0.0);
        // large |h| stays finite
        let s = dpo_loss(&[0.0], &[-1e4], &[0.0], &[0.0], 1.0, 0.0);
        assert!(s.loss >= 0.0 && s.loss < 1e-12);
        let s = dpo_loss(&[-1e4], &[0.0], &[0.0], &[0.0], 1.0, 0.0);
        assert!((s.loss - 1e4).abs() < 1e-6);
    }

    #[test]
    fn tensor_loss_equals_pure_loss() {
        type B = burn::backend::NdArray<f32>;
        let d = Default::default();
        let pc = [-10.0, -3.0, -7.5];
        let pr = [-20.0, -2.0, -7.0];
        let rc = [-12.0, -3.5, -7.0];
        let rr = [-18.0, -2.5, -8.0];
        let t = |v: &[f64]| Tensor::<B, 1>::from_floats(v.iter().map(|&x| x as f32).collect::<Vec<_>>().as_slice(), &d);
        for (beta, ls) in [(0.1, 0.0), (0.5, 0.2), (2.0, 0.05)] {
            let want = dpo_loss(&pc, &pr, &rc, &rr, beta, ls).loss;
            let got = scalar(dpo_loss_tensor(t(&pc), t(&pr), t(&rc), t(&rr), beta, ls));
            assert!((got - want).abs() < 1e-5, "β {beta} ε {ls}: {got} vs {want}");
        }
    }

    #[test]
    fn validate_rejects_bad_settings() {
        assert!(DpoConfig::default().validate().is_ok());
        let bad = |f: &dyn Fn(&mut DpoConfig)| {
            let mut c = DpoConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(&|c| c.rollout.k = 1));
        assert!(bad(&|c| c.rollout.temperature = 0.0));
        assert!(bad(&|c| c.beta = 0.0));
        assert!(bad(&|c| c.label_smoothing = 0.5));
        assert!(bad(&|c| c.steps_per_round = 0));
    }
}
