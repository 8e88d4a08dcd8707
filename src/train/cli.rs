//! The `recipe`, `eval` and `bench-train` subcommands (argument parsing and printing only).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;

use crate::eval::{evaluate_samples, load_run, load_samples, summarize, write_results_parquet};
use crate::model::generate::GenerateConfig;
use crate::recipe::{BackendKind, Recipe};

#[derive(Args)]
pub struct RecipeArgs {
    /// Recipe file (TOML), e.g. recipes/smoke.toml.
    pub file: PathBuf,
    /// Override a value: --set sft.steps=200 (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Folder that holds run folders.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

pub fn recipe(a: RecipeArgs) -> Result<()> {
    // a Hugging Face Qwen2-VL / Qwen2.5-VL recipe (its [model] names a local checkpoint `path`) runs
    // through the Qwen stages; everything else is one of our own recipes
    if is_qwen_recipe(&a.file) {
        if !a.sets.is_empty() {
            bail!("{}: --set is not supported for Qwen recipes; edit the file instead", a.file.display());
        }
        return crate::model::qwen2vl::recipe::run(&a.file).map_err(anyhow::Error::from);
    }
    let r = Recipe::load(&a.file, &a.sets)?;
    let rep = crate::recipe::run(&r, &a.runs, !a.quiet)?;
    for (stage, what, detail) in &rep.stages {
        println!("{stage:<24} {what:<7} {detail}");
    }
    println!("run: {}", rep.run.display());
    Ok(())
}

/// Whether the recipe file's `[model]` table has a `path` (a local Hugging Face checkpoint): the Qwen
/// recipe schema. Unreadable or invalid files are left to [`Recipe::load`] to report.
fn is_qwen_recipe(file: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else { return false };
    let Ok(doc) = text.parse::<toml::Table>() else { return false };
    doc.get("model").and_then(|m| m.as_table()).is_some_and(|m| m.contains_key("path"))
}

#[derive(Args)]
pub struct EvalArgs {
    /// Trained run folder (config.json, tokenizer.json, model.safetensors), e.g. models/sft-cpu.
    #[arg(long)]
    pub run: PathBuf,
    /// Data folder: index.jsonl + ID.png + ID.py, or GenCAD-Code parquet shards.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub limit: Option<usize>,
    /// Programs per image (sampled when > 1; set --temperature).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 448)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// ndarray | flex | cuda
    #[arg(long, default_value = "ndarray")]
    pub backend: String,
    /// Output folder for eval.json and samples.parquet (default RUN/eval/<data folder name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print eval.json on stdout.
    #[arg(long)]
    pub json: bool,
}

fn backend_kind(s: &str) -> Result<BackendKind> {
    Ok(match s {
        "ndarray" => BackendKind::Ndarray,
        "flex" => BackendKind::Flex,
        "cuda" => BackendKind::Cuda,
        _ => bail!("--backend {s:?}: use ndarray, flex or cuda"),
    })
}

pub fn eval(a: EvalArgs) -> Result<()> {
    if a.samples > 1 && a.temperature <= 0.0 {
        bail!("--samples {} with --temperature 0 gives identical programs; add --temperature 0.8", a.samples);
    }
    match backend_kind(&a.backend)? {
        BackendKind::Ndarray => eval_on::<burn::backend::NdArray<f32>>(&a, &Default::default()),
        BackendKind::Flex => eval_on::<burn::backend::Flex>(&a, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => eval_on::<burn::backend::Cuda>(&a, &Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => bail!("--backend cuda needs a build with --features cuda"),
    }
}

fn eval_on<B: Backend>(a: &EvalArgs, device: &B::Device) -> Result<()> {
    let (model, c, tok) = load_run::<B>(&a.run, device)?;
    let samples = load_samples(&a.data, a.limit)?;
    if samples.is_empty() {
        bail!("{}: no samples", a.data.display());
    }
    let gen_cfg = GenerateConfig { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_p: a.top_p, seed: a.seed };
    let pb = if a.json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(samples.len() as u64) };
    let t = Instant::now();
    let res = evaluate_samples(&model, &c, &tok, &samples, &gen_cfg, a.samples, a.batch, device, |d| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    let s = summarize(&res, a.samples, t.elapsed().as_secs_f64());
    let name = a.data.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "data".into());
    let out = a.out.clone().unwrap_or_else(|| a.run.join("eval").join(name));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_results_parquet(&out.join("samples.parquet"), &res)?;
    let j = serde_json::to_string_pretty(&s)?;
    std::fs::write(out.join("eval.json"), &j).with_context(|| format!("writing {}", out.join("eval.json").display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "n {}  VSR {:.3}  IoU_unitcube valid {:.3} all {:.3}  IoU_best valid {:.3} all {:.3}  ({:.1} s) -> {}",
            s.n, s.vsr, s.iou_unitcube_mean_valid, s.iou_unitcube_mean_all, s.iou_best_mean_valid, s.iou_best_mean_all, s.seconds,
            out.display()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Model size (tiny, mini, small, medium, base).
    #[arg(long, default_value = "small")]
    pub size: String,
    /// ndarray | flex | cuda
    #[arg(long, default_value = "ndarray")]
    pub backend: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Text tokens per row (all counted as targets).
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 1024)]
    pub vocab: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
}

pub fn bench_train(a: BenchTrainArgs) -> Result<()> {
    match backend_kind(&a.backend)? {
        BackendKind::Ndarray => bench_on::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(&a, &Default::default()),
        BackendKind::Flex => bench_on::<burn::backend::Autodiff<burn::backend::Flex>>(&a, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => bench_on::<burn::backend::Autodiff<burn::backend::Cuda>>(&a, &Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => bail!("--backend cuda needs a build with --features cuda"),
    }
}

fn bench_on<AB: AutodiffBackend>(a: &BenchTrainArgs, device: &AB::Device) -> Result<()> {
    use crate::model::vlm::{TokenBatch, Vlm};
    use crate::train::optim::{AdamW, OptimConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::{Distribution, Tensor};
    let c = crate::model::VlmConfig::named(&a.size, a.vocab)?;
    AB::seed(device, 0);
    let mut model = Vlm::<AB>::new(&c, device);
    let mut opt = AdamW::<AB::InnerBackend>::new(OptimConfig::default());
    let rows: Vec<(Vec<u32>, Vec<u32>)> =
        (0..a.batch).map(|r| (vec![1, 2], (0..a.seq - 2).map(|i| ((i * 7 + r * 13) % (a.vocab - 4) + 4) as u32).collect())).collect();
    let batch = TokenBatch::from_rows(&rows, 0);
    let n_patch = c.grid() * c.grid();
    let mut timed = 0.0;
    for s in 0..=a.steps {
        let t = Instant::now();
        let patches = Tensor::<AB, 3>::random([a.batch, n_patch, c.patch_dim()], Distribution::Normal(0.0, 1.0), device);
        let loss = model.sft_loss(patches, &batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(model, grads, 1e-4).0;
        let dt = t.elapsed().as_secs_f64();
        if s > 0 {
            timed += dt;
        }
    }
    let toks = (a.steps * batch.n_target_tokens()) as f64;
    let params: usize = crate::model::weights::named_params(&model.valid()).values().map(|(s, _)| s.iter().product::<usize>()).sum();
    println!(
        "bench-train size {} ({:.2} M params) backend {} batch {} seq {}: {:.0} target tokens/s ({:.3} s/step)",
        a.size, params as f64 / 1e6, a.backend, a.batch, a.seq, toks / timed, timed / a.steps as f64
    );
    Ok(())
}
