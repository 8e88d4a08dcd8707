//! Evaluation: the one eval-set runner. A [`Policy`] writes `k` programs per image, each is executed
//! in the sandbox and scored against its target program: VSR, IoU (`raw`, `unitcube`, `best`) and
//! cadrille's Chamfer distance; IoU means over valid programs and over all (failures as 0), CD×1000
//! mean and median over valid programs, best-of-K; written as `eval.json` and `samples.parquet`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Sample;
use crate::exec::{Executor, SandboxConfig, Scored, score_program};
use crate::model::generate::GenerateConfig;
use crate::search::SearchConfig;
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
    EvalError::Io {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
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
    /// Render-and-compare search instead of plain decoding (`[eval.search]`, `cadvlm eval --search`):
    /// the searched program is the image's result; the greedy one is scored beside it.
    pub search: Option<SearchConfig>,
    /// With search: take the proposals from an earlier searched evaluation's `search.jsonl`.
    pub reuse_proposals: Option<std::path::PathBuf>,
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
    /// Chamfer distance ×1000 (cadrille / CAD-Recode's report) over the valid programs that have one:
    /// mean and median. Absent in older eval.json files and when no program has one.
    #[serde(default)]
    pub cd_x1000_mean_valid: Option<f64>,
    #[serde(default)]
    pub cd_x1000_median_valid: Option<f64>,
    pub unfinished: usize,
    /// Distinct generated programs: far below `n` means the model writes the same program whatever
    /// the image (a collapse that mean IoU alone hides). Absent in older eval.json files.
    #[serde(default)]
    pub distinct_programs: usize,
    pub seconds: f64,
    /// With search: greedy beside searched, the IoU-vs-renders curve, how well the image score ranks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSummary>,
}

/// The search's part of `eval.json` (IoU means over all images, failures as 0).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchSummary {
    pub config: SearchConfig,
    /// The greedy programs, scored like the searched ones.
    pub greedy_vsr: f64,
    pub greedy_iou_best_mean_all: f64,
    pub greedy_iou_unitcube_mean_all: f64,
    /// `[renders per image, mean IoU_best]`: the best program (by image score) within that many
    /// renders; the last point is the full budget.
    pub curve: Vec<(usize, f64)>,
    /// The same for IoU_unitcube.
    pub curve_unitcube: Vec<(usize, f64)>,
    /// Spearman correlation between the image score and the true IoU_best over each image's valid
    /// proposals (greedy + samples), averaged over the images where it is defined.
    pub spearman_mean: Option<f64>,
    pub spearman_images: usize,
    /// Pooled over all valid proposals of all images.
    pub spearman_pooled: Option<f64>,
    /// Mean IoU_best of the proposal the image score ranks first (no refinement), and of the truly
    /// best proposal (an oracle bound on selection).
    pub proposals_pick_iou_best: f64,
    pub proposals_oracle_iou_best: f64,
    pub renders_mean: f64,
    /// Seconds spent proposing (the policy) and searching (execute + render + score), per image.
    pub propose_seconds_per_image: f64,
    pub search_seconds_per_image: f64,
}

/// One image of a searched evaluation (`search.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchLine {
    pub id: String,
    pub greedy_program: String,
    pub greedy_iou_best: Option<f64>,
    pub greedy_image_score: Option<f64>,
    pub program: Option<String>,
    pub iou_best: Option<f64>,
    pub image_score: Option<f64>,
    pub source: Option<crate::search::Source>,
    pub renders: usize,
    pub ms: f64,
    /// `[image score, true IoU_best]` of each valid proposal.
    pub proposals: Vec<(f64, f64)>,
    /// The proposals' programs (greedy first), so that a later evaluation can search them again
    /// (`cadvlm eval --search --proposals search.jsonl`).
    #[serde(default)]
    pub proposal_programs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Aggregate results (pure).
