//! What a model is, decided once at load time: its family (SD 1.x, SD 2.x, SDXL base, SDXL
//! refiner), what it predicts, whether it inpaints, and the configs of its components.
//!
//! Single-file checkpoints are recognised from their tensor names and shapes
//! ([`detect_single_file`]); diffusers folders from their config files
//! ([`ModelDescription::from_folder`]). Everything else asks the resulting
//! [`ModelDescription`] instead of looking at names or sizes again.
//!
//! # How the prediction type of an SD 2.x single file is decided
//! Real SD 2.x files do not say whether they predict ε (the 512 "base" models) or v (the 768
//! models). In order:
//! 1. an explicit override ([`DetectOptions::prediction`], the CLI's `--prediction-type`);
//! 2. an LDM yaml next to the file (`model.yaml` for `model.safetensors`, AUTOMATIC1111's
//!    convention): `parameterization: "v"` means v-prediction, a yaml without it ε;
//! 3. when the model is loaded: AUTOMATIC1111's test, one UNet step on a constant input
//!    ([`a1111_v_statistic`]: x = 0.5, t = 999, context 0.5; v-prediction when the mean of
//!    `unet(x) − x` is below −1), which looks at the weights themselves;
//! 4. without the weights (`sd inspect`), a guess from the file name: `512` or `base` means ε
//!    (`v2-1_512-ema-pruned`), `768` means v, and otherwise v (diffusers' choice: its
//!    single-file loader configures every SD 2.x checkpoint like `stable-diffusion-2-1`).
//!
//! SD 2.x inpainting models predict ε.
//!
//! SD 1.x, SDXL and inpainting models are ε-prediction unless overridden.

use std::path::Path;

use crate::loading::ldm::{TEXT_ENCODER_PREFIXES, UNET_PREFIX as UNET};
use crate::loading::{DiffusersFolder, Weights};
use crate::scheduler::{PredictionType, SchedulerConfig};
use crate::text_encoder::ClipTextConfig;
use crate::tokenizer::PadStyle;
use crate::unet::{PerBlock, UNetConfig};
use crate::vae::VaeConfig;
use crate::{Error, Result};

/// The model families this library runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// Stable Diffusion 1.x: OpenAI CLIP ViT-L text encoder, 512×512.
    Sd1,
    /// Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (penultimate layer), 512 ε or 768 v.
    Sd2,
    /// SDXL base: CLIP ViT-L + OpenCLIP ViT-bigG, time-id conditioning, 1024×1024.
    Sdxl,
    /// SDXL refiner: OpenCLIP ViT-bigG only, aesthetic-score conditioning.
    SdxlRefiner,
}

impl ModelFamily {
    /// How the family's first tokenizer pads when its folder does not say: `<|endoftext|>`
    /// for CLIP ViT-L (SD 1.x, SDXL's first), `!` for OpenCLIP (SD 2.x, the refiner's only one).
    pub fn pad_style(self) -> PadStyle {
        match self {
            Self::Sd1 | Self::Sdxl => PadStyle::EndOfText,
            Self::Sd2 | Self::SdxlRefiner => PadStyle::Exclamation,
        }
    }

    /// Whether this is one of the SDXL families (pooled text and time ids for the UNet).
    pub fn is_sdxl(self) -> bool {
        matches!(self, Self::Sdxl | Self::SdxlRefiner)
    }

    /// Whether the family has the first text encoder (`text_encoder`).
    pub fn has_first_text_encoder(self) -> bool {
        self != Self::SdxlRefiner
    }

    /// Whether the family has the second text encoder (`text_encoder_2`, with projection).
    pub fn has_second_text_encoder(self) -> bool {
        self.is_sdxl()
    }

