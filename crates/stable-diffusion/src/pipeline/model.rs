//! A loaded model: its description, text encoder(s), UNet, VAE and noise schedule, assembled
//! from parts so that any source (a diffusers folder, a single-file checkpoint) can build one.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::family::ModelFamily;
use super::precision::Precision;
use crate::loading::{
    attach_networks, open_networks, DiffusersFolder, LoraFile, LoraSpec, LoraTarget,
    SingleFileCheckpoint, Weights,
};
use crate::model_family::{
    a1111_v_statistic, a1111_v_verdict, prediction_name, DetectOptions,
    ModelDescription as FullDescription,
};
use crate::scheduler::{PredictionType, SchedulerConfig};
use crate::text_encoder::{ClipTextConfig, ClipTextModel};
use crate::tokenizer::{ClipTokenizer, PadStyle};
use crate::unet::{PerBlock, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::{Error, Result};

/// Where and how to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device the model runs on.
    pub device: Device,
    /// The dtype weight matrices are kept in (f16/bf16 stay half in memory).
    pub weight_dtype: DType,
    /// The dtype the layers compute in (f32 on the CPU unless asked otherwise).
    pub compute_dtype: DType,
    /// The weights variant to prefer in a diffusers folder (`fp16`), if any.
    pub variant: Option<String>,
    /// Use this family instead of the detected one.
    pub family: Option<ModelFamily>,
    /// Use this prediction type instead of the detected (or configured) one.
    pub prediction: Option<PredictionType>,
    /// For a single-file checkpoint: a diffusers folder whose config files describe it (as
    /// diffusers' `from_single_file(config=...)`), instead of the family's full-size presets.
    pub config: Option<PathBuf>,
    /// LoRA / LyCORIS networks merged into the weights as they load, with their multipliers.
    pub loras: Vec<LoraSpec>,
    /// The most memory a run may use, in bytes (weights, then a request's work): a model or a
    /// request estimated above it is refused before it allocates ([`Error::MemoryBudget`]).
    /// `None`: what the machine has available (`MemAvailable`) when each is checked.
    pub max_memory: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            weight_dtype: DType::F32,
            compute_dtype: DType::F32,
            variant: None,
            family: None,
            prediction: None,
            config: None,
            loras: Vec::new(),
            max_memory: None,
        }
    }
}

impl LoadOptions {
    /// The precision of the UNet and the text encoders.
    pub fn precision(&self) -> Precision {
        Precision {
            storage: self.weight_dtype,
            compute: self.effective_compute_dtype(),
        }
    }

    /// The dtype activations are held in: the compute dtype, except on the CPU with the kernel
    /// layer on, where half-precision compute means half-precision weights multiplied with
    /// f32 accumulation and activations stay f32 between layers (the CPU has no fast half
    /// elementwise ops; a bf16 weight is used as it is stored, never converted per call).
    pub fn effective_compute_dtype(&self) -> DType {
        if self.device.is_cpu() && crate::nn::kernels::enabled() {
            DType::F32
        } else {
            self.compute_dtype
        }
    }

    /// Refuses a model whose weights, kept in `weight_dtype`, would not fit
    /// [`LoadOptions::max_memory`] (or the available memory); returns their size.
    pub fn check_weights_fit(&self, description: &FullDescription) -> Result<u64> {
        self.check_weights_fit_located(description, |err, _| err)
    }

    /// [`LoadOptions::check_weights_fit`], with `locate` naming the config file of a
    /// component whose config cannot be built (see [`super::memory::weight_bytes`]).
    fn check_weights_fit_located(
        &self,
        description: &FullDescription,
        locate: impl Fn(Error, &str) -> Error,
    ) -> Result<u64> {
        let bytes = super::memory::weight_bytes_located(description, self.weight_dtype, locate)?;
        let what = format!(
            "loading the {} model (weights in {})",
            description.name(),
            self.weight_dtype.as_str()
        );
        super::memory::check_fits(&what, bytes, 0, self.max_memory)?;
        Ok(bytes)
    }

    /// The precision of a VAE: computed in f32 when its config says it overflows in f16
    /// (`force_upcast`, SDXL's VAE), whatever the compute dtype.
    pub fn vae_precision(&self, config: &VaeConfig) -> Precision {
        let mut precision = self.precision();
        if config.force_upcast {
            precision.compute = DType::F32;
        }
        precision
    }
}

