//! Recipes: a TOML file names the stages (data → tokenizer → SFT → eval) and their settings.
//!
//! The file is parsed with unknown keys rejected, `--set section.key=value` overrides are applied, and
//! everything is validated before any work starts. The resolved recipe is written first as
//! `runs/<name>/recipe.resolved.toml`; a stage whose outputs exist is reused, and SFT resumes from its
//! last checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::lora::LoraConfig;
use crate::model::quant::Quantize;
use crate::model::{SIZES, VlmConfig};
use crate::tokenizer::TokenizerConfig;
use crate::train::adapt::Adaptation;
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
    #[cfg(feature = "sandbox")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<crate::train::dpo::DpoConfig>,
    /// Write `report/` (PNG figures + README.md) at the end (`report::run`).
    #[cfg(all(feature = "report", feature = "sandbox"))]
    #[serde(default)]
    pub report: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// Our procedural GenCAD-style generator, rendered by our renderer.
    Synth,
    /// Existing parquet shards in the GenCAD-Code schema: `dir/train`, `dir/val` (or `validation`), `dir/test`.
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
    /// One of `tiny`, `mini`, `small`, `medium`, `base`.
    pub size: String,
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
}

impl Default for EvalStage {
    fn default() -> Self {
        EvalStage { synth_test: true, dirs: Vec::new(), limit: None, samples: 1, temperature: 0.0, top_p: 1.0, batch: 16, max_new_tokens: 448 }
    }
}

