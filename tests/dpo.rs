//! DPO on a tiny model: the frozen reference is untouched by DPO steps, the policy's preferred
//! log-ratio grows on a fixed pair, and the round loop (cached rollouts → pairs → steps → metrics with
//! TRL's names → checkpoints) resumes exactly.

#![cfg(all(feature = "model", feature = "sandbox"))]

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use cadvlm::data::GENCAD_PROMPT;
use cadvlm::model::inputs::prefix_tokens;
use cadvlm::model::vlm::Vlm;
use cadvlm::model::weights;
use cadvlm::train::adapt::Adaptation;
use cadvlm::train::dpo::{DpoConfig, train_dpo_adapted};
use cadvlm::train::dpo_loss::dpo_loss;
use cadvlm::train::optim::{AdamW, OptimConfig};
use cadvlm::train::policy::{PairExample, dpo_train_step, reference_logprobs};
use cadvlm::train::rollout::{PairConfig, Rollout, RolloutConfig, write_rollouts};
use common::{code, image, program, setup};
use polars::prelude::SerReader as _;

type AB = Autodiff<NdArray<f32>>;
type B = NdArray<f32>;

#[test]
fn reference_frozen_and_preferred_log_ratio_grows() {
    let (tok, c) = setup();
    let device = Default::default();
    <AB as burn::tensor::backend::Backend>::seed(&device, 3);
    let policy = c.init::<AB>(&device);
    let reference: Vlm<B> = policy.valid();
    let ref_before = weights::named_params(&reference);
    let img = image(32, 40);
    let prefix = prefix_tokens(&tok, GENCAD_PROMPT).unwrap();
    let pair = PairExample {
        image: &img,
        prefix,
        chosen: code(&tok, &program(0.5, 0.25)),
        rejected: code(&tok, &program(0.75, 0.125)),
    };
    let pairs = [&pair];
    let refs = reference_logprobs(&reference, &c, &pairs, tok.pad, &device);
    // the policy starts as the reference: zero log-ratio, loss ln 2
    let p0 = reference_logprobs(&policy.valid(), &c, &pairs, tok.pad, &device);
    let h0 = (p0[0].0 - refs[0].0) - (p0[0].1 - refs[0].1);
    assert!(h0.abs() < 1e-4, "initial log-ratio {h0}");
    let lr = 2e-5;
    let mut opt = AdamW::<B>::new(OptimConfig {
        lr,
        warmup_steps: 0,
        weight_decay: 0.0,
        ..Default::default()
    });
    let mut policy = policy;
    let mut losses = Vec::new();
    let mut ratios = vec![h0];
    for _ in 0..4 {
        let (p, s, g) = dpo_train_step(
            policy, &mut opt, &c, &pairs, &refs, 0.1, 0.0, 0.0, lr, tok.pad, &device,
        );
        policy = p;
        assert!(g.is_finite() && g > 0.0, "grad norm {g} at {s:?}");
        losses.push(s.loss);
        let p = reference_logprobs(&policy.valid(), &c, &pairs, tok.pad, &device);
        ratios.push((p[0].0 - refs[0].0) - (p[0].1 - refs[0].1));
    }
    assert!(
        (losses[0] - std::f64::consts::LN_2).abs() < 1e-4,
        "first loss {}",
        losses[0]
    );
    // the preferred log-ratio grows at every step, and the loss falls
    assert!(
        ratios.windows(2).all(|w| w[1] > w[0]),
        "log-ratios {ratios:?}"
    );
    assert!(ratios[4] > 0.5, "log-ratios {ratios:?}");
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "losses {losses:?}");
    let after = dpo_loss(
        &[ratios[4] + refs[0].0],
        &[refs[0].1],
        &[refs[0].0],
        &[refs[0].1],
        0.1,
        0.0,
    );
    assert!(
        after.loss < losses[0] - 0.01 && after.accuracy == 1.0,
        "{after:?} vs {losses:?}"
    );
    // the reference's weights are bit-for-bit what they were, and its log-probs too
    assert_eq!(weights::named_params(&reference), ref_before);
    assert_eq!(
        reference_logprobs(&reference, &c, &pairs, tok.pad, &device),
        refs
    );
    // while the policy moved
    assert_ne!(weights::named_params(&policy.valid()), ref_before);
}

