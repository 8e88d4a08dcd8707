//! A trained run folder as the model sees it: `config.json`, `tokenizer.json` and `model.safetensors`.

use std::path::Path;

use burn::tensor::backend::Backend;

use super::tokenizer::CodeTokenizer;
use super::vlm::Vlm;
use super::{ModelError, VlmConfig, weights};

fn rerr(path: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Run {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Load a trained run folder for inference.
pub fn load_run<B: Backend>(
    run: &Path,
    device: &B::Device,
) -> Result<(Vlm<B>, VlmConfig, CodeTokenizer), ModelError> {
    let (c, tok) = read_run_config(run)?;
    let model = weights::load_module(c.init::<B>(device), &run.join("model.safetensors"))?;
    Ok((model, c, tok))
}

/// A run folder's model config and tokenizer (checked against each other), without the weights.
pub fn read_run_config(run: &Path) -> Result<(VlmConfig, CodeTokenizer), ModelError> {
    let cp = run.join("config.json");
    let text = std::fs::read_to_string(&cp).map_err(|e| {
        rerr(
            &cp,
            format!("{e} (is {} a trained run folder?)", run.display()),
        )
    })?;
    let c: VlmConfig = serde_json::from_str(&text).map_err(|e| rerr(&cp, e))?;
    c.validate()?;
    let tok = CodeTokenizer::load(&run.join("tokenizer.json"))?;
    if tok.vocab_size() != c.vocab_size {
        return Err(rerr(
            &cp,
            format!(
                "vocab_size {} but tokenizer.json has {}",
                c.vocab_size,
                tok.vocab_size()
            ),
        ));
    }
    Ok((c, tok))
}

/// Save a final model as `model.safetensors` + `config.json` (what [`load_run`] reads).
pub fn save_run<B: Backend>(run: &Path, model: &Vlm<B>, c: &VlmConfig) -> Result<(), ModelError> {
    weights::save_module(model, &run.join("model.safetensors"))?;
    let p = run.join("config.json");
    std::fs::write(
        &p,
        serde_json::to_string_pretty(c).map_err(|e| rerr(&p, e))?,
    )
    .map_err(|e| rerr(&p, e))
}
