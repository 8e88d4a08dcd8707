//! Models: the small prefix-LM VLM (ViT encoder, projector, Qwen2-style decoder; `vlm`), Qwen2-VL /
//! Qwen2.5-VL (`qwen2vl`), the code tokenizer, weight-only quantization (`quant`), LoRA adapters
//! (`lora`), safetensors I/O keyed by module path (`weights`) and generation. No training, no
//! evaluation: those layers sit above and import from here.

#[cfg(feature = "model")]
pub mod lora;
#[cfg(feature = "parallel")]
pub mod quant;

#[cfg(feature = "model")]
mod config;
#[cfg(feature = "model")]
pub mod generate;
#[cfg(feature = "model")]
pub mod inputs;
#[cfg(feature = "model")]
pub mod layers;
#[cfg(feature = "model")]
pub mod qwen2vl;
#[cfg(feature = "model")]
pub mod run_dir;
#[cfg(feature = "model")]
pub mod text;
#[cfg(feature = "model")]
pub mod tokenizer;
#[cfg(feature = "model")]
pub mod vision;
#[cfg(feature = "model")]
pub mod vlm;
#[cfg(feature = "model")]
pub mod weights;
#[cfg(feature = "model")]
pub use config::{AUX_OUTPUTS, ModelError, SIZES, VlmConfig};
