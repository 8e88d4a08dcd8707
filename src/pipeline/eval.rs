//! The `eval` stage, for the SFT model and again for the DPO model: every evaluation set of the recipe
//! (the held-out split as `synth-test`, then `eval.dirs`) through the one eval runner (`eval`), with
//! the recipe's decoding and sandbox, into `<stage dir>/eval/<set>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;

use super::data::split_dir;
use super::policy::{self, Stage};
use super::recipe::{Recipe, RecipeError};
use super::{RunReport, stage_err};
use crate::data::load_samples;
use crate::eval::{EvalSettings, EvalSummary, read_summary, run_set};
use crate::model::generate::GenerateConfig;
use crate::train::policy::Policy;

/// The recipe's evaluation sets: (name, folder).
pub fn sets(r: &Recipe, run_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut sets = Vec::new();
    if r.eval.synth_test {
        sets.push(("synth-test".to_string(), split_dir(r, run_dir, "test")));
    }
    for d in &r.eval.dirs {
        sets.push((
            d.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "dir".into()),
            d.clone(),
        ));
    }
    sets
}

/// The recipe's decoding and executor for evaluations.
pub fn settings(r: &Recipe) -> EvalSettings {
    EvalSettings {
        samples: r.eval.samples,
        generate: GenerateConfig {
            max_new_tokens: r.eval.max_new_tokens,
            temperature: r.eval.temperature,
            top_p: r.eval.top_p,
            seed: r.sft.seed,
            threads: 0,
        },
        batch: r.eval.batch,
        sandbox: r.sandbox.clone(),
        search: r.eval.search.clone(),
        reuse_proposals: None,
    }
}

/// Evaluate `stage`'s model on every set (finished sets are reused); the SFT stage also writes the
/// summaries of all sets as `eval.json`; both write the set folders as `<stage>/eval/sets.json` (the
/// report's galleries read the input images from there).
pub fn stage<AB: AutodiffBackend>(
    r: &Recipe,
    run_dir: &Path,
    stage: Stage,
    device: &AB::Device,
    show_progress: bool,
    rep: &mut RunReport,
) -> Result<(), RecipeError> {
    let err = |e: &dyn std::fmt::Display| stage_err(stage.name(), e);
    let root = stage.dir(run_dir).join("eval");
    std::fs::create_dir_all(&root).map_err(|e| err(&e))?;
    let sets = sets(r, run_dir);
    let map: BTreeMap<&str, String> = sets
        .iter()
        .map(|(n, d)| {
            (
                n.as_str(),
                std::fs::canonicalize(d)
                    .unwrap_or_else(|_| d.clone())
                    .display()
                    .to_string(),
            )
        })
        .collect();
    std::fs::write(
        root.join("sets.json"),
        serde_json::to_string_pretty(&map).unwrap_or_default(),
    )
    .map_err(|e| err(&e))?;
    let settings = settings(r);
    let mut model: Option<Box<dyn Policy>> = None;
    let mut all = serde_json::Map::new();
    for (name, dir) in sets {
        let out = root.join(&name);
        let ej = out.join("eval.json");
        let summary: EvalSummary = if ej.exists() {
            rep.push(
                format!("{} {name}", stage.name()),
                "reused",
                ej.display().to_string(),
            );
            read_summary(&ej).map_err(|e| err(&e))?
        } else {
            if model.is_none() {
                model = Some(policy::load::<AB>(r, run_dir, stage, device).map_err(|e| err(&e))?);
            }
            let policy = model.as_deref().expect("loaded above");
            let samples = load_samples(&dir, r.eval.limit).map_err(|e| err(&e))?;
            let pb = if show_progress {
                indicatif::ProgressBar::new(samples.len() as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            pb.set_message(format!("{} {name}", stage.name()));
            let s = run_set(policy, &samples, &settings, &out, &mut |d| {
                pb.set_position(d as u64)
            })
            .map_err(|e| err(&e))?;
            pb.finish_and_clear();
            rep.push(
                format!("{} {name}", stage.name()),
                "done",
                match &s.search {
                    None => format!("n {} VSR {:.3} IoU_best(all) {:.3} IoU_unitcube(all) {:.3} distinct programs {}", s.n, s.vsr, s.iou_best_mean_all, s.iou_unitcube_mean_all, s.distinct_programs),
                    Some(x) => format!(
                        "n {} searched: VSR {:.3} IoU_best(all) {:.3} IoU_unitcube(all) {:.3} | greedy: VSR {:.3} IoU_best(all) {:.3} | {:.0} renders/image",
                        s.n, s.vsr, s.iou_best_mean_all, s.iou_unitcube_mean_all, x.greedy_vsr, x.greedy_iou_best_mean_all, x.renders_mean
                    ),
                },
            );
            s
        };
        all.insert(name, serde_json::to_value(&summary).unwrap_or_default());
    }
    if stage == Stage::Sft {
        std::fs::write(
            run_dir.join("eval.json"),
            serde_json::to_string_pretty(&all).unwrap_or_default(),
        )
        .map_err(|e| err(&e))?;
    }
    Ok(())
}
