//! `report::run::write_report` on a hand-made run folder: every figure is written as a PNG of the
//! expected size with more than a blank page on it, and README.md holds the metrics table with the
//! DPO−SFT deltas computed from the two evaluations.

#![cfg(all(feature = "report", feature = "model", feature = "sandbox"))]

use std::path::Path;

use cadvlm::eval::{SampleResult, summarize, write_results_parquet};
use cadvlm::exec::{Backend, SandboxConfig, Scored, executor, score_program};
use cadvlm::geom::render::{RenderOptions, render};
use cadvlm::train::metrics::{DpoMetricRow, MetricRow, write_dpo_metrics, write_metrics};
use cadvlm::train::rollout::{Rollout, write_rollouts};

fn program(w: f64, h: f64, d: f64) -> String {
    format!(
        "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.25, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({w}, 0.0).lineTo({w}, {h}).lineTo(0.0, {h}).lineTo(0.0, 0.0).close()\nloop1=wp_sketch0.moveTo({}, {}).circle(0.05)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude({d})\nsolid=solid0\n",
        w / 2.0,
        h / 2.0
    )
}

fn png_size(path: &Path) -> (u32, u32, usize) {
    let img = image::open(path).unwrap().to_rgb8();
    let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    (img.width(), img.height(), distinct.len())
}

