//! Training a small Stable Diffusion model from scratch on the captioned shapes data set.
//!
//! Three stages share one output folder:
//! 1. **vae**: AutoencoderKL on reconstruction (L1 + L2) plus a small KL term;
//! 2. **text**: the CLIP text encoder learns to keep what each caption names readable from its
//!    output tokens (cross-entropy of linear heads on their mean; a stand-in for CLIP's
//!    pretraining, without which position words were never learned, see `stages.rs`);
//! 3. **diffusion**: the UNet, conditioned on the fixed text encoder, on the epsilon-prediction MSE over
//!    SD's scaled-linear schedule (1000 steps, β 0.00085…0.012), on VAE latents scaled by
//!    `scaling_factor = 1 / std`, with caption dropout so classifier-free guidance works,
//!    offset noise, the shape's pixels weighted more, and each sample's error weighted by min(1/ᾱ_t, 5) (1/ᾱ_t is
//!    how v-prediction's loss weighs it): without these the caption is never learned (see
//!    `stages.rs`).
//!
//! All use AdamW with warm-up and cosine decay, gradient clipping by global norm and an EMA of
//! the weights (the EMA weights are what gets exported). Every random choice (data, noise,
//! timesteps, dropout, initial weights) derives from one seed and the step number, so a run
//! resumed from a checkpoint continues exactly as if it had not stopped. The result is a
//! diffusers folder (`<out>/model`) that [`stable_diffusion::pipeline::StableDiffusion::load`] reads.

pub mod checkpoint;
mod export;
mod init;
pub mod optim;
mod stages;

use std::path::{Path, PathBuf};

use stable_diffusion::nn::Activation;
use stable_diffusion::text_encoder::ClipTextConfig;
use stable_diffusion::unet::{PerBlock, TransformerLayers, UNetConfig};
use stable_diffusion::vae::{SampleSize, VaeConfig, DOWN_ENCODER_BLOCK, UP_DECODER_BLOCK};
use stable_diffusion::{Error, Result};

pub use export::export_model;
pub use stages::train;

/// The three component configs of a model to train.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The CLIP text encoder (real vocabulary size and 77 positions).
    pub text: ClipTextConfig,
    /// The UNet; its `cross_attention_dim` equals the text encoder's width.
    pub unet: UNetConfig,
    /// The VAE.
    pub vae: VaeConfig,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl ModelConfig {
    /// The shipped shapes model: 32-wide text encoder, VAE (16/32/32 channels) with 1/4
    /// latents, UNet with 32/64/64 channels.
    pub fn shapes() -> Self {
        Self::build(32, 2, [16, 32, 32], [32, 64, 64], 8, 2)
    }

    /// A very small model for tests and smoke runs.
    pub fn tiny() -> Self {
        Self::build(16, 1, [8, 16, 16], [16, 16, 32], 4, 1)
    }

    /// A preset by name (`shapes`, `tiny`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "shapes" => Ok(Self::shapes()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::Unsupported {
                what: "model preset",
                value: other.to_string(),
                valid: strings(&["shapes", "tiny"]),
            }),
        }
    }

    fn build(
        text_width: usize,
        text_layers: usize,
        vae_channels: [usize; 3],
        unet_channels: [usize; 3],
        groups: usize,
        heads: usize,
    ) -> Self {
        let text = ClipTextConfig {
            vocab_size: 49408,
            hidden_size: text_width,
            intermediate_size: 4 * text_width,
            num_hidden_layers: text_layers,
            num_attention_heads: heads,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: text_width,
            pad_token_id: 1,
            bos_token_id: 0,
            eos_token_id: 2,
        };
        let vae = VaeConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: strings(&[DOWN_ENCODER_BLOCK; 3]),
            up_block_types: strings(&[UP_DECODER_BLOCK; 3]),
            block_out_channels: vae_channels.to_vec(),
            layers_per_block: 1,
            act_fn: Activation::Silu,
            latent_channels: 4,
            norm_num_groups: groups,
            sample_size: SampleSize::Square(crate::shapes::IMAGE_SIZE),
            scaling_factor: 1.0,
            ..VaeConfig::default()
        };
        let unet = UNetConfig {
            sample_size: Some(PerBlock::Uniform(crate::shapes::IMAGE_SIZE / 4)),
            down_block_types: strings(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".to_string()),
            up_block_types: strings(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            block_out_channels: unet_channels.to_vec(),
            layers_per_block: PerBlock::Uniform(1),
            norm_num_groups: Some(groups),
            cross_attention_dim: PerBlock::Uniform(text_width),
            transformer_layers_per_block: TransformerLayers::Uniform(1),
            attention_head_dim: PerBlock::Uniform(heads),
            ..UNetConfig::default()
        };
        Self { text, unet, vae }
    }
}

