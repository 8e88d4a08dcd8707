//! LoRA adapters on a frozen, optionally weight-quantized base (QLoRA): [`LoraLinear`] is a linear
//! layer `y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ` whose base `W` is either an f32 parameter or a
//! [`QTensor`] (int8 / int4 / NF4) dequantized on the fly in the forward, so only the packed weight
//! stays in memory between steps. Adapters are attached by module name ([`LoraConfig::targets`]),
//! merged into / unmerged from an f32 base, switched off for a scope ([`with_adapters_disabled`]:
//! the DPO reference is the base without a second copy of the model), and saved / loaded alone as
//! safetensors with PEFT-style keys (`<path>.lora_A.weight` `[r, in]`, `<path>.lora_B.weight`
//! `[out, r]`).
//!
//! A model exposes its linear layers to the functions here by implementing [`LinearLayers`].
//!
//! Wiring into the VLM:
//! - `layers.rs` re-exports [`LoraLinear`] as the model's `Linear` (same `new` / `new_scaled` /
//!   `forward`, same checkpoint keys `weight`, `bias`), and `Vlm` implements [`LinearLayers`]
//!   (`visual.patch_embed.proj`, `visual.blocks.{i}.attn.{qkv,proj}`, `visual.blocks.{i}.mlp.{fc1,fc2}`,
//!   `visual.merger.mlp.{fc1,fc2}`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`,
//!   `model.layers.{i}.mlp.{gate,up,down}_proj`, `lm_head`).
//! - SFT / DPO (`train::adapt`), after building (and loading) the base: `model = model.no_grad();`
//!   `quantize_linears(&mut model, quantize, |p| p != "lm_head")?;`
//!   `apply_lora(&mut model, &lora_cfg, device)?;` — the optimizer then updates only the adapters
//!   (the only parameters with gradients). DPO's reference log-probs:
//!   `with_adapters_disabled(|| reference_logprobs(&policy.valid(), ..))`. The final model is
//!   exported with [`merge_and_unload`] (a plain f32 checkpoint that `eval` loads as any other).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::quant::{QTensor, QuantError, QuantFormat, Quantize};

/// Recipe section `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank r of the adapters (0 = no adapters: full fine-tuning).
    pub rank: usize,
    /// The update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
    /// Module names that get adapters: a target matches a layer whose path equals it or ends with
    /// `.<target>` (`"q_proj"` matches `model.layers.3.self_attn.q_proj`); `"all-linear"` matches
    /// every linear layer.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl LoraConfig {
    /// Whether the layer at `path` is a target.
    pub fn matches(&self, path: &str) -> bool {
        self.targets.iter().any(|t| {
            t == "all-linear"
                || path == t
                || path
                    .strip_suffix(t.as_str())
                    .is_some_and(|p| p.ends_with('.'))
        })
    }

    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank > 0 && !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraError::Config(format!(
                "alpha must be positive, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::Config(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.rank > 0 && self.targets.is_empty() {
            return Err(LoraError::Config("rank > 0 but no targets".into()));
        }
        Ok(())
    }
}

/// Errors of adapters and quantized bases.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("bad [lora] settings: {0}")]
    Config(String),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("layer {0}: the base is quantized; dequantize it before merging adapters")]
    QuantizedBase(String),
    #[error("layer {0}: adapters are already merged")]
    AlreadyMerged(String),
    #[error("layer {0}: adapters are not merged")]
    NotMerged(String),
    #[error("no linear layer matches the LoRA targets {0:?}")]
    NoTargets(Vec<String>),
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

