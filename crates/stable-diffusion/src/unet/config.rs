//! The UNet's configuration: diffusers' `config.json` for `UNet2DConditionModel` (missing keys
//! take diffusers 0.42.1's defaults), the published presets, and the per-block layout derived
//! from it once, at load time.

use std::path::Path;

use serde::Deserialize;

use crate::nn::Activation;
use crate::{Error, Result};

/// A config value that is either one value for every block or one value per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block.
    Uniform(T),
    /// One value per down block (in down-block order).
    List(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// One value per block for `blocks` blocks; `key` names the config field in errors.
    pub fn expand(&self, blocks: usize, key: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::Uniform(value) => Ok(vec![value.clone(); blocks]),
            PerBlock::List(values) if values.len() == blocks => Ok(values.clone()),
            PerBlock::List(values) => Err(Error::config(
                "",
                format!(
                    "`{key}` has {} entries but there are {blocks} down blocks",
                    values.len()
                ),
            )),
        }
    }
}

/// `transformer_layers_per_block`: one count, one count per block, or (asymmetric UNets) one
/// count per layer of a block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TransformerLayers {
    /// The same number of transformer layers in every attention of every block.
    Uniform(usize),
    /// Per block: a count for every attention of the block, or one count per attention.
    PerBlock(Vec<PerBlock<usize>>),
}

/// diffusers' `UNet2DConditionModel` config. Unknown keys are ignored; missing keys take
/// diffusers' defaults (which are SD 1.x's numbers).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    /// The latent size the model was trained at (informative only).
    pub sample_size: Option<PerBlock<usize>>,
    /// Input channels: 4, or 9 for inpainting (latents + mask + masked-image latents).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Whether the input is mapped from [0, 1] to [-1, 1] first.
    pub center_input_sample: bool,
    /// Whether the sinusoidal timestep embedding is ordered (cos, sin).
    pub flip_sin_to_cos: bool,
    /// The frequency shift of the sinusoidal timestep embedding.
    pub freq_shift: f64,
    /// The down blocks, from the input resolution down.
    pub down_block_types: Vec<String>,
    /// The middle block; `None` for none.
    pub mid_block_type: Option<String>,
    /// The up blocks, from the lowest resolution up.
    pub up_block_types: Vec<String>,
    /// Cross-attention only (no self-attention) per block; only `false` is supported.
    pub only_cross_attention: PerBlock<bool>,
    /// Output channels of each down block.
    pub block_out_channels: Vec<usize>,
    /// Resnet layers per down block (up blocks have one more).
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// The middle block's residual scale.
    pub mid_block_scale_factor: f64,
    /// Dropout probability (unused at inference).
    pub dropout: f64,
    /// The activation of resnets and the time embedding.
    pub act_fn: Activation,
    /// Groups of every group norm.
    pub norm_num_groups: Option<usize>,
    /// Epsilon of the resnets' and the output's group norms.
    pub norm_eps: f64,
    /// Width of the text conditioning the cross-attentions read.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer layers in each attention of each block (SDXL: `[1, 2, 10]`).
    pub transformer_layers_per_block: TransformerLayers,
    /// Transformer layers of the up blocks for asymmetric UNets.
    pub reverse_transformer_layers_per_block: Option<Vec<PerBlock<usize>>>,
    /// Projection of the encoder hidden states (unsupported unless `None`).
    pub encoder_hid_dim: Option<usize>,
    /// Kind of encoder hidden state projection (unsupported unless `None`).
    pub encoder_hid_dim_type: Option<String>,
    /// Despite its name, the NUMBER of attention heads per block when `num_attention_heads` is
    /// unset (diffusers' historical naming, kept by every SD config).
    pub attention_head_dim: PerBlock<usize>,
    /// The number of attention heads per block. diffusers 0.42.1 refuses configs that set it;
    /// here it overrides `attention_head_dim`.
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Two cross-attention transformers per attention (unsupported).
    pub dual_cross_attention: bool,
    /// Whether the transformers' `proj_in`/`proj_out` are linear layers (else 1x1 convolutions).
    pub use_linear_projection: bool,
    /// Class embedding kind (unsupported unless `None`).
    pub class_embed_type: Option<String>,
    /// Additional embedding kind: `None` or `"text_time"` (SDXL).
    pub addition_embed_type: Option<String>,
    /// Width of each sinusoidal embedding of an SDXL time id.
    pub addition_time_embed_dim: Option<usize>,
    /// Number of class embeddings (unsupported unless `None`).
    pub num_class_embeds: Option<usize>,
    /// Compute attention scores in f32. Accepted and ignored: diffusers' default attention
    /// processor ignores it too, and this library computes in f32.
    pub upcast_attention: bool,
    /// How resnets add the time embedding; only `"default"` is supported.
    pub resnet_time_scale_shift: String,
    /// Whether resnets skip the time activation (unsupported).
    pub resnet_skip_time_act: bool,
    /// Output scale of `Resnet*Block2D` blocks (unused by the supported block types).
    pub resnet_out_scale_factor: f64,
    /// Timestep embedding kind; only `"positional"` is supported.
    pub time_embedding_type: String,
    /// Width of the time embedding (default 4 × `block_out_channels[0]`).
    pub time_embedding_dim: Option<usize>,
    /// Activation applied to the summed time embedding.
    pub time_embedding_act_fn: Option<Activation>,
    /// Activation after the time embedding's second linear layer.
    pub timestep_post_act: Option<Activation>,
    /// Width of an extra timestep condition (unsupported unless `None`).
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel size of `conv_in`.
    pub conv_in_kernel: usize,
    /// Kernel size of `conv_out`.
    pub conv_out_kernel: usize,
    /// Input width of the SDXL added embedding (pooled text + time id embeddings).
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Attention kind; only `"default"` is supported.
    pub attention_type: String,
    /// Concatenate class embeddings (unsupported).
    pub class_embeddings_concat: bool,
    /// Cross-attention only in the middle block; only `false`/`None` is supported.
    pub mid_block_only_cross_attention: Option<bool>,
    /// Normalisation of the cross-attention input; only `None` is supported.
    pub cross_attention_norm: Option<String>,
    /// Heads of the `"text"` added embedding (unused by the supported kinds).
    pub addition_embed_type_num_heads: usize,
}

