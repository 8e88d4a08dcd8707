//! The vision tower (`visual.*`): Conv3d patch embedding (a linear over the flattened `C·T·P·P` patch),
//! pre-norm blocks with 2D rotary attention restricted to each image (Qwen2-VL) or to 112-pixel windows
//! except in `fullatt_block_indexes` (Qwen2.5-VL), and the merger (norm → `merge²` patches concatenated →
//! Linear → GELU → Linear) into the language model's width.
//!
//! Qwen2-VL blocks: LayerNorm + `fc1 → QuickGELU → fc2`; Qwen2.5-VL blocks: RMSNorm + SwiGLU
//! `down(act(gate(x)) · up(x))`, all with biases. Patches arrive ordered so that each run of `merge²`
//! consecutive patches is one merged token (the image processor's order).

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, sigmoid, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::QwenError;
use super::config::{Arch, VisionConfig};
use super::nn::{QLayerNorm, QLinear, QRmsNorm, rotate_half};

/// LayerNorm (Qwen2-VL) or RMSNorm (Qwen2.5-VL).
#[derive(Module, Debug)]
pub struct VisionNorm<B: Backend> {
    pub ln: Option<QLayerNorm<B>>,
    pub rms: Option<QRmsNorm<B>>,
}

impl<B: Backend> VisionNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match (&self.ln, &self.rms) {
            (Some(l), _) => l.forward(x),
            (None, Some(r)) => r.forward(x),
            (None, None) => x,
        }
    }
}

#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    pub qkv: QLinear<B>,
    pub proj: QLinear<B>,
    pub heads: usize,
}

/// Qwen2-VL: `fc2(act(fc1 x))` (`gate_proj` is `None`, `up_proj` = fc1, `down_proj` = fc2);
/// Qwen2.5-VL: `down_proj(act(gate_proj x) · up_proj x)`.
#[derive(Module, Debug)]
pub struct VisionMlp<B: Backend> {
    pub gate_proj: Option<QLinear<B>>,
    pub up_proj: QLinear<B>,
    pub down_proj: QLinear<B>,
    /// 0: quick_gelu, 1: silu, 2: gelu (erf).
    pub act: usize,
}

#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    pub norm1: VisionNorm<B>,
    pub attn: VisionAttention<B>,
    pub norm2: VisionNorm<B>,
    pub mlp: VisionMlp<B>,
}

#[derive(Module, Debug)]
pub struct PatchMerger<B: Backend> {
    pub ln_q: VisionNorm<B>,
    /// `mlp.0`
    pub fc1: QLinear<B>,
    /// `mlp.2`
    pub fc2: QLinear<B>,
}

#[derive(Module, Debug)]
pub struct QwenVision<B: Backend> {
    /// `patch_embed.proj.weight` flattened: `[embed_dim, C·T·P·P]`.
    pub patch_embed: Param<Tensor<B, 2>>,
    pub blocks: Vec<VisionBlock<B>>,
    pub merger: PatchMerger<B>,
    pub merge: usize,
    pub patch_size: usize,
    /// Qwen2.5-VL window side in pixels; 0 → no window attention (Qwen2-VL).
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub rope_theta: f64,
}

pub fn act_code(name: &str) -> Result<usize, QwenError> {
    match name {
        "quick_gelu" => Ok(0),
        "silu" | "swish" => Ok(1),
        "gelu" => Ok(2),
        other => Err(QwenError::Config(format!(
            "vision hidden_act {other:?} is not quick_gelu, silu or gelu"
        ))),
    }
}

fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: usize) -> Tensor<B, D> {
    match act {
        0 => x.clone().mul(sigmoid(x.mul_scalar(1.702))),
        1 => silu(x),
        _ => gelu(x),
    }
}

/// `(start, len)` of a run of tokens that attend only to each other.
type Segment = (usize, usize);

/// `(start, len)` of each consecutive segment of `lens` (the `cu_seqlens` of `transformers`).
fn segments(lens: &[usize]) -> Vec<Segment> {
    let mut start = 0;
    lens.iter()
        .map(|&l| {
            start += l;
            (start - l, l)
        })
        .collect()
}

