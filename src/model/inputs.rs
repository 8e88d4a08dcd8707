//! The small VLM's inputs for samples: the prompt prefix tokens and the image patches.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::VlmConfig;
use super::tokenizer::{CodeTokenizer, TokenizerError};
use super::vision::image_to_patches;
use crate::data::Sample;

/// Prompt tokens followed by `<|begin|>`.
pub fn prefix_tokens(tok: &CodeTokenizer, prompt: &str) -> Result<Vec<u32>, TokenizerError> {
    let mut p = tok.encode(prompt)?;
    p.push(tok.begin);
    Ok(p)
}

/// Patches of a batch of samples: `[batch, n_patches, patch_dim]`.
pub fn patches_tensor<B: Backend>(
    samples: &[&Sample],
    c: &VlmConfig,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut v = Vec::with_capacity(samples.len() * c.grid() * c.grid() * c.patch_dim());
    for s in samples {
        v.extend(image_to_patches(&s.rgb, s.width, s.height, c));
    }
    Tensor::from_data(
        TensorData::new(v, [samples.len(), c.grid() * c.grid(), c.patch_dim()]),
        device,
    ) // [batch, n_patches, patch_dim]
}