/// Apply one `section.key=value` override to a TOML document. The value is read as TOML
/// (`3`, `1e-3`, `true`, `"x"`, `[1, 2]`) and otherwise taken as a string.
pub fn apply_set(doc: &mut toml::Table, set: &str) -> Result<(), String> {
    let (key, value) = set.split_once('=').ok_or_else(|| format!("--set {set:?}: expected section.key=value"))?;
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
        let e = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = e.as_table_mut().ok_or_else(|| format!("--set {set:?}: {p} is not a section"))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

impl Recipe {
    /// Parse `text` (from `path`, for messages), apply `sets`, validate.
    pub fn parse(text: &str, path: &Path, sets: &[String]) -> Result<Recipe, RecipeError> {
        let inv = |msg: String| RecipeError::Invalid { path: path.display().to_string(), msg };
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| inv(e.to_string()))?;
        for s in sets {
            apply_set(&mut doc, s).map_err(inv)?;
        }
        let r: Recipe = toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| inv(e.to_string()))?;
        r.validate(path)?;
        Ok(r)
    }

    pub fn load(path: &Path, sets: &[String]) -> Result<Recipe, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError::Invalid { path: path.display().to_string(), msg: e.to_string() })?;
        Recipe::parse(&text, path, sets)
    }

    /// Every check that can fail before work starts, with how to fix it.
    pub fn validate(&self, path: &Path) -> Result<(), RecipeError> {
        let inv = |msg: String| Err(RecipeError::Invalid { path: path.display().to_string(), msg });
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return inv(format!("name = {:?}: use letters, digits, '-' and '_' (it names runs/<name>/)", self.name));
        }
        if !SIZES.contains(&self.model.size.as_str()) {
            return inv(format!("model.size = {:?}: choose one of {}", self.model.size, SIZES.join(", ")));
        }
        if self.backend == BackendKind::Cuda && !cfg!(feature = "cuda") {
            return inv("backend = \"cuda\" needs a build with `--features cuda`; or set backend = \"ndarray\"".into());
        }
        match self.data.source {
            DataSource::Dir => match &self.data.dir {
                None => return inv("data.source = \"dir\" needs data.dir = \"<shard folder with train/ and val/>\"".into()),
                Some(d) if !d.join("train").is_dir() => return inv(format!("data.dir = {:?}: no train/ folder of parquet shards there", d)),
                _ => {}
            },
            DataSource::Synth => {
                if self.data.n_train == 0 {
                    return inv("data.n_train must be > 0".into());
                }
            }
        }
        if self.tokenizer.vocab_size < 300 {
            return inv(format!("tokenizer.vocab_size = {}: use at least 300 (256 bytes + specials + merges)", self.tokenizer.vocab_size));
        }
        let s = &self.sft;
        for (k, v) in [("sft.steps", s.steps), ("sft.batch_size", s.batch_size), ("sft.grad_accum", s.grad_accum), ("sft.max_code_tokens", s.max_code_tokens)] {
            if v == 0 {
                return inv(format!("{k} must be > 0"));
            }
        }
        if !(s.optim.lr > 0.0 && s.optim.lr < 1.0) {
            return inv(format!("sft.optim.lr = {}: use a value in (0, 1), e.g. 1e-3", s.optim.lr));
        }
        if s.decimals > 8 {
            return inv(format!("sft.decimals = {}: use 0..=8", s.decimals));
        }
        if !(s.aux_weight.is_finite() && s.aux_weight >= 0.0) {
            return inv(format!("sft.aux_weight = {}: use a value >= 0 (0 = no auxiliary shape loss, e.g. 1.0)", s.aux_weight));
        }
        let c = VlmConfig::named(&self.model.size, self.tokenizer.vocab_size).map_err(|e| RecipeError::Invalid { path: path.display().to_string(), msg: e.to_string() })?;
        if s.max_code_tokens + c.n_image_tokens() + 40 > c.max_seq_len {
            return inv(format!(
                "sft.max_code_tokens = {} does not fit model.size {:?} (max_seq_len {}, {} image tokens, ~40 prompt tokens)",
                s.max_code_tokens, self.model.size, c.max_seq_len, c.n_image_tokens()
            ));
        }
        if let Err(m) = self.adaptation().validate(&c) {
            return inv(m);
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
            return inv(format!("eval.samples = {} with temperature 0 gives identical programs; set eval.temperature > 0", self.eval.samples));
        }
        #[cfg(feature = "sandbox")]
        if let Some(d) = &self.dpo {
            if let Err(m) = d.validate().and_then(|_| crate::train::dpo::validate_with(d, &self.adaptation())) {
                return inv(m);
            }
            if let Some(src) = &d.sft_run
                && !src.join("model.safetensors").exists()
            {
                return inv(format!("dpo.sft_run = {src:?}: no finished SFT run there (model.safetensors); run its recipe first"));
            }
        }
        Ok(())
    }

    /// How SFT and DPO train: `[model] quantize` + `[lora]`.
    pub fn adaptation(&self) -> Adaptation {
        Adaptation { quantize: self.model.quantize, lora: self.lora.clone() }
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
        let r = Recipe::parse(R, p, &["sft.steps=7".into(), "sft.optim.lr=2e-3".into(), "model.size=mini".into()]).unwrap();
        assert_eq!((r.sft.steps, r.sft.optim.lr, r.model.size.as_str()), (7, 2e-3, "mini"));
        let e = Recipe::parse(&format!("{R}stepz = 3\n"), p, &[]).unwrap_err().to_string();
        assert!(e.contains("stepz"), "{e}");
        let e = Recipe::parse(R, p, &["model.size=huge".into()]).unwrap_err().to_string();
        assert!(e.contains("choose one of"), "{e}");
        let e = Recipe::parse(R, p, &["sft.steps=0".into()]).unwrap_err().to_string();
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
        let e = Recipe::parse(R, p, &["model.quantize=nf5".into()]).unwrap_err().to_string();
        assert!(e.contains("nf5") && e.contains("nf4"), "{e}");
        let e = Recipe::parse(R, p, &["model.quantize=int4".into()]).unwrap_err().to_string();
        assert!(e.contains("model.quantize") && e.contains("[lora]"), "{e}");
        let e = Recipe::parse(&format!("{R}{lora}"), p, &["lora.targets=[\"q_prj\"]".into()]).unwrap_err().to_string();
        assert!(e.contains("lora.targets") && e.contains("q_prj"), "{e}");
        let e = Recipe::parse(&format!("{R}{lora}"), p, &["lora.dropout=1.0".into()]).unwrap_err().to_string();
        assert!(e.contains("lora.dropout"), "{e}");
        let e = Recipe::parse(&format!("{R}{lora}"), p, &["lora.rnak=2".into()]).unwrap_err().to_string();
        assert!(e.contains("rnak"), "{e}");
    }
}

