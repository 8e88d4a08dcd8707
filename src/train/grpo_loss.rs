//! The GRPO objective (Shao et al. 2024) in its Dr. GRPO form (Liu et al. 2025) as pure functions —
//! group-relative advantages ([`group_advantages`]) and the clipped surrogate with an optional KL term
//! over per-token log-probs ([`grpo_loss`]) — and the same loss on tensors ([`grpo_loss_tensor`], the one
//! that is differentiated), tested against each other.
//!
//! Per sampled token `t` of completion `i` with advantage `A_i`, ratio `r = exp(logπ − logπ_old)`:
//! `ℓ = −min(r·A_i, clip(r, 1 − ε_low, 1 + ε_high)·A_i) + β·k3`, with the k3 estimator of
//! KL(π‖π_ref) `k3 = exp(logπ_ref − logπ) − (logπ_ref − logπ) − 1`. Aggregation:
//! - `dr_grpo`: `Σ_i Σ_t ℓ / (batch · norm_len)` — no per-sequence length normalisation (a constant
//!   `norm_len`, the generation limit), so long wrong answers are not favoured;
//! - `grpo`: the original `mean_i (Σ_t ℓ / |o_i|)`.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// How per-token losses become the batch loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Σ over all tokens / (batch · norm_len) (Dr. GRPO).
    #[default]
    DrGrpo,
    /// Mean over completions of the per-completion token mean (the original GRPO).
    Grpo,
}

/// The settings of the surrogate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrpoLossConfig {
    pub clip_low: f64,
    pub clip_high: f64,
    /// KL weight β (0: no reference needed).
    pub beta: f64,
    pub loss_type: LossType,
    /// The constant length of `dr_grpo` (the generation limit in tokens).
    pub norm_len: usize,
}

/// Batch statistics of one step (TRL's GRPO names in the metrics file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpoStats {
    pub loss: f64,
    /// Mean k3 KL estimate per token (0 without a reference).
    pub kl: f64,
    /// Share of tokens whose ratio was clipped (`clip_ratio/region_mean`).
    pub clip_ratio: f64,
    /// Mean tokens per completion (`completions/mean_length`).
    pub mean_length: f64,
    /// Mean token entropy of the policy's next-token distributions (NaN where not computed).
    pub entropy: f64,
    /// Mean advantage weighted by tokens (≈ 0 for balanced groups).
    pub advantage_mean: f64,
}

/// Group-relative advantages of one group's rewards (pure): `r − mean(r)`, divided by the group's
/// standard deviation (+1e-4) when `scale` (the original GRPO; Dr. GRPO does not).
pub fn group_advantages(rewards: &[f64], scale: bool) -> Vec<f64> {
    if rewards.is_empty() {
        return Vec::new();
    }
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    rewards
        .iter()
        .map(|r| {
            let a = r - mean;
            if scale { a / (std + 1e-4) } else { a }
        })
        .collect()
}

fn k3(lp: f64, reference: f64) -> f64 {
    let d = reference - lp;
    d.exp() - d - 1.0
}

/// The surrogate loss of a batch from per-token log-probs (pure): `lp[i]`, `old[i]` (and `reference[i]`
/// when β > 0) are completion `i`'s tokens, `adv[i]` its advantage.
pub fn grpo_loss(
    lp: &[Vec<f64>],
    old: &[Vec<f64>],
    reference: Option<&[Vec<f64>]>,
    adv: &[f64],
    cfg: &GrpoLossConfig,
) -> GrpoStats {
    let b = lp.len();
    assert!(
        b > 0 && old.len() == b && adv.len() == b && reference.is_none_or(|r| r.len() == b),
        "grpo_loss: batch sizes differ or are 0"
    );
    let (mut total, mut kl, mut clipped, mut tokens, mut adv_sum) = (0.0, 0.0, 0.0, 0usize, 0.0);
    for i in 0..b {
        let n = lp[i].len();
        assert_eq!(old[i].len(), n, "grpo_loss: row {i} lengths differ");
        let mut row = 0.0;
        for t in 0..n {
            let r = (lp[i][t] - old[i][t]).exp();
            let a = adv[i];
            let rc = r.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
            let mut l = -(r * a).min(rc * a);
            if (r * a) > (rc * a) {
                clipped += 1.0;
            }
            if let Some(rf) = reference {
                let k = k3(lp[i][t], rf[i][t]);
                kl += k;
                l += cfg.beta * k;
            }
            row += l;
            adv_sum += a;
        }
        tokens += n;
        total += match cfg.loss_type {
            LossType::DrGrpo => row,
            LossType::Grpo => row / n.max(1) as f64,
        };
    }
    let denom = match cfg.loss_type {
        LossType::DrGrpo => (b * cfg.norm_len.max(1)) as f64,
        LossType::Grpo => b as f64,
    };
    let nt = tokens.max(1) as f64;
    GrpoStats {
        loss: total / denom,
        kl: kl / nt,
        clip_ratio: clipped / nt,
        mean_length: tokens as f64 / b as f64,
        entropy: f64::NAN,
        advantage_mean: adv_sum / nt,
    }
}

