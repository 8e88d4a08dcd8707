//! Batched generation with a KV cache: greedy or sampled (temperature, top-p), stopping at `<|end|>`
//! or a length limit. Sampling is done on the host from the logits with one seeded stream per row, so
//! it is reproducible and independent of how the batch is split: on the CPU backends the rows are
//! split over threads (decoding a small model one token at a time is too little work per op for the
//! backend's own threads to use the cores).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::inputs::{patches_tensor, prefix_tokens};
use super::text::KvCache;
use super::tokenizer::CodeTokenizer;
use super::vlm::{Vlm, repeat_rows};
use super::{ModelError, VlmConfig};
use crate::data::Sample;

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
    /// Threads the batch's rows are split over (one part per thread, each decoding its rows with the
    /// shared weights); 0 → one per core of the rayon pool on CPU backends (`flex`, `ndarray`), 1 on
    /// the GPU.
    pub threads: usize,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_new_tokens: 512,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            threads: 0,
        }
    }
}

impl GenerateConfig {
    /// The number of parts a batch of `rows` rows on backend `B` is split into.
    pub fn parts<B: Backend>(&self, device: &B::Device, rows: usize) -> usize {
        let n = match self.threads {
            0 if is_cpu_backend::<B>(device) => rayon::current_num_threads(),
            0 => 1,
            t => t,
        };
        n.clamp(1, rows.max(1))
    }
}

/// Whether `B` computes on the CPU (burn's `flex` or `ndarray`, with or without autodiff).
pub fn is_cpu_backend<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name.contains("flex") || name.contains("ndarray")
}

/// The sampling stream of row `row` of a batch seeded `seed`.
fn row_rng(seed: u64, row: usize) -> StdRng {
    StdRng::seed_from_u64(crate::geom::rng::Rng::new(seed, row as u64).next_u64())
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
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |a, (i, &v)| {
                if v > a.1 { (i, v) } else { a }
            })
            .0 as u32
    };
    if temperature <= 0.0 {
        return argmax();
    }
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v - mx) / temperature).exp()))
        .collect();
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
/// same `prefix` tokens (the prompt and `<|begin|>`). Rows stop independently at `end`. The rows are
/// split into [`GenerateConfig::parts`] contiguous parts decoded on as many threads; row `r` samples
/// from its own stream ([`row_rng`]), so the result does not depend on the split.
pub fn generate<B: Backend>(
    model: &Vlm<B>,
    image: Tensor<B, 3>,
    prefix: &[u32],
    end: u32,
    max_seq_len: usize,
    cfg: &GenerateConfig,
) -> Vec<Generated> {
    let [b, _, _] = image.dims();
    let parts = cfg.parts::<B>(&image.device(), b);
    if parts <= 1 {
        return generate_part(model, image, 0, prefix, end, max_seq_len, cfg);
    }
    on_threads(split_rows(image, parts), |r0, img| {
        generate_part(model, img, r0, prefix, end, max_seq_len, cfg)
    })
}

/// [`generate`] from image patches `[images, n_patches, patch_dim]` with `k` rows per image (an
/// image's rows adjacent, as [`repeat_rows`]). With at least as many images as parts, each thread
/// also encodes its own images (the vision tower and the prefill run split too); otherwise the batch
/// is encoded once and [`generate`] splits the rows. Either way row `r` is the same.
pub fn generate_from_patches<B: Backend>(
    model: &Vlm<B>,
    patches: Tensor<B, 3>,
    k: usize,
    prefix: &[u32],
    end: u32,
    max_seq_len: usize,
    cfg: &GenerateConfig,
) -> Vec<Generated> {
    let [n, _, _] = patches.dims();
    let k = k.max(1);
    let encode = |p: Tensor<B, 3>| {
        let image = model.encode_image(p); // [images, n_image_tokens, hidden]
        if k > 1 { repeat_rows(image, k) } else { image } // [images·k, n_image_tokens, hidden]
    };
    let parts = cfg.parts::<B>(&patches.device(), n);
    if parts <= 1 {
        return generate(model, encode(patches), prefix, end, max_seq_len, cfg);
    }
    on_threads(split_rows(patches, parts), |i0, p| {
        generate_part(model, encode(p), i0 * k, prefix, end, max_seq_len, cfg)
    })
}