    /// Every family, in a fixed order.
    pub const ALL: [ModelFamily; 4] = [Self::Sd1, Self::Sd2, Self::Sdxl, Self::SdxlRefiner];

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "SD 1.x",
            Self::Sd2 => "SD 2.x",
            Self::Sdxl => "SDXL base",
            Self::SdxlRefiner => "SDXL refiner",
        }
    }

    /// The name accepted by `--family` and written by `sd inspect --json`.
    pub fn id(self) -> &'static str {
        match self {
            Self::Sd1 => "sd1",
            Self::Sd2 => "sd2",
            Self::Sdxl => "sdxl",
            Self::SdxlRefiner => "sdxl-refiner",
        }
    }

    /// The diffusers components that hold this family's text encoders, in conditioning
    /// order, with their transformers classes.
    pub fn text_encoder_components(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Sd1 | Self::Sd2 => &[("text_encoder", "CLIPTextModel")],
            Self::Sdxl => &[
                ("text_encoder", "CLIPTextModel"),
                ("text_encoder_2", "CLIPTextModelWithProjection"),
            ],
            Self::SdxlRefiner => &[("text_encoder_2", "CLIPTextModelWithProjection")],
        }
    }

    /// How the tokenizer of each text encoder pads (same order as
    /// [`ModelFamily::text_encoder_components`]).
    pub fn pad_styles(self) -> &'static [PadStyle] {
        match self {
            Self::Sd1 => &[PadStyle::EndOfText],
            Self::Sd2 | Self::SdxlRefiner => &[PadStyle::Exclamation],
            Self::Sdxl => &[PadStyle::EndOfText, PadStyle::Exclamation],
        }
    }
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ModelFamily {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "sd1" | "sd15" | "sd1.5" | "v1" => Self::Sd1,
            "sd2" | "sd21" | "sd2.1" | "v2" => Self::Sd2,
            "sdxl" | "xl" | "sdxl-base" => Self::Sdxl,
            "sdxl-refiner" | "refiner" => Self::SdxlRefiner,
            _ => {
                return Err(Error::Unsupported {
                    what: "model family",
                    value: s.to_string(),
                    valid: Self::ALL.iter().map(|f| f.id().to_string()).collect(),
                })
            }
        })
    }
}

/// The name diffusers uses for a prediction type (`epsilon`, `v_prediction`, `sample`).
pub fn prediction_name(prediction: PredictionType) -> &'static str {
    match prediction {
        PredictionType::Epsilon => "epsilon",
        PredictionType::VPrediction => "v_prediction",
        PredictionType::Sample => "sample",
    }
}

/// One text encoder of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEncoderDescription {
    /// The diffusers component name (`text_encoder`, `text_encoder_2`).
    pub component: String,
    /// The transformers class (`CLIPTextModel`, `CLIPTextModelWithProjection`).
    pub class: String,
    /// Its configuration (what the model is built with).
    pub config: ClipTextConfig,
    /// The number of transformer layers stored in the file, when it differs from
    /// `config.num_hidden_layers`: SD 2.x single files hold 24 OpenCLIP layers, of which
    /// SD 2.x (and diffusers' 23-layer text encoder) uses the first 23.
    pub stored_layers: Option<usize>,
}

/// Everything decided about a model at load time.
#[derive(Debug, Clone)]
pub struct ModelDescription {
    /// The family.
    pub family: ModelFamily,
    /// What the UNet predicts.
    pub prediction: PredictionType,
    /// Whether the UNet takes 9 channels (latents, mask, masked-image latents).
    pub inpainting: bool,
    /// The UNet's configuration.
    pub unet: UNetConfig,
    /// The VAE's configuration.
    pub vae: VaeConfig,
    /// The text encoders, in conditioning order (see [`ModelFamily::text_encoder_components`]).
    pub text_encoders: Vec<TextEncoderDescription>,
    /// The default scheduler configuration.
    pub scheduler: SchedulerConfig,
    /// SDXL: an empty negative prompt gives zero embeddings instead of the encoding of ""
    /// (`force_zeros_for_empty_prompt` of model_index.json; on for SDXL base by default).
    pub force_zeros_for_empty_prompt: bool,
    /// SDXL: the time ids carry an aesthetic score instead of the target size
    /// (`requires_aesthetics_score`; on for the refiner by default).
    pub requires_aesthetics_score: bool,
}

