//! The trained policy of a stage, whichever the model family: the small VLM's run folder, or a Qwen
//! checkpoint with its adapter stack (SFT adapters; for DPO, SFT folded in and the DPO adapters).

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
}

impl Stage {
    /// Where the stage writes its model (`runs/<name>/` or `runs/<name>/dpo/`).
    pub fn dir(&self, run_dir: &Path) -> PathBuf {
        match self {
            Stage::Sft => run_dir.to_path_buf(),
            Stage::Dpo => run_dir.join("dpo"),
        }
    }

    /// What the stage's evaluations are called in the run summary.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Sft => "eval",
            Stage::Dpo => "dpo eval",
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
pub fn qwen_policy<AB: AutodiffBackend>(r: &Recipe, run_dir: &Path, stage: Stage, optim: OptimConfig, device: &AB::Device) -> Result<QwenPolicy<AB>, TrainError> {
    let Family::Qwen(base) = r.family() else { return Err(TrainError::Data("not a Qwen recipe".into())) };
    let lora = r.lora.clone().ok_or_else(|| TrainError::Data("a Qwen recipe needs [lora]".into()))?;
    let (fold, seed) = match stage {
        Stage::Sft => (Vec::new(), r.data.seed),
        Stage::Dpo => (vec![run_dir.join(ADAPTERS_FILE)], r.data.seed.wrapping_add(1)),
    };
    QwenPolicy::new(&base, r.model.quantize, &lora, &fold, seed, optim, r.sft.max_code_tokens, device)
}

/// The model `stage` trained, as a policy for generation.
pub fn load<AB: AutodiffBackend>(r: &Recipe, run_dir: &Path, stage: Stage, device: &AB::Device) -> Result<Box<dyn Policy>, TrainError> {
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