/// `x: [rows, ..]` cut into `parts` contiguous parts of at most ⌈rows / parts⌉ rows, each with its
/// first row.
fn split_rows<B: Backend>(x: Tensor<B, 3>, parts: usize) -> Vec<(usize, Tensor<B, 3>)> {
    let [rows, _, _] = x.dims();
    let size = rows.div_ceil(parts.max(1));
    (0..rows)
        .step_by(size)
        .map(|r0| (r0, x.clone().narrow(0, r0, size.min(rows - r0)))) // [part, ..]
        .collect()
}

/// `f(first row, part)` for every part, each on its own plain thread (not rayon tasks: the backend's
/// own ops run on the rayon pool, and parts that occupied its workers starved them — flex on 2 cores
/// used 1.0 core that way), the results concatenated in order.
fn on_threads<T: Send>(
    parts: Vec<(usize, T)>,
    f: impl Fn(usize, T) -> Vec<Generated> + Sync,
) -> Vec<Generated> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|(r0, t)| s.spawn(move || f(r0, t)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// [`generate`] on one part of a batch whose first row is row `row0` of the whole batch.
fn generate_part<B: Backend>(
    model: &Vlm<B>,
    image: Tensor<B, 3>,
    row0: usize,
    prefix: &[u32],
    end: u32,
    max_seq_len: usize,
    cfg: &GenerateConfig,
) -> Vec<Generated> {
    let [b, n, _] = image.dims();
    let device = image.device();
    let mut rngs: Vec<StdRng> = (0..b).map(|r| row_rng(cfg.seed, row0 + r)).collect();
    let ids: Vec<i64> = (0..b)
        .flat_map(|_| prefix.iter().map(|&t| t as i64))
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, prefix.len()]), &device); // [batch, prefix]
    let cond = model.image_condition(&image); // [batch, 1, hidden]
    let x = Tensor::cat(vec![image, model.embed_text(ids, cond.as_ref())], 1); // [batch, n + prefix, hidden]
    let mut cache = KvCache::empty();
    let mut logits = model.step(x, &mut cache, n); // [batch, vocab]
    let budget = cfg
        .max_new_tokens
        .min(max_seq_len.saturating_sub(n + prefix.len()));
    let mut out: Vec<Generated> = (0..b)
        .map(|_| Generated {
            tokens: Vec::new(),
            finished: false,
        })
        .collect();
    // rows that finished leave the batch (their cache rows too), so a few long samples do not keep
    // the whole batch running; `rows[r]` is the output index of batch row `r`
    let mut rows: Vec<usize> = (0..b).collect();
    let mut cond = cond;
    for i in 0..budget {
        let [_, v] = logits.dims();
        let host: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits");
        let mut next = Vec::with_capacity(rows.len());
        for (r, &o) in rows.iter().enumerate() {
            let t = sample_token(
                &host[r * v..(r + 1) * v],
                cfg.temperature,
                cfg.top_p,
                &mut rngs[o],
            );
            let g = &mut out[o];
            if t == end {
                g.finished = true;
            } else {
                g.tokens.push(t);
            }
            next.push(t as i64);
        }
        let keep: Vec<usize> = (0..rows.len())
            .filter(|&r| !out[rows[r]].finished)
            .collect();
        // no decoder step after the last token the budget allows (its logits would go unused)
        if keep.is_empty() || i + 1 == budget {
            break;
        }
        if keep.len() < rows.len() {
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(
                    keep.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                    [keep.len()],
                ),
                &device,
            );
            cache.select_rows(idx.clone());
            cond = cond.map(|c| c.select(0, idx)); // [kept, 1, hidden]
            next = keep.iter().map(|&r| next[r]).collect();
            rows = keep.iter().map(|&r| rows[r]).collect();
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(next, [rows.len(), 1]), &device); // [kept, 1]
        logits = model.step(model.embed_text(ids, cond.as_ref()), &mut cache, n);
    }
    out
}

/// One program written for an image.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub program: String,
    /// Whether generation ended with `<|end|>` (else the length limit cut it).
    pub finished: bool,
    pub n_tokens: usize,
}

