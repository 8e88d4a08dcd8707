//! The Qwen recipe end to end on the tiny random Qwen2.5-VL of `fixtures/qwen` and a 3-sample GenCAD-style
//! folder (`index.jsonl` + `ID.png` + `ID.py`) written into a temp dir: QLoRA SFT → eval (generate,
//! execute, VSR / IoU) → one DPO round, with the report and the adapters written. A random tiny model
//! writes no valid program (VSR 0): the test is about the wiring.
#![cfg(all(feature = "model", feature = "sandbox"))]

use std::path::{Path, PathBuf};

use cadvlm::model::qwen2vl::recipe::{QwenRecipe, data_splits, run_stages};

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
        if inside { image::Rgb([200, 60 + 50 * k as u8, 40]) } else { image::Rgb([128, 128, 128]) }
    })
}

/// `dir/index.jsonl` with 56×56 images and programs.
fn write_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut index = String::new();
    for (k, (x, y, z)) in SIZES.into_iter().enumerate() {
        let id = format!("0000{k}");
        picture(k, x, y).save(dir.join(format!("{id}.png"))).unwrap();
        std::fs::write(dir.join(format!("{id}.py")), cube(x, y, z)).unwrap();
        index.push_str(&format!("{{\"deepcad_id\": \"{id}\", \"image\": \"{id}.png\", \"cadquery\": \"{id}.py\"}}\n"));
    }
    std::fs::write(dir.join("index.jsonl"), index).unwrap();
}

fn recipe_toml(epochs: usize, dpo_rounds: usize) -> String {
    format!(
        r#"name = "tiny"
backend = "ndarray"
[model]
path = {model:?}
hub_id = "tiny/qwen2_5_vl"
quant = "nf4"
lora_rank = 8
lora_alpha = 16.0
lora_targets = ["all-linear"]
lora_dropout = 0.0
gpu_gib = 1.0
[data]
dir = "data"
hub_id = "local"
train_samples = 0
seed = 1
[sft]
epochs = {epochs}
batch_size = 1
grad_accum = 3
lr = 1e-2
max_seq_len = 1024
gradient_checkpointing = false
[eval]
samples = 2
max_new_tokens = 12
best_of = 2
[dpo]
rounds = {dpo_rounds}
images_per_round = 2
samples_per_image = 2
beta = 0.1
lr = 1e-3
anchor_with_target = true
"#,
        model = fx().join("qwen2_5_vl").display().to_string()
    )
}

