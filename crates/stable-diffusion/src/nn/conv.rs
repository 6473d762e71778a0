use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use sd_kernels::conv::{ConvGeometry, PackedConv};

use super::kernels;
use crate::Result;

/// Padding and stride of a 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dOptions {
    /// Zero padding on each side.
    pub padding: usize,
    /// Stride in both directions.
    pub stride: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
        }
    }
}

/// A 2-D convolution with square kernel, weight `(out, in, k, k)` and bias `(out)`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weights: ConvWeights,
    geometry: ConvGeometry,
}

/// Where a convolution's weights live: packed for the CPU kernels, or candle's tensors.
#[derive(Debug, Clone)]
enum ConvWeights {
    Packed {
        weight: Arc<PackedConv>,
        bias: Arc<Vec<f32>>,
    },
    Candle(candle_nn::Conv2d),
}

impl Conv2d {
    /// Loads `weight` and `bias` under `vb`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        options: Conv2dOptions,
    ) -> Result<Self> {
        Self::load(vb, in_channels, out_channels, kernel, options, true)
    }

    /// Loads `weight` under `vb` for a convolution without a bias (`bias=False` in torch).
    pub fn new_without_bias(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        options: Conv2dOptions,
    ) -> Result<Self> {
        Self::load(vb, in_channels, out_channels, kernel, options, false)
    }

    fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        options: Conv2dOptions,
        with_bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = if with_bias {
            vb.get(out_channels, "bias")?
        } else {
            // Adding zero changes no value, so one code path serves both kinds.
            Tensor::zeros(out_channels, weight.dtype(), weight.device())?
        };
        let geometry = ConvGeometry {
            in_channels,
            out_channels,
            kernel,
            stride: options.stride,
            padding: options.padding,
        };
        Self::from_tensors(weight, bias, geometry)
    }

    /// A convolution over `weight` (`(out, in, k, k)`) and `bias` (`out`) as loaded.
    pub(crate) fn from_tensors(
        weight: Tensor,
        bias: Tensor,
        geometry: ConvGeometry,
    ) -> Result<Self> {
        let out_channels = geometry.out_channels;
        let options = Conv2dOptions {
            padding: geometry.padding,
            stride: geometry.stride,
        };
        let weights = if kernels::packs(&weight) {
            // (out, in, k, k) is the (m, k) layout of the product's left operand.
            let depth = geometry.depth();
            let packed = kernels::pack_rows(&weight, out_channels, depth)?;
            ConvWeights::Packed {
                weight: Arc::new(PackedConv::from_packed(packed, geometry)),
                bias: Arc::new(kernels::vector(&bias)?),
            }
        } else {
            let config = candle_nn::Conv2dConfig {
                padding: options.padding,
                stride: options.stride,
                ..Default::default()
            };
            ConvWeights::Candle(candle_nn::Conv2d::new(weight, Some(bias), config))
        };
        Ok(Self { weights, geometry })
    }

    /// A 1x1 convolution on the kernels written channels last: `(batch, in, h, w)` →
    /// `(batch, h·w, out)` with no separate transpose; `None` where the kernels do not run
    /// it (another kernel size, stride or padding, or candle's weights).
    pub(crate) fn forward_channels_last(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let g = self.geometry;
        let ConvWeights::Packed { weight, bias } = &self.weights else {
            return Ok(None);
        };
        if g.kernel != 1 || g.stride != 1 || g.padding != 0 {
            return Ok(None);
        }
        let (batch, _, height, width) = x.dims4()?;
        let out = kernels::with_f32(x, |x| {
            weight.forward_channels_last_to_vec(x, batch, height, width, Some(bias))
        })?;
        let out = kernels::tensor(out, (batch, height * width, g.out_channels))?;
        super::flops::add(2 * (out.elem_count() * g.depth()) as u64);
        Ok(Some(kernels::in_dtype_of(x, out)?))
    }

    /// Applies the convolution to `x` of shape `(batch, in, h, w)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, None)
    }

    /// The convolution plus `channel_bias` `(batch, out)` broadcast over the pixels and a
    /// `residual` shaped like the output, added in the same pass when the kernels run it.
    pub fn forward_with(
        &self,
        x: &Tensor,
        channel_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, _, height, width) = x.dims4()?;
        let g = self.geometry;
        let output = match &self.weights {
            ConvWeights::Packed { weight, bias } => {
                let (oh, ow) =
                    g.output_size(height, width)
                        .ok_or_else(|| crate::Error::InvalidArgument {
                            what: "convolution input",
                            msg: format!(
                                "a {height}x{width} map is smaller than the {k}x{k} kernel",
                                k = g.kernel
                            ),
                        })?;
                let run = |channel_bias: Option<&[f32]>, residual: Option<&[f32]>| {
                    kernels::with_f32(x, |x| {
                        weight.forward_to_vec(
                            x,
                            batch,
                            height,
                            width,
                            Some(bias),
                            channel_bias,
                            residual,
                        )
                    })
                };
                let out = match (channel_bias, residual) {
                    (None, None) => run(None, None)?,
                    (Some(c), None) => kernels::with_f32(c, |c| run(Some(c), None))??,
                    (None, Some(r)) => kernels::with_f32(r, |r| run(None, Some(r)))??,
                    (Some(c), Some(r)) => {
                        kernels::with_f32(c, |c| kernels::with_f32(r, |r| run(Some(c), Some(r))))???
                    }
                };
                let out = kernels::tensor(out, (batch, g.out_channels, oh, ow))?;
                super::flops::add(2 * (out.elem_count() * g.depth()) as u64);
                return kernels::in_dtype_of(x, out);
            }
            ConvWeights::Candle(conv) => candle_forward(conv, x)?,
        };
        super::flops::add(2 * (output.elem_count() * g.depth()) as u64);
        let output = match channel_bias {
            Some(c) => output.broadcast_add(&c.unsqueeze(2)?.unsqueeze(3)?)?,
            None => output,
        };
        match residual {
            Some(r) => Ok((output + r)?),
            None => Ok(output),
        }
    }
}

/// candle's path (GPU tensors, trainable weights): half weights are converted for the call.
fn candle_forward(conv: &candle_nn::Conv2d, x: &Tensor) -> Result<Tensor> {
    if conv.weight().dtype() != x.dtype() {
        // Weights stored in half precision are converted for this call only.
        let cast = |t: &Tensor| t.to_dtype(x.dtype());
        let bias = conv.bias().map(cast).transpose()?;
        return Ok(candle_nn::Conv2d::new(cast(conv.weight())?, bias, *conv.config()).forward(x)?);
    }
    Ok(conv.forward(x)?)
}