fn cached_rollouts(programs: &[(String, f64)]) -> Vec<Rollout> {
    programs
        .iter()
        .map(|(p, r)| Rollout {
            id: "img40".into(),
            image: 0,
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
fn rounds_write_trl_metrics_checkpoints_and_resume() {
    let (tok, c) = setup();
    let device = Default::default();
    let root = std::env::temp_dir().join(format!("cadvlm-dpo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    <AB as burn::tensor::backend::Backend>::seed(&device, 5);
    let init = root.join("sft.safetensors");
    weights::save_module(&c.init::<B>(&device), &init).unwrap();
    let images = vec![image(32, 40)];
    let cfg = DpoConfig {
        rounds: 1,
        images_per_round: 1,
        steps_per_round: 4,
        batch_pairs: 2,
        beta: 0.5,
        optim: OptimConfig {
            lr: 1e-4,
            warmup_steps: 0,
            weight_decay: 0.0,
            ..Default::default()
        },
        checkpoint_every: 2,
        rollout: RolloutConfig {
            k: 4,
            sandbox: cadvlm::exec::SandboxConfig::with_backend(cadvlm::exec::Backend::Native),
            ..Default::default()
        },
        pairs: PairConfig {
            strategy: cadvlm::train::rollout::PairStrategy::AllAboveMargin,
            margin: 0.1,
            max_per_image: 3,
            hard_threshold: None,
        },
        ..Default::default()
    };
    let progs = vec![
        (program(0.5, 0.25), 1.0),
        (program(0.5, 0.125), 0.5),
        (program(0.75, 0.25), 0.66),
        ("wp = cq.Workplane(".to_string(), -0.5),
    ];
    // two runs: one straight through, one stopped after step 2 and resumed; same cached rollouts
    let mut finals = Vec::new();
    for (name, stop) in [("straight", None), ("resumed", Some(2))] {
        let run = root.join(name);
        write_rollouts(
            &run.join("rollouts").join("round-00.parquet"),
            &cached_rollouts(&progs),
        )
        .unwrap();
        if let Some(s) = stop {
            let o = train_dpo_adapted::<AB>(
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
        let o = train_dpo_adapted::<AB>(
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
        assert_eq!(o.resumed_from, stop);
        assert!(run.join("model.safetensors").exists() && run.join("config.json").exists());
        // TRL's names in metrics.parquet, one row per step plus the round's rollout row
        let df = polars::prelude::ParquetReader::new(
            std::fs::File::open(run.join("metrics.parquet")).unwrap(),
        )
        .finish()
        .unwrap();
        for col in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "rollout/pairs",
        ] {
            assert!(df.column(col).is_ok(), "missing column {col}");
        }
        assert_eq!(df.height(), 5, "{df}");
        // pairs: 1.0>0.5, 1.0>-0.5, 0.66>-0.5, 0.5>-0.5 (and 1.0 > 0.66 is under the 0.1 margin? no: 0.34) → capped at 3
        let pairs = df
            .column("rollout/pairs")
            .unwrap()
            .f64()
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(pairs, 3.0);
        finals.push(weights::named_params(
            &weights::load_module(c.init::<B>(&device), &run.join("model.safetensors")).unwrap(),
        ));
        let loss = df.column("loss").unwrap().f64().unwrap().clone();
        let first = loss.get(1).unwrap();
        assert!(
            (first - std::f64::consts::LN_2).abs() < 1e-4,
            "first DPO loss {first}"
        );
    }
    // resuming from step 2 gives the same weights as running straight through
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
    // and DPO did train: the weights left the SFT initialisation
    let init_w = weights::named_params(&weights::load_module(c.init::<B>(&device), &init).unwrap());
    assert_ne!(a, &init_w);
    let _ = std::fs::remove_dir_all(&root);
}
