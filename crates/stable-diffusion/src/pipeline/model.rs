//! A loaded model (tokenizer, text encoder, UNet, VAE, noise schedule) and the denoising loop.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::{Control, Generation, GenerationRequest, Progress, RngKind, Timings};
use crate::loading::DiffusersFolder;
use crate::rng::{NoiseSource, TorchCpuRng};
use crate::scheduler::{build_sampler, SchedulerConfig};
use crate::text_encoder::{ClipTextConfig, ClipTextModel, HiddenLayer};
use crate::tokenizer::{ClipTokenizer, PadStyle};
use crate::unet::{PerBlock, UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::{Error, Result};

/// The tokens a CLIP text encoder sees at once: start + 75 + end.
const CONTEXT_TOKENS: usize = 77;

/// The model families, decided once at load time; everything else asks this value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// Stable Diffusion 1.x: OpenAI CLIP ViT-L text encoder.
    Sd1,
    /// Stable Diffusion 2.x: OpenCLIP ViT-H text encoder, often v-prediction.
    Sd2,
}

impl ModelFamily {
    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::Sd1 => "SD 1.x",
            ModelFamily::Sd2 => "SD 2.x",
        }
    }

    /// How the family's (first) tokenizer pads: `<|endoftext|>` for SD 1.x, `!` for SD 2.x.
    pub fn pad_style(self) -> PadStyle {
        match self {
            ModelFamily::Sd1 => PadStyle::EndOfText,
            ModelFamily::Sd2 => PadStyle::Exclamation,
        }
    }
}

/// Where and how to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device the model runs on.
    pub device: Device,
    /// The compute dtype (weights stored in other dtypes are converted).
    pub dtype: DType,
    /// The weights variant to prefer in a diffusers folder (`fp16`), if any.
    pub variant: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            variant: None,
        }
    }
}

/// A loaded Stable Diffusion model, ready to generate.
pub struct StableDiffusion {
    family: ModelFamily,
    path: PathBuf,
    tokenizer: ClipTokenizer,
    pad_style: PadStyle,
    text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler_config: SchedulerConfig,
    device: Device,
    dtype: DType,
}

