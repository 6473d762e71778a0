//! Noise schedules, timestep spacing, sigma schedules and the samplers.
//!
//! [`schedule`] holds what every sampler shares (betas, cumulative alphas, sigmas, spacing,
//! Karras sigmas); each sampler lives in its own file and mirrors one diffusers scheduler class:
//!
//! | [`SamplerKind`] | diffusers class | A1111 name |
//! |---|---|---|
//! | `ddim` | `DDIMScheduler` | DDIM (A1111's own: `a1111_ddim`) |
//! | `ddim_cfgpp` | — | DDIM CFG++ (A1111's own: `a1111_ddim_cfgpp`) |
//! | `pndm` / `plms` | `PNDMScheduler` with `skip_prk_steps=True` | PLMS (A1111's own: `a1111_ddim`) |
//! | `euler` | `EulerDiscreteScheduler` | Euler |
//! | `euler_a` | `EulerAncestralDiscreteScheduler` | Euler a |
//! | `dpmpp_2m` | `DPMSolverMultistepScheduler` (`dpmsolver++`, order 2) | DPM++ 2M |
//! | `dpmpp_2m_sde` | `DPMSolverMultistepScheduler` (`sde-dpmsolver++`) | DPM++ 2M SDE |
//! | `heun` | `HeunDiscreteScheduler` | Heun |
//! | `lms` | `LMSDiscreteScheduler` | LMS |
//! | `dpm2` / `dpm2_a` | `KDPM2DiscreteScheduler` / `KDPM2AncestralDiscreteScheduler` | DPM2 (a) |
//! | `ddpm` | `DDPMScheduler` | — |
//! | `lcm` | `LCMScheduler` | LCM (A1111's own: `k_lcm`) |
//! | `tcd` | `TCDScheduler` | — |
//! | `unipc` | `UniPCMultistepScheduler` (`bh2`, order 2) | UniPC (A1111's own: `a1111_unipc`) |
//! | `deis` | `DEISMultistepScheduler` (order 2) | — |
//! | `dpmpp_2s` | `DPMSolverSinglestepScheduler` (`dpmsolver++`, order 2) | — |
//! | `dpmpp_sde` | `DPMSolverSDEScheduler` (i.i.d. noise for the Brownian tree) | DPM++ SDE |
//!
//! The k-diffusion flavor ([`SamplerFlavor::KDiffusion`], what A1111's names select) runs
//! k-diffusion's `sample_*` loops on a sigma list ([`kdiff`], `k_*.rs`), and for DDIM, DDIM
//! CFG++, PLMS and UniPC A1111's own timestep samplers ([`a1111_timesteps`]). Each is a function
//! `sample(denoiser, x, sigmas, noise)` around a [`Denoiser`], which owns the model (guidance,
//! prompt schedule, inpainting, progress hooks) and wraps it as k-diffusion expects.
//!
//! A [`SchedulerConfig`] is a diffusers `scheduler_config.json`; as with diffusers'
//! `XScheduler.from_config(pipe.scheduler.config)`, the keys in the file win and the chosen
//! sampler's own defaults fill in the rest.
//!
//! [`build_sampler_with`] reads the sampler's [`catalog`] row and returns a [`SamplerPlan`]: the
//! pipeline sets where the run starts (img2img) and stops (a refiner handoff), then runs it:
//!
//! ```ignore
//! let mut plan = build_sampler_with(kind, schedule, &config, steps, &options)?;
//! let latents = (rng.randn(&shape, &device)? * plan.init_noise_sigma())?;
//! let latents = plan.run(&mut model, latents, &mut rng, None)?;
//! ```
//!
//! The diffusers flavor keeps diffusers' scheduler interface ([`Sampler`]: `timesteps`,
//! `scale_model_input`, `step`), which the plan drives through one adapter loop.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::Deserialize;

use crate::rng::NoiseSource;
use crate::{Error, Result};

