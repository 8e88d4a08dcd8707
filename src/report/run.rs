//! The report of a run folder: reads SFT/DPO/GRPO metrics, rollouts and evaluations, writes the PNG figures
//! and `report/README.md` (a metrics table with the figures).
//!
//! Layout read (what `cadvlm recipe` writes): `metrics.jsonl` (SFT), `eval/<set>/{eval.json,samples.parquet}`
//! (SFT checkpoint), `dpo/metrics.jsonl`, `dpo/rollouts/round-NN.parquet`, `dpo/eval/<set>/...` (DPO
//! checkpoint) and `dpo/eval/sets.json` (set name → data folder, for the gallery's target images);
//! a GRPO run has the same under `grpo/` (its `metrics.jsonl` with TRL's GRPO names).
//! Missing parts are skipped with a note in the README rather than failing the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{
    GalleryRow, ReportError, Series, Tile, bar_figure, gallery_figure, histogram_figure,
    line_figure,
};
use crate::eval::EvalSummary;
use crate::train::metrics::{DpoMetricRow, GrpoMetricRow, MetricRow};

fn ioerr(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// One evaluated program, as read back from `samples.parquet`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    pub id: String,
    pub program: String,
    pub ok: bool,
    pub iou_unitcube: Option<f64>,
    pub iou_best: Option<f64>,
}

/// Read `samples.parquet` of an evaluation.
pub fn read_eval_rows(path: &Path) -> Result<Vec<EvalRow>, ReportError> {
    use polars::prelude::*;
    let f = std::fs::File::open(path).map_err(|e| ioerr(path, e))?;
    let df = ParquetReader::new(f).finish().map_err(|e| ioerr(path, e))?;
    let col = |n: &str| {
        df.column(n)
            .map_err(|e| ioerr(path, format!("column {n}: {e}")))
    };
    let id = col("id")?.str().map_err(|e| ioerr(path, e))?.clone();
    let program = col("program")?.str().map_err(|e| ioerr(path, e))?.clone();
    let ok = col("ok")?.bool().map_err(|e| ioerr(path, e))?.clone();
    let uc = col("iou_unitcube")?
        .f64()
        .map_err(|e| ioerr(path, e))?
        .clone();
    let best = col("iou_best")?.f64().map_err(|e| ioerr(path, e))?.clone();
    Ok((0..df.height())
        .map(|i| EvalRow {
            id: id.get(i).unwrap_or("").to_string(),
            program: program.get(i).unwrap_or("").to_string(),
            ok: ok.get(i).unwrap_or(false),
            iou_unitcube: uc.get(i),
            iou_best: best.get(i),
        })
        .collect())
}

/// Per-image difference `b − a` of one IoU (a failure counts 0), over the ids both evaluations share
/// (first program per id).
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    pub n: usize,
    pub mean: f64,
    /// Standard error of the mean difference.
    pub se: f64,
    pub better: usize,
    pub worse: usize,
    pub tied: usize,
}

