//! The DPO loss (Rafailov et al. 2023, with the label smoothing of cDPO) as a pure function of
//! per-sequence summed log-probs with TRL's statistics ([`dpo_loss`]), and the same on tensors
//! ([`dpo_loss_tensor`], the one that is differentiated), tested against each other.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

/// Batch means of the DPO loss and TRL's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DpoStats {
    pub loss: f64,
    /// β·(log π(y_w) − log π_ref(y_w)).
    pub reward_chosen: f64,
    /// β·(log π(y_l) − log π_ref(y_l)).
    pub reward_rejected: f64,
    pub margin: f64,
    /// Share of pairs with reward_chosen > reward_rejected.
    pub accuracy: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
}

fn log_sigmoid_f64(x: f64) -> f64 {
    // log σ(x) = −softplus(−x), computed stably on both sides
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// The sigmoid DPO loss over a batch of per-sequence summed log-probs (pure):
/// `h = β[(π_w − ref_w) − (π_l − ref_l)]`, `loss = −(1−ε)·log σ(h) − ε·log σ(−h)`, averaged.
pub fn dpo_loss(
    policy_chosen: &[f64],
    policy_rejected: &[f64],
    ref_chosen: &[f64],
    ref_rejected: &[f64],
    beta: f64,
    label_smoothing: f64,
) -> DpoStats {
    let n = policy_chosen.len();
    assert!(
        n > 0 && policy_rejected.len() == n && ref_chosen.len() == n && ref_rejected.len() == n,
        "dpo_loss: batch sizes differ or are 0"
    );
    let mut s = DpoStats::default();
    for i in 0..n {
        let rc = beta * (policy_chosen[i] - ref_chosen[i]);
        let rr = beta * (policy_rejected[i] - ref_rejected[i]);
        let h = rc - rr;
        s.loss +=
            -(1.0 - label_smoothing) * log_sigmoid_f64(h) - label_smoothing * log_sigmoid_f64(-h);
        s.reward_chosen += rc;
        s.reward_rejected += rr;
        s.accuracy += if rc > rr { 1.0 } else { 0.0 };
        s.logps_chosen += policy_chosen[i];
        s.logps_rejected += policy_rejected[i];
    }
    let n = n as f64;
    s.loss /= n;
    s.reward_chosen /= n;
    s.reward_rejected /= n;
    s.accuracy /= n;
    s.logps_chosen /= n;
    s.logps_rejected /= n;
    s.margin = s.reward_chosen - s.reward_rejected;
    s
}

/// [`dpo_loss`]'s loss on tensors (differentiable in the policy log-probs): all inputs `[batch]`.
pub fn dpo_loss_tensor<B: Backend>(
    policy_chosen: Tensor<B, 1>,
    policy_rejected: Tensor<B, 1>,
    ref_chosen: Tensor<B, 1>,
    ref_rejected: Tensor<B, 1>,
    beta: f64,
    label_smoothing: f64,
) -> Tensor<B, 1> {
    let h = policy_chosen
        .sub(ref_chosen)
        .sub(policy_rejected.sub(ref_rejected))
        .mul_scalar(beta); // [batch]
    let pos = log_sigmoid(h.clone()).mul_scalar(-(1.0 - label_smoothing)); // [batch]
    let neg = log_sigmoid(h.neg()).mul_scalar(-label_smoothing); // [batch]
    pos.add(neg).mean() // [1]
}

/// The differentiable DPO objective of a batch — [`dpo_loss_tensor`] on the policy's summed log-probs
/// `chosen`, `rejected` (`[batch]` each) against reference log-probs `refs`, plus `nll_weight` × the
/// mean NLL per chosen token (`chosen_tokens` of them; RPO) — and the batch's [`DpoStats`].
pub fn dpo_objective<B: AutodiffBackend>(
    chosen: Tensor<B, 1>,
    rejected: Tensor<B, 1>,
    refs: &[(f64, f64)],
    beta: f64,
    label_smoothing: f64,
    nll_weight: f64,
    chosen_tokens: usize,
) -> (Tensor<B, 1>, DpoStats) {
    let device = chosen.device();
    let rc: Vec<f32> = refs.iter().map(|r| r.0 as f32).collect();
    let rr: Vec<f32> = refs.iter().map(|r| r.1 as f32).collect();
    let rc_t = Tensor::<B, 1>::from_floats(rc.as_slice(), &device); // [batch]
    let rr_t = Tensor::<B, 1>::from_floats(rr.as_slice(), &device); // [batch]
    let stats = dpo_loss(
        &to_vec(chosen.clone().inner()),
        &to_vec(rejected.clone().inner()),
        &refs.iter().map(|r| r.0).collect::<Vec<_>>(),
        &refs.iter().map(|r| r.1).collect::<Vec<_>>(),
        beta,
        label_smoothing,
    );
    let nll = chosen
        .clone()
        .sum()
        .neg()
        .div_scalar(chosen_tokens.max(1) as f64); // [1]
    let mut loss = dpo_loss_tensor(chosen, rejected, rc_t, rr_t, beta, label_smoothing); // [1]
    if nll_weight > 0.0 {
        loss = loss.add(nll.mul_scalar(nll_weight));
    }
    (loss, stats)
}

/// The values of a 1-D tensor.
pub fn to_vec<B: Backend>(t: Tensor<B, 1>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_default()
}

/// The scalar of a one-element tensor.
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_matches_hand_computed_values() {
        // h = β[(πw − rw) − (πl − rl)] = 0.1·[(−10 + 12) − (−20 + 18)] = 0.4
        let s = dpo_loss(&[-10.0], &[-20.0], &[-12.0], &[-18.0], 0.1, 0.0);
        // −log σ(0.4) = ln(1 + e^−0.4) = 0.513015...
        assert!((s.loss - 0.513_015_3).abs() < 1e-6, "{s:?}");
        assert!((s.reward_chosen - 0.2).abs() < 1e-12 && (s.reward_rejected + 0.2).abs() < 1e-12);
        assert!((s.margin - 0.4).abs() < 1e-12);
        assert_eq!(s.accuracy, 1.0);
        assert_eq!((s.logps_chosen, s.logps_rejected), (-10.0, -20.0));
        // policy = reference: h = 0, loss = ln 2 for any smoothing
        let s = dpo_loss(
            &[-3.0, -5.0],
            &[-4.0, -1.0],
            &[-3.0, -5.0],
            &[-4.0, -1.0],
            0.5,
            0.2,
        );
        assert!((s.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(s.accuracy, 0.0);
        // label smoothing ε = 0.1, h = 0.4: 0.9·ln(1+e^−0.4) + 0.1·ln(1+e^0.4) = 0.461714 + 0.091301
        let s = dpo_loss(&[-10.0], &[-20.0], &[-12.0], &[-18.0], 0.1, 0.1);
        assert!(
            (s.loss - (0.9 * 0.513_015_3 + 0.1 * 0.913_015_3)).abs() < 1e-6,
            "{s:?}"
        );
        // a wrongly ordered pair: h = 1·(−1 − 1) = −2, loss = ln(1 + e²) = 2.126928
        let s = dpo_loss(&[-6.0], &[-4.0], &[-5.0], &[-5.0], 1.0, 0.0);
        assert!((s.loss - 2.126_928_0).abs() < 1e-6);
        assert_eq!(s.accuracy, 0.0);
        // large |h| stays finite
        let s = dpo_loss(&[0.0], &[-1e4], &[0.0], &[0.0], 1.0, 0.0);
        assert!(s.loss >= 0.0 && s.loss < 1e-12);
        let s = dpo_loss(&[-1e4], &[0.0], &[0.0], &[0.0], 1.0, 0.0);
        assert!((s.loss - 1e4).abs() < 1e-6);
    }

    #[test]
    fn tensor_loss_equals_pure_loss() {
        type B = burn::backend::NdArray<f32>;
        let d = Default::default();
        let pc = [-10.0, -3.0, -7.5];
        let pr = [-20.0, -2.0, -7.0];
        let rc = [-12.0, -3.5, -7.0];
        let rr = [-18.0, -2.5, -8.0];
        let t = |v: &[f64]| {
            Tensor::<B, 1>::from_floats(
                v.iter().map(|&x| x as f32).collect::<Vec<_>>().as_slice(),
                &d,
            )
        };
        for (beta, ls) in [(0.1, 0.0), (0.5, 0.2), (2.0, 0.05)] {
            let want = dpo_loss(&pc, &pr, &rc, &rr, beta, ls).loss;
            let got = scalar(dpo_loss_tensor(t(&pc), t(&pr), t(&rc), t(&rr), beta, ls));
            assert!(
                (got - want).abs() < 1e-5,
                "β {beta} ε {ls}: {got} vs {want}"
            );
        }
    }
}
