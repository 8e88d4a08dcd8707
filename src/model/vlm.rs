//! The prefix-LM VLM: image tokens (bidirectional among themselves) first, then the prompt, `<|begin|>`,
//! the code and `<|end|>` (causal). Checkpoint names follow Qwen2-VL: `visual.*`, `model.*`, `lm_head.*`.
//!
//! For SFT and DPO the unit is [`Vlm::token_logprobs`]: log-probabilities of every next text token given
//! an image encoding, so that a DPO step encodes each image once and scores `[chosen; rejected]`
//! with the encoding repeated ([`repeat_rows`]).
//!
//! Every projection is a [`Linear`] (= [`super::lora::LoraLinear`]); [`LinearLayers`] lists them by
//! checkpoint path, so a base can be quantized and LoRA adapters attached by name (QLoRA).

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::VlmConfig;
use super::layers::{Linear, prefix_causal_bias};
use super::lora::{LinearLayers, LoraLinear};
use super::text::{KvCache, TextModel};
use super::vision::VisionEncoder;

#[derive(Module, Debug)]
pub struct Vlm<B: Backend> {
    pub visual: VisionEncoder<B>,
    pub model: TextModel<B>,
    pub lm_head: Linear<B>,
    /// `[hidden] → [hidden]` projection of the mean image token added to every text embedding
    /// (`VlmConfig::image_cond`).
    pub image_cond: Option<Linear<B>>,
    /// `[hidden] → [aux_outputs]` regression of shape descriptors from the mean image token
    /// (`VlmConfig::aux_outputs`; training only: generation never reads it).
    pub aux_head: Option<Linear<B>>,
    pub n_image_tokens: usize,
}

/// A right-padded batch of token rows (prompt, `<|begin|>`, code, `<|end|>`, pads) for teacher forcing.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq: usize,
    /// `[batch * seq]` token ids.
    pub ids: Vec<u32>,
    /// `[batch * (seq - 1)]`: 1.0 where the target `ids[t + 1]` is a code or end token.
    pub target_mask: Vec<f32>,
}

impl TokenBatch {
    /// Rows of `(prefix, code)`: the loss covers `code` (which should end with `<|end|>`).
    pub fn from_rows(rows: &[(Vec<u32>, Vec<u32>)], pad: u32) -> TokenBatch {
        let seq = rows
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let mut ids = Vec::with_capacity(rows.len() * seq);
        let mut mask = Vec::with_capacity(rows.len() * (seq - 1));
        for (p, c) in rows {
            let n = p.len() + c.len();
            ids.extend(p.iter().chain(c.iter()).copied());
            ids.extend(std::iter::repeat_n(pad, seq - n));
            for t in 1..seq {
                mask.push(if t >= p.len() && t < n { 1.0 } else { 0.0 });
            }
        }
        TokenBatch {
            batch: rows.len(),
            seq,
            ids,
            target_mask: mask,
        }
    }

    /// Number of tokens the loss covers.
    pub fn n_target_tokens(&self) -> usize {
        self.target_mask.iter().filter(|&&m| m > 0.0).count()
    }

    /// Per row, the values of `dense` (`[batch * (seq - 1)]`, the layout of the target mask) at the
    /// row's target positions, in order.
    pub fn target_rows(&self, dense: &[f32]) -> Vec<Vec<f64>> {
        let w = self.seq - 1;
        (0..self.batch)
            .map(|i| {
                (0..w)
                    .filter(|&t| self.target_mask[i * w + t] > 0.0)
                    .map(|t| dense[i * w + t] as f64)
                    .collect()
            })
            .collect()
    }

    /// The inverse of [`TokenBatch::target_rows`]: each row's values at its target positions, 0
    /// elsewhere (`[batch * (seq - 1)]`). A row longer than its targets is cut.
    pub fn scatter_targets(&self, rows: &[Vec<f64>]) -> Vec<f32> {
        let w = self.seq - 1;
        let mut out = vec![0.0f32; self.batch * w];
        for (i, r) in rows.iter().enumerate().take(self.batch) {
            let mut vals = r.iter();
            for t in 0..w {
                if self.target_mask[i * w + t] > 0.0 {
                    out[i * w + t] = vals.next().copied().unwrap_or(0.0) as f32;
                }
            }
        }
        out
    }

