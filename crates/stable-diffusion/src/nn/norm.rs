use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::kernels;
use crate::Result;

/// A norm's weight and bias as f32, shared by the clones of a layer.
type Affine = Arc<(Vec<f32>, Vec<f32>)>;

/// A norm's weight and bias as f32 for the CPU kernels, when they run this layer.
fn kernel_affine(weight: &Tensor, bias: &Tensor) -> Result<Option<Affine>> {
    Ok(if kernels::packs(weight) {
        Some(Arc::new((kernels::vector(weight)?, kernels::vector(bias)?)))
    } else {
        None
    })
}

/// Group normalisation over `(batch, channels, ...)` with a per-channel affine transform.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    /// The weight and bias as f32 for the CPU kernels.
    affine: Option<Affine>,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` (`channels` each) under `vb`.
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let affine = kernel_affine(&weight, &bias)?;
        Ok(Self {
            inner: candle_nn::GroupNorm::new(weight, bias, channels, groups, eps)?,
            affine,
            groups,
            eps,
        })
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_maybe_silu(x, false)
    }

    /// Normalises `x`, then applies SiLU (the pair every resnet block uses).
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_maybe_silu(x, true)
    }

    fn forward_maybe_silu(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if let Some(affine) = self.affine.as_ref().filter(|_| kernels::runs(x)) {
            let dims = x.dims();
            let batch = dims.first().copied().unwrap_or(1);
            let channels = dims.get(1).copied().unwrap_or(1);
            let spatial = x.elem_count() / (batch * channels).max(1);
            let (groups, eps) = (self.groups, self.eps as f32);
            let (weight, bias) = (&affine.0, &affine.1);
            return kernels::fill(x, x.shape().clone(), |out| {
                kernels::with_f32(x, |x| {
                    sd_kernels::norm::group_norm(
                        x, batch, channels, spatial, groups, weight, bias, eps, silu, out,
                    )
                })
            });
        }
        let normed = self.inner.forward(x)?;
        if silu {
            Ok(candle_nn::ops::silu(&normed)?)
        } else {
            Ok(normed)
        }
    }
}

/// Layer normalisation over the last dimension with an affine transform.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    /// The weight and bias as f32 for the CPU kernels.
    affine: Option<Affine>,
    dim: usize,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` (`dim` each) under `vb`.
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let bias = vb.get(dim, "bias")?;
        let affine = kernel_affine(&weight, &bias)?;
        Ok(Self {
            inner: candle_nn::LayerNorm::new(weight, bias, eps),
            affine,
            dim,
            eps,
        })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(affine) = self.affine.as_ref().filter(|_| kernels::runs(x)) {
            let (dim, eps) = (self.dim, self.eps as f32);
            let rows = x.elem_count() / dim.max(1);
            return kernels::fill(x, x.shape().clone(), |out| {
                kernels::with_f32(x, |x| {
                    sd_kernels::norm::layer_norm(
                        x,
                        rows,
                        dim,
                        Some(&affine.0),
                        Some(&affine.1),
                        eps,
                        out,
                    )
                })
            });
        }
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