/// Settings of one stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (after warm-up; cosine decay to a tenth of it by the last step).
    pub learning_rate: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
}

impl StageOptions {
    /// The learning rate for step `step` (0-based).
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.learning_rate * (0.1 + 0.9 * cosine)
    }
}

/// Which stages a run performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stages {
    /// The VAE, the text encoder, then the UNet.
    All,
    /// Only the VAE.
    Vae,
    /// Only the text encoder.
    Text,
    /// Only the UNet (needs finished VAE and text stages in the same folder).
    Diffusion,
}

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The folder for checkpoints, samples and the exported model (its parent must exist).
    pub out_dir: PathBuf,
    /// The architecture.
    pub model: ModelConfig,
    /// The seed of everything random.
    pub seed: u64,
    /// Which stages to run.
    pub stages: Stages,
    /// The VAE stage.
    pub vae: StageOptions,
    /// The text encoder stage.
    pub text: StageOptions,
    /// The UNet stage.
    pub diffusion: StageOptions,
    /// EMA decay (with warm-up).
    pub ema_decay: f64,
    /// Gradients are scaled down to this global L2 norm (0: no clipping).
    pub max_grad_norm: f64,
    /// Weight of the KL term of the VAE loss.
    pub kl_weight: f64,
    /// The VAE's foreground weight: each pixel's reconstruction error is weighted by 1 + this
    /// times the fraction of it the shape covers (normalised to mean 1 per image), so the small
    /// shape's colour is kept as well as the background's (0: uniform).
    pub vae_foreground_weight: f64,
    /// Fraction of captions replaced by the empty caption.
    pub caption_dropout: f64,
    /// Offset noise: each sample's noise gets an extra per-channel constant with this standard
    /// deviation, so the noisy latent no longer reveals the image's mean colours at high noise
    /// and only the caption can tell them (0: plain noise).
    pub offset_noise: f64,
    /// Pyramid noise: each sample's noise also gets white noise drawn at 1/2, 1/4, ... of the
    /// latent size (down to 2x2), upsampled bilinearly and scaled by this factor to the power
    /// of the level, so the noisy latent no longer reveals where the shapes are at high noise
    /// and only the caption can tell the layout (0: none).
    pub pyramid_noise: f64,
    /// Fraction of samples whose timestep is drawn from the top 15% of the schedule (t ≥ 850)
    /// instead of uniformly, where only the caption tells the layout (0: all uniform).
    pub high_noise_fraction: f64,
    /// Foreground weight: each latent pixel's squared error is weighted by 1 + this times the
    /// fraction of it the shape covers (normalised to mean 1 per image), so the small shape,
    /// whose colour and place only the caption tells, is not drowned by the background
    /// (0: uniform).
    pub foreground_weight: f64,
    /// Steps between checkpoints (0: only at the end and when stopped).
    pub checkpoint_every: usize,
    /// Steps between sample images (0: only at the end).
    pub sample_every: usize,
    /// Continue from the checkpoints in `out_dir` instead of refusing to overwrite them.
    pub resume: bool,
}

