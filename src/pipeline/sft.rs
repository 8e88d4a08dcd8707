//! The `sft` stage: supervised fine-tuning of the recipe's model on the training split — the small
//! VLM (`train::sft`, with validation, checkpoints and resume; `model.safetensors`), or a Qwen
//! checkpoint's LoRA adapters (`train::qwen`; `adapters.safetensors`).

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;

use super::policy::{Stage, finished, qwen_policy};
use super::recipe::{Family, Recipe, RecipeError};
use super::{RunReport, stage_err};
use crate::data::Sample;
use crate::model::VlmConfig;
use crate::model::tokenizer::CodeTokenizer;
use crate::train::metrics::{MetricRow, write_metrics};
use crate::train::policy::Policy;
use crate::train::sft::{SftConfig, prepare_examples, train_sft_adapted};

#[allow(clippy::too_many_arguments)]
pub fn stage<AB: AutodiffBackend>(
    r: &Recipe,
    run_dir: &Path,
    tok: Option<&CodeTokenizer>,
    train: Vec<Sample>,
    val: Vec<Sample>,
    device: &AB::Device,
    show_progress: bool,
    rep: &mut RunReport,
) -> Result<(), RecipeError> {
    if finished(r, run_dir, Stage::Sft) {
        rep.push("sft", "reused", run_dir.display().to_string());
        return Ok(());
    }
    // the recipe's executor runs the validation programs
    let cfg = SftConfig {
        sandbox: r.sandbox.clone(),
        ..r.sft.clone()
    };
    match (r.family(), tok) {
        (Family::Vlm(size), Some(tok)) => {
            let c = VlmConfig::named(&size, tok.vocab_size()).map_err(|e| stage_err("model", e))?;
            let (train, skipped) =
                prepare_examples(train, tok, &c, &cfg).map_err(|e| stage_err("sft", e))?;
            let (val, _) = prepare_examples(val, tok, &c, &cfg).map_err(|e| stage_err("sft", e))?;
            if show_progress {
                eprintln!(
                    "sft: {} training examples ({} skipped: unparsable or over sft.max_code_tokens), {} validation",
                    train.len(),
                    skipped,
                    val.len()
                );
            }
            let out = train_sft_adapted::<AB>(
                run_dir,
                &cfg,
                &c,
                &r.adaptation(),
                tok,
                &train,
                &val,
                device,
                None,
                show_progress,
            )
            .map_err(|e| stage_err("sft", e))?;
            let last = out
                .metrics
                .iter()
                .rev()
                .find_map(|m| m.loss)
                .unwrap_or(f64::NAN);
            rep.push(
                "sft",
                "done",
                format!("{} steps, last loss {last:.4}", out.step),
            );
        }
        (Family::Qwen(_), _) => {
            AB::seed(device, r.data.seed); // LoRA dropout masks
            let mut policy = qwen_policy::<AB>(r, run_dir, Stage::Sft, cfg.optim.clone(), device)
                .map_err(|e| stage_err("sft", e))?;
            let (losses, skipped) = policy
                .train_sft(&train, &cfg, show_progress)
                .map_err(|e| stage_err("sft", e))?;
            let rows: Vec<MetricRow> = losses
                .iter()
                .enumerate()
                .map(|(i, &l)| MetricRow {
                    step: i + 1,
                    loss: Some(l),
                    ..Default::default()
                })
                .collect();
            write_metrics(run_dir, &rows).map_err(|e| stage_err("sft", e))?;
            policy
                .save_final(run_dir)
                .map_err(|e| stage_err("sft", e))?;
            let (first, last) = (losses[0], losses[losses.len() - 1]);
            rep.push(
                "sft",
                "done",
                format!(
                    "{} steps on {} examples ({skipped} skipped), loss {first:.4} -> {last:.4}",
                    losses.len(),
                    train.len() - skipped
                ),
            );
        }
        (Family::Vlm(_), None) => {
            return Err(stage_err("sft", "the small VLM needs the run's tokenizer"));
        }
    }
    Ok(())
}