fn ferr(path: &Path, msg: impl std::fmt::Display) -> LoraError {
    LoraError::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

thread_local! {
    static ADAPTERS_OFF: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every adapter switched off on this thread (the forward computes the base alone,
/// also when adapters are merged), like PEFT's `disable_adapter()`: the DPO reference model is the
/// policy's base without a second copy of the weights.
pub fn with_adapters_disabled<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ADAPTERS_OFF.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ADAPTERS_OFF.with(|c| c.replace(true)));
    f()
}

/// Whether adapters are active on this thread (see [`with_adapters_disabled`]).
pub fn adapters_enabled() -> bool {
    !ADAPTERS_OFF.with(|c| c.get())
}

/// A linear layer `[out, in]` (Hugging Face layout) with a frozen f32 or quantized base and an
/// optional LoRA adapter. Its checkpoint keys are those of a plain linear layer (`weight`, `bias`)
/// plus `lora_a` / `lora_b` when an adapter is attached; a quantized base is not a parameter and is
/// not saved with the module (save adapters with [`save_adapters`]).
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// f32 base `[out, in]`; `None` when the base is quantized.
    pub weight: Option<Param<Tensor<B, 2>>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Quantized base `[out, in]` (shared, read-only).
    #[module(skip)]
    pub qweight: Option<Arc<QTensor>>,
    /// LoRA down-projection `A: [rank, in]`.
    pub lora_a: Option<Param<Tensor<B, 2>>>,
    /// LoRA up-projection `B: [out, rank]` (starts at zero, so a new adapter changes nothing).
    pub lora_b: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    pub lora_alpha: f64,
    #[module(skip)]
    pub lora_dropout: f64,
    /// Whether `(α/r) B A` has been added into `weight`.
    #[module(skip)]
    pub merged: bool,
    #[module(skip)]
    pub d_in: usize,
    #[module(skip)]
    pub d_out: usize,
}

