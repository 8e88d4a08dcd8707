//! QLoRA on the Qwen models: the tiny random checkpoints of `fixtures/qwen` quantized to NF4 through
//! `LinearLayers` (Hugging Face names), LoRA adapters attached by name, and the effect of both on logits.
#![cfg(feature = "model")]

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use cadvlm::model::lora::{
    LinearLayers, LoraConfig, apply_lora, quantize_linears, with_adapters_disabled,
};
use cadvlm::model::quant::{Quantize, relative_frobenius_error};
use cadvlm::model::qwen2vl::preprocess::{MAX_PIXELS, MIN_PIXELS, encode, load_tokenizer};
use cadvlm::model::qwen2vl::{
    ImageInput, LoadedQwen, QwenVl, chat_prompt, linear_paths, load_dir, preprocess_image,
};

type B = NdArray<f32>;

fn fx() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen")
}

/// Prompt ids and pixels of the fixture image with a short prompt.
fn inputs(dir: &Path) -> (Vec<u32>, Vec<f32>, [usize; 3]) {
    let (px, grid) = preprocess_image(
        &ImageInput::open(&fx().join("image.png")).unwrap(),
        14,
        2,
        2,
        MIN_PIXELS,
        MAX_PIXELS,
    )
    .unwrap();
    let n = grid.iter().product::<usize>() / 4;
    let ids = encode(
        &load_tokenizer(dir).unwrap(),
        &chat_prompt("Generate the CadQuery code.", n),
    )
    .unwrap();
    (ids, px, grid)
}

