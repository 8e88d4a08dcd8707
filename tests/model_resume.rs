//! Resume parity: a run stopped after a checkpoint and resumed logs the same losses as an uninterrupted run.

#![cfg(feature = "model")]

use burn::backend::{Autodiff, NdArray};
use cadvlm::data::{GENCAD_PROMPT, Sample};
use cadvlm::model::VlmConfig;
use cadvlm::train::adapt::Adaptation;
use cadvlm::train::optim::OptimConfig;
use cadvlm::train::sft::{SftConfig, prepare_examples, train_sft_adapted};

type AB = Autodiff<NdArray<f32>>;

fn samples() -> Vec<Sample> {
    (0..6)
        .map(|i| {
            let w = 0.25 + 0.125 * i as f64;
            let program = format!(
                "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({w}, 0.0).lineTo({w}, 0.5).lineTo(0.0, 0.5).close()\nsolid0=wp_sketch0.add(loop0).extrude(0.25)\nsolid=solid0\n"
            );
            let rgb: Vec<u8> = (0..32 * 32 * 3).map(|k| ((k * (i + 3)) % 251) as u8).collect();
            Sample { id: format!("r{i}"), prompt: GENCAD_PROMPT.into(), program, rgb, width: 32, height: 32 }
        })
        .collect()
}

#[test]
fn resumed_run_matches_uninterrupted_run() {
    let s = samples();
    let corpus: Vec<String> = s.iter().map(|x| x.program.clone()).collect();
    let tok = cadvlm::model::tokenizer::train(&corpus, &Default::default()).unwrap();
    let c = VlmConfig::named("tiny", tok.vocab_size()).unwrap();
    // batch 4 over 6 examples: steps cross epoch boundaries, so the data position must resume too
    let cfg = SftConfig {
        steps: 6,
        batch_size: 4,
        grad_accum: 2,
        optim: OptimConfig {
            lr: 2e-3,
            warmup_steps: 2,
            ..Default::default()
        },
        log_every: 1,
        checkpoint_every: 3,
        val_samples: 0,
        ..Default::default()
    };
    let (ex, _) = prepare_examples(s, &tok, &c, &cfg).unwrap();
    let device = Default::default();
    let base = std::env::temp_dir().join(format!("cadvlm-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let full = train_sft_adapted::<AB>(
        &base.join("a"),
        &cfg,
        &c,
        &Adaptation::default(),
        &tok,
        &ex,
        &[],
        &device,
        None,
        false,
    )
    .unwrap();
    assert_eq!(full.losses.len(), 6);

    let first = train_sft_adapted::<AB>(
        &base.join("b"),
        &cfg,
        &c,
        &Adaptation::default(),
        &tok,
        &ex,
        &[],
        &device,
        Some(4),
        false,
    )
    .unwrap();
    assert_eq!(first.step, 4);
    assert!(
        !base.join("b/model.safetensors").exists(),
        "a stopped run must not write the final model"
    );
    // the newest checkpoint is at step 4 (written at the stop); drop it to resume from the periodic one at 3
    std::fs::remove_dir_all(base.join("b/checkpoints/step-0000004")).unwrap();
    let second = train_sft_adapted::<AB>(
        &base.join("b"),
        &cfg,
        &c,
        &Adaptation::default(),
        &tok,
        &ex,
        &[],
        &device,
        None,
        false,
    )
    .unwrap();
    assert_eq!(second.resumed_from, Some(3));
    assert_eq!(
        second.losses.iter().map(|l| l.0).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    for ((s1, l1), (s2, l2)) in full.losses[3..].iter().zip(&second.losses) {
        assert_eq!(s1, s2);
        assert!(
            (l1 - l2).abs() <= 1e-6 * l1.abs().max(1.0),
            "step {s1}: uninterrupted {l1} vs resumed {l2}"
        );
    }
    // metrics.parquet / jsonl hold one row per step, without duplicates from the interruption
    let rows = std::fs::read_to_string(base.join("b/metrics.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 6);
    assert!(base.join("b/metrics.parquet").exists());
    let _ = std::fs::remove_dir_all(&base);
}