/// What `run` did, stage by stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub run: PathBuf,
    /// (stage, "done" | "reused", detail)
    pub stages: Vec<(String, String, String)>,
}

fn stage_err(stage: &str, e: impl std::fmt::Display) -> RecipeError {
    RecipeError::Stage(format!("stage {stage}: {e}"))
}

/// Run every stage of `r` under `runs_root/<name>/` on the recipe's backend.
pub fn run(r: &Recipe, runs_root: &Path, show_progress: bool) -> Result<RunReport, RecipeError> {
    let run_dir = runs_root.join(&r.name);
    std::fs::create_dir_all(&run_dir).map_err(|e| stage_err("setup", e))?;
    let resolved = run_dir.join("recipe.resolved.toml");
    std::fs::write(&resolved, r.to_toml()).map_err(|e| stage_err("setup", e))?;
    match r.backend {
        BackendKind::Ndarray => {
            let device = burn::backend::ndarray::NdArrayDevice::Cpu;
            run_on::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(r, &run_dir, &device, show_progress)
        }
        BackendKind::Flex => {
            let device = burn::backend::flex::FlexDevice;
            run_on::<burn::backend::Autodiff<burn::backend::Flex>>(r, &run_dir, &device, show_progress)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let device = burn::backend::cuda::CudaDevice::default();
            run_on::<burn::backend::Autodiff<burn::backend::Cuda>>(r, &run_dir, &device, show_progress)
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(stage_err("setup", "backend cuda needs --features cuda")),
    }
}

/// Splits of the data stage: `data/{train,val,test}` parquet folders (or the recipe's `data.dir`).
pub fn split_dir(r: &Recipe, run_dir: &Path, split: &str) -> PathBuf {
    match (&r.data.source, &r.data.dir) {
        (DataSource::Dir, Some(d)) => {
            let p = d.join(split);
            if split == "val" && !p.exists() { d.join("validation") } else { p }
        }
        _ => run_dir.join("data").join(split),
    }
}

fn run_on<AB: burn::tensor::backend::AutodiffBackend>(r: &Recipe, run_dir: &Path, device: &AB::Device, show_progress: bool) -> Result<RunReport, RecipeError> {
    use crate::eval::{EvalSummary, evaluate_samples, load_samples, load_samples_at, summarize, write_results_parquet};
    use crate::tokenizer::CodeTokenizer;
    use crate::train::sft::{prepare_examples, train_sft_adapted};
    let mut rep = RunReport { run: run_dir.to_path_buf(), stages: Vec::new() };

    // 0. reuse a finished SFT run (its data, tokenizer and weights) for DPO
    #[cfg(feature = "sandbox")]
    if let Some(src) = r.dpo.as_ref().and_then(|d| d.sft_run.as_ref()) {
        let got = crate::train::dpo::adopt_sft_run(src, run_dir).map_err(|e| stage_err("sft_run", e))?;
        if !got.is_empty() {
            rep.stages.push(("sft_run".into(), "done".into(), format!("from {}: {}", src.display(), got.join(", "))));
        }
    }

    // 1. data
    if r.data.source == DataSource::Synth {
        let done = run_dir.join("data").join("DONE");
        if done.exists() {
            rep.stages.push(("data".into(), "reused".into(), run_dir.join("data").display().to_string()));
        } else {
            let t = std::time::Instant::now();
            make_synth_data(&r.data, &run_dir.join("data"), show_progress).map_err(|e| stage_err("data", e))?;
            std::fs::write(&done, "").map_err(|e| stage_err("data", e))?;
            rep.stages.push(("data".into(), "done".into(), format!("{} train, {:.1} s", r.data.n_train, t.elapsed().as_secs_f64())));
        }
    }
    let side = VlmConfig::named(&r.model.size, r.tokenizer.vocab_size).map_err(|e| stage_err("model", e))?.image_size;
    let train_samples = load_samples_at(&split_dir(r, run_dir, "train"), Some(r.data.n_train), Some(side)).map_err(|e| stage_err("data", e))?;
    let val_samples = load_samples_at(&split_dir(r, run_dir, "val"), Some(r.data.n_val), Some(side)).map_err(|e| stage_err("data", e))?;

    // 2. tokenizer
    let tok_path = run_dir.join("tokenizer.json");
    let tok = if tok_path.exists() {
        rep.stages.push(("tokenizer".into(), "reused".into(), tok_path.display().to_string()));
        CodeTokenizer::load(&tok_path).map_err(|e| stage_err("tokenizer", e))?
    } else {
        let limits = crate::cad::Limits::default();
        let mut corpus: Vec<String> =
            train_samples.iter().filter_map(|s| crate::cad::fmt::canonicalize(&s.program, r.sft.decimals, &limits).ok()).collect();
        corpus.push(crate::eval::GENCAD_PROMPT.to_string());
        let tok = crate::tokenizer::train(&corpus, &r.tokenizer).map_err(|e| stage_err("tokenizer", e))?;
        tok.save(&tok_path).map_err(|e| stage_err("tokenizer", e))?;
        rep.stages.push(("tokenizer".into(), "done".into(), format!("vocab {}", tok.vocab_size())));
        tok
    };
    let c = VlmConfig::named(&r.model.size, tok.vocab_size()).map_err(|e| stage_err("model", e))?;

    // 3. sft
    if run_dir.join("model.safetensors").exists() {
        rep.stages.push(("sft".into(), "reused".into(), run_dir.join("model.safetensors").display().to_string()));
    } else {
        let (train, skipped) = prepare_examples(train_samples, &tok, &c, &r.sft).map_err(|e| stage_err("sft", e))?;
        let (val, _) = prepare_examples(val_samples, &tok, &c, &r.sft).map_err(|e| stage_err("sft", e))?;
        if show_progress {
            eprintln!("sft: {} training examples ({} skipped: unparsable or over sft.max_code_tokens), {} validation", train.len(), skipped, val.len());
        }
        let out = train_sft_adapted::<AB>(run_dir, &r.sft, &c, &r.adaptation(), &tok, &train, &val, device, None, show_progress)
            .map_err(|e| stage_err("sft", e))?;
        let last = out.metrics.iter().rev().find_map(|m| m.loss).unwrap_or(f64::NAN);
        rep.stages.push(("sft".into(), "done".into(), format!("{} steps, last loss {last:.4}", out.step)));
    }

    // 4. eval
    let model = crate::model::weights::load_module(crate::model::vlm::Vlm::<AB::InnerBackend>::new(&c, device), &run_dir.join("model.safetensors"))
        .map_err(|e| stage_err("eval", e))?;
    let mut sets: Vec<(String, PathBuf)> = Vec::new();
    if r.eval.synth_test {
        sets.push(("synth-test".into(), split_dir(r, run_dir, "test")));
    }
    for d in &r.eval.dirs {
        sets.push((d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "dir".into()), d.clone()));
    }
    let mut all = serde_json::Map::new();
    for (name, dir) in sets {
        let out = run_dir.join("eval").join(&name);
        let ej = out.join("eval.json");
        let summary: EvalSummary = if ej.exists() {
            rep.stages.push((format!("eval {name}"), "reused".into(), ej.display().to_string()));
            serde_json::from_str(&std::fs::read_to_string(&ej).map_err(|e| stage_err("eval", e))?).map_err(|e| stage_err("eval", e))?
        } else {
            std::fs::create_dir_all(&out).map_err(|e| stage_err("eval", e))?;
            let samples = load_samples(&dir, r.eval.limit).map_err(|e| stage_err("eval", e))?;
            let gen_cfg = crate::model::generate::GenerateConfig {
                max_new_tokens: r.eval.max_new_tokens,
                temperature: r.eval.temperature,
                top_p: r.eval.top_p,
                seed: r.sft.seed,
            };
            let t = std::time::Instant::now();
            let res = evaluate_samples(&model, &c, &tok, &samples, &gen_cfg, r.eval.samples, r.eval.batch, device, |_| {})
                .map_err(|e| stage_err("eval", e))?;
            let s = summarize(&res, r.eval.samples, t.elapsed().as_secs_f64());
            write_results_parquet(&out.join("samples.parquet"), &res).map_err(|e| stage_err("eval", e))?;
            std::fs::write(&ej, serde_json::to_string_pretty(&s).unwrap_or_default()).map_err(|e| stage_err("eval", e))?;
            rep.stages.push((
                format!("eval {name}"),
                "done".into(),
                format!("n {} VSR {:.3} IoU_best(all) {:.3} IoU_unitcube(all) {:.3} distinct programs {}", s.n, s.vsr, s.iou_best_mean_all, s.iou_unitcube_mean_all, s.distinct_programs),
            ));
            s
        };
        all.insert(name, serde_json::to_value(&summary).unwrap_or_default());
    }
    std::fs::write(run_dir.join("eval.json"), serde_json::to_string_pretty(&all).unwrap_or_default()).map_err(|e| stage_err("eval", e))?;

    // 5. dpo (+ evaluation of the DPO model on the same sets), 6. report
    #[cfg(feature = "sandbox")]
    if let Some(d) = &r.dpo {
        crate::train::dpo::recipe_stage::<AB>(r, d, run_dir, &tok, &c, device, show_progress, &mut rep.stages).map_err(|e| stage_err("dpo", e))?;
    }
    #[cfg(all(feature = "report", feature = "sandbox"))]
    if r.report {
        let out = crate::report::run::write_report(run_dir).map_err(|e| stage_err("report", e))?;
        rep.stages.push(("report".into(), "done".into(), format!("{} figures in {}", out.figures.len(), out.dir.display())));
    }
    Ok(rep)
}

