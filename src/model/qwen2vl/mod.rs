//! Qwen2-VL and Qwen2.5-VL, exactly as Hugging Face `transformers` computes them: the vision tower (Conv3d
//! patch embedding as a linear over the flattened patch, 2D rotary positions, Qwen2.5's window attention,
//! the 2×2 patch merger), the Qwen2 decoder with multimodal rotary positions (M-RoPE), the image
//! preprocessing (`smart_resize`, PIL bicubic, CLIP normalisation, patch order), the chat template, and
//! loading from a local Hugging Face directory with the original weight names.
//!
//! Parity with `transformers` is tested on tiny random checkpoints in `fixtures/qwen` (`tests/qwen_parity.rs`).
//! The layers here are self-contained (their own norm helpers), independent of `super::layers`; every
//! linear layer is a [`crate::model::lora::LoraLinear`] and [`QwenVl`] implements
//! [`crate::model::lora::LinearLayers`] with the checkpoint's names, so `quantize_linears` (NF4) and
//! `apply_lora` work on it (QLoRA); `train` has the SFT loss and DPO step on top.

pub mod answer;
pub mod config;
pub mod loader;
pub mod memory;
pub mod nn;
pub mod preprocess;
pub mod text;
pub mod vision;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::model::lora::{LinearLayers, LoraLinear};

pub use config::{Arch, QwenConfig, VisionConfig};
pub use loader::{LoadedQwen, load_dir};
pub use memory::{MemoryEstimate, WeightFormat, estimate_memory};
pub use preprocess::{ImageInput, PreprocessConfig, chat_prompt, preprocess_image, smart_resize};
pub use text::{QwenKvCache, QwenTextModel};
pub use vision::QwenVision;

/// Everything that can go wrong with a Qwen checkpoint or input; no panics on bad input.
#[derive(Debug, thiserror::Error)]
pub enum QwenError {
    #[error("Qwen config: {0}")]
    Config(String),
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("checkpoint {dir}: {msg}")]
    Weights { dir: String, msg: String },
    #[error("input: {0}")]
    Input(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("training: {0}")]
    Train(String),
}

/// The whole model: `visual.*`, `model.*` and `lm_head.*` (tied to `model.embed_tokens` when absent).
#[derive(burn::module::Module, Debug)]
pub struct QwenVl<B: Backend> {
    pub visual: QwenVision<B>,
    pub model: QwenTextModel<B>,
    pub lm_head: Option<nn::QLinear<B>>,
}

impl<B: Backend> LinearLayers<B> for QwenVl<B> {
    /// Every linear layer by its Hugging Face name, in [`linear_paths`] order (the Conv3d patch embedding
    /// `visual.patch_embed.proj` is not a linear layer there and is not listed, as in PEFT's `all-linear`).
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
        for (i, b) in self.visual.blocks.iter_mut().enumerate() {
            let p = format!("visual.blocks.{i}");
            f(&format!("{p}.attn.qkv"), &mut b.attn.qkv);
            f(&format!("{p}.attn.proj"), &mut b.attn.proj);
            match &mut b.mlp.gate_proj {
                Some(g) => {
                    f(&format!("{p}.mlp.gate_proj"), g);
                    f(&format!("{p}.mlp.up_proj"), &mut b.mlp.up_proj);
                    f(&format!("{p}.mlp.down_proj"), &mut b.mlp.down_proj);
                }
                None => {
                    f(&format!("{p}.mlp.fc1"), &mut b.mlp.up_proj);
                    f(&format!("{p}.mlp.fc2"), &mut b.mlp.down_proj);
                }
            }
        }
        f("visual.merger.mlp.0", &mut self.visual.merger.fc1);
        f("visual.merger.mlp.2", &mut self.visual.merger.fc2);
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            f(&format!("{p}.self_attn.q_proj"), &mut l.self_attn.q_proj);
            f(&format!("{p}.self_attn.k_proj"), &mut l.self_attn.k_proj);
            f(&format!("{p}.self_attn.v_proj"), &mut l.self_attn.v_proj);
            f(&format!("{p}.self_attn.o_proj"), &mut l.self_attn.o_proj);
            f(&format!("{p}.mlp.gate_proj"), &mut l.mlp.gate_proj);
            f(&format!("{p}.mlp.up_proj"), &mut l.mlp.up_proj);
            f(&format!("{p}.mlp.down_proj"), &mut l.mlp.down_proj);
        }
        if let Some(h) = &mut self.lm_head {
            f("lm_head", h);
        }
    }
}

