//! The [`Policy`] trait — what the one eval runner, the one rollout sampler and the one DPO loop need
//! from a model family — and its implementation for the small VLM ([`VlmPolicy`]); Qwen2-VL /
//! Qwen2.5-VL implement it in `train::qwen`.
//!
//! A policy owns its model (on an autodiff backend), its tokenizer, its optimizer and, for DPO, its
//! reference: a frozen copy of the weights under full fine-tuning, or the same model with its LoRA
//! adapters switched off (no second copy).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};

use super::TrainError;
use super::adapt::Adaptation;
use super::checkpoint::{self, CheckpointMeta};
use super::dpo_loss::{DpoStats, dpo_objective, to_vec};
use super::grpo_loss::{GrpoLossConfig, GrpoStats, grpo_loss_tensor};
use super::optim::{AdamW, OptimConfig};
use super::sft::check_adaptation;
use crate::data::Sample;
use crate::model::generate::{GenerateConfig, Program, generate_programs};
use crate::model::inputs::{patches_tensor, prefix_tokens};
use crate::model::lora::with_adapters_disabled;
use crate::model::tokenizer::CodeTokenizer;
use crate::model::vlm::{TokenBatch, Vlm};
use crate::model::{VlmConfig, run_dir, weights};

/// One preference pair ready for a policy: the image, the prompt prefix and both programs' tokens
/// (each ending with the end token when its sample finished).
#[derive(Clone, Debug)]
pub struct PairExample<'a> {
    pub image: &'a Sample,
    /// The prompt's token ids (the small VLM: prompt + `<|begin|>`; Qwen: the chat prompt).
    pub prefix: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// One sampled program of an image as tokens, for policy-gradient training (GRPO).
#[derive(Clone, Debug)]
pub struct CompletionExample<'a> {
    pub image: &'a Sample,
    /// The prompt's token ids, as in [`PairExample`].
    pub prefix: Vec<u32>,
    /// The program's tokens (with the end token when its sample finished).
    pub tokens: Vec<u32>,
}

/// The settings of one GRPO step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrpoStep {
    pub loss: GrpoLossConfig,
    pub lr: f64,
}

/// The settings of one DPO step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpoStep {
    pub beta: f64,
    pub label_smoothing: f64,
    /// Weight of the mean NLL per chosen token (RPO); 0 = plain DPO.
    pub nll_weight: f64,
    pub lr: f64,
}

/// Where a run stands: what a checkpoint records besides the weights and the optimizer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    pub step: usize,
    pub tokens: u64,
    pub seconds: f64,
}

/// A model family as the training and evaluation loops see it.
pub trait Policy {
    /// `k` programs per image (image `i`'s at `[i·k, (i+1)·k)`), greedy when `cfg.temperature` is 0,
    /// `batch` generation rows at a time; `progress` gets the number of images done.
    fn generate(
        &self,
        images: &[&Sample],
        k: usize,
        cfg: &GenerateConfig,
        batch: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Program>, TrainError>;

    /// The pair `chosen` ≻ `rejected` (programs with whether their generation finished) for `image`
    /// as token rows; `None` when it does not fit the model.
    fn encode_pair<'a>(
        &self,
        image: &'a Sample,
        chosen: (&str, bool),
        rejected: (&str, bool),
    ) -> Result<Option<PairExample<'a>>, TrainError>;

    /// Summed log-probs `(chosen, rejected)` of each pair under the reference, without gradient.
    fn reference_logprobs(&self, pairs: &[&PairExample]) -> Result<Vec<(f64, f64)>, TrainError>;

    /// One optimizer step of DPO on `pairs` (reference log-probs `refs`): the batch statistics and
    /// the gradient norm before clipping.
    fn dpo_step(
        &mut self,
        pairs: &[&PairExample],
        refs: &[(f64, f64)],
        step: &DpoStep,
    ) -> Result<(DpoStats, f64), TrainError>;