/// Overrides for detection (the CLI's `--family` and `--prediction-type`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DetectOptions {
    /// Use this family instead of the detected one.
    pub family: Option<ModelFamily>,
    /// Use this prediction type instead of the detected one.
    pub prediction: Option<PredictionType>,
}

impl ModelDescription {
    /// The full-size published configuration of `family` (with 9 input channels when
    /// `inpainting`) and `prediction`.
    pub fn preset(family: ModelFamily, inpainting: bool, prediction: PredictionType) -> Self {
        let mut unet = match family {
            ModelFamily::Sd1 => UNetConfig::sd15(),
            ModelFamily::Sd2 => UNetConfig::sd21_v(),
            ModelFamily::Sdxl => UNetConfig::sdxl_base(),
            ModelFamily::SdxlRefiner => UNetConfig::sdxl_refiner(),
        };
        if inpainting {
            unet.in_channels = 9;
        }
        // SD 2.x ε models (2.x-base, 2.x inpainting) are 512 models.
        if family == ModelFamily::Sd2 && prediction != PredictionType::VPrediction {
            unet.sample_size = Some(PerBlock::Uniform(64));
        }
        let vae = match family {
            ModelFamily::Sd1 | ModelFamily::Sd2 => VaeConfig::sd15(),
            ModelFamily::Sdxl | ModelFamily::SdxlRefiner => VaeConfig::sdxl(),
        };
        let configs = match family {
            ModelFamily::Sd1 => vec![ClipTextConfig::sd15()],
            ModelFamily::Sd2 => vec![ClipTextConfig::sd21()],
            ModelFamily::Sdxl => vec![ClipTextConfig::sdxl_base_1(), ClipTextConfig::sdxl_2()],
            ModelFamily::SdxlRefiner => vec![ClipTextConfig::sdxl_2()],
        };
        let text_encoders = family
            .text_encoder_components()
            .iter()
            .zip(configs)
            .map(|(&(component, class), config)| TextEncoderDescription {
                component: component.to_string(),
                class: class.to_string(),
                config,
                stored_layers: None,
            })
            .collect();
        let mut scheduler = match family {
            ModelFamily::Sd1 => SchedulerConfig::sd15(),
            ModelFamily::Sd2 => SchedulerConfig::sd21_v(),
            ModelFamily::Sdxl | ModelFamily::SdxlRefiner => sdxl_scheduler(),
        };
        scheduler.prediction_type = Some(prediction_name(prediction).to_string());
        Self {
            family,
            prediction,
            inpainting,
            unet,
            vae,
            text_encoders,
            scheduler,
            force_zeros_for_empty_prompt: family == ModelFamily::Sdxl,
            requires_aesthetics_score: family == ModelFamily::SdxlRefiner,
        }
    }

