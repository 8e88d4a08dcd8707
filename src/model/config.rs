//! The VLM's shape: one config struct, named sizes from `tiny` (tests) to `base` (GPU), validation.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model size {0:?}; the sizes are {sizes}", sizes = SIZES.join(", "))]
    UnknownSize(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("weights {path}: {msg}")]
    Weights { path: String, msg: String },
    #[error("{0}")]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    #[error("{path}: {msg}")]
    Run { path: String, msg: String },
}

/// Names accepted by [`VlmConfig::named`].
pub const SIZES: &[&str] = &["tiny", "mini", "small", "medium", "base"];

/// Every dimension of the model; written as `config.json` next to the weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VlmConfig {
    /// Square input image side in pixels (images are resized to it).
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub vision_mlp: usize,
    /// Side of the patch merge in the projector (2 → 2×2 patches per image token).
    pub merge: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab_size: usize,
    /// Longest sequence (image tokens + prompt + code) the model is trained and run on.
    pub max_seq_len: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    /// Also add a learned projection of the mean image token to every text embedding (`image_cond.*`,
    /// zero-initialised): a direct path from the image to each code position, which the prefix
    /// attention alone learns too slowly on small data (see reports/model-sft-cpu.md). Older
    /// checkpoints lack the field and the weights (false).
    #[serde(default)]
    pub image_cond: bool,
    /// Outputs of the auxiliary shape head `aux_head` (a linear map of the mean image token to the
    /// part's shape descriptors, [`AUX_OUTPUTS`] of them; see `train::sft::shape_targets`), trained
    /// with `sft.aux_weight` so that the image encoding carries the part's proportions; 0 = no head.
    /// Older checkpoints lack the field and the weights (0).
    #[serde(default)]
    pub aux_outputs: usize,
}

/// Shape descriptors the auxiliary head of the named sizes regresses.
pub const AUX_OUTPUTS: usize = 8;

impl VlmConfig {
    /// A named size with the given vocabulary size.
    pub fn named(name: &str, vocab_size: usize) -> Result<Self, ModelError> {
        // (image, patch, v_hidden, v_layers, v_heads, hidden, layers, heads, kv_heads, inter, max_seq)
        let s = match name {
            "tiny" => (32, 8, 32, 1, 2, 64, 2, 4, 2, 128, 512),
            "mini" => (64, 8, 64, 2, 2, 128, 3, 4, 2, 384, 640),
            "small" => (128, 16, 128, 2, 4, 192, 4, 6, 2, 512, 768),
            "medium" => (224, 16, 256, 4, 4, 384, 8, 6, 2, 1024, 1024),
            "base" => (224, 14, 384, 6, 6, 768, 12, 12, 4, 2048, 1024),
            _ => return Err(ModelError::UnknownSize(name.to_string())),
        };
        let c = VlmConfig {
            image_size: s.0,
            patch_size: s.1,
            vision_hidden: s.2,
            vision_layers: s.3,
            vision_heads: s.4,
            vision_mlp: 4 * s.2,
            merge: 2,
            hidden: s.5,
            layers: s.6,
            heads: s.7,
            kv_heads: s.8,
            intermediate: s.9,
            vocab_size,
            max_seq_len: s.10,
            rope_theta: 10000.0,
            rms_eps: 1e-6,
            image_cond: true,
            aux_outputs: AUX_OUTPUTS,
        };
        c.validate()?;
        Ok(c)
    }

    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Image tokens the decoder sees (patches / merge²).
    pub fn n_image_tokens(&self) -> usize {
        (self.grid() / self.merge).pow(2)
    }

    /// Values per patch (3 channels × patch²).
    pub fn patch_dim(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let e = |m: String| Err(ModelError::Config(m));
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return e(format!(
                "image_size {} must be a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.merge == 0 || self.grid() % self.merge != 0 {
            return e(format!(
                "patches per side {} must be a multiple of merge {}",
                self.grid(),
                self.merge
            ));
        }
        if self.vision_heads == 0 || self.vision_hidden % self.vision_heads != 0 {
            return e(format!(
                "vision_hidden {} must be a multiple of vision_heads {}",
                self.vision_hidden, self.vision_heads
            ));
        }
        if self.heads == 0 || self.hidden % self.heads != 0 || self.head_dim() % 2 != 0 {
            return e(format!(
                "hidden {} must be a multiple of heads {} with an even head dim",
                self.hidden, self.heads
            ));
        }
        if self.kv_heads == 0 || self.heads % self.kv_heads != 0 {
            return e(format!(
                "heads {} must be a multiple of kv_heads {}",
                self.heads, self.kv_heads
            ));
        }
        if self.vocab_size < 8 {
            return e(format!("vocab_size {} is too small", self.vocab_size));
        }
        if self.max_seq_len <= self.n_image_tokens() + 2 {
            return e(format!(
                "max_seq_len {} leaves no room after {} image tokens",
                self.max_seq_len,
                self.n_image_tokens()
            ));
        }
        Ok(())
    }
}
