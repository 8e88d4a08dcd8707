//! The `tokenizer` stage: the small VLM's code tokenizer, trained once on the canonical training
//! programs and the prompt (`tokenizer.json`). A Qwen checkpoint brings its own.

use std::path::Path;

use super::recipe::{Family, Recipe, RecipeError};
use super::{RunReport, stage_err};
use crate::cad::{Limits, fmt::canonicalize};
use crate::data::{GENCAD_PROMPT, Sample};
use crate::model::tokenizer::{self, CodeTokenizer};

/// The run's tokenizer (trained now, or reused); `None` for a Qwen checkpoint.
pub fn stage(
    r: &Recipe,
    run_dir: &Path,
    train: &[Sample],
    rep: &mut RunReport,
) -> Result<Option<CodeTokenizer>, RecipeError> {
    if let Family::Qwen(dir) = r.family() {
        rep.push(
            "tokenizer",
            "reused",
            dir.join("tokenizer.json").display().to_string(),
        );
        return Ok(None);
    }
    let tok_path = run_dir.join("tokenizer.json");
    if tok_path.exists() {
        rep.push("tokenizer", "reused", tok_path.display().to_string());
        return Ok(Some(
            CodeTokenizer::load(&tok_path).map_err(|e| stage_err("tokenizer", e))?,
        ));
    }
    let limits = Limits::default();
    let mut corpus: Vec<String> = train
        .iter()
        .filter_map(|s| canonicalize(&s.program, r.sft.decimals, &limits).ok())
        .collect();
    corpus.push(GENCAD_PROMPT.to_string());
    let tok = tokenizer::train(&corpus, &r.tokenizer).map_err(|e| stage_err("tokenizer", e))?;
    tok.save(&tok_path).map_err(|e| stage_err("tokenizer", e))?;
    rep.push("tokenizer", "done", format!("vocab {}", tok.vocab_size()));
    Ok(Some(tok))
}
