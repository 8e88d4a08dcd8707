//! Loading a local Hugging Face Qwen2-VL / Qwen2.5-VL directory: `config.json`, `model.safetensors` or
//! the shards listed in `model.safetensors.index.json`, with the original weight names (`visual.*`,
//! `model.*`, `lm_head.weight`; the `model.language_model.*` / `model.visual.*` spelling of newer
//! `transformers` is accepted too). Every missing, misshapen or unexpected tensor is named in the error,
//! and a memory estimate is printed before the weights are read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::Dtype;

use super::config::{Arch, QwenConfig};
use super::memory::{WeightFormat, estimate_memory};
use super::nn::{QLayerNorm, QLinear, QRmsNorm};
use super::text::{QEmbedding, QwenTextModel, TextAttention, TextLayer, TextMlp};
use super::vision::{
    PatchMerger, QwenVision, VisionAttention, VisionBlock, VisionMlp, VisionNorm, act_code,
};
use super::{QwenError, QwenVl};

/// Tensors by name: (shape, values widened to f32).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A loaded checkpoint.
#[derive(Debug)]
pub struct LoadedQwen<B: Backend> {
    pub config: QwenConfig,
    pub model: QwenVl<B>,
    /// End-of-sequence ids: `config.json`'s and `generation_config.json`'s (the Hub's instruct models list
    /// `<|im_end|>` and `<|endoftext|>` there).
    pub eos_token_ids: Vec<u32>,
}