/// The Hugging Face names of every linear layer of a model of config `c`, in [`LinearLayers`] order
/// (without building it: recipes check LoRA targets against these before any work).
pub fn linear_paths(c: &QwenConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mlp: &[&str] = match c.arch {
        Arch::Qwen2Vl => &["mlp.fc1", "mlp.fc2"],
        Arch::Qwen25Vl => &["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    };
    for i in 0..c.vision.depth {
        out.extend(
            ["attn.qkv", "attn.proj"]
                .iter()
                .chain(mlp)
                .map(|n| format!("visual.blocks.{i}.{n}")),
        );
    }
    out.extend([
        "visual.merger.mlp.0".to_string(),
        "visual.merger.mlp.2".to_string(),
    ]);
    for i in 0..c.layers {
        out.extend(
            [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ]
            .map(|n| format!("model.layers.{i}.{n}")),
        );
    }
    if !c.tie_word_embeddings {
        out.push("lm_head".to_string());
    }
    out
}

/// The 3 M-RoPE position rows (temporal, height, width) of a prompt, and the offset that continues them:
/// token `i >= len` sits at position `i + delta` on all three axes (`rope_deltas` in `transformers`).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeIndex {
    pub positions: [Vec<i64>; 3],
    pub delta: i64,
}

/// `get_rope_index` for one sequence: text tokens count up on all axes; the `n` image tokens of an image
/// with grid `(t, h, w)` (in patches) take `(start + t_i, start + h_i, start + w_i)` on the merged grid, and
/// the text after it restarts at `start + max(h, w) / merge`.
pub fn rope_index(
    ids: &[u32],
    image_token_id: u32,
    grids: &[[usize; 3]],
    merge: usize,
) -> Result<RopeIndex, QwenError> {
    let mut pos: [Vec<i64>; 3] = [
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
    ];
    let mut cur: i64 = 0;
    let mut i = 0;
    let mut img = 0;
    while i < ids.len() {
        if ids[i] != image_token_id {
            for p in pos.iter_mut() {
                p.push(cur);
            }
            cur += 1;
            i += 1;
            continue;
        }
        let [t, h, w] = *grids.get(img).ok_or_else(|| {
            QwenError::Input(format!(
                "more image token runs than images ({})",
                grids.len()
            ))
        })?;
        let (lh, lw) = (h / merge, w / merge);
        let n = t * lh * lw;
        if i + n > ids.len() || ids[i..i + n].iter().any(|&x| x != image_token_id) {
            return Err(QwenError::Input(format!(
                "image {img} needs {n} consecutive image tokens at position {i}"
            )));
        }
        for ti in 0..t {
            for hi in 0..lh {
                for wi in 0..lw {
                    pos[0].push(cur + ti as i64);
                    pos[1].push(cur + hi as i64);
                    pos[2].push(cur + wi as i64);
                }
            }
        }
        cur += (lh.max(lw)) as i64;
        i += n;
        img += 1;
    }
    if img != grids.len() {
        return Err(QwenError::Input(format!(
            "{} images but {img} image token runs",
            grids.len()
        )));
    }
    let max = pos
        .iter()
        .flat_map(|p| p.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok(RopeIndex {
        delta: max + 1 - ids.len() as i64,
        positions: pos,
    })
}

impl<B: Backend> QwenVl<B> {
    /// Logits `[1, seq, vocab]` of decoder outputs `h: [1, seq, hidden]` (tied head when `lm_head` is absent).
    pub fn head(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(l) => l.forward(h),
            None => h.matmul(
                self.model
                    .embed_tokens
                    .weight
                    .val()
                    .transpose()
                    .unsqueeze::<3>(),
            ), // [1, seq, vocab]
        }
    }

    /// Input embeddings `[1, seq, hidden]` of `ids`, with the image tokens replaced (in order) by the
    /// merged vision features of `pixel_values: [n_patches, C·T·P·P]` for the images of `grids`.
    pub fn embed_inputs(
        &self,
        ids: &[u32],
        image_token_id: u32,
        pixel_values: Option<Tensor<B, 2>>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor<B, 3>, QwenError> {
        let device = self.model.embed_tokens.weight.device();
        let vocab = self.model.embed_tokens.weight.dims()[0];
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(QwenError::Input(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let seq = ids.len();
        let idt = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, seq]),
            &device,
        );
        let text = self.model.embed(idt).reshape([seq as i32, -1]); // [seq, hidden]
        let n_img = ids.iter().filter(|&&t| t == image_token_id).count();
        let Some(px) = pixel_values else {
            if n_img > 0 {
                return Err(QwenError::Input(format!(
                    "{n_img} image tokens but no pixel values"
                )));
            }
            return Ok(text.unsqueeze::<3>());
        };
        let feats = self.visual.forward(px, grids)?; // [n_merged, hidden]
        let nf = feats.dims()[0];
        if nf != n_img {
            return Err(QwenError::Input(format!(
                "{n_img} image tokens but the images give {nf} features"
            )));
        }
        // row i of the result: text row i, or feature row k for the k-th image token
        let mut k = 0;
        let idx: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t == image_token_id {
                    k += 1;
                    (seq + k - 1) as i64
                } else {
                    i as i64
                }
            })
            .collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [seq]), &device);
        Ok(Tensor::cat(vec![text, feats], 0)
            .select(0, idx)
            .unsqueeze::<3>()) // [1, seq, hidden]
    }

    /// Decoder outputs `[1, seq, hidden]` (final-normed, before the head) of one image+text sequence.
    pub fn forward_hidden(
        &self,
        c: &QwenConfig,
        ids: &[u32],
        pixel_values: Option<Tensor<B, 2>>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor<B, 3>, QwenError> {
        if ids.is_empty() {
            return Err(QwenError::Input("empty prompt".into()));
        }
        let x = self.embed_inputs(ids, c.image_token_id, pixel_values, grids)?; // [1, seq, hidden]
        let ri = rope_index(ids, c.image_token_id, grids, c.vision.spatial_merge_size)?;
        Ok(self.model.forward(x, &ri.positions, None)) // [1, seq, hidden]
    }

    /// Full forward of one image+text sequence: logits `[seq, vocab]`.
    pub fn forward_logits(
        &self,
        c: &QwenConfig,
        ids: &[u32],
        pixel_values: Option<Tensor<B, 2>>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor<B, 2>, QwenError> {
        let h = self.forward_hidden(c, ids, pixel_values, grids)?; // [1, seq, hidden]
        let seq = ids.len();
        Ok(self.head(h).reshape([seq as i32, -1])) // [seq, vocab]
    }

    /// Greedy decoding with a KV cache: up to `max_new` tokens after the prompt, stopping after any of `eos`.
    pub fn generate_greedy(
        &self,
        c: &QwenConfig,
        ids: &[u32],
        pixel_values: Option<Tensor<B, 2>>,
        grids: &[[usize; 3]],
        max_new: usize,
        eos: &[u32],
    ) -> Result<Vec<u32>, QwenError> {
        let mut argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |a, (i, &x)| {
                    if x > a.1 { (i, x) } else { a }
                })
                .0 as u32
        };
        self.generate_with(c, ids, pixel_values, grids, max_new, eos, &mut argmax)
    }

    /// Sampling at `temperature` (> 0) from the softmax of the logits, with a KV cache; the draws come
    /// from `rng`, so a seeded generator gives the same tokens again.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_sampled(
        &self,
        c: &QwenConfig,
        ids: &[u32],
        pixel_values: Option<Tensor<B, 2>>,
        grids: &[[usize; 3]],
        max_new: usize,
        eos: &[u32],
        temperature: f32,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Vec<u32>, QwenError> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(QwenError::Input(format!(
                "temperature must be positive, got {temperature}"
            )));
        }
        let mut draw = |v: &[f32]| crate::model::generate::sample_token(v, temperature, 1.0, rng);
        self.generate_with(c, ids, pixel_values, grids, max_new, eos, &mut draw)
    }

    /// Decoding with a KV cache, each next token chosen by `pick` from the last logits `[vocab]`.
    #[allow(clippy::too_many_arguments)]
    fn generate_with(
        &self,
        c: &QwenConfig,
        ids: &[u32],
        pixel_values: Option<Tensor<B, 2>>,
        grids: &[[usize; 3]],
        max_new: usize,
        eos: &[u32],
        pick: &mut dyn FnMut(&[f32]) -> u32,
    ) -> Result<Vec<u32>, QwenError> {
        if ids.is_empty() {
            return Err(QwenError::Input("empty prompt".into()));
        }
        let x = self.embed_inputs(ids, c.image_token_id, pixel_values, grids)?;
        let ri = rope_index(ids, c.image_token_id, grids, c.vision.spatial_merge_size)?;
        let mut cache = QwenKvCache::empty();
        let h = self.model.forward(x, &ri.positions, Some(&mut cache)); // [1, seq, hidden]
        let seq = ids.len();
        let mut last = self.head(h.narrow(1, seq - 1, 1)); // [1, 1, vocab]
        let mut out = Vec::new();
        let device = self.model.embed_tokens.weight.device();
        for step in 0..max_new {
            let v: Vec<f32> = last
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| QwenError::Input(format!("{e:?}")))?;
            let next = pick(&v);
            out.push(next);
            if eos.contains(&next) || step + 1 == max_new {
                break;
            }
            let p = (seq + step) as i64 + ri.delta;
            let pos = [vec![p], vec![p], vec![p]];
            let idt =
                Tensor::<B, 2, Int>::from_data(TensorData::new(vec![next as i64], [1, 1]), &device);
            let h = self
                .model
                .forward(self.model.embed(idt), &pos, Some(&mut cache)); // [1, 1, hidden]
            last = self.head(h);
        }
        Ok(out)
    }
}

