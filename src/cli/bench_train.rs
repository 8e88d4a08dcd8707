//! `cadvlm bench-train`: training throughput (target tokens/s) of a model size on a backend.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;

use crate::pipeline::BackendKind;

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Model size (tiny, mini, small, medium, base).
    #[arg(long, default_value = "small")]
    pub size: String,
    /// ndarray | flex | cuda
    #[arg(long, default_value = "ndarray")]
    pub backend: BackendKind,
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
    /// Also print the mean ms per timed step of each phase (vision tower forward, decoder forward +
    /// loss, backward, optimizer), each ended by reading a scalar of its result.
    #[arg(long)]
    pub profile: bool,
}

pub fn run(a: BenchTrainArgs) -> Result<()> {
    match a.backend {
        BackendKind::Ndarray => bench_on::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
            &a,
            &Default::default(),
        ),
        BackendKind::Flex => {
            bench_on::<burn::backend::Autodiff<burn::backend::Flex>>(&a, &Default::default())
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            bench_on::<burn::backend::Autodiff<burn::backend::Cuda>>(&a, &Default::default())
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => bail!("--backend cuda needs a build with --features cuda"),
    }
}

fn bench_on<AB: AutodiffBackend>(a: &BenchTrainArgs, device: &AB::Device) -> Result<()> {
    use crate::model::vlm::TokenBatch;
    use crate::train::optim::{AdamW, OptimConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::{Distribution, Tensor};
    let c = crate::model::VlmConfig::named(&a.size, a.vocab)?;
    AB::seed(device, 0);
    let mut model = c.init::<AB>(device);
    let mut opt = AdamW::<AB::InnerBackend>::new(OptimConfig::default());
    let rows: Vec<(Vec<u32>, Vec<u32>)> = (0..a.batch)
        .map(|r| {
            (
                vec![1, 2],
                (0..a.seq - 2)
                    .map(|i| ((i * 7 + r * 13) % (a.vocab - 4) + 4) as u32)
                    .collect(),
            )
        })
        .collect();
    let batch = TokenBatch::from_rows(&rows, 0);
    let n_patch = c.grid() * c.grid();
    let mut timed = 0.0;
    // vision, decoder + loss, backward, optimizer: seconds summed over the timed steps
    let mut phases = [0.0f64; 4];
    for s in 0..=a.steps {
        let t = Instant::now();
        let patches = Tensor::<AB, 3>::random(
            [a.batch, n_patch, c.patch_dim()],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let mut marks = [0.0f64; 4];
        let loss = if a.profile {
            let image = model.encode_image(patches); // as Vlm::sft_losses: image, aux head, text loss
            let _ = model.aux_predict(&image);
            let _ = image.clone().inner().sum().into_scalar();
            marks[0] = t.elapsed().as_secs_f64();
            let loss = model.text_loss(image, &batch);
            let _ = loss.clone().inner().into_scalar();
            marks[1] = t.elapsed().as_secs_f64();
            loss
        } else {
            model.sft_loss(patches, &batch)
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        marks[2] = t.elapsed().as_secs_f64();
        model = opt.step(model, grads, 1e-4).0;
        if a.profile {
            // the update is done once a value of the last parameter has been read
            let _ = model
                .lm_head
                .base_weight(device)
                .inner()
                .sum()
                .into_scalar();
        }
        let dt = t.elapsed().as_secs_f64();
        marks[3] = dt;
        if s > 0 {
            timed += dt;
            let mut prev = 0.0;
            for (p, m) in phases.iter_mut().zip(marks) {
                *p += m - prev;
                prev = m;
            }
        }
    }
    let toks = (a.steps * batch.n_target_tokens()) as f64;
    let params: usize = crate::model::weights::named_params(&model.valid())
        .values()
        .map(|(s, _)| s.iter().product::<usize>())
        .sum();
    println!(
        "bench-train size {} ({:.2} M params {params}) backend {} batch {} seq {} threads {}: {:.0} target tokens/s ({:.3} s/step)",
        a.size,
        params as f64 / 1e6,
        a.backend,
        a.batch,
        a.seq,
        rayon::current_num_threads(),
        toks / timed,
        timed / a.steps as f64
    );
    if a.profile {
        let ms = |i: usize| 1e3 * phases[i] / a.steps as f64;
        println!(
            "profile ms/step: vision {:.0}, decoder+loss {:.0}, backward {:.0}, optimizer {:.0}",
            ms(0),
            ms(1),
            ms(2),
            ms(3)
        );
    }
    Ok(())
}
