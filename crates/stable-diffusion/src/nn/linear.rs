use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::Result;

/// A dense layer `y = x Wᵀ + b` with weight `(out, in)`; works on inputs of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// Loads `weight` (and `bias` when `bias` is true) under `vb`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            inner: candle_nn::Linear::new(weight, bias),
        })
    }

    /// The weight matrix, `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// Applies the layer to `x` of shape `(..., in)`, giving `(..., out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_dim, _) = self.inner.weight().dims2()?;
        super::flops::add(2 * (x.elem_count() * out_dim) as u64);
        // candle 0.11.1's batched matmul gives wrong results for some strided (transposed)
        // 3-D inputs with batch > 1; a contiguous input is free when it already is one.
        let x = x.contiguous()?;
        if self.inner.weight().dtype() != x.dtype() {
            // Weights stored in half precision are converted for this call only.
            let cast = |t: &Tensor| t.to_dtype(x.dtype());
            let bias = self.inner.bias().map(cast).transpose()?;
            let layer = candle_nn::Linear::new(cast(self.inner.weight())?, bias);
            return Ok(layer.forward(&x)?);
        }
        Ok(self.inner.forward(&x)?)
    }
}
