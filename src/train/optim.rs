//! AdamW with decoupled weight decay (none on 1-D parameters), global-norm gradient clipping and a
//! linear-warmup + cosine learning-rate schedule. State is keyed by parameter path, so it saves to
//! safetensors next to the weights and resumes exactly.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::model::weights::Named;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    /// Fraction of the peak at the end of the cosine.
    pub min_lr_ratio: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 20,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
        }
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`.
pub fn lr_at(c: &OptimConfig, step: usize, total: usize) -> f64 {
    if step < c.warmup_steps {
        return c.lr * (step + 1) as f64 / c.warmup_steps as f64;
    }
    let span = total.saturating_sub(c.warmup_steps).max(1);
    let p = ((step - c.warmup_steps) as f64 / span as f64).min(1.0);
    let min = c.lr * c.min_lr_ratio;
    min + 0.5 * (c.lr - min) * (1.0 + (std::f64::consts::PI * p).cos())
}

/// Moments per parameter path: `[numel]` each.
pub struct AdamW<B: Backend> {
    pub cfg: OptimConfig,
    /// Optimizer steps taken.
    pub t: usize,
    pub m: BTreeMap<String, Tensor<B, 1>>,
    pub v: BTreeMap<String, Tensor<B, 1>>,
}

struct GradNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sq: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.square().sum(); // [1]
            self.sq = Some(match self.sq.take() {
                Some(a) => a.add(s),
                None => s,
            });
        }
    }
}

struct Step<'a, B: AutodiffBackend> {
    opt: &'a mut AdamW<B::InnerBackend>,
    grads: GradientsParams,
    lr: f64,
    scale: f64,
    path: Vec<String>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Step<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(g) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = self.opt.cfg.clone();
        let key = self.path.join(".");
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let p = tensor.inner().reshape([n]); // [numel]
        let g = g.reshape([n]).mul_scalar(self.scale); // [numel]
        let m = match self.opt.m.remove(&key) {
            Some(m) => m
                .mul_scalar(c.beta1)
                .add(g.clone().mul_scalar(1.0 - c.beta1)),
            None => g.clone().mul_scalar(1.0 - c.beta1),
        };
        let v = match self.opt.v.remove(&key) {
            Some(v) => v
                .mul_scalar(c.beta2)
                .add(g.square().mul_scalar(1.0 - c.beta2)),
            None => g.square().mul_scalar(1.0 - c.beta2),
        };
        let t = (self.opt.t + 1) as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let upd = m
            .clone()
            .div_scalar(bc1)
            .div(v.clone().div_scalar(bc2).sqrt().add_scalar(c.eps)); // [numel]
        let decay = if D >= 2 {
            1.0 - self.lr * c.weight_decay
        } else {
            1.0
        };
        let p = p.mul_scalar(decay).sub(upd.mul_scalar(self.lr));
        self.opt.m.insert(key.clone(), m);
        self.opt.v.insert(key, v);
        let p = Tensor::<B, D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, p, mapper)
    }
}

impl<B: Backend> AdamW<B> {
    pub fn new(cfg: OptimConfig) -> Self {
        AdamW {
            cfg,
            t: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// One update of `module` with `grads` at learning rate `lr`; returns the gradient norm before clipping.
    pub fn step<AB, M>(&mut self, module: M, grads: GradientsParams, lr: f64) -> (M, f64)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut gn = GradNorm::<AB> {
            grads: &grads,
            sq: None,
        };
        module.visit(&mut gn);
        let norm = gn
            .sq
            .map(|s| s.into_scalar().to_f64().sqrt())
            .unwrap_or(0.0);
        let scale = if self.cfg.grad_clip > 0.0 && norm > self.cfg.grad_clip {
            self.cfg.grad_clip / norm
        } else {
            1.0
        };
        let mut st = Step::<AB> {
            opt: self,
            grads,
            lr,
            scale,
            path: Vec::new(),
        };
        let module = module.map(&mut st);
        self.t += 1;
        (module, norm)
    }

    /// Moments as named tensors (`exp_avg.<path>`, `exp_avg_sq.<path>`) for a checkpoint.
    pub fn state(&self) -> Named {
        let mut out = Named::new();
        for (prefix, map) in [("exp_avg.", &self.m), ("exp_avg_sq.", &self.v)] {
            for (k, t) in map {
                let v = t
                    .to_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .expect("f32 state");
                out.insert(format!("{prefix}{k}"), (vec![v.len()], v));
            }
        }
        out
    }

    /// Restore moments saved by [`AdamW::state`] after `t` steps.
    pub fn load_state(&mut self, t: usize, named: &Named, device: &B::Device) {
        self.t = t;
        self.m.clear();
        self.v.clear();
        for (k, (shape, v)) in named {
            let tensor = Tensor::<B, 1>::from_data(
                burn::tensor::TensorData::new(v.clone(), [shape[0]]),
                device,
            );
            if let Some(p) = k.strip_prefix("exp_avg.") {
                self.m.insert(p.to_string(), tensor);
            } else if let Some(p) = k.strip_prefix("exp_avg_sq.") {
                self.v.insert(p.to_string(), tensor);
            }
        }
    }
}

trait ToF64 {
    fn to_f64(self) -> f64;
}
impl<E: burn::tensor::ElementConversion> ToF64 for E {
    fn to_f64(self) -> f64 {
        self.elem::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((lr_at(&c, 0, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(&c, 9, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 100, 100) - 0.1).abs() < 1e-12);
        assert!(lr_at(&c, 50, 100) < lr_at(&c, 30, 100));
    }
}
