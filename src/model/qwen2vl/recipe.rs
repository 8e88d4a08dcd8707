//! The seed system's recipe (`recipes/qwen2_5_vl_3b_qlora.toml`): Qwen2.5-VL-3B-Instruct from a local
//! Hugging Face directory, NF4 + LoRA, SFT on local GenCAD-Code parquet shards, eval (VSR, IoU_best),
//! then DPO. `check` runs before anything else and names any missing path with how to get it.
//!
//! [`run`] verifies the inputs, prints the memory estimate, loads the checkpoint and runs the stages
//! ([`run_stages`], `sandbox` feature): QLoRA SFT (`qwen2vl::train`) → eval (greedy generation, then
//! `eval::score_program`: VSR, IoU) → DPO rounds (K sampled programs per image, executed and scored, a
//! best-vs-worst pair per image, reference = the model with its adapters off: with `dpo.reference = "sft"`
//! the SFT adapters are first folded into the base (dequantized, merged, re-quantized) and DPO trains
//! fresh ones, so the reference is the (re-quantized) SFT model; with `"base"` it is the base before SFT).
//! It writes
//! `runs/<name>/report.json`, `sft_adapters.safetensors` and `adapters.safetensors` (after DPO) under the
//! working directory.
//!
//! Data: `data.dir` holds `train/` (GenCAD-Code parquet shards or an `index.jsonl` folder: `ID.png`,
//! `ID.py`), or is itself an `index.jsonl` folder; eval reads `test/`, `validation/` or `val/` when
//! present, else the training folder. Not done: gradient checkpointing (the flag is accepted and
//! ignored), top-p sampling.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::QwenError;
use super::loader::{read_config, shard_files};
use super::memory::{WeightFormat, estimate_memory};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QwenRecipe {
    pub name: String,
    /// "cuda" for the real model; "ndarray" / "flex" for the tiny checkpoints.
    pub backend: String,
    pub model: QwenModelStage,
    pub data: QwenDataStage,
    pub sft: QwenSftStage,
    pub eval: QwenEvalStage,
    pub dpo: QwenDpoStage,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QwenModelStage {
    /// Local Hugging Face directory (config.json, *.safetensors, tokenizer.json).
    pub path: PathBuf,
    /// Hub id to name in the "how to get it" message.
    pub hub_id: String,
    /// "nf4", "bf16" or "f32".
    pub quant: String,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_targets: Vec<String>,
    /// Dropout on the adapters' input during SFT and DPO.
    #[serde(default = "default_lora_dropout")]
    pub lora_dropout: f64,
    /// GPU memory the estimate is checked against (GiB).
    pub gpu_gib: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QwenDataStage {
    /// GenCAD-Code parquet folder: `train/`, `val/` or `validation/`, `test/`.
    pub dir: PathBuf,
    pub hub_id: String,
    /// Training samples drawn (seeded) from the train split; 0 = all.
    pub train_samples: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QwenSftStage {
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub max_seq_len: usize,
    pub gradient_checkpointing: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QwenEvalStage {
    pub samples: usize,
    pub max_new_tokens: usize,
    /// Candidates per image for IoU_best.
    pub best_of: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QwenDpoStage {
    pub rounds: usize,
    pub images_per_round: usize,
    pub samples_per_image: usize,
    pub beta: f64,
    pub lr: f64,
    /// Sampling temperature of the rollouts.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Also offer the ground-truth program as a candidate of each image's pair (scored like the samples),
    /// so that an image whose samples all score the same (e.g. none executes) still gives a pair.
    #[serde(default)]
    pub anchor_with_target: bool,
    /// The DPO reference: "sft" (default) folds the SFT adapters into the base (dequantize, merge,
    /// re-quantize) and trains fresh adapters, so the reference (adapters off) is the SFT model; "base"
    /// keeps training the SFT adapters, so the reference is the base before SFT.
    #[serde(default = "default_reference")]
    pub reference: String,
}

fn default_reference() -> String {
    "sft".into()
}

fn default_lora_dropout() -> f64 {
    0.05
}

fn default_temperature() -> f32 {
    1.0
}

impl QwenRecipe {
    pub fn load(path: &Path) -> Result<Self, QwenError> {
        let text = std::fs::read_to_string(path).map_err(|e| QwenError::Io { path: path.display().to_string(), msg: e.to_string() })?;
        toml::from_str(&text).map_err(|e| QwenError::Config(format!("{}: {e}", path.display())))
    }

    fn weight_format(&self) -> Result<WeightFormat, QwenError> {
        match self.model.quant.as_str() {
            "nf4" => Ok(WeightFormat::Nf4),
            "bf16" => Ok(WeightFormat::Bf16),
            "f32" => Ok(WeightFormat::F32),
            q => Err(QwenError::Config(format!("model.quant {q:?} is not nf4, bf16 or f32"))),
        }
    }
}

fn missing(path: &Path, what: &str, how: String) -> QwenError {
    QwenError::Io { path: path.display().to_string(), msg: format!("missing {what}. {how}") }
}

/// Every input of the recipe is on disk, relative paths resolved against `base`; the first missing one
/// is named with how to get it.
pub fn check(r: &QwenRecipe, base: &Path) -> Result<(), QwenError> {
    r.weight_format()?;
    let m = base.join(&r.model.path);
    let get_model = format!(
        "Download it (about 7.5 GB) on a machine with network access: `huggingface-cli download {id} --local-dir {p}`, \
         or point model.path at an existing local copy",
        id = r.model.hub_id,
        p = r.model.path.display()
    );
    if !m.is_dir() {
        return Err(missing(&m, "model directory", get_model));
    }
    for f in ["config.json", "tokenizer.json"] {
        if !m.join(f).is_file() {
            return Err(missing(&m.join(f), "checkpoint file", get_model));
        }
    }
    shard_files(&m).map_err(|e| missing(&m, &format!("weights ({e})"), get_model.clone()))?;
    read_config(&m)?;
    let d = base.join(&r.data.dir);
    let get_data = format!(
        "Download the parquet shards: `huggingface-cli download {id} --repo-type dataset --local-dir {p}` \
         (folders train/, validation/ or val/, test/), or point data.dir at an existing copy",
        id = r.data.hub_id,
        p = r.data.dir.display()
    );
    if !d.is_dir() {
        return Err(missing(&d, "GenCAD-Code data folder", get_data));
    }
    match data_splits(&d) {
        Some(_) => Ok(()),
        None => Err(missing(&d.join("train"), "train split (*.parquet, or index.jsonl with ID.png / ID.py)", get_data)),
    }
}

fn has_samples(p: &Path) -> bool {
    p.join("index.jsonl").is_file()
        || std::fs::read_dir(p).map(|it| it.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "parquet"))).unwrap_or(false)
}

/// `(train, eval)` folders of a data directory: `train/` or `data/train/` (parquet shards or an
/// `index.jsonl` folder), else `d` itself when it holds an `index.jsonl`; eval is `test/`,
/// `validation/` or `val/` when one has samples, else the training folder. `None`: no training data.
pub fn data_splits(d: &Path) -> Option<(PathBuf, PathBuf)> {
    let train = ["train", "data/train"].iter().map(|s| d.join(s)).find(|p| p.is_dir() && has_samples(p)).or_else(|| d.join("index.jsonl").is_file().then(|| d.to_path_buf()))?;
    let eval = ["test", "validation", "val", "data/test", "data/validation"].iter().map(|s| d.join(s)).find(|p| p.is_dir() && has_samples(p)).unwrap_or_else(|| train.clone());
    Some((train, eval))
}

/// Check the inputs, print the memory estimate, then run every stage on the recipe's backend
/// ([`run_stages`]), relative paths resolved against the working directory.
pub fn run(path: &Path) -> Result<(), QwenError> {
    let r = QwenRecipe::load(path)?;
    let base = std::env::current_dir().map_err(|e| QwenError::Io { path: ".".into(), msg: e.to_string() })?;
    check(&r, &base)?;
    let c = read_config(&base.join(&r.model.path))?;
    let est = estimate_memory(&c, r.weight_format()?, r.model.lora_rank as u64, r.sft.batch_size as u64, r.sft.max_seq_len as u64, r.sft.gradient_checkpointing);
    eprintln!("{}", est.summary());
    if !est.fits(r.model.gpu_gib) {
        eprintln!("warning: the estimate exceeds model.gpu_gib = {} GiB", r.model.gpu_gib);
    }
    #[cfg(feature = "sandbox")]
    eprintln!("{}", run_stages(&r, &base)?.summary());
    #[cfg(not(feature = "sandbox"))]
    run_stages(&r, &base)?;
    Ok(())
}

#[cfg(feature = "sandbox")]
pub use stages::{QwenDpoRound, QwenRunReport, run_stages};

/// Without the `sandbox` feature (no `train::dpo`) the stages are not built.
#[cfg(not(feature = "sandbox"))]
pub fn run_stages(r: &QwenRecipe, _base: &Path) -> Result<std::convert::Infallible, QwenError> {
    Err(QwenError::Config(format!("recipe {}: the Qwen SFT/eval/DPO stages need the `sandbox` feature", r.name)))
}

#[cfg(feature = "sandbox")]
mod stages {
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use burn::module::AutodiffModule;
    use burn::optim::{GradientsAccumulator, GradientsParams};
    use burn::tensor::ElementConversion;
    use burn::tensor::backend::AutodiffBackend;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use serde::Serialize;

    use super::super::preprocess::{PreprocessConfig, load_tokenizer};
    use super::super::train::{PromptInput, QwenPair, answer_ids, im_end_id, prepare_qlora, seed_adapters, qwen_dpo_step, qwen_sft_loss, reference_logprobs};
    use super::super::{ImageInput, QwenConfig, QwenError, QwenVl, load_dir};
    use super::{QwenRecipe, data_splits};
    use crate::eval::{EvalSummary, Sample, SampleResult, load_samples, score_program, summarize};
    use crate::model::lora::{LoraConfig, merge_and_unload, save_adapters};
    use crate::model::quant::Quantize;
    use crate::train::dpo::DpoStats;
    use crate::train::optim::{AdamW, OptimConfig, lr_at};
    use crate::train::rollout::{PairConfig, round_images, select_group_pairs};

    /// Reward of a program that does not execute to a solid (IoU is in [0, 1]).
    const INVALID_REWARD: f64 = -0.5;

    /// One DPO round: rollouts, pairs and the statistics of each step.
    #[derive(Clone, Debug, Serialize)]
    pub struct QwenDpoRound {
        pub round: usize,
        pub images: usize,
        pub rollouts: usize,
        /// Share of the sampled programs that execute.
        pub rollout_vsr: f64,
        pub pairs: usize,
        pub steps: Vec<DpoStats>,
    }

    /// What [`run_stages`] did (also written as `report.json`).
    #[derive(Clone, Debug, Serialize)]
    pub struct QwenRunReport {
        pub run_dir: PathBuf,
        pub train_examples: usize,
        /// Training samples left out because prompt + answer exceed `sft.max_seq_len`.
        pub sft_skipped: usize,
        /// Loss of each SFT optimizer step (before the step).
        pub sft_losses: Vec<f64>,
        pub eval: EvalSummary,
        pub eval_results: Vec<SampleResult>,
        pub dpo: Vec<QwenDpoRound>,
        /// The adapters after SFT (on the original base).
        pub sft_adapters: PathBuf,
        /// The final adapters: after DPO, on the original base with `dpo.reference = "base"` (or without
        /// DPO rounds), on the base with `sft_adapters` folded in with `"sft"`.
        pub adapters: PathBuf,
    }

    impl QwenRunReport {
        pub fn summary(&self) -> String {
            let (l0, l1) = (self.sft_losses.first().copied().unwrap_or(f64::NAN), self.sft_losses.last().copied().unwrap_or(f64::NAN));
            let pairs: usize = self.dpo.iter().map(|d| d.pairs).sum();
            format!(
                "{}: SFT {} steps on {} examples (loss {l0:.3} → {l1:.3}); eval on {} programs: VSR {:.3}, IoU_best mean (valid) {:.3}, best@k {:.3}; DPO {} rounds, {pairs} pairs; adapters in {}",
                self.run_dir.display(),
                self.sft_losses.len(),
                self.train_examples,
                self.eval.n,
                self.eval.vsr,
                self.eval.iou_best_mean_valid,
                self.eval.iou_best_at_k_mean,
                self.dpo.len(),
                self.adapters.display()
            )
        }
    }

    fn terr(e: impl std::fmt::Display) -> QwenError {
        QwenError::Train(e.to_string())
    }

    fn image_of(s: &Sample) -> ImageInput {
        ImageInput { width: s.width, height: s.height, rgb: s.rgb.clone() }
    }

    fn quantize_of(r: &QwenRecipe) -> Result<Quantize, QwenError> {
        match r.model.quant.as_str() {
            "nf4" => Ok(Quantize::Nf4),
            // bf16 storage is not modelled on the CPU backends: the base stays f32
            "bf16" | "f32" => Ok(Quantize::None),
            q => Err(QwenError::Config(format!("model.quant {q:?} is not nf4, bf16 or f32"))),
        }
    }

    fn validate(r: &QwenRecipe) -> Result<(), QwenError> {
        for (k, v) in [
            ("sft.batch_size", r.sft.batch_size),
            ("sft.grad_accum", r.sft.grad_accum),
            ("sft.max_seq_len", r.sft.max_seq_len),
            ("eval.max_new_tokens", r.eval.max_new_tokens),
            ("eval.best_of", r.eval.best_of),
            ("model.lora_rank", r.model.lora_rank),
        ] {
            if v == 0 {
                return Err(QwenError::Config(format!("{k} must be > 0")));
            }
        }
        if r.dpo.rounds > 0 && r.dpo.samples_per_image + usize::from(r.dpo.anchor_with_target) < 2 {
            return Err(QwenError::Config("dpo.samples_per_image must be ≥ 2 (or ≥ 1 with dpo.anchor_with_target): a pair needs two candidates".into()));
        }
        if !["sft", "base"].contains(&r.dpo.reference.as_str()) {
            return Err(QwenError::Config(format!("dpo.reference = {:?}: use \"sft\" or \"base\"", r.dpo.reference)));
        }
        if ![r.sft.lr, r.dpo.lr, r.dpo.beta].iter().all(|&x| x > 0.0) {
            return Err(QwenError::Config("sft.lr, dpo.lr and dpo.beta must be positive".into()));
        }
        Ok(())
    }

    /// Run SFT → eval → DPO for `r` (paths relative to `base`) on the recipe's backend.
    pub fn run_stages(r: &QwenRecipe, base: &Path) -> Result<QwenRunReport, QwenError> {
        match r.backend.as_str() {
            "ndarray" => run_on::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(r, base, &Default::default()),
            "flex" => run_on::<burn::backend::Autodiff<burn::backend::Flex>>(r, base, &Default::default()),
            #[cfg(feature = "cuda")]
            "cuda" => run_on::<burn::backend::Autodiff<burn::backend::Cuda>>(r, base, &Default::default()),
            other => Err(QwenError::Config(format!("backend {other:?}: use \"ndarray\", \"flex\" or (built with --features cuda) \"cuda\""))),
        }
    }

    /// Generation on the inference copy: the new token ids and whether an end token closed them.
    #[allow(clippy::too_many_arguments)]
    fn generate<B: burn::tensor::backend::Backend>(
        m: &QwenVl<B>,
        c: &QwenConfig,
        p: &PromptInput,
        max_new: usize,
        eos: &[u32],
        temperature: Option<f32>,
        rng: &mut StdRng,
        device: &B::Device,
    ) -> Result<(Vec<u32>, bool), QwenError> {
        let px = Some(p.pixel_tensor::<B>(device));
        let ids = match temperature {
            None => m.generate_greedy(c, &p.ids, px, &[p.grid], max_new, eos)?,
            Some(t) => m.generate_sampled(c, &p.ids, px, &[p.grid], max_new, eos, t, rng)?,
        };
        let finished = ids.last().is_some_and(|t| eos.contains(t));
        Ok((ids, finished))
    }

    fn run_on<AB: AutodiffBackend>(r: &QwenRecipe, base: &Path, device: &AB::Device) -> Result<QwenRunReport, QwenError> {
        validate(r)?;
        AB::seed(device, r.data.seed); // LoRA dropout masks
        let t0 = Instant::now();
        let model_dir = base.join(&r.model.path);
        let data_dir = base.join(&r.data.dir);
        let (train_dir, eval_dir) = data_splits(&data_dir).ok_or_else(|| QwenError::Io { path: data_dir.display().to_string(), msg: "no training data".into() })?;
        let run_dir = base.join("runs").join(&r.name);
        std::fs::create_dir_all(&run_dir).map_err(|e| QwenError::Io { path: run_dir.display().to_string(), msg: e.to_string() })?;
        if r.sft.gradient_checkpointing {
            eprintln!("note: sft.gradient_checkpointing is not implemented; activations are kept");
        }
        let tok = load_tokenizer(&model_dir)?;
        let pre = PreprocessConfig::from_dir(&model_dir)?;
        let loaded = load_dir::<AB>(&model_dir, device)?;
        let c = loaded.config.clone();
        let mut eos = loaded.eos_token_ids.clone();
        eos.push(im_end_id(&tok)?);
        eos.sort_unstable();
        eos.dedup();
        let lora = LoraConfig { rank: r.model.lora_rank, alpha: r.model.lora_alpha, dropout: r.model.lora_dropout, targets: r.model.lora_targets.clone() };
        let mut model = prepare_qlora(loaded.model, quantize_of(r)?, &lora, device)?;
        seed_adapters(&mut model, r.data.seed, device);

        // ---- data
        let limit = (r.data.train_samples > 0).then_some(r.data.train_samples);
        let train = load_samples(&train_dir, limit).map_err(terr)?;
        let evals = load_samples(&eval_dir, Some(r.eval.samples)).map_err(terr)?;
        let mut examples: Vec<(PromptInput, Vec<u32>, String)> = Vec::new();
        let mut skipped = 0;
        for s in &train {
            let p = PromptInput::new(&tok, &pre, &image_of(s), &s.prompt)?;
            let a = answer_ids(&tok, &s.program)?;
            if p.ids.len() + a.len() > r.sft.max_seq_len {
                skipped += 1;
                continue;
            }
            examples.push((p, a, s.program.clone()));
        }
        if examples.is_empty() {
            return Err(QwenError::Train(format!("no training example fits sft.max_seq_len = {} ({} samples in {})", r.sft.max_seq_len, train.len(), train_dir.display())));
        }

        // ---- SFT: AdamW steps of batch_size × grad_accum examples, gradients accumulated per micro-batch
        let n = examples.len();
        let per_step = r.sft.batch_size * r.sft.grad_accum;
        let steps_per_epoch = n.div_ceil(per_step);
        let total = r.sft.epochs * steps_per_epoch;
        let ocfg = OptimConfig { lr: r.sft.lr, warmup_steps: total / 10, weight_decay: 0.0, ..Default::default() };
        let mut opt = AdamW::new(ocfg.clone());
        let mut rng = StdRng::seed_from_u64(r.data.seed);
        let mut sft_losses = Vec::with_capacity(total);
        for epoch in 0..r.sft.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            for chunk in order.chunks(per_step) {
                let mut acc = GradientsAccumulator::<QwenVl<AB>>::new();
                let micro: Vec<&[usize]> = chunk.chunks(r.sft.batch_size).collect();
                let mut loss_sum = 0f64;
                for mb in &micro {
                    let batch: Vec<(&PromptInput, &[u32])> = mb.iter().map(|&i| (&examples[i].0, examples[i].1.as_slice())).collect();
                    let loss = qwen_sft_loss(&model, &c, &batch)?.div_scalar(micro.len() as f64); // [1]
                    loss_sum += loss.clone().into_scalar().elem::<f64>();
                    let g = GradientsParams::from_grads(loss.backward(), &model);
                    acc.accumulate(&model, g);
                }
                if !loss_sum.is_finite() {
                    return Err(QwenError::Train(format!("SFT loss is {loss_sum} at epoch {epoch}")));
                }
                let lr = lr_at(&ocfg, sft_losses.len(), total);
                let (m, _gnorm) = opt.step(model, acc.grads(), lr);
                model = m;
                sft_losses.push(loss_sum);
            }
        }
        eprintln!("SFT: {} steps, loss {:.4} → {:.4} ({:.1} s)", sft_losses.len(), sft_losses[0], sft_losses[sft_losses.len() - 1], t0.elapsed().as_secs_f64());

        let sft_adapters = run_dir.join("sft_adapters.safetensors");
        save_adapters(&mut model, &lora, &sft_adapters).map_err(terr)?;

        // ---- eval: greedy (+ best_of − 1 samples), executed and scored
        let t_eval = Instant::now();
        let infer = model.valid();
        let idev = device.clone();
        let mut results = Vec::new();
        for s in &evals {
            let p = PromptInput::new(&tok, &pre, &image_of(s), &s.prompt)?;
            for k in 0..r.eval.best_of {
                let temp = (k > 0).then_some(r.dpo.temperature);
                let (ids, finished) = generate::<AB::InnerBackend>(&infer, &c, &p, r.eval.max_new_tokens, &eos, temp, &mut rng, &idev)?;
                let program = tok.decode(&ids, true).map_err(|e| QwenError::Tokenizer(e.to_string()))?;
                let score = score_program(&program, &s.program);
                results.push(SampleResult { id: s.id.clone(), sample: k, program, finished, n_tokens: ids.len(), score });
            }
        }
        let eval = summarize(&results, r.eval.best_of, t_eval.elapsed().as_secs_f64());
        eprintln!("eval: {} programs, VSR {:.3}, IoU_best (valid) {:.3}", eval.n, eval.vsr, eval.iou_best_mean_valid);

        // ---- DPO rounds: sample, execute, score, pair; reference = adapters off
        if r.dpo.rounds > 0 && r.dpo.reference == "sft" {
            // merged on the inner (graph-free) copy: the merged weight is a new constant, not a graph node
            let mut inner = model.valid();
            merge_and_unload(&mut inner, &idev).map_err(terr)?;
            model = prepare_qlora(QwenVl::<AB>::from_inner(inner), quantize_of(r)?, &lora, device)?;
            seed_adapters(&mut model, r.data.seed.wrapping_add(1), device);
        }
        let mut dopt = AdamW::new(OptimConfig { lr: r.dpo.lr, warmup_steps: 0, weight_decay: 0.0, ..Default::default() });
        let mut rounds = Vec::new();
        let vision_tokens = [c.image_token_id];
        for round in 0..r.dpo.rounds {
            let infer = model.valid();
            let imgs = round_images(examples.len(), r.dpo.images_per_round.min(examples.len()), r.data.seed, round);
            let mut pairs = Vec::new();
            let (mut n_roll, mut n_ok) = (0, 0);
            for &i in &imgs {
                let (p, target_ids, target_src) = &examples[i];
                let mut cands: Vec<(Vec<u32>, f64, String)> = Vec::new();
                for _ in 0..r.dpo.samples_per_image {
                    let (ids, _) = generate::<AB::InnerBackend>(&infer, &c, p, r.eval.max_new_tokens, &eos, Some(r.dpo.temperature), &mut rng, &idev)?;
                    let program = tok.decode(&ids, true).map_err(|e| QwenError::Tokenizer(e.to_string()))?;
                    let sc = score_program(&program, target_src);
                    n_roll += 1;
                    n_ok += usize::from(sc.ok);
                    if ids.iter().any(|t| vision_tokens.contains(t)) {
                        continue; // an image token inside an answer cannot be scored as text
                    }
                    cands.push((ids, if sc.ok { sc.iou_best.unwrap_or(INVALID_REWARD) } else { INVALID_REWARD }, program));
                }
                if r.dpo.anchor_with_target {
                    let sc = score_program(target_src, target_src);
                    cands.push((target_ids.clone(), if sc.ok { sc.iou_best.unwrap_or(INVALID_REWARD) } else { INVALID_REWARD }, target_src.clone()));
                }
                let view: Vec<(usize, f64, &str)> = cands.iter().enumerate().map(|(k, (_, rw, s))| (k, *rw, s.as_str())).collect();
                for pr in select_group_pairs(&view, &PairConfig::default(), &mut rng) {
                    pairs.push(QwenPair { prompt: p.clone(), chosen: cands[pr.chosen].0.clone(), rejected: cands[pr.rejected].0.clone() });
                }
            }
            let mut steps = Vec::new();
            for pair in &pairs {
                let refs = reference_logprobs(&model.valid(), &c, pair)?;
                let (m, stats, _gnorm) = qwen_dpo_step(model, &mut dopt, &c, std::slice::from_ref(pair), &[refs], r.dpo.beta, r.dpo.lr)?;
                model = m;
                steps.push(stats);
            }
            eprintln!("DPO round {round}: {} rollouts ({} execute), {} pairs", n_roll, n_ok, pairs.len());
            rounds.push(QwenDpoRound { round, images: imgs.len(), rollouts: n_roll, rollout_vsr: n_ok as f64 / n_roll.max(1) as f64, pairs: pairs.len(), steps });
        }

        // ---- outputs
        let adapters = run_dir.join("adapters.safetensors");
        save_adapters(&mut model, &lora, &adapters).map_err(terr)?;
        let report = QwenRunReport { run_dir: run_dir.clone(), train_examples: n, sft_skipped: skipped, sft_losses, eval, eval_results: results, dpo: rounds, sft_adapters, adapters };
        let json = serde_json::to_string_pretty(&report).map_err(terr)?;
        let rp = run_dir.join("report.json");
        std::fs::write(&rp, json).map_err(|e| QwenError::Io { path: rp.display().to_string(), msg: e.to_string() })?;
        Ok(report)
    }
}
