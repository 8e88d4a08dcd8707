//! The Qwen family through the one pipeline, end to end on the tiny random Qwen2.5-VL of `fixtures/qwen`
//! and a 3-sample GenCAD-style folder (`index.jsonl` + `ID.png` + `ID.py`) written into a temp dir: QLoRA
//! SFT → eval (the one eval runner: generate, execute in the sandbox, VSR / IoU) → one DPO round (the
//! one DPO loop) → eval, with metrics and adapters written. A random tiny model writes no valid
//! program (VSR 0): the test is about the wiring. Also the seed recipe's checks of missing inputs.
#![cfg(all(feature = "model", feature = "report"))]

use std::path::{Path, PathBuf};

use cadvlm::pipeline::recipe::data_splits;
use cadvlm::pipeline::{Recipe, run};
use cadvlm::train::metrics::{DpoMetricRow, MetricRow};

fn fx() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen")
}

fn cube(x: f64, y: f64, z: f64) -> String {
    format!(
        "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({x}, 0.0).lineTo({x}, {y}).lineTo(0.0, {y}).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude({z})\nsolid=solid0\n"
    )
}

const SIZES: [(f64, f64, f64); 3] = [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (1.0, 3.0, 2.0)];

/// A 56×56 picture of sample `k` (the smallest Qwen grid: 4 image tokens).
fn picture(k: usize, x: f64, y: f64) -> image::RgbImage {
    image::RgbImage::from_fn(56, 56, |px, py| {
        let inside = (px as f64) < 10.0 + 12.0 * x && (py as f64) < 10.0 + 12.0 * y;
        if inside {
            image::Rgb([200, 60 + 50 * k as u8, 40])
        } else {
            image::Rgb([128, 128, 128])
        }
    })
}

/// `dir/index.jsonl` with 56×56 images and programs.
fn write_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut index = String::new();
    for (k, (x, y, z)) in SIZES.into_iter().enumerate() {
        let id = format!("0000{k}");
        picture(k, x, y)
            .save(dir.join(format!("{id}.png")))
            .unwrap();
        std::fs::write(dir.join(format!("{id}.py")), cube(x, y, z)).unwrap();
        index.push_str(&format!(
            "{{\"deepcad_id\": \"{id}\", \"image\": \"{id}.png\", \"cadquery\": \"{id}.py\"}}\n"
        ));
    }
    std::fs::write(dir.join("index.jsonl"), index).unwrap();
}

fn recipe_toml(data: &Path, steps: usize, dpo: bool) -> String {
    let dpo = if dpo {
        "[dpo]\nrounds = 1\nimages_per_round = 2\nsteps_per_round = 2\nbatch_pairs = 1\nbeta = 0.1\nnll_weight = 0.0\ncheckpoint_every = 1\n\
         [dpo.optim]\nlr = 1e-3\nwarmup_steps = 0\nweight_decay = 0.0\n\
         [dpo.rollout]\nk = 2\ntemperature = 1.0\nmax_new_tokens = 12\nbatch = 2\ninclude_target = true\n"
    } else {
        ""
    };
    format!(
        r#"name = "tiny"
backend = "ndarray"
[model]
path = {model:?}
quantize = "nf4"
[lora]
rank = 8
alpha = 16.0
dropout = 0.0
targets = ["all-linear"]
[data]
source = "dir"
dir = {data:?}
seed = 1
[sft]
steps = {steps}
batch_size = 1
grad_accum = 3
max_code_tokens = 512
[sft.optim]
lr = 1e-2
warmup_steps = 0
weight_decay = 0.0
[eval]
synth_test = true
limit = 2
samples = 2
temperature = 1.0
max_new_tokens = 12
{dpo}"#,
        model = fx().join("qwen2_5_vl").display().to_string(),
        data = data.display().to_string(),
    )
}