impl StableDiffusion {
    /// Loads a diffusers pipeline folder (`model_index.json` and one folder per component).
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let folder = DiffusersFolder::open(path)?;
        let variant = options.variant.as_deref();
        let text_config: ClipTextConfig = folder.config("text_encoder")?;
        let family = match text_config.hidden_act {
            crate::nn::Activation::QuickGelu => ModelFamily::Sd1,
            _ => ModelFamily::Sd2,
        };
        let tokenizer_dir = folder.root().join("tokenizer");
        let (tokenizer, pad_style) = if tokenizer_dir.is_dir() {
            let tokenizer = ClipTokenizer::from_folder(&tokenizer_dir)?;
            let pad = tokenizer.default_pad_style();
            (tokenizer, pad)
        } else {
            (ClipTokenizer::embedded()?, family.pad_style())
        };
        let text_encoder = ClipTextModel::load(
            &folder,
            "text_encoder",
            variant,
            options.dtype,
            &options.device,
        )?;
        let unet_config: UNetConfig = folder.config("unet")?;
        let unet = UNet2DConditionModel::new(
            folder.weights("unet", variant, options.dtype, &options.device)?,
            &unet_config,
        )?;
        let vae_config: VaeConfig = folder.config("vae")?;
        let vae = AutoencoderKL::new(
            folder.weights("vae", variant, options.dtype, &options.device)?,
            &vae_config,
        )?;
        let scheduler_config: SchedulerConfig = folder.config("scheduler")?;
        Ok(Self {
            family,
            path: path.to_path_buf(),
            tokenizer,
            pad_style,
            text_encoder,
            unet,
            vae,
            scheduler_config,
            device: options.device.clone(),
            dtype: options.dtype,
        })
    }

    /// The model family decided at load time.
    pub fn family(&self) -> ModelFamily {
        self.family
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's name as AUTOMATIC1111 writes it: the file or folder name without extension.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The tokenizer the model uses.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The factor between image and latent sizes (8 for every SD VAE).
    pub fn spatial_factor(&self) -> usize {
        self.vae.config().downsample_factor()
    }

    /// The image size the model was trained at (diffusers' default width and height).
    pub fn native_size(&self) -> usize {
        let latent_size = match &self.unet.config().sample_size {
            Some(PerBlock::Uniform(size)) => *size,
            Some(PerBlock::List(sizes)) => sizes.first().copied().unwrap_or(64),
            None => 64,
        };
        latent_size * self.spatial_factor()
    }

    /// Encodes one prompt to `(1, 77, hidden)` embeddings, truncated like diffusers.
    fn encode_prompt(&self, prompt: &str) -> Result<Tensor> {
        let ids = self
            .tokenizer
            .encode_padded(prompt, CONTEXT_TOKENS, self.pad_style)?;
        let ids = Tensor::from_vec(ids, (1, CONTEXT_TOKENS), &self.device)?;
        let output = self.text_encoder.forward(&ids, HiddenLayer::LAST)?;
        Ok(output.hidden)
    }

    /// Runs one generation. `init_image` is the img2img start, `(1, 3, height, width)` in
    /// [-1, 1], and must be given exactly when the request names one. `progress` is called
    /// after each stage and step; returning [`Control::Cancel`] ends the run with
    /// [`Error::Cancelled`].
    pub fn generate(
        &self,
        request: &GenerationRequest,
        init_image: Option<&Tensor>,
        progress: &mut dyn FnMut(Progress) -> Control,
    ) -> Result<Generation> {
        request.validate(self.spatial_factor())?;
        if request.init_image.is_some() != init_image.is_some() {
            return Err(Error::invalid(
                "init image",
                "the request and the call disagree on whether there is an init image",
            ));
        }
        let mut check = |event: Progress| match progress(event) {
            Control::Continue => Ok(()),
            Control::Cancel => Err(Error::Cancelled),
        };
        let mut timings = Timings::default();
        let batch = request.batch_size;

        // Text: (2·batch, 77, hidden) with CFG (unconditional half first), else (batch, 77, hidden).
        check(Progress::EncodingText)?;
        let start = Instant::now();
        let cond = self.encode_prompt(&request.prompt)?.repeat((batch, 1, 1))?;
        let context = if request.uses_cfg() {
            let uncond = self
                .encode_prompt(&request.negative_prompt)?
                .repeat((batch, 1, 1))?;
            Tensor::cat(&[uncond, cond], 0)?
        } else {
            cond
        };
        let context = context.to_dtype(self.dtype)?;
        timings.text_encoding = start.elapsed();

        let mut rng: Box<dyn NoiseSource> = match request.rng {
            RngKind::Cpu => Box::new(TorchCpuRng::new(request.seed)),
        };
        let mut sampler = build_sampler(
            request.sampler,
            request.schedule,
            &self.scheduler_config,
            request.steps,
            request.eta,
        )?;
        let factor = self.spatial_factor();
        let latent_shape = [
            batch,
            self.unet.config().out_channels,
            request.height / factor,
            request.width / factor,
        ];
        let scaling = self.vae.config().scaling_factor;

        // Initial latents: pure noise, or the encoded init image noised to the first timestep.
        let (mut latents, first_step) = match init_image {
            None => {
                let noise = rng.randn(&latent_shape, &self.device)?;
                ((noise * sampler.init_noise_sigma())?, 0)
            }
            Some(image) => {
                check(Progress::EncodingImage)?;
                let start = Instant::now();
                let image = image.to_device(&self.device)?.to_dtype(self.dtype)?;
                let posterior = self.vae.encode(&image)?;
                let init = (posterior.sample(rng.as_mut())? * scaling)?;
                let init = init.repeat((batch, 1, 1, 1))?;
                timings.image_encoding = start.elapsed();
                let first_step = request.steps - request.effective_steps();
                sampler.start_at(first_step)?;
                let noise = rng.randn(&latent_shape, &self.device)?;
                (sampler.add_noise(&init, &noise, first_step)?, first_step)
            }
        };
        latents = latents.to_dtype(self.dtype)?;

        let start = Instant::now();
        let timesteps = sampler.timesteps().to_vec();
        let total = timesteps.len() - first_step;
        for (done, (index, &timestep)) in timesteps.iter().enumerate().skip(first_step).enumerate()
        {
            let model_input = if request.uses_cfg() {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let model_input = sampler.scale_model_input(&model_input, index)?;
            let prediction = self.unet.forward(&model_input, timestep, &context, None)?;
            let guided = if request.uses_cfg() {
                let halves = prediction.chunk(2, 0)?;
                let (uncond, cond) = (&halves[0], &halves[1]);
                (uncond + ((cond - uncond)? * request.cfg_scale)?)?
            } else {
                prediction
            };
            latents = sampler.step(&guided, index, &latents, rng.as_mut())?;
            check(Progress::Step {
                step: done + 1,
                total,
            })?;
        }
        timings.sampling = start.elapsed();
        timings.steps = total;

        check(Progress::Decoding)?;
        let start = Instant::now();
        let decoded = self.vae.decode(&(&latents / scaling)?)?;
        let images = crate::image::tensor_to_images(&decoded)?;
        timings.decoding = start.elapsed();
        Ok(Generation {
            images,
            latents,
            timings,
        })
    }
}