    pub fn ids_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let v: Vec<i64> = self.ids.iter().map(|&x| x as i64).collect();
        Tensor::from_data(TensorData::new(v, [self.batch, self.seq]), device) // [batch, seq]
    }

    pub fn mask_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(self.target_mask.clone(), [self.batch, self.seq - 1]),
            device,
        ) // [batch, seq-1]
    }
}

/// Repeat each row of `x: [batch, n, hidden]` `times` times along the batch (`[a, b]` → `[a, a, b, b]`).
pub fn repeat_rows<B: Backend>(x: Tensor<B, 3>, times: usize) -> Tensor<B, 3> {
    let [b, n, h] = x.dims();
    x.unsqueeze_dim::<4>(1)
        .expand([b, times, n, h])
        .reshape([b * times, n, h]) // [batch·times, n, hidden]
}

impl VlmConfig {
    /// The model this config describes, freshly initialised on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vlm<B> {
        Vlm::new(self, device)
    }
}

impl<B: Backend> Vlm<B> {
    fn new(c: &VlmConfig, device: &B::Device) -> Self {
        Vlm {
            visual: VisionEncoder::new(c, device),
            model: TextModel::new(c, device),
            lm_head: Linear::new(c.hidden, c.vocab_size, false, device),
            // zero-initialised: training starts from the plain prefix-LM and opens the path as it helps
            image_cond: c
                .image_cond
                .then(|| Linear::new_scaled(c.hidden, c.hidden, true, 0.0, device)),
            aux_head: (c.aux_outputs > 0)
                .then(|| Linear::new(c.hidden, c.aux_outputs, true, device)),
            n_image_tokens: c.n_image_tokens(),
        }
    }

    /// Patches `[batch, n_patches, patch_dim]` → image tokens `[batch, n_image_tokens, hidden]`.
    pub fn encode_image(&self, patches: Tensor<B, 3>) -> Tensor<B, 3> {
        self.visual.forward(patches)
    }

    /// The per-image vector added to every text embedding: `[batch, 1, hidden]`, or `None` without
    /// `image_cond`.
    pub fn image_condition(&self, image: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        self.image_cond
            .as_ref()
            .map(|l| l.forward(image.clone().mean_dim(1))) // [batch, 1, hidden]
    }

    /// Shape descriptors predicted from image tokens `[batch, n, hidden]`: `[batch, aux_outputs]`, or
    /// `None` without an auxiliary head.
    pub fn aux_predict(&self, image: &Tensor<B, 3>) -> Option<Tensor<B, 2>> {
        let [b, _, _] = image.dims();
        self.aux_head.as_ref().map(|l| {
            l.forward(image.clone().mean_dim(1))
                .reshape([b, l.out_features()])
        }) // [batch, aux_outputs]
    }

    /// Token embeddings `[batch, seq, hidden]` plus the image condition (from [`Vlm::image_condition`]).
    pub fn embed_text(&self, ids: Tensor<B, 2, Int>, cond: Option<&Tensor<B, 3>>) -> Tensor<B, 3> {
        let e = self.model.embed(ids); // [batch, seq, hidden]
        match cond {
            Some(c) => e.add(c.clone()), // [batch, seq, hidden] + [batch, 1, hidden]
            None => e,
        }
    }

