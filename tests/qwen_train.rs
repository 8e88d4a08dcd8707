//! QLoRA training on the tiny random Qwen2.5-VL of `fixtures/qwen`: the SFT loss on the assistant answer
//! (the CadQuery program) falls under AdamW while only the adapters change, and DPO steps raise the
//! policy's preference margin while the reference (adapters off) stays put; GRPO steps through the
//! `Policy` trait move a group's programs by advantage, the reference again untouched.
#![cfg(feature = "model")]

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use cadvlm::model::lora::{LinearLayers, LoraConfig};
use cadvlm::model::quant::Quantize;
use cadvlm::model::qwen2vl::answer::{
    PromptInput, answer_ids, prepare_qlora, qwen_sft_loss, seed_adapters,
};
use cadvlm::model::qwen2vl::preprocess::load_tokenizer;
use cadvlm::model::qwen2vl::{ImageInput, PreprocessConfig, load_dir};
use cadvlm::train::optim::{AdamW, OptimConfig};
use cadvlm::train::qwen::qwen_sft_step;

type A = Autodiff<NdArray<f32>>;

fn fx() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen")
}

/// A 56×56 image (the smallest Qwen grid: 4×4 patches → 4 image tokens): a coloured square on grey.
fn image(k: usize) -> ImageInput {
    let (w, h) = (56, 56);
    let mut rgb = vec![128u8; w * h * 3];
    let c = [[220, 40, 40], [40, 200, 60], [50, 60, 230], [230, 220, 40]][k % 4];
    for y in 8 + 4 * k..36 + 2 * k {
        for x in 10..30 + 5 * k {
            rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    }
    ImageInput {
        width: w,
        height: h,
        rgb,
    }
}

const PROGRAMS: [&str; 3] = [
    "r = cq.Workplane(\"XY\").box(2, 1, 1)",
    "r = cq.Workplane(\"XY\").cylinder(3, 1)",
    "r = cq.Workplane(\"XZ\").rect(4, 2).extrude(1)",
];

/// The tiny Qwen2.5-VL fixture (NdArray), its tokenizer, and fixture image `k` with the GenCAD prompt.
fn fixture_model(
    k: usize,
) -> (
    tokenizers::Tokenizer,
    cadvlm::model::qwen2vl::LoadedQwen<NdArray<f32>>,
    PromptInput,
) {
    let dir = fx().join("qwen2_5_vl");
    let tok = load_tokenizer(&dir).unwrap();
    let l = load_dir::<NdArray<f32>>(&dir, &Default::default()).unwrap();
    let p = PromptInput::new(
        &tok,
        &PreprocessConfig::from_dir(&dir).unwrap(),
        &image(k),
        "Generate the CADQuery code.",
    )
    .unwrap();
    (tok, l, p)
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: vec!["all-linear".into()],
    }
}

