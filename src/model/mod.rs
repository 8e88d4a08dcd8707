//! The vision-language model: ViT encoder, projector and decoder-only LM (burn), plus weight-only
//! quantization (`quant`) and LoRA adapters (`lora`).

#[cfg(feature = "parallel")]
pub mod quant;
