//! What kind of model was loaded: decided once, at load time; every other part asks this value.

use std::collections::BTreeMap;

use crate::loading::{read_json, DiffusersFolder};
use crate::model_family::ModelDescription;
use crate::{Error, Result};

pub use crate::model_family::ModelFamily;

/// What the pipeline needs to know about a loaded model: its family and the options its
/// conditioning applies. (The full configuration is [`ModelDescription`].)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelKind {
    /// The family.
    pub family: ModelFamily,
    /// Whether the UNet is an inpainting one (9 input channels: latents, mask, masked image).
    pub inpainting: bool,
    /// SDXL: an empty negative prompt gives zero embeddings instead of the encoding of "".
    pub force_zeros_for_empty_prompt: bool,
    /// SDXL: the time ids carry an aesthetic score instead of the target size (the refiner).
    pub requires_aesthetics_score: bool,
}

impl ModelKind {
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

    /// Decides the kind of a diffusers folder from its description (made by
    /// [`ModelDescription::from_folder`], as `sd inspect` makes it): its family and inpainting,
    /// and the SDXL options from `model_index.json` (their diffusers defaults when absent).
    pub fn detect(folder: &DiffusersFolder, described: &ModelDescription) -> Result<Self> {
        let family = described.family;
        if described.text_encoders.is_empty() {
            return Err(Error::config(
                folder.root().join("model_index.json"),
                "no text encoder (neither `text_encoder` nor `text_encoder_2` is listed)",
            ));
        }
        let inpainting = match described.unet.in_channels {
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
        let mut kind = Self::for_family(family, inpainting);
        let index: BTreeMap<String, serde_json::Value> =
            read_json(&folder.root().join("model_index.json"), "model_index.json")?;
        if family.is_sdxl() {
            let flag = |key: &str| index.get(key).and_then(|v| v.as_bool());
            if let Some(value) = flag("force_zeros_for_empty_prompt") {
                kind.force_zeros_for_empty_prompt = value;
            }
            if let Some(value) = flag("requires_aesthetics_score") {
                kind.requires_aesthetics_score = value;
            }
        }
        Ok(kind)
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