/// What [`generate_from_dir`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    /// The new tokens decoded, special tokens skipped.
    pub text: String,
}

/// Load a local checkpoint directory, preprocess `image` with its `preprocessor_config.json`, build the
/// chat prompt around `prompt`, tokenize with its `tokenizer.json`, and decode greedily (at most `max_new`
/// tokens) on backend `B`.
pub fn generate_from_dir<B: Backend>(
    dir: &std::path::Path,
    image: &ImageInput,
    prompt: &str,
    max_new: usize,
    device: &B::Device,
) -> Result<Generation, QwenError> {
    let pre = PreprocessConfig::from_dir(dir)?;
    let tok = preprocess::load_tokenizer(dir)?;
    let loaded = load_dir::<B>(dir, device)?;
    let c = &loaded.config;
    if (pre.patch_size, pre.merge_size, pre.temporal_patch_size)
        != (
            c.vision.patch_size,
            c.vision.spatial_merge_size,
            c.vision.temporal_patch_size,
        )
    {
        return Err(QwenError::Config(format!(
            "{}: preprocessor and model disagree on patch/merge/temporal sizes",
            dir.display()
        )));
    }
    let (px, grid) = pre.preprocess(image)?;
    let n = grid.iter().product::<usize>();
    let n_tokens = n / (pre.merge_size * pre.merge_size);
    let ids = preprocess::encode(&tok, &chat_prompt(prompt, n_tokens))?;
    let dim = px.len() / n.max(1);
    let pixels = Tensor::<B, 2>::from_data(TensorData::new(px, [n, dim]), device);
    let new_ids = loaded.model.generate_greedy(
        c,
        &ids,
        Some(pixels),
        &[grid],
        max_new,
        &loaded.eos_token_ids,
    )?;
    let text = tok
        .decode(&new_ids, true)
        .map_err(|e| QwenError::Tokenizer(e.to_string()))?;
    Ok(Generation {
        prompt_ids: ids,
        new_ids,
        text,
    })
}
