//! Parity of `model::qwen2vl` with Hugging Face `transformers` on the tiny random checkpoints of
//! `fixtures/qwen` (made by `fixtures/qwen/make_fixtures.py`): preprocessing, chat template + tokenizer,
//! full-forward logits (f32, within 1e-4) and greedy generation, for Qwen2-VL and Qwen2.5-VL; loader errors.
#![cfg(feature = "model")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use cadvlm::model::qwen2vl::loader::{build_model, read_config, read_tensors, shard_files};
use cadvlm::model::qwen2vl::preprocess::{
    CLIP_MEAN, MAX_PIXELS, MIN_PIXELS, encode, load_tokenizer,
};
use cadvlm::model::qwen2vl::{
    ImageInput, QwenConfig, QwenError, WeightFormat, chat_prompt, estimate_memory, load_dir,
    preprocess_image, smart_resize,
};
use safetensors::{Dtype, SafeTensors};

type B = NdArray<f32>;

fn fx() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen")
}

fn read_st(path: &Path) -> BTreeMap<String, (Vec<usize>, Dtype, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.dtype(), v.data().to_vec())))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn i64s(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Expected {
    prompt: String,
    chat_text: String,
    input_ids: Vec<u32>,
    grid: [usize; 3],
    greedy: Vec<u32>,
    logits: Vec<f32>,
    logits_shape: Vec<usize>,
}

fn expected(kind: &str) -> Expected {
    let dir = fx().join(kind);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let u32s = |k: &str| {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    let g = u32s("image_grid_thw");
    let st = read_st(&dir.join("expected.safetensors"));
    let (shape, _, data) = &st["logits"];
    Expected {
        prompt: j["prompt"].as_str().unwrap().to_string(),
        chat_text: j["chat_text"].as_str().unwrap().to_string(),
        input_ids: u32s("input_ids"),
        grid: [g[0] as usize, g[1] as usize, g[2] as usize],
        greedy: u32s("greedy_new_tokens"),
        logits: f32s(data),
        logits_shape: shape.clone(),
    }
}

/// The fixture's `pixel_values` `[n, d]` and `image_grid_thw`.
fn fixture_pixels() -> (Vec<f32>, [usize; 2], [usize; 3]) {
    let st = read_st(&fx().join("preprocess.safetensors"));
    let (shape, dt, data) = &st["pixel_values"];
    assert_eq!(*dt, Dtype::F32);
    let (_, _, g) = &st["image_grid_thw"];
    let g = i64s(g);
    (
        f32s(data),
        [shape[0], shape[1]],
        [g[0] as usize, g[1] as usize, g[2] as usize],
    )
}

#[test]
fn smart_resize_matches_transformers() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx().join("smart_resize.json")).unwrap())
            .unwrap();
    for c in cases.as_array().unwrap() {
        let n = |k: &str| c[k].as_u64().unwrap() as usize;
        let got = smart_resize(n("h"), n("w"), 28, n("min_pixels"), n("max_pixels")).unwrap();
        assert_eq!(got, (n("out_h"), n("out_w")), "case {c}");
    }
    assert!(
        smart_resize(1, 300, 28, MIN_PIXELS, MAX_PIXELS).is_err(),
        "aspect ratio > 200 is refused"
    );
    assert!(smart_resize(0, 30, 28, MIN_PIXELS, MAX_PIXELS).is_err());
}

#[test]
fn preprocessing_matches_image_processor() {
    let img = ImageInput::open(&fx().join("image.png")).unwrap();
    assert_eq!((img.height, img.width), (150, 200));
    let (px, grid) = preprocess_image(&img, 14, 2, 2, MIN_PIXELS, MAX_PIXELS).unwrap();
    let (want, shape, want_grid) = fixture_pixels();
    assert_eq!(grid, want_grid);
    assert_eq!(px.len(), shape[0] * shape[1]);
    let max = px
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-5, "pixel_values differ by up to {max}");
    // a pure-black pixel normalises to -mean/std
    let black = ImageInput {
        width: 56,
        height: 56,
        rgb: vec![0; 56 * 56 * 3],
    };
    let (p, g) = preprocess_image(&black, 14, 2, 2, MIN_PIXELS, MAX_PIXELS).unwrap();
    assert_eq!(g, [1, 4, 4]);
    assert!((p[0] + CLIP_MEAN[0] / 0.268_629_54).abs() < 1e-6);
    assert!(
        preprocess_image(
            &ImageInput {
                width: 3,
                height: 3,
                rgb: vec![0; 5]
            },
            14,
            2,
            2,
            MIN_PIXELS,
            MAX_PIXELS
        )
        .is_err()
    );
}

