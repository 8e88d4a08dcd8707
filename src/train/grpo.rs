//! Online RL on the executed reward for any [`Policy`]: GRPO in its Dr. GRPO form. Per round, a group
//! of G sampled programs per training image from the current policy, each executed in the sandbox and
//! rewarded (IoU against the target, or the image score); advantages relative to the group (mean-centred,
//! no std division and no length normalisation unless asked); then optimizer steps of the clipped
//! surrogate on the sampled tokens with the sampling policy's log-probs, plus an optional KL term to a
//! frozen reference (`train::grpo_loss`).
//!
//! - Groups whose rewards are all equal carry no signal and are skipped; with `hard_threshold` only
//!   images whose mean reward is below it are kept (cadrille's hard-example selection).
//! - Rollouts are cached as `rollouts/round-NN.parquet` and the sampling policy's per-token log-probs as
//!   `rollouts/round-NN.logps.json`, so a run stopped mid-round resumes exactly (the batch order is a
//!   pure function of the step); checkpoints are atomic.
//! - `metrics.parquet` / `metrics.jsonl` use TRL's GRPO names: `loss`, `kl`, `clip_ratio/region_mean`,
//!   `entropy`, `completions/mean_length`, and per round `reward`, `reward_std`,
//!   `frac_reward_zero_std` with `rollout/*`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::adapt::Adaptation;
use super::grpo_loss::{GrpoLossConfig, LossType, group_advantages};
use super::metrics::{GrpoMetricRow, read_grpo_metrics, write_grpo_metrics};
use super::optim::{OptimConfig, lr_at};
use super::policy::{CompletionExample, GrpoStep, Policy, Progress, VlmPolicy};
use super::rollout::{self, Rollout, RolloutConfig};
use super::sft::sample_indices;
use super::{TrainError, ioerr};
use crate::data::Sample;
use crate::exec::Executor;
use crate::model::VlmConfig;
use crate::model::tokenizer::CodeTokenizer;

/// `[grpo]` of a recipe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// A finished SFT run folder to start from (as `dpo.sft_run`); None: this recipe's own SFT stage.
    pub sft_run: Option<PathBuf>,
    /// Sample → train rounds.
    pub rounds: usize,
    /// Training images sampled per round; each gets a group of `rollout.k` programs.
    pub images_per_round: usize,
    /// Optimizer steps per round (the round's completions are cycled in a seeded order).
    pub steps_per_round: usize,
    /// Completions per optimizer step.
    pub batch_completions: usize,
    /// KL weight β to the frozen reference (the start model; with adapters, adapters off). 0: none.
    pub beta: f64,
    /// Clip range of the ratio: `[1 − clip_low, 1 + clip_high]`.
    pub clip_low: f64,
    pub clip_high: f64,
    /// `dr_grpo` (Σ tokens / (batch · rollout.max_new_tokens)) or `grpo` (per-completion token mean).
    pub loss_type: LossType,
    /// Divide advantages by the group's reward std (the original GRPO; Dr. GRPO: false).
    pub scale_rewards: bool,
    /// Keep only images whose mean rollout reward is below this (hard examples); None: all.
    pub hard_threshold: Option<f64>,
    pub optim: OptimConfig,
    pub log_every: usize,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub rollout: RolloutConfig,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            sft_run: None,
            rounds: 3,
            images_per_round: 48,
            steps_per_round: 12,
            batch_completions: 32,
            beta: 0.0,
            clip_low: 0.2,
            clip_high: 0.2,
            loss_type: LossType::DrGrpo,
            scale_rewards: false,
            hard_threshold: None,
            optim: OptimConfig {
                lr: 1e-4,
                warmup_steps: 3,
                min_lr_ratio: 0.1,
                weight_decay: 0.0,
                ..Default::default()
            },
            log_every: 1,
            checkpoint_every: 6,
            keep_checkpoints: 2,
            seed: 0,
            rollout: RolloutConfig::default(),
        }
    }
}