impl<B: Backend> LoraLinear<B> {
    /// A trainable f32 linear layer, `W ~ N(0, 1/in)`, no adapter.
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        Self::new_scaled(d_in, d_out, bias, 1.0, device)
    }

    /// As [`Self::new`] with `W ~ N(0, scale² / in)`.
    pub fn new_scaled(
        d_in: usize,
        d_out: usize,
        bias: bool,
        scale: f64,
        device: &B::Device,
    ) -> Self {
        let std = scale * (1.0 / d_in as f64).sqrt();
        let weight = Tensor::random([d_out, d_in], Distribution::Normal(0.0, std), device); // [out, in]
        let bias = bias.then(|| Tensor::zeros([d_out], device));
        Self::from_tensors(weight, bias)
    }

    /// From a weight `[out, in]` and an optional bias `[out]` (both trainable until an adapter is added).
    pub fn from_tensors(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        let [d_out, d_in] = weight.dims();
        LoraLinear {
            weight: Some(Param::from_tensor(weight)),
            bias: bias.map(Param::from_tensor),
            qweight: None,
            lora_a: None,
            lora_b: None,
            lora_alpha: 0.0,
            lora_dropout: 0.0,
            merged: false,
            d_in,
            d_out,
        }
    }

    pub fn in_features(&self) -> usize {
        self.d_in
    }

    pub fn out_features(&self) -> usize {
        self.d_out
    }

    pub fn is_quantized(&self) -> bool {
        self.qweight.is_some()
    }

    pub fn has_adapter(&self) -> bool {
        self.lora_a.is_some() && self.lora_b.is_some()
    }

    /// Rank of the adapter (0 without one).
    pub fn rank(&self) -> usize {
        self.lora_a.as_ref().map_or(0, |a| a.shape().dims::<2>()[0])
    }

    /// `α / r` (0 without an adapter).
    pub fn scale(&self) -> f64 {
        match self.rank() {
            0 => 0.0,
            r => self.lora_alpha / r as f64,
        }
    }

    /// The base weight `[out, in]` as f32: the parameter, or the quantized base dequantized now
    /// (a constant: no gradient flows into it).
    pub fn base_weight(&self, device: &B::Device) -> Tensor<B, 2> {
        match (&self.weight, &self.qweight) {
            (Some(w), _) => w.val(),
            (None, Some(q)) => Tensor::from_data(
                TensorData::new(q.dequantize_fast(), [self.d_out, self.d_in]),
                device,
            ),
            (None, None) => Tensor::zeros([self.d_out, self.d_in], device),
        }
    }

    /// The adapter's update `(α/r) B A`, `[out, in]` (`None` without an adapter).
    pub fn delta_weight(&self) -> Option<Tensor<B, 2>> {
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) => Some(b.val().matmul(a.val()).mul_scalar(self.scale())), // [out, in]
            _ => None,
        }
    }

    /// `x: [..., in] -> [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if D > 2 {
            // as one `[rows, in]` matrix: one matrix product forward and one for the weight gradient,
            // where the leading dims would make a batch of small products (and a `[batch, in, out]`
            // weight gradient summed afterwards)
            let dims = x.dims();
            let rows: usize = dims[..D - 1].iter().product();
            let y = self.forward(x.reshape([rows, self.d_in])); // [rows, out]
            let mut out = dims;
            out[D - 1] = self.d_out;
            return y.reshape(out); // [..., out]
        }
        let device = x.device();
        let on = adapters_enabled();
        let mut w = self.base_weight(&device); // [out, in]
        if self.merged
            && !on
            && let Some(d) = self.delta_weight()
        {
            w = w.sub(d);
        }
        let y = burn::tensor::module::linear(
            x.clone(),
            w.transpose(),
            self.bias.as_ref().map(|b| b.val()),
        ); // [..., out]
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) if on && !self.merged => {
                let p = self.lora_dropout;
                let xd = if p > 0.0 && B::ad_enabled(&device) {
                    let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
                    x.mul(keep).div_scalar(1.0 - p)
                } else {
                    x
                };
                let h = burn::tensor::module::linear(xd, a.val().transpose(), None); // [..., rank]
                let u = burn::tensor::module::linear(h, b.val().transpose(), None); // [..., out]
                y.add(u.mul_scalar(self.scale()))
            }
            _ => y,
        }
    }

    /// Attaches a fresh adapter (A ~ U(±1/√in), B = 0, as PEFT) and freezes the base and bias.
    pub fn add_adapter(&mut self, rank: usize, alpha: f64, dropout: f64, device: &B::Device) {
        let bound = 1.0 / (self.d_in as f64).sqrt();
        let a = Tensor::random(
            [rank, self.d_in],
            Distribution::Uniform(-bound, bound),
            device,
        ); // [rank, in]
        let b = Tensor::zeros([self.d_out, rank], device); // [out, rank]
        self.set_adapter(a, b, alpha, dropout);
    }

    /// Attaches an adapter with the given `A: [rank, in]`, `B: [out, rank]` (trainable) and freezes the base.
    pub fn set_adapter(&mut self, a: Tensor<B, 2>, b: Tensor<B, 2>, alpha: f64, dropout: f64) {
        self.freeze_base();
        self.lora_a = Some(Param::from_tensor(a));
        self.lora_b = Some(Param::from_tensor(b));
        self.lora_alpha = alpha;
        self.lora_dropout = dropout;
        self.merged = false;
    }

    /// Removes the adapter (unmerging it first if it was merged).
    pub fn remove_adapter(&mut self) {
        if self.merged {
            let _ = self.unmerge();
        }
        self.lora_a = None;
        self.lora_b = None;
    }

    /// The base weight and bias stop requiring gradients.
    pub fn freeze_base(&mut self) {
        self.weight = self.weight.take().map(|w| w.set_require_grad(false));
        self.bias = self.bias.take().map(|b| b.set_require_grad(false));
    }

    /// Replaces the f32 base by its quantization (frozen). `Quantize::None` does nothing.
    pub fn quantize_base(&mut self, quantize: Quantize) -> Result<(), LoraError> {
        match quantize.format() {
            Some(f) => self.quantize_base_as(f),
            None => Ok(()),
        }
    }

    /// Replaces the f32 base by its quantization in format `f` (frozen).
    pub fn quantize_base_as(&mut self, f: QuantFormat) -> Result<(), LoraError> {
        if self.merged {
            return Err(LoraError::AlreadyMerged(String::new()));
        }
        let Some(w) = self.weight.take() else {
            return Ok(());
        };
        let data = w
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| LoraError::Config(format!("{e:?}")))?;
        match QTensor::quantize(&data, self.d_out, self.d_in, f) {
            Ok(q) => {
                self.qweight = Some(Arc::new(q));
                self.bias = self.bias.take().map(|b| b.set_require_grad(false));
                Ok(())
            }
            Err(e) => {
                self.weight = Some(w);
                Err(e.into())
            }
        }
    }

    /// Replaces a quantized base by its dequantized f32 weight (frozen).
    pub fn dequantize_base(&mut self, device: &B::Device) {
        if let Some(q) = self.qweight.take() {
            let w = Tensor::from_data(
                TensorData::new(q.dequantize(), [self.d_out, self.d_in]),
                device,
            );
            self.weight = Some(Param::from_tensor(w).set_require_grad(false));
        }
    }

    /// Adds `(α/r) B A` into the f32 base; the forward then skips the adapter.
    pub fn merge(&mut self) -> Result<(), LoraError> {
        if self.merged {
            return Err(LoraError::AlreadyMerged(String::new()));
        }
        if self.qweight.is_some() {
            return Err(LoraError::QuantizedBase(String::new()));
        }
        let (Some(d), Some(w)) = (self.delta_weight(), self.weight.take()) else {
            return Ok(());
        };
        let grad = w.is_require_grad();
        self.weight = Some(Param::from_tensor(w.val().add(d)).set_require_grad(grad));
        self.merged = true;
        Ok(())
    }

    /// Subtracts the merged update again.
    pub fn unmerge(&mut self) -> Result<(), LoraError> {
        if !self.merged {
            return Err(LoraError::NotMerged(String::new()));
        }
        let (Some(d), Some(w)) = (self.delta_weight(), self.weight.take()) else {
            return Ok(());
        };
        let grad = w.is_require_grad();
        self.weight = Some(Param::from_tensor(w.val().sub(d)).set_require_grad(grad));
        self.merged = false;
        Ok(())
    }

    /// Bytes this layer keeps for its weights: f32 parameters (base, bias, adapter) + quantized storage.
    pub fn stored_bytes(&self) -> usize {
        let p = |n: usize| 4 * n;
        self.weight
            .as_ref()
            .map_or(0, |w| p(w.shape().num_elements()))
            + self
                .bias
                .as_ref()
                .map_or(0, |b| p(b.shape().num_elements()))
            + self
                .lora_a
                .as_ref()
                .map_or(0, |a| p(a.shape().num_elements()))
            + self
                .lora_b
                .as_ref()
                .map_or(0, |b| p(b.shape().num_elements()))
            + self.qweight.as_ref().map_or(0, |q| q.storage_bytes())
    }
}

