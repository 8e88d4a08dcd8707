//! Building blocks shared by the encoder and decoder: the one `Linear` every projection goes through
//! (weights in the Hugging Face `[out, in]` layout, so names and shapes equal checkpoint keys), RMSNorm,
//! LayerNorm, rotary embeddings and scaled dot-product attention with grouped KV heads.
//!
//! [`Linear`] is [`super::lora::LoraLinear`]: a plain f32 linear layer until a base is quantized
//! or an adapter attached (LoRA / QLoRA, issue 7); its checkpoint keys stay `weight` and `bias`.

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// `y = x Wᵀ + b` with `W: [out, in]`: the LoRA-capable linear layer, whose base is an f32
/// parameter (checkpoint keys `weight`, `bias`, as before adapters existed) or a frozen quantized
/// weight, with an optional adapter (`lora_a`, `lora_b`). See [`super::lora`].
pub use super::lora::LoraLinear as Linear;

/// Root-mean-square norm with a learned scale (Qwen2).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(d: usize, eps: f64, device: &B::Device) -> Self {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            eps,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // x: [batch, seq, d]
        let rms = x.clone().square().mean_dim(2).add_scalar(self.eps).sqrt(); // [batch, seq, 1]
        x.div(rms).mul(self.weight.val().unsqueeze::<3>()) // [batch, seq, d]
    }
}

/// LayerNorm with scale and bias (the ViT).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(d: usize, device: &B::Device) -> Self {
        LayerNorm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            bias: Param::from_tensor(Tensor::zeros([d], device)),
            eps: 1e-6,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // x: [batch, seq, d]
        let mean = x.clone().mean_dim(2); // [batch, seq, 1]
        let xc = x.sub(mean);
        let var = xc.clone().square().mean_dim(2); // [batch, seq, 1]
        xc.div(var.add_scalar(self.eps).sqrt())
            .mul(self.weight.val().unsqueeze::<3>())
            .add(self.bias.val().unsqueeze::<3>())
    }
}

/// Rotary tables for positions `start..start+len`: `(cos, sin)`, each `[len, head_dim]` (halves repeated, as HF).
pub fn rope_tables<B: Backend>(
    start: usize,
    len: usize,
    head_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for p in start..start + len {
        for rep in 0..2 {
            let _ = rep;
            for i in 0..half {
                let inv = theta.powf(-(2.0 * i as f64) / head_dim as f64);
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [len, head_dim]), device),
        Tensor::from_data(TensorData::new(sin, [len, head_dim]), device),
    )
}

/// Apply rotary embeddings: `x·cos + rotate_half(x)·sin`.
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Tensor<B, 4> {
    // x: [batch, heads, seq, head_dim]; cos/sin: [seq, head_dim]
    let [_, _, _, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half); // [batch, heads, seq, half]
    let x2 = x.clone().narrow(3, half, half);
    let rot = Tensor::cat(vec![x2.neg(), x1], 3); // [batch, heads, seq, head_dim]
    x.mul(cos.clone().unsqueeze::<4>())
        .add(rot.mul(sin.clone().unsqueeze::<4>()))
}

/// Softmax attention. `q: [batch, heads, tq, d]`, `k, v: [batch, kv_heads, tk, d]`, `bias: [tq, tk]` additive
/// (0 or a large negative); kv heads are shared by `heads / kv_heads` query heads each (HF `repeat_kv`).
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<&Tensor<B, 2>>,
) -> Tensor<B, 4> {
    let [b, h, _tq, d] = q.dims();
    let [_, kvh, tk, _] = k.dims();
    let (k, v) = if kvh != h {
        let rep = h / kvh;
        let expand = |t: Tensor<B, 4>| {
            t.unsqueeze_dim::<5>(2) // [batch, kv_heads, 1, tk, d]
                .expand([b, kvh, rep, tk, d])
                .reshape([b, h, tk, d]) // [batch, heads, tk, d]
        };
        (expand(k), expand(v))
    } else {
        (k, v)
    };
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt()); // [batch, heads, tq, tk]
    let scores = match bias {
        Some(m) => scores.add(m.clone().unsqueeze::<4>()),
        None => scores,
    };
    softmax(scores, 3).matmul(v) // [batch, heads, tq, d]
}

/// Additive mask `[tq, tk]` for queries at positions `tk-tq..tk`: causal, except that the first
/// `prefix` keys (the image) are visible to every query (prefix-LM).
pub fn prefix_causal_bias<B: Backend>(
    tq: usize,
    tk: usize,
    prefix: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let off = tk - tq;
    let mut m = vec![0f32; tq * tk];
    for i in 0..tq {
        let qi = off + i;
        for j in 0..tk {
            if j > qi && j >= prefix {
                m[i * tk + j] = -1e9;
            }
        }
    }
    Tensor::from_data(TensorData::new(m, [tq, tk]), device)
}
