//! The Qwen2-style decoder (`model.*` in the checkpoint): token embedding, pre-norm blocks of
//! RMSNorm → grouped-query attention with rotary positions and q/k/v biases → RMSNorm → SwiGLU MLP.

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};

use super::VlmConfig;
use super::layers::{Linear, RmsNorm, apply_rope, attention, rope_tables};

#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub heads: usize,
    pub kv_heads: usize,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: SelfAttention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

#[derive(Module, Debug)]
pub struct TextModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub rope_theta: f64,
}

/// Keys and values of every layer so far: each `[batch, kv_heads, seq, head_dim]`.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Positions already cached.
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn empty() -> Self {
        KvCache {
            layers: Vec::new(),
            len: 0,
        }
    }

    /// Keep only the batch rows `rows` (e.g. the rows still generating).
    pub fn select_rows(&mut self, rows: Tensor<B, 1, Int>) {
        for (k, v) in self.layers.iter_mut() {
            *k = k.clone().select(0, rows.clone()); // [kept, kv_heads, seq, hd]
            *v = v.clone().select(0, rows.clone());
        }
    }
}

impl<B: Backend> TextModel<B> {
    pub fn new(c: &VlmConfig, device: &B::Device) -> Self {
        let (h, hd) = (c.hidden, c.head_dim());
        let res = 1.0 / (2.0 * c.layers as f64).sqrt();
        let layers = (0..c.layers)
            .map(|_| DecoderLayer {
                input_layernorm: RmsNorm::new(h, c.rms_eps, device),
                self_attn: SelfAttention {
                    q_proj: Linear::new(h, c.heads * hd, true, device),
                    k_proj: Linear::new(h, c.kv_heads * hd, true, device),
                    v_proj: Linear::new(h, c.kv_heads * hd, true, device),
                    o_proj: Linear::new_scaled(c.heads * hd, h, false, res, device),
                    heads: c.heads,
                    kv_heads: c.kv_heads,
                },
                post_attention_layernorm: RmsNorm::new(h, c.rms_eps, device),
                mlp: Mlp {
                    gate_proj: Linear::new(h, c.intermediate, false, device),
                    up_proj: Linear::new(h, c.intermediate, false, device),
                    down_proj: Linear::new_scaled(c.intermediate, h, false, res, device),
                },
            })
            .collect();
        TextModel {
            embed_tokens: Embedding {
                weight: Param::from_tensor(Tensor::random(
                    [c.vocab_size, h],
                    Distribution::Normal(0.0, 0.02),
                    device,
                )),
            },
            layers,
            norm: RmsNorm::new(h, c.rms_eps, device),
            rope_theta: c.rope_theta,
        }
    }

    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        // ids: [batch, seq] -> [batch, seq, hidden]
        burn::tensor::module::embedding(self.embed_tokens.weight.val(), ids)
    }

    /// Run the blocks over `x: [batch, seq, hidden]` at positions `cache.len..`, attending to the cache
    /// (when given, it is extended) with `bias: [seq, cache.len + seq]`. Returns the final-normed states.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: Option<&Tensor<B, 2>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [_, t, _] = x.dims();
        let start = cache.as_ref().map_or(0, |c| c.len);
        let sa = &self.layers[0].self_attn;
        let hd = sa.q_proj.out_features() / sa.heads;
        let (cos, sin) = rope_tables::<B>(start, t, hd, self.rope_theta, &x.device()); // [seq, head_dim]
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let a = layer
                .self_attn
                .forward(h, &cos, &sin, bias, cache.as_deref_mut(), i);
            x = x.add(a);
            let h = layer.post_attention_layernorm.forward(x.clone());
            let m = layer.mlp.down_proj.forward(
                silu(layer.mlp.gate_proj.forward(h.clone())).mul(layer.mlp.up_proj.forward(h)),
            );
            x = x.add(m); // [batch, seq, hidden]
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.norm.forward(x)
    }
}

impl<B: Backend> SelfAttention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        bias: Option<&Tensor<B, 2>>,
        cache: Option<&mut KvCache<B>>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let hd = self.q_proj.out_features() / self.heads;
        let q = self
            .q_proj
            .forward(x.clone())
            .reshape([b, t, self.heads, hd])
            .swap_dims(1, 2); // [batch, heads, seq, hd]
        let k = self
            .k_proj
            .forward(x.clone())
            .reshape([b, t, self.kv_heads, hd])
            .swap_dims(1, 2); // [batch, kv_heads, seq, hd]
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, t, self.kv_heads, hd])
            .swap_dims(1, 2); // [batch, kv_heads, seq, hd]
        let q = apply_rope(q, cos, sin);
        let k = apply_rope(k, cos, sin);
        let (k, v) = match cache {
            Some(c) => {
                if c.layers.len() == layer {
                    c.layers.push((k.clone(), v.clone()));
                    (k, v)
                } else {
                    let (pk, pv) = c.layers[layer].clone();
                    let k = Tensor::cat(vec![pk, k], 2); // [batch, kv_heads, past+seq, hd]
                    let v = Tensor::cat(vec![pv, v], 2);
                    c.layers[layer] = (k.clone(), v.clone());
                    (k, v)
                }
            }
            None => (k, v),
        };
        let o = attention(q, k, v, bias); // [batch, heads, seq, hd]
        self.o_proj
            .forward(o.swap_dims(1, 2).reshape([b, t, self.heads * hd])) // [batch, seq, hidden]
    }
}
