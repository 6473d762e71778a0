//! Noise schedules, timestep spacing, sigma schedules and the samplers.
//!
//! [`schedule`] holds what every sampler shares (betas, cumulative alphas, sigmas, spacing,
//! Karras sigmas); each sampler lives in its own file and mirrors one diffusers scheduler class:
//!
//! | [`SamplerKind`] | diffusers class | A1111 name |
//! |---|---|---|
//! | `ddim` | `DDIMScheduler` | DDIM |
//! | `pndm` / `plms` | `PNDMScheduler` with `skip_prk_steps=True` | PLMS |
//! | `euler` | `EulerDiscreteScheduler` | Euler |
//! | `euler_a` | `EulerAncestralDiscreteScheduler` | Euler a |
//! | `dpmpp_2m` | `DPMSolverMultistepScheduler` (`dpmsolver++`, order 2) | DPM++ 2M |
//!
//! A [`SchedulerConfig`] is a diffusers `scheduler_config.json`; as with diffusers'
//! `XScheduler.from_config(pipe.scheduler.config)`, the keys in the file win and the chosen
//! sampler's own defaults fill in the rest.
//!
//! The denoising loop drives a [`Sampler`] by step index:
//!
//! ```ignore
//! let mut sampler = build_sampler(kind, schedule, &config, steps, eta)?;
//! let mut latents = (rng.randn(&shape, &device)? * sampler.init_noise_sigma())?;
//! for i in 0..sampler.timesteps().len() {
//!     let input = sampler.scale_model_input(&latents, i)?;
//!     let eps = unet(&input, sampler.timesteps()[i])?;
//!     latents = sampler.step(&eps, i, &latents, &mut rng)?;
//! }
//! ```
//!
//! For img2img, call [`Sampler::start_at`] with [`img2img_start_step`] and loop from there.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::Deserialize;

use crate::rng::NoiseSource;
use crate::{Error, Result};

pub mod ddim;
pub mod dpmpp_2m;
pub mod euler;
pub mod euler_a;
pub mod pndm;
pub mod schedule;

pub use schedule::{BetaSchedule, NoiseSchedule, TimestepSpacing};

/// The samplers this library implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// DDIM (with `eta` for stochastic sampling).
    Ddim,
    /// PNDM's pseudo linear multistep method (PLMS), as diffusers' `PNDMScheduler` runs it with
    /// `skip_prk_steps=True`.
    Pndm,
    /// Euler's method on the probability-flow ODE (k-diffusion's `sample_euler`).
    Euler,
    /// Euler ancestral: Euler steps plus fresh noise each step.
    EulerA,
    /// DPM-Solver++ (2M): second-order multistep on the data prediction.
    DpmPp2M,
}

impl SamplerKind {
    /// Every sampler, in display order.
    pub const ALL: [SamplerKind; 5] = [
        SamplerKind::Euler,
        SamplerKind::EulerA,
        SamplerKind::DpmPp2M,
        SamplerKind::Ddim,
        SamplerKind::Pndm,
    ];

