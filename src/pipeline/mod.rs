//! The pipeline: a recipe (`recipe`, the one schema for both model families) run stage by stage
//! under `runs/<name>/` — `data` → `tokenizer` → `sft` → `eval` → `dpo` or `grpo` (+ its eval) →
//! `report`, one file each. The resolved recipe is written first as `recipe.resolved.toml`; a stage whose outputs
//! exist is reused, and training resumes from its last checkpoint.

pub mod data;
pub mod dpo;
pub mod eval;
pub mod grpo;
pub mod policy;
pub mod recipe;
pub mod report;
pub mod sft;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

pub use recipe::{BackendKind, Family, Recipe, RecipeError};

/// What `run` did, stage by stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub run: PathBuf,
    /// (stage, "done" | "reused", detail)
    pub stages: Vec<(String, String, String)>,
}

impl RunReport {
    fn push(&mut self, stage: impl Into<String>, what: &str, detail: impl Into<String>) {
        self.stages.push((stage.into(), what.into(), detail.into()));
    }
}

/// A stage's failure, named after the stage.
pub(crate) fn stage_err(stage: &str, e: impl std::fmt::Display) -> RecipeError {
    RecipeError::Stage(format!("stage {stage}: {e}"))
}

/// Run every stage of `r` under `runs_root/<name>/` on the recipe's backend.
pub fn run(r: &Recipe, runs_root: &Path, show_progress: bool) -> Result<RunReport, RecipeError> {
    let run_dir = runs_root.join(&r.name);
    std::fs::create_dir_all(&run_dir).map_err(|e| stage_err("setup", e))?;
    let resolved = run_dir.join("recipe.resolved.toml");
    std::fs::write(&resolved, r.to_toml()).map_err(|e| stage_err("setup", e))?;
    match r.backend {
        BackendKind::Ndarray => run_on::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
            r,
            &run_dir,
            &Default::default(),
            show_progress,
        ),
        BackendKind::Flex => run_on::<burn::backend::Autodiff<burn::backend::Flex>>(
            r,
            &run_dir,
            &Default::default(),
            show_progress,
        ),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run_on::<burn::backend::Autodiff<burn::backend::Cuda>>(
            r,
            &run_dir,
            &Default::default(),
            show_progress,
        ),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(stage_err("setup", "backend cuda needs --features cuda")),
    }
}

fn run_on<AB: AutodiffBackend>(
    r: &Recipe,
    run_dir: &Path,
    device: &AB::Device,
    show_progress: bool,
) -> Result<RunReport, RecipeError> {
    let mut rep = RunReport {
        run: run_dir.to_path_buf(),
        stages: Vec::new(),
    };
    if let Family::Qwen(dir) = r.family()
        && let Some(est) = r.qwen_memory(&dir)
    {
        eprintln!("{}", est.summary());
        if let Some(g) = r.model.gpu_gib
            && !est.fits(g)
        {
            eprintln!("warning: the estimate exceeds model.gpu_gib = {g} GiB");
        }
    }
    dpo::adopt_sft_run(r, run_dir, &mut rep)?;
    data::stage(r, run_dir, show_progress, &mut rep)?;
    let (train, val) = data::load_train_val(r, run_dir)?;
    let tok = tokenizer::stage(r, run_dir, &train, &mut rep)?;
    sft::stage::<AB>(
        r,
        run_dir,
        tok.as_ref(),
        train,
        val,
        device,
        show_progress,
        &mut rep,
    )?;
    eval::stage::<AB>(
        r,
        run_dir,
        policy::Stage::Sft,
        device,
        show_progress,
        &mut rep,
    )?;
    if r.dpo.is_some() {
        dpo::stage::<AB>(r, run_dir, device, show_progress, &mut rep)?;
        eval::stage::<AB>(
            r,
            run_dir,
            policy::Stage::Dpo,
            device,
            show_progress,
            &mut rep,
        )?;
    }
    if r.grpo.is_some() {
        grpo::stage::<AB>(r, run_dir, device, show_progress, &mut rep)?;
        eval::stage::<AB>(
            r,
            run_dir,
            policy::Stage::Grpo,
            device,
            show_progress,
            &mut rep,
        )?;
    }
    if r.report {
        report::stage(run_dir, &mut rep)?;
    }
    Ok(rep)
}