#[test]
fn chat_template_and_tokenizer_match() {
    for kind in ["qwen2_vl", "qwen2_5_vl"] {
        let e = expected(kind);
        assert_eq!(chat_prompt(&e.prompt, 1), e.chat_text);
        let tok = load_tokenizer(&fx().join(kind)).unwrap();
        let n = e.grid.iter().product::<usize>() / 4;
        let ids = encode(&tok, &chat_prompt(&e.prompt, n)).unwrap();
        assert_eq!(ids, e.input_ids, "{kind}");
    }
}

fn parity(kind: &str) {
    let dev = Default::default();
    let dir = fx().join(kind);
    let loaded = load_dir::<B>(&dir, &dev).unwrap();
    let e = expected(kind);
    let (px, shape, grid) = fixture_pixels();
    assert_eq!(grid, e.grid);
    let pxt = || Tensor::<B, 2>::from_data(TensorData::new(px.clone(), shape), &dev);
    let logits = loaded
        .model
        .forward_logits(&loaded.config, &e.input_ids, Some(pxt()), &[grid])
        .unwrap();
    assert_eq!(logits.dims().to_vec(), e.logits_shape);
    let got = logits.into_data().to_vec::<f32>().unwrap();
    let max = got
        .iter()
        .zip(&e.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{kind}: max |logit diff| = {max:e}");
    assert!(max < 1e-4, "{kind}: logits differ by up to {max}");
    let generated = loaded
        .model
        .generate_greedy(
            &loaded.config,
            &e.input_ids,
            Some(pxt()),
            &[grid],
            e.greedy.len(),
            &loaded.eos_token_ids,
        )
        .unwrap();
    assert_eq!(generated, e.greedy, "{kind}: greedy continuation");
}

#[test]
fn qwen2_vl_logits_and_greedy_match_transformers() {
    parity("qwen2_vl");
}

#[test]
fn qwen2_5_vl_logits_and_greedy_match_transformers() {
    parity("qwen2_5_vl");
}

#[test]
fn image_to_logits_end_to_end() {
    // our own preprocessing + template + tokenizer feed the model the same inputs as transformers
    let dev = Default::default();
    let dir = fx().join("qwen2_5_vl");
    let loaded = load_dir::<B>(&dir, &dev).unwrap();
    let e = expected("qwen2_5_vl");
    let (px, grid) = preprocess_image(
        &ImageInput::open(&fx().join("image.png")).unwrap(),
        14,
        2,
        2,
        MIN_PIXELS,
        MAX_PIXELS,
    )
    .unwrap();
    let n = px.len() / 1176;
    let ids = encode(
        &load_tokenizer(&dir).unwrap(),
        &chat_prompt(&e.prompt, n / 4),
    )
    .unwrap();
    let logits = loaded
        .model
        .forward_logits(
            &loaded.config,
            &ids,
            Some(Tensor::from_data(TensorData::new(px, [n, 1176]), &dev)),
            &[grid],
        )
        .unwrap();
    let got = logits.into_data().to_vec::<f32>().unwrap();
    let max = got
        .iter()
        .zip(&e.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-4, "logits differ by up to {max}");
}

fn tmp_copy(kind: &str, tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cadvlm-qwen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fx().join(kind).join(f), d.join(f)).unwrap();
    }
    d
}

