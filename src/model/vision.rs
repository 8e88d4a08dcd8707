//! The image side: ViT encoder (patch embedding, learned positions, pre-norm blocks) and the projector
//! (2×2 patch merge + MLP) into the decoder's hidden size. Also the pixel → patch preprocessing.
//!
//! Patches are ordered so that each run of `merge²` consecutive patches is one `merge×merge` block of
//! the image (as Qwen2-VL), which makes the merge a reshape.

use burn::module::{Module, Param};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use super::VlmConfig;
use super::layers::{LayerNorm, Linear, attention};
use crate::data::images::resize_rgb;

#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    pub proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct VisionMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: VisionAttention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: VisionMlp<B>,
}

#[derive(Module, Debug)]
pub struct Merger<B: Backend> {
    pub ln_q: LayerNorm<B>,
    pub mlp: VisionMlp<B>,
    pub merge: usize,
}

/// `visual.*` in the checkpoint.
#[derive(Module, Debug)]
pub struct VisionEncoder<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    pub pos_embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<VisionBlock<B>>,
    pub merger: Merger<B>,
}

impl<B: Backend> VisionEncoder<B> {
    pub fn new(c: &VlmConfig, device: &B::Device) -> Self {
        let vh = c.vision_hidden;
        let n = c.grid() * c.grid();
        let res = 1.0 / (2.0 * c.vision_layers.max(1) as f64).sqrt();
        let blocks = (0..c.vision_layers)
            .map(|_| VisionBlock {
                norm1: LayerNorm::new(vh, device),
                attn: VisionAttention {
                    qkv: Linear::new(vh, 3 * vh, true, device),
                    proj: Linear::new_scaled(vh, vh, true, res, device),
                    heads: c.vision_heads,
                },
                norm2: LayerNorm::new(vh, device),
                mlp: VisionMlp {
                    fc1: Linear::new(vh, c.vision_mlp, true, device),
                    fc2: Linear::new_scaled(c.vision_mlp, vh, true, res, device),
                },
            })
            .collect();
        let m2 = c.merge * c.merge;
        VisionEncoder {
            patch_embed: PatchEmbed {
                proj: Linear::new(c.patch_dim(), vh, true, device),
            },
            pos_embed: Param::from_tensor(Tensor::random(
                [n, vh],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            blocks,
            merger: Merger {
                ln_q: LayerNorm::new(vh, device),
                mlp: VisionMlp {
                    fc1: Linear::new(m2 * vh, m2 * vh, true, device),
                    fc2: Linear::new(m2 * vh, c.hidden, true, device),
                },
                merge: c.merge,
            },
        }
    }

    /// Patches `[batch, n_patches, patch_dim]` → image tokens `[batch, n_image_tokens, hidden]`.
    pub fn forward(&self, patches: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut x = self.patch_embed.proj.forward(patches); // [batch, n_patches, vh]
        x = x.add(self.pos_embed.val().unsqueeze::<3>());
        for blk in &self.blocks {
            x = x
                .clone()
                .add(blk.attn.forward(blk.norm1.forward(x.clone())));
            let h = blk
                .mlp
                .fc2
                .forward(gelu(blk.mlp.fc1.forward(blk.norm2.forward(x.clone()))));
            x = x.add(h); // [batch, n_patches, vh]
        }
        let [b, n, vh] = x.dims();
        let m2 = self.merger.merge * self.merger.merge;
        let x = self.merger.ln_q.forward(x).reshape([b, n / m2, m2 * vh]); // [batch, n_image_tokens, 4·vh]
        self.merger
            .mlp
            .fc2
            .forward(gelu(self.merger.mlp.fc1.forward(x))) // [batch, n_image_tokens, hidden]
    }
}

impl<B: Backend> VisionAttention<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, vh] = x.dims();
        let hd = vh / self.heads;
        let qkv = self.qkv.forward(x).reshape([b, n, 3, self.heads, hd]); // [batch, n, 3, heads, hd]
        let part = |i: usize| {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([b, n, self.heads, hd])
                .swap_dims(1, 2)
        }; // [batch, heads, n, hd]
        let o = attention(part(0), part(1), part(2), None); // [batch, heads, n, hd]
        self.proj.forward(o.swap_dims(1, 2).reshape([b, n, vh])) // [batch, n, vh]
    }
}

/// RGB pixels (`height×width×3` bytes, row-major) → normalised patch vectors `[n_patches·patch_dim]`,
/// resized (bilinear, area-averaged when shrinking) to `c.image_size`, in merge-block order.
pub fn image_to_patches(rgb: &[u8], width: usize, height: usize, c: &VlmConfig) -> Vec<f32> {
    let s = c.image_size;
    let img = resize_rgb(rgb, width, height, s);
    let (p, g, m) = (c.patch_size, c.grid(), c.merge);
    let mut out = Vec::with_capacity(g * g * c.patch_dim());
    for by in 0..g / m {
        for bx in 0..g / m {
            for iy in 0..m {
                for ix in 0..m {
                    let (py, px) = (by * m + iy, bx * m + ix);
                    for ch in 0..3 {
                        for y in 0..p {
                            for x in 0..p {
                                let v = img[((py * p + y) * s + px * p + x) * 3 + ch];
                                out.push((v - 0.5) / 0.5);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_follow_merge_blocks() {
        let c = VlmConfig::named("tiny", 64).unwrap(); // 32 px, patch 8, grid 4, merge 2
        // image whose red channel encodes the patch index in raster order
        let s = c.image_size;
        let mut rgb = vec![0u8; s * s * 3];
        for y in 0..s {
            for x in 0..s {
                rgb[(y * s + x) * 3] = ((y / 8) * 4 + x / 8) as u8 * 10;
            }
        }
        let p = image_to_patches(&rgb, s, s, &c);
        assert_eq!(p.len(), 16 * c.patch_dim());
        let first_red =
            |i: usize| ((p[i * c.patch_dim()] * 0.5 + 0.5) * 255.0 / 10.0).round() as usize;
        let order: Vec<usize> = (0..16).map(first_red).collect();
        assert_eq!(&order[..8], &[0, 1, 4, 5, 2, 3, 6, 7]);
    }
}
