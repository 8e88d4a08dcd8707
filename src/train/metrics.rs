//! `metrics.jsonl` (the log, read back on resume) and `metrics.parquet` (the same rows, one column per
//! metric) of SFT ([`MetricRow`]), DPO ([`DpoMetricRow`]) and GRPO ([`GrpoMetricRow`]) — the latter two
//! with TRL's column names — written atomically.

use std::path::Path;

use polars::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TrainError;

fn ioerr(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// One row of the SFT metrics: a logged training step and/or a validation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MetricRow {
    pub step: usize,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub tokens: u64,
    pub seconds: f64,
    pub val_vsr: Option<f64>,
    pub val_iou_unitcube: Option<f64>,
    pub val_iou_best: Option<f64>,
    /// Mean auxiliary shape loss of the logging window (`sft.aux_weight` > 0).
    #[serde(default)]
    pub aux_loss: Option<f64>,
}

/// One row of the DPO `metrics.parquet`: a training step (`loss`, `rewards/*`, `logps/*`) or the
/// rollouts of a round (`rollout/*`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DpoMetricRow {
    pub step: usize,
    pub round: usize,
    pub loss: Option<f64>,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: Option<f64>,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: Option<f64>,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: Option<f64>,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: Option<f64>,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: Option<f64>,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub seconds: f64,
    #[serde(rename = "rollout/reward_mean")]
    pub rollout_reward_mean: Option<f64>,
    #[serde(rename = "rollout/vsr")]
    pub rollout_vsr: Option<f64>,
    #[serde(rename = "rollout/iou_mean_all")]
    pub rollout_iou_mean_all: Option<f64>,
    #[serde(rename = "rollout/pairs")]
    pub rollout_pairs: Option<f64>,
}

/// One row of the GRPO `metrics.parquet`: a training step (`loss`, `kl`, `clip_ratio/region_mean`,
/// `entropy`, `completions/mean_length`) or the rollouts of a round (`reward`, `reward_std`,
/// `frac_reward_zero_std`, `rollout/*`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GrpoMetricRow {
    pub step: usize,
    pub round: usize,
    pub loss: Option<f64>,
    pub kl: Option<f64>,
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_ratio: Option<f64>,
    pub entropy: Option<f64>,
    #[serde(rename = "completions/mean_length")]
    pub mean_length: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub seconds: f64,
    pub reward: Option<f64>,
    pub reward_std: Option<f64>,
    pub frac_reward_zero_std: Option<f64>,
    #[serde(rename = "rollout/vsr")]
    pub rollout_vsr: Option<f64>,
    #[serde(rename = "rollout/iou_mean_all")]
    pub rollout_iou_mean_all: Option<f64>,
    #[serde(rename = "rollout/groups")]
    pub rollout_groups: Option<f64>,
    #[serde(rename = "rollout/completions")]
    pub rollout_completions: Option<f64>,
}

/// Write `rows` as `run/metrics.jsonl` and `run/metrics.parquet` (`columns` are the parquet columns).
fn write_rows<T: Serialize>(
    run: &Path,
    rows: &[T],
    columns: Vec<Column>,
) -> Result<(), TrainError> {
    let jl = run.join("metrics.jsonl");
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r).map_err(|e| ioerr(&jl, e))?);
        s.push('\n');
    }
    std::fs::write(&jl, s).map_err(|e| ioerr(&jl, e))?;
    let pq = run.join("metrics.parquet");
    let mut df = DataFrame::new(rows.len(), columns).map_err(|e| ioerr(&pq, e))?;
    let tmp = pq.with_extension("parquet.tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| ioerr(&tmp, e))?;
    ParquetWriter::new(f)
        .finish(&mut df)
        .map_err(|e| ioerr(&pq, e))?;
    std::fs::rename(&tmp, &pq).map_err(|e| ioerr(&pq, e))
}

/// Rows of `run/metrics.jsonl` whose step is at most `upto` (for resume).
fn read_rows<T: DeserializeOwned>(run: &Path, upto: usize, step: impl Fn(&T) -> usize) -> Vec<T> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<T>(l).ok())
        .filter(|r| step(r) <= upto)
        .collect()
}

fn f64_column<T>(rows: &[T], name: &str, get: impl Fn(&T) -> Option<f64>) -> Column {
    Column::new(name.into(), rows.iter().map(get).collect::<Vec<_>>())
}