impl GrpoConfig {
    /// Every check that can fail before work starts.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("grpo.rounds", self.rounds),
            ("grpo.images_per_round", self.images_per_round),
            ("grpo.steps_per_round", self.steps_per_round),
            ("grpo.batch_completions", self.batch_completions),
            ("grpo.rollout.batch", self.rollout.batch),
            ("grpo.rollout.max_new_tokens", self.rollout.max_new_tokens),
        ] {
            if v == 0 {
                return Err(format!("{k} must be > 0"));
            }
        }
        if self.rollout.k < 2 {
            return Err(format!(
                "grpo.rollout.k = {}: a group needs ≥ 2 samples of the same image (e.g. 8)",
                self.rollout.k
            ));
        }
        if self.rollout.temperature <= 0.0 {
            return Err("grpo.rollout.temperature must be > 0: greedy decoding gives a group of identical programs".into());
        }
        if self.rollout.include_target {
            return Err("grpo.rollout.include_target = true: the target program is not a sample of the policy; GRPO is on-policy, set it to false".into());
        }
        if self.rollout.reward == rollout::RewardKind::Image {
            self.rollout
                .image_score
                .validate()
                .map_err(|e| format!("grpo.rollout.image_score: {e}"))?;
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(format!(
                "grpo.beta = {}: use a value ≥ 0 (0 = no KL term)",
                self.beta
            ));
        }
        for (k, v) in [
            ("grpo.clip_low", self.clip_low),
            ("grpo.clip_high", self.clip_high),
        ] {
            if !(v > 0.0 && v < 1.0) {
                return Err(format!("{k} = {v}: use a value in (0, 1), e.g. 0.2"));
            }
        }
        if !(self.optim.lr > 0.0 && self.optim.lr < 1.0) {
            return Err(format!(
                "grpo.optim.lr = {}: use a value in (0, 1), e.g. 1e-4",
                self.optim.lr
            ));
        }
        Ok(())
    }

    pub fn total_steps(&self) -> usize {
        self.rounds * self.steps_per_round
    }

    fn loss(&self) -> GrpoLossConfig {
        GrpoLossConfig {
            clip_low: self.clip_low,
            clip_high: self.clip_high,
            beta: self.beta,
            loss_type: self.loss_type,
            norm_len: self.rollout.max_new_tokens,
        }
    }
}

/// What a GRPO run did.
#[derive(Clone, Debug)]
pub struct GrpoOutcome {
    pub run: PathBuf,
    pub step: usize,
    pub resumed_from: Option<usize>,
    pub metrics: Vec<GrpoMetricRow>,
}

/// The groups of a round as training rows (pure given the policy's encoding): per kept group, each
/// sample that encodes, with its group-relative advantage. Returns the examples, their advantages and
/// the round's statistics.
pub fn group_examples<'a>(
    policy: &dyn Policy,
    rs: &[Rollout],
    images: &'a [Sample],
    cfg: &GrpoConfig,
) -> Result<(Vec<CompletionExample<'a>>, Vec<f64>, RoundStats), TrainError> {
    let keep = cfg.hard_threshold.map(|t| rollout::hard_examples(rs, t));
    let (mut ex, mut adv) = (Vec::new(), Vec::new());
    let mut st = RoundStats::default();
    let groups = rollout::groups(rs);
    let mut stds = Vec::new();
    for g in &groups {
        let rewards: Vec<f64> = g.iter().map(|&i| rs[i].reward).collect();
        let n = rewards.len() as f64;
        let mean = rewards.iter().sum::<f64>() / n;
        let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        stds.push(std);
        if std < 1e-9 {
            st.zero_std += 1;
            continue;
        }
        if let Some(k) = &keep
            && !k.contains(&rs[g[0]].id)
        {
            continue;
        }
        st.groups += 1;
        for (&i, a) in g.iter().zip(group_advantages(&rewards, cfg.scale_rewards)) {
            let r = &rs[i];
            if let Some(e) = policy.encode_completion(&images[r.image], (&r.program, r.finished))? {
                ex.push(e);
                adv.push(a);
            }
        }
    }
    let n = rs.len().max(1) as f64;
    st.reward = rs.iter().map(|r| r.reward).sum::<f64>() / n;
    st.reward_std = stds.iter().sum::<f64>() / stds.len().max(1) as f64;
    st.frac_zero_std = st.zero_std as f64 / groups.len().max(1) as f64;
    st.vsr = rs.iter().filter(|r| r.failure.is_none()).count() as f64 / n;
    st.iou_mean_all = rs.iter().map(|r| r.iou.unwrap_or(0.0)).sum::<f64>() / n;
    st.completions = ex.len();
    Ok((ex, adv, st))
}

/// Statistics of a round's rollouts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoundStats {
    /// Mean reward over all rollouts.
    pub reward: f64,
    /// Mean over groups of the group's reward std.
    pub reward_std: f64,
    pub frac_zero_std: f64,
    pub zero_std: usize,
    pub vsr: f64,
    pub iou_mean_all: f64,
    /// Groups and completions trained on.
    pub groups: usize,
    pub completions: usize,
}