    /// Describes a diffusers folder from its config files (`unet/config.json`,
    /// `scheduler/scheduler_config.json`, the text encoders listed in `model_index.json`).
    pub fn from_folder(folder: &DiffusersFolder, options: &DetectOptions) -> Result<Self> {
        let unet: UNetConfig = folder.config("unet")?;
        let vae: VaeConfig = folder.config("vae")?;
        let scheduler: SchedulerConfig = if folder.has_component("scheduler") {
            folder.config("scheduler")?
        } else {
            SchedulerConfig::sd15()
        };
        let mut text_encoders = Vec::new();
        for component in ["text_encoder", "text_encoder_2"] {
            if let Some(class) = folder.component_class(component) {
                text_encoders.push(TextEncoderDescription {
                    component: component.to_string(),
                    class: class.class.clone(),
                    config: folder.config(component)?,
                    stored_layers: None,
                });
            }
        }
        let context = match &unet.cross_attention_dim {
            PerBlock::Uniform(d) => *d,
            PerBlock::List(d) => d.first().copied().unwrap_or(0),
        };
        let detected = if unet.addition_embed_type.as_deref() == Some("text_time") {
            if text_encoders.iter().any(|t| t.component == "text_encoder") {
                ModelFamily::Sdxl
            } else {
                ModelFamily::SdxlRefiner
            }
        } else if context == 1024
            || text_encoders
                .first()
                .is_some_and(|t| t.config.hidden_act != crate::nn::Activation::QuickGelu)
        {
            ModelFamily::Sd2
        } else {
            ModelFamily::Sd1
        };
        let prediction = match options.prediction {
            Some(p) => p,
            None => match &scheduler.prediction_type {
                Some(name) => name.parse()?,
                None => PredictionType::Epsilon,
            },
        };
        let family = options.family.unwrap_or(detected);
        // The SDXL switches of model_index.json, diffusers' defaults when absent.
        let flag = |key: &str, default: bool| match family.is_sdxl() {
            true => folder.flag(key).unwrap_or(default),
            false => false,
        };
        Ok(Self {
            family,
            prediction,
            inpainting: unet.in_channels == 9,
            unet,
            vae,
            text_encoders,
            scheduler,
            force_zeros_for_empty_prompt: flag(
                "force_zeros_for_empty_prompt",
                family == ModelFamily::Sdxl,
            ),
            requires_aesthetics_score: flag(
                "requires_aesthetics_score",
                family == ModelFamily::SdxlRefiner,
            ),
        })
    }

    /// A short human name: the family, with "inpainting" when it is one.
    pub fn name(&self) -> String {
        if self.inpainting {
            format!("{} inpainting", self.family.name())
        } else {
            self.family.name().to_string()
        }
    }

    /// Checks that a model so described can run: a text encoder, and a UNet of 4 input
    /// channels (txt2img/img2img) or 9 (inpainting). `root` names the model in errors.
    pub fn check_runnable(&self, root: &Path) -> Result<()> {
        if self.text_encoders.is_empty() {
            return Err(Error::config(
                root.join("model_index.json"),
                "no text encoder (neither `text_encoder` nor `text_encoder_2` is listed)",
            ));
        }
        match self.unet.in_channels {
            4 | 9 => Ok(()),
            other => Err(Error::Unsupported {
                what: "UNet input channels",
                value: other.to_string(),
                valid: vec!["4 (txt2img/img2img)".into(), "9 (inpainting)".into()],
            }),
        }
    }

    /// The image size the model was trained at (512, 768 or 1024).
    pub fn native_size(&self) -> usize {
        let latent = match &self.unet.sample_size {
            Some(PerBlock::Uniform(size)) => *size,
            Some(PerBlock::List(sizes)) => sizes.first().copied().unwrap_or(64),
            None => 64,
        };
        latent * self.vae.downsample_factor()
    }

    /// The text encoder held by diffusers component `component`, if the model has it.
    pub fn text_encoder(&self, component: &str) -> Option<&TextEncoderDescription> {
        self.text_encoders.iter().find(|t| t.component == component)
    }
}

/// SDXL's `scheduler/scheduler_config.json` (base and refiner): Euler, scaled-linear betas
/// 0.00085–0.012, "leading" spacing with offset 1.
pub fn sdxl_scheduler() -> SchedulerConfig {
    SchedulerConfig {
        class_name: Some("EulerDiscreteScheduler".into()),
        num_train_timesteps: Some(1000),
        beta_start: Some(0.00085),
        beta_end: Some(0.012),
        beta_schedule: Some("scaled_linear".into()),
        prediction_type: Some("epsilon".into()),
        timestep_spacing: Some("leading".into()),
        steps_offset: Some(1),
        interpolation_type: Some("linear".into()),
        use_karras_sigmas: Some(false),
        set_alpha_to_one: Some(false),
        skip_prk_steps: Some(true),
        clip_sample: Some(false),
        ..SchedulerConfig::default()
    }
}

