//! Qwen2-VL / Qwen2.5-VL training: the QLoRA SFT step and loop on chat-formatted examples, the DPO
//! and GRPO steps whose reference is the same model with its adapters switched off, and
//! [`QwenPolicy`], the [`Policy`] that lets the one DPO loop, the one GRPO loop and the one eval runner
//! serve Qwen as they serve the small VLM.
//!
//! The policy's weights are a stack: the base checkpoint (quantized as `[model] quantize` says), then
//! adapter files folded in one by one (dequantize, merge, re-quantize), then the trainable adapters —
//! so the SFT adapters become the DPO base and the DPO reference (adapters off) is the SFT model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::dpo_loss::{DpoStats, dpo_objective, scalar, to_vec};
use super::grpo_loss::{GrpoStats, dense_rows, grpo_loss_tensor};
use super::optim::{AdamW, OptimConfig, lr_at};
use super::policy::{
    CompletionExample, DpoStep, GrpoStep, PairExample, Policy, Progress, check_grpo_batch,
};
use super::sft::{SftConfig, sample_indices};
use super::{TrainError, ioerr};
use crate::data::Sample;
use crate::model::generate::{GenerateConfig, Program};
use crate::model::lora::{
    LoraConfig, load_adapters, merge_and_unload, save_adapters, with_adapters_disabled,
};
use crate::model::quant::Quantize;
use crate::model::qwen2vl::answer::{
    PromptInput, answer_logprobs, answer_token_logprobs, im_end_id, prepare_qlora, qwen_sft_loss,
    seed_adapters,
};
use crate::model::qwen2vl::preprocess::{PreprocessConfig, encode, load_tokenizer};
use crate::model::qwen2vl::{ImageInput, QwenConfig, QwenError, QwenVl, load_dir};

/// One AdamW step of [`qwen_sft_loss`] on `batch`; returns the model, the loss before the step and the
/// gradient norm before clipping.
pub fn qwen_sft_step<AB: AutodiffBackend>(
    model: QwenVl<AB>,
    opt: &mut AdamW<AB::InnerBackend>,
    c: &QwenConfig,
    batch: &[(&PromptInput, &[u32])],
    lr: f64,
) -> Result<(QwenVl<AB>, f64, f64), QwenError> {
    let loss = qwen_sft_loss(&model, c, batch)?; // [1]
    let value = scalar(loss.clone().inner());
    if !value.is_finite() {
        return Err(QwenError::Input(format!("SFT loss is {value}")));
    }
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let (model, gnorm) = opt.step(model, grads, lr);
    Ok((model, value, gnorm))
}

/// One preference pair for one image: answer ids (each ending with `<|im_end|>` when finished).
#[derive(Clone, Debug, PartialEq)]
pub struct QwenPair {
    pub prompt: PromptInput,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// The reference log-probs `(chosen, rejected)` of `pair`: the model with its adapters switched off
/// (the frozen, possibly quantized base), no gradient.
pub fn reference_logprobs<B: Backend>(
    model: &QwenVl<B>,
    c: &QwenConfig,
    pair: &QwenPair,
) -> Result<(f64, f64), QwenError> {
    with_adapters_disabled(|| policy_logprobs(model, c, pair))
}

/// The policy's log-probs `(chosen, rejected)` of `pair` (adapters on), no gradient.
pub fn policy_logprobs<B: Backend>(
    model: &QwenVl<B>,
    c: &QwenConfig,
    pair: &QwenPair,
) -> Result<(f64, f64), QwenError> {
    let v = to_vec(answer_logprobs(
        model,
        c,
        &pair.prompt,
        &[&pair.chosen, &pair.rejected],
    )?); // [2]
    Ok((v[0], v[1]))
}

/// One DPO step of `policy` (a base with LoRA adapters) on `pairs`, whose reference log-probs `refs`
/// come from [`reference_logprobs`] (the same model, adapters off), plus `nll_weight` × the mean NLL
/// per chosen token. Returns the updated policy, the batch statistics and the gradient norm before
/// clipping.
#[allow(clippy::too_many_arguments)]
pub fn qwen_dpo_step<AB: AutodiffBackend>(
    policy: QwenVl<AB>,
    opt: &mut AdamW<AB::InnerBackend>,
    c: &QwenConfig,
    pairs: &[QwenPair],
    refs: &[(f64, f64)],
    beta: f64,
    nll_weight: f64,
    lr: f64,
) -> Result<(QwenVl<AB>, DpoStats, f64), QwenError> {
    if pairs.is_empty() || refs.len() != pairs.len() {
        return Err(QwenError::Input(format!(
            "{} pairs but {} reference log-prob pairs",
            pairs.len(),
            refs.len()
        )));
    }
    if beta.is_nan() || beta <= 0.0 {
        return Err(QwenError::Input(format!(
            "DPO beta must be positive, got {beta}"
        )));
    }
    let mut pc = Vec::with_capacity(pairs.len());
    let mut pr = Vec::with_capacity(pairs.len());
    for p in pairs {
        let lp = answer_logprobs(&policy, c, &p.prompt, &[&p.chosen, &p.rejected])?; // [2]
        pc.push(lp.clone().narrow(0, 0, 1));
        pr.push(lp.narrow(0, 1, 1));
    }
    let (pc, pr) = (Tensor::cat(pc, 0), Tensor::cat(pr, 0)); // [pairs] each
    let n_chosen: usize = pairs.iter().map(|p| p.chosen.len()).sum();
    let (loss, stats) = dpo_objective(pc, pr, refs, beta, 0.0, nll_weight, n_chosen);
    let grads = GradientsParams::from_grads(loss.backward(), &policy);
    let (policy, gnorm) = opt.step(policy, grads, lr);
    Ok((policy, stats, gnorm))
}

/// The image of a sample as the Qwen preprocessor takes it.
pub fn image_of(s: &Sample) -> ImageInput {
    ImageInput {
        width: s.width,
        height: s.height,
        rgb: s.rgb.clone(),
    }
}

/// What a Qwen checkpoint records besides weights and optimizer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct QwenCheckpointMeta {
    step: usize,
    tokens: u64,
    seconds: f64,
    lora: LoraConfig,
}

