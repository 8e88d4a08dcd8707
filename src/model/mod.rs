//! The vision-language model: ViT encoder, projector and decoder-only LM (burn), plus weight-only
//! quantization (`quant`) and LoRA adapters (`lora`).

#[cfg(feature = "parallel")]
pub mod quant;
#[cfg(feature = "model")]
pub mod lora;

#[cfg(feature = "model")]
pub mod generate;
#[cfg(feature = "model")]
pub mod layers;
#[cfg(feature = "model")]
pub mod qwen2vl;
#[cfg(feature = "model")]
pub mod text;
#[cfg(feature = "model")]
pub mod vision;
#[cfg(feature = "model")]
pub mod vlm;
#[cfg(feature = "model")]
pub mod weights;
#[cfg(feature = "model")]
mod config;
#[cfg(feature = "model")]
pub use config::{AUX_OUTPUTS, ModelError, SIZES, VlmConfig};