    /// The name used on the command line and in requests ("euler_a", ...).
    pub fn name(&self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Pndm => "pndm",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerA => "euler_a",
            SamplerKind::DpmPp2M => "dpmpp_2m",
        }
    }

    /// The name AUTOMATIC1111's web UI shows (and writes into PNG infotext).
    pub fn a1111_name(&self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Pndm => "PLMS",
            SamplerKind::Euler => "Euler",
            SamplerKind::EulerA => "Euler a",
            SamplerKind::DpmPp2M => "DPM++ 2M",
        }
    }

    /// The diffusers scheduler class this sampler mirrors.
    pub fn diffusers_class(&self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Pndm => "PNDMScheduler",
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerA => "EulerAncestralDiscreteScheduler",
            SamplerKind::DpmPp2M => "DPMSolverMultistepScheduler",
        }
    }

    /// Whether the sampler can run on Karras sigmas.
    pub fn supports_karras(&self) -> bool {
        matches!(
            self,
            SamplerKind::Euler | SamplerKind::EulerA | SamplerKind::DpmPp2M
        )
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;
    /// Accepts our names, "plms" for PNDM, and A1111's display names.
    fn from_str(s: &str) -> Result<Self> {
        let kind = match s.trim() {
            "ddim" | "DDIM" => SamplerKind::Ddim,
            "pndm" | "plms" | "PLMS" => SamplerKind::Pndm,
            "euler" | "Euler" => SamplerKind::Euler,
            "euler_a" | "Euler a" => SamplerKind::EulerA,
            "dpmpp_2m" | "DPM++ 2M" => SamplerKind::DpmPp2M,
            other => {
                return Err(Error::Unsupported {
                    what: "sampler",
                    value: other.to_string(),
                    valid: vec![
                        "ddim".into(),
                        "pndm".into(),
                        "plms".into(),
                        "euler".into(),
                        "euler_a".into(),
                        "dpmpp_2m".into(),
                    ],
                })
            }
        };
        Ok(kind)
    }
}

/// Which sigmas the sampler walks through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SigmaSchedule {
    /// The sampler's own schedule from the config (Karras only if the config asks for it).
    #[default]
    Default,
    /// Karras et al. (2022) sigmas (diffusers' `use_karras_sigmas=True`).
    Karras,
}

impl SigmaSchedule {
    /// The name used on the command line ("default", "karras").
    pub fn name(&self) -> &'static str {
        match self {
            SigmaSchedule::Default => "default",
            SigmaSchedule::Karras => "karras",
        }
    }

    /// The name A1111 shows ("Automatic", "Karras").
    pub fn a1111_name(&self) -> &'static str {
        match self {
            SigmaSchedule::Default => "Automatic",
            SigmaSchedule::Karras => "Karras",
        }
    }
}

impl std::fmt::Display for SigmaSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SigmaSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "default" | "Automatic" | "automatic" => Ok(SigmaSchedule::Default),
            "karras" | "Karras" => Ok(SigmaSchedule::Karras),
            other => Err(Error::Unsupported {
                what: "sigma schedule",
                value: other.to_string(),
                valid: vec!["default".into(), "karras".into()],
            }),
        }
    }
}

/// What the model predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise ε (SD 1.x, SD 2.x base, SDXL).
    Epsilon,
    /// The velocity v = α ε − σ x₀ (SD 2.x 768-v).
    VPrediction,
    /// The clean sample x₀.
    Sample,
}

impl std::str::FromStr for PredictionType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" => Ok(Self::Sample),
            other => Err(Error::Unsupported {
                what: "prediction type",
                value: other.to_string(),
                valid: vec!["epsilon".into(), "v_prediction".into(), "sample".into()],
            }),
        }
    }
}

