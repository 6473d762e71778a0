use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::Result;

/// Group normalisation over `(batch, channels, ...)` with a per-channel affine transform.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
}

impl GroupNorm {
    /// Loads `weight` and `bias` (`channels` each) under `vb`.
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        Ok(Self {
            inner: candle_nn::GroupNorm::new(weight, bias, channels, groups, eps)?,
        })
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(x)?)
    }

    /// Normalises `x`, then applies SiLU (the pair every resnet block uses).
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::silu(&self.inner.forward(x)?)?)
    }
}

/// Layer normalisation over the last dimension with an affine transform.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` (`dim` each) under `vb`.
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let bias = vb.get(dim, "bias")?;
        Ok(Self {
            inner: candle_nn::LayerNorm::new(weight, bias, eps),
            eps,
        })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (true, Some(bias)) = (super::differentiable(), self.inner.bias()) {
            // candle-nn's fused layer norm has no backward pass.
            return Ok(candle_nn::ops::layer_norm_slow(
                x,
                self.inner.weight(),
                bias,
                self.eps as f32,
            )?);
        }
        Ok(self.inner.forward(x)?)
    }
}