/// Per-token log-probs of `ex` (the policy's, or the reference's), in fixed chunks of `chunk`.
fn logprobs_in_chunks(
    policy: &dyn Policy,
    ex: &[CompletionExample],
    chunk: usize,
    reference: bool,
) -> Result<Vec<Vec<f64>>, TrainError> {
    let mut out = Vec::with_capacity(ex.len());
    for c in ex.chunks(chunk.max(1)) {
        let b: Vec<&CompletionExample> = c.iter().collect();
        out.extend(policy.completion_logprobs(&b, reference)?);
    }
    Ok(out)
}

/// Train (or resume) GRPO of any `policy` in `run` on the training `images`; rollouts are executed by
/// `executor`. `stop_at` ends after that step. The final model is written to `run` by
/// [`Policy::save_final`] when the last step is done.
pub fn train_grpo_policy(
    policy: &mut dyn Policy,
    run: &Path,
    cfg: &GrpoConfig,
    images: &[Sample],
    executor: &dyn Executor,
    stop_at: Option<usize>,
    show_progress: bool,
) -> Result<GrpoOutcome, TrainError> {
    cfg.validate().map_err(TrainError::Data)?;
    if images.is_empty() {
        return Err(TrainError::Data("GRPO needs training images".into()));
    }
    std::fs::create_dir_all(run).map_err(|e| ioerr(run, e))?;
    if cfg.beta > 0.0 {
        // the start model, frozen (full fine-tuning); with adapters the reference is adapters-off
        let _ = policy.freeze_reference(None);
    }
    let resumed = policy.resume(run)?;
    let Progress {
        mut step,
        mut tokens,
        seconds: secs0,
    } = resumed.unwrap_or_default();
    let mut metrics = read_grpo_metrics(run, step);
    let total = cfg.total_steps();
    let end = stop_at.map_or(total, |s| s.min(total));
    let t0 = Instant::now();
    let pb = super::step_bar(total, step, show_progress);
    let hp_loss = cfg.loss();
    while step < end {
        let round = step / cfg.steps_per_round;
        let round_start = round * cfg.steps_per_round;
        let round_end = (round_start + cfg.steps_per_round).min(end);
        let rdir = run.join("rollouts");
        let (imgs, rs) = rollout::round_rollouts(
            &*policy,
            images,
            cfg.images_per_round,
            &cfg.rollout,
            executor,
            cfg.seed,
            round,
            step,
            &rdir.join(format!("round-{round:02}.parquet")),
            &pb,
        )?;
        let (ex, adv, st) = group_examples(&*policy, &rs, &imgs, cfg)?;
        super::say(
            &pb,
            format!(
                "round {round}: reward {:.3} (group std {:.3})  VSR {:.3}  IoU(all) {:.3}  {} groups, {} completions ({} groups all equal)",
                st.reward,
                st.reward_std,
                st.vsr,
                st.iou_mean_all,
                st.groups,
                st.completions,
                st.zero_std
            ),
        );
        if !metrics
            .iter()
            .any(|m| m.round == round && m.rollout_groups.is_some())
        {
            metrics.push(GrpoMetricRow {
                step: round_start,
                round,
                seconds: secs0 + t0.elapsed().as_secs_f64(),
                reward: Some(st.reward),
                reward_std: Some(st.reward_std),
                frac_reward_zero_std: Some(st.frac_zero_std),
                rollout_vsr: Some(st.vsr),
                rollout_iou_mean_all: Some(st.iou_mean_all),
                rollout_groups: Some(st.groups as f64),
                rollout_completions: Some(st.completions as f64),
                ..Default::default()
            });
            write_grpo_metrics(run, &metrics)?;
        }
        if ex.is_empty() {
            super::say(
                &pb,
                format!(
                    "round {round}: every group's rewards are equal (or no group is hard enough); the round trains nothing"
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
        // the sampling policy's log-probs: computed once at the round's start and kept on disk, so
        // that a run resumed mid-round uses the same numbers
        let lpath = rdir.join(format!("round-{round:02}.logps.json"));
        let old: Vec<Vec<f64>> = match std::fs::read_to_string(&lpath) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| ioerr(&lpath, e))?,
            Err(_) => {
                let old = logprobs_in_chunks(&*policy, &ex, cfg.batch_completions, false)?;
                let tmp = lpath.with_extension("json.tmp");
                let s = serde_json::to_string(&old).map_err(|e| ioerr(&lpath, e))?;
                std::fs::write(&tmp, s).map_err(|e| ioerr(&tmp, e))?;
                std::fs::rename(&tmp, &lpath).map_err(|e| ioerr(&lpath, e))?;
                old
            }
        };
        if old.len() != ex.len() {
            return Err(TrainError::Data(format!(
                "{}: {} rows for {} completions; delete it to recompute",
                lpath.display(),
                old.len(),
                ex.len()
            )));
        }
        let refs = if cfg.beta > 0.0 {
            Some(logprobs_in_chunks(
                &*policy,
                &ex,
                cfg.batch_completions,
                true,
            )?)
        } else {
            None
        };
        let mut perm = None;
        while step < round_end {
            let local = step - round_start;
            let idx = sample_indices(
                cfg.seed ^ (round as u64 + 1),
                ex.len(),
                local * cfg.batch_completions,
                cfg.batch_completions.min(ex.len()),
                &mut perm,
            );
            let batch: Vec<&CompletionExample> = idx.iter().map(|&i| &ex[i]).collect();
            let o: Vec<Vec<f64>> = idx.iter().map(|&i| old[i].clone()).collect();
            let r: Option<Vec<Vec<f64>>> = refs
                .as_ref()
                .map(|r| idx.iter().map(|&i| r[i].clone()).collect());
            let a: Vec<f64> = idx.iter().map(|&i| adv[i]).collect();
            let lr = lr_at(&cfg.optim, step, total);
            let hp = GrpoStep { loss: hp_loss, lr };
            let (s, gnorm) = policy.grpo_step(&batch, &o, r.as_deref(), &a, &hp)?;
            tokens += batch.iter().map(|c| c.tokens.len() as u64).sum::<u64>();
            step += 1;
            let secs = secs0 + t0.elapsed().as_secs_f64();
            pb.set_position(step as u64);
            pb.set_message(format!(
                "round {round} loss {:.5} kl {:.4} clip {:.3}",
                s.loss, s.kl, s.clip_ratio
            ));
            if step % cfg.log_every.max(1) == 0 || step == round_end {
                metrics.push(GrpoMetricRow {
                    step,
                    round,
                    loss: Some(s.loss),
                    kl: Some(s.kl),
                    clip_ratio: Some(s.clip_ratio),
                    entropy: s.entropy.is_finite().then_some(s.entropy),
                    mean_length: Some(s.mean_length),
                    lr: Some(lr),
                    grad_norm: Some(gnorm),
                    seconds: secs,
                    ..Default::default()
                });
                write_grpo_metrics(run, &metrics)?;
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
    Ok(GrpoOutcome {
        run: run.to_path_buf(),
        step,
        resumed_from: resumed.map(|p| p.step),
        metrics,
    })
}

/// GRPO of the small VLM from the SFT weights `init`, trained as `adapt` says: the [`VlmPolicy`]
/// made, then [`train_grpo_policy`] with the executor of `cfg.rollout.sandbox`.
#[allow(clippy::too_many_arguments)]
pub fn train_grpo_adapted<AB: AutodiffBackend>(
    run: &Path,
    cfg: &GrpoConfig,
    c: &VlmConfig,
    adapt: &Adaptation,
    tok: &CodeTokenizer,
    init: &Path,
    images: &[Sample],
    device: &AB::Device,
    stop_at: Option<usize>,
    show_progress: bool,
) -> Result<GrpoOutcome, TrainError> {
    AB::seed(device, cfg.seed);
    let mut policy = VlmPolicy::<AB>::from_weights(init, c, tok, adapt, cfg.optim.clone(), device)?;
    let executor = crate::exec::executor(&cfg.rollout.sandbox)?;
    train_grpo_policy(
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
        assert!(GrpoConfig::default().validate().is_ok());
        let bad = |f: &dyn Fn(&mut GrpoConfig)| {
            let mut c = GrpoConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(&|c| c.rollout.k = 1));
        assert!(bad(&|c| c.rollout.temperature = 0.0));
        assert!(bad(&|c| c.rollout.include_target = true));
        assert!(bad(&|c| c.beta = -0.1));
        assert!(bad(&|c| c.clip_low = 0.0));
        assert!(bad(&|c| c.batch_completions = 0));
    }
}
