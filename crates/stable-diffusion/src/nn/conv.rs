use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

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
    inner: candle_nn::Conv2d,
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
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        let config = candle_nn::Conv2dConfig {
            padding: options.padding,
            stride: options.stride,
            ..Default::default()
        };
        Ok(Self {
            inner: candle_nn::Conv2d::new(weight, Some(bias), config),
        })
    }

    /// Applies the convolution to `x` of shape `(batch, in, h, w)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let output = self.inner.forward(x)?;
        let (_, in_channels, kh, kw) = self.inner.weight().dims4()?;
        super::flops::add(2 * (output.elem_count() * in_channels * kh * kw) as u64);
        Ok(output)
    }
}