/// Qwen2-VL / Qwen2.5-VL with LoRA adapters on a (quantized) base, as a [`Policy`].
pub struct QwenPolicy<AB: AutodiffBackend> {
    /// Always `Some` between calls (taken for the optimizer step).
    model: Option<QwenVl<AB>>,
    opt: AdamW<AB::InnerBackend>,
    pub config: QwenConfig,
    pub tok: tokenizers::Tokenizer,
    pub pre: PreprocessConfig,
    /// Tokens that end an answer (the checkpoint's EOS and `<|im_end|>`).
    pub eos: Vec<u32>,
    pub lora: LoraConfig,
    /// Longest answer (tokens, with `<|im_end|>`) a pair may have.
    pub max_answer_tokens: usize,
    device: AB::Device,
}

impl<AB: AutodiffBackend> QwenPolicy<AB> {
    /// The checkpoint in `dir`, its linear bases quantized as `quantize` says, each of `fold` (adapter
    /// files) merged into the base in turn, then fresh adapters of `lora` seeded with `seed` (the only
    /// trainable parameters), trained by an AdamW of `optim`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: &Path,
        quantize: Quantize,
        lora: &LoraConfig,
        fold: &[PathBuf],
        seed: u64,
        optim: OptimConfig,
        max_answer_tokens: usize,
        device: &AB::Device,
    ) -> Result<Self, TrainError> {
        let tok = load_tokenizer(dir)?;
        let pre = PreprocessConfig::from_dir(dir)?;
        let loaded = load_dir::<AB>(dir, device)?;
        let mut eos = loaded.eos_token_ids.clone();
        eos.push(im_end_id(&tok)?);
        eos.sort_unstable();
        eos.dedup();
        let mut model = prepare_qlora(loaded.model, quantize, lora, device)?;
        for f in fold {
            load_adapters(&mut model, f, device)?;
            // merged on the inner (graph-free) copy: the merged weight is a new constant, not a graph node
            let mut inner = model.valid();
            merge_and_unload(&mut inner, device)?;
            model = prepare_qlora(QwenVl::<AB>::from_inner(inner), quantize, lora, device)?;
        }
        seed_adapters(&mut model, seed, device);
        Ok(QwenPolicy {
            model: Some(model),
            opt: AdamW::new(optim),
            config: loaded.config,
            tok,
            pre,
            eos,
            lora: lora.clone(),
            max_answer_tokens,
            device: device.clone(),
        })
    }

    pub fn model(&self) -> &QwenVl<AB> {
        self.model
            .as_ref()
            .expect("the model is back after every step")
    }

    /// Load trained adapters (e.g. a stage's `adapters.safetensors`) into the policy.
    pub fn load_adapters(&mut self, file: &Path) -> Result<(), TrainError> {
        let mut m = self
            .model
            .take()
            .expect("the model is back after every step");
        let r = load_adapters(&mut m, file, &self.device);
        self.model = Some(m);
        r?;
        Ok(())
    }

    fn prompt(&self, s: &Sample) -> Result<PromptInput, TrainError> {
        Ok(PromptInput::new(
            &self.tok,
            &self.pre,
            &image_of(s),
            &s.prompt,
        )?)
    }

    /// The answer ids of `program` (+ `<|im_end|>` when its generation finished).
    fn answer(&self, program: &str, finished: bool) -> Result<Vec<u32>, TrainError> {
        let mut ids = encode(&self.tok, program)?;
        if finished {
            ids.push(im_end_id(&self.tok)?);
        }
        Ok(ids)
    }

    fn qwen_pair(&self, p: &PairExample) -> Result<QwenPair, TrainError> {
        Ok(QwenPair {
            prompt: self.prompt(p.image)?,
            chosen: p.chosen.clone(),
            rejected: p.rejected.clone(),
        })
    }

    /// QLoRA SFT of the adapters on `samples` for `cfg.steps` AdamW steps of `batch_size × grad_accum`
    /// examples (gradients accumulated per micro-batch, the order a seeded permutation per epoch);
    /// examples whose answer exceeds `sft.max_code_tokens` are skipped. Returns the loss of each step
    /// (before it) and the number of skipped samples.
    pub fn train_sft(
        &mut self,
        samples: &[Sample],
        cfg: &SftConfig,
        show_progress: bool,
    ) -> Result<(Vec<f64>, usize), TrainError> {
        let mut examples: Vec<(PromptInput, Vec<u32>)> = Vec::new();
        let mut skipped = 0;
        for s in samples {
            let a = self.answer(&s.program, true)?;
            if a.len() > cfg.max_code_tokens {
                skipped += 1;
                continue;
            }
            examples.push((self.prompt(s)?, a));
        }
        if examples.is_empty() {
            return Err(TrainError::Data(format!(
                "no training example fits sft.max_code_tokens = {} ({} samples)",
                cfg.max_code_tokens,
                samples.len()
            )));
        }
        let pb = if show_progress {
            indicatif::ProgressBar::new(cfg.steps as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        let t0 = Instant::now();
        let mut perm = None;
        let mut losses = Vec::with_capacity(cfg.steps);
        for step in 0..cfg.steps {
            let mut acc = GradientsAccumulator::<QwenVl<AB>>::new();
            let model = self
                .model
                .take()
                .expect("the model is back after every step");
            let mut loss_sum = 0f64;
            for micro in 0..cfg.grad_accum {
                let k0 = (step * cfg.grad_accum + micro) * cfg.batch_size;
                let idx = sample_indices(cfg.seed, examples.len(), k0, cfg.batch_size, &mut perm);
                let batch: Vec<(&PromptInput, &[u32])> = idx
                    .iter()
                    .map(|&i| (&examples[i].0, examples[i].1.as_slice()))
                    .collect();
                let loss =
                    qwen_sft_loss(&model, &self.config, &batch)?.div_scalar(cfg.grad_accum as f64); // [1]
                loss_sum += scalar(loss.clone().inner());
                let g = GradientsParams::from_grads(loss.backward(), &model);
                acc.accumulate(&model, g);
            }
            if !loss_sum.is_finite() {
                return Err(TrainError::Data(format!(
                    "SFT loss is {loss_sum} at step {step}"
                )));
            }
            let (m, _gnorm) = self
                .opt
                .step(model, acc.grads(), lr_at(&cfg.optim, step, cfg.steps));
            self.model = Some(m);
            losses.push(loss_sum);
            pb.set_position(step as u64 + 1);
            pb.set_message(format!("loss {loss_sum:.4}"));
        }
        pb.finish_and_clear();
        if show_progress {
            eprintln!(
                "sft: {} steps, loss {:.4} → {:.4} ({:.1} s)",
                losses.len(),
                losses[0],
                losses[losses.len() - 1],
                t0.elapsed().as_secs_f64()
            );
        }
        Ok((losses, skipped))
    }
}

impl<AB: AutodiffBackend> Policy for QwenPolicy<AB> {
    /// Image `i`'s `k` programs are drawn from a generator seeded with `cfg.seed + i` (top-p is not
    /// applied: plain temperature sampling).
    fn generate(
        &self,
        images: &[&Sample],
        k: usize,
        cfg: &GenerateConfig,
        _batch: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Program>, TrainError> {
        let infer = self.model().valid();
        let c = &self.config;
        let mut out = Vec::with_capacity(images.len() * k);
        for (i, s) in images.iter().enumerate() {
            let p = self.prompt(s)?;
            let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(i as u64));
            for _ in 0..k.max(1) {
                let px = Some(p.pixel_tensor::<AB::InnerBackend>(&self.device));
                let ids = if cfg.temperature > 0.0 {
                    infer.generate_sampled(
                        c,
                        &p.ids,
                        px,
                        &[p.grid],
                        cfg.max_new_tokens,
                        &self.eos,
                        cfg.temperature,
                        &mut rng,
                    )?
                } else {
                    infer.generate_greedy(
                        c,
                        &p.ids,
                        px,
                        &[p.grid],
                        cfg.max_new_tokens,
                        &self.eos,
                    )?
                };
                let finished = ids.last().is_some_and(|t| self.eos.contains(t));
                let program = self
                    .tok
                    .decode(&ids, true)
                    .map_err(|e| QwenError::Tokenizer(e.to_string()))?;
                out.push(Program {
                    program,
                    finished,
                    n_tokens: ids.len(),
                });
            }
            progress(i + 1);
        }
        Ok(out)
    }

    fn encode_pair<'a>(
        &self,
        image: &'a Sample,
        chosen: (&str, bool),
        rejected: (&str, bool),
    ) -> Result<Option<PairExample<'a>>, TrainError> {
        let (cw, cl) = (
            self.answer(chosen.0, chosen.1)?,
            self.answer(rejected.0, rejected.1)?,
        );
        let image_token = |a: &[u32]| a.contains(&self.config.image_token_id);
        if cw.is_empty()
            || cl.is_empty()
            || cw.len().max(cl.len()) > self.max_answer_tokens
            || image_token(&cw)
            || image_token(&cl)
        {
            return Ok(None); // an empty answer or image tokens inside an answer cannot be scored as text
        }
        Ok(Some(PairExample {
            image,
            prefix: self.prompt(image)?.ids,
            chosen: cw,
            rejected: cl,
        }))
    }

    fn encode_completion<'a>(
        &self,
        image: &'a Sample,
        program: (&str, bool),
    ) -> Result<Option<CompletionExample<'a>>, TrainError> {
        let tokens = self.answer(program.0, program.1)?;
        if tokens.is_empty()
            || tokens.len() > self.max_answer_tokens
            || tokens.contains(&self.config.image_token_id)
        {
            return Ok(None);
        }
        Ok(Some(CompletionExample {
            image,
            prefix: self.prompt(image)?.ids,
            tokens,
        }))
    }

    /// The reference is the model with its adapters off.
    fn completion_logprobs(
        &self,
        batch: &[&CompletionExample],
        reference: bool,
    ) -> Result<Vec<Vec<f64>>, TrainError> {
        let infer = self.model().valid();
        let one = |x: &CompletionExample| -> Result<Vec<f64>, TrainError> {
            let p = self.prompt(x.image)?;
            Ok(to_vec(answer_token_logprobs(
                &infer,
                &self.config,
                &p,
                &x.tokens,
            )?))
        };
        batch
            .iter()
            .map(|x| {
                if reference {
                    with_adapters_disabled(|| one(x))
                } else {
                    one(x)
                }
            })
            .collect()
    }

    /// The entropy is not computed (NaN): the vocabulary is large and the statistic optional.
    fn grpo_step(
        &mut self,
        batch: &[&CompletionExample],
        old: &[Vec<f64>],
        refs: Option<&[Vec<f64>]>,
        adv: &[f64],
        step: &GrpoStep,
    ) -> Result<(GrpoStats, f64), TrainError> {
        check_grpo_batch(batch, old, adv)?;
        let prompts = batch
            .iter()
            .map(|x| self.prompt(x.image))
            .collect::<Result<Vec<_>, _>>()?;
        let model = self
            .model
            .take()
            .expect("the model is back after every step");
        let r = (|| -> Result<(QwenVl<AB>, GrpoStats, f64), TrainError> {
            let seq = batch.iter().map(|x| x.tokens.len()).max().unwrap_or(1);
            let mut rows = Vec::with_capacity(batch.len());
            for (x, p) in batch.iter().zip(&prompts) {
                let lp = answer_token_logprobs(&model, &self.config, p, &x.tokens)?; // [answer]
                let a = x.tokens.len();
                let row = if a < seq {
                    Tensor::cat(vec![lp, Tensor::zeros([seq - a], &self.device)], 0)
                } else {
                    lp
                }; // [seq]
                rows.push(row.reshape([1, seq]));
            }
            let lp = Tensor::cat(rows, 0); // [batch, seq]
            let b = batch.len();
            let dense = |v: Vec<f32>| {
                Tensor::<AB, 2>::from_data(TensorData::new(v, [b, seq]), &self.device)
            }; // [batch, seq]
            let (old, mask) = dense_rows(old, seq);
            let refs = refs.map(|r| dense(dense_rows(r, seq).0));
            let (loss, stats) =
                grpo_loss_tensor(lp, dense(old), refs, dense(mask), adv, &step.loss);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let (m, gnorm) = self.opt.step(model.clone(), grads, step.lr);
            Ok((m, stats, gnorm))
        })();
        match r {
            Ok((m, stats, gnorm)) => {
                self.model = Some(m);
                Ok((stats, gnorm))
            }
            Err(e) => {
                self.model = Some(model);
                Err(e)
            }
        }
    }

    fn reference_logprobs(&self, pairs: &[&PairExample]) -> Result<Vec<(f64, f64)>, TrainError> {
        let infer = self.model().valid();
        pairs
            .iter()
            .map(|p| {
                Ok(reference_logprobs(
                    &infer,
                    &self.config,
                    &self.qwen_pair(p)?,
                )?)
            })
            .collect()
    }

    fn dpo_step(
        &mut self,
        pairs: &[&PairExample],
        refs: &[(f64, f64)],
        s: &DpoStep,
    ) -> Result<(DpoStats, f64), TrainError> {
        if s.label_smoothing != 0.0 {
            return Err(TrainError::Data(
                "dpo.label_smoothing is not supported for Qwen policies; set it to 0".into(),
            ));
        }
        let qp = pairs
            .iter()
            .map(|p| self.qwen_pair(p))
            .collect::<Result<Vec<_>, _>>()?;
        let model = self
            .model
            .take()
            .expect("the model is back after every step");
        match qwen_dpo_step(
            model.clone(),
            &mut self.opt,
            &self.config,
            &qp,
            refs,
            s.beta,
            s.nll_weight,
            s.lr,
        ) {
            Ok((m, stats, gnorm)) => {
                self.model = Some(m);
                Ok((stats, gnorm))
            }
            Err(e) => {
                self.model = Some(model);
                Err(e.into())
            }
        }
    }

    fn freeze_reference(&mut self, _file: Option<&Path>) -> Result<(), TrainError> {
        Err(TrainError::Data("a Qwen policy trains adapters: its DPO reference is the base with the adapters off; dpo.reset_reference must be false".into()))
    }

    fn load_reference(&mut self, file: &Path) -> Result<(), TrainError> {
        Err(TrainError::Data(format!(
            "{}: a Qwen policy has no separate reference to load",
            file.display()
        )))
    }

    fn save_checkpoint(&self, run: &Path, at: Progress, keep: usize) -> Result<(), TrainError> {
        let meta = QwenCheckpointMeta {
            step: at.step,
            tokens: at.tokens,
            seconds: at.seconds,
            lora: self.lora.clone(),
        };
        checkpoint::save(run, at.step, self.model(), &self.opt.state(), &meta, keep)?;
        Ok(())
    }

    fn resume(&mut self, run: &Path) -> Result<Option<Progress>, TrainError> {
        let Some(dir) = checkpoint::latest(run)? else {
            return Ok(None);
        };
        let meta: QwenCheckpointMeta = checkpoint::read_meta(&dir)?;
        if meta.lora != self.lora {
            return Err(TrainError::Data(format!(
                "{}: checkpoint was trained with other [lora] settings; use a new run name",
                dir.display()
            )));
        }
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

    /// The adapters, as `dir/adapters.safetensors` (PEFT-style keys).
    fn save_final(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| ioerr(dir, e))?;
        let mut m = self.model().clone();
        save_adapters(&mut m, &self.lora, &dir.join(ADAPTERS_FILE))?;
        Ok(())
    }
}

/// The trained adapters of a Qwen stage, in its folder.
pub const ADAPTERS_FILE: &str = "adapters.safetensors";