/// `config.eos_token_id` plus `dir/generation_config.json`'s `eos_token_id` (a number or a list), when present.
pub fn eos_token_ids(dir: &Path, config: &QwenConfig) -> Result<Vec<u32>, QwenError> {
    let mut ids: Vec<u32> = config.eos_token_id.into_iter().collect();
    let p = dir.join("generation_config.json");
    if p.is_file() {
        let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| io_err(&p, e))?;
        match v.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => {
                ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
            }
            Some(x) => ids.extend(x.as_u64().map(|x| x as u32)),
            None => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn io_err(path: &Path, msg: impl std::fmt::Display) -> QwenError {
    QwenError::Io {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Read and parse `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<QwenConfig, QwenError> {
    if !dir.is_dir() {
        return Err(io_err(
            dir,
            "no such model directory (a local Hugging Face checkpoint is expected)",
        ));
    }
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
    QwenConfig::from_json(&text).map_err(|e| io_err(&p, e))
}

/// The safetensors files of `dir`: the shards of the index when there is one, else `model.safetensors`,
/// else every `*.safetensors`.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, QwenError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| io_err(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| io_err(&index, "no weight_map object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        let paths: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(io_err(
                missing,
                format!("shard listed in {} is missing", index.display()),
            ));
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    all.sort();
    if all.is_empty() {
        return Err(io_err(
            &single,
            "no model.safetensors, model.safetensors.index.json or *.safetensors in the directory",
        ));
    }
    Ok(all)
}

/// The original (Hub) name of a key in either spelling.
pub fn canonical_key(k: &str) -> String {
    if let Some(rest) = k.strip_prefix("model.language_model.") {
        format!("model.{rest}")
    } else if let Some(rest) = k.strip_prefix("model.visual.") {
        format!("visual.{rest}")
    } else {
        k.to_string()
    }
}

/// Every tensor of the files (F32, BF16, F16 → f32), by canonical name.
pub fn read_tensors(files: &[PathBuf]) -> Result<TensorMap, QwenError> {
    let mut out = BTreeMap::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io_err(path, e))?;
        for (name, view) in st.tensors() {
            let d = view.data();
            let v: Vec<f32> = match view.dtype() {
                Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::BF16 => d
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect(),
                Dtype::F16 => d
                    .chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                other => {
                    return Err(io_err(
                        path,
                        format!("tensor {name}: dtype {other:?} is not supported (F32, BF16, F16)"),
                    ));
                }
            };
            out.insert(canonical_key(&name), (view.shape().to_vec(), v));
        }
    }
    Ok(out)
}

fn f16_to_f32(h: u16) -> f32 {
    let s = ((h >> 15) & 1) as u32;
    let e = ((h >> 10) & 0x1f) as i32;
    let m = (h & 0x3ff) as u32;
    let sign = if s == 1 { -1.0 } else { 1.0 };
    match e {
        0 => sign * (m as f32) * 2f32.powi(-24),
        31 => {
            if m == 0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => f32::from_bits((s << 31) | (((e - 15 + 127) as u32) << 23) | (m << 13)),
    }
}

/// Hands out tensors by name, recording what is missing, misshapen and left over.
pub struct TensorStore<'a, B: Backend> {
    map: TensorMap,
    used: BTreeSet<String>,
    errors: Vec<String>,
    device: &'a B::Device,
}

impl<'a, B: Backend> TensorStore<'a, B> {
    pub fn new(map: TensorMap, device: &'a B::Device) -> Self {
        TensorStore {
            map,
            used: BTreeSet::new(),
            errors: Vec::new(),
            device,
        }
    }

    /// The tensor `key` with `shape` (any checkpoint shape of the same leading dim and element count is
    /// accepted when `flatten`, for the Conv3d patch embedding). Zeros stand in for a missing one.
    fn get<const D: usize>(&mut self, key: &str, shape: [usize; D], flatten: bool) -> Tensor<B, D> {
        match self.map.remove(key) {
            None => self
                .errors
                .push(format!("missing tensor {key} (shape {shape:?})")),
            Some((s, v)) => {
                let ok = s.as_slice() == shape.as_slice()
                    || (flatten
                        && s.first() == shape.first()
                        && s.iter().product::<usize>() == shape.iter().product::<usize>());
                self.used.insert(key.to_string());
                if ok {
                    return Tensor::from_data(TensorData::new(v, shape), self.device);
                }
                self.errors.push(format!(
                    "tensor {key} has shape {s:?}, the config wants {shape:?}"
                ));
            }
        }
        Tensor::zeros(shape, self.device)
    }

    fn lin(&mut self, p: &str, d_in: usize, d_out: usize, bias: bool) -> QLinear<B> {
        let w = self.get(&format!("{p}.weight"), [d_out, d_in], false);
        let b = bias.then(|| self.get(&format!("{p}.bias"), [d_out], false));
        QLinear::from_tensors(w, b)
    }

    fn rms(&mut self, p: &str, d: usize, eps: f64) -> QRmsNorm<B> {
        QRmsNorm::from_tensor(self.get(&format!("{p}.weight"), [d], false), eps)
    }

    fn ln(&mut self, p: &str, d: usize, eps: f64) -> QLayerNorm<B> {
        QLayerNorm::from_tensors(
            self.get(&format!("{p}.weight"), [d], false),
            self.get(&format!("{p}.bias"), [d], false),
            eps,
        )
    }

    /// Every problem so far plus every tensor never asked for (except `ignore`d ones).
    fn finish(self, ignore: &dyn Fn(&str) -> bool) -> Result<(), String> {
        let mut errs = self.errors;
        errs.extend(
            self.map
                .keys()
                .filter(|k| !ignore(k))
                .map(|k| format!("unexpected tensor {k}")),
        );
        if errs.is_empty() {
            return Ok(());
        }
        let n = errs.len();
        let shown: Vec<String> = errs.into_iter().take(20).collect();
        Err(format!(
            "{n} problem(s): {}{}",
            shown.join("; "),
            if n > 20 { "; …" } else { "" }
        ))
    }
}

/// Build the model from named tensors (canonical names); the error lists every missing, misshapen and
/// unexpected tensor.
pub fn build_model<B: Backend>(
    c: &QwenConfig,
    tensors: TensorMap,
    device: &B::Device,
) -> Result<QwenVl<B>, String> {
    let mut s = TensorStore::<B>::new(tensors, device);
    let v = &c.vision;
    let e = v.embed_dim;
    let act = act_code(&v.hidden_act).map_err(|e| e.to_string())?;
    let patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
    let patch_embed =
        Param::from_tensor(s.get("visual.patch_embed.proj.weight", [e, patch_dim], true));
    let norm = |s: &mut TensorStore<B>, p: &str, d: usize| match c.arch {
        Arch::Qwen2Vl => VisionNorm {
            ln: Some(s.ln(p, d, 1e-6)),
            rms: None,
        },
        Arch::Qwen25Vl => VisionNorm {
            ln: None,
            rms: Some(s.rms(p, d, 1e-6)),
        },
    };
    let blocks = (0..v.depth)
        .map(|i| {
            let p = format!("visual.blocks.{i}");
            let mlp = match c.arch {
                Arch::Qwen2Vl => VisionMlp {
                    gate_proj: None,
                    up_proj: s.lin(&format!("{p}.mlp.fc1"), e, v.mlp_hidden, true),
                    down_proj: s.lin(&format!("{p}.mlp.fc2"), v.mlp_hidden, e, true),
                    act,
                },
                Arch::Qwen25Vl => VisionMlp {
                    gate_proj: Some(s.lin(&format!("{p}.mlp.gate_proj"), e, v.mlp_hidden, true)),
                    up_proj: s.lin(&format!("{p}.mlp.up_proj"), e, v.mlp_hidden, true),
                    down_proj: s.lin(&format!("{p}.mlp.down_proj"), v.mlp_hidden, e, true),
                    act,
                },
            };
            VisionBlock {
                norm1: norm(&mut s, &format!("{p}.norm1"), e),
                attn: VisionAttention {
                    qkv: s.lin(&format!("{p}.attn.qkv"), e, 3 * e, true),
                    proj: s.lin(&format!("{p}.attn.proj"), e, e, true),
                    heads: v.num_heads,
                },
                norm2: norm(&mut s, &format!("{p}.norm2"), e),
                mlp,
            }
        })
        .collect();
    let unit = v.spatial_merge_size * v.spatial_merge_size;
    let merger = PatchMerger {
        ln_q: norm(&mut s, "visual.merger.ln_q", e),
        fc1: s.lin("visual.merger.mlp.0", e * unit, e * unit, true),
        fc2: s.lin("visual.merger.mlp.2", e * unit, v.out_hidden, true),
    };
    let visual = QwenVision {
        patch_embed,
        blocks,
        merger,
        merge: v.spatial_merge_size,
        patch_size: v.patch_size,
        window_size: if c.arch == Arch::Qwen25Vl {
            v.window_size
        } else {
            0
        },
        fullatt_block_indexes: v.fullatt_block_indexes.clone(),
        rope_theta: 10_000.0,
    };
    let (h, hd) = (c.hidden, c.head_dim());
    let layers = (0..c.layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            TextLayer {
                input_layernorm: s.rms(&format!("{p}.input_layernorm"), h, c.rms_eps),
                self_attn: TextAttention {
                    q_proj: s.lin(&format!("{p}.self_attn.q_proj"), h, c.heads * hd, true),
                    k_proj: s.lin(&format!("{p}.self_attn.k_proj"), h, c.kv_heads * hd, true),
                    v_proj: s.lin(&format!("{p}.self_attn.v_proj"), h, c.kv_heads * hd, true),
                    o_proj: s.lin(&format!("{p}.self_attn.o_proj"), c.heads * hd, h, false),
                    heads: c.heads,
                    kv_heads: c.kv_heads,
                },
                post_attention_layernorm: s.rms(
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    c.rms_eps,
                ),
                mlp: TextMlp {
                    gate_proj: s.lin(&format!("{p}.mlp.gate_proj"), h, c.intermediate, false),
                    up_proj: s.lin(&format!("{p}.mlp.up_proj"), h, c.intermediate, false),
                    down_proj: s.lin(&format!("{p}.mlp.down_proj"), c.intermediate, h, false),
                },
            }
        })
        .collect();
    let model = QwenTextModel {
        embed_tokens: QEmbedding {
            weight: Param::from_tensor(s.get(
                "model.embed_tokens.weight",
                [c.vocab_size, h],
                false,
            )),
        },
        layers,
        norm: s.rms("model.norm", h, c.rms_eps),
        rope_theta: c.rope_theta,
        mrope_section: c.mrope_section.to_vec(),
    };
    let lm_head = (!c.tie_word_embeddings).then(|| s.lin("lm_head", h, c.vocab_size, false));
    let tied = c.tie_word_embeddings;
    // a tied checkpoint may still carry lm_head.weight; rotary buffers are not weights
    s.finish(&|k: &str| (tied && k == "lm_head.weight") || k.ends_with("rotary_emb.inv_freq"))?;
    Ok(QwenVl {
        visual,
        model,
        lm_head,
    })
}

/// Load `dir` (config, weights) onto `device`, printing the memory estimate (f32 weights, inference of
/// one 1024-token sequence) to stderr before the weights are read.
pub fn load_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<LoadedQwen<B>, QwenError> {
    let config = read_config(dir)?;
    let files = shard_files(dir)?;
    eprintln!(
        "{}: {}",
        dir.display(),
        estimate_memory(&config, WeightFormat::F32, 0, 1, 1024, false).summary()
    );
    let tensors = read_tensors(&files)?;
    let model = build_model::<B>(&config, tensors, device).map_err(|msg| QwenError::Weights {
        dir: dir.display().to_string(),
        msg,
    })?;
    let eos_token_ids = eos_token_ids(dir, &config)?;
    Ok(LoadedQwen {
        config,
        model,
        eos_token_ids,
    })
}
