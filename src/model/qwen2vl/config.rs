//! `config.json` of a Hugging Face Qwen2-VL / Qwen2.5-VL checkpoint, read leniently: text fields are taken
//! from `text_config` when present (newer `transformers`) and from the top level otherwise (Hub files).

use serde_json::Value;

use super::QwenError;

/// Which architecture: they differ only in the vision tower (and the config keys describing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `qwen2_vl`: LayerNorm + QuickGELU MLP blocks, full attention per image.
    Qwen2Vl,
    /// `qwen2_5_vl`: RMSNorm + SwiGLU blocks, window attention except in `fullatt_block_indexes`.
    Qwen25Vl,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    /// Width of the vision blocks (`embed_dim` in Qwen2-VL, `hidden_size` in Qwen2.5-VL).
    pub embed_dim: usize,
    pub num_heads: usize,
    /// Hidden width of the block MLP (`embed_dim * mlp_ratio` or `intermediate_size`).
    pub mlp_hidden: usize,
    /// Output width of the merger (the language model's hidden size).
    pub out_hidden: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Qwen2.5-VL window side in pixels (112).
    pub window_size: usize,
    /// Qwen2.5-VL blocks with full attention; empty for Qwen2-VL.
    pub fullatt_block_indexes: Vec<usize>,
    pub hidden_act: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QwenConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    /// Rotary frequencies per axis (temporal, height, width); sums to `head_dim / 2`.
    pub mrope_section: [usize; 3],
    pub tie_word_embeddings: bool,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    pub eos_token_id: Option<u32>,
    pub vision: VisionConfig,
}

fn cfg_err(msg: impl Into<String>) -> QwenError {
    QwenError::Config(msg.into())
}

/// The field `key` of `text_config`, else of the top level.
fn text_field<'a>(root: &'a Value, key: &str) -> Option<&'a Value> {
    root.get("text_config")
        .and_then(|t| t.get(key))
        .filter(|v| !v.is_null())
        .or_else(|| root.get(key).filter(|v| !v.is_null()))
}

fn usize_of(v: Option<&Value>, key: &str) -> Result<usize, QwenError> {
    v.and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| cfg_err(format!("missing or non-integer field {key:?}")))
}

fn f64_of(v: Option<&Value>, key: &str) -> Result<f64, QwenError> {
    v.and_then(Value::as_f64)
        .ok_or_else(|| cfg_err(format!("missing or non-numeric field {key:?}")))
}

