//! AutoencoderTiny (TAESD): a small all-convolution encoder and decoder over Stable Diffusion's
//! latent space, cheap enough to show a sampler's estimate after a step (live previews).
//!
//! The network follows diffusers' `AutoencoderTiny` and uses its tensor names
//! (`encoder.layers.N.*`, `decoder.layers.N.*`, one `N` per `nn.Sequential` entry). TAESD's own
//! files (`taesd_decoder.safetensors` / `.pth`, as A1111 and ComfyUI load them) hold one part
//! under bare indices, the decoder's shifted by one behind its leading clamp; they are read
//! through a key map. Unlike [`super::AutoencoderKL`] it works on the latents the UNet sees
//! (its `scaling_factor` is 1): no division before decoding, no multiplication after encoding.
//!
//! ```text
//! decoder: tanh(z/3)·3 ─► conv ─► relu ─► [blocks ─► upsample ─► conv]… ─► blocks ─► conv ─► ·2−1
//! encoder: (x+1)/2 ─► conv ─► blocks ─► [conv stride 2 ─► blocks]… ─► conv
//! block:   relu(conv(act(conv(act(conv(x))))) + x)
//! ```

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::limits::{at_most, MAX_BLOCKS, MAX_LAYERS, MAX_WIDTH};
use crate::loading::{read_json, CkptFile, KeyMap, TensorStore, Weights};
use crate::nn::{Activation, Conv2d, Conv2dOptions};
use crate::{Error, Result};

const SAME_3X3: Conv2dOptions = Conv2dOptions {
    padding: 1,
    stride: 1,
};
const HALVE_3X3: Conv2dOptions = Conv2dOptions {
    padding: 1,
    stride: 2,
};

/// The most stages a part may have (the published TAESDs have 4).
const MAX_STAGES: usize = MAX_BLOCKS;
/// The most a part may scale an image's side by (the published TAESDs: 8, as SD's VAE).
const MAX_SCALE: u64 = 16;

/// diffusers' `AutoencoderTiny` config: the fields that shape the network (the rest of a
/// config.json is ignored). Missing fields take the published TAESD's values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TinyVaeConfig {
    /// Image channels the encoder reads.
    pub in_channels: usize,
    /// Image channels the decoder writes.
    pub out_channels: usize,
    /// The encoder's width per stage (one width for all of them).
    pub encoder_block_out_channels: Vec<usize>,
    /// The decoder's width per stage (one width for all of them).
    pub decoder_block_out_channels: Vec<usize>,
    /// The activation inside a block and after the decoder's first convolution.
    pub act_fn: Activation,
    /// How the decoder upsamples: only `nearest` exists in diffusers' published models.
    pub upsample_fn: String,
    /// Latent channels (4 for SD 1.x, 2.x and SDXL).
    pub latent_channels: usize,
    /// The decoder's upsampling factor between stages.
    pub upsampling_scaling_factor: usize,
    /// Blocks per encoder stage.
    pub num_encoder_blocks: Vec<usize>,
    /// Blocks per decoder stage.
    pub num_decoder_blocks: Vec<usize>,
}

impl Default for TinyVaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: Activation::Relu,
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
        }
    }
}

