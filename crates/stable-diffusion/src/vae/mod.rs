//! AutoencoderKL: the VAE encoder (image → latents) and decoder (latents → image); and the
//! tiny autoencoder (TAESD) that live previews decode with ([`AutoencoderTiny`]).
//!
//! The network follows diffusers' `AutoencoderKL` and uses its tensor names: `encoder.*`,
//! `quant_conv`, `post_quant_conv`, `decoder.*`. Images are `(B, 3, H, W)` in `[-1, 1]`; latents
//! are `(B, latent_channels, H/8, W/8)` for SD's four-level VAE. Scaling by
//! [`VaeConfig::scaling_factor`] is the caller's job (the pipeline's), as in diffusers.

mod blocks;
mod config;
mod gaussian;
mod tiny;

use candle_core::Tensor;
use candle_nn::VarBuilder;

pub use blocks::{
    DownEncoderBlock, Downsample, MidBlock, ResnetBlock, ResnetStack, SpatialSelfAttention,
    UpDecoderBlock, Upsample,
};
pub use config::{SampleSize, VaeConfig, DOWN_ENCODER_BLOCK, UP_DECODER_BLOCK};
pub use gaussian::DiagonalGaussian;
pub use tiny::{AutoencoderTiny, TinyVaeConfig};

use crate::nn::{Conv2d, Conv2dOptions, GroupNorm};
use crate::Result;

const NORM_EPS: f64 = 1e-6;
const SAME_3X3: Conv2dOptions = Conv2dOptions {
    padding: 1,
    stride: 1,
};

/// The encoder: image `(B, in, H, W)` → posterior parameters `(B, 2·latent, H/f, W/f)`.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    /// Loads the encoder under `vb` (normally `encoder`).
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let act = config.act_fn;
        let conv_in = Conv2d::new(
            vb.pp("conv_in"),
            config.in_channels,
            channels[0],
            3,
            SAME_3X3,
        )?;
        let mut down_blocks = Vec::with_capacity(channels.len());
        let mut previous = channels[0];
        for (i, &out) in channels.iter().enumerate() {
            let is_last = i + 1 == channels.len();
            down_blocks.push(DownEncoderBlock::new(
                vb.pp("down_blocks").pp(i),
                config.layers_per_block,
                previous,
                out,
                groups,
                act,
                !is_last,
            )?);
            previous = out;
        }
        let top = *channels.last().expect("validated: non-empty");
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(
                vb.pp("mid_block"),
                top,
                groups,
                act,
                config.mid_block_add_attention,
            )?,
            conv_norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, top, NORM_EPS)?,
            conv_out: Conv2d::new(
                vb.pp("conv_out"),
                top,
                2 * config.latent_channels,
                3,
                SAME_3X3,
            )?,
        })
    }

    /// Image `(B, in, H, W)` → `(B, 2·latent, h, w)` (mean and log-variance, before quant_conv).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            h = block.forward(&h)?;
        }
        h = self.mid_block.forward(&h)?;
        h = self.conv_norm_out.forward_silu(&h)?;
        self.conv_out.forward(&h)
    }
}

/// The decoder: latents `(B, latent, h, w)` → image `(B, out, h·f, w·f)`.
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// Loads the decoder under `vb` (normally `decoder`).
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let groups = config.norm_num_groups;
        let act = config.act_fn;
        let top = reversed[0];
        let mut up_blocks = Vec::with_capacity(reversed.len());
        let mut previous = top;
        for (i, &out) in reversed.iter().enumerate() {
            let is_last = i + 1 == reversed.len();
            up_blocks.push(UpDecoderBlock::new(
                vb.pp("up_blocks").pp(i),
                config.layers_per_block + 1,
                previous,
                out,
                groups,
                act,
                !is_last,
            )?);
            previous = out;
        }
        let bottom = *reversed.last().expect("validated: non-empty");
        Ok(Self {
            conv_in: Conv2d::new(vb.pp("conv_in"), config.latent_channels, top, 3, SAME_3X3)?,
            mid_block: MidBlock::new(
                vb.pp("mid_block"),
                top,
                groups,
                act,
                config.mid_block_add_attention,
            )?,
            up_blocks,
            conv_norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, bottom, NORM_EPS)?,
            conv_out: Conv2d::new(vb.pp("conv_out"), bottom, config.out_channels, 3, SAME_3X3)?,
        })
    }

    /// Latents `(B, latent, h, w)` → image `(B, out, h·f, w·f)`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = self.mid_block.forward(&h)?;
        for block in &self.up_blocks {
            h = block.forward(&h)?;
        }
        h = self.conv_norm_out.forward_silu(&h)?;
        self.conv_out.forward(&h)
    }
}

/// diffusers' `AutoencoderKL`: encoder, `quant_conv`, posterior, `post_quant_conv`, decoder.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    decoder: Decoder,
    config: VaeConfig,
}