impl QwenConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Parse the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self, QwenError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| cfg_err(format!("not JSON: {e}")))?;
        let model_type = root.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match model_type {
            "qwen2_vl" => Arch::Qwen2Vl,
            "qwen2_5_vl" => Arch::Qwen25Vl,
            other => {
                return Err(cfg_err(format!(
                    "model_type {other:?} is not qwen2_vl or qwen2_5_vl"
                )));
            }
        };
        let t = |k: &str| usize_of(text_field(&root, k), k);
        let hidden = t("hidden_size")?;
        let heads = t("num_attention_heads")?;
        let kv_heads = usize_of(
            text_field(&root, "num_key_value_heads"),
            "num_key_value_heads",
        )
        .unwrap_or(heads);
        let rope_scaling =
            text_field(&root, "rope_scaling").or_else(|| text_field(&root, "rope_parameters"));
        let sec: Vec<usize> = rope_scaling
            .and_then(|r| r.get("mrope_section"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as usize)
                    .collect()
            })
            .ok_or_else(|| cfg_err("missing rope_scaling.mrope_section"))?;
        if sec.len() != 3
            || heads == 0
            || hidden % heads != 0
            || sec.iter().sum::<usize>() * 2 != hidden / heads
        {
            return Err(cfg_err(format!(
                "mrope_section {sec:?} must be 3 numbers summing to head_dim/2 ({})",
                hidden / heads.max(1) / 2
            )));
        }
        let rope_theta = f64_of(
            text_field(&root, "rope_theta")
                .or_else(|| rope_scaling.and_then(|r| r.get("rope_theta"))),
            "rope_theta",
        )?;
        let id = |k: &str| -> Result<u32, QwenError> {
            text_field(&root, k)
                .and_then(Value::as_u64)
                .map(|x| x as u32)
                .ok_or_else(|| cfg_err(format!("missing field {k:?}")))
        };
        let eos_token_id = text_field(&root, "eos_token_id")
            .and_then(|v| v.as_u64().or_else(|| v.as_array()?.first()?.as_u64()))
            .map(|x| x as u32);

        let v = root
            .get("vision_config")
            .ok_or_else(|| cfg_err("missing vision_config"))?;
        let vu = |k: &str| usize_of(v.get(k), &format!("vision_config.{k}"));
        // transformers' defaults where a Hub file leaves a field out
        let vd = |k: &str, d: usize| {
            if v.get(k).is_some_and(|x| !x.is_null()) {
                vu(k)
            } else {
                Ok(d)
            }
        };
        let in_channels = vu("in_channels")
            .or_else(|_| vu("in_chans"))
            .or_else(|_| vd("in_channels", 3))?;
        let patch_size = vu("patch_size")
            .or_else(|_| vu("spatial_patch_size"))
            .or_else(|_| vd("patch_size", 14))?;
        let temporal_patch_size = vd("temporal_patch_size", 2)?;
        let spatial_merge_size = vd("spatial_merge_size", 2)?;
        let vision = match arch {
            Arch::Qwen2Vl => {
                let embed_dim = vu("embed_dim")?;
                let ratio = f64_of(v.get("mlp_ratio"), "vision_config.mlp_ratio")?;
                VisionConfig {
                    depth: vu("depth")?,
                    embed_dim,
                    num_heads: vu("num_heads")?,
                    mlp_hidden: (embed_dim as f64 * ratio) as usize,
                    out_hidden: vu("hidden_size")?,
                    in_channels,
                    patch_size,
                    temporal_patch_size,
                    spatial_merge_size,
                    window_size: 0,
                    fullatt_block_indexes: Vec::new(),
                    hidden_act: v
                        .get("hidden_act")
                        .and_then(Value::as_str)
                        .unwrap_or("quick_gelu")
                        .to_string(),
                }
            }
            Arch::Qwen25Vl => VisionConfig {
                depth: vu("depth")?,
                embed_dim: vu("hidden_size")?,
                num_heads: vu("num_heads")?,
                mlp_hidden: vu("intermediate_size")?,
                out_hidden: vu("out_hidden_size")?,
                in_channels,
                patch_size,
                temporal_patch_size,
                spatial_merge_size,
                window_size: vd("window_size", 112)?,
                fullatt_block_indexes: v
                    .get("fullatt_block_indexes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_u64)
                            .map(|x| x as usize)
                            .collect()
                    })
                    .unwrap_or_default(),
                hidden_act: v
                    .get("hidden_act")
                    .and_then(Value::as_str)
                    .unwrap_or("silu")
                    .to_string(),
            },
        };
        if vision.num_heads == 0
            || vision.embed_dim % vision.num_heads != 0
            || (vision.embed_dim / vision.num_heads) % 4 != 0
        {
            return Err(cfg_err(
                "vision head_dim must divide embed_dim and be a multiple of 4 (2D rotary)",
            ));
        }
        if vision.spatial_merge_size == 0
            || vision.patch_size == 0
            || vision.temporal_patch_size == 0
        {
            return Err(cfg_err(
                "vision patch_size, temporal_patch_size and spatial_merge_size must be positive",
            ));
        }
        let c = QwenConfig {
            arch,
            vocab_size: t("vocab_size")?,
            hidden,
            layers: t("num_hidden_layers")?,
            heads,
            kv_heads,
            intermediate: t("intermediate_size")?,
            rms_eps: f64_of(text_field(&root, "rms_norm_eps"), "rms_norm_eps")?,
            rope_theta,
            mrope_section: [sec[0], sec[1], sec[2]],
            tie_word_embeddings: text_field(&root, "tie_word_embeddings")
                .and_then(Value::as_bool)
                .or_else(|| root.get("tie_word_embeddings").and_then(Value::as_bool))
                .unwrap_or(false),
            image_token_id: id("image_token_id")?,
            video_token_id: id("video_token_id").unwrap_or(0),
            vision_start_token_id: id("vision_start_token_id")?,
            vision_end_token_id: id("vision_end_token_id").unwrap_or(0),
            eos_token_id,
            vision,
        };
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(cfg_err(
                "num_attention_heads must be a multiple of num_key_value_heads",
            ));
        }
        Ok(c)
    }

    /// Qwen2.5-VL-3B-Instruct's published shape (for the memory estimate; no file needed).
    pub fn qwen2_5_vl_3b() -> Self {
        QwenConfig {
            arch: Arch::Qwen25Vl,
            vocab_size: 151_936,
            hidden: 2048,
            layers: 36,
            heads: 16,
            kv_heads: 2,
            intermediate: 11_008,
            rms_eps: 1e-6,
            rope_theta: 1_000_000.0,
            mrope_section: [16, 24, 24],
            tie_word_embeddings: true,
            image_token_id: 151_655,
            video_token_id: 151_656,
            vision_start_token_id: 151_652,
            vision_end_token_id: 151_653,
            eos_token_id: Some(151_645),
            vision: VisionConfig {
                depth: 32,
                embed_dim: 1280,
                num_heads: 16,
                mlp_hidden: 3420,
                out_hidden: 2048,
                in_channels: 3,
                patch_size: 14,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                window_size: 112,
                fullatt_block_indexes: vec![7, 15, 23, 31],
                hidden_act: "silu".to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flat layout of the Hub's `Qwen/Qwen2.5-VL-3B-Instruct/config.json` (fields as published).
    const HUB_3B: &str = r#"{
      "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
      "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
      "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
      "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 128000,
      "max_window_layers": 70, "model_type": "qwen2_5_vl", "num_attention_heads": 16, "num_hidden_layers": 36,
      "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
      "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": true,
      "use_sliding_window": false,
      "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
        "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
        "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2, "temporal_patch_size": 2},
      "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 151936
    }"#;

    #[test]
    fn hub_layout_config_parses_to_the_3b_shape() {
        assert_eq!(
            QwenConfig::from_json(HUB_3B).unwrap(),
            QwenConfig::qwen2_5_vl_3b()
        );
    }

    #[test]
    fn bad_configs_are_errors_not_panics() {
        assert!(QwenConfig::from_json("{").is_err());
        assert!(QwenConfig::from_json(r#"{"model_type": "llama"}"#).is_err());
        let bad = HUB_3B.replace("[16, 24, 24]", "[16, 24]");
        assert!(
            QwenConfig::from_json(&bad)
                .unwrap_err()
                .to_string()
                .contains("mrope_section")
        );
        let bad = HUB_3B.replace(r#""num_key_value_heads": 2"#, r#""num_key_value_heads": 3"#);
        assert!(QwenConfig::from_json(&bad).is_err());
        let bad = HUB_3B.replace(r#""num_heads": 16"#, r#""num_heads": 0"#);
        assert!(QwenConfig::from_json(&bad).is_err());
    }
}