/// A diffusers `scheduler_config.json`. Every key is optional: a missing key takes the default
/// of the sampler it is used for (see [`SchedulerConfig::resolve`]); unknown keys are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    /// The scheduler class the file was written for (informative only).
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Training timesteps T (1000 for SD).
    pub num_train_timesteps: Option<usize>,
    /// First beta of the training schedule.
    pub beta_start: Option<f64>,
    /// Last beta of the training schedule.
    pub beta_end: Option<f64>,
    /// "linear", "scaled_linear" or "squaredcos_cap_v2".
    pub beta_schedule: Option<String>,
    /// Explicit betas, overriding the three keys above.
    pub trained_betas: Option<Vec<f64>>,
    /// "epsilon", "v_prediction" or "sample".
    pub prediction_type: Option<String>,
    /// "leading", "trailing" or "linspace".
    pub timestep_spacing: Option<String>,
    /// Added to "leading" timesteps.
    pub steps_offset: Option<usize>,
    /// DDIM/PNDM: whether the step after the last uses ᾱ = 1 (else ᾱ₀).
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: clamp the predicted x₀ to `clip_sample_range`.
    pub clip_sample: Option<bool>,
    /// DDIM: the clamp bound.
    pub clip_sample_range: Option<f64>,
    /// PNDM: skip the Runge-Kutta warm-up (PLMS); this library always runs PLMS.
    pub skip_prk_steps: Option<bool>,
    /// Use Karras sigmas (Euler, DPM-Solver).
    pub use_karras_sigmas: Option<bool>,
    /// Euler: lower bound for Karras sigmas (default: the schedule's smallest).
    pub sigma_min: Option<f64>,
    /// Euler: upper bound for Karras sigmas (default: the schedule's largest).
    pub sigma_max: Option<f64>,
    /// Euler, DPM-Solver: "zero" or "sigma_min" for the sigma after the last step.
    pub final_sigmas_type: Option<String>,
    /// Euler: "linear" sigma interpolation (the only one supported).
    pub interpolation_type: Option<String>,
    /// DPM-Solver: first-order final steps for short schedules.
    pub lower_order_final: Option<bool>,
    /// DPM-Solver: always a first-order final step.
    pub euler_at_final: Option<bool>,
    /// DPM-Solver: "midpoint" (default) or "heun".
    pub solver_type: Option<String>,
    /// Dynamic thresholding (not supported when true).
    pub thresholding: Option<bool>,
    /// Zero terminal SNR rescaling (not supported when true).
    pub rescale_betas_zero_snr: Option<bool>,
    /// Euler: "discrete" timesteps (the only one supported).
    pub timestep_type: Option<String>,
    /// Exponential sigmas (not supported when true).
    pub use_exponential_sigmas: Option<bool>,
    /// Beta sigmas (not supported when true).
    pub use_beta_sigmas: Option<bool>,
}

impl SchedulerConfig {
    /// Stable Diffusion 1.5's `scheduler/scheduler_config.json` (PNDM, scaled linear betas).
    pub fn sd15() -> Self {
        Self {
            class_name: Some("PNDMScheduler".into()),
            num_train_timesteps: Some(1000),
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some("scaled_linear".into()),
            steps_offset: Some(1),
            skip_prk_steps: Some(true),
            set_alpha_to_one: Some(false),
            clip_sample: Some(false),
            ..Self::default()
        }
    }

    /// Stable Diffusion 2.1 (768-v)'s scheduler config: SD 1.5's with v-prediction, DDIM class.
    pub fn sd21_v() -> Self {
        Self {
            class_name: Some("DDIMScheduler".into()),
            prediction_type: Some("v_prediction".into()),
            ..Self::sd15()
        }
    }

