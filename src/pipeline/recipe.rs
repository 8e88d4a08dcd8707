//! The recipe schema: a TOML file names the stages (data → tokenizer → SFT → eval → DPO → report) and
//! their settings, for the small VLM (`[model] size`) or a local Qwen2-VL / Qwen2.5-VL checkpoint
//! (`[model] path`).
//!
//! The file is parsed with unknown keys rejected, `--set section.key=value` overrides are applied, and
//! everything is validated before any work starts, with messages that name the field and the fix.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exec::SandboxConfig;
use crate::model::lora::LoraConfig;
use crate::model::quant::Quantize;
use crate::model::qwen2vl::loader::{read_config, shard_files};
use crate::model::qwen2vl::memory::{MemoryEstimate, WeightFormat, estimate_memory};
use crate::model::tokenizer::TokenizerConfig;
use crate::model::{SIZES, VlmConfig};
use crate::train::adapt::Adaptation;
use crate::train::dpo::DpoConfig;
use crate::train::grpo::GrpoConfig;
use crate::train::sft::SftConfig;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("recipe {path}: {msg}")]
    Invalid { path: String, msg: String },
    #[error("{0}")]
    Stage(String),
}

/// Which burn backend trains and evaluates.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Ndarray,
    Flex,
    Cuda,
}

impl BackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Ndarray => "ndarray",
            BackendKind::Flex => "flex",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ndarray" => Ok(BackendKind::Ndarray),
            "flex" => Ok(BackendKind::Flex),
            "cuda" => Ok(BackendKind::Cuda),
            _ => Err(format!(
                "unknown backend `{s}` (expected ndarray, flex or cuda)"
            )),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Run directory name: `runs/<name>/`.
    pub name: String,
    #[serde(default)]
    pub backend: BackendKind,
    pub data: DataStage,
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    pub model: ModelStage,
    #[serde(default)]
    pub sft: SftConfig,
    /// LoRA adapters instead of full fine-tuning, for SFT and DPO (`train::adapt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub eval: EvalStage,
    /// DPO on executed-IoU preferences after SFT and its evaluation (`train::dpo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<DpoConfig>,
    /// Online RL (Dr. GRPO) on the executed reward after SFT and its evaluation (`train::grpo`); a
    /// recipe has `[dpo]` or `[grpo]`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<GrpoConfig>,
    /// The executor of every program a model writes: SFT validation, evaluation, DPO rollouts (wasm
    /// by default; `native` only for trusted runs).
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Write `report/` (PNG figures + README.md) at the end (`report::run`).
    #[serde(default)]
    pub report: bool,
}