/// Write the SFT metrics.
pub fn write_metrics(run: &Path, rows: &[MetricRow]) -> Result<(), TrainError> {
    let f = |n: &str, g: fn(&MetricRow) -> Option<f64>| f64_column(rows, n, g);
    write_rows(
        run,
        rows,
        vec![
            Column::new(
                "step".into(),
                rows.iter().map(|r| r.step as u64).collect::<Vec<_>>(),
            ),
            f("loss", |r| r.loss),
            f("lr", |r| r.lr),
            f("grad_norm", |r| r.grad_norm),
            f("tokens_per_s", |r| r.tokens_per_s),
            Column::new(
                "tokens".into(),
                rows.iter().map(|r| r.tokens).collect::<Vec<_>>(),
            ),
            Column::new(
                "seconds".into(),
                rows.iter().map(|r| r.seconds).collect::<Vec<_>>(),
            ),
            f("val_vsr", |r| r.val_vsr),
            f("val_iou_unitcube", |r| r.val_iou_unitcube),
            f("val_iou_best", |r| r.val_iou_best),
            f("aux_loss", |r| r.aux_loss),
        ],
    )
}

/// SFT rows up to `upto` (for resume).
pub fn read_metrics(run: &Path, upto: usize) -> Vec<MetricRow> {
    read_rows(run, upto, |r: &MetricRow| r.step)
}

/// Write the DPO metrics (TRL's column names).
pub fn write_dpo_metrics(run: &Path, rows: &[DpoMetricRow]) -> Result<(), TrainError> {
    let f = |n: &str, g: fn(&DpoMetricRow) -> Option<f64>| f64_column(rows, n, g);
    write_rows(
        run,
        rows,
        vec![
            Column::new(
                "step".into(),
                rows.iter().map(|r| r.step as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "round".into(),
                rows.iter().map(|r| r.round as u64).collect::<Vec<_>>(),
            ),
            f("loss", |r| r.loss),
            f("rewards/chosen", |r| r.rewards_chosen),
            f("rewards/rejected", |r| r.rewards_rejected),
            f("rewards/margins", |r| r.rewards_margins),
            f("rewards/accuracies", |r| r.rewards_accuracies),
            f("logps/chosen", |r| r.logps_chosen),
            f("logps/rejected", |r| r.logps_rejected),
            f("lr", |r| r.lr),
            f("grad_norm", |r| r.grad_norm),
            Column::new(
                "seconds".into(),
                rows.iter().map(|r| r.seconds).collect::<Vec<_>>(),
            ),
            f("rollout/reward_mean", |r| r.rollout_reward_mean),
            f("rollout/vsr", |r| r.rollout_vsr),
            f("rollout/iou_mean_all", |r| r.rollout_iou_mean_all),
            f("rollout/pairs", |r| r.rollout_pairs),
        ],
    )
}

/// DPO rows up to `upto` (for resume).
pub fn read_dpo_metrics(run: &Path, upto: usize) -> Vec<DpoMetricRow> {
    read_rows(run, upto, |r: &DpoMetricRow| r.step)
}

/// Write the GRPO metrics (TRL's column names).
pub fn write_grpo_metrics(run: &Path, rows: &[GrpoMetricRow]) -> Result<(), TrainError> {
    let f = |n: &str, g: fn(&GrpoMetricRow) -> Option<f64>| f64_column(rows, n, g);
    write_rows(
        run,
        rows,
        vec![
            Column::new(
                "step".into(),
                rows.iter().map(|r| r.step as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "round".into(),
                rows.iter().map(|r| r.round as u64).collect::<Vec<_>>(),
            ),
            f("loss", |r| r.loss),
            f("kl", |r| r.kl),
            f("clip_ratio/region_mean", |r| r.clip_ratio),
            f("entropy", |r| r.entropy),
            f("completions/mean_length", |r| r.mean_length),
            f("lr", |r| r.lr),
            f("grad_norm", |r| r.grad_norm),
            Column::new(
                "seconds".into(),
                rows.iter().map(|r| r.seconds).collect::<Vec<_>>(),
            ),
            f("reward", |r| r.reward),
            f("reward_std", |r| r.reward_std),
            f("frac_reward_zero_std", |r| r.frac_reward_zero_std),
            f("rollout/vsr", |r| r.rollout_vsr),
            f("rollout/iou_mean_all", |r| r.rollout_iou_mean_all),
            f("rollout/groups", |r| r.rollout_groups),
            f("rollout/completions", |r| r.rollout_completions),
        ],
    )
}

/// GRPO rows up to `upto` (for resume).
pub fn read_grpo_metrics(run: &Path, upto: usize) -> Vec<GrpoMetricRow> {
    read_rows(run, upto, |r: &GrpoMetricRow| r.step)
}

/// Seconds of CPU (user + system) this process has used so far, from `/proc/self/stat` (Linux).
pub fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based)
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i)?.parse::<f64>().ok();
    // USER_HZ is 100 on every Linux ABI
    Some((ticks(11)? + ticks(12)?) / 100.0)
}
