//! UNet2DConditionModel: resnets, cross-attention transformers, down/mid/up blocks.
//!
//! The model is built from a diffusers `config.json` ([`UNetConfig`]) and diffusers' tensor
//! names. Files: [`config`] (config and presets), `embeddings` (timestep and SDXL added
//! embeddings), `resnet` (resnet block and resamplers), `attention` (spatial transformer),
//! `blocks` (down/mid/up blocks).

mod attention;
mod blocks;
pub mod config;
mod embeddings;
mod resnet;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

pub use attention::{Attention, BasicTransformerBlock, FeedForward, Transformer2DModel};
pub use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::{PerBlock, TransformerLayers, UNetConfig};
pub use embeddings::{TimestepEmbedding, Timesteps};
pub use resnet::{Downsample2D, ResnetBlock2D, Upsample2D};

use crate::nn::{Activation, Conv2d, Conv2dOptions, GroupNorm};
use crate::{Error, Result};
use blocks::TransformerOptions;
use resnet::{norm_act, ResnetOptions};

/// SDXL's extra conditioning (`added_cond_kwargs` in diffusers).
#[derive(Debug, Clone)]
pub struct AddedConditions {
    /// The pooled text embedding, `(batch, pooled_dim)` (1280 for SDXL).
    pub text_embeds: Tensor,
    /// The micro-conditioning ids, `(batch, n)`: original size, crop offset, target size
    /// (base, n = 6) or aesthetic score (refiner, n = 5).
    pub time_ids: Tensor,
}

/// SDXL's `text_time` added embedding: the pooled text and the sinusoidal time ids, projected.
#[derive(Debug, Clone)]
struct AddedEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
    input_dim: usize,
}

impl AddedEmbedding {
    /// `(batch, time_embed_dim)` to add to the timestep embedding.
    fn forward(&self, added: &AddedConditions, dtype: DType) -> Result<Tensor> {
        let batch = added.text_embeds.dim(0)?;
        if added.text_embeds.rank() != 2 || added.time_ids.rank() != 2 {
            return Err(Error::invalid(
                "UNet added conditions",
                format!(
                    "text_embeds {:?} and time_ids {:?} must both be (batch, n)",
                    added.text_embeds.dims(),
                    added.time_ids.dims()
                ),
            ));
        }
        let ids = added
            .time_ids
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let time_embeds = self
            .time_proj
            .forward(&ids, added.time_ids.device())?
            .reshape((batch, ()))?;
        let input = Tensor::cat(&[&added.text_embeds.to_dtype(DType::F32)?, &time_embeds], 1)?
            .to_dtype(dtype)?;
        let (found, expected) = (input.dim(1)?, self.input_dim);
        if found != expected {
            return Err(Error::invalid(
                "UNet added conditions",
                format!(
                    "text_embeds {:?} and time_ids {:?} give {found} features, the UNet's projection_class_embeddings_input_dim is {expected}",
                    added.text_embeds.dims(),
                    added.time_ids.dims()
                ),
            ));
        }
        self.embedding.forward(&input)
    }
}

/// diffusers' `UNet2DConditionModel` (SD 1.x, 2.x, SDXL base and refiner, inpainting).
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<AddedEmbedding>,
    time_embed_act: Option<Activation>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// The dtype the weights were loaded in (the time embeddings are cast to it).
    dtype: DType,
}

impl UNet2DConditionModel {
    /// Builds the model described by `config`, loading its weights (diffusers names) from `vb`.
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        let layout = config.layout()?;
        let channels0 = config.block_out_channels[0];
        let time_embed_dim = config.time_embed_dim();

