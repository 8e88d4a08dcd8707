//! The `data` stage: the synthetic splits (generated, rendered, sharded once), or the recipe's data
//! folder; and the training/validation samples the next stages read.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::recipe::{DataSource, DataStage, Family, Recipe, RecipeError, data_splits};
use super::{RunReport, stage_err};
use crate::data::{GENCAD_PROMPT, Sample, load_samples_at};
use crate::model::VlmConfig;

/// Generate the synthetic splits into `run/data/` (once: `data/DONE` marks them finished).
pub fn stage(
    r: &Recipe,
    run_dir: &Path,
    show_progress: bool,
    rep: &mut RunReport,
) -> Result<(), RecipeError> {
    if r.data.source != DataSource::Synth {
        return Ok(());
    }
    let done = run_dir.join("data").join("DONE");
    if done.exists() {
        rep.push("data", "reused", run_dir.join("data").display().to_string());
        return Ok(());
    }
    let t = Instant::now();
    make_synth_data(&r.data, &run_dir.join("data"), show_progress)
        .map_err(|e| stage_err("data", e))?;
    std::fs::write(&done, "").map_err(|e| stage_err("data", e))?;
    rep.push(
        "data",
        "done",
        format!(
            "{} train, {:.1} s",
            r.data.n_train,
            t.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// A split of the recipe's data: `run/data/{train,val,test}` (synthetic), or the folders of
/// `data.dir` ([`data_splits`]; `val` is `val/` or `validation/`, else the test split).
pub fn split_dir(r: &Recipe, run_dir: &Path, split: &str) -> PathBuf {
    match (&r.data.source, &r.data.dir) {
        (DataSource::Dir, Some(d)) => {
            let (train, test) = data_splits(d).unwrap_or_else(|| (d.join("train"), d.join("test")));
            match split {
                "train" => train,
                "val" => ["val", "validation"]
                    .iter()
                    .map(|s| d.join(s))
                    .find(|p| p.is_dir())
                    .unwrap_or(test),
                _ => test,
            }
        }
        _ => run_dir.join("data").join(split),
    }
}

/// The training and validation samples (the small VLM's at model resolution; Qwen's as they are,
/// without validation samples: its SFT does not validate).
pub fn load_train_val(
    r: &Recipe,
    run_dir: &Path,
) -> Result<(Vec<Sample>, Vec<Sample>), RecipeError> {
    let side = match r.family() {
        Family::Vlm(size) => Some(
            VlmConfig::named(&size, r.tokenizer.vocab_size)
                .map_err(|e| stage_err("model", e))?
                .image_size,
        ),
        Family::Qwen(_) => None,
    };
    let train = load_samples_at(&split_dir(r, run_dir, "train"), Some(r.data.n_train), side)
        .map_err(|e| stage_err("data", e))?;
    let val = match side {
        Some(_) => load_samples_at(&split_dir(r, run_dir, "val"), Some(r.data.n_val), side)
            .map_err(|e| stage_err("data", e))?,
        None => Vec::new(),
    };
    Ok((train, val))
}

/// Generate, render and shard the synthetic splits into `out/{train,val,test}`: one generator call
/// (programs are distinct across splits), rendered GenCAD-style at 448 px with framing jitter,
/// written with `data::shards` under the real GenCAD-Code prompt (the one in gencad-test100-dev).
fn make_synth_data(d: &DataStage, out: &Path, show_progress: bool) -> Result<(), String> {
    use crate::data::images::{Jitter, render_samples};
    use crate::data::shards::{Row, write_shard};
    use crate::data::synth::{self, SynthConfig};
    let total = d.n_train + d.n_val + d.n_test;
    let t = std::time::Instant::now();
    let progs =
        synth::generate(&SynthConfig::default(), d.seed, total).map_err(|e| e.to_string())?;
    if show_progress {
        eprintln!(
            "data: {} programs generated in {:.1} s; rendering",
            progs.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let opts = crate::geom::render::RenderOptions::default();
    let mut start = 0;
    for (split, n) in [("train", d.n_train), ("val", d.n_val), ("test", d.n_test)] {
        let dir = out.join(split);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (k, chunk) in progs[start..start + n].chunks(4096).enumerate() {
            let samples =
                render_samples(chunk, &opts, Jitter::default()).map_err(|e| e.to_string())?;
            let rows: Vec<Row> = samples
                .into_iter()
                .map(|s| Row {
                    prompt: GENCAD_PROMPT.to_string(),
                    ..Row::new(&s.id, &s.program, s.image_png)
                })
                .collect();
            let path = dir.join(format!("{split}-{k:05}.parquet"));
            let tmp = path.with_extension("parquet.tmp");
            write_shard(&tmp, &rows).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        start += n;
    }
    if show_progress {
        eprintln!(
            "data: {total} samples in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