/// [`grpo_loss`] on dense tensors (differentiable in `lp`): `lp`, `old`, `reference`, `mask` are
/// `[batch, seq]` (mask 1 on a completion's tokens), `adv` is `[batch]`. Returns the loss `[1]` and the
/// statistics (entropy NaN: the caller fills it in).
pub fn grpo_loss_tensor<B: Backend>(
    lp: Tensor<B, 2>,
    old: Tensor<B, 2>,
    reference: Option<Tensor<B, 2>>,
    mask: Tensor<B, 2>,
    adv: &[f64],
    cfg: &GrpoLossConfig,
) -> (Tensor<B, 1>, GrpoStats) {
    let [b, t] = lp.dims();
    let device = lp.device();
    let a = Tensor::<B, 1>::from_data(
        TensorData::new(adv.iter().map(|&x| x as f32).collect::<Vec<_>>(), [b]),
        &device,
    )
    .reshape([b, 1])
    .expand([b, t]); // [batch, seq]
    let ratio = lp.clone().sub(old).exp(); // [batch, seq]
    let clipped = ratio.clone().clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high); // [batch, seq]
    let s1 = ratio.mul(a.clone()); // [batch, seq]
    let s2 = clipped.mul(a.clone()); // [batch, seq]
    let was_clipped = s1.clone().greater(s2.clone()).float().mul(mask.clone()); // [batch, seq]
    let mut per_token = s1.min_pair(s2).neg(); // [batch, seq]
    let mut kl_sum = 0.0;
    if let Some(r) = reference {
        let d = r.sub(lp.clone()); // [batch, seq]
        let k = d.clone().exp().sub(d).sub_scalar(1.0).mul(mask.clone()); // [batch, seq]
        kl_sum = scalar(k.clone().sum());
        per_token = per_token.add(k.mul_scalar(cfg.beta));
    }
    let per_token = per_token.mul(mask.clone()); // [batch, seq]
    let lens = mask.clone().sum_dim(1); // [batch, 1]
    let loss = match cfg.loss_type {
        LossType::DrGrpo => per_token.sum().div_scalar((b * cfg.norm_len.max(1)) as f64), // [1]
        LossType::Grpo => per_token
            .sum_dim(1)
            .div(lens.clone().clamp_min(1.0))
            .mean()
            .reshape([1]), // [1]
    };
    let nt = scalar(mask.clone().sum()).max(1.0);
    let stats = GrpoStats {
        loss: scalar(loss.clone()),
        kl: kl_sum / nt,
        clip_ratio: scalar(was_clipped.sum()) / nt,
        mean_length: scalar(lens.sum()) / b as f64,
        entropy: f64::NAN,
        advantage_mean: scalar(a.mul(mask).sum()) / nt,
    };
    (loss, stats)
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