#[test]
fn qlora_sft_loss_falls_and_only_adapters_change() {
    let dev = Default::default();
    let dir = fx().join("qwen2_5_vl");
    let tok = load_tokenizer(&dir).unwrap();
    let pre = PreprocessConfig::from_dir(&dir).unwrap();
    let l = load_dir::<A>(&dir, &dev).unwrap();
    let c = l.config.clone();
    let prompts: Vec<PromptInput> = (0..PROGRAMS.len())
        .map(|k| PromptInput::new(&tok, &pre, &image(k), cadvlm::data::GENCAD_PROMPT).unwrap())
        .collect();
    assert_eq!(prompts[0].grid, [1, 4, 4]);
    let answers: Vec<Vec<u32>> = PROGRAMS
        .iter()
        .map(|p| answer_ids(&tok, p).unwrap())
        .collect();
    let batch: Vec<(&PromptInput, &[u32])> = prompts
        .iter()
        .zip(&answers)
        .map(|(p, a)| (p, a.as_slice()))
        .collect();

    let mut model = prepare_qlora(l.model, Quantize::Nf4, &lora(), &dev).unwrap();
    seed_adapters(&mut model, 5, &dev);
    // the frozen pieces to compare afterwards: an f32 base (lm_head), an embedding, a norm, an NF4 base
    let snapshot = |m: &mut cadvlm::model::qwen2vl::QwenVl<A>| {
        let head = m
            .lm_head
            .as_ref()
            .unwrap()
            .weight
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let emb = m
            .model
            .embed_tokens
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let norm = m.model.layers[0]
            .input_layernorm
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let q = m.model.layers[1]
            .self_attn
            .q_proj
            .qweight
            .as_ref()
            .unwrap()
            .dequantize();
        let mut adapters = Vec::new();
        m.for_each_linear(&mut |_, lin| {
            adapters.extend(
                lin.lora_b
                    .as_ref()
                    .unwrap()
                    .val()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            )
        });
        (head, emb, norm, q, adapters)
    };
    let before = snapshot(&mut model);
    assert!(
        before.4.iter().all(|&v| v == 0.0),
        "fresh adapters start with B = 0"
    );

    let mut opt = AdamW::new(OptimConfig {
        lr: 1e-2,
        warmup_steps: 0,
        weight_decay: 0.0,
        grad_clip: 1.0,
        ..Default::default()
    });
    let first = qwen_sft_loss(&model, &c, &batch).unwrap().into_scalar();
    let mut last = first;
    for _ in 0..30 {
        let (m, loss, gnorm) = qwen_sft_step(model, &mut opt, &c, &batch, 1e-2).unwrap();
        assert!(loss.is_finite() && gnorm.is_finite());
        model = m;
        last = loss as f32;
    }
    let after_loss = qwen_sft_loss(&model, &c, &batch).unwrap().into_scalar();
    eprintln!(
        "SFT on {} pairs: answer NLL {first:.3} → {last:.3} (after the last step {after_loss:.3})",
        batch.len()
    );
    assert!(
        after_loss < 0.5 * first,
        "loss fell from {first} to {after_loss} only"
    );

    let after = snapshot(&mut model);
    assert_eq!(after.0, before.0, "lm_head (f32 base) changed");
    assert_eq!(after.1, before.1, "embeddings changed");
    assert_eq!(after.2, before.2, "a norm changed");
    assert_eq!(after.3, before.3, "an NF4 base changed");
    assert!(
        after.4.iter().any(|&v| v != 0.0),
        "the adapters did not train"
    );
}

#[test]
fn sft_loss_covers_the_answer_tokens_only() {
    // equal to the mean NLL of the answer positions of a full forward over prompt ++ answer
    use burn::tensor::activation::log_softmax;
    type B = NdArray<f32>;
    let dev = Default::default();
    let (tok, l, p) = fixture_model(1);
    let a = answer_ids(&tok, PROGRAMS[1]).unwrap();
    assert_eq!(*a.last().unwrap(), tok.token_to_id("<|im_end|>").unwrap());
    let loss = qwen_sft_loss(&l.model, &l.config, &[(&p, a.as_slice())])
        .unwrap()
        .into_scalar();
    let ids: Vec<u32> = p.ids.iter().chain(&a).copied().collect();
    let lp = log_softmax(
        l.model
            .forward_logits(&l.config, &ids, Some(p.pixel_tensor::<B>(&dev)), &[p.grid])
            .unwrap(),
        1,
    );
    let v = lp.into_data().to_vec::<f32>().unwrap();
    let vocab = l.config.vocab_size;
    let n = p.ids.len();
    let want = -(0..a.len())
        .map(|i| v[(n - 1 + i) * vocab + a[i] as usize])
        .sum::<f32>()
        / a.len() as f32;
    assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    // bad input is an error, not a panic
    assert!(qwen_sft_loss(&l.model, &l.config, &[]).is_err());
    assert!(qwen_sft_loss(&l.model, &l.config, &[(&p, &[][..])]).is_err());
    assert!(qwen_sft_loss(&l.model, &l.config, &[(&p, &[l.config.image_token_id][..])]).is_err());
}