/// `get_window_index`: the merged-token order that makes every window contiguous, and the window lengths
/// in patches (empty windows dropped, as `unique_consecutive` does).
pub fn window_index(
    grids: &[[usize; 3]],
    merge: usize,
    window_size: usize,
    patch_size: usize,
) -> (Vec<usize>, Vec<usize>) {
    let vw = (window_size / merge / patch_size).max(1);
    let unit = merge * merge;
    let mut index = Vec::new();
    let mut lens = Vec::new();
    let mut base = 0;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        let (nwh, nww) = ((lh + vw - lh % vw) / vw, (lw + vw - lw % vw) / vw);
        for ti in 0..t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let mut count = 0;
                    for y in wy * vw..((wy + 1) * vw).min(lh) {
                        for x in wx * vw..((wx + 1) * vw).min(lw) {
                            index.push(base + ti * lh * lw + y * lw + x);
                            count += 1;
                        }
                    }
                    if count > 0 {
                        lens.push(count * unit);
                    }
                }
            }
        }
        base += t * lh * lw;
    }
    (index, lens)
}

/// 2D rotary `(cos, sin)`, each `[n, head_dim]`: per patch `[h·f, w·f, h·f, w·f]` with `f` the
/// `head_dim/4` inverse frequencies, in the processor's block-major patch order.
pub fn vision_rope<B: Backend>(
    grids: &[[usize; 3]],
    merge: usize,
    head_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let spatial = head_dim / 2;
    let inv: Vec<f32> = (0..spatial / 2)
        .map(|j| 1.0f32 / (theta as f32).powf((2 * j) as f32 / spatial as f32))
        .collect();
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    let mut n = 0;
    for &[t, h, w] in grids {
        for _ in 0..t {
            for by in 0..h / merge {
                for bx in 0..w / merge {
                    for iy in 0..merge {
                        for ix in 0..merge {
                            let (py, px) = ((by * merge + iy) as f32, (bx * merge + ix) as f32);
                            for _rep in 0..2 {
                                for p in [py, px] {
                                    for f in &inv {
                                        let a = p * f;
                                        cos.push(a.cos());
                                        sin.push(a.sin());
                                    }
                                }
                            }
                            n += 1;
                        }
                    }
                }
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [n, head_dim]), device),
        Tensor::from_data(TensorData::new(sin, [n, head_dim]), device),
    )
}

impl<B: Backend> VisionAttention<B> {
    /// Attention restricted to each segment `(start, len)` of the sequence (an image, or a window).
    fn forward(
        &self,
        x: Tensor<B, 2>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        segs: &[Segment],
    ) -> Tensor<B, 2> {
        let [n, e] = x.dims();
        let h = self.heads;
        let hd = e / h;
        let qkv = self.qkv.forward(x).reshape([n, 3, h, hd]); // [n, 3, heads, head_dim]
        let part = |i: usize| {
            qkv.clone()
                .narrow(1, i, 1)
                .reshape([n, h, hd])
                .swap_dims(0, 1)
                .unsqueeze::<4>()
        }; // [1, heads, n, head_dim]
        let (q, k, v) = (part(0), part(1), part(2));
        let (c, s) = (cos.clone().unsqueeze::<4>(), sin.clone().unsqueeze::<4>()); // [1, 1, n, head_dim]
        let q = q.clone().mul(c.clone()).add(rotate_half(q).mul(s.clone()));
        let k = k.clone().mul(c).add(rotate_half(k).mul(s));
        let scale = (hd as f64).powf(-0.5);
        let attend = |q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>| {
            softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3).matmul(v)
        }; // [1, heads, len, head_dim]
        let o = if segs.len() == 1 {
            attend(q, k, v)
        } else {
            let parts = segs
                .iter()
                .filter(|s| s.1 > 0)
                .map(|&(s0, l)| {
                    attend(
                        q.clone().narrow(2, s0, l),
                        k.clone().narrow(2, s0, l),
                        v.clone().narrow(2, s0, l),
                    )
                })
                .collect();
            Tensor::cat(parts, 2) // [1, heads, n, head_dim]
        };
        self.proj
            .forward(o.reshape([h, n, hd]).swap_dims(0, 1).reshape([n, e])) // [n, embed]
    }
}

