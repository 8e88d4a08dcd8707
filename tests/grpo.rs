//! GRPO on a tiny model: steps on a fixed group raise Σ A·log π, the best program's log-probability
//! and the above-average programs' lead over the others; the round loop (cached rollouts → groups → steps → metrics with
//! TRL's GRPO names → checkpoints) resumes exactly, mid-round; with QLoRA the adapters train against
//! the base (adapters off) as reference.

#![cfg(all(feature = "model", feature = "sandbox"))]

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use cadvlm::data::{GENCAD_PROMPT, Sample};
use cadvlm::model::inputs::{patches_tensor, prefix_tokens};
use cadvlm::model::weights;
use cadvlm::train::adapt::Adaptation;
use cadvlm::train::grpo::{GrpoConfig, train_grpo_adapted};
use cadvlm::train::grpo_loss::{GrpoLossConfig, LossType, group_advantages};
use cadvlm::train::optim::{AdamW, OptimConfig};
use cadvlm::train::policy::{
    CompletionExample, GrpoStep, completion_logprobs, completion_token_batch, grpo_train_step,
};
use cadvlm::train::rollout::{Rollout, RolloutConfig, write_rollouts};
use common::{code, image, program, setup};
use polars::prelude::SerReader as _;

type AB = Autodiff<NdArray<f32>>;

/// The backend's seed is global: tests of this binary run one at a time so that each model starts
/// from its own seed (in parallel, another test's reseeding made the first test's start vary).
static SEQUENTIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
type B = NdArray<f32>;

/// SFT steps on the group before GRPO: enough that the shared tokens are near certain (with fewer,
/// Adam's first steps move every program's log-prob the same way and drown the group's signal).
const SFT_STEPS: usize = 150;

#[test]
fn steps_raise_the_advantage_weighted_log_likelihood() {
    let _one = SEQUENTIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (tok, c) = setup();
    let device = Default::default();
    <AB as burn::tensor::backend::Backend>::seed(&device, 11);
    let mut policy = c.init::<AB>(&device);
    let img = image(32, 40);
    let prefix = prefix_tokens(&tok, GENCAD_PROMPT).unwrap();
    // a fixed group of four programs of one image and their rewards
    let progs = [
        (program(0.5, 0.25), 1.0),
        (program(0.75, 0.25), 0.7),
        (program(0.25, 0.125), 0.1),
        (program(0.75, 0.125), -0.5),
    ];
    let ex: Vec<CompletionExample> = progs
        .iter()
        .map(|(p, _)| CompletionExample {
            image: &img,
            prefix: prefix.clone(),
            tokens: code(&tok, p),
        })
        .collect();
    let batch: Vec<&CompletionExample> = ex.iter().collect();
    let rewards: Vec<f64> = progs.iter().map(|p| p.1).collect();
    let adv = group_advantages(&rewards, false);
    assert!(adv[0] > 0.0 && adv[1] > 0.0 && adv[2] < 0.0 && adv[3] < 0.0);
    let seq_lp = |m: &cadvlm::model::vlm::Vlm<B>| -> Vec<f64> {
        completion_logprobs(m, &c, &batch, tok.pad, &device)
            .iter()
            .map(|r| r.iter().sum())
            .collect()
    };
    // a few SFT steps on the group first: the model then writes these programs (shared tokens near
    // certain), as a sampling policy does, and the group's programs compete where they differ
    let mut sft_opt = AdamW::<B>::new(OptimConfig {
        lr: 3e-3,
        warmup_steps: 0,
        weight_decay: 0.0,
        ..Default::default()
    });
    let tokens = completion_token_batch(&batch, tok.pad);
    let imgs: Vec<&Sample> = batch.iter().map(|x| x.image).collect();
    for _ in 0..SFT_STEPS {
        let loss = policy.sft_loss(patches_tensor::<AB>(&imgs, &c, &device), &tokens);
        let grads = GradientsParams::from_grads(loss.backward(), &policy);
        policy = sft_opt.step(policy, grads, 3e-3).0;
    }
    let before = seq_lp(&policy.valid());
    let old = completion_logprobs(&policy.valid(), &c, &batch, tok.pad, &device);
    let lr = 1e-5;
    let mut opt = AdamW::<B>::new(OptimConfig {
        lr,
        warmup_steps: 0,
        weight_decay: 0.0,
        ..Default::default()
    });
    let hp = GrpoStep {
        loss: GrpoLossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            beta: 0.0,
            loss_type: LossType::DrGrpo,
            norm_len: 128,
        },
        lr,
    };
    let mut first = None;
    for _ in 0..3 {
        let (p, s, g) = grpo_train_step(
            policy, &mut opt, &c, &batch, &old, None, &adv, &hp, tok.pad, &device,
        );
        policy = p;
        assert!(g.is_finite() && g > 0.0, "grad norm {g}");
        assert!(s.entropy.is_finite() && s.entropy > 0.0, "{s:?}");
        first.get_or_insert(s);
    }
    let s0 = first.unwrap();
    // at the first step π = π_old: ratio 1, nothing clipped, loss = −Σ A·|o| / (batch · norm_len)
    assert_eq!(s0.clip_ratio, 0.0);
    let want: f64 = -ex
        .iter()
        .zip(&adv)
        .map(|(e, a)| a * e.tokens.len() as f64)
        .sum::<f64>()
        / (4.0 * 128.0);
    assert!((s0.loss - want).abs() < 1e-5, "{} vs {want}", s0.loss);
    let after = seq_lp(&policy.valid());
    eprintln!("log-probs before {before:?}\nafter {after:?}");
    // the objective the steps ascend, Σ A·log π(o), must rise (the loss falls); programs share
    // most parameters, so one above-average program may still fall while a better one rises more,
    // and the worst may rise with the rest (CI saw all four rise) — but the best must rise, and
    // gain more than the worst
    let objective = |lp: &[f64]| lp.iter().zip(&adv).map(|(l, a)| l * a).sum::<f64>();
    assert!(
        objective(&after) > objective(&before) + 1e-3,
        "Σ A·log π fell or stalled: {before:?} → {after:?} (A = {adv:?})"
    );
    assert!(
        after[0] > before[0],
        "the best program fell: {before:?} → {after:?}"
    );
    assert!(
        after[0] - before[0] > after[3] - before[3],
        "the worst program gained as much as the best: {before:?} → {after:?}"
    );
    let gap = |lp: &[f64]| (lp[0] + lp[1] - lp[2] - lp[3]) / 2.0;
    assert!(
        gap(&after) > gap(&before),
        "above-average programs did not gain on the others: {before:?} → {after:?}"
    );
}

