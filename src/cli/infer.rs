//! `cadvlm infer --run RUN --images DIR_OR_FILES... --out DIR`: image → CadQuery program by
//! render-and-compare search (the images only; no program is read).

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;

use crate::pipeline::BackendKind;
use crate::search::SearchConfig;
use crate::search::infer::{InferSettings, collect_images, infer};

/// The search's flags (shared by `infer` and `eval --search`).
#[derive(Args, Clone)]
pub struct SearchArgs {
    /// Sampled proposals per image besides the greedy one.
    #[arg(long = "search-samples", id = "search_samples", default_value_t = SearchConfig::default().samples)]
    pub samples: usize,
    /// Renders per image in all (proposals + refinement); 1 + samples = no refinement.
    #[arg(long, default_value_t = SearchConfig::default().budget)]
    pub budget: usize,
    /// Sampling temperature of the proposals.
    #[arg(long = "search-temperature", id = "search_temperature", default_value_t = SearchConfig::default().temperature)]
    pub temperature: f32,
    /// How many of the best proposals the refinement starts from.
    #[arg(long, default_value_t = SearchConfig::default().refine_top)]
    pub refine_top: usize,
    /// Side of the candidates' renders in pixels.
    #[arg(long, default_value_t = SearchConfig::default().render_size)]
    pub render_size: u32,
    /// Weight of the line term of the image score (0: silhouette only).
    #[arg(long, default_value_t = SearchConfig::default().score.edge_weight)]
    pub edge_weight: f64,
    /// Leave out the image-agnostic starting shapes (box, plate, L, cylinders, tubes) that join
    /// the model's proposals by default.
    #[arg(long)]
    pub no_templates: bool,
    /// Seed of the sampled proposals.
    #[arg(long = "search-seed", id = "search_seed", default_value_t = 0)]
    pub seed: u64,
}

impl SearchArgs {
    pub fn config(&self) -> Result<SearchConfig> {
        let d = SearchConfig::default();
        let c = SearchConfig {
            samples: self.samples,
            temperature: self.temperature,
            budget: self.budget,
            refine_top: self.refine_top,
            render_size: self.render_size,
            score: crate::geom::imscore::ImageScoreConfig {
                edge_weight: self.edge_weight,
                ..d.score
            },
            templates: !self.no_templates,
            seed: self.seed,
            ..d
        };
        if let Err(e) = c.validate() {
            bail!("{}", e.replace("search.", "--").replace('_', "-"));
        }
        Ok(c)
    }
}

#[derive(Args)]
pub struct InferArgs {
    /// The model: a small-VLM run folder (e.g. models/sft-cpu-small), a Qwen run folder, or a
    /// Qwen2-VL / Qwen2.5-VL checkpoint directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Image files (.png, .jpg) or folders of them.
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder: <image stem>.py per image and infer.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Threads of the search (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Generation rows per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 448)]
    pub max_new_tokens: usize,
    /// ndarray | flex | cuda (flex decodes the small VLM ~15 % faster on this CPU)
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    #[command(flatten)]
    pub sandbox: super::exec::SandboxArgs,
}

pub fn run(a: InferArgs) -> Result<()> {
    match a.backend {
        BackendKind::Ndarray => infer_on::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
            &a,
            &Default::default(),
        ),
        BackendKind::Flex => {
            infer_on::<burn::backend::Autodiff<burn::backend::Flex>>(&a, &Default::default())
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            infer_on::<burn::backend::Autodiff<burn::backend::Cuda>>(&a, &Default::default())
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => bail!("--backend cuda needs a build with --features cuda"),
    }
}

fn infer_on<AB: AutodiffBackend>(a: &InferArgs, device: &AB::Device) -> Result<()> {
    let settings = InferSettings {
        search: a.search.config()?,
        max_new_tokens: a.max_new_tokens,
        batch: a.batch,
        threads: a.threads,
    };
    let images = collect_images(&a.images)?;
    let executor = crate::exec::executor(&a.sandbox.config())?;
    let policy = crate::pipeline::policy::load_any::<AB>(&a.run, device)?;
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:8} {bar:40} {pos}/{len} images  {elapsed} (eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let s = infer(
        policy.as_ref(),
        executor.as_ref(),
        &images,
        &settings,
        &a.out,
        &mut |phase, n| {
            pb.set_message(phase.to_string());
            pb.set_length(n as u64);
            pb.set_position(0);
        },
        &|| pb.inc(1),
    )?;
    pb.finish_and_clear();
    println!(
        "{} images: {} programs written, {} errors ({:.1} s, {:.1} s/image) -> {}",
        s.images,
        s.written,
        s.errors,
        s.seconds,
        s.seconds / s.images.max(1) as f64,
        a.out.join("infer.jsonl").display()
    );
    Ok(())
}
