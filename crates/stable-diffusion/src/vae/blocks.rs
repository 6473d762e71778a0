//! The VAE's building blocks: resnets without time embedding, down/up sampling, the mid-block
//! self-attention, and the down/up/mid blocks made of them (diffusers' names throughout).

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::nn::{attention_tokens_in, Activation, Conv2d, Conv2dOptions, GroupNorm, Linear};
use crate::Result;

/// The epsilon of every group norm in the VAE.
const NORM_EPS: f64 = 1e-6;

const SAME_3X3: Conv2dOptions = Conv2dOptions {
    padding: 1,
    stride: 1,
};

/// `ResnetBlock2D` without time embedding: `x + conv2(act(norm2(conv1(act(norm1(x))))))`, the
/// skip path through a 1x1 `conv_shortcut` when the channel count changes.
#[derive(Debug, Clone)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
}

impl ResnetBlock {
    /// Loads the block under `vb`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        act: Activation,
    ) -> Result<Self> {
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
            norm1: GroupNorm::new(vb.pp("norm1"), groups, in_channels, NORM_EPS)?,
            conv1: Conv2d::new(vb.pp("conv1"), in_channels, out_channels, 3, SAME_3X3)?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, out_channels, NORM_EPS)?,
            conv2: Conv2d::new(vb.pp("conv2"), out_channels, out_channels, 3, SAME_3X3)?,
            conv_shortcut,
            act,
        })
    }

    fn norm_act(&self, norm: &GroupNorm, x: &Tensor) -> Result<Tensor> {
        match self.act {
            Activation::Silu => norm.forward_silu(x),
            other => other.forward(&norm.forward(x)?),
        }
    }

    /// `(B, in, H, W)` → `(B, out, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm_act(&self.norm1, x)?)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        self.conv2
            .forward_with(&self.norm_act(&self.norm2, &h)?, None, Some(&skip))
    }
}

/// `Downsample2D` as the encoder uses it: zero-pad right and bottom by one, then a 3x3 convolution
/// with stride 2 and no padding. `(B, C, H, W)` → `(B, C, ⌈H/2⌉, ⌈W/2⌉)`.
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    /// Loads `conv` under `vb`.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let options = Conv2dOptions {
            padding: 0,
            stride: 2,
        };
        Ok(Self {
            conv: Conv2d::new(vb.pp("conv"), channels, channels, 3, options)?,
        })
    }

    /// Applies the asymmetric padding and the strided convolution.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let padded = x
            .pad_with_zeros(D::Minus1, 0, 1)?
            .pad_with_zeros(D::Minus2, 0, 1)?;
        self.conv.forward(&padded)
    }
}

/// `Upsample2D`: nearest-neighbour 2x upsampling, then a 3x3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// Loads `conv` under `vb`.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(vb.pp("conv"), channels, channels, 3, SAME_3X3)?,
        })
    }

    /// `(B, C, H, W)` → `(B, C, 2H, 2W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// The mid block's self-attention over all pixels: group norm, one head as wide as the channels,
/// output projection and residual (diffusers' `Attention` with `residual_connection=True`).
#[derive(Debug, Clone)]
pub struct SpatialSelfAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    channels: usize,
    rescale_output_factor: f64,
}

impl SpatialSelfAttention {
    /// Loads `group_norm`, `to_q`, `to_k`, `to_v` and `to_out.0` under `vb`.
    pub fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, NORM_EPS)?,
            to_q: Linear::new(vb.pp("to_q"), channels, channels, true)?,
            to_k: Linear::new(vb.pp("to_k"), channels, channels, true)?,
            to_v: Linear::new(vb.pp("to_v"), channels, channels, true)?,
            to_out: Linear::new(vb.pp("to_out").pp(0), channels, channels, true)?,
            channels,
            // The VAE's mid blocks use output_scale_factor 1.
            rescale_output_factor: 1.0,
        })
    }

    /// `(B, C, H, W)` → `(B, C, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = x.dims4()?;
        // Group norm over (B, C, H, W) equals diffusers' norm over the (B, C, HW) view.
        let normed = self.group_norm.forward(x)?;
        let tokens = normed
            .reshape((batch, channels, height * width))?
            .transpose(1, 2)?
            .contiguous()?; // (B, HW, C)
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let scale = 1.0 / (self.channels as f64).sqrt();
        let bf16 = self.to_q.stores_bf16();
        let attended = attention_tokens_in(&q, &k, &v, 1, scale, bf16)?; // (B, HW, C), one head
        let projected = self.to_out.forward(&attended)?;
        let spatial = projected
            .transpose(1, 2)?
            .reshape((batch, channels, height, width))?;
        let out = (spatial + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            Ok((out / self.rescale_output_factor)?)
        }
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, (attention, resnet).
#[derive(Debug, Clone)]
pub struct MidBlock {
    first: ResnetBlock,
    attention: Option<SpatialSelfAttention>,
    second: ResnetBlock,
}