pub mod a1111_ddim;
pub mod a1111_ddim_cfgpp;
pub mod a1111_timesteps;
pub mod a1111_unipc;
mod catalog;
pub mod ddim;
pub mod ddpm;
pub mod deis;
pub mod denoiser;
pub mod dpm2;
pub mod dpmpp_2m;
pub mod dpmpp_2s;
pub mod dpmpp_sde;
pub mod euler;
pub mod euler_a;
pub mod heun;
pub mod k_dpm_solver;
pub mod k_dpmpp;
pub mod k_euler;
pub mod k_heun;
pub mod k_lcm;
pub mod k_lms;
pub mod k_restart;
pub mod kdiff;
pub mod lcm;
pub mod lms;
mod plan;
pub mod pndm;
pub mod schedule;
pub mod sigmas;
pub mod tcd;
pub mod unipc;
mod vp;

pub use catalog::{
    DiffusersImpl, DiffusersSettings, KDiffusionImpl, KRun, SamplerInfo, SamplerKind, CATALOG,
};
pub use denoiser::{Blend, Denoiser, GuidedPrediction, Model, StepInfo};
pub use kdiff::KSettings;
pub use plan::{build_sampler, build_sampler_with, SamplerPlan};
pub use schedule::{BetaSchedule, NoiseSchedule, TimestepSpacing};

/// Which reference a sampler reproduces: diffusers' scheduler class or k-diffusion's
/// `sample_*` function as AUTOMATIC1111 drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerFlavor {
    /// diffusers' scheduler class on the model's own timestep spacing.
    Diffusers,
    /// k-diffusion's sampler on a sigma schedule (AUTOMATIC1111's behaviour).
    KDiffusion,
}

impl SamplerFlavor {
    /// The name used on the command line and in infotext.
    pub fn name(&self) -> &'static str {
        match self {
            SamplerFlavor::Diffusers => "diffusers",
            SamplerFlavor::KDiffusion => "k-diffusion",
        }
    }
}

impl std::str::FromStr for SamplerFlavor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "diffusers" => Ok(SamplerFlavor::Diffusers),
            "k-diffusion" | "k_diffusion" | "kdiffusion" | "a1111" => Ok(SamplerFlavor::KDiffusion),
            _ => Err(Error::Unsupported {
                what: "sampler flavor",
                value: s.to_string(),
                valid: vec!["diffusers".into(), "k-diffusion".into()],
            }),
        }
    }
}

impl SamplerKind {
    /// Whether A1111 marks this sampler second-order (two model evaluations per step): its
    /// prompt schedules then count twice the steps.
    pub fn evaluates_twice_per_step(&self) -> bool {
        self.info().evaluates_twice_per_step
    }