/// Generate, render and shard the synthetic splits into `out/{train,val,test}`: one generator call
/// (programs are distinct across splits), rendered GenCAD-style at 448 px with framing jitter,
/// written with `data::shards` under the real GenCAD-Code prompt (the one in gencad-test100-dev).
fn make_synth_data(d: &DataStage, out: &Path, show_progress: bool) -> Result<(), String> {
    use crate::data::shards::{Row, write_shard};
    use crate::data::synth::{self, Jitter, SynthConfig};
    let total = d.n_train + d.n_val + d.n_test;
    let t = std::time::Instant::now();
    let progs = synth::generate(&SynthConfig::default(), d.seed, total).map_err(|e| e.to_string())?;
    if show_progress {
        eprintln!("data: {} programs generated in {:.1} s; rendering", progs.len(), t.elapsed().as_secs_f64());
    }
    let opts = crate::geom::render::RenderOptions::default();
    let mut start = 0;
    for (split, n) in [("train", d.n_train), ("val", d.n_val), ("test", d.n_test)] {
        let dir = out.join(split);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (k, chunk) in progs[start..start + n].chunks(4096).enumerate() {
            let samples = synth::render_samples(chunk, &opts, Jitter::default()).map_err(|e| e.to_string())?;
            let rows: Vec<Row> = samples
                .into_iter()
                .map(|s| Row { prompt: crate::eval::GENCAD_PROMPT.to_string(), ..Row::new(&s.id, &s.program, s.image_png) })
                .collect();
            let path = dir.join(format!("{split}-{k:05}.parquet"));
            let tmp = path.with_extension("parquet.tmp");
            write_shard(&tmp, &rows).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        start += n;
    }
    if show_progress {
        eprintln!("data: {total} samples in {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