impl TinyVaeConfig {
    /// Checks that the config describes a network diffusers could run, within sane sizes;
    /// `path` names the file in the error.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::config(path, msg));
        if self.upsample_fn != "nearest" {
            return Err(Error::Unsupported {
                what: "AutoencoderTiny upsample_fn",
                value: self.upsample_fn.clone(),
                valid: vec!["nearest".into()],
            });
        }
        if !(1..=8).contains(&self.upsampling_scaling_factor) {
            return bad(format!(
                "upsampling_scaling_factor {} is not between 1 and 8",
                self.upsampling_scaling_factor
            ));
        }
        for (name, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if value == 0 {
                return bad(format!("`{name}` is 0"));
            }
            at_most(path, name, value, MAX_WIDTH)?;
        }
        for (part, widths, blocks) in [
            (
                "encoder",
                &self.encoder_block_out_channels,
                &self.num_encoder_blocks,
            ),
            (
                "decoder",
                &self.decoder_block_out_channels,
                &self.num_decoder_blocks,
            ),
        ] {
            if widths.is_empty() || widths.len() > MAX_STAGES || widths.len() != blocks.len() {
                return bad(format!(
                    "{part}_block_out_channels ({}) and num_{part}_blocks ({}) must have the same \
                     length, 1 to {MAX_STAGES}",
                    widths.len(),
                    blocks.len()
                ));
            }
            // Every block maps its stage's width to itself and the stride/upsample convolutions
            // keep it, so diffusers' network only runs with one width throughout.
            if widths.iter().any(|&w| w != widths[0]) || widths[0] == 0 {
                return bad(format!(
                    "{part}_block_out_channels {widths:?} must be one width above 0 repeated"
                ));
            }
            at_most(
                path,
                &format!("{part}_block_out_channels"),
                widths[0],
                MAX_WIDTH,
            )?;
            for &n in blocks {
                at_most(path, &format!("num_{part}_blocks"), n, MAX_LAYERS)?;
            }
        }
        // SD's latents are an eighth of the image; a part that scales by far more (a hostile
        // file) would make a small latent decode into an image that cannot fit in memory.
        let up = (self.upsampling_scaling_factor as u64)
            .checked_pow(self.num_decoder_blocks.len() as u32 - 1)
            .unwrap_or(u64::MAX);
        let down = 1u64 << (self.num_encoder_blocks.len() - 1);
        if up > MAX_SCALE || down > MAX_SCALE {
            return bad(format!(
                "the decoder scales by {up} and the encoder by {down}; at most {MAX_SCALE} is \
                 accepted (TAESD's are 8)"
            ));
        }
        Ok(())
    }

    /// The layout that the tensors of `weights` (diffusers' names, through any key map)
    /// describe, for a file without a config.json: widths from the first convolution, blocks
    /// counted stage by stage. A part the file lacks keeps the published values.
    pub fn infer(weights: &Weights, path: &Path) -> Result<Self> {
        let mut config = Self::default();
        let shape = |name: String| weights.shape(&name);
        let not_taesd =
            |part: &str, msg: String| Error::config(path, format!("not a TAESD {part}: {msg}"));
        if let Some(first) = shape("decoder.layers.0.weight".into()) {
            let [width, latent, 3, 3] = first[..] else {
                return Err(not_taesd("decoder", format!("layer 0 has shape {first:?}")));
            };
            config.latent_channels = latent;
            let mut blocks = Vec::new();
            let mut at = 2; // 0: convolution, 1: activation
            loop {
                let mut count = 0;
                while weights.contains(&format!("decoder.layers.{at}.conv.0.weight")) {
                    count += 1;
                    at += 1;
                }
                blocks.push(count);
                if let Some(out) = shape(format!("decoder.layers.{at}.weight")) {
                    // The last stage ends in a convolution (with a bias) to the image.
                    config.out_channels = out[0];
                    break;
                }
                // Otherwise an upsampling (no tensors) and a convolution without a bias.
                if !weights.contains(&format!("decoder.layers.{}.weight", at + 1)) {
                    return Err(not_taesd(
                        "decoder",
                        format!(
                            "after layer {} comes neither a block nor a convolution",
                            at - 1
                        ),
                    ));
                }
                at += 2;
                if blocks.len() >= MAX_STAGES {
                    return Err(not_taesd(
                        "decoder",
                        format!("more than {MAX_STAGES} stages"),
                    ));
                }
            }
            config.decoder_block_out_channels = vec![width; blocks.len()];
            config.num_decoder_blocks = blocks;
        }
        if let Some(first) = shape("encoder.layers.0.weight".into()) {
            let [width, image, 3, 3] = first[..] else {
                return Err(not_taesd("encoder", format!("layer 0 has shape {first:?}")));
            };
            config.in_channels = image;
            let mut blocks = Vec::new();
            let mut at = 1; // 0: convolution
            loop {
                let mut count = 0;
                while weights.contains(&format!("encoder.layers.{at}.conv.0.weight")) {
                    count += 1;
                    at += 1;
                }
                blocks.push(count);
                let Some(conv) = shape(format!("encoder.layers.{at}.weight")) else {
                    return Err(not_taesd(
                        "encoder",
                        format!(
                            "after layer {} comes neither a block nor a convolution",
                            at - 1
                        ),
                    ));
                };
                if weights.contains(&format!("encoder.layers.{at}.bias")) {
                    // The last convolution (with a bias) makes the latents.
                    config.latent_channels = conv[0];
                    break;
                }
                // A stride-2 convolution without a bias starts the next stage.
                at += 1;
                if blocks.len() >= MAX_STAGES {
                    return Err(not_taesd(
                        "encoder",
                        format!("more than {MAX_STAGES} stages"),
                    ));
                }
            }
            config.encoder_block_out_channels = vec![width; blocks.len()];
            config.num_encoder_blocks = blocks;
        }
        Ok(config)
    }
}