    /// The name used on the command line and in requests ("euler_a", ...).
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// The name AUTOMATIC1111's web UI shows (and writes into PNG infotext).
    pub fn a1111_name(&self) -> &'static str {
        self.info().a1111_name
    }

    /// A1111's old alias (`k_dpmpp_2m`, ...), which also selects the k-diffusion flavor.
    pub fn a1111_alias(&self) -> Option<&'static str> {
        self.info().a1111_alias
    }

    /// One line saying what the sampler does (for `sd samplers`).
    pub fn description(&self) -> &'static str {
        self.info().description
    }

    /// The diffusers scheduler class this sampler mirrors in the diffusers flavor, if any.
    pub fn diffusers_class(&self) -> Option<&'static str> {
        self.info().diffusers.map(|d| d.class)
    }

    /// Whether the diffusers flavor runs this sampler on Karras sigmas (the class reads
    /// `use_karras_sigmas`; Euler a walks Euler's Karras sigmas).
    pub fn diffusers_supports_karras(&self) -> bool {
        self.diffusers_class().is_some() && !self.walks_own_timesteps()
    }

    /// Whether (and how) the diffusers class rescales the betas to zero terminal SNR
    /// (`rescale_betas_zero_snr`); `None` for classes without the option.
    pub fn zero_snr(&self) -> Option<ZeroSnr> {
        self.info().zero_snr
    }

    /// Whether the sampler walks its own discrete timesteps and takes no sigma schedule
    /// (DDIM, PNDM, DDPM, LCM, TCD).
    pub fn walks_own_timesteps(&self) -> bool {
        self.info().walks_own_timesteps
    }

    /// Whether the k-diffusion flavor runs A1111's own timestep sampler (DDIM, DDIM CFG++,
    /// PLMS, UniPC), which walks integer timesteps and takes no sigma schedule.
    pub fn a1111_timesteps(&self) -> bool {
        matches!(
            self.info().kdiffusion,
            Some(KDiffusionImpl {
                run: KRun::Timesteps { .. },
                ..
            })
        )
    }

    /// The k-diffusion function (or A1111 sampler) this sampler mirrors in the k-diffusion
    /// flavor, if any.
    pub fn kdiffusion_function(&self) -> Option<&'static str> {
        self.info().kdiffusion.map(|k| k.function)
    }

    /// Whether the diffusers flavor can run on Karras sigmas (`use_karras_sigmas`).
    pub fn supports_karras(&self) -> bool {
        self.diffusers_supports_karras()
            || (self.kdiffusion_function().is_some() && !self.a1111_timesteps())
    }

    /// The schedule A1111's "Automatic" picks for this sampler (k-diffusion flavor).
    pub fn a1111_default_schedule(&self) -> SigmaSchedule {
        self.info().a1111_default_schedule
    }

    /// Whether A1111 drops the next-to-last sigma for this sampler (one extra step is planned,
    /// then σ_{n−1} removed, so the last step goes straight from σ_{n−2} to 0).
    pub fn discards_next_to_last_sigma(&self) -> bool {
        self.info().discards_next_to_last_sigma
    }

    /// Whether every model call needs the unconditional prediction, whatever the CFG scale
    /// (CFG++ samplers).
    pub fn needs_uncond(&self) -> bool {
        self.info().needs_uncond
    }

    /// Whether the sampler's eta is DDIM's (A1111's "Eta DDIM", default 0: the request's
    /// `eta`) rather than an ancestral sampler's (default 1).
    pub fn uses_ddim_eta(&self) -> bool {
        matches!(self, SamplerKind::Ddim | SamplerKind::DdimCfgPp)
    }

    /// Every name [`SamplerKind::from_str`] accepts for this sampler.
    fn accepted_names(&self) -> Vec<&'static str> {
        let mut names = vec![self.name(), self.a1111_name()];
        names.extend(self.a1111_alias());
        names.extend(self.info().other_names);
        names
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a sampler name: ours (`dpmpp_2m`, flavor left open), or A1111's display name or
/// alias (`DPM++ 2M`, `k_dpmpp_2m`), which asks for the k-diffusion flavor (A1111's sampling).
pub fn parse_sampler_name(s: &str) -> Result<(SamplerKind, Option<SamplerFlavor>)> {
    let s = s.trim();
    for kind in SamplerKind::ALL {
        if kind.name() == s || kind.info().other_names.contains(&s) {
            return Ok((kind, None));
        }
    }
    for kind in SamplerKind::ALL {
        let is_a1111 = kind.a1111_name().eq_ignore_ascii_case(s) || kind.a1111_alias() == Some(s);
        if is_a1111 {
            let flavor = kind
                .kdiffusion_function()
                .map(|_| SamplerFlavor::KDiffusion);
            return Ok((kind, flavor));
        }
    }
    Err(Error::Unsupported {
        what: "sampler",
        value: s.to_string(),
        valid: SamplerKind::ALL
            .iter()
            .flat_map(|k| k.accepted_names())
            .map(String::from)
            .collect(),
    })
}

/// Parses a sampler name that may end in a schedule, as A1111 1.6-1.8 wrote them and its API
/// still takes them ("DPM++ 2M Karras", "DPM++ 2M SDE Exponential", "Euler a SGM Uniform"):
/// the sampler and flavor as [`parse_sampler_name`] reads them, and the schedule if one was
/// named.
pub fn parse_sampler_and_schedule(
    s: &str,
) -> Result<(SamplerKind, Option<SamplerFlavor>, Option<SigmaSchedule>)> {
    let s = s.trim();
    let whole = parse_sampler_name(s);
    if let Ok((kind, flavor)) = whole {
        return Ok((kind, flavor, None));
    }
    for (at, _) in s.rmatch_indices(' ') {
        let Ok((kind, flavor)) = parse_sampler_name(&s[..at]) else {
            continue;
        };
        if let Ok(schedule) = s[at + 1..].parse::<SigmaSchedule>() {
            return Ok((kind, flavor, Some(schedule)));
        }
    }
    whole.map(|(kind, flavor)| (kind, flavor, None))
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;
    /// Accepts our names, "plms" for PNDM, A1111's display names and aliases, also with a
    /// schedule at the end (which [`parse_sampler_and_schedule`] returns; this drops it).
    fn from_str(s: &str) -> Result<Self> {
        parse_sampler_and_schedule(s).map(|(kind, _, _)| kind)
    }
}