    /// Next-token log-distributions `[batch, seq - 1, vocab]` at the positions that predict `ids[:, 1..]`.
    fn next_token_logp(&self, image: Tensor<B, 3>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, t] = ids.dims();
        let n = self.n_image_tokens;
        let device = ids.device();
        let cond = self.image_condition(&image); // [batch, 1, hidden]
        let x = Tensor::cat(vec![image, self.embed_text(ids, cond.as_ref())], 1); // [batch, n + seq, hidden]
        let bias = prefix_causal_bias::<B>(n + t, n + t, n, &device); // [n + seq, n + seq]
        let h = self.model.forward(x, Some(&bias), None); // [batch, n + seq, hidden]
        let h = h.narrow(1, n, t - 1); // [batch, seq - 1, hidden]: the states that predict ids[:, 1..]
        log_softmax(self.lm_head.forward(h), 2) // [batch, seq - 1, vocab]
    }

    /// Log-probabilities `[batch, seq - 1]` of `ids[:, 1..]` given the image tokens and `ids[:, ..t]`.
    pub fn token_logprobs(&self, image: Tensor<B, 3>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [b, t] = ids.dims();
        let logp = self.next_token_logp(image, ids.clone()); // [batch, seq - 1, vocab]
        let targets = ids.narrow(1, 1, t - 1).unsqueeze_dim::<3>(2); // [batch, seq - 1, 1]
        logp.gather(2, targets).reshape([b, t - 1]) // [batch, seq - 1]
    }

    /// [`Vlm::token_logprobs`] and the entropy of each next-token distribution, `[batch, seq - 1]`
    /// each (the entropy for monitoring: detach it before use).
    pub fn token_logprobs_entropy(
        &self,
        image: Tensor<B, 3>,
        ids: Tensor<B, 2, Int>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [b, t] = ids.dims();
        let logp = self.next_token_logp(image, ids.clone()); // [batch, seq - 1, vocab]
        let ent = logp
            .clone()
            .exp()
            .mul(logp.clone())
            .sum_dim(2)
            .neg()
            .reshape([b, t - 1]); // [batch, seq - 1]
        let targets = ids.narrow(1, 1, t - 1).unsqueeze_dim::<3>(2); // [batch, seq - 1, 1]
        (logp.gather(2, targets).reshape([b, t - 1]), ent) // [batch, seq - 1] each
    }

    /// Mean negative log-likelihood over the masked (code) targets: the SFT loss.
    pub fn sft_loss(&self, patches: Tensor<B, 3>, batch: &TokenBatch) -> Tensor<B, 1> {
        self.sft_losses(patches, batch, None).0
    }

    /// The SFT loss and, given shape targets `[batch, aux_outputs]` and an auxiliary head, the mean
    /// squared error of [`Vlm::aux_predict`] against them.
    pub fn sft_losses(
        &self,
        patches: Tensor<B, 3>,
        batch: &TokenBatch,
        aux_targets: Option<Tensor<B, 2>>,
    ) -> (Tensor<B, 1>, Option<Tensor<B, 1>>) {
        let image = self.encode_image(patches); // [batch, n_image_tokens, hidden]
        let aux = match (aux_targets, self.aux_predict(&image)) {
            (Some(t), Some(p)) => {
                let d = p.sub(t); // [batch, aux_outputs]
                Some(d.clone().mul(d).mean()) // [1]
            }
            _ => None,
        };
        (self.text_loss(image, batch), aux)
    }

    /// The SFT loss given the image tokens `[batch, n_image_tokens, hidden]` (from
    /// [`Vlm::encode_image`]): the mean negative log-likelihood of the masked targets.
    pub fn text_loss(&self, image: Tensor<B, 3>, batch: &TokenBatch) -> Tensor<B, 1> {
        let device = image.device();
        let lp = self.token_logprobs(image, batch.ids_tensor(&device)); // [batch, seq-1]
        let mask = batch.mask_tensor::<B>(&device);
        let n = batch.n_target_tokens().max(1) as f64;
        lp.mul(mask).sum().neg().div_scalar(n) // [1]
    }

    /// Sum of code-token log-probabilities per row `[batch]` (the DPO policy/reference score).
    pub fn sequence_logprobs(&self, image: Tensor<B, 3>, batch: &TokenBatch) -> Tensor<B, 1> {
        let device = image.device();
        let lp = self.token_logprobs(image, batch.ids_tensor(&device)); // [batch, seq-1]
        lp.mul(batch.mask_tensor::<B>(&device))
            .sum_dim(1)
            .reshape([batch.batch]) // [batch]
    }

    /// One incremental decoding step: `x: [batch, seq, hidden]` embeddings appended after the cache;
    /// returns next-token logits `[batch, vocab]` at the last position.
    pub fn step(&self, x: Tensor<B, 3>, cache: &mut KvCache<B>, prefix: usize) -> Tensor<B, 2> {
        let [b, t, _] = x.dims();
        let bias = (t > 1).then(|| prefix_causal_bias::<B>(t, cache.len + t, prefix, &x.device())); // [seq, past + seq]
        let h = self.model.forward(x, bias.as_ref(), Some(cache)); // [batch, seq, hidden]
        let last = h.narrow(1, t - 1, 1); // [batch, 1, hidden]
        let v = self.lm_head.out_features();
        self.lm_head.forward(last).reshape([b, v]) // [batch, vocab]
    }
}

