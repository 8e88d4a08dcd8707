//! `cadvlm eval --run RUN --data DIR`: a trained model (small-VLM folder, Qwen run or Qwen checkpoint)
//! on a data folder through the one eval runner (programs executed in the sandbox); `eval.json` +
//! `samples.parquet` (+ `search.jsonl` with `--search`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;

use crate::data::load_samples;
use crate::eval::{EvalSettings, run_set};
use crate::model::generate::GenerateConfig;
use crate::pipeline::BackendKind;

#[derive(Args)]
pub struct EvalArgs {
    /// The model: a small-VLM folder (config.json, tokenizer.json, model.safetensors), e.g.
    /// models/sft-cpu-small, a Qwen run folder, or a Qwen2-VL / Qwen2.5-VL checkpoint directory.
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
    pub backend: BackendKind,
    /// Output folder for eval.json and samples.parquet (default RUN/eval/<data folder name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Render-and-compare search (greedy + sampled proposals refined against the image; the
    /// search's flags below); eval.json then has greedy and searched side by side.
    #[arg(long)]
    pub search: bool,
    #[command(flatten)]
    pub search_args: super::infer::SearchArgs,
    /// With --search: reuse the proposals of an earlier searched evaluation (its search.jsonl)
    /// instead of decoding, to compare search settings on the same proposals.
    #[arg(long, requires = "search")]
    pub proposals: Option<PathBuf>,
    /// Print eval.json on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sandbox: super::exec::SandboxArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.search && a.samples > 1 {
        bail!("--search decodes its own proposals (--search-samples); drop --samples");
    }
    if a.samples > 1 && a.temperature <= 0.0 {
        bail!(
            "--samples {} with --temperature 0 gives identical programs; add --temperature 0.8",
            a.samples
        );
    }
    match a.backend {
        BackendKind::Ndarray => {
            eval_on::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(&a, &Default::default())
        }
        BackendKind::Flex => {
            eval_on::<burn::backend::Autodiff<burn::backend::Flex>>(&a, &Default::default())
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            eval_on::<burn::backend::Autodiff<burn::backend::Cuda>>(&a, &Default::default())
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => bail!("--backend cuda needs a build with --features cuda"),
    }
}

fn eval_on<AB: AutodiffBackend>(a: &EvalArgs, device: &AB::Device) -> Result<()> {
    let policy = crate::pipeline::policy::load_any::<AB>(&a.run, device)?;
    let samples = load_samples(&a.data, a.limit)?;
    if samples.is_empty() {
        bail!("{}: no samples", a.data.display());
    }
    let settings = EvalSettings {
        samples: a.samples,
        generate: GenerateConfig {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
            threads: 0,
        },
        batch: a.batch,
        sandbox: a.sandbox.config(),
        search: if a.search {
            Some(a.search_args.config()?)
        } else {
            None
        },
        reuse_proposals: a.proposals.clone(),
    };
    let name = a
        .data
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "data".into());
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.run.join("eval").join(name));
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(samples.len() as u64)
    };
    let s = run_set(policy.as_ref(), &samples, &settings, &out, &mut |d| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "n {}  VSR {:.3}  IoU_unitcube valid {:.3} all {:.3}  IoU_best valid {:.3} all {:.3}  CD×1000 valid mean {} median {}  ({:.1} s) -> {}",
            s.n,
            s.vsr,
            s.iou_unitcube_mean_valid,
            s.iou_unitcube_mean_all,
            s.iou_best_mean_valid,
            s.iou_best_mean_all,
            s.cd_x1000_mean_valid
                .map_or("–".into(), |v| format!("{v:.3}")),
            s.cd_x1000_median_valid
                .map_or("–".into(), |v| format!("{v:.3}")),
            s.seconds,
            out.display()
        );
        if let Some(x) = &s.search {
            println!(
                "greedy: VSR {:.3}  IoU_best all {:.3}  IoU_unitcube all {:.3} | search: {:.0} renders/image, proposing {:.1} s/image, searching {:.2} s/image | image score vs IoU_best: Spearman {} per image ({} images), {} pooled | pick of proposals {:.3}, oracle {:.3}",
                x.greedy_vsr,
                x.greedy_iou_best_mean_all,
                x.greedy_iou_unitcube_mean_all,
                x.renders_mean,
                x.propose_seconds_per_image,
                x.search_seconds_per_image,
                x.spearman_mean.map_or("n/a".into(), |v| format!("{v:.3}")),
                x.spearman_images,
                x.spearman_pooled
                    .map_or("n/a".into(), |v| format!("{v:.3}")),
                x.proposals_pick_iou_best,
                x.proposals_oracle_iou_best
            );
        }
    }
    Ok(())
}