        let conv_in = Conv2d::new(
            vb.pp("conv_in"),
            config.in_channels,
            channels0,
            config.conv_in_kernel,
            Conv2dOptions {
                padding: (config.conv_in_kernel - 1) / 2,
                stride: 1,
            },
        )?;
        let time_proj = Timesteps::new(channels0, config.flip_sin_to_cos, config.freq_shift);
        let time_embedding = TimestepEmbedding::new(
            vb.pp("time_embedding"),
            channels0,
            time_embed_dim,
            config.act_fn,
            config.timestep_post_act,
        )?;
        let add_embedding = match config.addition_embed_type.as_deref() {
            Some(_) => {
                // layout() checked that both are set for "text_time".
                let time_dim = config.addition_time_embed_dim.unwrap_or_default();
                let input_dim = config
                    .projection_class_embeddings_input_dim
                    .unwrap_or_default();
                Some(AddedEmbedding {
                    time_proj: Timesteps::new(time_dim, config.flip_sin_to_cos, config.freq_shift),
                    embedding: TimestepEmbedding::new(
                        vb.pp("add_embedding"),
                        input_dim,
                        time_embed_dim,
                        Activation::Silu,
                        None,
                    )?,
                    input_dim,
                })
            }
            None => None,
        };

        let resnet = ResnetOptions {
            groups: layout.groups,
            eps: config.norm_eps,
            act: config.act_fn,
            temb_channels: time_embed_dim,
            output_scale_factor: 1.0,
        };
        let transformer = TransformerOptions {
            groups: layout.groups,
            linear_projection: config.use_linear_projection,
        };
        let down_blocks = layout
            .down
            .iter()
            .enumerate()
            .map(|(i, block)| {
                DownBlock::new(
                    vb.pp("down_blocks").pp(i),
                    block,
                    resnet,
                    transformer,
                    config.downsample_padding,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mid_block = match &layout.mid {
            Some(mid) => Some(MidBlock::new(
                vb.pp("mid_block"),
                mid,
                ResnetOptions {
                    output_scale_factor: config.mid_block_scale_factor,
                    ..resnet
                },
                transformer,
            )?),
            None => None,
        };
        let up_blocks = layout
            .up
            .iter()
            .enumerate()
            .map(|(i, block)| UpBlock::new(vb.pp("up_blocks").pp(i), block, resnet, transformer))
            .collect::<Result<Vec<_>>>()?;

        let conv_norm_out = GroupNorm::new(
            vb.pp("conv_norm_out"),
            layout.groups,
            channels0,
            config.norm_eps,
        )?;
        let conv_out = Conv2d::new(
            vb.pp("conv_out"),
            channels0,
            config.out_channels,
            config.conv_out_kernel,
            Conv2dOptions {
                padding: (config.conv_out_kernel - 1) / 2,
                stride: 1,
            },
        )?;
        Ok(Self {
            config: config.clone(),
            conv_in,
            time_proj,
            time_embedding,
            add_embedding,
            time_embed_act: config.time_embedding_act_fn,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            dtype: vb.dtype(),
        })
    }

    /// Replaces the native latent size (`sample_size`), which only decides the default image
    /// size: for a single file whose prediction type, and so its native size, is known only
    /// after running it.
    pub fn set_sample_size(&mut self, sample_size: Option<PerBlock<usize>>) {
        self.config.sample_size = sample_size;
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The combined time (and SDXL added) embedding on `device`, `(batch, time_embed_dim)`.
    pub fn time_embedding(
        &self,
        batch: usize,
        timestep: f64,
        added: Option<&AddedConditions>,
        device: &Device,
    ) -> Result<Tensor> {
        self.time_embedding_per_sample(&vec![timestep; batch], added, device)
    }

    /// [`Self::time_embedding`] with one timestep per batch entry (training draws them so).
    pub fn time_embedding_per_sample(
        &self,
        timesteps: &[f64],
        added: Option<&AddedConditions>,
        device: &Device,
    ) -> Result<Tensor> {
        let batch = timesteps.len();
        // The sinusoids are computed in f32, then cast to the weights' dtype, as diffusers does.
        let t_emb = self
            .time_proj
            .forward(timesteps, device)?
            .to_dtype(self.dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let Some(add_embedding) = &self.add_embedding {
            let added = added.ok_or_else(|| {
                Error::invalid(
                    "UNet input",
                    "this UNet (addition_embed_type \"text_time\") needs added conditions: text_embeds and time_ids",
                )
            })?;
            let text_batch = added.text_embeds.dim(0)?;
            let ids_batch = added.time_ids.dim(0)?;
            if text_batch != batch || ids_batch != batch {
                return Err(Error::invalid(
                    "UNet input",
                    format!(
                        "added conditions have batch {text_batch} (text_embeds) and {ids_batch} (time_ids), the sample has {batch}"
                    ),
                ));
            }
            emb = (emb + add_embedding.forward(added, self.dtype)?)?;
        }
        match self.time_embed_act {
            Some(act) => act.forward(&emb),
            None => Ok(emb),
        }
    }

    /// Predicts the noise (or v) for `sample` `(batch, in_channels, h, w)` at `timestep` (one
    /// value for the whole batch, may be fractional), conditioned on `encoder_hidden_states`
    /// `(batch, seq, cross_attention_dim)` and, for SDXL, on `added`. Returns
    /// `(batch, out_channels, h, w)`. Any `h`, `w` work: upsampling follows the skips' sizes.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let batch = sample.dim(0)?;
        self.forward_per_sample(sample, &vec![timestep; batch], encoder_hidden_states, added)
    }

    /// [`Self::forward`] with one timestep per batch entry (`timesteps.len()` = batch).
    pub fn forward_per_sample(
        &self,
        sample: &Tensor,
        timesteps: &[f64],
        encoder_hidden_states: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let (batch, channels, height, width) = sample.dims4()?;
        if timesteps.len() != batch {
            return Err(Error::invalid(
                "UNet input",
                format!("{} timesteps for a batch of {batch}", timesteps.len()),
            ));
        }
        if channels != self.config.in_channels {
            return Err(Error::invalid(
                "UNet input",
                format!(
                    "sample has {channels} channels, the UNet takes {}",
                    self.config.in_channels
                ),
            ));
        }
        let context_batch = encoder_hidden_states.dim(0)?;
        if context_batch != batch {
            return Err(Error::invalid(
                "UNet input",
                format!("encoder_hidden_states has batch {context_batch}, the sample has {batch}"),
            ));
        }
        if let PerBlock::Uniform(width) = self.config.cross_attention_dim {
            let found = encoder_hidden_states.dim(D::Minus1)?;
            if found != width {
                return Err(Error::invalid(
                    "UNet input",
                    format!("encoder_hidden_states has width {found}, the UNet's cross_attention_dim is {width}"),
                ));
            }
        }
        let up_factor = 1usize << self.up_blocks.iter().filter(|b| b.has_upsampler()).count();
        let forward_upsample_size = height % up_factor != 0 || width % up_factor != 0;

        let sample = if self.config.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let emb = self
            .time_embedding_per_sample(timesteps, added, sample.device())?
            .to_dtype(sample.dtype())?;

        let mut x = self.conv_in.forward(&sample)?;
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(&x, &emb, encoder_hidden_states)?;
            x = out;
            skips.extend(block_skips);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(&x, &emb, encoder_hidden_states)?;
        }
        let last = self.up_blocks.len().saturating_sub(1);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let needed = block.skips_needed();
            let block_skips = skips.split_off(skips.len() - needed);
            let upsample_size = if i != last && forward_upsample_size {
                let (_, _, h, w) = skips[skips.len() - 1].dims4()?;
                Some((h, w))
            } else {
                None
            };
            x = block.forward(&x, &block_skips, &emb, encoder_hidden_states, upsample_size)?;
        }
        let x = norm_act(&self.conv_norm_out, self.config.act_fn, &x)?;
        self.conv_out.forward(&x)
    }
}