/// A model whose linear layers can be walked by checkpoint path (e.g.
/// `model.layers.0.self_attn.q_proj`). The VLM implements it by calling `f` on each of its
/// [`LoraLinear`]s.
pub trait LinearLayers<B: Backend> {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear<B>));
}

/// Attaches adapters to every layer that [`LoraConfig::matches`]; returns how many. Only the
/// adapters of those layers are made trainable by this call: freeze the rest of the model with
/// [`Module::no_grad`] first (then call this) for LoRA / QLoRA training.
pub fn apply_lora<B: Backend, M: LinearLayers<B>>(
    model: &mut M,
    cfg: &LoraConfig,
    device: &B::Device,
) -> Result<usize, LoraError> {
    cfg.validate()?;
    if cfg.rank == 0 {
        return Ok(0);
    }
    let mut n = 0;
    model.for_each_linear(&mut |path, l| {
        if cfg.matches(path) {
            l.add_adapter(cfg.rank, cfg.alpha, cfg.dropout, device);
            n += 1;
        }
    });
    if n == 0 {
        return Err(LoraError::NoTargets(cfg.targets.clone()));
    }
    Ok(n)
}

/// Quantizes the base of every linear layer for which `select(path)` holds; returns how many.
pub fn quantize_linears<B: Backend, M: LinearLayers<B>>(
    model: &mut M,
    quantize: Quantize,
    select: impl Fn(&str) -> bool,
) -> Result<usize, LoraError> {
    let mut n = 0;
    let mut err = None;
    model.for_each_linear(&mut |path, l| {
        if err.is_none() && select(path) && l.weight.is_some() && quantize != Quantize::None {
            match l.quantize_base(quantize) {
                Ok(()) => n += 1,
                Err(e) => err = Some(tag(e, path)),
            }
        }
    });
    err.map_or(Ok(n), Err)
}