fn jsonl<T: serde::de::DeserializeOwned>(p: &Path) -> Vec<T> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sft_eval_dpo_end_to_end_on_the_tiny_checkpoint() {
    let base = std::env::temp_dir().join(format!("cadvlm-qwen-recipe-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    write_data(&base.join("data"));
    assert_eq!(
        data_splits(&base.join("data")),
        Some((base.join("data"), base.join("data")))
    );
    let r = Recipe::parse(
        &recipe_toml(&base.join("data"), 8, true),
        Path::new("tiny.toml"),
        &[],
    )
    .unwrap();

    let t = std::time::Instant::now();
    let rep = run(&r, &base.join("runs"), false).unwrap();
    for (stage, what, detail) in &rep.stages {
        eprintln!("{stage:<24} {what:<7} {detail}");
    }
    eprintln!("({:.1} s)", t.elapsed().as_secs_f64());
    let run_dir = base.join("runs/tiny");

    // SFT: 8 steps of 3 examples, the loss falls
    let sft: Vec<MetricRow> = jsonl(&run_dir.join("metrics.jsonl"));
    assert_eq!(sft.len(), 8);
    let (first, last) = (sft[0].loss.unwrap(), sft[7].loss.unwrap());
    assert!(last < 0.8 * first, "SFT loss {first} → {last}");
    // eval: 2 images × 2 samples, every program executed and scored, for the SFT and the DPO model
    for dir in ["eval/synth-test", "dpo/eval/synth-test"] {
        let s = cadvlm::eval::read_summary(&run_dir.join(dir).join("eval.json")).unwrap();
        assert_eq!((s.n, s.samples_per_image), (4, 2), "{dir}");
        assert!((0.0..=1.0).contains(&s.vsr));
        assert!(run_dir.join(dir).join("samples.parquet").is_file());
    }
    // DPO: one round; with the target as a candidate every image gives a pair; two steps
    let dpo: Vec<DpoMetricRow> = jsonl(&run_dir.join("dpo/metrics.jsonl"));
    let rollout = dpo.iter().find(|m| m.rollout_pairs.is_some()).unwrap();
    assert!(rollout.rollout_pairs.unwrap() >= 1.0, "{rollout:?}");
    let steps: Vec<&DpoMetricRow> = dpo.iter().filter(|m| m.loss.is_some()).collect();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s.loss.unwrap().is_finite()));
    // reference = the SFT model (adapters folded in, fresh DPO adapters): the first step starts at log 2
    assert!(
        (steps[0].loss.unwrap() - std::f64::consts::LN_2).abs() < 1e-6,
        "first DPO loss {:?}",
        steps[0].loss
    );
    assert!(run_dir.join("dpo/rollouts/round-00.parquet").is_file());
    // outputs: the adapters of both stages load into a fresh QLoRA model
    for f in ["adapters.safetensors", "dpo/adapters.safetensors"] {
        let mut fresh = cadvlm::model::qwen2vl::answer::prepare_qlora(
            cadvlm::model::qwen2vl::load_dir::<burn::backend::NdArray<f32>>(
                &fx().join("qwen2_5_vl"),
                &Default::default(),
            )
            .unwrap()
            .model,
            cadvlm::model::quant::Quantize::Nf4,
            &cadvlm::model::lora::LoraConfig {
                rank: 8,
                alpha: 16.0,
                dropout: 0.0,
                targets: vec!["all-linear".into()],
            },
            &Default::default(),
        )
        .unwrap();
        let cfg =
            cadvlm::model::lora::load_adapters(&mut fresh, &run_dir.join(f), &Default::default())
                .unwrap();
        assert_eq!(cfg.rank, 8);
    }
    // `cadvlm infer`'s work with the Qwen family: the trained run (its DPO model) and the bare
    // checkpoint directory, each on two images with a tiny search budget
    let images: Vec<PathBuf> = (0..2)
        .map(|k| {
            let p = base.join(format!("img{k}.png"));
            picture(k, 0.3 + 0.2 * k as f64, 0.5).save(&p).unwrap();
            p
        })
        .collect();
    let ex = cadvlm::exec::executor(&cadvlm::exec::SandboxConfig::with_backend(
        cadvlm::exec::Backend::Native,
    ))
    .unwrap();
    let settings = cadvlm::search::infer::InferSettings {
        search: cadvlm::search::SearchConfig {
            samples: 1,
            budget: 6,
            templates: false,
            ..Default::default()
        },
        max_new_tokens: 48,
        batch: 2,
        threads: Some(1),
    };
    type AB = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
    for (k, model) in [run_dir.clone(), fx().join("qwen2_5_vl")]
        .into_iter()
        .enumerate()
    {
        let policy = cadvlm::pipeline::policy::load_any::<AB>(&model, &Default::default()).unwrap();
        let out = base.join(format!("infer{k}"));
        let s = cadvlm::search::infer::infer(
            policy.as_ref(),
            ex.as_ref(),
            &images,
            &settings,
            &out,
            &mut |_, _| {},
            &|| {},
        )
        .unwrap();
        assert_eq!(s.images, 2, "{}", model.display());
        let lines = std::fs::read_to_string(out.join("infer.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 2);
        // a tiny random model's programs rarely execute: each line has a program or says why not
        for l in lines.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["program"].is_string() || v["error"].is_string(), "{v}");
            assert_eq!(v["candidates"].as_array().unwrap().len(), 2);
        }
    }
    assert!(
        cadvlm::pipeline::policy::load_any::<AB>(&base, &Default::default())
            .err()
            .unwrap()
            .to_string()
            .contains("not a model folder")
    );
    // a second run reuses every stage
    let again = run(&r, &base.join("runs"), false).unwrap();
    assert!(
        again.stages.iter().all(|(_, what, _)| what == "reused"),
        "{:?}",
        again.stages
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn gencad_parquet_splits_feed_the_recipe() {
    // the real GenCAD-Code layout: train/ and test/ parquet shards (deepcad_id, cadquery, image.bytes, …)
    use cadvlm::data::shards::{Row, write_shard};
    let base =
        std::env::temp_dir().join(format!("cadvlm-qwen-recipe-parquet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let rows: Vec<Row> = SIZES
        .into_iter()
        .enumerate()
        .map(|(k, (x, y, z))| {
            let mut png = Vec::new();
            picture(k, x, y)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            Row::new(&format!("0000{k}"), &cube(x, y, z), png)
        })
        .collect();
    for (split, rs) in [("train", &rows[..2]), ("test", &rows[2..])] {
        std::fs::create_dir_all(base.join("data").join(split)).unwrap();
        write_shard(&base.join("data").join(split).join("part-0.parquet"), rs).unwrap();
    }
    let d = base.join("data");
    assert_eq!(data_splits(&d), Some((d.join("train"), d.join("test"))));
    let r = Recipe::parse(&recipe_toml(&d, 2, false), Path::new("tiny.toml"), &[]).unwrap();
    run(&r, &base.join("runs"), false).unwrap();
    let sft: Vec<MetricRow> = jsonl(&base.join("runs/tiny/metrics.jsonl"));
    assert_eq!(sft.len(), 2);
    // eval reads the test split: one image, 2 samples
    let s = cadvlm::eval::read_summary(&base.join("runs/tiny/eval/synth-test/eval.json")).unwrap();
    assert_eq!(s.n, 2);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn seed_recipe_names_missing_paths_and_how_to_get_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("recipes/qwen2_5_vl_3b_qlora.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let empty = std::env::temp_dir().join(format!("cadvlm-qwen-recipe-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let set = |k: &str, p: &Path| format!("{k}={:?}", p.display().to_string());
    let err = Recipe::parse(
        &text,
        &file,
        &[set(
            "model.path",
            &empty.join("models/Qwen2.5-VL-3B-Instruct"),
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("models/Qwen2.5-VL-3B-Instruct")
            && err.contains("huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct"),
        "{err}"
    );
    // with the tiny checkpoint as the model, the data folder is the next missing input
    let tiny = set("model.path", &fx().join("qwen2_5_vl"));
    let data = set("data.dir", &empty.join("data/GenCAD-Code"));
    let err = Recipe::parse(&text, &file, &[tiny.clone(), data.clone()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data/GenCAD-Code") && err.contains("--repo-type dataset"),
        "{err}"
    );
    std::fs::create_dir_all(empty.join("data/GenCAD-Code/train")).unwrap();
    let err = Recipe::parse(&text, &file, &[tiny.clone(), data.clone()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("train split"), "{err}");
    std::fs::write(empty.join("data/GenCAD-Code/train/part-0.parquet"), b"").unwrap();
    let r = Recipe::parse(&text, &file, &[tiny, data, "backend=\"ndarray\"".into()]).unwrap();
    assert_eq!(
        (
            r.model.quantize,
            r.lora.as_ref().map(|l| l.rank),
            r.data.n_train
        ),
        (cadvlm::model::quant::Quantize::Nf4, Some(16), 1000)
    );
    // Qwen recipes are validated like the others: a LoRA target the checkpoint lacks is named
    let err = Recipe::parse(
        &text,
        &file,
        &[
            set("model.path", &fx().join("qwen2_5_vl")),
            set("data.dir", &empty.join("data/GenCAD-Code")),
            "backend=\"ndarray\"".into(),
            "lora.targets=[\"q_prj\"]".into(),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("lora.targets") && err.contains("q_prj"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn seed_recipe_load_stops_at_once_without_the_weights() {
    // cargo runs tests in the package root, where the recipe's relative paths point
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if root.join("models/Qwen2.5-VL-3B-Instruct").exists() {
        return; // a real checkpoint is on disk: nothing to show here
    }
    let t = std::time::Instant::now();
    let err = Recipe::load(&root.join("recipes/qwen2_5_vl_3b_qlora.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Qwen2.5-VL-3B-Instruct")
            && err.contains("missing model directory")
            && err.contains("huggingface-cli download"),
        "{err}"
    );
    assert!(t.elapsed().as_secs_f64() < 1.0);
}

/// `cadvlm recipe` runs the seed recipe through the one pipeline; without the 3B checkpoint on disk it
/// stops at once, naming the missing path and how to get it.
#[cfg(feature = "cli")]
#[test]
fn seed_recipe_without_weights_stops_naming_the_missing_path() {
    let dir = std::env::temp_dir().join(format!("cadvlm-qwen-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/qwen2_5_vl_3b_qlora.toml");
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cadvlm"))
        .current_dir(&dir)
        .arg("recipe")
        .arg(&recipe)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("models/Qwen2.5-VL-3B-Instruct")
            && err.contains("missing model directory")
            && err.contains("huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct"),
        "{err}"
    );
    assert!(t0.elapsed().as_secs() < 20, "it must stop at once");
    let _ = std::fs::remove_dir_all(&dir);
}
