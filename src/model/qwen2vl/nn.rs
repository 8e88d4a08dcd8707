//! Small layers of the Qwen modules, kept local so that they follow the checkpoint exactly: a linear with
//! `[out, in]` weight and optional bias (the LoRA-capable [`LoraLinear`]), RMSNorm (Qwen2), LayerNorm with bias (Qwen2-VL vision).

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub use crate::model::lora::LoraLinear;

/// `y = x Wᵀ + b` with `W: [out, in]` (the Hugging Face layout, so shapes equal checkpoint shapes): the
/// project's [`LoraLinear`], so a Qwen base can be quantized (NF4 / int4 / int8) and carry LoRA adapters
/// (`QwenVl` implements [`crate::model::lora::LinearLayers`] with the checkpoint's names). Unquantized and
/// without an adapter it computes exactly `x Wᵀ + b`.
pub type QLinear<B> = LoraLinear<B>;

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension.
#[derive(Module, Debug)]
pub struct QRmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> QRmsNorm<B> {
    pub fn from_tensor(weight: Tensor<B, 1>, eps: f64) -> Self {
        QRmsNorm {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // x: [..., d]
        let rms = x
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt(); // [..., 1]
        x.div(rms).mul(self.weight.val().unsqueeze::<D>())
    }
}

/// LayerNorm with scale and bias over the last dimension.
#[derive(Module, Debug)]
pub struct QLayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> QLayerNorm<B> {
    pub fn from_tensors(weight: Tensor<B, 1>, bias: Tensor<B, 1>, eps: f64) -> Self {
        QLayerNorm {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // x: [..., d]
        let mean = x.clone().mean_dim(D - 1); // [..., 1]
        let xc = x.sub(mean);
        let var = xc.clone().square().mean_dim(D - 1); // [..., 1]
        xc.div(var.add_scalar(self.eps).sqrt())
            .mul(self.weight.val().unsqueeze::<D>())
            .add(self.bias.val().unsqueeze::<D>())
    }
}

/// `rotate_half`: `[x1, x2] → [-x2, x1]` over the last dimension.
pub fn rotate_half<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let d = x.dims()[D - 1];
    let x1 = x.clone().narrow(D - 1, 0, d / 2);
    let x2 = x.narrow(D - 1, d / 2, d / 2);
    Tensor::cat(vec![x2.neg(), x1], D - 1)
}