pub fn summarize(results: &[SampleResult], k: usize, seconds: f64) -> EvalSummary {
    let n = results.len();
    let valid: Vec<&SampleResult> = results
        .iter()
        .filter(|r| r.score.ok && r.score.iou_best.is_some())
        .collect();
    let mean = |f: &dyn Fn(&Scored) -> Option<f64>, over: f64| {
        (0.0 + valid.iter().filter_map(|r| f(&r.score)).sum::<f64>()) / over.max(1.0)
    };
    let nv = valid.len() as f64;
    let mut cds: Vec<f64> = valid
        .iter()
        .filter_map(|r| r.score.chamfer)
        .map(|c| 1e3 * c)
        .collect();
    cds.sort_by(f64::total_cmp);
    let cd_median = (!cds.is_empty()).then(|| {
        let m = cds.len() / 2;
        if cds.len() % 2 == 1 {
            cds[m]
        } else {
            0.5 * (cds[m - 1] + cds[m])
        }
    });
    let cd_mean = (!cds.is_empty()).then(|| cds.iter().sum::<f64>() / cds.len() as f64);
    let mut best_at_k: BTreeMap<&str, f64> = BTreeMap::new();
    for r in results {
        let e = best_at_k.entry(r.id.as_str()).or_insert(0.0);
        *e = e.max(r.score.iou_best.unwrap_or(0.0));
    }
    EvalSummary {
        n,
        samples_per_image: k,
        vsr: if n == 0 {
            0.0
        } else {
            results.iter().filter(|r| r.score.ok).count() as f64 / n as f64
        },
        iou_unitcube_mean_valid: mean(&|s| s.iou_unitcube, nv),
        iou_unitcube_mean_all: mean(&|s| s.iou_unitcube, n as f64),
        iou_best_mean_valid: mean(&|s| s.iou_best, nv),
        iou_best_mean_all: mean(&|s| s.iou_best, n as f64),
        iou_raw_mean_valid: mean(&|s| s.iou_raw, nv),
        iou_raw_mean_all: mean(&|s| s.iou_raw, n as f64),
        iou_best_at_k_mean: if best_at_k.is_empty() {
            0.0
        } else {
            best_at_k.values().sum::<f64>() / best_at_k.len() as f64
        },
        cd_x1000_mean_valid: cd_mean,
        cd_x1000_median_valid: cd_median,
        unfinished: results.iter().filter(|r| !r.finished).count(),
        distinct_programs: results
            .iter()
            .map(|r| r.program.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        seconds,
        search: None,
    }
}

/// Generate `settings.samples` programs per sample with `policy`, execute and score each against its
/// target (the target executed once per image). `progress` gets the number of images generated.
pub fn evaluate(
    policy: &dyn Policy,
    samples: &[Sample],
    settings: &EvalSettings,
    executor: &dyn Executor,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<SampleResult>, EvalError> {
    let k = settings.samples.max(1);
    let refs: Vec<&Sample> = samples.iter().collect();
    let programs = policy.generate(&refs, k, &settings.generate, settings.batch, progress)?;
    Ok(programs
        .into_iter()
        .enumerate()
        .map(|(r, g)| {
            let s = &samples[r / k];
            let score = score_program(executor, &g.program, &s.program);
            SampleResult {
                id: s.id.clone(),
                sample: r % k,
                program: g.program,
                finished: g.finished,
                n_tokens: g.n_tokens,
                score,
            }
        })
        .collect())
}

/// Budgets of the IoU-vs-renders curve: the proposals one by one up to 16, then doubling, and the budget.
fn curve_budgets(cfg: &SearchConfig) -> Vec<usize> {
    let mut b: Vec<usize> = vec![1, 2, 4, 8, 16, 1 + cfg.samples];
    let mut x = 32;
    while x < cfg.budget {
        b.push(x);
        x *= 2;
    }
    b.push(cfg.budget);
    b.retain(|&v| v <= cfg.budget);
    b.sort_unstable();
    b.dedup();
    b
}

/// Evaluate with render-and-compare search: greedy + sampled proposals from `policy`, searched with
/// the image only; then every proposal and the searched program are scored against the target.
/// `reuse`: the proposals of an earlier searched evaluation (its `search.jsonl`) instead of decoding.
pub fn evaluate_search(
    policy: &dyn Policy,
    samples: &[Sample],
    settings: &EvalSettings,
    cfg: &SearchConfig,
    executor: &dyn Executor,
    reuse: Option<&Path>,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<SampleResult>, SearchSummary, Vec<SearchLine>), EvalError> {
    use crate::search::{Source, propose, sample_image, search_all};
    cfg.validate().map_err(|e| EvalError::Io {
        path: "[eval.search]".into(),
        msg: e,
    })?;
    let refs: Vec<&Sample> = samples.iter().collect();
    let t0 = Instant::now();
    let proposals = match reuse {
        None => propose(
            policy,
            &refs,
            cfg,
            settings.generate.max_new_tokens,
            settings.batch,
            progress,
        )?,
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| derr(file, e))?;
            let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, l) in text.lines().enumerate() {
                let line: SearchLine = serde_json::from_str(l)
                    .map_err(|e| derr(file, format!("line {}: {e}", k + 1)))?;
                by_id.insert(line.id, line.proposal_programs);
            }
            samples
                .iter()
                .map(|s| match by_id.get(&s.id) {
                    Some(ps) if !ps.is_empty() => Ok(ps
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            (
                                if i == 0 {
                                    Source::Greedy
                                } else {
                                    Source::Sample
                                },
                                p.clone(),
                            )
                        })
                        .collect()),
                    _ => Err(derr(file, format!("no proposals for image {}", s.id))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let propose_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let images: Vec<_> = samples.iter().map(sample_image).collect();
    let found = search_all(executor, &images, &proposals, cfg, &|| {});
    let search_s = t1.elapsed().as_secs_f64();
    let budgets = curve_budgets(cfg);
    let n = samples.len().max(1) as f64;
    let mut results = Vec::with_capacity(samples.len());
    let mut lines = Vec::with_capacity(samples.len());
    let (mut curve, mut curve_uc) = (vec![0.0; budgets.len()], vec![0.0; budgets.len()]);
    let (mut greedy_ok, mut greedy_best, mut greedy_uc) = (0usize, 0.0, 0.0);
    let (mut rhos, mut pooled, mut pick, mut oracle, mut renders) =
        (Vec::new(), (Vec::new(), Vec::new()), 0.0, 0.0, 0usize);
    for ((s, props), found) in samples.iter().zip(&proposals).zip(found) {
        let target = executor.target(&s.program);
        let mut memo: BTreeMap<String, Scored> = BTreeMap::new();
        let mut scored = |p: &str| -> Scored {
            memo.entry(p.to_string())
                .or_insert_with(|| match &target {
                    Ok(t) => Scored::from(&executor.score(p, t)),
                    Err(_) => score_program(executor, p, &s.program),
                })
                .clone()
        };
        let greedy = &props[0].1;
        let gs = scored(greedy);
        greedy_ok += gs.ok as usize;
        greedy_best += gs.iou_best.unwrap_or(0.0);
        greedy_uc += gs.iou_unitcube.unwrap_or(0.0);
        let line = match found {
            Ok(r) => {
                for (k, b) in budgets.iter().enumerate() {
                    if let Some(p) = r.best_within(*b) {
                        let sc = scored(p);
                        curve[k] += sc.iou_best.unwrap_or(0.0);
                        curve_uc[k] += sc.iou_unitcube.unwrap_or(0.0);
                    }
                }
                let mut pairs: Vec<(f64, f64)> = Vec::new();
                for c in &r.candidates {
                    if let Some(isc) = c.score
                        && let Some(iou) = scored(&c.program).iou_best
                    {
                        pairs.push((isc, iou));
                    }
                }
                let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
                if let Some(rho) = crate::geom::imscore::spearman(&xs, &ys) {
                    rhos.push(rho);
                }
                pooled.0.extend(&xs);
                pooled.1.extend(&ys);
                pick += pairs
                    .iter()
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map_or(0.0, |p| p.1);
                oracle += pairs.iter().map(|p| p.1).fold(0.0, f64::max);
                renders += r.renders;
                let chosen = r.program.as_deref().map(&mut scored);
                let program = r.program.clone().unwrap_or_else(|| greedy.clone());
                let score = chosen.clone().unwrap_or_else(|| scored(greedy));
                results.push(SampleResult {
                    id: s.id.clone(),
                    sample: 0,
                    program: program.clone(),
                    finished: true,
                    n_tokens: 0,
                    score: score.clone(),
                });
                SearchLine {
                    id: s.id.clone(),
                    greedy_program: greedy.clone(),
                    greedy_iou_best: gs.iou_best,
                    greedy_image_score: r.greedy_score,
                    program: r.program.clone(),
                    iou_best: score.iou_best,
                    image_score: r.score.map(|x| x.total),
                    source: r.source,
                    renders: r.renders,
                    ms: r.ms,
                    proposals: pairs,
                    proposal_programs: props.iter().map(|p| p.1.clone()).collect(),
                    error: None,
                }
            }
            Err(e) => {
                // no search possible (an image without foreground): the greedy program stands
                results.push(SampleResult {
                    id: s.id.clone(),
                    sample: 0,
                    program: greedy.clone(),
                    finished: true,
                    n_tokens: 0,
                    score: gs.clone(),
                });
                SearchLine {
                    id: s.id.clone(),
                    greedy_program: greedy.clone(),
                    greedy_iou_best: gs.iou_best,
                    greedy_image_score: None,
                    program: None,
                    iou_best: gs.iou_best,
                    image_score: None,
                    source: Some(Source::Greedy),
                    renders: 0,
                    ms: 0.0,
                    proposals: Vec::new(),
                    proposal_programs: props.iter().map(|p| p.1.clone()).collect(),
                    error: Some(e),
                }
            }
        };
        lines.push(line);
    }
    let summary = SearchSummary {
        config: cfg.clone(),
        greedy_vsr: greedy_ok as f64 / n,
        greedy_iou_best_mean_all: greedy_best / n,
        greedy_iou_unitcube_mean_all: greedy_uc / n,
        curve: budgets
            .iter()
            .zip(&curve)
            .map(|(b, c)| (*b, c / n))
            .collect(),
        curve_unitcube: budgets
            .iter()
            .zip(&curve_uc)
            .map(|(b, c)| (*b, c / n))
            .collect(),
        spearman_mean: (!rhos.is_empty()).then(|| rhos.iter().sum::<f64>() / rhos.len() as f64),
        spearman_images: rhos.len(),
        spearman_pooled: crate::geom::imscore::spearman(&pooled.0, &pooled.1),
        proposals_pick_iou_best: pick / n,
        proposals_oracle_iou_best: oracle / n,
        renders_mean: renders as f64 / n,
        propose_seconds_per_image: propose_s / n,
        search_seconds_per_image: search_s / n,
    };
    Ok((results, summary, lines))
}

/// Evaluate `samples` and write `out/eval.json` + `out/samples.parquet`; returns the summary.
pub fn run_set(
    policy: &dyn Policy,
    samples: &[Sample],
    settings: &EvalSettings,
    out: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalSummary, EvalError> {
    if samples.is_empty() {
        return Err(derr(out, "no samples to evaluate"));
    }
    let executor = crate::exec::executor(&settings.sandbox)?;
    std::fs::create_dir_all(out).map_err(|e| derr(out, e))?;
    let t = Instant::now();
    let (res, s) = match &settings.search {
        None => {
            let res = evaluate(policy, samples, settings, executor.as_ref(), progress)?;
            let s = summarize(&res, settings.samples, t.elapsed().as_secs_f64());
            (res, s)
        }
        Some(cfg) => {
            let (res, search, lines) = evaluate_search(
                policy,
                samples,
                settings,
                cfg,
                executor.as_ref(),
                settings.reuse_proposals.as_deref(),
                progress,
            )?;
            let sj = out.join("search.jsonl");
            let text: String = lines
                .iter()
                .map(|l| serde_json::to_string(l).unwrap_or_default() + "\n")
                .collect();
            std::fs::write(&sj, text).map_err(|e| derr(&sj, e))?;
            let s = EvalSummary {
                search: Some(search),
                ..summarize(&res, 1, t.elapsed().as_secs_f64())
            };
            (res, s)
        }
    };
    write_results_parquet(&out.join("samples.parquet"), &res)?;
    let ej = out.join("eval.json");
    std::fs::write(&ej, serde_json::to_string_pretty(&s).unwrap_or_default())
        .map_err(|e| derr(&ej, e))?;
    Ok(s)
}

/// `eval.json` of a finished evaluation.
pub fn read_summary(path: &Path) -> Result<EvalSummary, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| derr(path, e))?;
    serde_json::from_str(&text).map_err(|e| derr(path, e))
}

/// Write the per-sample parquet (id, sample, program, ok, error, IoUs, Chamfer distance).
pub fn write_results_parquet(path: &Path, results: &[SampleResult]) -> Result<(), EvalError> {
    use polars::prelude::*;
    let mut df = DataFrame::new(
        results.len(),
        vec![
            Column::new(
                "id".into(),
                results.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "sample".into(),
                results.iter().map(|r| r.sample as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "program".into(),
                results
                    .iter()
                    .map(|r| r.program.clone())
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "finished".into(),
                results.iter().map(|r| r.finished).collect::<Vec<_>>(),
            ),
            Column::new(
                "n_tokens".into(),
                results
                    .iter()
                    .map(|r| r.n_tokens as u32)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "ok".into(),
                results.iter().map(|r| r.score.ok).collect::<Vec<_>>(),
            ),
            Column::new(
                "error".into(),
                results
                    .iter()
                    .map(|r| r.score.error.clone())
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "iou_raw".into(),
                results.iter().map(|r| r.score.iou_raw).collect::<Vec<_>>(),
            ),
            Column::new(
                "iou_unitcube".into(),
                results
                    .iter()
                    .map(|r| r.score.iou_unitcube)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "iou_best".into(),
                results.iter().map(|r| r.score.iou_best).collect::<Vec<_>>(),
            ),
            Column::new(
                "chamfer".into(),
                results.iter().map(|r| r.score.chamfer).collect::<Vec<_>>(),
            ),
        ],
    )
    .map_err(|e| derr(path, e))?;
    let tmp = path.with_extension("parquet.tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| derr(&tmp, e))?;
    ParquetWriter::new(f)
        .finish(&mut df)
        .map_err(|e| derr(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| derr(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_and_summary() {
        let cube = "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude(1.0)\nsolid=solid0\n";
        let ex = crate::exec::executor(&SandboxConfig::with_backend(crate::exec::Backend::Native))
            .unwrap();
        let s = score_program(ex.as_ref(), cube, cube);
        assert!(s.ok && (s.iou_best.unwrap() - 1.0).abs() < 1e-6, "{s:?}");
        let bad = score_program(ex.as_ref(), "import os", cube);
        assert!(!bad.ok && bad.error.is_some());
        let r = |ok: Scored| SampleResult {
            id: "a".into(),
            sample: 0,
            program: String::new(),
            finished: true,
            n_tokens: 1,
            score: ok,
        };
        let sum = summarize(&[r(s), r(bad)], 1, 0.0);
        assert_eq!(sum.n, 2);
        assert!((sum.vsr - 0.5).abs() < 1e-12);
        assert!((sum.iou_best_mean_valid - 1.0).abs() < 1e-6);
        assert!((sum.iou_best_mean_all - 0.5).abs() < 1e-6);
        // the CD of a cube with itself is cadrille's sampling floor (≈ 2·6 / (π·8192)), over the valid one
        let cd = sum.cd_x1000_mean_valid.unwrap();
        assert!(cd > 0.4 && cd < 0.6, "{cd}");
        assert_eq!(sum.cd_x1000_median_valid, Some(cd));
    }
}