/// `AutoencoderTinyBlock`: three 3x3 convolutions with the activation between them, the
/// input added back, then ReLU.
#[derive(Debug, Clone)]
struct TinyBlock {
    convs: [Conv2d; 3],
    act: Activation,
}

impl TinyBlock {
    fn new(vb: VarBuilder, channels: usize, act: Activation) -> Result<Self> {
        // The convolutions are entries 0, 2 and 4 of the block's `conv` sequence.
        let conv = |i: usize| Conv2d::new(vb.pp("conv").pp(i), channels, channels, 3, SAME_3X3);
        Ok(Self {
            convs: [conv(0)?, conv(2)?, conv(4)?],
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&self.convs[0].forward(x)?)?;
        let h = self.act.forward(&self.convs[1].forward(&h)?)?;
        Activation::Relu.forward(&self.convs[2].forward_with(&h, None, Some(x))?)
    }
}

/// One entry of a part's `layers` sequence.
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Block(TinyBlock),
    Act(Activation),
    Upsample(usize),
}

/// A part's layers in order, loaded from `vb` (its `layers`), entry `i` under `vb.pp(i)`.
#[derive(Debug, Clone)]
struct Layers(Vec<Layer>);

impl Layers {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.0 {
            h = match layer {
                Layer::Conv(conv) => conv.forward(&h)?,
                Layer::Block(block) => block.forward(&h)?,
                Layer::Act(act) => act.forward(&h)?,
                Layer::Upsample(factor) => {
                    let (_, _, height, width) = h.dims4()?;
                    h.upsample_nearest2d(height * factor, width * factor)?
                }
            };
        }
        Ok(h)
    }
}

/// Builds a part's sequence, giving each entry its index under `vb`.
struct Builder<'a> {
    vb: VarBuilder<'a>,
    layers: Vec<Layer>,
}

impl Builder<'_> {
    fn next(&self) -> VarBuilder<'_> {
        self.vb.pp(self.layers.len())
    }

    fn conv(&mut self, from: usize, to: usize, options: Conv2dOptions, bias: bool) -> Result<()> {
        let conv = if bias {
            Conv2d::new(self.next(), from, to, 3, options)?
        } else {
            Conv2d::new_without_bias(self.next(), from, to, 3, options)?
        };
        self.layers.push(Layer::Conv(conv));
        Ok(())
    }

    fn blocks(&mut self, count: usize, channels: usize, act: Activation) -> Result<()> {
        for _ in 0..count {
            let block = TinyBlock::new(self.next(), channels, act)?;
            self.layers.push(Layer::Block(block));
        }
        Ok(())
    }
}