/// Pair two evaluations image by image (see [`Paired`]); `None` when they share fewer than 2 ids.
pub fn paired_difference(
    a: &[EvalRow],
    b: &[EvalRow],
    iou: fn(&EvalRow) -> Option<f64>,
) -> Option<Paired> {
    let mut first: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for r in a {
        first
            .entry(r.id.as_str())
            .or_insert_with(|| iou(r).unwrap_or(0.0));
    }
    let mut seen = std::collections::HashSet::new();
    let d: Vec<f64> = b
        .iter()
        .filter(|r| seen.insert(r.id.as_str()))
        .filter_map(|r| Some(iou(r).unwrap_or(0.0) - first.get(r.id.as_str())?))
        .collect();
    let n = d.len();
    if n < 2 {
        return None;
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let eps = 1e-9;
    Some(Paired {
        n,
        mean,
        se: (var / n as f64).sqrt(),
        better: d.iter().filter(|&&x| x > eps).count(),
        worse: d.iter().filter(|&&x| x < -eps).count(),
        tied: d.iter().filter(|&&x| x.abs() <= eps).count(),
    })
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn read_summary(path: &Path) -> Option<EvalSummary> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Evaluation sets present under `dir/eval/` (folders with an `eval.json`), sorted.
fn eval_sets(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("eval"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("eval.json").exists())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// What the report found and wrote.
#[derive(Clone, Debug, Default)]
pub struct ReportOutcome {
    pub dir: PathBuf,
    pub figures: Vec<PathBuf>,
    pub notes: Vec<String>,
}

/// Render a program for the gallery (only programs that executed in the sandbox during evaluation
/// are passed here; the core's own budgets still bound it).
fn render_program(program: &str, side: u32) -> Option<Tile> {
    let solid = crate::cad::execute(program, &crate::cad::Limits::default()).ok()?;
    if solid.is_empty() {
        return None;
    }
    let opts = crate::geom::render::RenderOptions {
        size: side,
        ..Default::default()
    };
    let img = crate::geom::render::render(&solid, &opts).ok()?;
    Some(Tile {
        rgb: img.pixels,
        width: img.width,
        height: img.height,
    })
}

/// `n` evenly spaced elements of `ids` (sorted): a gallery that is not cherry-picked.
pub fn spread<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    if items.len() <= n {
        return items.to_vec();
    }
    (0..n).map(|i| items[i * items.len() / n].clone()).collect()
}

fn fmt3(v: f64) -> String {
    format!("{v:.3}")
}

/// `mean / median` of CD×1000 over valid programs, or `–` for an eval.json without it.
fn fmt_cd(e: &crate::eval::EvalSummary) -> String {
    match (e.cd_x1000_mean_valid, e.cd_x1000_median_valid) {
        (Some(m), Some(md)) => format!("{m:.3} / {md:.3}"),
        _ => "–".to_string(),
    }
}

/// A signed difference with 3 decimals, without a "-0.000".
fn delta3(v: f64) -> String {
    if v.abs() < 5e-4 {
        "±0.000".to_string()
    } else {
        format!("{v:+.3}")
    }
}

/// Write every figure and `README.md` of `run` into `run/report/`.
pub fn write_report(run: &Path) -> Result<ReportOutcome, ReportError> {
    let out = run.join("report");
    std::fs::create_dir_all(&out).map_err(|e| ioerr(&out, e))?;
    let mut rep = ReportOutcome {
        dir: out.clone(),
        ..Default::default()
    };
    let mut md = String::new();
    let name = run
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let _ = writeln!(md, "# Run `{name}`\n");
    // the stage after SFT: GRPO when the run has one, else DPO (a recipe has one of them)
    let (post, dpo_dir) = if run.join("grpo").is_dir() {
        ("GRPO", run.join("grpo"))
    } else {
        ("DPO", run.join("dpo"))
    };

    // --- evaluation table (SFT vs DPO or GRPO on the same sets and decoding)
    let sets: Vec<String> = {
        let mut s = eval_sets(run);
        for x in eval_sets(&dpo_dir) {
            if !s.contains(&x) {
                s.push(x);
            }
        }
        s
    };
    let mut table: Vec<(String, Option<EvalSummary>, Option<EvalSummary>)> = Vec::new();
    for s in &sets {
        table.push((
            s.clone(),
            read_summary(&run.join("eval").join(s).join("eval.json")),
            read_summary(&dpo_dir.join("eval").join(s).join("eval.json")),
        ));
    }
    if !table.is_empty() {
        let _ = writeln!(
            md,
            "## Evaluation: SFT vs {post} (same sets, same decoding)\n"
        );
        let _ = writeln!(
            md,
            "IoU over *all* programs counts a failure as 0; over *valid* programs it averages the ones that executed (as CAD-Coder reports). CD×1000 is cadrille's Chamfer distance (unit cube, 8192 points, squared distances; lower is better), mean / median over valid programs.\n"
        );
        let _ = writeln!(
            md,
            "| set | model | n | VSR | IoU_unitcube all | IoU_unitcube valid | IoU_best all | IoU_best valid | CD×1000 mean / median |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for (s, a, b) in &table {
            for (m, e) in [("SFT", a), (post, b)] {
                if let Some(e) = e {
                    let _ = writeln!(
                        md,
                        "| {s} | {m} | {} | {} | {} | {} | {} | {} | {} |",
                        e.n,
                        fmt3(e.vsr),
                        fmt3(e.iou_unitcube_mean_all),
                        fmt3(e.iou_unitcube_mean_valid),
                        fmt3(e.iou_best_mean_all),
                        fmt3(e.iou_best_mean_valid),
                        fmt_cd(e)
                    );
                }
            }
            if let (Some(a), Some(b)) = (a, b) {
                let _ = writeln!(
                    md,
                    "| {s} | **Δ {post}−SFT** | | {} | {} | {} | {} | {} | |",
                    delta3(b.vsr - a.vsr),
                    delta3(b.iou_unitcube_mean_all - a.iou_unitcube_mean_all),
                    delta3(b.iou_unitcube_mean_valid - a.iou_unitcube_mean_valid),
                    delta3(b.iou_best_mean_all - a.iou_best_mean_all),
                    delta3(b.iou_best_mean_valid - a.iou_best_mean_valid)
                );
            }
        }
        let _ = writeln!(md);
        // paired per-image differences: is the change more than noise?
        let mut lines = Vec::new();
        for (s, _, _) in &table {
            let a = read_eval_rows(&run.join("eval").join(s).join("samples.parquet")).ok();
            let b = read_eval_rows(&dpo_dir.join("eval").join(s).join("samples.parquet")).ok();
            let (Some(a), Some(b)) = (a, b) else { continue };
            for (name, f) in [
                (
                    "IoU_unitcube",
                    (|r: &EvalRow| r.iou_unitcube) as fn(&EvalRow) -> Option<f64>,
                ),
                ("IoU_best", |r: &EvalRow| r.iou_best),
            ] {
                if let Some(p) = paired_difference(&a, &b, f) {
                    lines.push(format!(
                        "- {s}, {name}: {} ± {:.3} (s.e., n {}); {post} better on {}, worse on {}, tied on {}",
                        delta3(p.mean),
                        p.se,
                        p.n,
                        p.better,
                        p.worse,
                        p.tied
                    ));
                }
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(
                md,
                "Per image, {post} − SFT (failures = 0; first program per image):\n\n{}\n",
                lines.join("\n")
            );
        }
        // bars
        let cats: Vec<String> = table.iter().map(|t| t.0.clone()).collect();
        let pick = |f: &dyn Fn(&EvalSummary) -> f64, which: usize| -> Vec<f64> {
            table
                .iter()
                .map(|t| {
                    if which == 0 {
                        t.1.as_ref()
                    } else {
                        t.2.as_ref()
                    }
                    .map_or(0.0, f)
                })
                .collect()
        };
        let series = |f: &dyn Fn(&EvalSummary) -> f64| {
            vec![
                ("SFT".to_string(), pick(f, 0)),
                (post.to_string(), pick(f, 1)),
            ]
        };
        let p = out.join("vsr_iou.png");
        bar_figure(
            &p,
            &[
                (
                    "Valid syntax rate",
                    "VSR",
                    1.3,
                    cats.clone(),
                    series(&|e| e.vsr),
                ), // headroom: the legend sits above bars at 1.0
                (
                    "Mean IoU_unitcube (failures = 0)",
                    "mean IoU",
                    1.1,
                    cats.clone(),
                    series(&|e| e.iou_unitcube_mean_all),
                ),
                (
                    "Mean IoU_best (failures = 0)",
                    "mean IoU",
                    1.1,
                    cats.clone(),
                    series(&|e| e.iou_best_mean_all),
                ),
            ],
        )?;
        let _ = writeln!(md, "![VSR and mean IoU](vsr_iou.png)\n");
        rep.figures.push(p);
    } else {
        rep.notes
            .push("no evaluation results (eval/, dpo/eval/ or grpo/eval/)".into());
    }

    // --- IoU histograms per set
    for s in &sets {
        let a = read_eval_rows(&run.join("eval").join(s).join("samples.parquet")).ok();
        let b = read_eval_rows(&dpo_dir.join("eval").join(s).join("samples.parquet")).ok();
        let mut series = Vec::new();
        for (m, rows) in [("SFT", &a), (post, &b)] {
            if let Some(rows) = rows {
                let v: Vec<f64> = rows.iter().filter_map(|r| r.iou_unitcube).collect();
                series.push((
                    m.to_string(),
                    v,
                    rows.iter().filter(|r| r.iou_unitcube.is_none()).count(),
                ));
            }
        }
        if series.is_empty() {
            continue;
        }
        let p = out.join(format!("iou_hist_{s}.png"));
        histogram_figure(
            &p,
            &format!("IoU_unitcube of generated programs: {s}"),
            "IoU_unitcube",
            &series,
            0.0,
            1.0,
            10,
            Some("did not execute"),
        )?;
        let _ = writeln!(md, "![IoU histogram {s}](iou_hist_{s}.png)\n");
        rep.figures.push(p);
    }

    // --- SFT loss
    let sft: Vec<MetricRow> = read_jsonl(&run.join("metrics.jsonl"));
    if sft.iter().any(|r| r.loss.is_some()) {
        let loss = Series {
            name: "train loss (code tokens)".into(),
            points: sft
                .iter()
                .filter_map(|r| Some((r.step as f64, r.loss?)))
                .collect(),
        };
        let mut panels = vec![("SFT loss", "cross-entropy (nats/token)", vec![loss], None)];
        let aux: Vec<(f64, f64)> = sft
            .iter()
            .filter_map(|r| Some((r.step as f64, r.aux_loss?)))
            .collect();
        if !aux.is_empty() {
            panels.push((
                "SFT auxiliary shape loss",
                "MSE (unweighted)",
                vec![Series {
                    name: "shape descriptors from the image".into(),
                    points: aux,
                }],
                None,
            ));
        }
        let val: Vec<(f64, f64)> = sft
            .iter()
            .filter_map(|r| Some((r.step as f64, r.val_iou_unitcube?)))
            .collect();
        if !val.is_empty() {
            let vsr = Series {
                name: "val VSR".into(),
                points: sft
                    .iter()
                    .filter_map(|r| Some((r.step as f64, r.val_vsr?)))
                    .collect(),
            };
            panels.push((
                "SFT validation (greedy)",
                "rate / mean IoU",
                vec![
                    vsr,
                    Series {
                        name: "val IoU_unitcube (all)".into(),
                        points: val,
                    },
                ],
                None,
            ));
        }
        let p = out.join("sft_loss.png");
        line_figure(&p, "optimizer step", &panels, (700, 460))?;
        let last = sft.iter().rev().find_map(|r| r.loss).unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "## SFT\n\n{} logged steps, last loss {last:.4}.\n\n![SFT loss](sft_loss.png)\n",
            sft.len()
        );
        rep.figures.push(p);
    } else {
        rep.notes.push("no SFT metrics.jsonl".into());
    }

    // --- DPO or GRPO training
    if post == "DPO" {
        let dpo: Vec<DpoMetricRow> = read_jsonl(&dpo_dir.join("metrics.jsonl"));
        let steps: Vec<&DpoMetricRow> = dpo.iter().filter(|r| r.loss.is_some()).collect();
        if !steps.is_empty() {
            let s = |name: &str, f: &dyn Fn(&DpoMetricRow) -> Option<f64>| Series {
                name: name.into(),
                points: steps
                    .iter()
                    .filter_map(|r| Some((r.step as f64, f(r)?)))
                    .collect(),
            };
            let p = out.join("dpo_training.png");
            line_figure(
                &p,
                "DPO optimizer step",
                &[
                    (
                        "DPO loss",
                        "sigmoid DPO loss",
                        vec![s("loss", &|r| r.loss)],
                        Some((std::f64::consts::LN_2, "ln 2 (policy = reference)")),
                    ),
                    (
                        "Implicit rewards β·log(π/π_ref)",
                        "reward",
                        vec![
                            s("rewards/margins", &|r| r.rewards_margins),
                            s("rewards/chosen", &|r| r.rewards_chosen),
                            s("rewards/rejected", &|r| r.rewards_rejected),
                        ],
                        Some((0.0, "0")),
                    ),
                    (
                        "Preference accuracy",
                        "rewards/accuracies",
                        vec![s("rewards/accuracies", &|r| r.rewards_accuracies)],
                        Some((0.5, "chance")),
                    ),
                ],
                (620, 460),
            )?;
            let _ = writeln!(md, "## DPO\n\n![DPO training](dpo_training.png)\n");
            rep.figures.push(p);
        } else {
            rep.notes
                .push("no DPO training steps in dpo/metrics.jsonl".into());
        }
        let rounds: Vec<&DpoMetricRow> = dpo.iter().filter(|r| r.rollout_pairs.is_some()).collect();
        if !rounds.is_empty() {
            let _ = writeln!(
                md,
                "| round | policy step | rollout mean reward | rollout VSR | rollout IoU_unitcube (all) | pairs |"
            );
            let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
            for r in &rounds {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    r.round,
                    r.step,
                    fmt3(r.rollout_reward_mean.unwrap_or(f64::NAN)),
                    fmt3(r.rollout_vsr.unwrap_or(f64::NAN)),
                    fmt3(r.rollout_iou_mean_all.unwrap_or(f64::NAN)),
                    r.rollout_pairs.unwrap_or(0.0)
                );
            }
            let _ = writeln!(md);
        }
    } else {
        grpo_section(&dpo_dir, &out, &mut md, &mut rep)?;
    }
    // rollout rewards per round
    let mut rseries = Vec::new();
    let mut round_files: Vec<PathBuf> = std::fs::read_dir(dpo_dir.join("rollouts"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect()
        })
        .unwrap_or_default();
    round_files.sort();
    for f in &round_files {
        if let Ok(rs) = crate::train::rollout::read_rollouts(f) {
            let round = rs.first().map_or(0, |r| r.round);
            let v: Vec<f64> = rs.iter().filter_map(|r| r.iou).collect();
            rseries.push((
                format!("round {round}"),
                v,
                rs.iter().filter(|r| r.iou.is_none()).count(),
            ));
        }
    }
    if !rseries.is_empty() {
        let p = out.join("rollout_rewards.png");
        histogram_figure(
            &p,
            "Rollout rewards per round (sampled programs, IoU_unitcube)",
            "reward = IoU_unitcube",
            &rseries,
            0.0,
            1.0,
            10,
            Some("invalid: penalty"),
        )?;
        let _ = writeln!(md, "![Rollout rewards](rollout_rewards.png)\n");
        rep.figures.push(p);
    }

    // --- gallery: target | SFT | DPO, on the first set with both (real data preferred)
    let set_dirs: BTreeMap<String, PathBuf> =
        std::fs::read_to_string(dpo_dir.join("eval").join("sets.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
    let mut gallery_sets: Vec<&(String, Option<EvalSummary>, Option<EvalSummary>)> = table
        .iter()
        .filter(|t| t.1.is_some() && t.2.is_some())
        .collect();
    gallery_sets.sort_by_key(|t| t.0.starts_with("synth")); // real images first
    let mut gallery_done = false;
    for (s, _, _) in gallery_sets {
        let (Some(dir), Ok(a), Ok(b)) = (
            set_dirs.get(s),
            read_eval_rows(&run.join("eval").join(s).join("samples.parquet")),
            read_eval_rows(&dpo_dir.join("eval").join(s).join("samples.parquet")),
        ) else {
            continue;
        };
        let Ok(samples) = crate::data::load_samples(dir, None) else {
            continue;
        };
        let by_id: BTreeMap<&str, &crate::data::Sample> =
            samples.iter().map(|x| (x.id.as_str(), x)).collect();
        let first = |rows: &[EvalRow]| -> BTreeMap<String, EvalRow> {
            let mut m = BTreeMap::new();
            for r in rows {
                m.entry(r.id.clone()).or_insert_with(|| r.clone());
            }
            m
        };
        let (ma, mb) = (first(&a), first(&b));
        let ids: Vec<String> = ma
            .keys()
            .filter(|k| mb.contains_key(*k) && by_id.contains_key(k.as_str()))
            .cloned()
            .collect();
        let side = 180;
        let rows: Vec<GalleryRow> = spread(&ids, 12)
            .into_iter()
            .map(|id| {
                let t = by_id[id.as_str()];
                let (ra, rb) = (&ma[&id], &mb[&id]);
                GalleryRow {
                    id: id.clone(),
                    target: Tile {
                        rgb: t.rgb.clone(),
                        width: t.width as u32,
                        height: t.height as u32,
                    },
                    a: if ra.ok {
                        render_program(&ra.program, side)
                    } else {
                        None
                    },
                    b: if rb.ok {
                        render_program(&rb.program, side)
                    } else {
                        None
                    },
                    a_iou: ra.iou_unitcube,
                    b_iou: rb.iou_unitcube,
                }
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let p = out.join("gallery.png");
        gallery_figure(
            &p,
            &format!(
                "{s}: target | SFT | {post} (first program per image, evenly spaced ids, not selected by IoU)"
            ),
            &rows,
            2,
            side,
            "IoU_uc",
            ["target image", "SFT program", &format!("{post} program")],
        )?;
        let _ = writeln!(md, "## Gallery ({s})\n\n![gallery](gallery.png)\n");
        rep.figures.push(p);
        gallery_done = true;
        break;
    }
    if !gallery_done {
        rep.notes.push(format!(
            "no gallery: needs SFT and {post} evaluations of one set and {}/eval/sets.json",
            post.to_lowercase()
        ));
    }
    search_section(run, &out, &mut md, &mut rep)?;
    if !rep.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &rep.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let p = out.join("README.md");
    std::fs::write(&p, md).map_err(|e| ioerr(&p, e))?;
    Ok(rep)
}

/// Searched evaluations (`eval.json` with `search`): a table greedy | searched, the IoU-vs-renders
/// curves, and a gallery input | greedy | searched on the first set (real images first).
fn search_section(
    run: &Path,
    out: &Path,
    md: &mut String,
    rep: &mut ReportOutcome,
) -> Result<(), ReportError> {
    let mut found: Vec<(String, crate::eval::SearchSummary, PathBuf, Option<PathBuf>)> = Vec::new();
    for (stage, dir) in [
        ("SFT", run.to_path_buf()),
        ("DPO", run.join("dpo")),
        ("GRPO", run.join("grpo")),
    ] {
        let set_dirs: BTreeMap<String, PathBuf> =
            std::fs::read_to_string(dir.join("eval").join("sets.json"))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
        for s in eval_sets(&dir) {
            let ed = dir.join("eval").join(&s);
            if let Some(x) = read_summary(&ed.join("eval.json")).and_then(|e| e.search) {
                found.push((format!("{stage} {s}"), x, ed, set_dirs.get(&s).cloned()));
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let _ = writeln!(md, "## Render-and-compare search\n");
    let _ = writeln!(
        md,
        "Mean over all images (failures count 0). The search sees the image only; IoU is measured afterwards.\n"
    );
    let _ = writeln!(
        md,
        "| model / set | greedy IoU_best | searched IoU_best | greedy IoU_unitcube | searched IoU_unitcube | VSR greedy / searched | renders/image | s/image (propose + search) | Spearman(image score, IoU_best) | pick of proposals / oracle |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut panels = Vec::new();
    for (name, x, ed, _) in &found {
        let e = read_summary(&ed.join("eval.json"));
        let (sb, su, sv) = e.as_ref().map_or((f64::NAN, f64::NAN, f64::NAN), |e| {
            (e.iou_best_mean_all, e.iou_unitcube_mean_all, e.vsr)
        });
        let _ = writeln!(
            md,
            "| {name} | {} | **{}** | {} | {} | {} / {} | {:.0} | {:.1} + {:.2} | {} | {} / {} |",
            fmt3(x.greedy_iou_best_mean_all),
            fmt3(sb),
            fmt3(x.greedy_iou_unitcube_mean_all),
            fmt3(su),
            fmt3(x.greedy_vsr),
            fmt3(sv),
            x.renders_mean,
            x.propose_seconds_per_image,
            x.search_seconds_per_image,
            x.spearman_mean.map_or("n/a".into(), fmt3),
            fmt3(x.proposals_pick_iou_best),
            fmt3(x.proposals_oracle_iou_best)
        );
        let pts = |c: &[(usize, f64)]| {
            c.iter()
                .map(|(b, v)| ((*b as f64).log2(), *v))
                .collect::<Vec<_>>()
        };
        panels.push((
            name.clone(),
            vec![
                Series {
                    name: "IoU_best".into(),
                    points: pts(&x.curve),
                },
                Series {
                    name: "IoU_unitcube".into(),
                    points: pts(&x.curve_unitcube),
                },
            ],
            x.greedy_iou_best_mean_all,
        ));
    }
    let p = out.join("search_curve.png");
    let panel_refs: Vec<(&str, &str, Vec<Series>, Option<(f64, &str)>)> = panels
        .iter()
        .map(|(n, s, g)| {
            (
                n.as_str(),
                "mean IoU (all images)",
                s.clone(),
                Some((*g, "greedy IoU_best")),
            )
        })
        .collect();
    line_figure(&p, "log2(renders per image)", &panel_refs, (560, 380))?;
    let _ = writeln!(md, "\n![IoU vs renders](search_curve.png)\n");
    rep.figures.push(p);

    let mut order: Vec<&(String, crate::eval::SearchSummary, PathBuf, Option<PathBuf>)> =
        found.iter().filter(|f| f.3.is_some()).collect();
    order.sort_by_key(|f| f.0.contains("synth"));
    for (name, _, ed, dir) in order {
        let lines: Vec<crate::eval::SearchLine> = read_jsonl(&ed.join("search.jsonl"));
        let Some(dir) = dir else { continue };
        let Ok(samples) = crate::data::load_samples(dir, None) else {
            continue;
        };
        let by_id: BTreeMap<&str, &crate::data::Sample> =
            samples.iter().map(|x| (x.id.as_str(), x)).collect();
        let lines: Vec<&crate::eval::SearchLine> = lines
            .iter()
            .filter(|l| by_id.contains_key(l.id.as_str()))
            .collect();
        let side = 180;
        let rows: Vec<GalleryRow> = spread(&lines, 12)
            .into_iter()
            .map(|l| {
                let t = by_id[l.id.as_str()];
                GalleryRow {
                    id: l.id.clone(),
                    target: Tile {
                        rgb: t.rgb.clone(),
                        width: t.width as u32,
                        height: t.height as u32,
                    },
                    // programs that executed in the sandbox (they have an image score) are drawn
                    // even when the target program fails and they have no IoU
                    a: l.greedy_image_score
                        .and_then(|_| render_program(&l.greedy_program, side)),
                    b: l.image_score
                        .and_then(|_| l.program.as_deref().and_then(|p| render_program(p, side))),
                    a_iou: l.greedy_iou_best,
                    b_iou: l.iou_best,
                }
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let p = out.join("search_gallery.png");
        gallery_figure(
            &p,
            &format!("{name}: input | greedy | searched (evenly spaced ids, not selected by IoU)"),
            &rows,
            2,
            side,
            "IoU_best",
            ["input image", "greedy program", "searched program"],
        )?;
        let _ = writeln!(md, "![search gallery](search_gallery.png)\n");
        rep.figures.push(p);
        break;
    }
    Ok(())
}

/// The GRPO training figure (rollout reward per round; loss, KL, clip ratio and entropy per step) and
/// the table of rounds, from `grpo/metrics.jsonl`.
fn grpo_section(
    dir: &Path,
    out: &Path,
    md: &mut String,
    rep: &mut ReportOutcome,
) -> Result<(), ReportError> {
    let rows: Vec<GrpoMetricRow> = read_jsonl(&dir.join("metrics.jsonl"));
    let steps: Vec<&GrpoMetricRow> = rows.iter().filter(|r| r.loss.is_some()).collect();
    let rounds: Vec<&GrpoMetricRow> = rows.iter().filter(|r| r.reward.is_some()).collect();
    if steps.is_empty() {
        rep.notes
            .push("no GRPO training steps in grpo/metrics.jsonl".into());
        return Ok(());
    }
    let s = |v: &[&GrpoMetricRow], name: &str, f: &dyn Fn(&GrpoMetricRow) -> Option<f64>| Series {
        name: name.into(),
        points: v
            .iter()
            .filter_map(|r| Some((r.step as f64, f(r)?)))
            .collect(),
    };
    let p = out.join("grpo_training.png");
    line_figure(
        &p,
        "GRPO optimizer step",
        &[
            (
                "Rollout reward per round (at its first step)",
                "reward",
                vec![
                    s(&rounds, "reward (mean)", &|r| r.reward),
                    s(&rounds, "reward_std (in group)", &|r| r.reward_std),
                    s(&rounds, "rollout IoU (all)", &|r| r.rollout_iou_mean_all),
                ],
                None,
            ),
            (
                "Surrogate loss",
                "loss",
                vec![s(&steps, "loss", &|r| r.loss)],
                Some((0.0, "0")),
            ),
            (
                "Clip ratio and KL to the reference",
                "per token",
                vec![
                    s(&steps, "clip_ratio/region_mean", &|r| r.clip_ratio),
                    s(&steps, "kl", &|r| r.kl),
                ],
                None,
            ),
            (
                "Entropy of the next-token distribution",
                "nats per token",
                vec![s(&steps, "entropy", &|r| r.entropy)],
                None,
            ),
        ],
        (520, 420),
    )?;
    let _ = writeln!(md, "## GRPO\n\n![GRPO training](grpo_training.png)\n");
    rep.figures.push(p);
    if !rounds.is_empty() {
        let _ = writeln!(
            md,
            "| round | policy step | reward (mean) | reward std in group | groups all equal | rollout VSR | rollout IoU (all) | groups trained | completions |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rounds {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.round,
                r.step,
                fmt3(r.reward.unwrap_or(f64::NAN)),
                fmt3(r.reward_std.unwrap_or(f64::NAN)),
                fmt3(r.frac_reward_zero_std.unwrap_or(f64::NAN)),
                fmt3(r.rollout_vsr.unwrap_or(f64::NAN)),
                fmt3(r.rollout_iou_mean_all.unwrap_or(f64::NAN)),
                r.rollout_groups.unwrap_or(0.0),
                r.rollout_completions.unwrap_or(0.0)
            );
        }
        let _ = writeln!(md);
    }
    Ok(())
}

/// A side-by-side report of several models' evaluations (`cadvlm report --compare LABEL=DIR ...`):
/// each `(label, dir)` is a stage folder with `eval/<set>/` (a run for its SFT model, `run/dpo`,
/// `run/grpo`). Writes into `out`: a table per set, bars of VSR and mean IoU, per-image paired
/// differences of every model against the first (mean ± s.e., better/worse), and the rollout reward
/// per round of the models that trained on rollouts (`metrics.jsonl` with `rollout/reward_mean` or
/// `reward`).
pub fn write_comparison(
    models: &[(String, PathBuf)],
    out: &Path,
) -> Result<ReportOutcome, ReportError> {
    std::fs::create_dir_all(out).map_err(|e| ioerr(out, e))?;
    let mut rep = ReportOutcome {
        dir: out.to_path_buf(),
        ..Default::default()
    };
    let mut md = String::from("# Side by side\n\n");
    for (l, d) in models {
        let _ = writeln!(md, "- {l}: `{}`", d.display());
    }
    let _ = writeln!(
        md,
        "\nIoU over *all* images counts a failure as 0. Paired differences are per image against {}, with the standard error of the mean.\n",
        models.first().map_or("the first", |m| m.0.as_str())
    );
    let mut sets: Vec<String> = Vec::new();
    for (_, d) in models {
        for s in eval_sets(d) {
            if !sets.contains(&s) {
                sets.push(s);
            }
        }
    }
    let _ = writeln!(
        md,
        "| set | model | n | VSR | IoU_unitcube all | IoU_best all | IoU_best valid | CD×1000 mean / median | Δ IoU_best vs first (± s.e.) | better / worse |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut bars: Vec<(String, Vec<f64>, Vec<f64>, Vec<f64>)> = models
        .iter()
        .map(|m| (m.0.clone(), Vec::new(), Vec::new(), Vec::new()))
        .collect();
    for s in &sets {
        let base = models
            .first()
            .and_then(|m| read_eval_rows(&m.1.join("eval").join(s).join("samples.parquet")).ok());
        for (i, (l, d)) in models.iter().enumerate() {
            let e = read_summary(&d.join("eval").join(s).join("eval.json"));
            let rows = read_eval_rows(&d.join("eval").join(s).join("samples.parquet")).ok();
            let paired = match (&base, &rows) {
                (Some(a), Some(b)) if i > 0 => paired_difference(a, b, |r| r.iou_best),
                _ => None,
            };
            let (pd, bw) = paired.map_or((String::new(), String::new()), |p| {
                (
                    format!("{} ± {:.3}", delta3(p.mean), p.se),
                    format!("{} / {}", p.better, p.worse),
                )
            });
            match &e {
                Some(e) => {
                    let _ = writeln!(
                        md,
                        "| {s} | {l} | {} | {} | {} | {} | {} | {} | {pd} | {bw} |",
                        e.n,
                        fmt3(e.vsr),
                        fmt3(e.iou_unitcube_mean_all),
                        fmt3(e.iou_best_mean_all),
                        fmt3(e.iou_best_mean_valid),
                        fmt_cd(e)
                    );
                }
                None => {
                    let _ = writeln!(md, "| {s} | {l} | (no eval.json) | | | | | | | |");
                }
            }
            let b = &mut bars[i];
            b.1.push(e.as_ref().map_or(0.0, |e| e.vsr));
            b.2.push(e.as_ref().map_or(0.0, |e| e.iou_unitcube_mean_all));
            b.3.push(e.as_ref().map_or(0.0, |e| e.iou_best_mean_all));
        }
    }
    let _ = writeln!(md);
    if !sets.is_empty() {
        let p = out.join("compare_iou.png");
        let series = |k: usize| -> Vec<(String, Vec<f64>)> {
            bars.iter()
                .map(|b| {
                    (
                        b.0.clone(),
                        match k {
                            0 => b.1.clone(),
                            1 => b.2.clone(),
                            _ => b.3.clone(),
                        },
                    )
                })
                .collect()
        };
        bar_figure(
            &p,
            &[
                ("Valid syntax rate", "VSR", 1.3, sets.clone(), series(0)),
                (
                    "Mean IoU_unitcube (failures = 0)",
                    "mean IoU",
                    1.1,
                    sets.clone(),
                    series(1),
                ),
                (
                    "Mean IoU_best (failures = 0)",
                    "mean IoU",
                    1.1,
                    sets.clone(),
                    series(2),
                ),
            ],
        )?;
        let _ = writeln!(md, "![VSR and mean IoU](compare_iou.png)\n");
        rep.figures.push(p);
    }
    // rollout reward per round (DPO: rollout/reward_mean; GRPO: reward)
    let mut curves = Vec::new();
    for (l, d) in models {
        let rows: Vec<serde_json::Value> = read_jsonl(&d.join("metrics.jsonl"));
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| {
                let v = r
                    .get("rollout/reward_mean")
                    .or_else(|| r.get("reward"))?
                    .as_f64()?;
                Some((r.get("round")?.as_f64()?, v))
            })
            .collect();
        if !pts.is_empty() {
            curves.push(Series {
                name: l.clone(),
                points: pts,
            });
        }
    }
    if !curves.is_empty() {
        let p = out.join("compare_rewards.png");
        line_figure(
            &p,
            "round",
            &[(
                "Mean reward of the round's sampled programs",
                "reward (IoU_unitcube; failure -0.5)",
                curves,
                None,
            )],
            (720, 460),
        )?;
        let _ = writeln!(md, "![Rollout rewards](compare_rewards.png)\n");
        rep.figures.push(p);
    }
    let p = out.join("README.md");
    std::fs::write(&p, md).map_err(|e| ioerr(&p, e))?;
    Ok(rep)
}
