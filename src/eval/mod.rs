//! Evaluation: the one eval-set runner. A [`Policy`] writes `k` programs per image, each is executed
//! in the sandbox and scored against its target program: VSR and IoU (`raw`, `unitcube`, `best`),
//! means over valid programs and over all (failures as 0), best-of-K; written as `eval.json` and
//! `samples.parquet`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Sample;
use crate::exec::{Executor, SandboxConfig, Scored, score_program};
use crate::model::generate::GenerateConfig;
use crate::train::TrainError;
use crate::train::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{0}")]
    Policy(#[from] TrainError),
    #[error("{0}")]
    Samples(#[from] crate::data::SampleError),
    #[error("{0}")]
    Sandbox(#[from] crate::exec::SandboxError),
}

fn derr(path: &Path, msg: impl std::fmt::Display) -> EvalError {
    EvalError::Io { path: path.display().to_string(), msg: msg.to_string() }
}

/// How a set is evaluated: the `[eval]` decoding of a recipe and the flags of `cadvlm eval`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSettings {
    /// Programs per image.
    pub samples: usize,
    pub generate: GenerateConfig,
    /// Generation rows per batch.
    pub batch: usize,
    /// The executor of the programs (model output: wasm by default).
    pub sandbox: SandboxConfig,
}

/// One evaluated generation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleResult {
    pub id: String,
    pub sample: usize,
    pub program: String,
    pub finished: bool,
    pub n_tokens: usize,
    #[serde(flatten)]
    pub score: Scored,
}

/// `eval.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalSummary {
    pub n: usize,
    pub samples_per_image: usize,
    pub vsr: f64,
    pub iou_unitcube_mean_valid: f64,
    pub iou_unitcube_mean_all: f64,
    pub iou_best_mean_valid: f64,
    pub iou_best_mean_all: f64,
    pub iou_raw_mean_valid: f64,
    pub iou_raw_mean_all: f64,
    /// Best-of-K IoU_best per image, averaged (equals the mean for K = 1).
    pub iou_best_at_k_mean: f64,
    pub unfinished: usize,
    /// Distinct generated programs: far below `n` means the model writes the same program whatever
    /// the image (a collapse that mean IoU alone hides). Absent in older eval.json files.
    #[serde(default)]
    pub distinct_programs: usize,
    pub seconds: f64,
}

/// Aggregate results (pure).
pub fn summarize(results: &[SampleResult], k: usize, seconds: f64) -> EvalSummary {
    let n = results.len();
    let valid: Vec<&SampleResult> = results.iter().filter(|r| r.score.ok && r.score.iou_best.is_some()).collect();
    let mean = |f: &dyn Fn(&Scored) -> Option<f64>, over: f64| (0.0 + valid.iter().filter_map(|r| f(&r.score)).sum::<f64>()) / over.max(1.0);
    let nv = valid.len() as f64;
    let mut best_at_k: BTreeMap<&str, f64> = BTreeMap::new();
    for r in results {
        let e = best_at_k.entry(r.id.as_str()).or_insert(0.0);
        *e = e.max(r.score.iou_best.unwrap_or(0.0));
    }
    EvalSummary {
        n,
        samples_per_image: k,
        vsr: if n == 0 { 0.0 } else { results.iter().filter(|r| r.score.ok).count() as f64 / n as f64 },
        iou_unitcube_mean_valid: mean(&|s| s.iou_unitcube, nv),
        iou_unitcube_mean_all: mean(&|s| s.iou_unitcube, n as f64),
        iou_best_mean_valid: mean(&|s| s.iou_best, nv),
        iou_best_mean_all: mean(&|s| s.iou_best, n as f64),
        iou_raw_mean_valid: mean(&|s| s.iou_raw, nv),
        iou_raw_mean_all: mean(&|s| s.iou_raw, n as f64),
        iou_best_at_k_mean: if best_at_k.is_empty() { 0.0 } else { best_at_k.values().sum::<f64>() / best_at_k.len() as f64 },
        unfinished: results.iter().filter(|r| !r.finished).count(),
        distinct_programs: results.iter().map(|r| r.program.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
        seconds,
    }
}

/// Generate `settings.samples` programs per sample with `policy`, execute and score each against its
/// target (the target executed once per image). `progress` gets the number of images generated.
pub fn evaluate(policy: &dyn Policy, samples: &[Sample], settings: &EvalSettings, executor: &dyn Executor, progress: &mut dyn FnMut(usize)) -> Result<Vec<SampleResult>, EvalError> {
    let k = settings.samples.max(1);
    let refs: Vec<&Sample> = samples.iter().collect();
    let programs = policy.generate(&refs, k, &settings.generate, settings.batch, progress)?;
    Ok(programs
        .into_iter()
        .enumerate()
        .map(|(r, g)| {
            let s = &samples[r / k];
            let score = score_program(executor, &g.program, &s.program);
            SampleResult { id: s.id.clone(), sample: r % k, program: g.program, finished: g.finished, n_tokens: g.n_tokens, score }
        })
        .collect())
}

/// Evaluate `samples` and write `out/eval.json` + `out/samples.parquet`; returns the summary.
pub fn run_set(policy: &dyn Policy, samples: &[Sample], settings: &EvalSettings, out: &Path, progress: &mut dyn FnMut(usize)) -> Result<EvalSummary, EvalError> {
    if samples.is_empty() {
        return Err(derr(out, "no samples to evaluate"));
    }
    let executor = crate::exec::executor(&settings.sandbox)?;
    std::fs::create_dir_all(out).map_err(|e| derr(out, e))?;
    let t = Instant::now();
    let res = evaluate(policy, samples, settings, executor.as_ref(), progress)?;
    let s = summarize(&res, settings.samples, t.elapsed().as_secs_f64());
    write_results_parquet(&out.join("samples.parquet"), &res)?;
    let ej = out.join("eval.json");
    std::fs::write(&ej, serde_json::to_string_pretty(&s).unwrap_or_default()).map_err(|e| derr(&ej, e))?;
    Ok(s)
}

/// `eval.json` of a finished evaluation.
pub fn read_summary(path: &Path) -> Result<EvalSummary, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| derr(path, e))?;
    serde_json::from_str(&text).map_err(|e| derr(path, e))
}