/// Which sigmas the sampler walks through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SigmaSchedule {
    /// The sampler's own schedule: the diffusers class's timestep spacing from the config, or
    /// for the k-diffusion flavor A1111's "Automatic" (the sampler's preferred schedule).
    #[default]
    Default,
    /// k-diffusion's default: timesteps evenly spaced over the training range (A1111 "Uniform").
    Discrete,
    /// Karras et al. (2022) sigmas (diffusers' `use_karras_sigmas=True`).
    Karras,
    /// Evenly spaced in log σ.
    Exponential,
    /// SGM's uniform timesteps (the last, lowest, dropped).
    SgmUniform,
    /// Every (T/n)-th training sigma from the top.
    Simple,
    /// DDIM's uniform timesteps as sigmas.
    DdimUniform,
    /// Quantiles of Beta(0.6, 0.6) between σ_max and σ_min.
    Beta,
    /// Evenly spaced in arctan σ, ending at σ_min.
    KlOptimal,
    /// NVIDIA's published Align Your Steps tables, log-linearly interpolated.
    AlignYourSteps,
    /// A1111's "Normal": `n` timesteps evenly spaced between those of σ_max and σ_min.
    Normal,
    /// k-diffusion's polyexponential ramp with ρ = 1 (A1111's "Polyexponential").
    Polyexponential,
}

impl SigmaSchedule {
    /// Every schedule, in display order.
    pub const ALL: [SigmaSchedule; 12] = [
        SigmaSchedule::Default,
        SigmaSchedule::Discrete,
        SigmaSchedule::Karras,
        SigmaSchedule::Exponential,
        SigmaSchedule::SgmUniform,
        SigmaSchedule::Simple,
        SigmaSchedule::DdimUniform,
        SigmaSchedule::Beta,
        SigmaSchedule::KlOptimal,
        SigmaSchedule::AlignYourSteps,
        SigmaSchedule::Normal,
        SigmaSchedule::Polyexponential,
    ];

