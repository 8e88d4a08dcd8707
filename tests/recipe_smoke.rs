//! `recipes/smoke.toml` end to end (synth data, tokenizer, SFT, eval), then again: every stage is reused.

#![cfg(feature = "model")]

use std::path::Path;

use cadvlm::pipeline::{Recipe, run};

#[test]
fn smoke_recipe_runs_and_reuses_finished_stages() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke.toml");
    let r = Recipe::load(&file, &[]).unwrap();
    let runs = std::env::temp_dir().join(format!("cadvlm-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runs);
    let rep = run(&r, &runs, false).unwrap();
    let dir = runs.join("smoke");
    for f in [
        "recipe.resolved.toml",
        "tokenizer.json",
        "model.safetensors",
        "config.json",
        "metrics.parquet",
        "eval.json",
        "eval/synth-test/samples.parquet",
    ] {
        assert!(dir.join(f).exists(), "missing {f}");
    }
    assert!(rep.stages.iter().all(|s| s.1 == "done"), "{:?}", rep.stages);
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    let s = &ev["synth-test"];
    assert_eq!(s["n"], 8);
    for k in [
        "vsr",
        "iou_unitcube_mean_valid",
        "iou_unitcube_mean_all",
        "iou_best_mean_valid",
        "iou_best_mean_all",
    ] {
        assert!(s[k].is_number(), "{k} missing in eval.json");
    }
    // the search: greedy and searched side by side, the IoU-vs-renders curve, the per-image log
    let x = &s["search"];
    assert!(
        x["greedy_iou_best_mean_all"].is_number() && x["curve"].as_array().unwrap().len() >= 3,
        "{x}"
    );
    assert_eq!(x["curve"].as_array().unwrap().last().unwrap()[0], 12);
    let lines = std::fs::read_to_string(dir.join("eval/synth-test/search.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 8);
    for l in lines.lines() {
        let l: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(l["renders"].as_u64().unwrap() <= 12);
        assert_eq!(l["proposal_programs"].as_array().unwrap().len(), 3);
        if let (Some(g), Some(s)) = (l["greedy_image_score"].as_f64(), l["image_score"].as_f64()) {
            assert!(
                s >= g,
                "the search returned a program scoring below the greedy one: {l}"
            );
        }
    }
    let rep_out = cadvlm::report::run::write_report(&dir).unwrap();
    assert!(
        rep_out
            .figures
            .iter()
            .any(|f| f.ends_with("search_curve.png")),
        "{:?}",
        rep_out.figures
    );
    assert!(
        rep_out
            .figures
            .iter()
            .any(|f| f.ends_with("search_gallery.png")),
        "{:?} {:?}",
        rep_out.figures,
        rep_out.notes
    );
    // the resolved recipe parses back to the same recipe
    let back = Recipe::load(&dir.join("recipe.resolved.toml"), &[]).unwrap();
    assert_eq!(back, r);
    // a second run reuses everything
    let rep2 = run(&r, &runs, false).unwrap();
    assert!(
        rep2.stages.iter().all(|s| s.1 == "reused"),
        "{:?}",
        rep2.stages
    );
    let _ = std::fs::remove_dir_all(&runs);
}