/// Write the per-sample parquet (id, sample, program, ok, error, IoUs).
pub fn write_results_parquet(path: &Path, results: &[SampleResult]) -> Result<(), EvalError> {
    use polars::prelude::*;
    let mut df = DataFrame::new(results.len(), vec![
        Column::new("id".into(), results.iter().map(|r| r.id.clone()).collect::<Vec<_>>()),
        Column::new("sample".into(), results.iter().map(|r| r.sample as u32).collect::<Vec<_>>()),
        Column::new("program".into(), results.iter().map(|r| r.program.clone()).collect::<Vec<_>>()),
        Column::new("finished".into(), results.iter().map(|r| r.finished).collect::<Vec<_>>()),
        Column::new("n_tokens".into(), results.iter().map(|r| r.n_tokens as u32).collect::<Vec<_>>()),
        Column::new("ok".into(), results.iter().map(|r| r.score.ok).collect::<Vec<_>>()),
        Column::new("error".into(), results.iter().map(|r| r.score.error.clone()).collect::<Vec<_>>()),
        Column::new("iou_raw".into(), results.iter().map(|r| r.score.iou_raw).collect::<Vec<_>>()),
        Column::new("iou_unitcube".into(), results.iter().map(|r| r.score.iou_unitcube).collect::<Vec<_>>()),
        Column::new("iou_best".into(), results.iter().map(|r| r.score.iou_best).collect::<Vec<_>>()),
    ])
    .map_err(|e| derr(path, e))?;
    let tmp = path.with_extension("parquet.tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| derr(&tmp, e))?;
    ParquetWriter::new(f).finish(&mut df).map_err(|e| derr(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| derr(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_and_summary() {
        let cube = "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude(1.0)\nsolid=solid0\n";
        let ex = crate::exec::executor(&SandboxConfig::with_backend(crate::exec::Backend::Native)).unwrap();
        let s = score_program(ex.as_ref(), cube, cube);
        assert!(s.ok && (s.iou_best.unwrap() - 1.0).abs() < 1e-6, "{s:?}");
        let bad = score_program(ex.as_ref(), "import os", cube);
        assert!(!bad.ok && bad.error.is_some());
        let r = |ok: Scored| SampleResult { id: "a".into(), sample: 0, program: String::new(), finished: true, n_tokens: 1, score: ok };
        let sum = summarize(&[r(s), r(bad)], 1, 0.0);
        assert_eq!(sum.n, 2);
        assert!((sum.vsr - 0.5).abs() < 1e-12);
        assert!((sum.iou_best_mean_valid - 1.0).abs() < 1e-6);
        assert!((sum.iou_best_mean_all - 0.5).abs() < 1e-6);
    }
}