    /// The name used on the command line ("default", "karras", ...).
    pub fn name(&self) -> &'static str {
        match self {
            SigmaSchedule::Default => "default",
            SigmaSchedule::Discrete => "discrete",
            SigmaSchedule::Karras => "karras",
            SigmaSchedule::Exponential => "exponential",
            SigmaSchedule::SgmUniform => "sgm_uniform",
            SigmaSchedule::Simple => "simple",
            SigmaSchedule::DdimUniform => "ddim_uniform",
            SigmaSchedule::Beta => "beta",
            SigmaSchedule::KlOptimal => "kl_optimal",
            SigmaSchedule::AlignYourSteps => "align_your_steps",
            SigmaSchedule::Normal => "normal",
            SigmaSchedule::Polyexponential => "polyexponential",
        }
    }

    /// The name A1111 shows ("Automatic", "Karras", ...).
    pub fn a1111_name(&self) -> &'static str {
        match self {
            SigmaSchedule::Default => "Automatic",
            SigmaSchedule::Discrete => "Uniform",
            SigmaSchedule::Karras => "Karras",
            SigmaSchedule::Exponential => "Exponential",
            SigmaSchedule::SgmUniform => "SGM Uniform",
            SigmaSchedule::Simple => "Simple",
            SigmaSchedule::DdimUniform => "DDIM",
            SigmaSchedule::Beta => "Beta",
            SigmaSchedule::KlOptimal => "KL Optimal",
            SigmaSchedule::AlignYourSteps => "Align Your Steps",
            SigmaSchedule::Normal => "Normal",
            SigmaSchedule::Polyexponential => "Polyexponential",
        }
    }

    /// One line saying what the schedule is (for `sd samplers`).
    pub fn description(&self) -> &'static str {
        match self {
            SigmaSchedule::Default => {
                "the sampler's own: diffusers' spacing from the model config, or A1111's Automatic"
            }
            SigmaSchedule::Discrete => {
                "k-diffusion's default: timesteps evenly spaced, T-1 down to 0"
            }
            SigmaSchedule::Karras => "Karras et al. 2022: evenly spaced in sigma^(1/7)",
            SigmaSchedule::Exponential => "evenly spaced in log sigma",
            SigmaSchedule::SgmUniform => "SGM uniform: n+1 timesteps evenly spaced, last dropped",
            SigmaSchedule::Simple => "every (T/n)-th training sigma from the top",
            SigmaSchedule::DdimUniform => "DDIM's uniform timesteps as sigmas",
            SigmaSchedule::Beta => "Beta(0.6, 0.6) quantiles between sigma_max and sigma_min",
            SigmaSchedule::KlOptimal => "evenly spaced in arctan(sigma), ending at sigma_min",
            SigmaSchedule::AlignYourSteps => {
                "NVIDIA's Align Your Steps tables (SD 1.5 / SDXL), log-linear interpolation"
            }
            SigmaSchedule::Normal => "n timesteps evenly spaced from sigma_max's to sigma_min's",
            SigmaSchedule::Polyexponential => {
                "polyexponential ramp, rho 1: evenly spaced in log sigma"
            }
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
    /// Accepts our names and A1111's labels ("Automatic", "SGM Uniform", ...), any case.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let extra = match s.to_ascii_lowercase().as_str() {
            "automatic" => Some(SigmaSchedule::Default),
            "uniform" => Some(SigmaSchedule::Discrete),
            "sgmuniform" => Some(SigmaSchedule::SgmUniform),
            "ddim" => Some(SigmaSchedule::DdimUniform),
            _ => None,
        };
        if let Some(schedule) = extra {
            return Ok(schedule);
        }
        SigmaSchedule::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s || k.a1111_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::Unsupported {
                what: "sigma schedule",
                value: s.to_string(),
                valid: SigmaSchedule::ALL
                    .iter()
                    .map(|k| k.name().to_string())
                    .collect(),
            })
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
    /// DDPM: "fixed_small" (default) or "fixed_large" noise variance.
    pub variance_type: Option<String>,
    /// LCM, TCD: the distillation's step grid (default 50).
    pub original_inference_steps: Option<usize>,
    /// LCM: the timestep scale of the boundary condition (default 10).
    pub timestep_scaling: Option<f64>,
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
        let rescale_zero_snr = self.rescale_betas_zero_snr == Some(true);
        if rescale_zero_snr && kind.zero_snr().is_none() {
            return Err(Error::invalid(
                "rescale_betas_zero_snr",
                format!(
                    "diffusers' {} has no zero terminal SNR rescaling; samplers that have it: {}",
                    kind.diffusers_class().unwrap_or(kind.name()),
                    SamplerKind::ALL
                        .iter()
                        .filter(|k| k.zero_snr().is_some())
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
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
        let ddim_like = kind.walks_own_timesteps();
        let default_spacing = if ddim_like {
            TimestepSpacing::Leading
        } else {
            TimestepSpacing::Linspace
        };
        // LCM and TCD default to Stable Diffusion's betas, the others to DDPM's linear ones.
        let consistency = matches!(kind, SamplerKind::Lcm | SamplerKind::Tcd);
        let (default_beta_start, default_beta_end, default_betas) = if consistency {
            (0.00085, 0.012, "scaled_linear")
        } else {
            (0.0001, 0.02, "linear")
        };
        let ddpm_variance = match self.variance_type.as_deref() {
            None | Some("fixed_small") => ddpm::DdpmVariance::FixedSmall,
            Some("fixed_large") => ddpm::DdpmVariance::FixedLarge,
            Some(other) => {
                return Err(Error::Unsupported {
                    what: "variance_type",
                    value: other.to_string(),
                    valid: vec!["fixed_small".into(), "fixed_large".into()],
                })
            }
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
        let num_train_timesteps = self.num_train_timesteps.unwrap_or(1000);
        schedule::check_train_timesteps(num_train_timesteps)?;
        Ok(ResolvedConfig {
            num_train_timesteps,
            beta_start: self.beta_start.unwrap_or(default_beta_start),
            beta_end: self.beta_end.unwrap_or(default_beta_end),
            beta_schedule: self
                .beta_schedule
                .as_deref()
                .unwrap_or(default_betas)
                .parse()?,
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
            clip_sample: self
                .clip_sample
                .unwrap_or(matches!(kind, SamplerKind::Ddim | SamplerKind::Ddpm)),
            clip_sample_range: self.clip_sample_range.unwrap_or(1.0),
            use_karras_sigmas: self.use_karras_sigmas.unwrap_or(false) && !ddim_like,
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            final_sigma_min,
            lower_order_final: self.lower_order_final.unwrap_or(true),
            euler_at_final: self.euler_at_final.unwrap_or(false),
            heun,
            ddpm_variance,
            original_inference_steps: self.original_inference_steps.unwrap_or(50),
            timestep_scaling: self.timestep_scaling.unwrap_or(10.0),
            zero_snr: if rescale_zero_snr {
                kind.zero_snr()
            } else {
                None
            },
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
    /// DDPM: the noise variance.
    pub ddpm_variance: ddpm::DdpmVariance,
    /// LCM, TCD: the distillation's step grid.
    pub original_inference_steps: usize,
    /// LCM: the boundary condition's timestep scale.
    pub timestep_scaling: f64,
    /// Zero terminal SNR rescaling of the betas, if on.
    pub zero_snr: Option<ZeroSnr>,
}

/// How a sampler that rescales the betas to zero terminal SNR treats the last timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroSnr {
    /// ᾱ stays exactly 0 there (the ᾱ-based samplers: DDIM, DDPM, LCM, TCD).
    Exact,
    /// ᾱ is raised to 2⁻²⁴ there so the first sigma is finite (≈ 4096; the sigma-based
    /// samplers: Euler, Euler a, DPM-Solver, UniPC).
    Floored,
}

impl ResolvedConfig {
    /// The training noise schedule these settings describe.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        let schedule = NoiseSchedule::new(
            self.beta_schedule,
            self.beta_start,
            self.beta_end,
            self.num_train_timesteps,
            self.trained_betas.as_deref(),
        )?;
        Ok(match self.zero_snr {
            None => schedule,
            Some(mode) => {
                let mut rescaled = schedule.rescaled_zero_terminal_snr();
                if mode == ZeroSnr::Floored {
                    if let Some(last) = rescaled.alphas_cumprod.last_mut() {
                        *last = 2f32.powi(-24);
                    }
                }
                rescaled
            }
        })
    }
}

/// A diffusers scheduler class set up for one run of `steps` steps (the diffusers flavor;
/// [`SamplerPlan`] drives it).
pub trait Sampler: Send {
    /// The model timesteps, in order, as diffusers' `scheduler.timesteps` (PNDM repeats one).
    fn timesteps(&self) -> &[f64];

    /// The sigmas of a sigma-based sampler (one more than the timesteps), else `None`.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }

    /// The standard deviation of the initial noise (multiply fresh N(0, 1) latents by it):
    /// 1 unless the sampler works in sigmas (the ᾱ and VP samplers keep the default).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Scales the latents before they go into the model at step `step`: unchanged unless the
    /// sampler works in sigmas (which divide by √(σ² + 1)).
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps().len())?;
        Ok(sample.clone())
    }

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

    /// Forgets the multistep history and counters (none unless the sampler keeps some).
    fn reset(&mut self) {}

    /// Prepares the sampler to start at step `step` instead of 0 (img2img): multistep
    /// histories and counters start fresh there, as in diffusers.
    fn start_at(&mut self, step: usize) -> Result<()> {
        check_step(step, self.timesteps().len())?;
        self.reset();
        Ok(())
    }

    /// diffusers' `order`: how many model calls each step lists in [`Sampler::timesteps`].
    fn order(&self) -> usize {
        1
    }

    /// The index into [`Sampler::timesteps`] where an img2img run of `steps` steps at
    /// `strength` starts: diffusers' rule ([`img2img_start_step`]), in model calls (diffusers
    /// slices `timesteps[t_start * order:]`).
    fn img2img_start(&self, steps: usize, strength: f64) -> Result<usize> {
        Ok(img2img_start_step(steps, strength)? * self.order())
    }

    /// Which sampler this is.
    fn kind(&self) -> SamplerKind;
}

/// The options users tune beside the sampler and schedule. `Default` gives each sampler its
/// reference's defaults.
#[derive(
    Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default)]