/// A text encoder with its tokenizer and padding.
#[derive(Debug, Clone)]
pub struct TextEncoderPart {
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// How prompts are padded to 77 tokens.
    pub pad_style: PadStyle,
    /// The encoder.
    pub model: ClipTextModel,
}

/// Everything a [`StableDiffusion`] is made of; any loader can fill one.
pub struct ModelParts {
    /// What the model is (decided once, at load time).
    pub description: FullDescription,
    /// The file or folder it came from (its stem is the model's name in the infotext).
    pub path: PathBuf,
    /// `text_encoder`: CLIP ViT-L (SD 1.x, SDXL) or OpenCLIP ViT-H (SD 2.x); absent for the
    /// SDXL refiner.
    pub text_encoder: Option<TextEncoderPart>,
    /// `text_encoder_2`: SDXL's OpenCLIP bigG with projection.
    pub text_encoder_2: Option<TextEncoderPart>,
    /// The UNet.
    pub unet: UNet2DConditionModel,
    /// The VAE.
    pub vae: AutoencoderKL,
    /// The VAE's compute dtype (f32 when it must be upcast).
    pub vae_dtype: DType,
    /// The noise schedule (and prediction type) the model was trained with.
    pub scheduler_config: SchedulerConfig,
    /// The device everything lives on.
    pub device: Device,
    /// The compute dtype of the UNet and text encoders.
    pub compute_dtype: DType,
    /// LoRA keys that matched no weight (A1111 warns about these and goes on).
    pub lora_warnings: Vec<String>,
}

/// A loaded Stable Diffusion model, ready to generate. Cloning is cheap: the weights are shared
/// (a clone that adds an embedding changes only its own token table).
#[derive(Clone)]
pub struct StableDiffusion {
    pub(super) description: FullDescription,
    pub(super) path: PathBuf,
    pub(super) text_encoder: Option<TextEncoderPart>,
    pub(super) text_encoder_2: Option<TextEncoderPart>,
    pub(super) unet: UNet2DConditionModel,
    pub(super) vae: AutoencoderKL,
    pub(super) vae_dtype: DType,
    pub(super) scheduler_config: SchedulerConfig,
    pub(super) device: Device,
    pub(super) dtype: DType,
    /// Network modules (LoRA keys) that matched no weight: A1111 warns and goes on.
    pub(super) lora_warnings: Vec<String>,
}

impl StableDiffusion {
    /// Assembles a model from its parts, checking that they fit its kind: the text
    /// encoders the family needs (the second one with a projection), the UNet's input
    /// channels (9 for inpainting, 4 otherwise), the UNet's added conditions (SDXL only).
    pub fn from_parts(parts: ModelParts) -> Result<Self> {
        let family = parts.description.family;
        let wrong = |msg: String| Err(Error::invalid("model parts", msg));
        if family.has_first_text_encoder() != parts.text_encoder.is_some() {
            return wrong(format!(
                "{} {} a first text encoder",
                family.name(),
                if family.has_first_text_encoder() {
                    "needs"
                } else {
                    "has no"
                }
            ));
        }
        if family.has_second_text_encoder() != parts.text_encoder_2.is_some() {
            return wrong(format!(
                "{} {} a second text encoder",
                family.name(),
                if family.has_second_text_encoder() {
                    "needs"
                } else {
                    "has no"
                }
            ));
        }
        if let Some(second) = &parts.text_encoder_2 {
            if !second.model.has_projection() {
                return wrong("SDXL's second text encoder needs text_projection (CLIPTextModelWithProjection)".into());
            }
        }
        let unet = parts.unet.config();
        let channels = if parts.description.inpainting { 9 } else { 4 };
        if unet.in_channels != channels {
            return wrong(format!(
                "the UNet takes {} input channels, a {} model {channels}",
                unet.in_channels,
                parts.description.name()
            ));
        }
        if unet.needs_added_conditions() != family.is_sdxl() {
            return wrong(format!(
                "the UNet {} added conditions (addition_embed_type \"text_time\"), the family is {}",
                if unet.needs_added_conditions() { "takes" } else { "takes no" },
                family.name()
            ));
        }
        if parts.vae.config().latent_channels != unet.out_channels {
            return wrong(format!(
                "the VAE has {} latent channels, the UNet predicts {}",
                parts.vae.config().latent_channels,
                unet.out_channels
            ));
        }
        Ok(Self {
            description: parts.description,
            path: parts.path,
            text_encoder: parts.text_encoder,
            text_encoder_2: parts.text_encoder_2,
            unet: parts.unet,
            vae: parts.vae,
            vae_dtype: parts.vae_dtype,
            scheduler_config: parts.scheduler_config,
            device: parts.device,
            dtype: parts.compute_dtype,
            lora_warnings: parts.lora_warnings,
        })
    }

