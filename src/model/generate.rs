//! Batched generation with a KV cache: greedy or sampled (temperature, top-p), stopping at `<|end|>`
//! or a length limit. Sampling is done on the host from the logits, seeded, so it is reproducible.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::text::KvCache;
use super::vlm::Vlm;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateConfig {
    /// Most code tokens per sample (the model's `max_seq_len` also bounds it).
    pub max_new_tokens: usize,
    /// 0 → greedy.
    pub temperature: f32,
    /// Nucleus mass kept when sampling (1.0 → all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig { max_new_tokens: 512, temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

/// One generated row.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// Code tokens, without `<|end|>`.
    pub tokens: Vec<u32>,
    /// Whether `<|end|>` was produced (else the length limit cut it).
    pub finished: bool,
}

/// Pick the next token from `logits` (one row).
pub fn sample_token(logits: &[f32], temperature: f32, top_p: f32, rng: &mut StdRng) -> u32 {
    let argmax = || logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |a, (i, &v)| if v > a.1 { (i, v) } else { a }).0 as u32;
    if temperature <= 0.0 {
        return argmax();
    }
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(usize, f32)> = logits.iter().enumerate().map(|(i, &v)| (i, ((v - mx) / temperature).exp())).collect();
    let z: f32 = p.iter().map(|x| x.1).sum();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, w) in &p {
        kept += 1;
        mass += w / z;
        if mass >= top_p {
            break;
        }
    }
    let p = &p[..kept];
    let zk: f32 = p.iter().map(|x| x.1).sum();
    let mut r = rng.random::<f32>() * zk;
    for &(i, w) in p {
        if r < w {
            return i as u32;
        }
        r -= w;
    }
    p[kept - 1].0 as u32
}

/// Generate one program per row of `image: [batch, n_image_tokens, hidden]`, every row starting with the
/// same `prefix` tokens (the prompt and `<|begin|>`). Rows stop independently at `end`.
pub fn generate<B: Backend>(model: &Vlm<B>, image: Tensor<B, 3>, prefix: &[u32], end: u32, max_seq_len: usize, cfg: &GenerateConfig) -> Vec<Generated> {
    let [b, n, _] = image.dims();
    let device = image.device();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let ids: Vec<i64> = (0..b).flat_map(|_| prefix.iter().map(|&t| t as i64)).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, prefix.len()]), &device); // [batch, prefix]
    let cond = model.image_condition(&image); // [batch, 1, hidden]
    let x = Tensor::cat(vec![image, model.embed_text(ids, cond.as_ref())], 1); // [batch, n + prefix, hidden]
    let mut cache = KvCache::empty();
    let mut logits = model.step(x, &mut cache, n); // [batch, vocab]
    let budget = cfg.max_new_tokens.min(max_seq_len.saturating_sub(n + prefix.len()));
    let mut out: Vec<Generated> = (0..b).map(|_| Generated { tokens: Vec::new(), finished: false }).collect();
    for _ in 0..budget {
        let [_, v] = logits.dims();
        let host: Vec<f32> = logits.into_data().convert::<f32>().to_vec().expect("f32 logits");
        let mut next = Vec::with_capacity(b);
        for (r, g) in out.iter_mut().enumerate() {
            let t = sample_token(&host[r * v..(r + 1) * v], cfg.temperature, cfg.top_p, &mut rng);
            if !g.finished {
                if t == end {
                    g.finished = true;
                } else {
                    g.tokens.push(t);
                }
            }
            next.push(t as i64);
        }
        if out.iter().all(|g| g.finished) {
            break;
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(next, [b, 1]), &device); // [batch, 1]
        logits = model.step(model.embed_text(ids, cond.as_ref()), &mut cache, n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_p() {
        let mut rng = StdRng::seed_from_u64(1);
        let l = [0.0, 3.0, 1.0, -2.0];
        assert_eq!(sample_token(&l, 0.0, 1.0, &mut rng), 1);
        // a tiny nucleus keeps only the best token
        for _ in 0..20 {
            assert_eq!(sample_token(&l, 1.0, 0.01, &mut rng), 1);
        }
        // full sampling reaches other tokens
        let seen: std::collections::HashSet<u32> = (0..200).map(|_| sample_token(&l, 2.0, 1.0, &mut rng)).collect();
        assert!(seen.len() >= 3, "{seen:?}");
    }
}