fn cached_rollouts(programs: &[(String, f64)], image: usize, id: &str) -> Vec<Rollout> {
    programs
        .iter()
        .map(|(p, r)| Rollout {
            id: id.into(),
            image,
            program: p.clone(),
            finished: true,
            reward: *r,
            iou: (*r >= 0.0).then_some(*r),
            failure: (*r < 0.0).then(|| "syntax".into()),
            round: 0,
            policy_step: 0,
        })
        .collect()
}

#[test]
fn rounds_write_trl_metrics_checkpoints_and_resume_exactly() {
    let _one = SEQUENTIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (tok, c) = setup();
    let device = Default::default();
    let root = std::env::temp_dir().join(format!("cadvlm-grpo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    <AB as burn::tensor::backend::Backend>::seed(&device, 5);
    let init = root.join("sft.safetensors");
    weights::save_module(&c.init::<B>(&device), &init).unwrap();
    let images = vec![image(32, 40), image(32, 90)];
    let cfg = GrpoConfig {
        rounds: 1,
        images_per_round: 2,
        steps_per_round: 4,
        batch_completions: 3,
        beta: 0.05,
        optim: OptimConfig {
            lr: 1e-4,
            warmup_steps: 0,
            weight_decay: 0.0,
            ..Default::default()
        },
        checkpoint_every: 2,
        rollout: RolloutConfig {
            k: 4,
            max_new_tokens: 128,
            sandbox: cadvlm::exec::SandboxConfig::with_backend(cadvlm::exec::Backend::Native),
            ..Default::default()
        },
        ..Default::default()
    };
    // image 0: a group with a reward spread; image 1: all equal (skipped: no signal)
    let g0 = vec![
        (program(0.5, 0.25), 1.0),
        (program(0.5, 0.125), 0.5),
        (program(0.75, 0.25), 0.66),
        ("wp = cq.Workplane(".to_string(), -0.5),
    ];
    let g1: Vec<(String, f64)> = (0..4).map(|_| (program(0.25, 0.25), 0.3)).collect();
    let mut finals = Vec::new();
    for (name, stop) in [("straight", None), ("resumed", Some(1))] {
        let run = root.join(name);
        // the round's images are a seeded draw of the two: give each its own group
        let order = cadvlm::train::rollout::round_images(2, 2, cfg.seed, 0);
        let mut rs = Vec::new();
        for (slot, &i) in order.iter().enumerate() {
            let g = if i == 0 { &g0 } else { &g1 };
            rs.extend(cached_rollouts(g, slot, &images[i].id));
        }
        write_rollouts(&run.join("rollouts").join("round-00.parquet"), &rs).unwrap();
        if let Some(s) = stop {
            let o = train_grpo_adapted::<AB>(
                &run,
                &cfg,
                &c,
                &Adaptation::default(),
                &tok,
                &init,
                &images,
                &device,
                Some(s),
                false,
            )
            .unwrap();
            assert_eq!(o.step, s);
            assert!(!run.join("model.safetensors").exists());
        }
        let o = train_grpo_adapted::<AB>(
            &run,
            &cfg,
            &c,
            &Adaptation::default(),
            &tok,
            &init,
            &images,
            &device,
            None,
            false,
        )
        .unwrap();
        assert_eq!(o.step, 4);
        // a stopped run checkpoints where it stops (mid-round here) and resumes from there
        assert_eq!(o.resumed_from, stop);
        assert!(run.join("model.safetensors").exists());
        assert!(run.join("rollouts").join("round-00.logps.json").exists());
        let df = polars::prelude::ParquetReader::new(
            std::fs::File::open(run.join("metrics.parquet")).unwrap(),
        )
        .finish()
        .unwrap();
        for col in [
            "loss",
            "kl",
            "clip_ratio/region_mean",
            "entropy",
            "completions/mean_length",
            "reward",
            "reward_std",
            "frac_reward_zero_std",
            "rollout/groups",
        ] {
            assert!(df.column(col).is_ok(), "missing column {col}");
        }
        assert_eq!(df.height(), 5, "{df}");
        let f = |col: &str| df.column(col).unwrap().f64().unwrap().get(0).unwrap();
        assert_eq!(f("rollout/groups"), 1.0);
        assert_eq!(f("frac_reward_zero_std"), 0.5);
        // the first step is at the sampling policy and the reference: KL 0, nothing clipped
        let kl1 = df.column("kl").unwrap().f64().unwrap().get(1).unwrap();
        assert!(kl1.abs() < 1e-6, "first-step KL {kl1}");
        finals.push(weights::named_params(
            &weights::load_module(c.init::<B>(&device), &run.join("model.safetensors")).unwrap(),
        ));
    }
    let (a, b) = (&finals[0], &finals[1]);
    let max_diff = a
        .iter()
        .map(|(k, (_, v))| {
            v.iter()
                .zip(&b[k].1)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        })
        .fold(0.0f32, f32::max);
    eprintln!("resume: max weight difference {max_diff}");
    assert!(max_diff < 1e-5, "resumed weights differ by {max_diff}");
    let init_w = weights::named_params(&weights::load_module(c.init::<B>(&device), &init).unwrap());
    assert_ne!(a, &init_w);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn qlora_grpo_trains_adapters_against_the_base() {
    let _one = SEQUENTIAL.lock().unwrap_or_else(|e| e.into_inner());
    use cadvlm::model::lora::LoraConfig;
    use cadvlm::model::quant::Quantize;
    let (tok, c) = setup();
    let device = Default::default();
    let root = std::env::temp_dir().join(format!("cadvlm-grpo-qlora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    <AB as burn::tensor::backend::Backend>::seed(&device, 9);
    let init = root.join("sft.safetensors");
    weights::save_module(&c.init::<B>(&device), &init).unwrap();
    let images = vec![image(32, 40)];
    let cfg = GrpoConfig {
        rounds: 1,
        images_per_round: 1,
        steps_per_round: 2,
        batch_completions: 4,
        beta: 0.1,
        optim: OptimConfig {
            lr: 1e-3,
            warmup_steps: 0,
            weight_decay: 0.0,
            ..Default::default()
        },
        rollout: RolloutConfig {
            k: 4,
            max_new_tokens: 128,
            sandbox: cadvlm::exec::SandboxConfig::with_backend(cadvlm::exec::Backend::Native),
            ..Default::default()
        },
        ..Default::default()
    };
    let progs = vec![
        (program(0.5, 0.25), 1.0),
        (program(0.5, 0.125), 0.5),
        (program(0.75, 0.25), 0.66),
        ("wp = cq.Workplane(".to_string(), -0.5),
    ];
    let run = root.join("run");
    write_rollouts(
        &run.join("rollouts").join("round-00.parquet"),
        &cached_rollouts(&progs, 0, &images[0].id),
    )
    .unwrap();
    let adapt = Adaptation {
        quantize: Quantize::Nf4,
        lora: Some(LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec!["all-linear".into()],
        }),
    };
    let o = train_grpo_adapted::<AB>(
        &run, &cfg, &c, &adapt, &tok, &init, &images, &device, None, false,
    )
    .unwrap();
    assert_eq!(o.step, 2);
    let steps: Vec<_> = o.metrics.iter().filter(|m| m.loss.is_some()).collect();
    // fresh adapters (B = 0): at the first step the policy is its reference (the base, adapters off)
    assert!(steps[0].kl.unwrap().abs() < 1e-6, "{:?}", steps[0]);
    assert!(
        steps[1].kl.unwrap() > 0.0,
        "the adapters did not move: {:?}",
        steps[1]
    );
    // the final model is written as the merged f32 model that `cadvlm eval` loads
    let merged = weights::named_params(
        &weights::load_module(c.init::<B>(&device), &run.join("model.safetensors")).unwrap(),
    );
    assert_eq!(
        merged.len(),
        weights::named_params(&c.init::<B>(&device)).len()
    );
    let _ = std::fs::remove_dir_all(&root);
}
