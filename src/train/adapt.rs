//! Parameter-efficient training of the VLM: `[model] quantize` and `[lora]` of a recipe.
//!
//! [`Adaptation::prepare`] turns a built (and loaded) model into a LoRA / QLoRA student: every
//! parameter is frozen, the base of every linear layer except `lm_head` and `image_cond` is quantized (int8 / int4 /
//! NF4), and adapters are attached to the targets — the only parameters with gradients, so the
//! optimizer updates nothing else. SFT and DPO checkpoints then hold the f32 parameters that remain
//! (embeddings, norms, biases, unquantized bases) and the adapters; on resume the base is rebuilt the
//! same way (same file, same deterministic quantization) before the checkpoint is loaded.
//!
//! [`Adaptation::export`] makes the final model a plain f32 checkpoint (quantized bases dequantized,
//! adapters merged in and dropped), so `model.safetensors` loads as any other model and
//! `cadvlm eval --run` needs nothing new; the adapters alone are also written as
//! `adapters.safetensors` (PEFT-style keys).

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::model::VlmConfig;
use crate::model::lora::{
    LoraConfig, LoraError, apply_lora, merge_and_unload, quantize_linears, save_adapters,
};
use crate::model::quant::Quantize;
use crate::model::vlm::{Vlm, linear_paths};

/// Linear layers whose base stays f32 when the model is quantized: the output projection (its
/// quantization error reaches the logits directly, as in QLoRA, which keeps it in 16 bits) and the
/// small `hidden × hidden` image-condition projection and the auxiliary shape head.
pub const KEEP_F32: &[&str] = &["lm_head", "image_cond", "aux_head"];

/// How the model is trained: full fine-tuning (the default), LoRA on an f32 base, or QLoRA
/// (LoRA on a quantized base).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Adaptation {
    pub quantize: Quantize,
    /// `None` (or rank 0): no adapters.
    pub lora: Option<LoraConfig>,
}

impl Adaptation {
    /// Whether every parameter trains (no adapters, no quantized base).
    pub fn is_full(&self) -> bool {
        self.lora_cfg().is_none() && self.quantize == Quantize::None
    }

    /// The adapter settings when adapters are attached (rank > 0).
    pub fn lora_cfg(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().filter(|l| l.rank > 0)
    }

    /// Whether both train the same way (`[lora] rank = 0` is the same as no `[lora]`).
    pub fn same_training(&self, other: &Adaptation) -> bool {
        self.quantize == other.quantize && self.lora_cfg() == other.lora_cfg()
    }

    /// Every check that can fail before work starts, for a model of config `c`; the messages name
    /// the recipe fields and say how to fix them.
    pub fn validate(&self, c: &VlmConfig) -> Result<(), String> {
        self.validate_for(&linear_paths(c))
    }

    /// [`Adaptation::validate`] for a model whose linear layers are `paths` (e.g. a Qwen checkpoint's).
    pub fn validate_for(&self, paths: &[String]) -> Result<(), String> {
        if let Some(l) = &self.lora {
            l.validate().map_err(|e| match e {
                LoraError::Config(m) => format!("lora.{m}"),
                e => e.to_string(),
            })?;
        }
        match self.lora_cfg() {
            None if self.quantize != Quantize::None => Err(format!(
                "model.quantize = {:?} freezes the linear layers, so nothing would train; add a [lora] section with rank > 0 (QLoRA), or set model.quantize = \"none\"",
                quantize_name(self.quantize)
            )),
            None => Ok(()),
            Some(l) => {
                for t in &l.targets {
                    let one = LoraConfig {
                        targets: vec![t.clone()],
                        ..l.clone()
                    };
                    if !paths.iter().any(|p| one.matches(p)) {
                        return Err(format!(
                            "lora.targets: {t:?} matches no linear layer; use \"all-linear\" or layer names such as q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, qkv, proj, fc1, fc2, lm_head"
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Freezes `model`, quantizes its linear bases (all but [`KEEP_F32`]) and attaches the adapters.
    /// Full fine-tuning returns the model unchanged.
    pub fn prepare<B: Backend>(
        &self,
        model: Vlm<B>,
        device: &B::Device,
    ) -> Result<Vlm<B>, LoraError> {
        if self.is_full() {
            return Ok(model);
        }
        let mut model = model.no_grad();
        quantize_linears(&mut model, self.quantize, |p| !KEEP_F32.contains(&p))?;
        if let Some(l) = self.lora_cfg() {
            apply_lora(&mut model, l, device)?;
        }
        Ok(model)
    }

    /// Writes `adapters.safetensors` into `dir` (when there are adapters) and returns the model as a
    /// plain f32 model (see the module doc).
    pub fn export<B: Backend>(
        &self,
        model: Vlm<B>,
        dir: &Path,
        device: &B::Device,
    ) -> Result<Vlm<B>, LoraError> {
        if self.is_full() {
            return Ok(model);
        }
        let mut model = model;
        if let Some(l) = self.lora_cfg() {
            save_adapters(&mut model, l, &dir.join("adapters.safetensors"))?;
        }
        merge_and_unload(&mut model, device)?;
        Ok(model)
    }
}

fn quantize_name(q: Quantize) -> &'static str {
    match q {
        Quantize::None => "none",
        Quantize::Int8 => "int8",
        Quantize::Int4 => "int4",
        Quantize::Nf4 => "nf4",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field_and_the_fix() {
        let c = VlmConfig::named("tiny", 300).unwrap();
        assert!(Adaptation::default().validate(&c).is_ok());
        let q = Adaptation {
            quantize: Quantize::Nf4,
            lora: None,
        };
        let e = q.validate(&c).unwrap_err();
        assert!(e.contains("model.quantize") && e.contains("[lora]"), "{e}");
        let ok = Adaptation {
            quantize: Quantize::Nf4,
            lora: Some(LoraConfig::default()),
        };
        assert!(ok.validate(&c).is_ok());
        let bad = Adaptation {
            lora: Some(LoraConfig {
                targets: vec!["qproj".into()],
                ..LoraConfig::default()
            }),
            ..ok.clone()
        };
        let e = bad.validate(&c).unwrap_err();
        assert!(e.contains("lora.targets") && e.contains("qproj"), "{e}");
        let bad = Adaptation {
            lora: Some(LoraConfig {
                dropout: 1.5,
                ..LoraConfig::default()
            }),
            ..ok.clone()
        };
        let e = bad.validate(&c).unwrap_err();
        assert!(e.starts_with("lora.dropout"), "{e}");
        // rank 0 means no adapters: fine with an f32 base, refused with a quantized one
        let r0 = Adaptation {
            quantize: Quantize::None,
            lora: Some(LoraConfig {
                rank: 0,
                ..LoraConfig::default()
            }),
        };
        assert!(r0.validate(&c).is_ok() && r0.is_full());
        assert!(
            r0.same_training(&Adaptation::default()) && !ok.same_training(&Adaptation::default())
        );
        assert!(
            Adaptation {
                quantize: Quantize::Int8,
                ..r0
            }
            .validate(&c)
            .is_err()
        );
    }
}