pub struct SamplerOptions {
    /// Noise amount of stochastic samplers: DDIM's eta (default 0), the ancestral and SDE
    /// samplers' eta (default 1).
    pub eta: Option<f64>,
    /// Scale of the fresh noise (k-diffusion's `s_noise`, default 1).
    pub s_noise: Option<f64>,
    /// Karras's churn for Euler, Heun and DPM2 (default 0: none).
    pub s_churn: Option<f64>,
    /// Lowest sigma that is churned (default 0).
    pub s_tmin: Option<f64>,
    /// Highest sigma that is churned (default: infinity).
    pub s_tmax: Option<f64>,
    /// A custom sigma list (largest first), replacing the schedule.
    pub sigmas: Option<Vec<f64>>,
    /// Which reference to follow; `None` picks diffusers where the sampler has a diffusers
    /// class and the schedule is one it supports, else k-diffusion.
    pub flavor: Option<SamplerFlavor>,
    /// Use the SDXL Align Your Steps table instead of SD 1.5's.
    pub sdxl: bool,
    /// Rescale the betas to zero terminal SNR (diffusers' `rescale_betas_zero_snr`) with
    /// trailing timestep spacing, whatever the config says (for v-prediction models trained
    /// that way).
    pub rescale_zero_snr: bool,
}