/// diffusers' `EncoderTiny` then `DecoderTiny`, either of which a file may lack.
#[derive(Debug, Clone)]
pub struct AutoencoderTiny {
    encoder: Option<Layers>,
    decoder: Option<Layers>,
    config: TinyVaeConfig,
}

impl AutoencoderTiny {
    /// Builds the parts asked for from weights under `vb` (the root of a diffusers
    /// `AutoencoderTiny` file: `encoder.layers.*`, `decoder.layers.*`).
    pub fn new(
        vb: VarBuilder,
        config: &TinyVaeConfig,
        encoder: bool,
        decoder: bool,
    ) -> Result<Self> {
        config.validate(Path::new(""))?;
        let act = config.act_fn;
        let encoder = if encoder {
            let width = config.encoder_block_out_channels[0];
            let mut b = Builder {
                vb: vb.pp("encoder").pp("layers"),
                layers: Vec::new(),
            };
            for (i, &count) in config.num_encoder_blocks.iter().enumerate() {
                if i == 0 {
                    b.conv(config.in_channels, width, SAME_3X3, true)?;
                } else {
                    b.conv(width, width, HALVE_3X3, false)?;
                }
                b.blocks(count, width, act)?;
            }
            b.conv(width, config.latent_channels, SAME_3X3, true)?;
            Some(Layers(b.layers))
        } else {
            None
        };
        let decoder = if decoder {
            let width = config.decoder_block_out_channels[0];
            let mut b = Builder {
                vb: vb.pp("decoder").pp("layers"),
                layers: Vec::new(),
            };
            b.conv(config.latent_channels, width, SAME_3X3, true)?;
            b.layers.push(Layer::Act(act));
            let stages = config.num_decoder_blocks.len();
            for (i, &count) in config.num_decoder_blocks.iter().enumerate() {
                b.blocks(count, width, act)?;
                if i + 1 < stages {
                    b.layers
                        .push(Layer::Upsample(config.upsampling_scaling_factor));
                    b.conv(width, width, SAME_3X3, false)?;
                } else {
                    b.conv(width, config.out_channels, SAME_3X3, true)?;
                }
            }
            Some(Layers(b.layers))
        } else {
            None
        };
        Ok(Self {
            encoder,
            decoder,
            config: config.clone(),
        })
    }