    /// A sampled program of `image` as tokens; `None` when it does not fit the model or is empty.
    fn encode_completion<'a>(
        &self,
        image: &'a Sample,
        program: (&str, bool),
    ) -> Result<Option<CompletionExample<'a>>, TrainError>;

    /// Per-token log-probs of each completion's tokens, without gradient: under the current policy,
    /// or under the reference when `reference` (see [`Policy::freeze_reference`]).
    fn completion_logprobs(
        &self,
        batch: &[&CompletionExample],
        reference: bool,
    ) -> Result<Vec<Vec<f64>>, TrainError>;

    /// One optimizer step of the GRPO surrogate ([`crate::train::grpo_loss`]) on `batch` with the
    /// sampling policy's per-token log-probs `old`, the reference's `refs` (needed when β > 0) and one
    /// advantage per completion: the batch statistics and the gradient norm before clipping.
    fn grpo_step(
        &mut self,
        batch: &[&CompletionExample],
        old: &[Vec<f64>],
        refs: Option<&[Vec<f64>]>,
        adv: &[f64],
        step: &GrpoStep,
    ) -> Result<(GrpoStats, f64), TrainError>;

    /// Make the reference a frozen copy of the current weights (full fine-tuning), written to `file`;
    /// an error with adapters, whose reference is always the base with the adapters off.
    fn freeze_reference(&mut self, file: Option<&Path>) -> Result<(), TrainError>;

    /// Load a reference written by [`Policy::freeze_reference`].
    fn load_reference(&mut self, file: &Path) -> Result<(), TrainError>;

    /// An atomic checkpoint of the trainable weights and the optimizer in `run/checkpoints/`.
    fn save_checkpoint(&self, run: &Path, at: Progress, keep: usize) -> Result<(), TrainError>;

    /// Resume from the newest checkpoint of `run`, if there is one.
    fn resume(&mut self, run: &Path) -> Result<Option<Progress>, TrainError>;

    /// Write the trained model into `dir` in the form the next stage and `cadvlm eval` load.
    fn save_final(&self, dir: &Path) -> Result<(), TrainError>;
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
pub fn pair_logprobs<B: Backend>(
    model: &Vlm<B>,
    patches: Tensor<B, 3>,
    tokens: &TokenBatch,
) -> Tensor<B, 1> {
    let img = model.encode_image(patches); // [batch, n_img, hidden]
    let img = Tensor::cat(vec![img.clone(), img], 0); // [2·batch, n_img, hidden]: chosen rows, then rejected rows
    model.sequence_logprobs(img, tokens) // [2·batch]
}

/// Reference log-probs (chosen, rejected) of a batch of pairs under `reference`, no gradient.
pub fn reference_logprobs<B: Backend>(
    reference: &Vlm<B>,
    c: &VlmConfig,
    pairs: &[&PairExample],
    pad: u32,
    device: &B::Device,
) -> Vec<(f64, f64)> {
    let imgs: Vec<&Sample> = pairs.iter().map(|p| p.image).collect();
    let tokens = pair_token_batch(pairs, pad);
    let lp = to_vec(pair_logprobs(
        reference,
        patches_tensor::<B>(&imgs, c, device),
        &tokens,
    )); // [2·batch]
    let b = pairs.len();
    (0..b).map(|i| (lp[i], lp[b + i])).collect()
}

/// One DPO optimizer step of the small VLM `policy` on `pairs` whose reference log-probs are `refs`
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
    let n_chosen: usize = pairs.iter().map(|p| p.chosen.len()).sum();
    let (loss, stats) = dpo_objective(pc, pr, refs, beta, label_smoothing, nll_weight, n_chosen);
    let grads = GradientsParams::from_grads(loss.backward(), &policy);
    let (policy, gnorm) = opt.step(policy, grads, lr);
    (policy, stats, gnorm)
}

/// Token rows `(prefix, tokens)` of a batch of completions.
pub fn completion_token_batch(batch: &[&CompletionExample], pad: u32) -> TokenBatch {
    let rows: Vec<(Vec<u32>, Vec<u32>)> = batch
        .iter()
        .map(|c| (c.prefix.clone(), c.tokens.clone()))
        .collect();
    TokenBatch::from_rows(&rows, pad)
}