impl SamplerOptions {
    /// The churn settings, with k-diffusion's defaults for what is not set.
    fn churn(&self) -> Result<kdiff::Churn> {
        let d = kdiff::Churn::default();
        let churn = kdiff::Churn {
            s_churn: self.s_churn.map_or(d.s_churn, |v| v as f32),
            s_tmin: self.s_tmin.map_or(d.s_tmin, |v| v as f32),
            s_tmax: self.s_tmax.map_or(d.s_tmax, |v| v as f32),
            s_noise: self.s_noise.map_or(d.s_noise, |v| v as f32),
        };
        for (what, v) in [
            ("s_churn", churn.s_churn),
            ("s_noise", churn.s_noise),
            ("s_tmin", churn.s_tmin),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid(
                    what,
                    format!("must be a finite number >= 0, got {v}"),
                ));
            }
        }
        if churn.s_tmax.is_nan() || churn.s_tmax < churn.s_tmin {
            return Err(Error::invalid(
                "s_tmax",
                format!("{} is below s_tmin {}", churn.s_tmax, churn.s_tmin),
            ));
        }
        Ok(churn)
    }

    /// The k-diffusion flavor of A1111's timestep samplers, which take no sigma schedule.
    fn a1111_timesteps_flavor(
        &self,
        kind: SamplerKind,
        schedule: SigmaSchedule,
        what: &str,
    ) -> Result<SamplerFlavor> {
        if self.sigmas.is_some() || schedule != SigmaSchedule::Default {
            return Err(Error::invalid(
                "sigma schedule",
                format!(
                    "{} in A1111's flavor (its \"{}\") walks its own integer timesteps, so {what} \
                     does not apply to it \
                     (A1111 ignores schedule types for its timestep samplers: DDIM, DDIM CFG++, \
                     PLMS, UniPC); drop the schedule, \
                     or use a sampler that takes one: {}",
                    kind.name(),
                    kind.a1111_name(),
                    SamplerKind::ALL
                        .iter()
                        .filter(|k| k.kdiffusion_function().is_some() && !k.a1111_timesteps())
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(SamplerFlavor::KDiffusion)
    }

    /// Which flavor runs `kind` on `schedule`; combinations that cannot run are explained.
    pub fn resolve_flavor(
        &self,
        kind: SamplerKind,
        schedule: SigmaSchedule,
    ) -> Result<SamplerFlavor> {
        let diffusers_schedule = self.sigmas.is_none()
            && (schedule == SigmaSchedule::Default
                || (schedule == SigmaSchedule::Karras && kind.diffusers_supports_karras()));
        let has_diffusers = kind.diffusers_class().is_some();
        let has_k = kind.kdiffusion_function().is_some();
        let what = if self.sigmas.is_some() {
            "--sigmas".to_string()
        } else {
            format!("the {} schedule", schedule.name())
        };
        match self.flavor {
            Some(SamplerFlavor::Diffusers) if !has_diffusers => Err(Error::invalid(
                "sampler flavor",
                format!(
                    "{} has no diffusers scheduler class; use the k-diffusion flavor",
                    kind.name()
                ),
            )),
            Some(SamplerFlavor::Diffusers) if !diffusers_schedule => Err(Error::invalid(
                "sigma schedule",
                format!(
                    "diffusers' {} cannot run {what}; the k-diffusion flavor can",
                    kind.diffusers_class().unwrap_or_default()
                ),
            )),
            Some(SamplerFlavor::KDiffusion) if !has_k => Err(Error::invalid(
                "sampler flavor",
                format!("{} exists only as a diffusers scheduler class", kind.name()),
            )),
            Some(SamplerFlavor::KDiffusion) if kind.a1111_timesteps() => {
                self.a1111_timesteps_flavor(kind, schedule, &what)
            }
            None if kind.a1111_timesteps() && !(has_diffusers && diffusers_schedule) => {
                self.a1111_timesteps_flavor(kind, schedule, &what)
            }
            Some(flavor) => Ok(flavor),
            None if has_diffusers && diffusers_schedule => Ok(SamplerFlavor::Diffusers),
            None if has_k => Ok(SamplerFlavor::KDiffusion),
            None => Err(Error::Unsupported {
                what: "sigma schedule for this sampler",
                value: format!(
                    "{} with {}: {} walks its own timesteps and ignores sigma schedules",
                    what,
                    kind.name(),
                    kind.name()
                ),
                valid: SamplerKind::ALL
                    .iter()
                    .filter(|k| k.kdiffusion_function().is_some())
                    .map(|k| k.name().to_string())
                    .collect(),
            }),
        }
    }
}

/// The sigmas a k-diffusion sampler walks for `schedule` (A1111's `get_sigmas`): the
/// sampler's preferred schedule for [`SigmaSchedule::Default`], one extra step with the
/// next-to-last sigma dropped for DPM2 and DPM++ 3M SDE, or the user's own list.
pub fn kdiffusion_sigmas(
    kind: SamplerKind,
    schedule: SigmaSchedule,
    model: &sigmas::ModelSigmas,
    steps: usize,
    options: &SamplerOptions,
) -> Result<Vec<f32>> {
    if let Some(list) = &options.sigmas {
        return sigmas::custom(list);
    }
    let schedule = match schedule {
        SigmaSchedule::Default => kind.a1111_default_schedule(),
        other => other,
    };
    let discard = kind.discards_next_to_last_sigma();
    let n = steps + usize::from(discard);
    let (min, max) = (f64::from(model.sigma_min()), f64::from(model.sigma_max()));
    let mut list = match schedule {
        SigmaSchedule::Default | SigmaSchedule::Discrete if model.lcm_skip.is_some() => {
            sigmas::lcm(model, n)
        }
        SigmaSchedule::Default | SigmaSchedule::Discrete => sigmas::discrete(model, n),
        SigmaSchedule::Karras => sigmas::karras(min, max, n),
        SigmaSchedule::Exponential => sigmas::exponential(min, max, n),
        SigmaSchedule::SgmUniform => sigmas::sgm_uniform(model, n),
        SigmaSchedule::Simple => sigmas::simple(model, n),
        SigmaSchedule::DdimUniform => sigmas::ddim_uniform(model, n),
        SigmaSchedule::Beta => sigmas::beta(min, max, n, sigmas::BETA_SCHEDULE_ALPHA),
        SigmaSchedule::KlOptimal => sigmas::kl_optimal(min, max, n),
        SigmaSchedule::Normal => sigmas::normal(model, n),
        SigmaSchedule::Polyexponential => {
            sigmas::polyexponential(min, max, n, sigmas::POLYEXPONENTIAL_RHO)
        }
        SigmaSchedule::AlignYourSteps => {
            let table: &[f64] = if options.sdxl {
                &sigmas::AYS_SDXL
            } else {
                &sigmas::AYS_SD15
            };
            sigmas::align_your_steps(table, n)
        }
    };
    if discard && list.len() >= 3 {
        let last = list[list.len() - 1];
        list.truncate(list.len() - 2);
        list.push(last);
    }
    Ok(list)
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