    /// Loads a model: a diffusers pipeline folder (`model_index.json` and one folder per
    /// component), or a single-file checkpoint (`.safetensors`, `.ckpt`) in the original
    /// (LDM / AUTOMATIC1111) layout. The family is detected from it.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        if path.is_file() {
            return Self::load_single_file(path, options);
        }
        let folder = DiffusersFolder::open(path)?;
        let mut described = FullDescription::from_folder(&folder, &DetectOptions::default())?;
        described.check_runnable(folder.root())?;
        if let Some(family) = options.family {
            described.family = family;
        }
        options.check_weights_fit_located(&described, |err, component| {
            config_file(err, folder.root(), component)
        })?;
        let family = described.family;
        let variant = options.variant.as_deref();
        let precision = options.precision();
        let device = &options.device;
        let (networks, mut lora_warnings) = open_loras(&options.loras)?;
        let text_encoder = if family.has_first_text_encoder() {
            Some(load_text_encoder(
                &folder,
                "text_encoder",
                "tokenizer",
                family.pad_style(),
                options,
                (&networks, LoraTarget::TextEncoder, &mut lora_warnings),
            )?)
        } else {
            None
        };
        let text_encoder_2 = if family.has_second_text_encoder() {
            Some(load_text_encoder(
                &folder,
                "text_encoder_2",
                "tokenizer_2",
                PadStyle::Exclamation,
                options,
                (&networks, LoraTarget::TextEncoder2, &mut lora_warnings),
            )?)
        } else {
            None
        };
        let unet_config = &described.unet;
        let (unet_weights, unmatched) = attach_networks(
            folder.open_weights("unet", variant)?,
            &networks,
            LoraTarget::Unet,
        )?;
        lora_warnings.extend(unmatched);
        let unet =
            UNet2DConditionModel::new(precision.var_builder(unet_weights, device), unet_config)
                .map_err(|e| config_file(e, folder.root(), "unet"))?;
        let vae_config = &described.vae;
        let vae_precision = options.vae_precision(vae_config);
        let vae = AutoencoderKL::new(
            vae_precision.var_builder(folder.open_weights("vae", variant)?, device),
            vae_config,
        )
        .map_err(|e| config_file(e, folder.root(), "vae"))?;
        let mut scheduler_config: SchedulerConfig = folder.config("scheduler")?;
        if let Some(prediction) = options.prediction {
            scheduler_config.prediction_type = Some(prediction_name(prediction).to_string());
        }
        Self::from_parts(ModelParts {
            description: described,
            path: path.to_path_buf(),
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            vae_dtype: vae_precision.compute,
            scheduler_config,
            device: device.clone(),
            compute_dtype: options.effective_compute_dtype(),
            lora_warnings,
        })
    }

    /// Loads a single-file checkpoint: the family, prediction type and component configs come
    /// from its tensors (full-size presets) or from `options.config`; the weights are mapped
    /// from the file's names to diffusers' by the loader's tables.
    fn load_single_file(path: &Path, options: &LoadOptions) -> Result<Self> {
        let detect = DetectOptions {
            family: options.family,
            prediction: options.prediction,
        };
        let checkpoint = SingleFileCheckpoint::open_with(path, &detect)?;
        let (networks, mut lora_warnings) = open_loras(&options.loras)?;
        let mut component_weights = |component: &str, target: LoraTarget| -> Result<Weights> {
            let (weights, unmatched) =
                attach_networks(checkpoint.component_weights(component)?, &networks, target)?;
            lora_warnings.extend(unmatched);
            Ok(weights)
        };
        let mut described = match &options.config {
            Some(dir) => {
                let mut described =
                    FullDescription::from_folder(&DiffusersFolder::open(dir)?, &detect)?;
                if let Some(family) = options.family {
                    described.family = family;
                }
                described
            }
            None => checkpoint.describe().clone(),
        };
        options.check_weights_fit(&described)?;
        let family = described.family;
        let precision = options.precision();
        let device = &options.device;
        let mut text_encoder = None;
        let mut text_encoder_2 = None;
        for text in &described.text_encoders {
            let target = if text.component == "text_encoder" {
                LoraTarget::TextEncoder
            } else {
                LoraTarget::TextEncoder2
            };
            let vb = precision.var_builder(component_weights(&text.component, target)?, device);
            let model = ClipTextModel::from_class(vb, &text.config, &text.class)?;
            let pad_style = if text.component == "text_encoder" {
                family.pad_style()
            } else {
                PadStyle::Exclamation
            };
            let part = TextEncoderPart {
                tokenizer: ClipTokenizer::embedded()?.with_pad_style(pad_style),
                pad_style,
                model,
            };
            match text.component.as_str() {
                "text_encoder" => text_encoder = Some(part),
                _ => text_encoder_2 = Some(part),
            }
        }
        let mut unet = UNet2DConditionModel::new(
            precision.var_builder(component_weights("unet", LoraTarget::Unet)?, device),
            &described.unet,
        )?;
        let vae_precision = options.vae_precision(&described.vae);
        let vae = AutoencoderKL::new(
            vae_precision.var_builder(checkpoint.component_weights("vae")?, device),
            &described.vae,
        )?;
        let mut scheduler_config = described.scheduler.clone();
        if options.config.is_none() && checkpoint.needs_prediction_probe() {
            // An SD 2.x file that does not say what it predicts: AUTOMATIC1111's test.
            let statistic = a1111_v_statistic(&unet, device, precision.compute)?;
            let prediction = a1111_v_verdict(statistic);
            let preset = FullDescription::preset(family, described.inpainting, prediction);
            unet.set_sample_size(preset.unet.sample_size.clone());
            described.unet.sample_size = preset.unet.sample_size;
            described.prediction = prediction;
            scheduler_config.prediction_type = Some(prediction_name(prediction).to_string());
        }
        if let Some(prediction) = options.prediction {
            described.prediction = prediction;
            scheduler_config.prediction_type = Some(prediction_name(prediction).to_string());
        }
        Self::from_parts(ModelParts {
            description: described,
            path: path.to_path_buf(),
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            vae_dtype: vae_precision.compute,
            scheduler_config,
            device: device.clone(),
            compute_dtype: options.effective_compute_dtype(),
            lora_warnings,
        })
    }

    /// LoRA keys that matched no weight of the model (A1111 warns about these and goes on).
    pub fn lora_warnings(&self) -> &[String] {
        &self.lora_warnings
    }

    /// Replaces the VAE (e.g. with one from [`load_vae`]); its latent channels must match.
    pub fn with_vae(mut self, vae: AutoencoderKL, vae_dtype: DType) -> Result<Self> {
        let (found, expected) = (
            vae.config().latent_channels,
            self.vae.config().latent_channels,
        );
        if found != expected {
            return Err(Error::invalid(
                "vae",
                format!("the VAE has {found} latent channels, the model's UNet uses {expected}"),
            ));
        }
        self.vae = vae;
        self.vae_dtype = vae_dtype;
        Ok(self)
    }

    /// What the model is, decided once at load time: family, prediction, inpainting, the
    /// SDXL switches and the component configurations.
    pub fn description(&self) -> &FullDescription {
        &self.description
    }

    /// The model family decided at load time.
    pub fn family(&self) -> ModelFamily {
        self.description.family
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's name as AUTOMATIC1111 writes it: the file or folder name without extension.
    pub fn name(&self) -> String {
        model_name(&self.path)
    }

    /// The tokenizer of the first text encoder (the second's for the SDXL refiner).
    pub fn tokenizer(&self) -> &ClipTokenizer {
        match (&self.text_encoder, &self.text_encoder_2) {
            (Some(part), _) | (None, Some(part)) => &part.tokenizer,
            (None, None) => unreachable!("from_parts guarantees a text encoder"),
        }
    }

    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The scheduler config the samplers are built from.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// The factor between image and latent sizes (8 for every SD VAE).
    pub fn spatial_factor(&self) -> usize {
        self.vae.config().downsample_factor()
    }

    /// The image size the model was trained at (diffusers' default width and height: the
    /// UNet's `sample_size` times the VAE's factor; 512, 768, 1024).
    pub fn native_size(&self) -> usize {
        let latent_size = match &self.unet.config().sample_size {
            Some(PerBlock::Uniform(size)) => *size,
            Some(PerBlock::List(sizes)) => sizes.first().copied().unwrap_or(64),
            None => 64,
        };
        latent_size * self.spatial_factor()
    }
}

