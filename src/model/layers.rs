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
    // x: [batch, heads, seq, head_dim]; cos/sin: [seq, head_dim]. Computed on rows of `seq·head_dim`
    // with `cos`/`sin` as one row shared by every (batch, head), which the CPU backend multiplies
    // with SIMD (the 4-D broadcast of `[seq, head_dim]` walked it element by element).
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let x = x.reshape([b * h, t, d]); // [batch·heads, seq, head_dim]
    let x1 = x.clone().narrow(2, 0, half); // [batch·heads, seq, half]
    let x2 = x.clone().narrow(2, half, half);
    let rot = Tensor::cat(vec![x2.neg(), x1], 2).reshape([b * h, t * d]); // [batch·heads, seq·head_dim]
    let row = |c: &Tensor<B, 2>| c.clone().reshape([1, t * d]); // [1, seq·head_dim]
    x.reshape([b * h, t * d])
        .mul(row(cos))
        .add(rot.mul(row(sin)))
        .reshape([b, h, t, d])
}

/// Softmax attention. `q: [batch, heads, tq, d]`, `k, v: [batch, kv_heads, tk, d]`, `bias: [tq, tk]` additive
/// (0 or a large negative); kv heads are shared by `heads / kv_heads` query heads each (HF `repeat_kv`:
/// query heads `j·rep..(j+1)·rep` use kv head `j`).
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<&Tensor<B, 2>>,
) -> Tensor<B, 4> {
    let [b, h, tq, d] = q.dims();
    let [_, kvh, tk, _] = k.dims();
    let rep = h / kvh;
    // the `rep` query heads of a kv head as `rep·tq` rows of one product with that head's keys and
    // values: the same dot products as repeating k and v `rep` times, without copying them
    let q = if rep > 1 {
        q.reshape([b, kvh, rep * tq, d])
    } else {
        q
    }; // [batch, kv_heads, rep·tq, d]
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt()); // [batch, kv_heads, rep·tq, tk] = [batch, heads, tq, tk]
    let scores = match bias {
        // as `[batch·heads, tq·tk] + [1, tq·tk]`: one bias row shared by every (batch, head), which
        // the CPU backend adds with SIMD (the 4-D broadcast of `[tq, tk]` walked it element by element)
        Some(m) => scores
            .reshape([b * h, tq * tk])
            .add(m.clone().reshape([1, tq * tk]))
            .reshape([b, kvh, rep * tq, tk]),
        None => scores,
    };
    let o = softmax(scores, 3).matmul(v); // [batch, kv_heads, rep·tq, d]
    if rep > 1 { o.reshape([b, h, tq, d]) } else { o } // [batch, heads, tq, d]
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    type B = burn::backend::NdArray<f32>;

    fn max_diff(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
        a.sub(b).abs().max().into_scalar()
    }

    /// Grouped-query attention equals attention over k and v repeated per query head (HF
    /// `repeat_kv`), masked and not; and rotary embeddings equal the per-element formula.
    #[test]
    fn grouped_attention_and_rope_match_their_definitions() {
        let dev = Default::default();
        let (b, h, kvh, tq, tk, d) = (2, 6, 2, 5, 7, 8);
        let q = Tensor::<B, 4>::random([b, h, tq, d], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<B, 4>::random([b, kvh, tk, d], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<B, 4>::random([b, kvh, tk, d], Distribution::Normal(0.0, 1.0), &dev);
        let rep = |t: Tensor<B, 4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([b, kvh, h / kvh, tk, d])
                .reshape([b, h, tk, d])
        };
        let bias = prefix_causal_bias::<B>(tq, tk, 3, &dev);
        for m in [None, Some(&bias)] {
            let (kr, vr) = (rep(k.clone()), rep(v.clone()));
            let mut s = q
                .clone()
                .matmul(kr.swap_dims(2, 3))
                .mul_scalar(1.0 / (d as f64).sqrt());
            if let Some(m) = m {
                s = s.add(m.clone().unsqueeze::<4>());
            }
            let want = softmax(s, 3).matmul(vr);
            let got = attention(q.clone(), k.clone(), v.clone(), m);
            assert!(max_diff(got, want) < 1e-6);
        }
        // masked keys get no weight: with v = key index, a query sees only keys up to its position
        let idx: Vec<f32> = (0..tk).flat_map(|j| [j as f32; 8]).collect();
        let vi = Tensor::<B, 1>::from_floats(idx.as_slice(), &dev)
            .reshape([1, 1, tk, d])
            .expand([b, kvh, tk, d]);
        let o = attention(q.clone(), k.clone(), vi, Some(&bias)); // [b, h, tq, d]
        let o: Vec<f32> = o.into_data().to_vec().unwrap();
        for (i, &x) in o.iter().enumerate() {
            let qi = (i / d) % tq + (tk - tq); // query position
            assert!(x <= qi.max(2) as f32 + 1e-4, "{x} at query {qi}");
        }

        let (cos, sin) = rope_tables::<B>(3, tq, d, 10000.0, &dev);
        let got: Vec<f32> = apply_rope(q.clone(), &cos, &sin)
            .into_data()
            .to_vec()
            .unwrap();
        let x: Vec<f32> = q.into_data().to_vec().unwrap();
        let (c, s): (Vec<f32>, Vec<f32>) = (
            cos.into_data().to_vec().unwrap(),
            sin.into_data().to_vec().unwrap(),
        );
        for (i, &g) in got.iter().enumerate() {
            let (j, p) = (i % d, (i / d) % tq);
            let rot = if j < d / 2 {
                -x[i + d / 2]
            } else {
                x[i - d / 2]
            };
            let want = x[i] * c[p * d + j] + rot * s[p * d + j];
            assert!((g - want).abs() < 1e-6, "{g} vs {want}");
        }
    }
}