/// Which model family a recipe trains.
#[derive(Clone, Debug, PartialEq)]
pub enum Family {
    /// The small VLM of a named size.
    Vlm(String),
    /// A local Hugging Face Qwen2-VL / Qwen2.5-VL checkpoint directory.
    Qwen(PathBuf),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// Our procedural GenCAD-style generator, rendered by our renderer.
    Synth,
    /// Existing data in a folder: GenCAD-Code parquet shards in `dir/train`, `dir/val` (or
    /// `validation`), `dir/test`, or an `index.jsonl` folder (`ID.png` + `ID.py`) used for every split.
    Dir,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataStage {
    pub source: DataSource,
    /// Shard folder when `source = "dir"`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default = "d_train")]
    pub n_train: usize,
    #[serde(default = "d_val")]
    pub n_val: usize,
    #[serde(default = "d_val")]
    pub n_test: usize,
    #[serde(default)]
    pub seed: u64,
    /// Hugging Face dataset id named in the "how to get it" message when `dir` is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_id: Option<String>,
}

fn d_train() -> usize {
    1000
}
fn d_val() -> usize {
    50
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelStage {
    /// The small VLM: one of `tiny`, `mini`, `small`, `medium`, `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Or a local Hugging Face Qwen2-VL / Qwen2.5-VL directory (config.json, *.safetensors,
    /// tokenizer.json, preprocessor_config.json); it trains LoRA adapters (needs `[lora]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Hub id named in the "how to get it" message when `path` is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_id: Option<String>,
    /// GPU memory (GiB) the memory estimate of a Qwen checkpoint is checked against (a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_gib: Option<f64>,
    /// Storage of the frozen base weights of the linear layers (all but `lm_head`) while training
    /// adapters: `"none"` (f32), `"int8"`, `"int4"` or `"nf4"` (QLoRA). Anything but `"none"` needs
    /// a `[lora]` section.
    #[serde(default)]
    pub quantize: Quantize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalStage {
    /// Evaluate on the recipe's held-out synthetic split (`test`).
    pub synth_test: bool,
    /// More folders (`index.jsonl` folders or parquet shard folders).
    pub dirs: Vec<PathBuf>,
    /// Most images per set.
    pub limit: Option<usize>,
    /// Programs per image.
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub batch: usize,
    pub max_new_tokens: usize,
    /// `[eval.search]`: render-and-compare search (greedy + sampled proposals, refined against the
    /// image); the evaluation then reports the greedy and the searched programs side by side.
    pub search: Option<crate::search::SearchConfig>,
}

impl Default for EvalStage {
    fn default() -> Self {
        EvalStage {
            synth_test: true,
            dirs: Vec::new(),
            limit: None,
            samples: 1,
            temperature: 0.0,
            top_p: 1.0,
            batch: 16,
            max_new_tokens: 448,
            search: None,
        }
    }
}

/// Apply one `section.key=value` override to a TOML document. The value is read as TOML
/// (`3`, `1e-3`, `true`, `"x"`, `[1, 2]`) and otherwise taken as a string.
pub fn apply_set(doc: &mut toml::Table, set: &str) -> Result<(), String> {
    let (key, value) = set
        .split_once('=')
        .ok_or_else(|| format!("--set {set:?}: expected section.key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("--set {set:?}: empty key part"));
    }
    let v: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", value.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.trim().to_string()));
    let mut t = doc;
    for p in &parts[..parts.len() - 1] {
        let e = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = e
            .as_table_mut()
            .ok_or_else(|| format!("--set {set:?}: {p} is not a section"))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

impl Recipe {
    /// Parse `text` (from `path`, for messages), apply `sets`, validate.
    pub fn parse(text: &str, path: &Path, sets: &[String]) -> Result<Recipe, RecipeError> {
        let inv = |msg: String| RecipeError::Invalid {
            path: path.display().to_string(),
            msg,
        };
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| inv(e.to_string()))?;
        for s in sets {
            apply_set(&mut doc, s).map_err(inv)?;
        }
        let r: Recipe = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| inv(e.to_string()))?;
        r.validate(path)?;
        Ok(r)
    }

    pub fn load(path: &Path, sets: &[String]) -> Result<Recipe, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError::Invalid {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        Recipe::parse(&text, path, sets)
    }

    /// Every check that can fail before work starts, with how to fix it.
    pub fn validate(&self, path: &Path) -> Result<(), RecipeError> {
        let inv = |msg: String| {
            Err(RecipeError::Invalid {
                path: path.display().to_string(),
                msg,
            })
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return inv(format!(
                "name = {:?}: use letters, digits, '-' and '_' (it names runs/<name>/)",
                self.name
            ));
        }
        let family = match (&self.model.size, &self.model.path) {
            (Some(s), None) if SIZES.contains(&s.as_str()) => Family::Vlm(s.clone()),
            (Some(s), None) => return inv(format!("model.size = {s:?}: choose one of {}", SIZES.join(", "))),
            (None, Some(p)) => Family::Qwen(p.clone()),
            (Some(_), Some(_)) => return inv("model.size and model.path are both set: give size (the small VLM) or path (a Qwen2-VL checkpoint), not both".into()),
            (None, None) => return inv(format!("[model] needs size = one of {} (the small VLM) or path = \"<Qwen2-VL checkpoint dir>\"", SIZES.join(", "))),
        };
        if let Family::Qwen(dir) = &family {
            self.check_checkpoint(dir)
                .map_err(|m| RecipeError::Invalid {
                    path: path.display().to_string(),
                    msg: m,
                })?;
        }
        match self.data.source {
            DataSource::Dir => match &self.data.dir {
                None => return inv("data.source = \"dir\" needs data.dir = \"<shard folder with train/ and val/>\"".into()),
                Some(d) if data_splits(d).is_none() => {
                    let get = match &self.data.hub_id {
                        Some(id) => format!(
                            "; download the parquet shards: `huggingface-cli download {id} --repo-type dataset --local-dir {}` (folders train/, validation/ or val/, test/), or point data.dir at an existing copy",
                            d.display()
                        ),
                        None => String::new(),
                    };
                    return inv(format!("data.dir = {:?}: missing train split (train/*.parquet, or index.jsonl with ID.png / ID.py){get}", d));
                }
                _ => {}
            },
            DataSource::Synth => {
                if self.data.n_train == 0 {
                    return inv("data.n_train must be > 0".into());
                }
            }
        }
        if self.backend == BackendKind::Cuda && !cfg!(feature = "cuda") {
            return inv("backend = \"cuda\" needs a build with `--features cuda`; or set backend = \"ndarray\"".into());
        }
        if self.tokenizer.vocab_size < 300 {
            return inv(format!(
                "tokenizer.vocab_size = {}: use at least 300 (256 bytes + specials + merges)",
                self.tokenizer.vocab_size
            ));
        }
        let s = &self.sft;
        for (k, v) in [
            ("sft.steps", s.steps),
            ("sft.batch_size", s.batch_size),
            ("sft.grad_accum", s.grad_accum),
            ("sft.max_code_tokens", s.max_code_tokens),
        ] {
            if v == 0 {
                return inv(format!("{k} must be > 0"));
            }
        }
        if !(s.optim.lr > 0.0 && s.optim.lr < 1.0) {
            return inv(format!(
                "sft.optim.lr = {}: use a value in (0, 1), e.g. 1e-3",
                s.optim.lr
            ));
        }
        if s.decimals > 8 {
            return inv(format!("sft.decimals = {}: use 0..=8", s.decimals));
        }
        if !(s.aux_weight.is_finite() && s.aux_weight >= 0.0) {
            return inv(format!(
                "sft.aux_weight = {}: use a value >= 0 (0 = no auxiliary shape loss, e.g. 1.0)",
                s.aux_weight
            ));
        }
        match &family {
            Family::Vlm(size) => {
                let c = VlmConfig::named(size, self.tokenizer.vocab_size).map_err(|e| {
                    RecipeError::Invalid {
                        path: path.display().to_string(),
                        msg: e.to_string(),
                    }
                })?;
                if s.max_code_tokens + c.n_image_tokens() + 40 > c.max_seq_len {
                    return inv(format!(
                        "sft.max_code_tokens = {} does not fit model.size {size:?} (max_seq_len {}, {} image tokens, ~40 prompt tokens)",
                        s.max_code_tokens,
                        c.max_seq_len,
                        c.n_image_tokens()
                    ));
                }
                if let Err(m) = self.adaptation().validate(&c) {
                    return inv(m);
                }
            }
            Family::Qwen(dir) => {
                if self.adaptation().lora_cfg().is_none() {
                    return inv("model.path (a Qwen2-VL checkpoint) trains LoRA adapters only: add a [lora] section with rank > 0".into());
                }
                let qc = read_config(dir).map_err(|e| RecipeError::Invalid {
                    path: path.display().to_string(),
                    msg: e.to_string(),
                })?;
                if let Err(m) = self
                    .adaptation()
                    .validate_for(&crate::model::qwen2vl::linear_paths(&qc))
                {
                    return inv(m);
                }
                if self.data.source != DataSource::Dir {
                    return inv("model.path (a Qwen2-VL checkpoint) trains on existing data: set data.source = \"dir\" and data.dir".into());
                }
                if self.grpo.as_ref().is_some_and(|g| g.sft_run.is_some()) {
                    return inv("[grpo] with model.path: sft_run is not supported (the SFT adapters of this run are the start)".into());
                }
                if self.dpo.as_ref().is_some_and(|d| {
                    d.reset_reference || d.label_smoothing != 0.0 || d.sft_run.is_some()
                }) {
                    return inv("[dpo] with model.path: reset_reference, label_smoothing and sft_run are not supported (the reference is the SFT model, adapters off)".into());
                }
            }
        }
        for d in &self.eval.dirs {
            if !d.is_dir() {
                return inv(format!("eval.dirs: {:?} is not a folder", d));
            }
        }
        if self.eval.samples == 0 || self.eval.batch == 0 {
            return inv("eval.samples and eval.batch must be > 0".into());
        }
        if self.eval.samples > 1 && self.eval.temperature <= 0.0 {
            return inv(format!(
                "eval.samples = {} with temperature 0 gives identical programs; set eval.temperature > 0",
                self.eval.samples
            ));
        }
        if let Err(e) = self.sandbox.validate() {
            return inv(format!("[sandbox] {e}"));
        }
        if let Some(sc) = &self.eval.search {
            if let Err(e) = sc.validate() {
                return inv(format!("[eval.search] {}", e.replace("search.", "")));
            }
            if self.eval.samples > 1 {
                return inv(format!(
                    "eval.samples = {} with [eval.search]: the search samples its own proposals (eval.search.samples); set eval.samples = 1",
                    self.eval.samples
                ));
            }
        }
        if self.dpo.is_some() && self.grpo.is_some() {
            return inv("a recipe has [dpo] or [grpo], not both: compare them with two recipes that share dpo.sft_run / grpo.sft_run".into());
        }
        if let Some(g) = &self.grpo {
            if let Err(m) = g.validate() {
                return inv(m);
            }
            if let Some(src) = &g.sft_run
                && !src.join("model.safetensors").exists()
            {
                return inv(format!(
                    "grpo.sft_run = {src:?}: no finished SFT run there (model.safetensors); run its recipe first"
                ));
            }
        }
        if let Some(d) = &self.dpo {
            if let Err(m) = d
                .validate()
                .and_then(|_| crate::train::dpo::validate_with(d, &self.adaptation()))
            {
                return inv(m);
            }
            if let Some(src) = &d.sft_run
                && !src.join("model.safetensors").exists()
            {
                return inv(format!(
                    "dpo.sft_run = {src:?}: no finished SFT run there (model.safetensors); run its recipe first"
                ));
            }
        }
        Ok(())
    }

    /// The finished SFT run `[dpo]` or `[grpo]` starts from, if one is named.
    pub fn sft_run(&self) -> Option<&PathBuf> {
        self.dpo
            .as_ref()
            .and_then(|d| d.sft_run.as_ref())
            .or_else(|| self.grpo.as_ref().and_then(|g| g.sft_run.as_ref()))
    }

    /// The model family `[model]` names (validated).
    pub fn family(&self) -> Family {
        match (&self.model.size, &self.model.path) {
            (_, Some(p)) => Family::Qwen(p.clone()),
            (Some(s), None) => Family::Vlm(s.clone()),
            (None, None) => Family::Vlm(String::new()),
        }
    }

    /// A Qwen checkpoint directory is on disk with what loading needs; else the first missing piece
    /// with how to get it.
    fn check_checkpoint(&self, m: &Path) -> Result<(), String> {
        let get = format!(
            "Download it on a machine with network access: `huggingface-cli download {id} --local-dir {p}`, or point model.path at an existing local copy",
            id = self.model.hub_id.as_deref().unwrap_or("<hub id>"),
            p = m.display()
        );
        if !m.is_dir() {
            return Err(format!("{}: missing model directory. {get}", m.display()));
        }
        for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
            if !m.join(f).is_file() {
                return Err(format!(
                    "{}: missing checkpoint file. {get}",
                    m.join(f).display()
                ));
            }
        }
        shard_files(m).map_err(|e| format!("{}: missing weights ({e}). {get}", m.display()))?;
        Ok(())
    }

    /// The memory a Qwen checkpoint's training needs (weights, adapters, optimizer, activations).
    pub fn qwen_memory(&self, dir: &Path) -> Option<MemoryEstimate> {
        let c = read_config(dir).ok()?;
        let format = if self.model.quantize == Quantize::Nf4 {
            WeightFormat::Nf4
        } else {
            WeightFormat::F32
        };
        let rank = self.lora.as_ref().map_or(0, |l| l.rank) as u64;
        Some(estimate_memory(
            &c,
            format,
            rank,
            self.sft.batch_size as u64,
            (self.sft.max_code_tokens + 512) as u64,
            false,
        ))
    }

    /// How SFT and DPO train: `[model] quantize` + `[lora]`.
    pub fn adaptation(&self) -> Adaptation {
        Adaptation {
            quantize: self.model.quantize,
            lora: self.lora.clone(),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "name = \"t\"\n[data]\nsource = \"synth\"\nn_train = 10\n[model]\nsize = \"tiny\"\n[tokenizer]\nvocab_size = 400\n[sft]\nsteps = 3\nmax_code_tokens = 200\n";

    #[test]
    fn parses_sets_and_rejects_unknown_keys() {
        let p = Path::new("r.toml");
        let r = Recipe::parse(
            R,
            p,
            &[
                "sft.steps=7".into(),
                "sft.optim.lr=2e-3".into(),
                "model.size=mini".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            (r.sft.steps, r.sft.optim.lr, r.model.size.as_deref()),
            (7, 2e-3, Some("mini"))
        );
        let e = Recipe::parse(&format!("{R}stepz = 3\n"), p, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("stepz"), "{e}");
        let e = Recipe::parse(R, p, &["model.size=huge".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one of"), "{e}");
        let e = Recipe::parse(R, p, &["sft.steps=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sft.steps"), "{e}");
        // the resolved form parses back to the same recipe
        assert_eq!(Recipe::parse(&r.to_toml(), p, &[]).unwrap(), r);
    }

    #[test]
    fn quantize_and_lora_are_validated_before_any_work() {
        let p = Path::new("r.toml");
        let lora = "[lora]\nrank = 4\nalpha = 8.0\ntargets = [\"q_proj\", \"v_proj\"]\n";
        let q = Recipe::parse(&format!("{R}{lora}"), p, &["model.quantize=nf4".into()]).unwrap();
        assert_eq!(q.model.quantize, Quantize::Nf4);
        assert_eq!(q.lora.as_ref().map(|l| l.rank), Some(4));
        assert_eq!(Recipe::parse(&q.to_toml(), p, &[]).unwrap(), q);
        let e = Recipe::parse(R, p, &["model.quantize=nf5".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nf5") && e.contains("nf4"), "{e}");
        let e = Recipe::parse(R, p, &["model.quantize=int4".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.quantize") && e.contains("[lora]"), "{e}");
        let e = Recipe::parse(
            &format!("{R}{lora}"),
            p,
            &["lora.targets=[\"q_prj\"]".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lora.targets") && e.contains("q_prj"), "{e}");
        let e = Recipe::parse(&format!("{R}{lora}"), p, &["lora.dropout=1.0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lora.dropout"), "{e}");
        let e = Recipe::parse(&format!("{R}{lora}"), p, &["lora.rnak=2".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rnak"), "{e}");
    }
}

fn has_samples(p: &Path) -> bool {
    p.join("index.jsonl").is_file()
        || std::fs::read_dir(p)
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            })
            .unwrap_or(false)
}

/// `(train, test)` folders of a data directory: `train/` or `data/train/` (parquet shards or an
/// `index.jsonl` folder), else `d` itself when it holds an `index.jsonl`; test is `test/`,
/// `validation/` or `val/` when one has samples, else the training folder. `None`: no training data.
pub fn data_splits(d: &Path) -> Option<(PathBuf, PathBuf)> {
    let train = ["train", "data/train"]
        .iter()
        .map(|s| d.join(s))
        .find(|p| p.is_dir() && has_samples(p))
        .or_else(|| d.join("index.jsonl").is_file().then(|| d.to_path_buf()))?;
    let test = ["test", "validation", "val", "data/test", "data/validation"]
        .iter()
        .map(|s| d.join(s))
        .find(|p| p.is_dir() && has_samples(p))
        .unwrap_or_else(|| train.clone());
    Some((train, test))
}