fn tag(e: LoraError, path: &str) -> LoraError {
    match e {
        LoraError::QuantizedBase(_) => LoraError::QuantizedBase(path.into()),
        LoraError::AlreadyMerged(_) => LoraError::AlreadyMerged(path.into()),
        LoraError::NotMerged(_) => LoraError::NotMerged(path.into()),
        e => e,
    }
}

/// Merges every adapter into its (f32) base.
pub fn merge_adapters<B: Backend, M: LinearLayers<B>>(model: &mut M) -> Result<usize, LoraError> {
    for_each_adapter(model, |l| l.merge())
}

/// Undoes [`merge_adapters`].
pub fn unmerge_adapters<B: Backend, M: LinearLayers<B>>(model: &mut M) -> Result<usize, LoraError> {
    for_each_adapter(model, |l| l.unmerge())
}

fn for_each_adapter<B: Backend, M: LinearLayers<B>>(
    model: &mut M,
    mut op: impl FnMut(&mut LoraLinear<B>) -> Result<(), LoraError>,
) -> Result<usize, LoraError> {
    let (mut n, mut err) = (0, None);
    model.for_each_linear(&mut |path, l| {
        if err.is_none() && l.has_adapter() {
            match op(l) {
                Ok(()) => n += 1,
                Err(e) => err = Some(tag(e, path)),
            }
        }
    });
    err.map_or(Ok(n), Err)
}

/// Prepares a trained model for export as a plain checkpoint: every quantized base is dequantized,
/// every adapter is merged into its base (`W + (α/r) B A`, exactly the trained forward) and dropped.
/// Afterwards the model has only the keys `weight` / `bias` of an unadapted model, so it saves and
/// loads as one. Returns the number of adapters merged.
pub fn merge_and_unload<B: Backend, M: LinearLayers<B>>(
    model: &mut M,
    device: &B::Device,
) -> Result<usize, LoraError> {
    let (mut n, mut err) = (0, None);
    model.for_each_linear(&mut |path, l| {
        if err.is_some() {
            return;
        }
        l.dequantize_base(device);
        if l.has_adapter() {
            if !l.merged
                && let Err(e) = l.merge()
            {
                err = Some(tag(e, path));
                return;
            }
            n += 1;
        }
        l.lora_a = None;
        l.lora_b = None;
        l.merged = false;
    });
    err.map_or(Ok(n), Err)
}

/// Weight memory of a whole model: `(as f32, as stored)` in bytes. Every float parameter (embeddings,
/// norms, biases, f32 bases, adapters) counts 4 bytes a value in both; a quantized base counts
/// `4 · out · in` as f32 and its packed storage (codes + scales) as stored.
pub fn model_weight_bytes<B: Backend, M: Module<B> + LinearLayers<B>>(
    model: &mut M,
) -> (usize, usize) {
    struct Count(usize);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 += 4 * param.shape().num_elements();
        }
    }
    let mut c = Count(0);
    model.visit(&mut c);
    let (mut q_f32, mut q_stored) = (0, 0);
    model.for_each_linear(&mut |_, l| {
        if let Some(q) = &l.qweight {
            q_f32 += 4 * l.d_in * l.d_out;
            q_stored += q.storage_bytes();
        }
    });
    (c.0 + q_f32, c.0 + q_stored)
}

/// Weight memory of the linear layers: `(as f32, as stored)` in bytes (adapters and biases
/// included in both).
pub fn linear_weight_bytes<B: Backend, M: LinearLayers<B>>(model: &mut M) -> (usize, usize) {
    let (mut f32_bytes, mut stored) = (0, 0);
    model.for_each_linear(&mut |_, l| {
        let q = l.qweight.as_ref().map_or(0, |q| q.storage_bytes());
        stored += l.stored_bytes();
        f32_bytes += l.stored_bytes() - q
            + if l.qweight.is_some() {
                4 * l.d_in * l.d_out
            } else {
                0
            };
    });
    (f32_bytes, stored)
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor data")
}