/// What the tensor names and shapes of an LDM single file say: the detector's evidence, turned
/// at once into the file's [`ModelDescription`] (which is what the model is from then on).
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    /// The family.
    pub family: ModelFamily,
    /// Whether the UNet takes 9 input channels.
    pub inpainting: bool,
    /// The prediction type (after the rules in the module documentation).
    pub prediction: PredictionType,
    /// Why the prediction type was chosen (for `sd inspect`).
    pub prediction_reason: String,
    /// Whether `prediction` is only a guess from the file name, which loading the model
    /// replaces with AUTOMATIC1111's test ([`a1111_v_statistic`]).
    pub needs_probe: bool,
}

/// AUTOMATIC1111's v-prediction test for an SD 2.x UNet: runs it once on x = 0.5 everywhere
/// `(1, in_channels, 8, 8)`, timestep 999 and a two-token context of 0.5, and returns the mean
/// of `unet(x) − x`. An ε model returns about its input's noise estimate (mean near 0); a v
/// model at t = 999 predicts about −x₀ (mean well below 0). See [`a1111_v_verdict`].
pub fn a1111_v_statistic(
    unet: &crate::unet::UNet2DConditionModel,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> Result<f64> {
    let config = unet.config();
    let width = match &config.cross_attention_dim {
        PerBlock::Uniform(w) => *w,
        PerBlock::List(widths) => widths.first().copied().unwrap_or(1024),
    };
    let x = candle_core::Tensor::full(0.5f32, (1, config.in_channels, 8, 8), device)?
        .to_dtype(dtype)?;
    let context = candle_core::Tensor::full(0.5f32, (1, 2, width), device)?.to_dtype(dtype)?;
    let out = unet.forward(&x, 999.0, &context, None)?;
    let mean = (out - &x)?
        .to_dtype(candle_core::DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    Ok(mean as f64)
}

/// AUTOMATIC1111's reading of [`a1111_v_statistic`]: below −1 means v-prediction.
pub fn a1111_v_verdict(statistic: f64) -> PredictionType {
    if statistic < -1.0 {
        PredictionType::VPrediction
    } else {
        PredictionType::Epsilon
    }
}

/// Recognises an LDM single file from its tensors (`weights` without a key map) and, for the
/// SD 2.x prediction type, the file's path (see the module documentation).
pub fn detect_single_file(
    weights: &Weights,
    path: &Path,
    options: &DetectOptions,
) -> Result<Detected> {
    let has = |name: &str| weights.stored_shape(name).is_some();
    let has_prefix = |prefix: &str| weights.names().iter().any(|n| n.starts_with(prefix));
    let shape = |name: &str| weights.stored_shape(name);

    // The UNet first: its added-condition width and context width decide; the text
    // encoders' key prefixes decide for files without a UNet.
    let conv_in = shape(&format!("{UNET}input_blocks.0.0.weight"));
    let adm = shape(&format!("{UNET}label_emb.0.0.weight")).and_then(|s| s.get(1).copied());
    let context = first_context_width(weights);
    let from_unet = match (adm, context) {
        (Some(2816), _) => Some(ModelFamily::Sdxl),
        (Some(2560), _) => Some(ModelFamily::SdxlRefiner),
        (Some(_), _) => None,
        (None, Some(768)) => Some(ModelFamily::Sd1),
        (None, Some(1024)) => Some(ModelFamily::Sd2),
        _ => None,
    };
    let from_text = TEXT_ENCODER_PREFIXES
        .iter()
        .find(|(_, _, prefix, _)| has_prefix(prefix))
        .map(|(family, ..)| *family);
    let detected = options.family.or(from_unet).or(from_text).or_else(|| {
        // A UNet without text encoder whose widths are not the published ones (a tiny test
        // model, say): its structure still tells SDXL (added conditions) from SD 1/2.
        match (adm, has(&format!("{UNET}out.2.weight"))) {
            (None, true) if context.is_some() => Some(ModelFamily::Sd1),
            _ => None,
        }
    });
    let Some(family) = detected else {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!(
                "cannot tell the model family (SD 1.x, SD 2.x, SDXL, SDXL refiner): {}",
                describe_found(weights)
            ),
        });
    };
    let inpainting = match conv_in.as_deref() {
        Some([_, 9, ..]) => true,
        Some([_, 4, ..]) | None => false,
        Some(other) => {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!(
                    "the UNet takes {} input channels (conv_in shape {other:?}); only 4 (txt2img) \
                     and 9 (inpainting) are supported",
                    other.get(1).copied().unwrap_or(0)
                ),
            })
        }
    };
    let (prediction, prediction_reason, needs_probe) =
        decide_prediction(family, inpainting, path, options)?;
    Ok(Detected {
        family,
        inpainting,
        prediction,
        prediction_reason,
        needs_probe,
    })
}

