//! The AutoencoderKL configuration: diffusers' `vae/config.json`, plus the published presets.

use std::path::Path;

use serde::Deserialize;

use crate::nn::Activation;
use crate::{Error, Result};

/// The only down block type AutoencoderKL's encoder uses.
pub const DOWN_ENCODER_BLOCK: &str = "DownEncoderBlock2D";
/// The only up block type AutoencoderKL's decoder uses.
pub const UP_DECODER_BLOCK: &str = "UpDecoderBlock2D";

/// The training resolution, a single number or `[height, width]` in config files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// A square size.
    Square(usize),
    /// Height and width.
    Rect(Vec<usize>),
}

/// diffusers' `AutoencoderKL` config. Missing keys get diffusers 0.42.1's defaults; unknown keys
/// are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    /// Image channels in (3).
    pub in_channels: usize,
    /// Image channels out (3).
    pub out_channels: usize,
    /// One `DownEncoderBlock2D` per resolution.
    pub down_block_types: Vec<String>,
    /// One `UpDecoderBlock2D` per resolution.
    pub up_block_types: Vec<String>,
    /// Channels of each resolution level, highest resolution first.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (the decoder uses one more).
    pub layers_per_block: usize,
    /// The resnets' activation.
    pub act_fn: Activation,
    /// Latent channels (4 for SD 1.x/2.x/XL).
    pub latent_channels: usize,
    /// Groups of every group norm.
    pub norm_num_groups: usize,
    /// The training resolution (used by tiling only).
    pub sample_size: SampleSize,
    /// Latents are multiplied by this after encoding and divided by it before decoding.
    pub scaling_factor: f64,
    /// Subtracted before scaling (None for SD 1.x/2.x/XL).
    pub shift_factor: Option<f64>,
    /// Per-channel latent means (None for SD 1.x/2.x/XL).
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent standard deviations (None for SD 1.x/2.x/XL).
    pub latents_std: Option<Vec<f64>>,
    /// Whether the VAE must run in f32 even when the rest runs in f16.
    pub force_upcast: bool,
    /// Whether `quant_conv` (1x1, 2·latent → 2·latent) follows the encoder.
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` (1x1, latent → latent) precedes the decoder.
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks hold a self-attention layer.
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    /// diffusers' constructor defaults (a one-level 64-channel VAE), not a real model.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN_ENCODER_BLOCK.to_string()],
            up_block_types: vec![UP_DECODER_BLOCK.to_string()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: Activation::Silu,
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: SampleSize::Square(32),
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    /// The VAE of Stable Diffusion 1.x, also used unchanged by SD 2.x.
    pub fn sd15() -> Self {
        Self {
            down_block_types: vec![DOWN_ENCODER_BLOCK.to_string(); 4],
            up_block_types: vec![UP_DECODER_BLOCK.to_string(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: SampleSize::Square(512),
            scaling_factor: 0.18215,
            ..Self::default()
        }
    }

    /// SDXL's VAE: the same network as [`VaeConfig::sd15`] with its own scaling factor.
    pub fn sdxl() -> Self {
        Self {
            sample_size: SampleSize::Square(1024),
            scaling_factor: 0.13025,
            ..Self::sd15()
        }
    }

    /// Parses a diffusers `config.json` text; `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
        config.validate().map_err(|e| match e {
            Error::Config { msg, .. } => Error::config(path, msg),
            other => other,
        })?;
        Ok(config)
    }

    /// Reads and checks a diffusers `vae/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: "VAE config file",
                path: path.to_path_buf(),
            },
            _ => Error::io(path, e),
        })?;
        Self::from_json(&text, path)
    }

    /// How many pixels one latent covers along each side (8 for SD).
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// The tile sizes of diffusers' tiled decoding for this VAE: `(latent, sample)` with the
    /// sample tile the config's `sample_size` and the latent tile that divided by the
    /// downsampling factor.
    pub fn tile_sizes(&self) -> (usize, usize) {
        let sample = match &self.sample_size {
            SampleSize::Square(s) => *s,
            SampleSize::Rect(v) => v.first().copied().unwrap_or(512),
        }
        .max(8);
        ((sample / self.downsample_factor()).max(1), sample)
    }

    /// Checks that the config describes a network this module can build.
    pub fn validate(&self) -> Result<()> {
        let levels = self.block_out_channels.len();
        let bad = |msg: String| Err(Error::config("", msg));
        {
            use crate::limits::{all_at_most, at_most, MAX_BLOCKS, MAX_LAYERS, MAX_WIDTH};
            let p = Path::new("");
            at_most(p, "number of block_out_channels", levels, MAX_BLOCKS)?;
            all_at_most(
                p,
                "block_out_channels",
                self.block_out_channels.clone(),
                MAX_WIDTH,
            )?;
            at_most(p, "layers_per_block", self.layers_per_block, MAX_LAYERS)?;
            for (field, value) in [
                ("in_channels", self.in_channels),
                ("out_channels", self.out_channels),
                ("latent_channels", self.latent_channels),
                ("norm_num_groups", self.norm_num_groups),
            ] {
                at_most(p, field, value, MAX_WIDTH)?;
            }
        }
        if levels == 0 {
            return bad("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return bad(format!(
                "{} down_block_types and {} up_block_types for {} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len(),
                levels
            ));
        }
        for kind in &self.down_block_types {
            if kind != DOWN_ENCODER_BLOCK {
                return Err(Error::Unsupported {
                    what: "VAE down block type",
                    value: kind.clone(),
                    valid: vec![DOWN_ENCODER_BLOCK.to_string()],
                });
            }
        }
        for kind in &self.up_block_types {
            if kind != UP_DECODER_BLOCK {
                return Err(Error::Unsupported {
                    what: "VAE up block type",
                    value: kind.clone(),
                    valid: vec![UP_DECODER_BLOCK.to_string()],
                });
            }
        }
        if self.norm_num_groups == 0 {
            return bad("norm_num_groups is 0".into());
        }
        for &channels in &self.block_out_channels {
            if channels == 0 || channels % self.norm_num_groups != 0 {
                return bad(format!(
                    "block_out_channels {channels} is not a positive multiple of norm_num_groups {}",
                    self.norm_num_groups
                ));
            }
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return bad("in_channels, out_channels and latent_channels must be positive".into());
        }
        Ok(())
    }
}
