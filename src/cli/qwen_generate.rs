//! `cadvlm qwen-generate`: greedy generation with a local Qwen2-VL / Qwen2.5-VL checkpoint for one image.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::model::qwen2vl::{ImageInput, generate_from_dir};

#[derive(Args)]
pub struct QwenGenerateArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json, preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Image file (PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// User prompt after the image (default: the GenCAD-Code prompt).
    #[arg(long)]
    pub prompt: Option<String>,
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
}

pub fn run(a: QwenGenerateArgs) -> Result<()> {
    let img = ImageInput::open(&a.image)?;
    let prompt = a
        .prompt
        .unwrap_or_else(|| crate::data::GENCAD_PROMPT.to_string());
    let g = generate_from_dir::<burn::backend::NdArray<f32>>(
        &a.model,
        &img,
        &prompt,
        a.max_new_tokens,
        &Default::default(),
    )?;
    println!("{}", g.text);
    Ok(())
}