#[cfg(feature = "sandbox")]
#[test]
fn qlora_dpo_raises_the_margin_and_leaves_the_reference_alone() {
    use cadvlm::train::qwen::{QwenPair, policy_logprobs, qwen_dpo_step, reference_logprobs};
    let dev = Default::default();
    let dir = fx().join("qwen2_5_vl");
    let tok = load_tokenizer(&dir).unwrap();
    let pre = PreprocessConfig::from_dir(&dir).unwrap();
    let l = load_dir::<A>(&dir, &dev).unwrap();
    let c = l.config.clone();
    let pair = QwenPair {
        prompt: PromptInput::new(&tok, &pre, &image(2), cadvlm::data::GENCAD_PROMPT).unwrap(),
        chosen: answer_ids(&tok, PROGRAMS[0]).unwrap(),
        rejected: answer_ids(&tok, PROGRAMS[2]).unwrap(),
    };
    let mut policy = prepare_qlora(l.model, Quantize::Nf4, &lora(), &dev).unwrap();
    seed_adapters(&mut policy, 6, &dev);
    let refs = reference_logprobs(&policy, &c, &pair).unwrap();
    // fresh adapters (B = 0): the policy is the reference
    let p0 = policy_logprobs(&policy, &c, &pair).unwrap();
    let margin = |p: (f64, f64), r: (f64, f64)| (p.0 - r.0) - (p.1 - r.1);
    assert!(
        margin(p0, refs).abs() < 1e-4,
        "policy {p0:?} vs reference {refs:?}"
    );
    let mut opt = AdamW::new(OptimConfig {
        lr: 5e-3,
        warmup_steps: 0,
        weight_decay: 0.0,
        grad_clip: 1.0,
        ..Default::default()
    });
    let mut losses = Vec::new();
    for _ in 0..6 {
        let (p, stats, gnorm) = qwen_dpo_step(
            policy,
            &mut opt,
            &c,
            std::slice::from_ref(&pair),
            &[refs],
            0.1,
            0.0,
            5e-3,
        )
        .unwrap();
        assert!(stats.loss.is_finite() && gnorm.is_finite());
        losses.push(stats.loss);
        policy = p;
    }
    let p1 = policy_logprobs(&policy, &c, &pair).unwrap();
    let refs_after = reference_logprobs(&policy, &c, &pair).unwrap();
    eprintln!(
        "DPO: margin {:.4} → {:.4}, losses {losses:.4?}, reference {refs:?} → {refs_after:?}",
        margin(p0, refs),
        margin(p1, refs)
    );
    assert_eq!(refs_after, refs, "the reference (adapters off) moved");
    assert!(
        margin(p1, refs) > margin(p0, refs) + 1.0,
        "the log-ratio margin did not grow: {p0:?} → {p1:?} (reference {refs:?})"
    );
    assert!(losses.last().unwrap() < &losses[0]);
    // the step refuses mismatched inputs
    assert!(
        qwen_dpo_step(
            policy,
            &mut opt,
            &c,
            std::slice::from_ref(&pair),
            &[],
            0.1,
            0.0,
            5e-3
        )
        .is_err()
    );
}

