//! `recipes/smoke.toml` end to end (synth data, tokenizer, SFT, eval), then again: every stage is reused;
//! then a GRPO stage from the finished run (`grpo.sft_run`), its evaluation and report.

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
    // GRPO from a finished SFT run (grpo.sft_run): the committed small model (the tiny smoke model
    // writes no valid program yet, so all its groups would be equal), one round of 3 images × 3
    // programs, 2 steps; the GRPO model is evaluated on the same set and drawn in the report
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text[..text.find("[eval.search]").unwrap()]
        .replace("name = \"smoke\"", "name = \"smoke-grpo\"")
        .replace("size = \"tiny\"", "size = \"small\"");
    let text = format!(
        "{text}\n[grpo]\nsft_run = {:?}\nrounds = 1\nimages_per_round = 3\nsteps_per_round = 2\nbatch_completions = 4\nbeta = 0.04\n\n[grpo.rollout]\nk = 3\nmax_new_tokens = 480\nbatch = 9\n",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/sft-cpu-small")
            .display()
            .to_string()
    );
    let g = Recipe::parse(&text, &file, &[]).unwrap();
    let rep3 = run(&g, &runs, false).unwrap();
    let gdir = runs.join("smoke-grpo");
    for f in [
        "grpo/model.safetensors",
        "grpo/metrics.parquet",
        "grpo/rollouts/round-00.parquet",
        "grpo/eval/synth-test/eval.json",
    ] {
        assert!(gdir.join(f).exists(), "missing {f}: {:?}", rep3.stages);
    }
    assert!(
        rep3.stages.iter().any(|s| s.0 == "grpo" && s.1 == "done"),
        "{:?}",
        rep3.stages
    );
    let rep_g = cadvlm::report::run::write_report(&gdir).unwrap();
    assert!(
        rep_g
            .figures
            .iter()
            .any(|f| f.ends_with("grpo_training.png")),
        "{:?} {:?}",
        rep_g.figures,
        rep_g.notes
    );
    let md = std::fs::read_to_string(gdir.join("report/README.md")).unwrap();
    assert!(md.contains("SFT vs GRPO"), "{md}");
    // a recipe with both [dpo] and [grpo] is refused before any work
    let both = format!("{text}\n[dpo]\nrounds = 1\n");
    let e = Recipe::parse(&both, &file, &[]).unwrap_err().to_string();
    assert!(e.contains("not both"), "{e}");
    let _ = std::fs::remove_dir_all(&runs);
}

#[test]
fn committed_cpu_recipes_validate() {
    // the CPU recipes the README names load and pass validation (their sft_run models are committed;
    // the evaluation folder ../shared/data sits beside the checkout; cargo runs tests in the package
    // root, where the recipes' relative paths start)
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["smoke", "sft", "dpo", "grpo", "qlora-smoke"] {
        let r = Recipe::load(&root.join(format!("recipes/{f}.toml")), &[])
            .unwrap_or_else(|e| panic!("recipes/{f}.toml: {e}"));
        assert_eq!(r.grpo.is_some(), f == "grpo", "{f}");
    }
}
