//! The CLIP text encoder's configuration: transformers' `CLIPTextConfig` and the SD presets.

use std::path::Path;

use serde::Deserialize;

use crate::nn::Activation;
use crate::{Error, Result};

/// transformers' `CLIPTextConfig` (the text encoder's `config.json`); unknown keys are ignored
/// and missing ones take transformers' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Number of token embeddings (49408 for every SD text encoder).
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of each MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Number of position embeddings: the longest sequence the model accepts.
    pub max_position_embeddings: usize,
    /// The MLP activation (`quick_gelu` for OpenAI CLIP, `gelu` for OpenCLIP).
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// Width of `text_projection`'s output (used only by the projection variant).
    pub projection_dim: usize,
    /// Id of the padding token.
    pub pad_token_id: u32,
    /// Id of the start-of-text token.
    pub bos_token_id: u32,
    /// Id of the end-of-text token; the legacy value 2 makes pooling pick the highest id.
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    /// transformers' defaults for a `CLIPTextConfig` built without arguments.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: 512,
            pad_token_id: 1,
            bos_token_id: 49406,
            eos_token_id: 49407,
        }
    }
}

impl ClipTextConfig {
    /// OpenAI CLIP ViT-L/14's text encoder, as SD 1.x ships it (`text_encoder/config.json`).
    pub fn sd15() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            hidden_act: Activation::QuickGelu,
            projection_dim: 768,
            ..Self::published_ids()
        }
    }

    /// OpenCLIP ViT-H/14's text encoder as SD 2.x ships it: the last of its 24 layers dropped.
    pub fn sd21() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            hidden_act: Activation::Gelu,
            projection_dim: 512,
            ..Self::published_ids()
        }
    }

    /// SDXL base's first text encoder (`text_encoder`): CLIP ViT-L/14, as in SD 1.x.
    pub fn sdxl_base_1() -> Self {
        Self::sd15()
    }

    /// SDXL's second text encoder (`text_encoder_2`, the refiner's only one): OpenCLIP
    /// ViT-bigG/14 with its projection, a `CLIPTextModelWithProjection`.
    pub fn sdxl_2() -> Self {
        Self {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            hidden_act: Activation::Gelu,
            projection_dim: 1280,
            ..Self::published_ids()
        }
    }

    /// The token ids every published SD text encoder config carries (bos 0, eos 2, pad 1).
    fn published_ids() -> Self {
        Self {
            pad_token_id: 1,
            bos_token_id: 0,
            eos_token_id: 2,
            ..Self::default()
        }
    }

    /// Reads a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        crate::loading::read_json(path.as_ref(), "text encoder config")
    }

    /// Checks that the numbers make a buildable model.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::config("", format!("CLIP text config: {msg}")));
        {
            use crate::limits::{MAX_HEADS, MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH};
            for (field, value, max) in [
                ("vocab_size", self.vocab_size, MAX_VOCAB),
                ("hidden_size", self.hidden_size, MAX_WIDTH),
                ("intermediate_size", self.intermediate_size, MAX_WIDTH),
                ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
                ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
                (
                    "max_position_embeddings",
                    self.max_position_embeddings,
                    MAX_POSITIONS,
                ),
                ("projection_dim", self.projection_dim, MAX_WIDTH),
            ] {
                if value > max {
                    return bad(format!(
                        "`{field}` is {value}, more than the {max} this library accepts"
                    ));
                }
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.vocab_size == 0 || self.max_position_embeddings == 0 {
            return bad("vocab_size and max_position_embeddings must be positive".into());
        }
        Ok(())
    }

    /// Width of each attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