/// Per-token log-probs of a batch of completions under `model`, no gradient.
pub fn completion_logprobs<B: Backend>(
    model: &Vlm<B>,
    c: &VlmConfig,
    batch: &[&CompletionExample],
    pad: u32,
    device: &B::Device,
) -> Vec<Vec<f64>> {
    let imgs: Vec<&Sample> = batch.iter().map(|x| x.image).collect();
    let tokens = completion_token_batch(batch, pad);
    let img = model.encode_image(patches_tensor::<B>(&imgs, c, device)); // [batch, n_img, hidden]
    let lp = model.token_logprobs(img, tokens.ids_tensor(device)); // [batch, seq-1]
    tokens.target_rows(
        &lp.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default(),
    )
}

/// The check of [`Policy::grpo_step`]'s inputs: one row of old log-probs and one advantage per
/// completion, at least one completion.
pub fn check_grpo_batch(
    batch: &[&CompletionExample],
    old: &[Vec<f64>],
    adv: &[f64],
) -> Result<(), TrainError> {
    if batch.is_empty() || old.len() != batch.len() || adv.len() != batch.len() {
        return Err(TrainError::Data(format!(
            "grpo_step: {} completions, {} old log-prob rows, {} advantages",
            batch.len(),
            old.len(),
            adv.len()
        )));
    }
    Ok(())
}

/// One GRPO optimizer step of the small VLM `policy` (see [`Policy::grpo_step`]).
#[allow(clippy::too_many_arguments)]
pub fn grpo_train_step<AB: AutodiffBackend>(
    policy: Vlm<AB>,
    opt: &mut AdamW<AB::InnerBackend>,
    c: &VlmConfig,
    batch: &[&CompletionExample],
    old: &[Vec<f64>],
    refs: Option<&[Vec<f64>]>,
    adv: &[f64],
    hp: &GrpoStep,
    pad: u32,
    device: &AB::Device,
) -> (Vlm<AB>, GrpoStats, f64) {
    let imgs: Vec<&Sample> = batch.iter().map(|x| x.image).collect();
    let tokens = completion_token_batch(batch, pad);
    let (b, w) = (tokens.batch, tokens.seq - 1);
    let dense = |v: Vec<f32>| Tensor::<AB, 2>::from_data(TensorData::new(v, [b, w]), device); // [batch, seq-1]
    let img = policy.encode_image(patches_tensor::<AB>(&imgs, c, device)); // [batch, n_img, hidden]
    let (lp, ent) = policy.token_logprobs_entropy(img, tokens.ids_tensor(device)); // [batch, seq-1] each
    let mask = tokens.mask_tensor::<AB>(device); // [batch, seq-1]
    let old = dense(tokens.scatter_targets(old));
    let refs = refs.map(|r| dense(tokens.scatter_targets(r)));
    let (loss, mut stats) = grpo_loss_tensor(lp, old, refs, mask.clone(), adv, &hp.loss);
    let n = tokens.n_target_tokens().max(1) as f64;
    stats.entropy = ent
        .inner()
        .mul(mask.inner())
        .sum()
        .into_scalar()
        .elem::<f64>()
        / n;
    let grads = GradientsParams::from_grads(loss.backward(), &policy);
    let (policy, gnorm) = opt.step(policy, grads, hp.lr);
    (policy, stats, gnorm)
}

/// The small VLM as a [`Policy`]: full fine-tuning, LoRA or QLoRA (`adapt`).
pub struct VlmPolicy<AB: AutodiffBackend> {
    /// Always `Some` between calls (taken for the optimizer step).
    model: Option<Vlm<AB>>,
    reference: Option<Vlm<AB::InnerBackend>>,
    opt: AdamW<AB::InnerBackend>,
    pub config: VlmConfig,
    pub tok: CodeTokenizer,
    pub adapt: Adaptation,
    device: AB::Device,
}

impl<AB: AutodiffBackend> VlmPolicy<AB> {
    /// The policy of `model` (already loaded), trained as `adapt` says (the base is frozen and
    /// quantized, adapters attached) with an AdamW of `optim`.
    pub fn new(
        model: Vlm<AB>,
        config: VlmConfig,
        tok: CodeTokenizer,
        adapt: Adaptation,
        optim: OptimConfig,
        device: &AB::Device,
    ) -> Result<Self, TrainError> {
        adapt.validate(&config).map_err(TrainError::Data)?;
        let model = adapt.prepare(model, device)?;
        Ok(VlmPolicy {
            model: Some(model),
            reference: None,
            opt: AdamW::new(optim),
            config,
            tok,
            adapt,
            device: device.clone(),
        })
    }