#[test]
fn report_of_a_run_folder() {
    let root = std::env::temp_dir().join(format!("cadvlm-report-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let run = root.join("run");
    let data = root.join("set");
    std::fs::create_dir_all(&data).unwrap();
    // an evaluation set: 6 targets rendered by our renderer
    let targets: Vec<String> = (0..6)
        .map(|i| program(0.5 + 0.1 * i as f64, 0.3, 0.1 + 0.05 * i as f64))
        .collect();
    let mut index = String::new();
    for (i, t) in targets.iter().enumerate() {
        let solid = cadvlm::cad::execute(t, &cadvlm::cad::Limits::default()).unwrap();
        let img = render(
            &solid,
            &RenderOptions {
                size: 128,
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::write(
            data.join(format!("t{i}.png")),
            cadvlm::data::images::encode_png(&img).unwrap(),
        )
        .unwrap();
        std::fs::write(data.join(format!("t{i}.py")), t).unwrap();
        index.push_str(&format!(
            "{{\"deepcad_id\": \"t{i}\", \"image\": \"t{i}.png\", \"cadquery\": \"t{i}.py\"}}\n"
        ));
    }
    std::fs::write(data.join("index.jsonl"), index).unwrap();
    // SFT: 2 of 6 fail, the rest are a bit off; DPO: 1 fails, the rest closer
    let ex = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
    let results = |fails: usize, off: f64| -> Vec<SampleResult> {
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = if i < fails {
                    "wp = cq.Workplane(".to_string()
                } else {
                    program(0.5 + 0.1 * i as f64 + off, 0.3, 0.1 + 0.05 * i as f64)
                };
                let score: Scored = score_program(ex.as_ref(), &p, t);
                SampleResult {
                    id: format!("t{i}"),
                    sample: 0,
                    program: p,
                    finished: true,
                    n_tokens: 10,
                    score,
                }
            })
            .collect()
    };
    let (sft, dpo) = (results(2, 0.2), results(1, 0.05));
    let (s_sft, s_dpo) = (summarize(&sft, 1, 1.0), summarize(&dpo, 1, 1.0));
    assert!(s_dpo.iou_unitcube_mean_all > s_sft.iou_unitcube_mean_all);
    for (dir, res, s) in [
        (run.join("eval/set"), &sft, &s_sft),
        (run.join("dpo/eval/set"), &dpo, &s_dpo),
    ] {
        std::fs::create_dir_all(&dir).unwrap();
        write_results_parquet(&dir.join("samples.parquet"), res).unwrap();
        std::fs::write(dir.join("eval.json"), serde_json::to_string(s).unwrap()).unwrap();
    }
    std::fs::write(
        run.join("dpo/eval/sets.json"),
        format!("{{\"set\": {:?}}}", data.display().to_string()),
    )
    .unwrap();
    // SFT and DPO metrics, rollouts of two rounds
    let sft_rows: Vec<MetricRow> = (1..=20)
        .map(|s| MetricRow {
            step: s * 10,
            loss: Some(3.0 / s as f64),
            lr: Some(1e-3),
            grad_norm: Some(1.0),
            tokens_per_s: Some(100.0),
            tokens: 0,
            seconds: s as f64,
            val_vsr: (s % 5 == 0).then_some(0.5 + 0.02 * s as f64),
            val_iou_unitcube: (s % 5 == 0).then_some(0.2 + 0.02 * s as f64),
            val_iou_best: None,
            aux_loss: Some(0.1 / s as f64),
        })
        .collect();
    write_metrics(&run, &sft_rows).unwrap();
    let mut dpo_rows = Vec::new();
    for round in 0..2 {
        dpo_rows.push(DpoMetricRow {
            step: round * 10,
            round,
            rollout_reward_mean: Some(0.3 + 0.1 * round as f64),
            rollout_vsr: Some(0.7),
            rollout_iou_mean_all: Some(0.4),
            rollout_pairs: Some(20.0),
            ..Default::default()
        });
        for s in 1..=10 {
            let step = round * 10 + s;
            let m = 0.05 * step as f64;
            dpo_rows.push(DpoMetricRow {
                step,
                round,
                loss: Some((1.0 + (-m).exp()).ln()),
                rewards_chosen: Some(m / 2.0),
                rewards_rejected: Some(-m / 2.0),
                rewards_margins: Some(m),
                rewards_accuracies: Some((0.5 + 0.03 * step as f64).min(1.0)),
                logps_chosen: Some(-100.0),
                logps_rejected: Some(-120.0),
                ..Default::default()
            });
        }
        let rs: Vec<Rollout> = (0..40)
            .map(|k| {
                let r = if k % 5 == 0 {
                    -0.5
                } else {
                    (k as f64 / 40.0 + 0.1 * round as f64).min(1.0)
                };
                Rollout {
                    id: format!("img{}", k / 8),
                    image: k / 8,
                    program: format!("p{k}"),
                    finished: true,
                    reward: r,
                    iou: (r >= 0.0).then_some(r),
                    failure: (r < 0.0).then(|| "syntax".into()),
                    round,
                    policy_step: round * 10,
                }
            })
            .collect();
        write_rollouts(
            &run.join(format!("dpo/rollouts/round-{round:02}.parquet")),
            &rs,
        )
        .unwrap();
    }
    write_dpo_metrics(&run.join("dpo"), &dpo_rows).unwrap();

    let out = cadvlm::report::run::write_report(&run).unwrap();
    assert!(out.notes.is_empty(), "{:?}", out.notes);
    let names: Vec<String> = out
        .figures
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    for f in [
        "vsr_iou.png",
        "iou_hist_set.png",
        "sft_loss.png",
        "dpo_training.png",
        "rollout_rewards.png",
        "gallery.png",
    ] {
        assert!(names.contains(&f.to_string()), "{f} missing from {names:?}");
        let (w, h, colours) = png_size(&out.dir.join(f));
        assert!(w >= 400 && h >= 300, "{f}: {w}×{h}");
        assert!(colours > 8, "{f}: only {colours} colours: blank?");
    }
    let md = std::fs::read_to_string(out.dir.join("README.md")).unwrap();
    let delta = s_dpo.iou_unitcube_mean_all - s_sft.iou_unitcube_mean_all;
    assert!(
        delta > 5e-4 && md.contains(&format!("{delta:+.3}")),
        "README lacks the IoU delta {delta:+.3}:\n{md}"
    );
    assert!(
        md.contains("![gallery](gallery.png)") && md.contains("| set | model |"),
        "{md}"
    );
    // the same two models side by side (cadvlm report --compare SFT=run DPO=run/dpo --out ...)
    let cmp = cadvlm::report::run::write_comparison(
        &[
            ("SFT".to_string(), run.clone()),
            ("DPO".to_string(), run.join("dpo")),
        ],
        &root.join("compare"),
    )
    .unwrap();
    let names: Vec<String> = cmp
        .figures
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["compare_iou.png", "compare_rewards.png"]);
    for f in &cmp.figures {
        let (w, h, colours) = png_size(f);
        assert!(
            w >= 400 && h >= 300 && colours > 8,
            "{}: {w}×{h}, {colours} colours",
            f.display()
        );
    }
    let md = std::fs::read_to_string(cmp.dir.join("README.md")).unwrap();
    let d_best = s_dpo.iou_best_mean_all - s_sft.iou_best_mean_all;
    assert!(
        md.contains("| set | DPO | 6 |") && md.contains(&format!("{d_best:+.3} ± ")),
        "comparison lacks DPO's row or its paired IoU_best difference {d_best:+.3}:\n{md}"
    );
    println!("report written to {}", out.dir.display());
    if std::env::var_os("CADVLM_KEEP_REPORT").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}