impl<B: Backend> VisionMlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // x: [n, embed] -> [n, embed]
        match &self.gate_proj {
            Some(g) => self
                .down_proj
                .forward(activate(g.forward(x.clone()), self.act).mul(self.up_proj.forward(x))),
            None => self
                .down_proj
                .forward(activate(self.up_proj.forward(x), self.act)),
        }
    }
}

impl<B: Backend> QwenVision<B> {
    pub fn arch_of(c: &VisionConfig) -> Arch {
        if c.window_size > 0 {
            Arch::Qwen25Vl
        } else {
            Arch::Qwen2Vl
        }
    }

    /// `pixel_values: [n_patches, C·T·P·P]` of the images `grids` (`[t, h, w]` in patches) →
    /// merged features `[n_patches / merge², out_hidden]`, in the images' token order.
    pub fn forward(
        &self,
        pixel_values: Tensor<B, 2>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor<B, 2>, QwenError> {
        let device = pixel_values.device();
        let [n, pd] = pixel_values.dims();
        let [e, wd] = self.patch_embed.dims();
        let unit = self.merge * self.merge;
        let expect: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        if pd != wd || n != expect {
            return Err(QwenError::Input(format!(
                "pixel_values are [{n}, {pd}], the grids {grids:?} want [{expect}, {wd}]"
            )));
        }
        if grids
            .iter()
            .any(|g| g[1] % self.merge != 0 || g[2] % self.merge != 0)
        {
            return Err(QwenError::Input(format!(
                "grid {grids:?} is not a multiple of the merge size {}",
                self.merge
            )));
        }
        let heads = self.blocks.first().map_or(1, |b| b.attn.heads);
        let (mut cos, mut sin) =
            vision_rope::<B>(grids, self.merge, e / heads, self.rope_theta, &device); // [n, head_dim]
        let mut x = pixel_values.matmul(self.patch_embed.val().transpose()); // [n, embed]
        let full_lens: Vec<usize> = grids
            .iter()
            .flat_map(|g| std::iter::repeat_n(g[1] * g[2], g[0]))
            .collect();
        let full_segs = segments(&full_lens);
        let mut win: Option<(Vec<usize>, Vec<Segment>)> = None;
        if self.window_size > 0 {
            let (widx, wlens) = window_index(grids, self.merge, self.window_size, self.patch_size);
            let rows: Vec<i64> = widx
                .iter()
                .flat_map(|&w| (0..unit).map(move |u| (w * unit + u) as i64))
                .collect();
            let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
            x = x.select(0, rows.clone());
            cos = cos.select(0, rows.clone());
            sin = sin.select(0, rows);
            win = Some((widx, segments(&wlens)));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let segs = match &win {
                Some((_, ws)) if !self.fullatt_block_indexes.contains(&i) => ws,
                _ => &full_segs,
            };
            x = x
                .clone()
                .add(b.attn.forward(b.norm1.forward(x.clone()), &cos, &sin, segs));
            x = x.clone().add(b.mlp.forward(b.norm2.forward(x))); // [n, embed]
        }
        let m = self.merger.ln_q.forward(x).reshape([(n / unit) as i32, -1]); // [n / unit, unit·embed]
        let mut out = self.merger.fc2.forward(gelu(self.merger.fc1.forward(m))); // [n / unit, out_hidden]
        if let Some((widx, _)) = win {
            let mut rev = vec![0i64; widx.len()];
            for (k, &w) in widx.iter().enumerate() {
                rev[w] = k as i64;
            }
            out = out.select(
                0,
                Tensor::<B, 1, Int>::from_data(TensorData::new(rev, [n / unit]), &device),
            );
        }
        Ok(out)
    }
}