    /// The model of config `c` with the weights of `init` (e.g. an SFT run's `model.safetensors`),
    /// trained as `adapt` says: the start of DPO and GRPO (rebuilt the same way on resume).
    pub fn from_weights(
        init: &Path,
        c: &VlmConfig,
        tok: &CodeTokenizer,
        adapt: &Adaptation,
        optim: OptimConfig,
        device: &AB::Device,
    ) -> Result<Self, TrainError> {
        let model = weights::load_module(c.init::<AB>(device), init)?;
        VlmPolicy::new(model, c.clone(), tok.clone(), adapt.clone(), optim, device)
    }

    /// A trained run folder (`config.json`, `tokenizer.json`, `model.safetensors`) as a policy for
    /// generation (full fine-tuning, default optimizer settings).
    pub fn load_run(run: &Path, device: &AB::Device) -> Result<Self, TrainError> {
        let (model, c, tok) = run_dir::load_run::<AB>(run, device)?;
        VlmPolicy::new(
            model,
            c,
            tok,
            Adaptation::default(),
            OptimConfig::default(),
            device,
        )
    }

    pub fn model(&self) -> &Vlm<AB> {
        self.model
            .as_ref()
            .expect("the model is back after every step")
    }

    /// Text positions left after the image tokens.
    fn room(&self) -> usize {
        let c = &self.config;
        c.max_seq_len.saturating_sub(c.n_image_tokens())
    }

    /// A program's code tokens (+ the end token when its generation finished).
    fn code_tokens(&self, (program, finished): (&str, bool)) -> Result<Vec<u32>, TrainError> {
        let mut t = self.tok.encode(program)?;
        if finished {
            t.push(self.tok.end);
        }
        Ok(t)
    }
}

