//! The `dpo` stage: DPO of the SFT model on executed-IoU preferences into `runs/<name>/dpo/` (the one
//! loop of `train::dpo`, for either model family), and the reuse of a finished SFT run
//! (`dpo.sft_run`) as this run's data, tokenizer and SFT stages.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::data::split_dir;
use super::policy::{Stage, finished, qwen_policy};
use super::recipe::{Family, Recipe, RecipeError};
use super::{RunReport, stage_err};
use crate::data::load_samples;
use crate::model::run_dir::read_run_config;
use crate::train::dpo::{DpoConfig, train_dpo_adapted, train_dpo_policy};
use crate::train::{TrainError, ioerr};

/// Train (or resume) DPO from the SFT model; reused when `dpo/` holds a finished model.
pub fn stage<AB: AutodiffBackend>(
    r: &Recipe,
    run_dir: &Path,
    device: &AB::Device,
    show_progress: bool,
    rep: &mut RunReport,
) -> Result<(), RecipeError> {
    let Some(d) = &r.dpo else { return Ok(()) };
    let dir = Stage::Dpo.dir(run_dir);
    if finished(r, run_dir, Stage::Dpo) {
        rep.push("dpo", "reused", dir.display().to_string());
        return Ok(());
    }
    // the recipe's executor runs the rollouts
    let mut cfg: DpoConfig = d.clone();
    cfg.rollout.sandbox = r.sandbox.clone();
    let pool = (cfg.images_per_round * cfg.rounds).min(r.data.n_train.max(1));
    let images = load_samples(&split_dir(r, run_dir, "train"), Some(pool))
        .map_err(|e| stage_err("dpo", e))?;
    let t = Instant::now();
    let out = match r.family() {
        Family::Vlm(_) => {
            let (c, tok) = read_run_config(run_dir).map_err(|e| stage_err("dpo", e))?;
            train_dpo_adapted::<AB>(
                &dir,
                &cfg,
                &c,
                &r.adaptation(),
                &tok,
                &run_dir.join("model.safetensors"),
                &images,
                device,
                None,
                show_progress,
            )
        }
        Family::Qwen(_) => (|| {
            AB::seed(device, cfg.seed);
            let mut policy = qwen_policy::<AB>(r, run_dir, Stage::Dpo, cfg.optim.clone(), device)?;
            let executor = crate::exec::executor(&cfg.rollout.sandbox)?;
            train_dpo_policy(
                &mut policy,
                &dir,
                &cfg,
                &images,
                executor.as_ref(),
                None,
                show_progress,
            )
        })(),
    }
    .map_err(|e| stage_err("dpo", e))?;
    let last = out.metrics.iter().rev().find(|m| m.loss.is_some());
    rep.push(
        "dpo",
        "done",
        format!(
            "{} steps in {:.0} s, last loss {:.4}, accuracy {:.2}",
            out.step,
            t.elapsed().as_secs_f64(),
            last.and_then(|m| m.loss).unwrap_or(f64::NAN),
            last.and_then(|m| m.rewards_accuracies).unwrap_or(f64::NAN)
        ),
    );
    Ok(())
}

/// With `dpo.sft_run` or `grpo.sft_run`, make `run` reuse that finished SFT run: its data folder (symlinked),
/// tokenizer, model config, weights and SFT metrics (copied), so the recipe's data, tokenizer and SFT
/// stages are "reused". Evaluations are not copied: the recipe evaluates the SFT model itself, with
/// its own decoding.
pub fn adopt_sft_run(r: &Recipe, run: &Path, rep: &mut RunReport) -> Result<(), RecipeError> {
    let Some(src) = r.sft_run() else {
        return Ok(());
    };
    let got = adopt(src, run).map_err(|e| stage_err("sft_run", e))?;
    if !got.is_empty() {
        rep.push(
            "sft_run",
            "done",
            format!("from {}: {}", src.display(), got.join(", ")),
        );
    }
    Ok(())
}

fn adopt(src: &Path, run: &Path) -> Result<Vec<String>, TrainError> {
    if !src.join("model.safetensors").exists() || !src.join("tokenizer.json").exists() {
        return Err(TrainError::Data(format!(
            "sft_run = {:?}: no finished SFT run there (model.safetensors + tokenizer.json); run its recipe first, e.g. cadvlm recipe recipes/sft.toml",
            src
        )));
    }
    std::fs::create_dir_all(run).map_err(|e| ioerr(run, e))?;
    let mut done = Vec::new();
    let data = run.join("data");
    if !data.exists() && src.join("data").exists() {
        let abs =
            std::fs::canonicalize(src.join("data")).map_err(|e| ioerr(&src.join("data"), e))?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&abs, &data).map_err(|e| ioerr(&data, e))?;
        #[cfg(not(unix))]
        return Err(TrainError::Data(format!(
            "dpo.sft_run: cannot link {} on this platform; copy it to {}",
            abs.display(),
            data.display()
        )));
        done.push("data".to_string());
    }
    for f in [
        "tokenizer.json",
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "metrics.parquet",
    ] {
        let (a, b) = (src.join(f), run.join(f));
        if a.exists() && !b.exists() {
            let tmp = run.join(format!("{f}.tmp"));
            std::fs::copy(&a, &tmp).map_err(|e| ioerr(&a, e))?;
            std::fs::rename(&tmp, &b).map_err(|e| ioerr(&b, e))?;
            done.push(f.to_string());
        }
    }
    Ok(done)
}