    /// Parses a config from JSON text; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::config(path, e.to_string()))
    }

    /// Reads a `scheduler_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// The concrete settings for `kind`: the file's keys, the class defaults for the rest.
    pub fn resolve(&self, kind: SamplerKind) -> Result<ResolvedConfig> {
        let bad = |msg: String| Error::config(PathBuf::new(), msg);
        if self.thresholding == Some(true) {
            return Err(bad("thresholding=true is not supported".into()));
        }
        if self.rescale_betas_zero_snr == Some(true) {
            return Err(bad("rescale_betas_zero_snr=true is not supported".into()));
        }
        if self.use_exponential_sigmas == Some(true) || self.use_beta_sigmas == Some(true) {
            return Err(bad(
                "use_exponential_sigmas / use_beta_sigmas are not supported".into(),
            ));
        }
        if let Some(t) = self.interpolation_type.as_deref() {
            if t != "linear" {
                return Err(bad(format!("interpolation_type `{t}` is not supported")));
            }
        }
        if let Some(t) = self.timestep_type.as_deref() {
            if t != "discrete" {
                return Err(bad(format!("timestep_type `{t}` is not supported")));
            }
        }
        let (default_spacing, ddim_like) = match kind {
            SamplerKind::Ddim | SamplerKind::Pndm => (TimestepSpacing::Leading, true),
            _ => (TimestepSpacing::Linspace, false),
        };
        let final_sigma_min = match self.final_sigmas_type.as_deref() {
            None | Some("zero") => false,
            Some("sigma_min") => true,
            Some(other) => {
                return Err(Error::Unsupported {
                    what: "final_sigmas_type",
                    value: other.to_string(),
                    valid: vec!["zero".into(), "sigma_min".into()],
                })
            }
        };
        let heun = match self.solver_type.as_deref() {
            None | Some("midpoint") => false,
            Some("heun") => true,
            Some(other) => {
                return Err(Error::Unsupported {
                    what: "solver_type",
                    value: other.to_string(),
                    valid: vec!["midpoint".into(), "heun".into()],
                })
            }
        };
        Ok(ResolvedConfig {
            num_train_timesteps: self.num_train_timesteps.unwrap_or(1000),
            beta_start: self.beta_start.unwrap_or(0.0001),
            beta_end: self.beta_end.unwrap_or(0.02),
            beta_schedule: self.beta_schedule.as_deref().unwrap_or("linear").parse()?,
            trained_betas: self.trained_betas.clone(),
            prediction_type: self
                .prediction_type
                .as_deref()
                .unwrap_or("epsilon")
                .parse()?,
            timestep_spacing: match self.timestep_spacing.as_deref() {
                Some(s) => s.parse()?,
                None => default_spacing,
            },
            steps_offset: self.steps_offset.unwrap_or(0),
            // DDIM defaults to true, PNDM to false.
            set_alpha_to_one: self.set_alpha_to_one.unwrap_or(kind == SamplerKind::Ddim),
            clip_sample: self.clip_sample.unwrap_or(kind == SamplerKind::Ddim),
            clip_sample_range: self.clip_sample_range.unwrap_or(1.0),
            use_karras_sigmas: self.use_karras_sigmas.unwrap_or(false) && !ddim_like,
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            final_sigma_min,
            lower_order_final: self.lower_order_final.unwrap_or(true),
            euler_at_final: self.euler_at_final.unwrap_or(false),
            heun,
        })
    }
}

/// A [`SchedulerConfig`] with every value decided for one sampler.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// Training timesteps T.
    pub num_train_timesteps: usize,
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// Beta spacing.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, if given.
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts.
    pub prediction_type: PredictionType,
    /// Timestep spacing.
    pub timestep_spacing: TimestepSpacing,
    /// Offset for "leading" spacing.
    pub steps_offset: usize,
    /// DDIM/PNDM: ᾱ after the last step is 1 (else ᾱ₀).
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the predicted x₀.
    pub clip_sample: bool,
    /// DDIM: clamp bound.
    pub clip_sample_range: f64,
    /// Karras sigmas.
    pub use_karras_sigmas: bool,
    /// Karras lower bound override.
    pub sigma_min: Option<f64>,
    /// Karras upper bound override.
    pub sigma_max: Option<f64>,
    /// The sigma after the last step is σ_min (else 0).
    pub final_sigma_min: bool,
    /// DPM-Solver: lower-order final steps for short schedules.
    pub lower_order_final: bool,
    /// DPM-Solver: first-order final step.
    pub euler_at_final: bool,
    /// DPM-Solver: Heun-type second-order update (else midpoint).
    pub heun: bool,
}

impl ResolvedConfig {
    /// The training noise schedule these settings describe.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(
            self.beta_schedule,
            self.beta_start,
            self.beta_end,
            self.num_train_timesteps,
            self.trained_betas.as_deref(),
        )
    }
}

/// A sampler set up for one run of `steps` steps.
pub trait Sampler: Send {
    /// The model timesteps, in order, as diffusers' `scheduler.timesteps` (PNDM repeats one).
    fn timesteps(&self) -> &[f64];

    /// The sigmas of a sigma-based sampler (one more than the timesteps), else `None`.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }

    /// The standard deviation of the initial noise (multiply fresh N(0, 1) latents by it).
    fn init_noise_sigma(&self) -> f64;

    /// Scales the latents before they go into the model at step `step`.
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;

    /// One denoising step: maps the model output at `timesteps()[step]` and the current sample
    /// to the next sample, drawing any noise from `rng`.
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor>;