#[test]
fn sft_eval_dpo_end_to_end_on_the_tiny_checkpoint() {
    let base = std::env::temp_dir().join(format!("cadvlm-qwen-recipe-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    write_data(&base.join("data"));
    assert_eq!(data_splits(&base.join("data")), Some((base.join("data"), base.join("data"))));
    let toml = recipe_toml(8, 1);
    std::fs::write(base.join("tiny.toml"), toml).unwrap();
    let r = QwenRecipe::load(&base.join("tiny.toml")).unwrap();
    cadvlm::model::qwen2vl::recipe::check(&r, &base).unwrap();

    let t = std::time::Instant::now();
    let rep = run_stages(&r, &base).unwrap();
    eprintln!("{} ({:.1} s)", rep.summary(), t.elapsed().as_secs_f64());

    // SFT: 8 epochs × 1 step of 3 examples, the loss falls
    assert_eq!((rep.train_examples, rep.sft_skipped, rep.sft_losses.len()), (3, 0, 8));
    let (first, last) = (rep.sft_losses[0], rep.sft_losses[7]);
    assert!(last < 0.8 * first, "SFT loss {first} → {last}");
    // eval: 2 images × best_of 2, every program executed and scored
    assert_eq!((rep.eval.n, rep.eval.samples_per_image, rep.eval_results.len()), (4, 2, 4));
    assert!((0.0..=1.0).contains(&rep.eval.vsr));
    for res in &rep.eval_results {
        assert!(res.n_tokens >= 1 && res.n_tokens <= 12);
        assert!(res.score.ok || res.score.error.is_some(), "{res:?}");
    }
    // DPO: one round; with the target as an anchor every image gives a pair; one step per pair
    assert_eq!(rep.dpo.len(), 1);
    let d = &rep.dpo[0];
    assert_eq!((d.images, d.rollouts), (2, 4));
    assert!(d.pairs >= 1 && d.steps.len() == d.pairs, "{d:?}");
    assert!(d.steps.iter().all(|s| s.loss.is_finite()));
    // reference = the SFT model (adapters folded in, fresh DPO adapters): the first step starts at log 2
    assert!((d.steps[0].loss - std::f64::consts::LN_2).abs() < 1e-6, "first DPO loss {}", d.steps[0].loss);
    // outputs
    assert!(base.join("runs/tiny/report.json").is_file() && rep.adapters.is_file() && rep.sft_adapters.is_file());
    let mut fresh = cadvlm::model::qwen2vl::train::prepare_qlora(
        cadvlm::model::qwen2vl::load_dir::<burn::backend::NdArray<f32>>(&fx().join("qwen2_5_vl"), &Default::default()).unwrap().model,
        cadvlm::model::quant::Quantize::Nf4,
        &cadvlm::model::lora::LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, targets: vec!["all-linear".into()] },
        &Default::default(),
    )
    .unwrap();
    let cfg = cadvlm::model::lora::load_adapters(&mut fresh, &rep.adapters, &Default::default()).unwrap();
    assert_eq!(cfg.rank, 8);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn gencad_parquet_splits_feed_the_recipe() {
    // the real GenCAD-Code layout: train/ and test/ parquet shards (deepcad_id, cadquery, image.bytes, …)
    use cadvlm::data::shards::{Row, write_shard};
    let base = std::env::temp_dir().join(format!("cadvlm-qwen-recipe-parquet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let rows: Vec<Row> = SIZES
        .into_iter()
        .enumerate()
        .map(|(k, (x, y, z))| {
            let mut png = Vec::new();
            picture(k, x, y).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
            Row::new(&format!("0000{k}"), &cube(x, y, z), png)
        })
        .collect();
    for (split, rs) in [("train", &rows[..2]), ("test", &rows[2..])] {
        std::fs::create_dir_all(base.join("data").join(split)).unwrap();
        write_shard(&base.join("data").join(split).join("part-0.parquet"), rs).unwrap();
    }
    let d = base.join("data");
    assert_eq!(data_splits(&d), Some((d.join("train"), d.join("test"))));
    std::fs::write(base.join("tiny.toml"), recipe_toml(2, 0)).unwrap();
    let r = QwenRecipe::load(&base.join("tiny.toml")).unwrap();
    cadvlm::model::qwen2vl::recipe::check(&r, &base).unwrap();
    let rep = run_stages(&r, &base).unwrap();
    assert_eq!((rep.train_examples, rep.sft_losses.len(), rep.dpo.len()), (2, 2, 0));
    // eval reads the test split: one image, best_of 2
    assert_eq!(rep.eval_results.len(), 2);
    assert!(rep.eval_results.iter().all(|e| e.id == "00002"));
    let _ = std::fs::remove_dir_all(&base);
}

/// `cadvlm recipe` routes the seed recipe to the Qwen stages; without the 3B checkpoint on disk it stops
/// at once, naming the missing path and how to get it.
#[cfg(feature = "cli")]
#[test]
fn seed_recipe_without_weights_stops_naming_the_missing_path() {
    let dir = std::env::temp_dir().join(format!("cadvlm-qwen-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/qwen2_5_vl_3b_qlora.toml");
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cadvlm")).current_dir(&dir).arg("recipe").arg(&recipe).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("models/Qwen2.5-VL-3B-Instruct") && err.contains("huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct"), "{err}");
    assert!(t0.elapsed().as_secs() < 20, "it must stop at once");
    let _ = std::fs::remove_dir_all(&dir);
}