/// Opened LoRA networks with their multipliers.
type Networks = Vec<(LoraFile, f32)>;

/// A config error about an in-memory config (no file named) from building `component` of
/// the folder at `root`: named by that component's `config.json`.
fn config_file(err: Error, root: &Path, component: &str) -> Error {
    match err {
        Error::Config { path, msg } if path.as_os_str().is_empty() => Error::Config {
            path: root.join(component).join("config.json"),
            msg,
        },
        other => other,
    }
}

/// Opens the LoRA networks to merge, with the warnings for their keys that no module claims.
fn open_loras(specs: &[LoraSpec]) -> Result<(Networks, Vec<String>)> {
    let networks = open_networks(specs)?;
    let warnings = networks
        .iter()
        .flat_map(|(n, _)| n.unclaimed_keys())
        .collect();
    Ok((networks, warnings))
}

/// A1111's model name: the file or folder name without extension.
pub(super) fn model_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads `component` with its tokenizer folder (`tokenizer_component`); without a tokenizer
/// folder the embedded CLIP vocabulary with `default_pad` is used.
fn load_text_encoder(
    folder: &DiffusersFolder,
    component: &str,
    tokenizer_component: &str,
    default_pad: PadStyle,
    options: &LoadOptions,
    lora: (&[(LoraFile, f32)], LoraTarget, &mut Vec<String>),
) -> Result<TextEncoderPart> {
    let tokenizer_dir = folder.root().join(tokenizer_component);
    let (tokenizer, pad_style) = if tokenizer_dir.is_dir() {
        let tokenizer = ClipTokenizer::from_folder(&tokenizer_dir)?;
        let pad = tokenizer.default_pad_style();
        (tokenizer, pad)
    } else {
        (ClipTokenizer::embedded()?, default_pad)
    };
    let config: ClipTextConfig = folder.config(component)?;
    let class = folder
        .component_class(component)
        .map_or("CLIPTextModel", |c| c.class.as_str());
    let weights = folder.open_weights(component, options.variant.as_deref())?;
    let (networks, target, warnings) = lora;
    let (weights, unmatched) = attach_networks(weights, networks, target)?;
    warnings.extend(unmatched);
    let vb = options.precision().var_builder(weights, &options.device);
    let model = ClipTextModel::from_class(vb, &config, class)?;
    Ok(TextEncoderPart {
        tokenizer,
        pad_style,
        model,
    })
}