    /// Loads a tiny autoencoder from `path`: a diffusers `AutoencoderTiny` folder
    /// (config.json and diffusion_pytorch_model[.fp16].safetensors), one such weights file, or
    /// one of TAESD's own part files (`taesd_decoder.safetensors`, `taesdxl_encoder.pth`, ...;
    /// the `.pth` through the safe pickle reader). Without a config.json the layout is read
    /// from the tensors.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (weights, config) = if path.is_dir() {
            let config_path = path.join("config.json");
            let config: Option<TinyVaeConfig> = if config_path.is_file() {
                Some(read_json(&config_path, "AutoencoderTiny config")?)
            } else {
                None
            };
            let names = [
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors",
            ];
            let file = names
                .iter()
                .map(|name| path.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| Error::NotFound {
                    what: "tiny VAE weights (diffusion_pytorch_model[.fp16].safetensors)",
                    path: path.join(names[0]),
                })?;
            (Weights::open(file)?, config)
        } else if path.is_file() {
            let pickle = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("pth" | "pt" | "ckpt" | "bin")
            );
            let weights = if pickle {
                let store: Arc<dyn TensorStore> = Arc::new(CkptFile::open(path)?);
                Weights::from_stores(vec![store])?
            } else {
                Weights::open(path)?
            };
            (weights, None)
        } else {
            return Err(Error::NotFound {
                what: "tiny VAE (TAESD file or AutoencoderTiny folder)",
                path: path.to_path_buf(),
            });
        };
        let weights = with_taesd_names(weights, path)?;
        let config = match config {
            Some(config) => config,
            None => TinyVaeConfig::infer(&weights, path)?,
        };
        config.validate(path)?;
        let encoder = weights.contains("encoder.layers.0.weight");
        let decoder = weights.contains("decoder.layers.0.weight");
        Self::new(
            weights.into_var_builder(dtype, device),
            &config,
            encoder,
            decoder,
        )
    }

    /// The config the network was built from.
    pub fn config(&self) -> &TinyVaeConfig {
        &self.config
    }

    /// Whether it has a decoder (TAESD's encoder file alone has not).
    pub fn has_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// Whether it has an encoder.
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// Latents `(B, latent, h, w)` as the UNet sees them → images `(B, out, h·f, w·f)` in about
    /// `[-1, 1]` (f: the upsampling factor to the power of the stages between).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let decoder = self.decoder.as_ref().ok_or_else(|| {
            Error::invalid("tiny VAE", "it has no decoder (an encoder-only file)")
        })?;
        let (_, channels, _, _) = latents.dims4()?;
        if channels != self.config.latent_channels {
            return Err(Error::invalid(
                "tiny VAE latents",
                format!(
                    "latents have {channels} channels, the tiny VAE expects {}",
                    self.config.latent_channels
                ),
            ));
        }
        // diffusers' soft clamp: tanh(z / 3) · 3 (a division, as torch computes it).
        let three = Tensor::new(3f32, latents.device())?.to_dtype(latents.dtype())?;
        let z = latents
            .broadcast_div(&three)?
            .tanh()?
            .broadcast_mul(&three)?;
        // From TAESD's [0, 1] to diffusers' [-1, 1].
        Ok(decoder.forward(&z)?.affine(2.0, -1.0)?)
    }

    /// Images `(B, in, H, W)` in `[-1, 1]` → latents `(B, latent, H/f, W/f)` as the UNet sees
    /// them (no scaling to apply).
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        let encoder = self
            .encoder
            .as_ref()
            .ok_or_else(|| Error::invalid("tiny VAE", "it has no encoder (a decoder-only file)"))?;
        let (_, channels, _, _) = images.dims4()?;
        if channels != self.config.in_channels {
            return Err(Error::invalid(
                "tiny VAE input",
                format!(
                    "images have {channels} channels, the tiny VAE expects {}",
                    self.config.in_channels
                ),
            ));
        }
        // From diffusers' [-1, 1] to TAESD's [0, 1]; x·½ + ½ rounds as (x + 1) / 2 does.
        encoder.forward(&images.affine(0.5, 0.5)?)
    }
}

/// `weights` readable under diffusers' names: a diffusers file as it is; TAESD's own decoder
/// (bare indices from 1, entry 0 being its clamp) or encoder (from 0) through a key map.
fn with_taesd_names(weights: Weights, path: &Path) -> Result<Weights> {
    let names = weights.names();
    if names
        .iter()
        .any(|n| n.starts_with("decoder.layers.") || n.starts_with("encoder.layers."))
    {
        return Ok(weights);
    }
    let (part, shift) = if weights.contains("0.weight") {
        ("encoder.layers.", 0)
    } else if weights.contains("1.weight") {
        ("decoder.layers.", 1)
    } else {
        return Err(Error::config(
            path,
            "not a TAESD / AutoencoderTiny file: it holds no `decoder.layers.*` or \
             `encoder.layers.*` tensors, nor TAESD's `0.weight` / `1.weight`",
        ));
    };
    Ok(weights.with_key_map(KeyMap::from_fn(move |name| {
        let Some(rest) = name.strip_prefix(part) else {
            return Vec::new();
        };
        let Some((index, tail)) = rest.split_once('.') else {
            return Vec::new();
        };
        match index.parse::<usize>() {
            Ok(i) => vec![format!("{}.{tail}", i + shift)],
            Err(_) => Vec::new(),
        }
    })))
}
