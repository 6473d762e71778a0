//! Euler ancestral (diffusers' `EulerAncestralDiscreteScheduler`, k-diffusion's
//! `sample_euler_ancestral`): an Euler step down to σ_down, then fresh noise of σ_up.
//!
//! diffusers' class has no Karras option; with [`super::SigmaSchedule::Karras`] this sampler
//! walks the Karras sigmas and timesteps of `EulerDiscreteScheduler(use_karras_sigmas=True)`
//! with the same ancestral step (as k-diffusion's `sample_euler_ancestral` on Karras sigmas).

use candle_core::Tensor;

use super::euler::{predict_original, sigma_sampler_basics, to_d, SigmaSteps};
use super::kdiff::noise_like;
use super::ops::{add, mul};
use super::schedule::TimestepSpacing;
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// The ancestral split of a step from `sigma_from` to `sigma_to`: the deterministic target
/// σ_down and the fresh noise σ_up, with σ_down² + σ_up² = σ_to².
pub(crate) fn ancestral_step(sigma_from: f32, sigma_to: f32) -> (f32, f32) {
    let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
    let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
    let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

/// Euler ancestral sampling.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    steps: SigmaSteps,
    prediction: PredictionType,
    spacing: TimestepSpacing,
}

impl EulerAncestral {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        if cfg.prediction_type == PredictionType::Sample {
            return Err(Error::Unsupported {
                what: "prediction type for Euler a",
                value: "sample".into(),
                valid: vec!["epsilon".into(), "v_prediction".into()],
            });
        }
        let noise = cfg.noise_schedule()?;
        // diffusers' EulerAncestral always ends at sigma 0 and has no sigma_min/max overrides.
        let cfg = ResolvedConfig {
            final_sigma_min: false,
            sigma_min: None,
            sigma_max: None,
            ..cfg.clone()
        };
        Ok(Self {
            steps: SigmaSteps::euler(&cfg, &noise, steps),
            prediction: cfg.prediction_type,
            spacing: cfg.timestep_spacing,
        })
    }
}

impl Sampler for EulerAncestral {
    sigma_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.steps.timesteps.len())?;
        let sigma = self.steps.sigmas[step];
        let denoised = predict_original(self.prediction, model_output, sample, sigma)?;
        let (sigma_down, sigma_up) = ancestral_step(sigma, self.steps.sigmas[step + 1]);
        let derivative = to_d(sample, &denoised, sigma)?;
        let prev = add(sample, &mul(&derivative, sigma_down - sigma)?)?;
        // Noise is drawn on every step, the last included (σ_up = 0 there), as diffusers does.
        let noise = noise_like(&prev, rng)?;
        add(&prev, &mul(&noise, sigma_up)?)
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::EulerA
    }
}
