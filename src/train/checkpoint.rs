//! Checkpoints: `checkpoints/step-NNNNNNN/` = `model.safetensors` + `optimizer.safetensors` + `meta.json`,
//! written into a temporary folder that is renamed into place (a crash never leaves a half checkpoint).
//! The data position is a pure function of the step (see `sft`), so `meta.json`'s step is the RNG state.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::adapt::Adaptation;
use crate::model::weights::{self, Named};
use crate::model::{ModelError, VlmConfig};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// Optimizer steps done.
    pub step: usize,
    /// Target tokens trained on so far.
    pub tokens: u64,
    pub seconds: f64,
    pub config: VlmConfig,
    /// LoRA / quantization the run trains with (absent: full fine-tuning). With adapters the
    /// checkpoint's `model.safetensors` holds the f32 parameters and the adapters, not the quantized
    /// bases, which are rebuilt from the run's base weights on resume.
    #[serde(default, skip_serializing_if = "Adaptation::is_full")]
    pub adapt: Adaptation,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{0}")]
    Model(#[from] ModelError),
}

fn cerr(path: &Path, msg: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Io {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

pub fn step_dir(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:07}"))
}

/// Write model, optimizer state and meta (the small VLM's [`CheckpointMeta`], or a policy's own)
/// for `step`; keeps the newest `keep` checkpoints.
pub fn save<B: Backend, M: Module<B>, T: Serialize>(
    run: &Path,
    step: usize,
    model: &M,
    optim: &Named,
    meta: &T,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let dir = step_dir(run, step);
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| cerr(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| cerr(&tmp, e))?;
    weights::save_module(model, &tmp.join("model.safetensors"))?;
    weights::write_safetensors(
        &tmp.join("optimizer.safetensors"),
        optim,
        Default::default(),
    )?;
    let j = serde_json::to_string_pretty(meta).map_err(|e| cerr(&tmp, e))?;
    std::fs::write(tmp.join("meta.json"), j).map_err(|e| cerr(&tmp, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| cerr(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| cerr(&dir, e))?;
    let all = list(run)?;
    for (_, old) in all.iter().rev().skip(keep.max(1)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(dir)
}

/// Complete checkpoints, oldest first.
pub fn list(run: &Path) -> Result<Vec<(usize, PathBuf)>, CheckpointError> {
    let d = run.join("checkpoints");
    if !d.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&d).map_err(|e| cerr(&d, e))? {
        let p = e.map_err(|e| cerr(&d, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(s) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
            && p.join("meta.json").exists()
        {
            out.push((s, p));
        }
    }
    out.sort();
    Ok(out)
}

pub fn latest(run: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    Ok(list(run)?.pop().map(|x| x.1))
}

pub fn read_meta<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T, CheckpointError> {
    let p = dir.join("meta.json");
    let s = std::fs::read_to_string(&p).map_err(|e| cerr(&p, e))?;
    serde_json::from_str(&s).map_err(|e| cerr(&p, e))
}

/// Load a checkpoint's weights into `model` and its moments into `opt` (resume at `step`).
pub fn restore<B: burn::tensor::backend::AutodiffBackend, M: Module<B>>(
    dir: &Path,
    model: M,
    opt: &mut super::optim::AdamW<B::InnerBackend>,
    step: usize,
    device: &B::Device,
) -> Result<M, CheckpointError> {
    let model = weights::load_module(model, &dir.join("model.safetensors"))?;
    let st = weights::read_safetensors(&dir.join("optimizer.safetensors"))?;
    opt.load_state(step, &st, device);
    Ok(model)
}
