//! The UNet's convolutional pieces: the time-conditioned resnet block and the resamplers.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::nn::{Activation, Conv2d, Conv2dOptions, GroupNorm, Linear};
use crate::Result;

/// Group norm followed by the block's activation (fused with SiLU when it is SiLU).
pub(crate) fn norm_act(norm: &GroupNorm, act: Activation, x: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Silu => norm.forward_silu(x),
        other => other.forward(&norm.forward(x)?),
    }
}

/// The settings every resnet of a UNet shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetOptions {
    /// Group norm groups.
    pub groups: usize,
    /// Group norm epsilon.
    pub eps: f64,
    /// Activation after each norm and on the time embedding.
    pub act: Activation,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// The output is divided by this.
    pub output_scale_factor: f64,
}

/// diffusers' `ResnetBlock2D` with `time_embedding_norm="default"`:
/// `(x + conv2(act(norm2(conv1(act(norm1(x))) + proj(act(temb)))))) / output_scale_factor`.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Loads a resnet from `in_channels` to `out_channels` under `vb`.
    pub(crate) fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        options: ResnetOptions,
    ) -> Result<Self> {
        let same = Conv2dOptions {
            padding: 1,
            stride: 1,
        };
        let conv_shortcut = if in_channels != out_channels {
            Some(Conv2d::new(
                vb.pp("conv_shortcut"),
                in_channels,
                out_channels,
                1,
                Conv2dOptions::default(),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), options.groups, in_channels, options.eps)?,
            conv1: Conv2d::new(vb.pp("conv1"), in_channels, out_channels, 3, same)?,
            time_emb_proj: Linear::new(
                vb.pp("time_emb_proj"),
                options.temb_channels,
                out_channels,
                true,
            )?,
            norm2: GroupNorm::new(vb.pp("norm2"), options.groups, out_channels, options.eps)?,
            conv2: Conv2d::new(vb.pp("conv2"), out_channels, out_channels, 3, same)?,
            conv_shortcut,
            act: options.act,
            output_scale_factor: options.output_scale_factor,
        })
    }

    /// `x` `(batch, in, h, w)`, `temb` `(batch, temb_channels)` → `(batch, out, h, w)`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let t = self.time_emb_proj.forward(&self.act.forward(temb)?)?; // (batch, out)
        let h = self
            .conv1
            .forward_with(&norm_act(&self.norm1, self.act, x)?, Some(&t), None)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = self.conv2.forward_with(
            &norm_act(&self.norm2, self.act, &h)?,
            None,
            Some(&shortcut),
        )?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            Ok((out / self.output_scale_factor)?)
        }
    }
}

/// diffusers' `Downsample2D` with a convolution: 3x3, stride 2.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    /// Loads `conv` under `vb`; `padding` 0 pads only right and bottom, as diffusers does.
    pub(crate) fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        let options = Conv2dOptions { padding, stride: 2 };
        Ok(Self {
            conv: Conv2d::new(vb.pp("conv"), channels, channels, 3, options)?,
            pad_right_bottom: padding == 0,
        })
    }

    /// `(batch, c, h, w)` → `(batch, c, ceil(h/2), ceil(w/2))` (with padding 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right_bottom {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour 2x (or to a given size), then 3x3.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Loads `conv` under `vb`.
    pub(crate) fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let options = Conv2dOptions {
            padding: 1,
            stride: 1,
        };
        Ok(Self {
            conv: Conv2d::new(vb.pp("conv"), channels, channels, 3, options)?,
        })
    }

    /// Upsamples `(batch, c, h, w)` to `size` (the skip connection's size) or to `(2h, 2w)`.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (target_h, target_w) = size.unwrap_or((2 * h, 2 * w));
        // Nearest neighbour picks source index floor(i * h / target_h), as torch does.
        let x = x.upsample_nearest2d(target_h, target_w)?;
        self.conv.forward(&x)
    }
}