/// Loads a VAE on its own: a diffusers `AutoencoderKL` folder (`config.json` and
/// `diffusion_pytorch_model[.fp16].safetensors`), a pipeline folder's `vae/`, or a single VAE
/// file as A1111 users have them (see [`crate::loading::open_vae_file`]). A single file has no
/// config: it takes `base`, the config of the VAE it replaces (as A1111 swaps only weights, so
/// the model's scaling factor stays). Returns the VAE and its compute dtype.
pub fn load_vae(
    path: &Path,
    base: &VaeConfig,
    options: &LoadOptions,
) -> Result<(AutoencoderKL, DType)> {
    let (weights, config) = if path.is_file() {
        let (weights, blocks) = crate::loading::open_vae_file(path)?;
        if blocks != base.block_out_channels.len() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!(
                    "this VAE has {blocks} decoder blocks, but the model's VAE has {}",
                    base.block_out_channels.len()
                ),
            });
        }
        (weights, base.clone())
    } else {
        let dir = if path.join("vae").join("config.json").is_file() {
            path.join("vae")
        } else {
            path.to_path_buf()
        };
        if !dir.join("config.json").is_file() {
            return Err(Error::NotFound {
                what: "VAE config (a diffusers AutoencoderKL folder)",
                path: dir.join("config.json"),
            });
        }
        let config = VaeConfig::from_file(dir.join("config.json"))?;
        let names = [
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
        ];
        let weights_path = names
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::NotFound {
                what: "VAE weights (diffusion_pytorch_model[.fp16].safetensors)",
                path: dir.join(names[0]),
            })?;
        (Weights::open(weights_path)?, config)
    };
    let precision = options.vae_precision(&config);
    let vae = AutoencoderKL::new(precision.var_builder(weights, &options.device), &config)?;
    Ok((vae, precision.compute))
}