/// The context width of the UNet's first cross-attention (`attn2.to_k` input width).
fn first_context_width(weights: &Weights) -> Option<usize> {
    weights
        .names()
        .into_iter()
        .filter(|n| n.starts_with(UNET) && n.ends_with("attn2.to_k.weight"))
        .filter_map(|n| weights.stored_shape(n).and_then(|s| s.last().copied()))
        .next()
}

/// The prefixes (first two name parts) found in a file, with counts, and a few names.
pub fn describe_found(weights: &Weights) -> String {
    let names = weights.names();
    if names.is_empty() {
        return "the file holds no tensors".to_string();
    }
    let mut prefixes: std::collections::BTreeMap<String, usize> = Default::default();
    for name in &names {
        let prefix: Vec<&str> = name.split('.').take(2).collect();
        *prefixes.entry(prefix.join(".")).or_default() += 1;
    }
    let mut top: Vec<(String, usize)> = prefixes.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let shown: Vec<String> = top
        .iter()
        .take(8)
        .map(|(p, n)| format!("{p}.* ({n})"))
        .collect();
    let examples: Vec<&str> = names.iter().take(4).copied().collect();
    format!(
        "found {} tensors under {}{}; e.g. {}",
        names.len(),
        shown.join(", "),
        if top.len() > 8 { ", ..." } else { "" },
        examples.join(", ")
    )
}

/// The prediction type, why, and whether it is only a guess from the file name (which a load
/// replaces with AUTOMATIC1111's test).
fn decide_prediction(
    family: ModelFamily,
    inpainting: bool,
    path: &Path,
    options: &DetectOptions,
) -> Result<(PredictionType, String, bool)> {
    if let Some(p) = options.prediction {
        return Ok((p, "given by the user".into(), false));
    }
    if let Some(yaml) = companion_yaml(path) {
        let text = std::fs::read_to_string(&yaml).map_err(|e| Error::io(&yaml, e))?;
        let v = text.lines().any(|line| {
            let line = line.trim();
            line.starts_with("parameterization:")
                && line["parameterization:".len()..]
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    == "v"
        });
        let p = if v {
            PredictionType::VPrediction
        } else {
            PredictionType::Epsilon
        };
        return Ok((
            p,
            format!("from {} (parameterization)", yaml.display()),
            false,
        ));
    }
    if family != ModelFamily::Sd2 {
        return Ok((
            PredictionType::Epsilon,
            format!("{} models predict ε", family.name()),
            false,
        ));
    }
    if inpainting {
        return Ok((
            PredictionType::Epsilon,
            "SD 2.x inpainting models predict ε".into(),
            false,
        ));
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if stem.contains("512") || stem.contains("base") {
        return Ok((
            PredictionType::Epsilon,
            "file name says 512/base (SD 2.x ε model); loading runs A1111's test instead".into(),
            true,
        ));
    }
    if stem.contains("768") {
        return Ok((
            PredictionType::VPrediction,
            "file name says 768 (SD 2.x v model); loading runs A1111's test instead".into(),
            true,
        ));
    }
    Ok((
        PredictionType::VPrediction,
        "SD 2.x default (as diffusers); loading runs A1111's test instead".into(),
        true,
    ))
}

/// `model.yaml` beside `model.safetensors` / `model.ckpt`, if present.
fn companion_yaml(path: &Path) -> Option<std::path::PathBuf> {
    ["yaml", "yml"]
        .iter()
        .map(|ext| path.with_extension(ext))
        .find(|p| p.is_file())
}
