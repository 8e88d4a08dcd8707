//! Memory estimate of a Qwen2-VL / Qwen2.5-VL model from its config: weights by storage format (f32,
//! bf16, NF4 with per-64 f32 absmax as in `model::quant`), LoRA adapters with their gradients and Adam
//! state, and training activations for a stated batch × sequence length.
//!
//! Assumptions (stated in `summary`): NF4 quantizes every linear weight matrix of the decoder and the
//! vision blocks (embeddings, lm_head, norms and biases stay bf16); LoRA on q/k/v/o/gate/up/down of every
//! decoder layer, trained in f32 with Adam (16 bytes per parameter); bf16 activations; the vision tower is
//! frozen (no stored activations); attention scores are materialised (no flash attention); logits in f32.

use super::config::{Arch, QwenConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    Bf16,
    /// 4-bit NormalFloat, blocks of 64 with one f32 absmax each (0.5625 bytes per weight).
    Nf4,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    pub format: WeightFormat,
    pub params_total: u64,
    /// Parameters in linear weight matrices (those NF4 quantizes).
    pub params_linear: u64,
    pub weight_bytes: u64,
    pub lora_params: u64,
    /// LoRA weights + gradients + Adam moments (f32).
    pub lora_bytes: u64,
    pub batch: u64,
    pub seq: u64,
    pub gradient_checkpointing: bool,
    /// Decoder activations kept for the backward pass (or, for inference, one layer's working set).
    pub activation_bytes: u64,
    /// Logits and their gradient, f32.
    pub logits_bytes: u64,
    /// CUDA context, allocator slack, workspace (a flat 1 GiB).
    pub overhead_bytes: u64,
}

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

impl MemoryEstimate {
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes
            + self.lora_bytes
            + self.activation_bytes
            + self.logits_bytes
            + self.overhead_bytes
    }

    pub fn fits(&self, gpu_gib: f64) -> bool {
        (self.total_bytes() as f64) / GIB <= gpu_gib
    }

    pub fn summary(&self) -> String {
        let g = |b: u64| b as f64 / GIB;
        format!(
            "memory estimate ({:?} weights, {:.1} M params): weights {:.2} GiB, LoRA {} params {:.2} GiB, activations (batch {} × seq {}{}) {:.2} GiB, logits {:.2} GiB, overhead {:.2} GiB → total {:.2} GiB",
            self.format,
            self.params_total as f64 / 1e6,
            g(self.weight_bytes),
            self.lora_params,
            g(self.lora_bytes),
            self.batch,
            self.seq,
            if self.gradient_checkpointing {
                ", gradient checkpointing"
            } else {
                ""
            },
            g(self.activation_bytes),
            g(self.logits_bytes),
            g(self.overhead_bytes),
            g(self.total_bytes()),
        )
    }
}

/// (all parameters, parameters of linear weight matrices) of the model `c`.
pub fn param_counts(c: &QwenConfig) -> (u64, u64) {
    let v = &c.vision;
    let (e, m, u) = (
        v.embed_dim as u64,
        v.mlp_hidden as u64,
        (v.spatial_merge_size * v.spatial_merge_size) as u64,
    );
    let pd = (v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size) as u64;
    let mut lin = e * pd;
    let mut other = 0u64;
    let blk_lin = 4 * e * e
        + if c.arch == Arch::Qwen25Vl {
            3 * e * m
        } else {
            2 * e * m
        };
    let blk_other = 4 * e
        + if c.arch == Arch::Qwen25Vl {
            2 * e + 2 * m + e
        } else {
            4 * e + m + e
        };
    lin += v.depth as u64 * blk_lin;
    other += v.depth as u64 * blk_other;
    lin += (e * u) * (e * u) + e * u * v.out_hidden as u64;
    other += 2 * e + e * u + v.out_hidden as u64;
    let (h, kv, i, vocab) = (
        c.hidden as u64,
        (c.kv_heads * c.head_dim()) as u64,
        c.intermediate as u64,
        c.vocab_size as u64,
    );
    let layer_lin = 2 * h * h + 2 * h * kv + 3 * h * i;
    let layer_other = h + 2 * kv + 2 * h;
    lin += c.layers as u64 * layer_lin;
    other +=
        c.layers as u64 * layer_other + h + vocab * h * if c.tie_word_embeddings { 1 } else { 2 };
    (lin + other, lin)
}

/// LoRA parameters of rank `r` on q/k/v/o/gate/up/down of every decoder layer.
pub fn lora_params(c: &QwenConfig, r: u64) -> u64 {
    let (h, kv, i) = (
        c.hidden as u64,
        (c.kv_heads * c.head_dim()) as u64,
        c.intermediate as u64,
    );
    let per = r * ((h + h) + (h + kv) * 2 + (h + h) + 3 * (h + i));
    c.layers as u64 * per
}

/// The estimate for `format` weights, LoRA rank `lora_rank` (0: none, inference), `batch` × `seq` tokens.
/// With `lora_rank == 0` activations are one layer's working set (inference); otherwise they are the
/// stored activations of every layer (or only the layer inputs plus one layer with `checkpointing`).
pub fn estimate_memory(
    c: &QwenConfig,
    format: WeightFormat,
    lora_rank: u64,
    batch: u64,
    seq: u64,
    checkpointing: bool,
) -> MemoryEstimate {
    let (total, lin) = param_counts(c);
    let weight_bytes = match format {
        WeightFormat::F32 => 4 * total,
        WeightFormat::Bf16 => 2 * total,
        WeightFormat::Nf4 => lin / 2 + lin.div_ceil(64) * 4 + 2 * (total - lin),
    };
    let lp = if lora_rank > 0 {
        lora_params(c, lora_rank)
    } else {
        0
    };
    let (h, kv, i, a) = (
        c.hidden as u64,
        (c.kv_heads * c.head_dim()) as u64,
        c.intermediate as u64,
        c.heads as u64,
    );
    let (b, s) = (batch, seq);
    // elements one decoder layer keeps for backward: norm out, q/k/v, attention out, o_proj out, residual,
    // post-norm out, gate, up, silu(gate), product; plus scores and probabilities
    let layer_elems = b * s * (5 * h + 2 * kv + 4 * i) + 2 * b * a * s * s;
    let layer_bytes = 2 * layer_elems;
    let activation_bytes = if lora_rank == 0 {
        layer_bytes
    } else if checkpointing {
        c.layers as u64 * 2 * b * s * h + layer_bytes
    } else {
        c.layers as u64 * layer_bytes
    };
    let logits_bytes = b * s * c.vocab_size as u64 * 4 * if lora_rank > 0 { 2 } else { 1 };
    MemoryEstimate {
        format,
        params_total: total,
        params_linear: lin,
        weight_bytes,
        lora_params: lp,
        lora_bytes: 16 * lp,
        batch,
        seq,
        gradient_checkpointing: checkpointing,
        activation_bytes,
        logits_bytes,
        overhead_bytes: 1 << 30,
    }
}