impl<AB: AutodiffBackend> Policy for VlmPolicy<AB> {
    fn generate(
        &self,
        images: &[&Sample],
        k: usize,
        cfg: &GenerateConfig,
        batch: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Program>, TrainError> {
        Ok(generate_programs(
            &self.model().valid(),
            &self.config,
            &self.tok,
            images,
            k,
            cfg,
            batch,
            &self.device,
            progress,
        )?)
    }

    fn encode_pair<'a>(
        &self,
        image: &'a Sample,
        chosen: (&str, bool),
        rejected: (&str, bool),
    ) -> Result<Option<PairExample<'a>>, TrainError> {
        let room = self.room();
        let prefix = prefix_tokens(&self.tok, &image.prompt)?;
        let (cw, cl) = (self.code_tokens(chosen)?, self.code_tokens(rejected)?);
        if prefix.len() + cw.len().max(cl.len()) > room || cw.is_empty() && cl.is_empty() {
            return Ok(None);
        }
        Ok(Some(PairExample {
            image,
            prefix,
            chosen: cw,
            rejected: cl,
        }))
    }

    fn encode_completion<'a>(
        &self,
        image: &'a Sample,
        program: (&str, bool),
    ) -> Result<Option<CompletionExample<'a>>, TrainError> {
        let prefix = prefix_tokens(&self.tok, &image.prompt)?;
        let tokens = self.code_tokens(program)?;
        if tokens.is_empty() || prefix.len() + tokens.len() > self.room() {
            return Ok(None);
        }
        Ok(Some(CompletionExample {
            image,
            prefix,
            tokens,
        }))
    }

    fn completion_logprobs(
        &self,
        batch: &[&CompletionExample],
        reference: bool,
    ) -> Result<Vec<Vec<f64>>, TrainError> {
        let (c, pad, d) = (&self.config, self.tok.pad, &self.device);
        Ok(match (&self.reference, reference) {
            (_, false) => completion_logprobs(&self.model().valid(), c, batch, pad, d),
            (Some(r), true) => completion_logprobs(r, c, batch, pad, d),
            (None, true) if !self.adapt.is_full() => with_adapters_disabled(|| {
                completion_logprobs(&self.model().valid(), c, batch, pad, d)
            }),
            (None, true) => {
                return Err(TrainError::Data(
                    "no reference: call freeze_reference before asking for reference log-probs"
                        .into(),
                ));
            }
        })
    }

    fn grpo_step(
        &mut self,
        batch: &[&CompletionExample],
        old: &[Vec<f64>],
        refs: Option<&[Vec<f64>]>,
        adv: &[f64],
        step: &GrpoStep,
    ) -> Result<(GrpoStats, f64), TrainError> {
        check_grpo_batch(batch, old, adv)?;
        let model = self
            .model
            .take()
            .expect("the model is back after every step");
        let (m, stats, gnorm) = grpo_train_step(
            model,
            &mut self.opt,
            &self.config,
            batch,
            old,
            refs,
            adv,
            step,
            self.tok.pad,
            &self.device,
        );
        self.model = Some(m);
        Ok((stats, gnorm))
    }

    fn reference_logprobs(&self, pairs: &[&PairExample]) -> Result<Vec<(f64, f64)>, TrainError> {
        let (c, pad, d) = (&self.config, self.tok.pad, &self.device);
        Ok(match &self.reference {
            Some(r) => reference_logprobs(r, c, pairs, pad, d),
            None => with_adapters_disabled(|| {
                reference_logprobs(&self.model().valid(), c, pairs, pad, d)
            }),
        })
    }

    fn dpo_step(
        &mut self,
        pairs: &[&PairExample],
        refs: &[(f64, f64)],
        s: &DpoStep,
    ) -> Result<(DpoStats, f64), TrainError> {
        let model = self
            .model
            .take()
            .expect("the model is back after every step");
        let (m, stats, gnorm) = dpo_train_step(
            model,
            &mut self.opt,
            &self.config,
            pairs,
            refs,
            s.beta,
            s.label_smoothing,
            s.nll_weight,
            s.lr,
            self.tok.pad,
            &self.device,
        );
        self.model = Some(m);
        Ok((stats, gnorm))
    }

    fn freeze_reference(&mut self, file: Option<&Path>) -> Result<(), TrainError> {
        if !self.adapt.is_full() {
            return Err(TrainError::Data("with [lora] the DPO reference is the base with the adapters off; it cannot be reset".into()));
        }
        let r = self.model().valid();
        if let Some(f) = file {
            let tmp = f.with_extension("safetensors.tmp");
            weights::save_module(&r, &tmp)?;
            std::fs::rename(&tmp, f).map_err(|e| super::ioerr(f, e))?;
        }
        self.reference = Some(r);
        Ok(())
    }

    fn load_reference(&mut self, file: &Path) -> Result<(), TrainError> {
        self.reference = Some(weights::load_module(self.config.init(&self.device), file)?);
        Ok(())
    }

    fn save_checkpoint(&self, run: &Path, at: Progress, keep: usize) -> Result<(), TrainError> {
        let meta = CheckpointMeta {
            step: at.step,
            tokens: at.tokens,
            seconds: at.seconds,
            config: self.config.clone(),
            adapt: self.adapt.clone(),
        };
        checkpoint::save(run, at.step, self.model(), &self.opt.state(), &meta, keep)?;
        Ok(())
    }

    fn resume(&mut self, run: &Path) -> Result<Option<Progress>, TrainError> {
        let Some(dir) = checkpoint::latest(run)? else {
            return Ok(None);
        };
        let meta: CheckpointMeta = checkpoint::read_meta(&dir)?;
        if meta.config != self.config {
            return Err(TrainError::Data(format!(
                "{}: checkpoint has another model config; use a new run name",
                dir.display()
            )));
        }
        check_adaptation(&dir, &meta.adapt, &self.adapt)?;
        let model = self
            .model
            .take()
            .expect("the model is back after every step");
        self.model = Some(checkpoint::restore(
            &dir,
            model,
            &mut self.opt,
            meta.step,
            &self.device,
        )?);
        Ok(Some(Progress {
            step: meta.step,
            tokens: meta.tokens,
            seconds: meta.seconds,
        }))
    }

    /// A complete run folder: `model.safetensors` (adapters merged), `config.json`, `tokenizer.json`.
    fn save_final(&self, dir: &Path) -> Result<(), TrainError> {
        run_dir::save_run(
            dir,
            &self.adapt.export(self.model().valid(), dir, &self.device)?,
            &self.config,
        )?;
        self.tok.save(&dir.join("tokenizer.json"))?;
        Ok(())
    }
}