impl Default for UNetConfig {
    /// diffusers' defaults, which describe SD 1.x's UNet.
    fn default() -> Self {
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: strings(&[CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, DOWN]),
            mid_block_type: Some(MID_CROSS_ATTN.to_string()),
            up_block_types: strings(&[UP, CROSS_ATTN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP]),
            only_cross_attention: PerBlock::Uniform(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::Uniform(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: Activation::Silu,
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::Uniform(1280),
            transformer_layers_per_block: TransformerLayers::Uniform(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::Uniform(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".to_string(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".to_string(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: "default".to_string(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
            addition_embed_type_num_heads: 64,
        }
    }
}

pub(crate) const DOWN: &str = "DownBlock2D";
pub(crate) const CROSS_ATTN_DOWN: &str = "CrossAttnDownBlock2D";
pub(crate) const UP: &str = "UpBlock2D";
pub(crate) const CROSS_ATTN_UP: &str = "CrossAttnUpBlock2D";
pub(crate) const MID_CROSS_ATTN: &str = "UNetMidBlock2DCrossAttn";

/// The down block types this implementation builds.
pub const DOWN_BLOCK_TYPES: &[&str] = &[DOWN, CROSS_ATTN_DOWN];
/// The up block types this implementation builds.
pub const UP_BLOCK_TYPES: &[&str] = &[UP, CROSS_ATTN_UP];
/// The middle block types this implementation builds (or `null` for none).
pub const MID_BLOCK_TYPES: &[&str] = &[MID_CROSS_ATTN];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl UNetConfig {
    /// Stable Diffusion 1.5 (`runwayml/stable-diffusion-v1-5/unet/config.json`).
    pub fn sd15() -> Self {
        Self {
            sample_size: Some(PerBlock::Uniform(64)),
            cross_attention_dim: PerBlock::Uniform(768),
            attention_head_dim: PerBlock::Uniform(8),
            ..Self::default()
        }
    }

    /// Stable Diffusion 1.5 inpainting: SD 1.5 with 9 input channels.
    pub fn sd15_inpaint() -> Self {
        Self {
            in_channels: 9,
            ..Self::sd15()
        }
    }

    /// Stable Diffusion 2.1 768-v (`stabilityai/stable-diffusion-2-1/unet/config.json`).
    pub fn sd21_v() -> Self {
        Self {
            sample_size: Some(PerBlock::Uniform(96)),
            cross_attention_dim: PerBlock::Uniform(1024),
            attention_head_dim: PerBlock::List(vec![5, 10, 20, 20]),
            use_linear_projection: true,
            upcast_attention: true,
            ..Self::default()
        }
    }

    /// SDXL 1.0 base (`stabilityai/stable-diffusion-xl-base-1.0/unet/config.json`).
    pub fn sdxl_base() -> Self {
        Self {
            sample_size: Some(PerBlock::Uniform(128)),
            down_block_types: strings(&[DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN]),
            up_block_types: strings(&[CROSS_ATTN_UP, CROSS_ATTN_UP, UP]),
            block_out_channels: vec![320, 640, 1280],
            cross_attention_dim: PerBlock::Uniform(2048),
            attention_head_dim: PerBlock::List(vec![5, 10, 20]),
            transformer_layers_per_block: TransformerLayers::PerBlock(vec![
                PerBlock::Uniform(1),
                PerBlock::Uniform(2),
                PerBlock::Uniform(10),
            ]),
            use_linear_projection: true,
            addition_embed_type: Some("text_time".to_string()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            ..Self::default()
        }
    }

    /// SDXL 1.0 refiner (`stabilityai/stable-diffusion-xl-refiner-1.0/unet/config.json`).
    pub fn sdxl_refiner() -> Self {
        Self {
            sample_size: Some(PerBlock::Uniform(128)),
            down_block_types: strings(&[DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, DOWN]),
            up_block_types: strings(&[UP, CROSS_ATTN_UP, CROSS_ATTN_UP, UP]),
            block_out_channels: vec![384, 768, 1536, 1536],
            cross_attention_dim: PerBlock::Uniform(1280),
            attention_head_dim: PerBlock::List(vec![6, 12, 24, 24]),
            transformer_layers_per_block: TransformerLayers::Uniform(4),
            use_linear_projection: true,
            addition_embed_type: Some("text_time".to_string()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2560),
            ..Self::default()
        }
    }

    /// Parses a diffusers `config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::config("", e.to_string()))
    }

    /// Reads a diffusers `unet/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
    }

    /// The width of the time embedding the resnets receive.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels.first().copied().unwrap_or(0) * 4)
    }

    /// Whether the model needs SDXL's added conditions (pooled text embeds and time ids).
    pub fn needs_added_conditions(&self) -> bool {
        self.addition_embed_type.is_some()
    }

    /// Checks the config and derives every block's shape, as diffusers' constructor does.
    pub(crate) fn layout(&self) -> Result<Layout> {
        self.check_limits()?;
        self.check_supported()?;
        let blocks = self.down_block_types.len();
        if blocks == 0 {
            return Err(Error::config("", "`down_block_types` is empty"));
        }
        if self.up_block_types.len() != blocks {
            return Err(Error::config(
                "",
                format!(
                    "{} `up_block_types` for {blocks} `down_block_types`",
                    self.up_block_types.len()
                ),
            ));
        }
        if self.block_out_channels.len() != blocks {
            return Err(Error::config(
                "",
                format!(
                    "{} `block_out_channels` for {blocks} `down_block_types`",
                    self.block_out_channels.len()
                ),
            ));
        }
        let heads = match &self.num_attention_heads {
            Some(heads) => heads.expand(blocks, "num_attention_heads")?,
            None => self
                .attention_head_dim
                .expand(blocks, "attention_head_dim")?,
        };
        if heads.contains(&0) {
            return Err(Error::config("", "an attention head count is 0"));
        }
        let cross = self
            .cross_attention_dim
            .expand(blocks, "cross_attention_dim")?;
        let layers = self.layers_per_block.expand(blocks, "layers_per_block")?;
        let groups = self
            .norm_num_groups
            .ok_or_else(|| Error::config("", "`norm_num_groups` null is not supported"))?;

        // Transformer depth per block and per attention layer of the block.
        let depth_of = |entry: &PerBlock<usize>, attentions: usize| -> Result<Vec<usize>> {
            entry.expand(attentions, "transformer_layers_per_block")
        };
        let down_depths: Vec<PerBlock<usize>> = match &self.transformer_layers_per_block {
            TransformerLayers::Uniform(n) => vec![PerBlock::Uniform(*n); blocks],
            TransformerLayers::PerBlock(list) if list.len() == blocks => list.clone(),
            TransformerLayers::PerBlock(list) => {
                return Err(Error::config(
                    "",
                    format!(
                        "`transformer_layers_per_block` has {} entries for {blocks} blocks",
                        list.len()
                    ),
                ))
            }
        };
        let up_depths: Vec<PerBlock<usize>> = match &self.reverse_transformer_layers_per_block {
            Some(list) if list.len() == blocks => list.clone(),
            Some(list) => {
                return Err(Error::config(
                    "",
                    format!(
                        "`reverse_transformer_layers_per_block` has {} entries for {blocks} blocks",
                        list.len()
                    ),
                ))
            }
            None => {
                if down_depths.iter().any(|d| matches!(d, PerBlock::List(_))) {
                    return Err(Error::config(
                        "",
                        "per-layer `transformer_layers_per_block` needs `reverse_transformer_layers_per_block`",
                    ));
                }
                down_depths.iter().rev().cloned().collect()
            }
        };

        let mut down = Vec::with_capacity(blocks);
        let mut output_channels = self.block_out_channels[0];
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let input_channels = output_channels;
            output_channels = self.block_out_channels[i];
            let has_attention = match kind.as_str() {
                DOWN => false,
                CROSS_ATTN_DOWN => true,
                other => {
                    return Err(unsupported_block(
                        "down block type",
                        other,
                        DOWN_BLOCK_TYPES,
                    ))
                }
            };
            down.push(BlockLayout {
                in_channels: input_channels,
                out_channels: output_channels,
                prev_output_channels: 0,
                layers: layers[i],
                attention: has_attention
                    .then(|| -> Result<AttentionLayout> {
                        Ok(AttentionLayout {
                            heads: heads[i],
                            cross_attention_dim: cross[i],
                            depths: depth_of(&down_depths[i], layers[i])?,
                        })
                    })
                    .transpose()?,
                resample: i + 1 < blocks,
            });
        }

        let last = self.block_out_channels[blocks - 1];
        let mid = match self.mid_block_type.as_deref() {
            None => None,
            Some(MID_CROSS_ATTN) => Some(MidLayout {
                channels: last,
                attention: AttentionLayout {
                    heads: heads[blocks - 1],
                    cross_attention_dim: cross[blocks - 1],
                    // The middle block has one attention; diffusers takes the first count.
                    depths: vec![match &down_depths[blocks - 1] {
                        PerBlock::Uniform(n) => *n,
                        PerBlock::List(list) => list.first().copied().unwrap_or(1),
                    }],
                },
            }),
            Some(other) => return Err(unsupported_block("mid block type", other, MID_BLOCK_TYPES)),
        };

        let reversed_channels: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(blocks);
        let mut output_channels = reversed_channels[0];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let prev_output_channels = output_channels;
            output_channels = reversed_channels[i];
            let input_channels = reversed_channels[(i + 1).min(blocks - 1)];
            let rev = blocks - 1 - i;
            let block_layers = layers[rev] + 1;
            let has_attention = match kind.as_str() {
                UP => false,
                CROSS_ATTN_UP => true,
                other => return Err(unsupported_block("up block type", other, UP_BLOCK_TYPES)),
            };
            up.push(BlockLayout {
                in_channels: input_channels,
                out_channels: output_channels,
                prev_output_channels,
                layers: block_layers,
                attention: has_attention
                    .then(|| -> Result<AttentionLayout> {
                        Ok(AttentionLayout {
                            heads: heads[rev],
                            cross_attention_dim: cross[rev],
                            depths: depth_of(&up_depths[i], block_layers)?,
                        })
                    })
                    .transpose()?,
                resample: i + 1 < blocks,
            });
        }

        Ok(Layout {
            groups,
            down,
            mid,
            up,
        })
    }

    /// Refuses sizes beyond [`crate::limits`], naming the field, before anything is built.
    fn check_limits(&self) -> Result<()> {
        use crate::limits::MAX_WIDTH;
        use crate::limits::{all_at_most, at_most, MAX_BLOCKS, MAX_HEADS, MAX_KERNEL, MAX_LAYERS};
        let p = Path::new("");
        let per_block = |v: &PerBlock<usize>| match v {
            PerBlock::Uniform(n) => vec![*n],
            PerBlock::List(list) => list.clone(),
        };
        for (field, count) in [
            ("number of down_block_types", self.down_block_types.len()),
            ("number of up_block_types", self.up_block_types.len()),
            (
                "number of block_out_channels",
                self.block_out_channels.len(),
            ),
        ] {
            at_most(p, field, count, MAX_BLOCKS)?;
        }
        all_at_most(
            p,
            "block_out_channels",
            self.block_out_channels.clone(),
            MAX_WIDTH,
        )?;
        all_at_most(
            p,
            "layers_per_block",
            per_block(&self.layers_per_block),
            MAX_LAYERS,
        )?;
        all_at_most(
            p,
            "cross_attention_dim",
            per_block(&self.cross_attention_dim),
            MAX_WIDTH,
        )?;
        all_at_most(
            p,
            "attention_head_dim",
            per_block(&self.attention_head_dim),
            MAX_WIDTH,
        )?;
        if let Some(heads) = &self.num_attention_heads {
            all_at_most(p, "num_attention_heads", per_block(heads), MAX_HEADS)?;
        }
        let depths =
            |list: &[PerBlock<usize>]| -> Vec<usize> { list.iter().flat_map(&per_block).collect() };
        match &self.transformer_layers_per_block {
            TransformerLayers::Uniform(n) => {
                at_most(p, "transformer_layers_per_block", *n, MAX_LAYERS)?
            }
            TransformerLayers::PerBlock(list) => {
                all_at_most(p, "transformer_layers_per_block", depths(list), MAX_LAYERS)?
            }
        }
        if let Some(list) = &self.reverse_transformer_layers_per_block {
            all_at_most(
                p,
                "reverse_transformer_layers_per_block",
                depths(list),
                MAX_LAYERS,
            )?;
        }
        for (field, value) in [
            ("in_channels", Some(self.in_channels)),
            ("out_channels", Some(self.out_channels)),
            ("norm_num_groups", self.norm_num_groups),
            ("time_embedding_dim", self.time_embedding_dim),
            ("addition_time_embed_dim", self.addition_time_embed_dim),
            (
                "projection_class_embeddings_input_dim",
                self.projection_class_embeddings_input_dim,
            ),
            ("encoder_hid_dim", self.encoder_hid_dim),
            ("num_class_embeds", self.num_class_embeds),
            ("time_cond_proj_dim", self.time_cond_proj_dim),
        ] {
            at_most(p, field, value.unwrap_or(0), MAX_WIDTH)?;
        }
        at_most(
            p,
            "addition_embed_type_num_heads",
            self.addition_embed_type_num_heads,
            MAX_HEADS,
        )?;
        at_most(p, "conv_in_kernel", self.conv_in_kernel, MAX_KERNEL)?;
        at_most(p, "conv_out_kernel", self.conv_out_kernel, MAX_KERNEL)?;
        at_most(p, "downsample_padding", self.downsample_padding, MAX_KERNEL)?;
        Ok(())
    }

    /// Rejects settings this implementation does not build, naming them.
    fn check_supported(&self) -> Result<()> {
        let refuse = |what: &'static str, value: String, valid: &[&str]| Error::Unsupported {
            what,
            value,
            valid: strings(valid),
        };
        if self.time_embedding_type != "positional" {
            return Err(refuse(
                "UNet time_embedding_type",
                self.time_embedding_type.clone(),
                &["positional"],
            ));
        }
        if self.resnet_time_scale_shift != "default" {
            return Err(refuse(
                "UNet resnet_time_scale_shift",
                self.resnet_time_scale_shift.clone(),
                &["default"],
            ));
        }
        if self.attention_type != "default" {
            return Err(refuse(
                "UNet attention_type",
                self.attention_type.clone(),
                &["default"],
            ));
        }
        if let Some(kind) = &self.addition_embed_type {
            if kind != "text_time" {
                return Err(refuse(
                    "UNet addition_embed_type",
                    kind.clone(),
                    &["text_time"],
                ));
            }
            if self.addition_time_embed_dim.is_none()
                || self.projection_class_embeddings_input_dim.is_none()
            {
                return Err(Error::config(
                    "",
                    "`addition_embed_type` \"text_time\" needs `addition_time_embed_dim` and `projection_class_embeddings_input_dim`",
                ));
            }
        }
        let flags = [
            (
                "class_embed_type",
                self.class_embed_type.is_some() || self.num_class_embeds.is_some(),
            ),
            (
                "encoder_hid_dim",
                self.encoder_hid_dim.is_some() || self.encoder_hid_dim_type.is_some(),
            ),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("dual_cross_attention", self.dual_cross_attention),
            ("resnet_skip_time_act", self.resnet_skip_time_act),
            ("class_embeddings_concat", self.class_embeddings_concat),
            ("cross_attention_norm", self.cross_attention_norm.is_some()),
            (
                "mid_block_only_cross_attention",
                self.mid_block_only_cross_attention == Some(true),
            ),
            (
                "only_cross_attention",
                self.only_cross_attention
                    .expand(self.down_block_types.len(), "only_cross_attention")?
                    .contains(&true),
            ),
        ];
        if let Some((key, _)) = flags.iter().find(|(_, set)| *set) {
            return Err(Error::Unsupported {
                what: "UNet config setting",
                value: (*key).to_string(),
                valid: Vec::new(),
            });
        }
        for (key, kernel) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if kernel % 2 == 0 {
                return Err(Error::config(
                    "",
                    format!("`{key}` must be odd, found {kernel}"),
                ));
            }
        }
        Ok(())
    }
}