/// `k` programs per sample, decoded: rows in sample order (sample `i`'s `k` programs at
/// `[i·k, (i+1)·k)`). Samples are grouped by prompt and generated `batch / k` images at a time; chunk
/// `c` of a prompt group samples with seed `cfg.seed + c`. `progress` gets the number of samples done.
#[allow(clippy::too_many_arguments)]
pub fn generate_programs<B: Backend>(
    model: &Vlm<B>,
    c: &VlmConfig,
    tok: &CodeTokenizer,
    samples: &[&Sample],
    k: usize,
    cfg: &GenerateConfig,
    batch: usize,
    device: &B::Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Program>, ModelError> {
    let k = k.max(1);
    let per_batch = (batch / k).max(1);
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        groups.entry(s.prompt.as_str()).or_default().push(i);
    }
    let mut out: Vec<Option<Program>> = vec![None; samples.len() * k];
    let mut done = 0;
    for (prompt, group) in groups {
        let prefix = prefix_tokens(tok, prompt)?;
        for (ci, chunk) in group.chunks(per_batch).enumerate() {
            let rows: Vec<&Sample> = chunk.iter().map(|&i| samples[i]).collect();
            let patches = patches_tensor::<B>(&rows, c, device); // [chunk, n_patches, patch_dim]
            let gen_cfg = GenerateConfig {
                seed: cfg.seed.wrapping_add(ci as u64),
                ..cfg.clone()
            };
            for (r, g) in
                generate_from_patches(model, patches, k, &prefix, tok.end, c.max_seq_len, &gen_cfg)
                    .into_iter()
                    .enumerate()
            {
                let program = tok.decode(&g.tokens)?;
                out[chunk[r / k] * k + r % k] = Some(Program {
                    program,
                    finished: g.finished,
                    n_tokens: g.tokens.len(),
                });
            }
            done += chunk.len();
            progress(done);
        }
    }
    Ok(out
        .into_iter()
        .map(|p| p.expect("every row generated"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sample_the_same_tokens_however_the_batch_is_split() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let c = VlmConfig::named("tiny", 64).unwrap();
        B::seed(&device, 3);
        let model = c.init::<B>(&device);
        let n_patch = c.grid() * c.grid();
        let patches = Tensor::<B, 3>::random(
            [5, n_patch, c.patch_dim()],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let image = model.encode_image(patches); // [5, n_image_tokens, hidden]
        let run = |threads: usize, temperature: f32| {
            let cfg = GenerateConfig {
                max_new_tokens: 24,
                temperature,
                top_p: 0.95,
                seed: 7,
                threads,
            };
            assert_eq!(cfg.parts::<B>(&device, 5), threads.min(5));
            generate(&model, image.clone(), &[1, 2, 3], 5, c.max_seq_len, &cfg)
        };
        for t in [0.0, 1.5] {
            let one = run(1, t);
            assert_eq!(one.len(), 5);
            assert!(one.iter().all(|g| !g.tokens.is_empty()));
            for threads in [2, 3, 5] {
                assert_eq!(run(threads, t), one, "threads {threads}, temperature {t}");
            }
        }
        // from patches (each thread encoding its own images), k rows per image: the same rows
        let patches = Tensor::<B, 3>::random(
            [3, n_patch, c.patch_dim()],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let from = |threads: usize| {
            let cfg = GenerateConfig {
                max_new_tokens: 16,
                temperature: 1.5,
                top_p: 1.0,
                seed: 9,
                threads,
            };
            generate_from_patches(&model, patches.clone(), 2, &[1, 2], 5, c.max_seq_len, &cfg)
        };
        let one = from(1);
        assert_eq!(one.len(), 6);
        for threads in [2, 3, 4] {
            assert_eq!(from(threads), one, "from patches, threads {threads}");
        }
        // sampled rows differ from one another (each has its own stream)
        let s = run(2, 1.5);
        assert!(s.iter().any(|g| g.tokens != s[0].tokens));
    }

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
        let seen: std::collections::HashSet<u32> = (0..200)
            .map(|_| sample_token(&l, 2.0, 1.0, &mut rng))
            .collect();
        assert!(seen.len() >= 3, "{seen:?}");
    }
}