fn logits(l: &LoadedQwen<B>, m: &QwenVl<B>, ids: &[u32], px: &[f32], grid: [usize; 3]) -> Vec<f32> {
    let n = grid.iter().product::<usize>();
    let pxt = Tensor::<B, 2>::from_data(
        TensorData::new(px.to_vec(), [n, px.len() / n]),
        &Default::default(),
    );
    m.forward_logits(&l.config, ids, Some(pxt), &[grid])
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn linear_layers_use_the_checkpoint_names() {
    for kind in ["qwen2_vl", "qwen2_5_vl"] {
        let mut l = load_dir::<B>(&fx().join(kind), &Default::default()).unwrap();
        let mut seen = Vec::new();
        l.model.for_each_linear(&mut |p, lin| {
            seen.push((p.to_string(), lin.out_features(), lin.in_features()))
        });
        let paths: Vec<String> = seen.iter().map(|s| s.0.clone()).collect();
        assert_eq!(paths, linear_paths(&l.config), "{kind}");
        // every name is a weight of the checkpoint, with the checkpoint's [out, in] shape
        let st = std::fs::read(fx().join(kind).join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&st).unwrap();
        for (p, out, inp) in &seen {
            let w = st
                .tensor(&format!("{p}.weight"))
                .unwrap_or_else(|_| panic!("{kind}: {p}.weight is not in the checkpoint"));
            assert_eq!(w.shape(), &[*out, *inp], "{kind}: {p}");
        }
        let n_mlp = if kind == "qwen2_vl" { 2 } else { 3 };
        assert_eq!(
            seen.len(),
            l.config.vision.depth * (2 + n_mlp)
                + 2
                + l.config.layers * 7
                + usize::from(!l.config.tie_word_embeddings)
        );
    }
}

#[test]
fn nf4_logits_stay_close_and_zero_adapters_change_nothing() {
    let dev = Default::default();
    for kind in ["qwen2_vl", "qwen2_5_vl"] {
        let dir = fx().join(kind);
        let l = load_dir::<B>(&dir, &dev).unwrap();
        let (ids, px, grid) = inputs(&dir);
        let base = logits(&l, &l.model, &ids, &px, grid);

        // f32 base + fresh adapters (B = 0) on every linear layer: exactly the base
        let mut m = l.model.clone().no_grad();
        let n = apply_lora(
            &mut m,
            &LoraConfig {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: vec!["all-linear".into()],
            },
            &dev,
        )
        .unwrap();
        assert_eq!(n, linear_paths(&l.config).len());
        assert_eq!(
            logits(&l, &m, &ids, &px, grid),
            base,
            "{kind}: zero adapters on an f32 base"
        );

        // NF4 base (all but lm_head, as QLoRA does) + zero adapters: equal to the NF4 base alone, close to f32
        let mut q = l.model.clone().no_grad();
        let nq = quantize_linears(&mut q, Quantize::Nf4, |p| p != "lm_head").unwrap();
        assert_eq!(
            nq,
            linear_paths(&l.config)
                .iter()
                .filter(|p| *p != "lm_head")
                .count()
        );
        let q_logits = logits(&l, &q, &ids, &px, grid);
        apply_lora(
            &mut q,
            &LoraConfig {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                ..LoraConfig::default()
            },
            &dev,
        )
        .unwrap();
        assert_eq!(
            logits(&l, &q, &ids, &px, grid),
            q_logits,
            "{kind}: zero adapters on an NF4 base"
        );
        assert_eq!(
            with_adapters_disabled(|| logits(&l, &q, &ids, &px, grid)),
            q_logits
        );
        // the NF4 forward is exactly the f32 forward of the dequantized weights
        let mut dq = q.clone();
        let mut werr = 0f64;
        let mut orig = l.model.clone();
        let mut w0 = std::collections::BTreeMap::new();
        orig.for_each_linear(&mut |p, lin| {
            w0.insert(
                p.to_string(),
                lin.weight
                    .as_ref()
                    .unwrap()
                    .val()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        });
        dq.for_each_linear(&mut |p, lin| {
            if let Some(qt) = &lin.qweight {
                werr = werr.max(relative_frobenius_error(&w0[p], qt));
            }
            lin.dequantize_base(&dev);
        });
        let d_deq = max_abs_diff(&logits(&l, &dq, &ids, &px, grid), &q_logits);
        assert!(
            d_deq < 1e-5,
            "{kind}: NF4 forward vs its dequantized weights: {d_deq}"
        );
        // int8 for scale: the same pipeline with a finer grid moves the logits far less
        let mut qi = l.model.clone().no_grad();
        quantize_linears(&mut qi, Quantize::Int8, |p| p != "lm_head").unwrap();
        let d_int8 = max_abs_diff(&logits(&l, &qi, &ids, &px, grid), &base);
        let rms = |x: &[f32]| (x.iter().map(|a| a * a).sum::<f32>() / x.len() as f32).sqrt();
        let diff: Vec<f32> = q_logits.iter().zip(&base).map(|(a, b)| a - b).collect();
        let (d, rd, rb) = (max_abs_diff(&q_logits, &base), rms(&diff), rms(&base));
        let scale = base.iter().fold(0f32, |a, v| a.max(v.abs()));
        eprintln!(
            "{kind}: NF4 vs f32 logits: max |diff| {d:.3}, rms diff {rd:.3} (logits rms {rb:.3}, max |logit| {scale:.3}); int8 max |diff| {d_int8:.3}; worst layer ‖W−Ŵ‖/‖W‖ {werr:.3}"
        );
        // Tolerances. Per weight, NF4 (block 64, double-quantized scales) must be within 12 % relative
        // Frobenius error (≈ 10 % is NF4's error on Gaussian weights). On these tiny random models (hidden
        // 64, 2+2 layers, no training) that error compounds through every layer: measured rms logit change
        // 31 % (Qwen2-VL) of the logits' rms, max 47 % of the largest logit. Tolerance: rms(Δ) < 40 % of
        // rms(logits) and max |Δ| < 60 % of max |logit|: a loose bound that still fails on a wrong quantized forward (zeroed or transposed weights
        // give ≥ 100 %); exactness is checked above against the dequantized weights.
        assert!(werr < 0.12, "{kind}: NF4 weight error {werr}");
        assert!(
            d > 0.0 && rd < 0.40 * rb && d < 0.60 * scale,
            "{kind}: NF4 logits differ by up to {d} (rms {rd}, logits rms {rb})"
        );
        assert!(d_int8 < 0.25 * d, "{kind}: int8 {d_int8} vs NF4 {d}");
    }
}