#[test]
fn sampled_generation_is_seeded_and_checks_its_temperature() {
    use rand::SeedableRng;
    type B = NdArray<f32>;
    let dev = Default::default();
    let (_, l, p) = fixture_model(0);
    let sample = |seed: u64, t: f32| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        l.model.generate_sampled(
            &l.config,
            &p.ids,
            Some(p.pixel_tensor::<B>(&dev)),
            &[p.grid],
            20,
            &[],
            t,
            &mut rng,
        )
    };
    let (a, b, other) = (
        sample(1, 1.0).unwrap(),
        sample(1, 1.0).unwrap(),
        sample(2, 1.0).unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(a.len(), 20);
    assert_ne!(a, other, "different seeds, same 20 tokens");
    // a very low temperature is greedy
    let greedy = l
        .model
        .generate_greedy(
            &l.config,
            &p.ids,
            Some(p.pixel_tensor::<B>(&dev)),
            &[p.grid],
            20,
            &[],
        )
        .unwrap();
    assert_eq!(sample(3, 1e-4).unwrap(), greedy);
    assert!(sample(1, 0.0).is_err() && sample(1, f32::NAN).is_err());
}

#[test]
fn qlora_grpo_moves_the_group_by_advantage_and_leaves_the_reference_alone() {
    use cadvlm::train::grpo_loss::{GrpoLossConfig, LossType, group_advantages};
    use cadvlm::train::policy::{CompletionExample, GrpoStep, Policy};
    use cadvlm::train::qwen::QwenPolicy;
    let dev = Default::default();
    let dir = fx().join("qwen2_5_vl");
    let mut policy = QwenPolicy::<A>::new(
        &dir,
        Quantize::Nf4,
        &lora(),
        &[],
        6,
        OptimConfig {
            lr: 5e-3,
            warmup_steps: 0,
            weight_decay: 0.0,
            ..Default::default()
        },
        64,
        &dev,
    )
    .unwrap();
    let img = image(1);
    let sample = cadvlm::data::Sample {
        id: "q".into(),
        prompt: cadvlm::data::GENCAD_PROMPT.into(),
        program: String::new(),
        rgb: img.rgb.clone(),
        width: img.width,
        height: img.height,
    };
    let ex: Vec<CompletionExample> = PROGRAMS
        .iter()
        .map(|p| {
            policy
                .encode_completion(&sample, (p, true))
                .unwrap()
                .unwrap()
        })
        .collect();
    let batch: Vec<&CompletionExample> = ex.iter().collect();
    let adv = group_advantages(&[1.0, 0.5, 0.0], false);
    let sums = |v: Vec<Vec<f64>>| -> Vec<f64> { v.iter().map(|r| r.iter().sum()).collect() };
    let old = policy.completion_logprobs(&batch, false).unwrap();
    let refs = policy.completion_logprobs(&batch, true).unwrap();
    let before = sums(old.clone());
    // fresh adapters (B = 0): the policy is the reference
    for (a, b) in before.iter().zip(sums(refs.clone())) {
        assert!((a - b).abs() < 1e-4, "{before:?} vs reference");
    }
    let hp = GrpoStep {
        loss: GrpoLossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            beta: 0.04,
            loss_type: LossType::DrGrpo,
            norm_len: 64,
        },
        lr: 5e-3,
    };
    for k in 0..4 {
        let (s, g) = policy
            .grpo_step(&batch, &old, Some(&refs), &adv, &hp)
            .unwrap();
        assert!(s.loss.is_finite() && g.is_finite() && g > 0.0, "{s:?}");
        if k == 0 {
            assert!(s.kl.abs() < 1e-6 && s.clip_ratio == 0.0, "{s:?}");
        }
    }
    let after = sums(policy.completion_logprobs(&batch, false).unwrap());
    let refs_after = policy.completion_logprobs(&batch, true).unwrap();
    eprintln!("GRPO: log-probs {before:?} → {after:?}");
    assert_eq!(refs_after, refs, "the reference (adapters off) moved");
    // the best program gains on the worst one
    assert!(
        after[0] - after[2] > before[0] - before[2] + 0.1,
        "{before:?} → {after:?}"
    );
    // mismatched inputs are refused, the model is kept
    assert!(
        policy
            .grpo_step(&batch, &old[..1], None, &adv, &hp)
            .is_err()
    );
    assert!(policy.completion_logprobs(&batch, false).is_ok());
}