/// The checkpoint paths of every linear layer of a model of config `c`, in [`LinearLayers`] order
/// (without building the model: recipes check LoRA targets against it before any work).
pub fn linear_paths(c: &VlmConfig) -> Vec<String> {
    let mut out = vec!["visual.patch_embed.proj".to_string()];
    for i in 0..c.vision_layers {
        out.extend(
            ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
                .map(|n| format!("visual.blocks.{i}.{n}")),
        );
    }
    out.extend([
        "visual.merger.mlp.fc1".to_string(),
        "visual.merger.mlp.fc2".to_string(),
    ]);
    for i in 0..c.layers {
        out.extend(
            [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ]
            .map(|n| format!("model.layers.{i}.{n}")),
        );
    }
    out.push("lm_head".to_string());
    if c.image_cond {
        out.push("image_cond".to_string());
    }
    if c.aux_outputs > 0 {
        out.push("aux_head".to_string());
    }
    out
}

impl<B: Backend> LinearLayers<B> for Vlm<B> {
    /// Every linear layer with its checkpoint path: the ViT (`visual.patch_embed.proj`,
    /// `visual.blocks.{i}.attn.{qkv,proj}`, `visual.blocks.{i}.mlp.{fc1,fc2}`), the projector
    /// (`visual.merger.mlp.{fc1,fc2}`), the decoder (`model.layers.{i}.self_attn.{q,k,v,o}_proj`,
    /// `model.layers.{i}.mlp.{gate,up,down}_proj`), `lm_head`, `image_cond` and `aux_head` (when configured).
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>)) {
        let v = &mut self.visual;
        f("visual.patch_embed.proj", &mut v.patch_embed.proj);
        for (i, b) in v.blocks.iter_mut().enumerate() {
            f(&format!("visual.blocks.{i}.attn.qkv"), &mut b.attn.qkv);
            f(&format!("visual.blocks.{i}.attn.proj"), &mut b.attn.proj);
            f(&format!("visual.blocks.{i}.mlp.fc1"), &mut b.mlp.fc1);
            f(&format!("visual.blocks.{i}.mlp.fc2"), &mut b.mlp.fc2);
        }
        f("visual.merger.mlp.fc1", &mut v.merger.mlp.fc1);
        f("visual.merger.mlp.fc2", &mut v.merger.mlp.fc2);
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            let a = &mut l.self_attn;
            f(&format!("model.layers.{i}.self_attn.q_proj"), &mut a.q_proj);
            f(&format!("model.layers.{i}.self_attn.k_proj"), &mut a.k_proj);
            f(&format!("model.layers.{i}.self_attn.v_proj"), &mut a.v_proj);
            f(&format!("model.layers.{i}.self_attn.o_proj"), &mut a.o_proj);
            f(
                &format!("model.layers.{i}.mlp.gate_proj"),
                &mut l.mlp.gate_proj,
            );
            f(&format!("model.layers.{i}.mlp.up_proj"), &mut l.mlp.up_proj);
            f(
                &format!("model.layers.{i}.mlp.down_proj"),
                &mut l.mlp.down_proj,
            );
        }
        f("lm_head", &mut self.lm_head);
        if let Some(l) = self.image_cond.as_mut() {
            f("image_cond", l);
        }
        if let Some(l) = self.aux_head.as_mut() {
            f("aux_head", l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_paths_list_every_linear_layer_in_order() {
        type B = burn::backend::NdArray<f32>;
        let c = VlmConfig::named("tiny", 300).unwrap();
        let mut m = c.init::<B>(&Default::default());
        let mut walked = Vec::new();
        m.for_each_linear(&mut |p, l| walked.push((p.to_string(), l.out_features())));
        let paths: Vec<String> = walked.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(paths, linear_paths(&c));
        // each path is the prefix of that layer's checkpoint keys
        let keys = super::super::weights::named_params(&m);
        for (p, out) in &walked {
            assert_eq!(keys[&format!("{p}.weight")].0[0], *out, "{p}");
        }
        // and every other `.weight` key belongs to a norm or an embedding: no linear layer is missed
        assert!(
            keys.keys()
                .filter(|k| k.ends_with(".weight"))
                .all(|k| k.contains("norm")
                    || k.contains("embed")
                    || k.contains("ln_q")
                    || walked.iter().any(|(p, _)| *k == format!("{p}.weight"))),
            "{keys:?}"
        );
    }
}
