//! Direct Preference Optimization on executed-IoU preferences, for any [`Policy`]: iterative rounds
//! of (sample K programs per image with the current policy → execute and score them in the sandbox
//! → pairs → DPO steps against a frozen reference).
//!
//! - The loss is `train::dpo_loss` (sigmoid DPO with cDPO's label smoothing, plus an optional RPO
//!   NLL term on the chosen programs); log-probs are summed over the program's tokens only.
//! - The reference is the start model, frozen; with `reset_reference` it becomes the policy at the
//!   start of each round. With LoRA / QLoRA the reference is the policy with its adapters off.
//! - Per round, the rollouts are cached as `rollouts/round-NN.parquet`; checkpoints are atomic and a
//!   stopped run resumes from the last one (the pair order is a pure function of the step).
//! - `metrics.parquet` / `metrics.jsonl` use TRL's names: `loss`, `rewards/chosen`, `rewards/rejected`,
//!   `rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected`, plus `rollout/*`
//!   rows at the start of each round.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::adapt::Adaptation;
use super::metrics::{DpoMetricRow, read_dpo_metrics, write_dpo_metrics};
use super::optim::{OptimConfig, lr_at};
use super::policy::{DpoStep, PairExample, Policy, Progress, VlmPolicy};
use super::rollout::{self, Pair, PairConfig, Rollout, RolloutConfig};
use super::sft::sample_indices;
use super::{TrainError, ioerr};
use crate::data::Sample;
use crate::exec::Executor;
use crate::model::VlmConfig;
use crate::model::tokenizer::CodeTokenizer;

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
            optim: OptimConfig {
                lr: 1e-4,
                warmup_steps: 5,
                min_lr_ratio: 0.1,
                weight_decay: 0.0,
                ..Default::default()
            },
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
            return Err(
                "dpo.rollout.k must be ≥ 2: a pair needs two samples of the same image".into(),
            );
        }
        if self.rollout.temperature <= 0.0 {
            return Err(
                "dpo.rollout.temperature must be > 0: greedy decoding gives K identical programs"
                    .into(),
            );
        }
        if self.rollout.reward == rollout::RewardKind::Image {
            self.rollout
                .image_score
                .validate()
                .map_err(|e| format!("dpo.rollout.image_score: {e}"))?;
            if !(32..=1024).contains(&self.rollout.render_size) {
                return Err(format!(
                    "dpo.rollout.render_size = {}: use 32..=1024 pixels",
                    self.rollout.render_size
                ));
            }
        }
        if !(self.beta > 0.0) {
            return Err(format!(
                "dpo.beta = {}: use a positive value, e.g. 0.1",
                self.beta
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!(
                "dpo.label_smoothing = {}: use a value in [0, 0.5)",
                self.label_smoothing
            ));
        }
        if !(self.optim.lr > 0.0 && self.optim.lr < 1.0) {
            return Err(format!(
                "dpo.optim.lr = {}: use a value in (0, 1), e.g. 1e-4",
                self.optim.lr
            ));
        }
        if !(self.nll_weight >= 0.0) {
            return Err(format!(
                "dpo.nll_weight = {}: use a value ≥ 0",
                self.nll_weight
            ));
        }
        if self.pairs.margin < 0.0 {
            return Err(format!(
                "dpo.pairs.margin = {}: use a value ≥ 0",
                self.pairs.margin
            ));
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

/// Pair examples of a round (the policy's token rows of each pair; pairs too long for the model are
/// dropped).
pub fn pair_examples<'a>(
    policy: &dyn Policy,
    rollouts: &[Rollout],
    pairs: &[Pair],
    images: &'a [Sample],
) -> Result<Vec<PairExample<'a>>, TrainError> {
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        let (w, l) = (&rollouts[p.chosen], &rollouts[p.rejected]);
        if let Some(e) = policy.encode_pair(
            &images[w.image],
            (&w.program, w.finished),
            (&l.program, l.finished),
        )? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Train (or resume) DPO of any `policy` in `run` on the training `images`; rollouts are executed by
/// `executor`. `stop_at` ends after that step. The final model is written to `run` by
/// [`Policy::save_final`] when the last step is done.
pub fn train_dpo_policy(
    policy: &mut dyn Policy,
    run: &Path,
    cfg: &DpoConfig,
    images: &[Sample],
    executor: &dyn Executor,
    stop_at: Option<usize>,
    show_progress: bool,
) -> Result<DpoOutcome, TrainError> {
    cfg.validate().map_err(TrainError::Data)?;
    if images.is_empty() {
        return Err(TrainError::Data("DPO needs training images".into()));
    }
    std::fs::create_dir_all(run).map_err(|e| ioerr(run, e))?;
    // the frozen reference: the start weights, or the policy at the start of the current round;
    // with adapters, the policy with its adapters off
    let ref_file = run.join("reference.safetensors");
    let full = policy.freeze_reference(None).is_ok();
    let resumed = policy.resume(run)?;
    let Progress {
        mut step,
        mut tokens,
        seconds: secs0,
    } = resumed.unwrap_or_default();
    if full && cfg.reset_reference && step > 0 && ref_file.exists() {
        policy.load_reference(&ref_file)?;
    }
    let mut metrics = read_dpo_metrics(run, step);
    let total = cfg.total_steps();
    let end = stop_at.map_or(total, |s| s.min(total));
    let t0 = Instant::now();
    let mut round_stats = Vec::new();
    let pb = super::step_bar(total, step, show_progress);
    while step < end {
        let round = step / cfg.steps_per_round;
        let round_start = round * cfg.steps_per_round;
        if cfg.reset_reference && round > 0 && step == round_start {
            policy.freeze_reference(Some(&ref_file))?;
            let j = run.join("reference.json");
            std::fs::write(&j, format!("{{\"round\": {round}}}\n")).map_err(|e| ioerr(&j, e))?;
        }
        // 1. rollouts of this round (cached)
        let rpath = run
            .join("rollouts")
            .join(format!("round-{round:02}.parquet"));
        let (imgs, rs) = rollout::round_rollouts(
            &*policy,
            images,
            cfg.images_per_round,
            &cfg.rollout,
            executor,
            cfg.seed,
            round,
            step,
            &rpath,
            &pb,
        )?;
        // 2. pairs
        let keep = cfg
            .pairs
            .hard_threshold
            .map(|t| rollout::hard_examples(&rs, t));
        let pairs = rollout::select_pairs(&rs, &cfg.pairs, keep.as_ref(), cfg.seed ^ round as u64);
        let examples = pair_examples(&*policy, &rs, &pairs, &imgs)?;
        let st = rollout::rollout_stats(&rs, examples.len());
        super::say(
            &pb,
            format!(
                "round {round}: reward mean {:.3}  VSR {:.3}  IoU(all) {:.3}  {} pairs",
                st.reward_mean, st.vsr, st.iou_mean_all, st.pairs
            ),
        );
        if !metrics
            .iter()
            .any(|m| m.round == round && m.rollout_pairs.is_some())
        {
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
            super::say(
                &pb,
                format!(
                    "round {round}: no pair has a reward gap ≥ {}; the round trains nothing",
                    cfg.pairs.margin
                ),
            );
            step = round_end;
            policy.save_checkpoint(
                run,
                Progress {
                    step,
                    tokens,
                    seconds: secs0 + t0.elapsed().as_secs_f64(),
                },
                cfg.keep_checkpoints,
            )?;
            continue;
        }
        // 3. DPO steps. The reference log-probs of every pair are computed once per round, in
        // batches of `batch_pairs` in pair order: the same numbers whatever step a run resumes at.
        let mut ref_lp: Vec<(f64, f64)> = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(cfg.batch_pairs) {
            let ms: Vec<&PairExample> = chunk.iter().collect();
            ref_lp.extend(policy.reference_logprobs(&ms)?);
        }
        let mut perm = None;
        while step < round_end {
            let local = step - round_start;
            let idx = sample_indices(
                cfg.seed ^ (round as u64 + 1),
                examples.len(),
                local * cfg.batch_pairs,
                cfg.batch_pairs,
                &mut perm,
            );
            let batch: Vec<&PairExample> = idx.iter().map(|&i| &examples[i]).collect();
            let refs: Vec<(f64, f64)> = idx.iter().map(|&i| ref_lp[i]).collect();
            let lr = lr_at(&cfg.optim, step, total);
            let hp = DpoStep {
                beta: cfg.beta,
                label_smoothing: cfg.label_smoothing,
                nll_weight: cfg.nll_weight,
                lr,
            };
            let (s, gnorm) = policy.dpo_step(&batch, &refs, &hp)?;
            tokens += batch
                .iter()
                .map(|p| (p.chosen.len() + p.rejected.len()) as u64)
                .sum::<u64>();
            step += 1;
            let secs = secs0 + t0.elapsed().as_secs_f64();
            pb.set_position(step as u64);
            pb.set_message(format!(
                "round {round} loss {:.4} margin {:.3} acc {:.2}",
                s.loss, s.margin, s.accuracy
            ));
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
                policy.save_checkpoint(
                    run,
                    Progress {
                        step,
                        tokens,
                        seconds: secs,
                    },
                    cfg.keep_checkpoints,
                )?;
            }
        }
    }
    pb.finish_and_clear();
    if step == total {
        policy.save_final(run)?;
    }
    Ok(DpoOutcome {
        run: run.to_path_buf(),
        step,
        resumed_from: resumed.map(|p| p.step),
        metrics,
        rounds: round_stats,
    })
}

/// DPO of the small VLM from the SFT weights `init`, trained as `adapt` says (with adapters, the SFT
/// weights are the frozen, possibly quantized base and `reset_reference` is refused), rollouts
/// executed by `cfg.rollout.sandbox`: the [`VlmPolicy`] made, then [`train_dpo_policy`].
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
    validate_with(cfg, adapt).map_err(TrainError::Data)?;
    AB::seed(device, cfg.seed);
    // the base is the SFT model, rebuilt (and quantized) the same way on resume
    let mut policy = VlmPolicy::<AB>::from_weights(init, c, tok, adapt, cfg.optim.clone(), device)?;
    let executor = crate::exec::executor(&cfg.rollout.sandbox)?;
    train_dpo_policy(
        &mut policy,
        run,
        cfg,
        images,
        executor.as_ref(),
        stop_at,
        show_progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