impl MidBlock {
    /// Loads `resnets.{0,1}` and, when `add_attention`, `attentions.0` under `vb`.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        act: Activation,
        add_attention: bool,
    ) -> Result<Self> {
        let resnets = vb.pp("resnets");
        let attention = if add_attention {
            Some(SpatialSelfAttention::new(
                vb.pp("attentions").pp(0),
                channels,
                groups,
            )?)
        } else {
            None
        };
        Ok(Self {
            first: ResnetBlock::new(resnets.pp(0), channels, channels, groups, act)?,
            attention,
            second: ResnetBlock::new(resnets.pp(1), channels, channels, groups, act)?,
        })
    }

    /// `(B, C, H, W)` → `(B, C, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x)?;
        if let Some(attention) = &self.attention {
            h = attention.forward(&h)?;
        }
        self.second.forward(&h)
    }
}

/// A chain of resnets followed by an optional resampler: `DownEncoderBlock2D` (with
/// [`Downsample`]) and `UpDecoderBlock2D` (with [`Upsample`]).
#[derive(Debug, Clone)]
pub struct ResnetStack<S> {
    resnets: Vec<ResnetBlock>,
    resampler: Option<S>,
}

/// The encoder's `DownEncoderBlock2D`.
pub type DownEncoderBlock = ResnetStack<Downsample>;
/// The decoder's `UpDecoderBlock2D`.
pub type UpDecoderBlock = ResnetStack<Upsample>;

fn load_resnets(
    vb: &VarBuilder,
    count: usize,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
    act: Activation,
) -> Result<Vec<ResnetBlock>> {
    (0..count)
        .map(|i| {
            let input = if i == 0 { in_channels } else { out_channels };
            ResnetBlock::new(vb.pp("resnets").pp(i), input, out_channels, groups, act)
        })
        .collect()
}

impl DownEncoderBlock {
    /// Loads `resnets.*` and, when `downsample`, `downsamplers.0` under `vb`.
    pub fn new(
        vb: VarBuilder,
        layers: usize,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        act: Activation,
        downsample: bool,
    ) -> Result<Self> {
        let resnets = load_resnets(&vb, layers, in_channels, out_channels, groups, act)?;
        let resampler = if downsample {
            Some(Downsample::new(vb.pp("downsamplers").pp(0), out_channels)?)
        } else {
            None
        };
        Ok(Self { resnets, resampler })
    }

    /// `(B, in, H, W)` → `(B, out, H/2, W/2)` (or `H, W` without downsampling).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h)?;
        }
        match &self.resampler {
            Some(down) => down.forward(&h),
            None => Ok(h),
        }
    }
}

impl UpDecoderBlock {
    /// Loads `resnets.*` and, when `upsample`, `upsamplers.0` under `vb`.
    pub fn new(
        vb: VarBuilder,
        layers: usize,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        act: Activation,
        upsample: bool,
    ) -> Result<Self> {
        let resnets = load_resnets(&vb, layers, in_channels, out_channels, groups, act)?;
        let resampler = if upsample {
            Some(Upsample::new(vb.pp("upsamplers").pp(0), out_channels)?)
        } else {
            None
        };
        Ok(Self { resnets, resampler })
    }

    /// `(B, in, H, W)` → `(B, out, 2H, 2W)` (or `H, W` without upsampling).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h)?;
        }
        match &self.resampler {
            Some(up) => up.forward(&h),
            None => Ok(h),
        }
    }
}