fn unsupported_block(what: &'static str, value: &str, valid: &[&str]) -> Error {
    Error::Unsupported {
        what,
        value: value.to_string(),
        valid: strings(valid),
    }
}

/// The shape of one down or up block, derived from the config.
#[derive(Debug, Clone)]
pub(crate) struct BlockLayout {
    /// Channels entering the block (down) or of the skip from the level below (up).
    pub in_channels: usize,
    /// Channels the block outputs.
    pub out_channels: usize,
    /// Up blocks: channels of the previous up block's output.
    pub prev_output_channels: usize,
    /// Number of resnets.
    pub layers: usize,
    /// The cross-attention transformers, if the block has them.
    pub attention: Option<AttentionLayout>,
    /// Whether the block ends with a downsampler (down) or an upsampler (up).
    pub resample: bool,
}

/// The transformers of one block.
#[derive(Debug, Clone)]
pub(crate) struct AttentionLayout {
    /// Attention heads.
    pub heads: usize,
    /// Width of the text conditioning.
    pub cross_attention_dim: usize,
    /// Transformer layers of each attention in the block.
    pub depths: Vec<usize>,
}

/// The middle block.
#[derive(Debug, Clone)]
pub(crate) struct MidLayout {
    /// Channels in and out.
    pub channels: usize,
    /// Its transformer.
    pub attention: AttentionLayout,
}

/// Every block of the UNet.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Group norm groups.
    pub groups: usize,
    /// Down blocks in order.
    pub down: Vec<BlockLayout>,
    /// The middle block, if any.
    pub mid: Option<MidLayout>,
    /// Up blocks in order.
    pub up: Vec<BlockLayout>,
}