    /// Noises a clean sample to the level of `timesteps()[step]` (img2img's starting point).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;

    /// Prepares the sampler to start at step `step` instead of 0 (img2img): multistep
    /// histories and counters start fresh there, as in diffusers.
    fn start_at(&mut self, step: usize) -> Result<()>;

    /// Which sampler this is.
    fn kind(&self) -> SamplerKind;
}

/// Builds a sampler for `steps` steps. `eta` is DDIM's stochasticity (0 = deterministic) and is
/// ignored by the other samplers.
pub fn build_sampler(
    kind: SamplerKind,
    schedule: SigmaSchedule,
    config: &SchedulerConfig,
    steps: usize,
    eta: f64,
) -> Result<Box<dyn Sampler>> {
    let mut cfg = config.resolve(kind)?;
    if steps == 0 {
        return Err(Error::invalid("steps", "must be at least 1"));
    }
    if steps > cfg.num_train_timesteps {
        return Err(Error::invalid(
            "steps",
            format!(
                "{steps} is more than the model's {} training timesteps",
                cfg.num_train_timesteps
            ),
        ));
    }
    if !eta.is_finite() || eta < 0.0 {
        return Err(Error::invalid("eta", format!("must be >= 0, got {eta}")));
    }
    if schedule == SigmaSchedule::Karras {
        if !kind.supports_karras() {
            return Err(Error::Unsupported {
                what: "sigma schedule for this sampler",
                value: format!("karras with {}", kind.name()),
                valid: SamplerKind::ALL
                    .iter()
                    .filter(|k| k.supports_karras())
                    .map(|k| k.name().to_string())
                    .collect(),
            });
        }
        cfg.use_karras_sigmas = true;
    } else if kind == SamplerKind::EulerA {
        // diffusers' EulerAncestral has no `use_karras_sigmas` and ignores the key in a config.
        cfg.use_karras_sigmas = false;
    }
    Ok(match kind {
        SamplerKind::Ddim => Box::new(ddim::Ddim::new(&cfg, steps, eta)?),
        SamplerKind::Pndm => Box::new(pndm::Plms::new(&cfg, steps)?),
        SamplerKind::Euler => Box::new(euler::Euler::new(&cfg, steps)?),
        SamplerKind::EulerA => Box::new(euler_a::EulerAncestral::new(&cfg, steps)?),
        SamplerKind::DpmPp2M => Box::new(dpmpp_2m::DpmPp2M::new(&cfg, steps)?),
    })
}

/// The first step of an img2img run with `strength` in [0, 1], as diffusers'
/// `StableDiffusionImg2ImgPipeline.get_timesteps` picks it: the last
/// `min(int(steps * strength), steps)` steps are run.
pub fn img2img_start_step(steps: usize, strength: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::invalid(
            "strength",
            format!("must be in [0, 1], got {strength}"),
        ));
    }
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    Ok(steps - init_timestep)
}

/// Small tensor helpers that keep diffusers' f32 rounding.
pub(crate) mod ops {
    use candle_core::Tensor;

    use crate::Result;

    /// `t * c` in f32.
    pub fn mul(t: &Tensor, c: f32) -> Result<Tensor> {
        Ok(t.affine(f64::from(c), 0.0)?)
    }

    /// `t / c` in f32 (a true division, as torch divides by a 0-d tensor).
    pub fn div(t: &Tensor, c: f32) -> Result<Tensor> {
        let c = Tensor::new(c, t.device())?.to_dtype(t.dtype())?;
        Ok(t.broadcast_div(&c)?)
    }

    /// `a + b`.
    pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    /// `a - b`.
    pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a - b)?)
    }
}

/// Checks that `step` indexes `len` timesteps.
pub(crate) fn check_step(step: usize, len: usize) -> Result<()> {
    if step >= len {
        return Err(Error::invalid(
            "step",
            format!("step index {step} out of range for {len} timesteps"),
        ));
    }
    Ok(())
}