impl TrainOptions {
    /// The documented settings for the shipped shapes model, writing to `out_dir`.
    pub fn shapes(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            model: ModelConfig::shapes(),
            seed: 0,
            stages: Stages::All,
            vae: StageOptions {
                steps: 1000,
                batch_size: 8,
                learning_rate: 1e-3,
                warmup_steps: 100,
            },
            text: StageOptions {
                steps: 1500,
                batch_size: 64,
                learning_rate: 1e-3,
                warmup_steps: 100,
            },
            diffusion: StageOptions {
                steps: 4000,
                batch_size: 16,
                learning_rate: 1e-3,
                warmup_steps: 200,
            },
            ema_decay: 0.999,
            max_grad_norm: 1.0,
            kl_weight: 1e-4,
            vae_foreground_weight: 10.0,
            caption_dropout: 0.1,
            offset_noise: 0.2,
            pyramid_noise: 0.0,
            high_noise_fraction: 0.0,
            foreground_weight: 10.0,
            checkpoint_every: 100,
            sample_every: 500,
            resume: false,
        }
    }

    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        for (name, stage) in [
            ("vae", &self.vae),
            ("text", &self.text),
            ("diffusion", &self.diffusion),
        ] {
            if stage.batch_size == 0 {
                return Err(Error::invalid(
                    "training settings",
                    format!("the {name} stage's batch size is 0; it must be at least 1"),
                ));
            }
            if stage.steps == 0 {
                return Err(Error::invalid(
                    "training settings",
                    format!("the {name} stage has 0 steps; it must have at least 1"),
                ));
            }
            if !(stage.learning_rate > 0.0 && stage.learning_rate.is_finite()) {
                return Err(Error::invalid(
                    "training settings",
                    format!(
                        "the {name} stage's learning rate must be positive, got {}",
                        stage.learning_rate
                    ),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.caption_dropout) {
            return Err(Error::invalid(
                "training settings",
                format!(
                    "caption dropout must be in [0, 1), got {}",
                    self.caption_dropout
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(Error::invalid(
                "training settings",
                format!("EMA decay must be in [0, 1), got {}", self.ema_decay),
            ));
        }
        if !(self.offset_noise >= 0.0 && self.offset_noise.is_finite()) {
            return Err(Error::invalid(
                "training settings",
                format!(
                    "offset noise must be a finite number ≥ 0, got {}",
                    self.offset_noise
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.pyramid_noise) {
            return Err(Error::invalid(
                "training settings",
                format!(
                    "pyramid noise must be in [0, 1), got {}",
                    self.pyramid_noise
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.high_noise_fraction) {
            return Err(Error::invalid(
                "training settings",
                format!(
                    "the high-noise fraction must be in [0, 1), got {}",
                    self.high_noise_fraction
                ),
            ));
        }
        for (name, value) in [
            ("foreground weight", self.foreground_weight),
            ("VAE foreground weight", self.vae_foreground_weight),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(Error::invalid(
                    "training settings",
                    format!("the {name} must be a finite number ≥ 0, got {value}"),
                ));
            }
        }
        if self.max_grad_norm < 0.0 || self.kl_weight < 0.0 {
            return Err(Error::invalid(
                "training settings",
                "the gradient norm limit and the KL weight must not be negative",
            ));
        }
        let parent = match self.out_dir.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => Path::new("."),
        };
        if self.out_dir.as_os_str().is_empty() {
            return Err(Error::invalid(
                "training settings",
                "no output folder given",
            ));
        }
        if !self.out_dir.is_dir() && !parent.is_dir() {
            return Err(Error::NotFound {
                what: "parent folder of the training output folder",
                path: parent.to_path_buf(),
            });
        }
        if self.out_dir.exists() && !self.out_dir.is_dir() {
            return Err(Error::invalid(
                "training settings",
                format!("{} exists and is not a folder", self.out_dir.display()),
            ));
        }
        Ok(())
    }
}

/// What the trainer reports to its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// A stage begins (or resumes) at `step` of `total`.
    StageStarted {
        /// `vae`, `text` or `diffusion`.
        stage: &'static str,
        /// Steps already done.
        step: usize,
        /// Steps in the stage.
        total: usize,
    },
    /// A stage was already finished by an earlier run and is skipped.
    StageSkipped {
        /// `vae`, `text` or `diffusion`.
        stage: &'static str,
    },
    /// One optimizer step finished.
    Step {
        /// `vae`, `text` or `diffusion`.
        stage: &'static str,
        /// Steps done (1-based).
        step: usize,
        /// Steps in the stage.
        total: usize,
        /// This step's loss.
        loss: f64,
        /// The gradient norm before clipping.
        grad_norm: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The safetensors file.
        path: PathBuf,
        /// Steps it holds.
        step: usize,
    },
    /// Sample images were written.
    Samples {
        /// The PNG grid.
        path: PathBuf,
    },
    /// The diffusers folder was (re)written.
    Exported {
        /// The folder.
        path: PathBuf,
    },
}

/// The seed of the random stream for `stage`'s step `step`.
pub(crate) fn step_seed(seed: u64, stage: u64, step: usize) -> u64 {
    let mut mix = crate::shapes::SplitMix64::new(
        seed ^ (stage << 56) ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    mix.next_u64()
}

/// Where a finished run's diffusers folder is: `<out_dir>/model`.
pub fn model_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("model")
}
