//! The `grpo` stage: online RL (Dr. GRPO) of the SFT model on the executed reward into
//! `runs/<name>/grpo/` (the one loop of `train::grpo`, for either model family).

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::data::split_dir;
use super::policy::{Stage, finished, qwen_policy};
use super::recipe::{Family, Recipe, RecipeError};
use super::{RunReport, stage_err};
use crate::data::load_samples;
use crate::model::run_dir::read_run_config;
use crate::train::grpo::{GrpoConfig, train_grpo_adapted, train_grpo_policy};

/// Train (or resume) GRPO from the SFT model; reused when `grpo/` holds a finished model.
pub fn stage<AB: AutodiffBackend>(
    r: &Recipe,
    run_dir: &Path,
    device: &AB::Device,
    show_progress: bool,
    rep: &mut RunReport,
) -> Result<(), RecipeError> {
    let Some(g) = &r.grpo else { return Ok(()) };
    let dir = Stage::Grpo.dir(run_dir);
    if finished(r, run_dir, Stage::Grpo) {
        rep.push("grpo", "reused", dir.display().to_string());
        return Ok(());
    }
    // the recipe's executor runs the rollouts
    let mut cfg: GrpoConfig = g.clone();
    cfg.rollout.sandbox = r.sandbox.clone();
    let pool = (cfg.images_per_round * cfg.rounds).min(r.data.n_train.max(1));
    let images = load_samples(&split_dir(r, run_dir, "train"), Some(pool))
        .map_err(|e| stage_err("grpo", e))?;
    let t = Instant::now();
    let out = match r.family() {
        Family::Vlm(_) => {
            let (c, tok) = read_run_config(run_dir).map_err(|e| stage_err("grpo", e))?;
            train_grpo_adapted::<AB>(
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
            let mut policy = qwen_policy::<AB>(r, run_dir, Stage::Grpo, cfg.optim.clone(), device)?;
            let executor = crate::exec::executor(&cfg.rollout.sandbox)?;
            train_grpo_policy(
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
    .map_err(|e| stage_err("grpo", e))?;
    let last_round = out.metrics.iter().rev().find(|m| m.reward.is_some());
    rep.push(
        "grpo",
        "done",
        format!(
            "{} steps in {:.0} s, last round's rollout reward {:.3}, VSR {:.3}",
            out.step,
            t.elapsed().as_secs_f64(),
            last_round.and_then(|m| m.reward).unwrap_or(f64::NAN),
            last_round.and_then(|m| m.rollout_vsr).unwrap_or(f64::NAN)
        ),
    );
    Ok(())
}
