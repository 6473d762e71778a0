//! What kind of model was loaded: decided once, at load time; every other part asks this value.

use std::collections::BTreeMap;

use crate::loading::{read_json, DiffusersFolder};
use crate::nn::Activation;
use crate::text_encoder::ClipTextConfig;
use crate::unet::UNetConfig;
use crate::{Error, Result};

pub use crate::model_family::ModelFamily;

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
