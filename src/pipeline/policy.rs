//! The trained policy of a stage, whichever the model family: the small VLM's run folder, or a Qwen
//! checkpoint with its adapter stack (SFT adapters; for DPO or GRPO, SFT folded in and that stage's
//! adapters).

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;

use super::recipe::{Family, Recipe};
use crate::train::TrainError;
use crate::train::optim::OptimConfig;
use crate::train::policy::{Policy, VlmPolicy};
use crate::train::qwen::{ADAPTERS_FILE, QwenPolicy};

/// The training stages whose model can be evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Sft,
    Dpo,
    Grpo,
}

impl Stage {
    /// Where the stage writes its model (`runs/<name>/`, `runs/<name>/dpo/`, `runs/<name>/grpo/`).
    pub fn dir(&self, run_dir: &Path) -> PathBuf {
        match self {
            Stage::Sft => run_dir.to_path_buf(),
            Stage::Dpo => run_dir.join("dpo"),
            Stage::Grpo => run_dir.join("grpo"),
        }
    }

    /// What the stage's evaluations are called in the run summary.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Sft => "eval",
            Stage::Dpo => "dpo eval",
            Stage::Grpo => "grpo eval",
        }
    }
}

/// Whether `stage` has written its model.
pub fn finished(r: &Recipe, run_dir: &Path, stage: Stage) -> bool {
    let dir = stage.dir(run_dir);
    match r.family() {
        Family::Vlm(_) => dir.join("model.safetensors").exists(),
        Family::Qwen(_) => dir.join(ADAPTERS_FILE).exists(),
    }
}

/// A Qwen policy as `stage` trains it: the checkpoint (quantized), the adapters of the stages
/// before folded in, fresh adapters seeded from the data seed.
pub fn qwen_policy<AB: AutodiffBackend>(
    r: &Recipe,
    run_dir: &Path,
    stage: Stage,
    optim: OptimConfig,
    device: &AB::Device,
) -> Result<QwenPolicy<AB>, TrainError> {
    let Family::Qwen(base) = r.family() else {
        return Err(TrainError::Data("not a Qwen recipe".into()));
    };
    let lora = r
        .lora
        .clone()
        .ok_or_else(|| TrainError::Data("a Qwen recipe needs [lora]".into()))?;
    let (fold, seed) = match stage {
        Stage::Sft => (Vec::new(), r.data.seed),
        Stage::Dpo | Stage::Grpo => (
            vec![run_dir.join(ADAPTERS_FILE)],
            r.data.seed.wrapping_add(1),
        ),
    };
    QwenPolicy::new(
        &base,
        r.model.quantize,
        &lora,
        &fold,
        seed,
        optim,
        r.sft.max_code_tokens,
        device,
    )
}

/// The model `stage` trained, as a policy for generation.
pub fn load<AB: AutodiffBackend>(
    r: &Recipe,
    run_dir: &Path,
    stage: Stage,
    device: &AB::Device,
) -> Result<Box<dyn Policy>, TrainError> {
    let dir = stage.dir(run_dir);
    Ok(match r.family() {
        Family::Vlm(_) => Box::new(VlmPolicy::<AB>::load_run(&dir, device)?),
        Family::Qwen(_) => {
            let mut p = qwen_policy::<AB>(r, run_dir, stage, OptimConfig::default(), device)?;
            p.load_adapters(&dir.join(ADAPTERS_FILE))?;
            Box::new(p)
        }
    })
}

/// The model in `dir`, as a policy for generation, whichever it is: a Hugging Face Qwen2-VL /
/// Qwen2.5-VL checkpoint directory (`config.json` of that `model_type`), a small-VLM model folder
/// (`model.safetensors` + `config.json` + `tokenizer.json`: `models/sft-cpu-small`, a run folder = its
/// SFT model, or a run's `dpo/` or `grpo/`), or a Qwen run folder of this project
/// (`recipe.resolved.toml` + adapters: its GRPO or DPO model when it has one, else its SFT model).
pub fn load_any<AB: AutodiffBackend>(
    dir: &Path,
    device: &AB::Device,
) -> Result<Box<dyn Policy>, TrainError> {
    let recipe = dir.join("recipe.resolved.toml");
    let is_qwen = std::fs::read_to_string(dir.join("config.json"))
        .is_ok_and(|t| t.contains("\"qwen2_vl\"") || t.contains("\"qwen2_5_vl\""));
    if is_qwen {
        let lora = crate::model::lora::LoraConfig::default();
        return Ok(Box::new(QwenPolicy::<AB>::new(
            dir,
            crate::model::quant::Quantize::None,
            &lora,
            &[],
            0,
            OptimConfig::default(),
            512,
            device,
        )?));
    }
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        return Ok(Box::new(VlmPolicy::<AB>::load_run(dir, device)?));
    }
    if recipe.exists() {
        let r = Recipe::load(&recipe, &[]).map_err(|e| TrainError::Data(e.to_string()))?;
        // the last stage with a model: GRPO or DPO (a recipe has one of them), else SFT
        let trained = |st: Stage| {
            st.dir(dir).join(ADAPTERS_FILE).exists()
                || st.dir(dir).join("model.safetensors").exists()
        };
        let stage = [Stage::Grpo, Stage::Dpo]
            .into_iter()
            .find(|&st| trained(st))
            .unwrap_or(Stage::Sft);
        if !finished(&r, dir, stage) {
            return Err(TrainError::Data(format!(
                "{}: the run has no trained model yet (run `cadvlm recipe` to the end first)",
                dir.display()
            )));
        }
        return load::<AB>(&r, dir, stage, device);
    }
    Err(TrainError::Data(format!(
        "{}: not a model folder (expected a small-VLM run with model.safetensors + tokenizer.json, a run with recipe.resolved.toml, or a Qwen2-VL / Qwen2.5-VL checkpoint with config.json)",
        dir.display()
    )))
}