fn write_st(path: &Path, t: &BTreeMap<String, (Vec<usize>, Dtype, Vec<u8>)>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = t
        .iter()
        .map(|(k, (s, d, b))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn loader_names_missing_and_unexpected_tensors() {
    let dev = Default::default();
    let d = tmp_copy("qwen2_5_vl", "names");
    let st = d.join("model.safetensors");
    let mut t = read_st(&st);
    t.remove("visual.blocks.0.attn.qkv.weight").unwrap();
    let extra = t["model.norm.weight"].clone();
    t.insert("model.layers.9.extra.weight".into(), extra);
    let (mut s, dt, b) = t["model.layers.1.mlp.up_proj.weight"].clone();
    s.swap(0, 1);
    t.insert("model.layers.1.mlp.up_proj.weight".into(), (s, dt, b));
    write_st(&st, &t);
    let err = load_dir::<B>(&d, &dev).unwrap_err().to_string();
    assert!(
        err.contains("missing tensor visual.blocks.0.attn.qkv.weight"),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor model.layers.9.extra.weight"),
        "{err}"
    );
    assert!(
        err.contains("tensor model.layers.1.mlp.up_proj.weight has shape [64, 128]"),
        "{err}"
    );
    assert!(err.contains(&d.display().to_string()), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn loader_names_missing_files() {
    let dev = Default::default();
    let nowhere = fx().join("no-such-model");
    let err = load_dir::<B>(&nowhere, &dev).unwrap_err();
    assert!(matches!(err, QwenError::Io { .. }));
    assert!(err.to_string().contains("no-such-model"), "{err}");

    let d = tmp_copy("qwen2_vl", "files");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let err = load_dir::<B>(&d, &dev).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    // an index naming a shard that is not there
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = load_dir::<B>(&d, &dev).unwrap_err().to_string();
    assert!(
        err.contains("model-00001-of-00002.safetensors") && err.contains("missing"),
        "{err}"
    );
    std::fs::remove_file(d.join("config.json")).unwrap();
    let err = load_dir::<B>(&d, &dev).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sharded_checkpoint_with_index_loads_and_new_key_spelling_is_accepted() {
    let dev = Default::default();
    let d = tmp_copy("qwen2_vl", "shards");
    let t = read_st(&d.join("model.safetensors"));
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    // two shards; the second uses transformers' `model.language_model.*` / `model.visual.*` spelling
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in t.into_iter().enumerate() {
        if i % 2 == 0 {
            map.insert(k.clone(), "model-00001-of-00002.safetensors".into());
            a.insert(k, v);
        } else {
            let k2 = if let Some(r) = k.strip_prefix("model.") {
                format!("model.language_model.{r}")
            } else {
                k.replacen("visual.", "model.visual.", 1)
            };
            map.insert(k2.clone(), "model-00002-of-00002.safetensors".into());
            b.insert(k2, v);
        }
    }
    write_st(&d.join("model-00001-of-00002.safetensors"), &a);
    write_st(&d.join("model-00002-of-00002.safetensors"), &b);
    std::fs::write(
        d.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    assert_eq!(shard_files(&d).unwrap().len(), 2);
    let c = read_config(&d).unwrap();
    let m = build_model::<B>(&c, read_tensors(&shard_files(&d).unwrap()).unwrap(), &dev);
    assert!(m.is_ok(), "{:?}", m.err());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn memory_estimate_for_qwen2_5_vl_3b() {
    let c = QwenConfig::qwen2_5_vl_3b();
    let bf16 = estimate_memory(&c, WeightFormat::Bf16, 0, 1, 1024, false);
    // published size: 3.75 B parameters
    assert!(
        (3.6e9..3.9e9).contains(&(bf16.params_total as f64)),
        "{}",
        bf16.params_total
    );
    let small = estimate_memory(&c, WeightFormat::Nf4, 16, 1, 1024, true);
    let big = estimate_memory(&c, WeightFormat::Nf4, 16, 4, 2048, false);
    let big_ckpt = estimate_memory(&c, WeightFormat::Nf4, 16, 4, 2048, true);
    let small_full = estimate_memory(&c, WeightFormat::Nf4, 16, 1, 1024, false);
    for e in [&bf16, &small, &small_full, &big, &big_ckpt] {
        eprintln!("{}", e.summary());
    }
    assert!(small.weight_bytes < bf16.weight_bytes / 2);
    assert!(small.fits(24.0) && small_full.fits(24.0) && big_ckpt.fits(24.0));
    assert!(!big.fits(24.0));
    assert!(
        small.lora_params > 10_000_000 && small.lora_params < 40_000_000,
        "{}",
        small.lora_params
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dev = Default::default();
    let loaded = load_dir::<B>(&fx().join("qwen2_vl"), &dev).unwrap();
    let (m, c) = (&loaded.model, &loaded.config);
    let e = expected("qwen2_vl");
    let (px, shape, grid) = fixture_pixels();
    let pxt = || Tensor::<B, 2>::from_data(TensorData::new(px.clone(), shape), &dev);
    assert!(m.forward_logits(c, &[], None, &[]).is_err());
    assert!(m.generate_greedy(c, &[], None, &[], 4, &[]).is_err());
    assert!(
        m.forward_logits(c, &[100_000], None, &[]).is_err(),
        "id outside the vocabulary"
    );
    assert!(
        m.forward_logits(c, &e.input_ids, None, &[]).is_err(),
        "image tokens without pixels"
    );
    assert!(
        m.forward_logits(c, &e.input_ids, Some(pxt()), &[[1, 10, 12]])
            .is_err(),
        "grid does not match the pixels"
    );
    assert!(
        m.forward_logits(c, &e.input_ids[..40], Some(pxt()), &[grid])
            .is_err(),
        "too few image tokens"
    );
    assert_eq!(
        loaded.eos_token_ids,
        vec![362],
        "<|im_end|> from config.json and generation_config.json"
    );
    // generation stops right after an end token
    let first = m
        .generate_greedy(c, &e.input_ids, Some(pxt()), &[grid], 1, &[])
        .unwrap()[0];
    assert_eq!(
        m.generate_greedy(c, &e.input_ids, Some(pxt()), &[grid], 8, &[first])
            .unwrap(),
        vec![first]
    );
    // text only works and uses 1D positions
    let l = m.forward_logits(c, &[1, 2, 3], None, &[]).unwrap();
    assert_eq!(l.dims(), [3, 384]);
}

#[test]
fn qwen2_5_vl_logits_match_on_the_flex_backend() {
    type F = burn::backend::Flex;
    let dev = Default::default();
    let loaded = load_dir::<F>(&fx().join("qwen2_5_vl"), &dev).unwrap();
    let e = expected("qwen2_5_vl");
    let (px, shape, grid) = fixture_pixels();
    let logits = loaded
        .model
        .forward_logits(
            &loaded.config,
            &e.input_ids,
            Some(Tensor::<F, 2>::from_data(TensorData::new(px, shape), &dev)),
            &[grid],
        )
        .unwrap();
    let got = logits.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let max = got
        .iter()
        .zip(&e.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("flex qwen2_5_vl: max |logit diff| = {max:e}");
    assert!(max < 1e-4, "logits differ by up to {max}");
}

#[test]
fn the_fixture_tells_window_attention_from_full_attention() {
    // with every block on full attention the Qwen2.5-VL logits move far outside the tolerance, so the
    // parity test really checks the window path
    let dev = Default::default();
    let mut loaded = load_dir::<B>(&fx().join("qwen2_5_vl"), &dev).unwrap();
    loaded.model.visual.fullatt_block_indexes = vec![0, 1];
    let e = expected("qwen2_5_vl");
    let (px, shape, grid) = fixture_pixels();
    let logits = loaded
        .model
        .forward_logits(
            &loaded.config,
            &e.input_ids,
            Some(Tensor::<B, 2>::from_data(TensorData::new(px, shape), &dev)),
            &[grid],
        )
        .unwrap();
    let got = logits.into_data().to_vec::<f32>().unwrap();
    let max = got
        .iter()
        .zip(&e.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max > 1e-2,
        "full attention everywhere changes the logits by only {max}"
    );
}

#[test]
fn gradients_flow_through_text_and_vision() {
    // a training step's prerequisite: the loss of the next tokens back-propagates to the LM head and,
    // through the merger, window permutation and token splice, to the patch embedding
    use burn::backend::Autodiff;
    use burn::tensor::activation::log_softmax;
    type A = Autodiff<NdArray<f32>>;
    let dev = Default::default();
    let loaded = load_dir::<A>(&fx().join("qwen2_5_vl"), &dev).unwrap();
    let e = expected("qwen2_5_vl");
    let (px, shape, grid) = fixture_pixels();
    let logits = loaded
        .model
        .forward_logits(
            &loaded.config,
            &e.input_ids,
            Some(Tensor::<A, 2>::from_data(TensorData::new(px, shape), &dev)),
            &[grid],
        )
        .unwrap(); // [seq, vocab]
    let seq = e.input_ids.len();
    let targets: Vec<i64> = e.input_ids[1..].iter().map(|&t| t as i64).collect();
    let idx =
        Tensor::<A, 2, burn::tensor::Int>::from_data(TensorData::new(targets, [seq - 1, 1]), &dev);
    let lp = log_softmax(logits.narrow(0, 0, seq - 1), 1).gather(1, idx); // [seq-1, 1]
    let loss = lp.mean().neg();
    assert!(loss.clone().into_scalar().is_finite());
    let grads = loss.backward();
    let head = loaded
        .model
        .lm_head
        .as_ref()
        .unwrap()
        .weight
        .as_ref()
        .unwrap()
        .grad(&grads)
        .unwrap();
    let pe = loaded.model.visual.patch_embed.grad(&grads).unwrap();
    for g in [head.abs().sum().into_scalar(), pe.abs().sum().into_scalar()] {
        assert!(g.is_finite() && g > 0.0, "gradient sum {g}");
    }
}

#[test]
fn preprocessing_matches_on_upscaling_and_mixed_resizes() {
    let st = read_st(&fx().join("preprocess_extra.safetensors"));
    for (name, want_grid) in [("up_33x41", [1, 4, 6]), ("mixed_90x300", [1, 6, 22])] {
        let img = ImageInput::open(&fx().join(format!("image_{name}.png"))).unwrap();
        let (px, grid) = preprocess_image(&img, 14, 2, 2, MIN_PIXELS, MAX_PIXELS).unwrap();
        let g = i64s(&st[&format!("image_grid_thw_{name}")].2);
        assert_eq!(
            grid,
            [g[0] as usize, g[1] as usize, g[2] as usize],
            "{name}"
        );
        assert_eq!(grid, want_grid, "{name}");
        let want = f32s(&st[&format!("pixel_values_{name}")].2);
        assert_eq!(px.len(), want.len(), "{name}");
        let max = px
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max <= 1e-5, "{name}: pixel_values differ by up to {max}");
    }
}

#[test]
fn preprocessor_config_is_read_from_the_model_directory() {
    use cadvlm::model::qwen2vl::PreprocessConfig;
    let c = PreprocessConfig::from_dir(&fx().join("qwen2_5_vl")).unwrap();
    assert_eq!(c, PreprocessConfig::default());
    let (px, grid) = c
        .preprocess(&ImageInput::open(&fx().join("image.png")).unwrap())
        .unwrap();
    let (want, _, want_grid) = fixture_pixels();
    assert_eq!(grid, want_grid);
    assert!(px.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5));
    // the Hub's Qwen2.5-VL files carry min_pixels / max_pixels, which win over `size`
    let hub = r#"{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}"#;
    let h = PreprocessConfig::from_json(hub).unwrap();
    assert_eq!((h.min_pixels, h.max_pixels), (3136, 12_845_056));
    assert!(PreprocessConfig::from_json(r#"{"image_std": [0, 1, 1]}"#).is_err());
    let err = PreprocessConfig::from_dir(&fx()).unwrap_err().to_string();
    assert!(err.contains("preprocessor_config.json"), "{err}");
}

#[test]
fn generate_from_a_checkpoint_directory() {
    use cadvlm::model::qwen2vl::generate_from_dir;
    let dir = fx().join("qwen2_5_vl");
    let e = expected("qwen2_5_vl");
    let img = ImageInput::open(&fx().join("image.png")).unwrap();
    let g =
        generate_from_dir::<B>(&dir, &img, &e.prompt, e.greedy.len(), &Default::default()).unwrap();
    assert_eq!(g.prompt_ids, e.input_ids);
    assert_eq!(g.new_ids, e.greedy);
    assert_eq!(
        g.text,
        load_tokenizer(&dir)
            .unwrap()
            .decode(&e.greedy, true)
            .unwrap()
    );
}

#[test]
fn preprocessing_matches_pillow_13_too() {
    use cadvlm::model::qwen2vl::PreprocessConfig;
    use cadvlm::model::qwen2vl::preprocess::PillowResize;
    let st = read_st(&fx().join("preprocess_pillow13.safetensors"));
    let c13 = PreprocessConfig {
        pillow: PillowResize::From13,
        ..PreprocessConfig::default()
    };
    let mut orders_differ = false;
    for name in ["image", "image_up_33x41", "image_mixed_90x300"] {
        let img = ImageInput::open(&fx().join(format!("{name}.png"))).unwrap();
        let want = f32s(&st[&format!("pixel_values_{name}")].2);
        let (px, _) = c13.preprocess(&img).unwrap();
        let max = px
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            px.len() == want.len() && max <= 1e-5,
            "{name}: pixel_values differ by up to {max}"
        );
        let (px12, _) = PreprocessConfig::default().preprocess(&img).unwrap();
        orders_differ |= px12 != px;
    }
    assert!(
        orders_differ,
        "the fixture image takes Pillow 13's vertical-first path"
    );
}