impl AutoencoderKL {
    /// Builds the VAE from weights under `vb` (the root of a diffusers `vae/` safetensors file).
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate()?;
        let latent2 = 2 * config.latent_channels;
        let latent = config.latent_channels;
        let one = Conv2dOptions::default();
        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::new(vb.pp("quant_conv"), latent2, latent2, 1, one)?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::new(
                vb.pp("post_quant_conv"),
                latent,
                latent,
                1,
                one,
            )?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            quant_conv,
            post_quant_conv,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            config: config.clone(),
        })
    }

    /// The config the VAE was built from.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Images `(B, 3, H, W)` in `[-1, 1]` → the posterior over latents `(B, latent, H/f, W/f)`
    /// (unscaled: multiply a sample by `scaling_factor` before denoising).
    pub fn encode(&self, images: &Tensor) -> Result<DiagonalGaussian> {
        let (_, channels, _, _) = images.dims4()?;
        if channels != self.config.in_channels {
            return Err(crate::Error::invalid(
                "VAE input",
                format!(
                    "images have {channels} channels, the VAE expects {}",
                    self.config.in_channels
                ),
            ));
        }
        let mut moments = self.encoder.forward(images)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        DiagonalGaussian::from_moments(&moments)
    }

    /// The tile sizes of diffusers' tiled decoding for this VAE: `(latent, sample)` with the
    /// sample tile the config's `sample_size` and the latent tile that divided by the
    /// downsampling factor.
    pub fn tile_sizes(&self) -> (usize, usize) {
        self.config.tile_sizes()
    }

    /// Whether latents of `h` x `w` are larger than one tile (tiled decoding changes them).
    pub fn tiles_needed(&self, h: usize, w: usize) -> bool {
        let (tile, _) = self.tile_sizes();
        h > tile || w > tile
    }

    /// [`Vae::decode`] in overlapping tiles, as diffusers' `AutoencoderKL.tiled_decode`: tiles of
    /// the latent tile size every ¾ tile, each decoded alone, each blended linearly over a
    /// quarter tile into its already blended upper and left neighbours, then cropped to ¾ tile
    /// and joined. Memory is that of one tile; the seams are blended, not exact.
    /// Latents that fit in one tile decode whole, as diffusers' `decode` dispatches.
    pub fn decode_tiled(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = latents.dims4()?;
        if !self.tiles_needed(h, w) {
            return self.decode(latents);
        }
        let (tile, sample_tile) = self.tile_sizes();
        let overlap = ((tile as f64) * (1.0 - TILE_OVERLAP)) as usize;
        let overlap = overlap.max(1);
        let blend_extent = ((sample_tile as f64) * TILE_OVERLAP) as usize;
        let row_limit = sample_tile - blend_extent;
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        for i in (0..h).step_by(overlap) {
            let mut row = Vec::new();
            for j in (0..w).step_by(overlap) {
                let part = latents
                    .narrow(2, i, tile.min(h - i))?
                    .narrow(3, j, tile.min(w - j))?;
                row.push(self.decode(&part)?);
            }
            rows.push(row);
        }
        let mut joined_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut joined = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let mut tile = rows[i][j].clone();
                if i > 0 {
                    tile = blend(&rows[i - 1][j], &tile, blend_extent, 2)?;
                }
                if j > 0 {
                    tile = blend(&rows[i][j - 1], &tile, blend_extent, 3)?;
                }
                // Later tiles blend into this one as diffusers' in-place blending leaves it.
                rows[i][j] = tile.clone();
                let (_, _, th, tw) = tile.dims4()?;
                joined.push(tile.narrow(2, 0, row_limit.min(th))?.narrow(
                    3,
                    0,
                    row_limit.min(tw),
                )?);
            }
            joined_rows.push(Tensor::cat(&joined, 3)?);
        }
        Ok(Tensor::cat(&joined_rows, 2)?)
    }

    /// Latents `(B, latent, h, w)`, already divided by `scaling_factor` → images
    /// `(B, 3, h·f, w·f)`, roughly in `[-1, 1]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, channels, _, _) = latents.dims4()?;
        if channels != self.config.latent_channels {
            return Err(crate::Error::invalid(
                "VAE latents",
                format!(
                    "latents have {channels} channels, the VAE expects {}",
                    self.config.latent_channels
                ),
            ));
        }
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        self.decoder.forward(&z)
    }
}

/// The fraction of a tile that neighbouring tiles share (diffusers' `tile_overlap_factor`).
const TILE_OVERLAP: f64 = 0.25;

/// diffusers' `blend_v` (`axis` 2) / `blend_h` (`axis` 3): the first `extent` rows (columns) of
/// `b` fade in from the last ones of `a`, `a·(1 − k/extent) + b·(k/extent)` at offset k.
fn blend(a: &Tensor, b: &Tensor, extent: usize, axis: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(axis)?).min(b.dim(axis)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = [1usize; 4];
    shape[axis] = extent;
    let weights: Vec<f32> = (0..extent)
        .map(|k| (k as f64 / extent as f64) as f32)
        .collect();
    let keep: Vec<f32> = (0..extent)
        .map(|k| (1.0 - k as f64 / extent as f64) as f32)
        .collect();
    let device = b.device();
    let dtype = b.dtype();
    let weights = Tensor::from_vec(weights, &shape, device)?.to_dtype(dtype)?;
    let keep = Tensor::from_vec(keep, &shape, device)?.to_dtype(dtype)?;
    let a_end = a.narrow(axis, a.dim(axis)? - extent, extent)?;
    let b_start = b.narrow(axis, 0, extent)?;
    let faded = (a_end.broadcast_mul(&keep)? + b_start.broadcast_mul(&weights)?)?;
    let rest = b.narrow(axis, extent, b.dim(axis)? - extent)?;
    Ok(Tensor::cat(&[&faded, &rest], axis)?)
}
