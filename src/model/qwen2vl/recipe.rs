//! The seed system's recipe (`recipes/qwen2_5_vl_3b_qlora.toml`): Qwen2.5-VL-3B-Instruct from a local
//! Hugging Face directory, NF4 + LoRA, SFT on local GenCAD-Code parquet shards, eval (VSR, IoU_best),
//! then DPO. `check` runs before anything else and names any missing path with how to get it.
//!
//! Not wired yet: the Qwen SFT/DPO/eval stages themselves (they need the NF4 + LoRA linear of
//! `model::lora`/`model::quant` inside these modules). `run` verifies inputs, prints the memory estimate,
//! loads and validates the checkpoint, and then stops with an error saying so.

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
    let train = ["train", "data/train"].iter().map(|s| d.join(s)).find(|p| p.is_dir());
    let has_parquet = |p: &Path| std::fs::read_dir(p).map(|it| it.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "parquet"))).unwrap_or(false);
    match train {
        Some(t) if has_parquet(&t) => Ok(()),
        _ => Err(missing(&d.join("train"), "train split (*.parquet)", get_data)),
    }
}

/// Check the inputs, print the memory estimate, load and validate the checkpoint; then stop, because the
/// Qwen training stages are not wired yet.
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
    let dev = Default::default();
    super::load_dir::<burn::backend::NdArray<f32>>(&base.join(&r.model.path), &dev)?;
    Err(QwenError::Config(format!(
        "{}: checkpoint and data are in place and the weights load, but the Qwen SFT/eval/DPO stages are not implemented yet (issue 8)",
        path.display()
    )))
}
