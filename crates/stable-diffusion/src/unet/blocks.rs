//! The UNet's down, middle and up blocks: resnets, optional cross-attention transformers,
//! and resamplers, with the skip connections between down and up blocks.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::Transformer2DModel;
use super::config::{AttentionLayout, BlockLayout, MidLayout};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetOptions, Upsample2D};
use crate::Result;

/// Settings shared by every block's transformers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerOptions {
    /// Group norm groups.
    pub groups: usize,
    /// Linear (true) or 1x1 convolution (false) `proj_in`/`proj_out`.
    pub linear_projection: bool,
}

fn transformers(
    vb: VarBuilder,
    channels: usize,
    layout: &AttentionLayout,
    options: TransformerOptions,
) -> Result<Vec<Transformer2DModel>> {
    layout
        .depths
        .iter()
        .enumerate()
        .map(|(i, &depth)| {
            Transformer2DModel::new(
                vb.pp(i),
                channels,
                layout.heads,
                depth,
                layout.cross_attention_dim,
                options.groups,
                options.linear_projection,
            )
        })
        .collect()
}

/// `DownBlock2D` (resnets only) or `CrossAttnDownBlock2D` (a transformer after each resnet),
/// optionally ending with a downsampler.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Loads the block described by `layout` under `vb`.
    pub(crate) fn new(
        vb: VarBuilder,
        layout: &BlockLayout,
        resnet: ResnetOptions,
        transformer: TransformerOptions,
        downsample_padding: usize,
    ) -> Result<Self> {
        let resnets = (0..layout.layers)
            .map(|i| {
                let in_channels = if i == 0 {
                    layout.in_channels
                } else {
                    layout.out_channels
                };
                ResnetBlock2D::new(
                    vb.pp("resnets").pp(i),
                    in_channels,
                    layout.out_channels,
                    resnet,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = match &layout.attention {
            Some(attention) => transformers(
                vb.pp("attentions"),
                layout.out_channels,
                attention,
                transformer,
            )?,
            None => Vec::new(),
        };
        let downsampler = if layout.resample {
            Some(Downsample2D::new(
                vb.pp("downsamplers").pp(0),
                layout.out_channels,
                downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Runs the block; returns its output and the states the up blocks will take as skips
    /// (one per resnet, plus the downsampled output).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        let mut x = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, temb)?;
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(&x, context)?;
            }
            skips.push(x.clone());
        }
        if let Some(downsampler) = &self.downsampler {
            x = downsampler.forward(&x)?;
            skips.push(x.clone());
        }
        Ok((x, skips))
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    /// Loads the middle block under `vb`.
    pub(crate) fn new(
        vb: VarBuilder,
        layout: &MidLayout,
        resnet: ResnetOptions,
        transformer: TransformerOptions,
    ) -> Result<Self> {
        let channels = layout.channels;
        let resnets = (0..layout.attention.depths.len() + 1)
            .map(|i| ResnetBlock2D::new(vb.pp("resnets").pp(i), channels, channels, resnet))
            .collect::<Result<Vec<_>>>()?;
        let attentions = transformers(
            vb.pp("attentions"),
            channels,
            &layout.attention,
            transformer,
        )?;
        Ok(Self {
            resnets,
            attentions,
        })
    }

    /// `(batch, c, h, w)` → `(batch, c, h, w)`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x, temb)?;
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attention.forward(&x, context)?;
            x = resnet.forward(&x, temb)?;
        }
        Ok(x)
    }
}

/// `UpBlock2D` or `CrossAttnUpBlock2D`: each resnet takes the previous output concatenated
/// with a skip from the down path; optionally ends with an upsampler.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Loads the block described by `layout` under `vb`.
    pub(crate) fn new(
        vb: VarBuilder,
        layout: &BlockLayout,
        resnet: ResnetOptions,
        transformer: TransformerOptions,
    ) -> Result<Self> {
        let layers = layout.layers;
        let resnets = (0..layers)
            .map(|i| {
                let skip_channels = if i == layers - 1 {
                    layout.in_channels
                } else {
                    layout.out_channels
                };
                let in_channels = if i == 0 {
                    layout.prev_output_channels
                } else {
                    layout.out_channels
                };
                ResnetBlock2D::new(
                    vb.pp("resnets").pp(i),
                    in_channels + skip_channels,
                    layout.out_channels,
                    resnet,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = match &layout.attention {
            Some(attention) => transformers(
                vb.pp("attentions"),
                layout.out_channels,
                attention,
                transformer,
            )?,
            None => Vec::new(),
        };
        let upsampler = if layout.resample {
            Some(Upsample2D::new(
                vb.pp("upsamplers").pp(0),
                layout.out_channels,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Whether the block ends with an upsampler.
    pub fn has_upsampler(&self) -> bool {
        self.upsampler.is_some()
    }

    /// How many skip states the block consumes.
    pub fn skips_needed(&self) -> usize {
        self.resnets.len()
    }

    /// Runs the block on `x` with `skips` (in down-path order; the last is consumed first);
    /// `upsample_size` forces the upsampler's output size.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            x = Tensor::cat(&[&x, skip], 1)?;
            x = resnet.forward(&x, temb)?;
            if let Some(attention) = self.attentions.get(i) {
                x = attention.forward(&x, context)?;
            }
        }
        if let Some(upsampler) = &self.upsampler {
            x = upsampler.forward(&x, upsample_size)?;
        }
        Ok(x)
    }
}
