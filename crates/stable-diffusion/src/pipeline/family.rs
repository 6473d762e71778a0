//! What kind of model was loaded: decided once, at load time; every other part asks this value.

use std::collections::BTreeMap;

use crate::loading::{read_json, DiffusersFolder};
use crate::nn::Activation;
use crate::text_encoder::ClipTextConfig;
use crate::tokenizer::PadStyle;
use crate::unet::UNetConfig;
use crate::{Error, Result};

/// The model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// Stable Diffusion 1.x: OpenAI CLIP ViT-L text encoder.
    Sd1,
    /// Stable Diffusion 2.x: OpenCLIP ViT-H text encoder, often v-prediction.
    Sd2,
    /// SDXL base: two text encoders (CLIP ViT-L and OpenCLIP bigG), pooled text and size ids.
    Sdxl,
    /// SDXL refiner: OpenCLIP bigG only, aesthetic-score conditioning.
    SdxlRefiner,
}

impl ModelFamily {
    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::Sd1 => "SD 1.x",
            ModelFamily::Sd2 => "SD 2.x",
            ModelFamily::Sdxl => "SDXL",
            ModelFamily::SdxlRefiner => "SDXL refiner",
        }
    }

    /// How the family's first tokenizer pads when its folder does not say: `<|endoftext|>`
    /// for CLIP ViT-L (SD 1.x, SDXL's first), `!` for OpenCLIP (SD 2.x, the refiner's only one).
    pub fn pad_style(self) -> PadStyle {
        match self {
            ModelFamily::Sd1 | ModelFamily::Sdxl => PadStyle::EndOfText,
            ModelFamily::Sd2 | ModelFamily::SdxlRefiner => PadStyle::Exclamation,
        }
    }

    /// Whether this is one of the SDXL families (pooled text and time ids for the UNet).
    pub fn is_sdxl(self) -> bool {
        matches!(self, ModelFamily::Sdxl | ModelFamily::SdxlRefiner)
    }

    /// Whether the family has the first text encoder (`text_encoder`).
    pub fn has_first_text_encoder(self) -> bool {
        self != ModelFamily::SdxlRefiner
    }

    /// Whether the family has the second text encoder (`text_encoder_2`, with projection).
    pub fn has_second_text_encoder(self) -> bool {
        self.is_sdxl()
    }
}

/// The one description of a loaded model: its family and the options its pipeline applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelDescription {
    /// The family.
    pub family: ModelFamily,
    /// Whether the UNet is an inpainting one (9 input channels: latents, mask, masked image).
    pub inpainting: bool,
    /// SDXL: an empty negative prompt gives zero embeddings instead of the encoding of "".
    pub force_zeros_for_empty_prompt: bool,
    /// SDXL: the time ids carry an aesthetic score instead of the target size (the refiner).
    pub requires_aesthetics_score: bool,
}

impl ModelDescription {
    /// diffusers' defaults for `family`: zero negative embeddings for SDXL base, aesthetic
    /// scores for the refiner (as the published model_index.json files set them).
    pub fn for_family(family: ModelFamily, inpainting: bool) -> Self {
        Self {
            family,
            inpainting,
            force_zeros_for_empty_prompt: family == ModelFamily::Sdxl,
            requires_aesthetics_score: family == ModelFamily::SdxlRefiner,
        }
    }

    /// Decides the description of a diffusers folder: the family from the components present
    /// and the text encoder's config, inpainting from the UNet's input channels, the SDXL
    /// options from `model_index.json` (their diffusers defaults when absent).
    pub fn detect(folder: &DiffusersFolder) -> Result<Self> {
        let has_first = folder.has_component("text_encoder");
        let has_second = folder.has_component("text_encoder_2");
        let family = match (has_first, has_second) {
            (true, true) => ModelFamily::Sdxl,
            (false, true) => ModelFamily::SdxlRefiner,
            (true, false) => {
                let config: ClipTextConfig = folder.config("text_encoder")?;
                match config.hidden_act {
                    Activation::QuickGelu => ModelFamily::Sd1,
                    _ => ModelFamily::Sd2,
                }
            }
            (false, false) => {
                return Err(Error::config(
                    folder.root().join("model_index.json"),
                    "no text encoder (neither `text_encoder` nor `text_encoder_2` is listed)",
                ))
            }
        };
        let unet: UNetConfig = folder.config("unet")?;
        let inpainting = match unet.in_channels {
            4 => false,
            9 => true,
            other => {
                return Err(Error::Unsupported {
                    what: "UNet input channels",
                    value: other.to_string(),
                    valid: vec!["4 (txt2img/img2img)".into(), "9 (inpainting)".into()],
                })
            }
        };
        let mut description = Self::for_family(family, inpainting);
        let index: BTreeMap<String, serde_json::Value> =
            read_json(&folder.root().join("model_index.json"), "model_index.json")?;
        if let Some(value) = index
            .get("force_zeros_for_empty_prompt")
            .and_then(|v| v.as_bool())
        {
            description.force_zeros_for_empty_prompt = value;
        }
        if let Some(value) = index
            .get("requires_aesthetics_score")
            .and_then(|v| v.as_bool())
        {
            description.requires_aesthetics_score = value;
        }
        if !family.is_sdxl() {
            description.force_zeros_for_empty_prompt = false;
            description.requires_aesthetics_score = false;
        }
        Ok(description)
    }

    /// A short human name: the family, with "inpainting" when it is one.
    pub fn name(&self) -> String {
        if self.inpainting {
            format!("{} inpainting", self.family.name())
        } else {
            self.family.name().to_string()
        }
    }
}
