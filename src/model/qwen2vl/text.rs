//! The Qwen2 decoder (`model.*`): token embedding, pre-norm blocks of RMSNorm → grouped-query attention
//! (q/k/v biases, no o_proj bias) with multimodal rotary positions → RMSNorm → SwiGLU MLP, final RMSNorm.
//!
//! M-RoPE: every position has 3 components (temporal, height, width); rotary frequency `j` of the
//! `head_dim/2` takes its angle from component 0 for `j < s0`, 1 for `j < s0+s1`, else 2
//! (`mrope_section = [s0, s1, s2]`), and the halves repeat as in `rotate_half`.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::nn::{QLinear, QRmsNorm, rotate_half};

#[derive(Module, Debug)]
pub struct QEmbedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

#[derive(Module, Debug)]
pub struct TextAttention<B: Backend> {
    pub q_proj: QLinear<B>,
    pub k_proj: QLinear<B>,
    pub v_proj: QLinear<B>,
    pub o_proj: QLinear<B>,
    pub heads: usize,
    pub kv_heads: usize,
}

#[derive(Module, Debug)]
pub struct TextMlp<B: Backend> {
    pub gate_proj: QLinear<B>,
    pub up_proj: QLinear<B>,
    pub down_proj: QLinear<B>,
}

#[derive(Module, Debug)]
pub struct TextLayer<B: Backend> {
    pub input_layernorm: QRmsNorm<B>,
    pub self_attn: TextAttention<B>,
    pub post_attention_layernorm: QRmsNorm<B>,
    pub mlp: TextMlp<B>,
}

#[derive(Module, Debug)]
pub struct QwenTextModel<B: Backend> {
    pub embed_tokens: QEmbedding<B>,
    pub layers: Vec<TextLayer<B>>,
    pub norm: QRmsNorm<B>,
    pub rope_theta: f64,
    pub mrope_section: Vec<usize>,
}

/// Keys and values of every layer so far: each `[1, kv_heads, seq, head_dim]`.
#[derive(Clone, Debug)]
pub struct QwenKvCache<B: Backend> {
    pub layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    pub len: usize,
}

impl<B: Backend> QwenKvCache<B> {
    pub fn empty() -> Self {
        QwenKvCache {
            layers: Vec::new(),
            len: 0,
        }
    }
}

/// M-RoPE `(cos, sin)`, each `[seq, head_dim]`, for position rows `pos` (temporal, height, width).
#[allow(clippy::needless_range_loop)]
pub fn mrope_tables<B: Backend>(
    pos: &[Vec<i64>; 3],
    head_dim: usize,
    section: &[usize],
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|j| 1.0f32 / (theta as f32).powf((2 * j) as f32 / head_dim as f32))
        .collect();
    let axis: Vec<usize> = (0..half)
        .map(|j| {
            let mut acc = 0;
            for (a, &s) in section.iter().enumerate() {
                acc += s;
                if j < acc {
                    return a;
                }
            }
            section.len().saturating_sub(1)
        })
        .collect();
    let seq = pos[0].len();
    let mut cos = Vec::with_capacity(seq * head_dim);
    let mut sin = Vec::with_capacity(seq * head_dim);
    for i in 0..seq {
        for _rep in 0..2 {
            for (&ax, &f) in axis.iter().zip(&inv) {
                let a = pos[ax][i] as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [seq, head_dim]), device),
        Tensor::from_data(TensorData::new(sin, [seq, head_dim]), device),
    )
}

fn causal_mask<B: Backend>(tq: usize, tk: usize, device: &B::Device) -> Tensor<B, 2> {
    let off = tk - tq;
    let m: Vec<f32> = (0..tq * tk)
        .map(|k| if k % tk > off + k / tk { -1e30 } else { 0.0 })
        .collect();
    Tensor::from_data(TensorData::new(m, [tq, tk]), device)
}

impl<B: Backend> TextAttention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        cache: Option<(&mut QwenKvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (h, kvh) = (self.heads, self.kv_heads);
        let hd = self.q_proj.out_features() / h;
        let split = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2); // [batch, n, seq, head_dim]
        let q = split(self.q_proj.forward(x.clone()), h);
        let k = split(self.k_proj.forward(x.clone()), kvh);
        let v = split(self.v_proj.forward(x), kvh);
        let (c, s) = (cos.clone().unsqueeze::<4>(), sin.clone().unsqueeze::<4>()); // [1, 1, seq, head_dim]
        let q = q.clone().mul(c.clone()).add(rotate_half(q).mul(s.clone()));
        let k = k.clone().mul(c).add(rotate_half(k).mul(s));
        let (k, v) = match cache {
            Some((cache, i)) => {
                let kv = match cache.layers.get(i) {
                    Some((pk, pv)) => (
                        Tensor::cat(vec![pk.clone(), k], 2),
                        Tensor::cat(vec![pv.clone(), v], 2),
                    ),
                    None => (k, v),
                };
                if i < cache.layers.len() {
                    cache.layers[i] = kv.clone();
                } else {
                    cache.layers.push(kv.clone());
                }
                kv
            }
            None => (k, v),
        };
        let tk = k.dims()[2];
        let rep = h / kvh;
        let expand = |y: Tensor<B, 4>| {
            y.unsqueeze_dim::<5>(2)
                .expand([b, kvh, rep, tk, hd])
                .reshape([b, h, tk, hd])
        }; // repeat_kv
        let (k, v) = (expand(k), expand(v)); // [batch, heads, tk, head_dim]
        let mut scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar((hd as f64).powf(-0.5)); // [batch, heads, t, tk]
        if t > 1 {
            let dev = scores.device();
            scores = scores.add(causal_mask::<B>(t, tk, &dev).unsqueeze::<4>());
        }
        let o = softmax(scores, 3).matmul(v); // [batch, heads, t, head_dim]
        self.o_proj
            .forward(o.swap_dims(1, 2).reshape([b, t, h * hd])) // [batch, t, hidden]
    }
}

impl<B: Backend> QwenTextModel<B> {
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        // ids: [batch, seq] -> [batch, seq, hidden]
        burn::tensor::module::embedding(self.embed_tokens.weight.val(), ids)
    }

    /// Run the blocks over `x: [1, seq, hidden]` at M-RoPE positions `pos` (3 rows of `seq`), extending
    /// `cache` when given. Returns the final-normed hidden states `[1, seq, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        pos: &[Vec<i64>; 3],
        mut cache: Option<&mut QwenKvCache<B>>,
    ) -> Tensor<B, 3> {
        let [_, t, _] = x.dims();
        let Some(l0) = self.layers.first() else {
            return self.norm.forward(x);
        };
        let hd = l0.self_attn.q_proj.out_features() / l0.self_attn.heads;
        let (cos, sin) =
            mrope_tables::<B>(pos, hd, &self.mrope_section, self.rope_theta, &x.device()); // [seq, head_dim]
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| (c, i));
            let a =
                layer
                    .self_attn
                    .forward(layer.input_layernorm.forward(x.clone()), &cos, &sin, c);
            x = x.add(a);
            let hn = layer.post_attention_layernorm.forward(x.clone());
            let m = layer.mlp.down_proj.forward(
                silu(layer.mlp.gate_proj.forward(hn.clone())).mul(layer.mlp.up_proj.forward(hn)),
            );
            x = x.add(m); // [1, seq, hidden]
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.norm.forward(x)
    }
}