/// Saves the adapters alone: `<path>.lora_A.weight` `[r, in]` and `<path>.lora_B.weight`
/// `[out, r]` for every layer with one, and the LoRA settings as metadata (`lora_config`, JSON).
/// Returns the number of adapters written.
pub fn save_adapters<B: Backend, M: LinearLayers<B>>(
    model: &mut M,
    cfg: &LoraConfig,
    path: &Path,
) -> Result<usize, LoraError> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut alphas = BTreeSet::new();
    model.for_each_linear(&mut |p, l| {
        if let (Some(a), Some(b)) = (&l.lora_a, &l.lora_b) {
            alphas.insert(l.lora_alpha.to_bits());
            for (key, t) in [("lora_A", a.val()), ("lora_B", b.val())] {
                let shape = t.dims().to_vec();
                let bytes = to_vec(t).iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((format!("{p}.{key}.weight"), shape, bytes));
            }
        }
    });
    if alphas.len() > 1 {
        return Err(LoraError::Config(
            "adapters with different alphas cannot share one [lora] section".into(),
        ));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| ferr(path, e))
        })
        .collect::<Result<_, _>>()?;
    let meta = std::collections::HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "lora_config".to_string(),
            serde_json::to_string(cfg).map_err(|e| ferr(path, e))?,
        ),
    ]);
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| ferr(path, e))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, data).map_err(|e| ferr(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ferr(path, e))?;
    Ok(tensors.len() / 2)
}

/// Loads adapters written by [`save_adapters`] into the layers of the same paths (replacing any
/// adapter they had; their bases are frozen). Every adapter in the file must find its layer, with
/// matching shapes. Returns the settings stored in the file.
pub fn load_adapters<B: Backend, M: LinearLayers<B>>(
    model: &mut M,
    path: &Path,
    device: &B::Device,
) -> Result<LoraConfig, LoraError> {
    let bytes = std::fs::read(path).map_err(|e| ferr(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| ferr(path, e))?;
    let cfg: LoraConfig = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("lora_config"))
        .ok_or_else(|| ferr(path, "no lora_config metadata"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| ferr(path, e)))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ferr(path, e))?;
    let mut named: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(ferr(
                path,
                format!("{name}: dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let v = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        named.insert(name, (view.shape().to_vec(), v));
    }
    let mut err = None;
    let mut used = 0;
    model.for_each_linear(&mut |p, l| {
        let (ka, kb) = (format!("{p}.lora_A.weight"), format!("{p}.lora_B.weight"));
        match (named.get(&ka), named.get(&kb)) {
            (Some((sa, a)), Some((sb, b))) => {
                let r = sa[0];
                if sa != &[r, l.d_in] || sb != &[l.d_out, r] {
                    err.get_or_insert(ferr(
                        path,
                        format!(
                            "{p}: adapter shapes {sa:?}, {sb:?} do not fit a {}×{} layer",
                            l.d_out, l.d_in
                        ),
                    ));
                    return;
                }
                let ta = Tensor::from_data(TensorData::new(a.clone(), [r, l.d_in]), device);
                let tb = Tensor::from_data(TensorData::new(b.clone(), [l.d_out, r]), device);
                if l.merged {
                    let _ = l.unmerge();
                }
                l.set_adapter(ta, tb, cfg.alpha, cfg.dropout);
                used += 2;
            }
            (None, None) => {}
            _ => {
                err.get_or_insert(ferr(
                    path,
                    format!("{p}: only one of lora_A / lora_B present"),
                ));
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if used != named.len() {
        return Err(ferr(
            path,
            format!(
                "{} of {} tensors match no linear layer of the model",
                named.len() - used,
                named.len()
            ),
        ));
    }
    Ok(cfg)
}
