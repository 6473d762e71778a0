use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use sd_kernels::gemm::PackedB;

use super::kernels;
use crate::Result;

/// A dense layer `y = x Wᵀ + b` with weight `(out, in)`; works on inputs of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weights: LinearWeights,
    in_dim: usize,
    out_dim: usize,
}

/// Where a layer's weights live: packed for the CPU kernels, or candle's tensors.
#[derive(Debug, Clone)]
enum LinearWeights {
    Packed {
        weight: std::sync::Arc<PackedB>,
        bias: Option<std::sync::Arc<Vec<f32>>>,
    },
    Candle(candle_nn::Linear),
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
        Self::from_tensors(weight, bias, in_dim, out_dim)
    }

    /// A layer over `weight` (`(out, in)`) and `bias` (`out`) as loaded.
    pub(crate) fn from_tensors(
        weight: Tensor,
        bias: Option<Tensor>,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        let weights = if kernels::packs(&weight) {
            LinearWeights::Packed {
                weight: std::sync::Arc::new(kernels::pack_transposed(&weight, in_dim, out_dim)?),
                bias: bias
                    .map(|b| kernels::vector(&b).map(std::sync::Arc::new))
                    .transpose()?,
            }
        } else {
            LinearWeights::Candle(candle_nn::Linear::new(weight, bias))
        };
        Ok(Self {
            weights,
            in_dim,
            out_dim,
        })
    }

    /// Whether the weight is kept in bf16 (a bf16 model's layer).
    pub fn stores_bf16(&self) -> bool {
        match &self.weights {
            LinearWeights::Packed { weight, .. } => {
                weight.storage() == sd_kernels::gemm::Storage::Bf16
            }
            LinearWeights::Candle(layer) => layer.weight().dtype() == candle_core::DType::BF16,
        }
    }

    /// Whether the CPU kernels run this layer (its weight is packed).
    pub(crate) fn packed(&self) -> bool {
        matches!(self.weights, LinearWeights::Packed { .. })
    }

    /// GEGLU fused with this layer, whose output columns are in
    /// [`sd_kernels::gemm::geglu_interleave`]'s order: `(..., in)` → `(..., out / 2)`. Only
    /// for a [`Self::packed`] layer.
    pub(crate) fn forward_geglu(&self, x: &Tensor) -> Result<Tensor> {
        super::flops::add(2 * (x.elem_count() / self.in_dim.max(1) * self.out_dim) as u64);
        let LinearWeights::Packed { weight, bias } = &self.weights else {
            let message = "fused GEGLU needs a layer packed for the CPU kernels";
            return Err(candle_core::Error::Msg(message.into()).into());
        };
        let mut out_shape = x.dims().to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.out_dim / 2;
        }
        let rows = x.elem_count() / self.in_dim.max(1);
        let out = kernels::with_f32(x, |x| {
            sd_kernels::gemm::matmul_geglu_to_vec(
                x,
                rows,
                weight,
                bias.as_ref().map(|b| b.as_slice()),
            )
        })?;
        let out = kernels::tensor(out, out_shape)?;
        kernels::in_dtype_of(x, out)
    }

    /// The layer over a channels-last sequence `x` (`(batch, height·width, in)`) written as
    /// a channels-first map `(batch, out, height, width)` plus `residual` (shaped like the
    /// map), with no separate transpose; `None` where the kernels do not run the layer.
    pub(crate) fn forward_channels_first(
        &self,
        x: &Tensor,
        (height, width): (usize, usize),
        residual: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let LinearWeights::Packed { weight, bias } = &self.weights else {
            return Ok(None);
        };
        let (batch, seq, _) = x.dims3()?;
        if seq != height * width || seq == 0 {
            return Ok(None);
        }
        super::flops::add(2 * (batch * seq * self.out_dim) as u64 * self.in_dim as u64);
        let rows = batch * seq;
        let bias = bias.as_ref().map(|b| b.as_slice());
        let run = |residual: Option<&[f32]>| {
            kernels::with_f32(x, |x| {
                sd_kernels::gemm::matmul_channels_first_to_vec(x, rows, weight, bias, residual, seq)
            })
        };
        let out = match residual {
            Some(r) => kernels::with_f32(r, |r| run(Some(r)))??,
            None => run(None)?,
        };
        let out = kernels::tensor(out, (batch, self.out_dim, height, width))?;
        Ok(Some(kernels::in_dtype_of(x, out)?))
    }

    /// Applies the layer to `x` of shape `(..., in)`, giving `(..., out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_residual(x, None)
    }

    /// `x Wᵀ + b + residual`: the layer with a residual (shaped like the output) added in the
    /// same pass when the kernels run it.
    pub fn forward_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        super::flops::add(2 * (x.elem_count() / self.in_dim.max(1) * self.out_dim) as u64);
        let mut out_shape = x.dims().to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.out_dim;
        }
        let out = match &self.weights {
            LinearWeights::Packed { weight, bias } => {
                let rows = x.elem_count() / self.in_dim.max(1);
                let apply = |residual: Option<&[f32]>| {
                    kernels::with_f32(x, |x| {
                        sd_kernels::gemm::matmul_to_vec(
                            x,
                            rows,
                            weight,
                            bias.as_ref().map(|b| b.as_slice()),
                            residual,
                        )
                    })
                };
                let out = match residual {
                    Some(r) => kernels::with_f32(r, |r| apply(Some(r)))??,
                    None => apply(None)?,
                };
                let out = kernels::tensor(out, out_shape)?;
                return kernels::in_dtype_of(x, out);
            }
            LinearWeights::Candle(layer) => candle_forward(layer, x)?,
        };
        match residual {
            Some(r) => Ok((out + r)?),
            None => Ok(out),
        }
    }
}

/// candle's path (GPU tensors, trainable weights): half weights are converted for the call.
fn candle_forward(layer: &candle_nn::Linear, x: &Tensor) -> Result<Tensor> {
    // candle 0.11.1's batched matmul gives wrong results for some strided (transposed)
    // 3-D inputs with batch > 1; a contiguous input is free when it already is one.
    let x = x.contiguous()?;
    if layer.weight().dtype() != x.dtype() {
        // Weights stored in half precision are converted for this call only.
        let cast = |t: &Tensor| t.to_dtype(x.dtype());
        let bias = layer.bias().map(cast).transpose()?;
        let layer = candle_nn::Linear::new(cast(layer.weight())?, bias);
        return Ok(layer.forward(&x)?);
    }
    Ok(layer.forward(&x)?)
}