/// Rows of per-token values laid out densely as `[rows, seq]` (zero-padded on the right) with their
/// mask: the layout [`grpo_loss_tensor`] takes.
pub fn dense_rows(rows: &[Vec<f64>], seq: usize) -> (Vec<f32>, Vec<f32>) {
    let mut v = vec![0.0f32; rows.len() * seq];
    let mut m = vec![0.0f32; rows.len() * seq];
    for (i, r) in rows.iter().enumerate() {
        for (t, &x) in r.iter().enumerate().take(seq) {
            v[i * seq + t] = x as f32;
            m[i * seq + t] = 1.0;
        }
    }
    (v, m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn t2(rows: &[Vec<f64>], seq: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (v, m) = dense_rows(rows, seq);
        let d = Default::default();
        (
            Tensor::from_data(TensorData::new(v, [rows.len(), seq]), &d),
            Tensor::from_data(TensorData::new(m, [rows.len(), seq]), &d),
        )
    }

    #[test]
    fn advantages_are_centred_and_scaled_on_request() {
        let a = group_advantages(&[1.0, 0.0, 0.5, 0.5], false);
        assert_eq!(a, vec![0.5, -0.5, 0.0, 0.0]);
        let s = group_advantages(&[1.0, 0.0], true);
        assert!((s[0] - 0.5 / (0.5 + 1e-4)).abs() < 1e-12 && (s[0] + s[1]).abs() < 1e-12);
        assert_eq!(group_advantages(&[0.3, 0.3, 0.3], false), vec![0.0; 3]);
    }

    #[test]
    fn pure_and_tensor_losses_agree() {
        let lp = vec![vec![-0.5, -1.2, -0.1], vec![-2.0], vec![-0.3, -0.9]];
        let old = vec![vec![-0.7, -1.0, -0.1], vec![-1.5], vec![-0.3, -1.4]];
        let rf = vec![vec![-0.6, -1.1, -0.2], vec![-1.9], vec![-0.2, -1.0]];
        let adv = [0.4, -0.3, -0.1];
        for loss_type in [LossType::DrGrpo, LossType::Grpo] {
            for beta in [0.0, 0.05] {
                let cfg = GrpoLossConfig {
                    clip_low: 0.2,
                    clip_high: 0.28,
                    beta,
                    loss_type,
                    norm_len: 4,
                };
                let reference = (beta > 0.0).then_some(rf.as_slice());
                let p = grpo_loss(&lp, &old, reference, &adv, &cfg);
                let (l, m) = t2(&lp, 3);
                let (o, _) = t2(&old, 3);
                let r = (beta > 0.0).then(|| t2(&rf, 3).0);
                let (_, s) = grpo_loss_tensor(l, o, r, m, &adv, &cfg);
                assert!(
                    (p.loss - s.loss).abs() < 1e-6,
                    "{loss_type:?} {beta}: {p:?} vs {s:?}"
                );
                assert!((p.kl - s.kl).abs() < 1e-6);
                assert!((p.clip_ratio - s.clip_ratio).abs() < 1e-9);
                assert!((p.mean_length - 2.0).abs() < 1e-12 && (s.mean_length - 2.0).abs() < 1e-6);
                // one token of six is clipped: row 1 (r = e^-0.5 < 0.8 with A < 0); row 2's second
                // token (r = e^0.5 > 1.28 with A < 0) is not: the surrogate keeps its gradient
                assert!((p.clip_ratio - 1.0 / 6.0).abs() < 1e-9, "{}", p.clip_ratio);
            }
        }
    }

    #[test]
    fn at_ratio_one_the_gradient_follows_the_advantage() {
        // d loss / d lp = −A / (batch·norm_len) per token when π = π_old and β = 0
        let lp = vec![vec![-1.0, -1.0], vec![-1.0, -1.0]];
        let adv = [1.0, -1.0];
        let cfg = GrpoLossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            beta: 0.0,
            loss_type: LossType::DrGrpo,
            norm_len: 2,
        };
        type AB = burn::backend::Autodiff<B>;
        let (v, m) = dense_rows(&lp, 2);
        let d = Default::default();
        let l = Tensor::<AB, 2>::from_data(TensorData::new(v.clone(), [2, 2]), &d).require_grad();
        let o = Tensor::<AB, 2>::from_data(TensorData::new(v, [2, 2]), &d);
        let m = Tensor::<AB, 2>::from_data(TensorData::new(m, [2, 2]), &d);
        let (loss, s) = grpo_loss_tensor(l.clone(), o, None, m, &adv, &cfg);
        assert!(s.loss.abs() < 1e-9);
        let g = l
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(g, vec![-0.25, -0.25, 0.25, 0.25]);
    }
}
