//! DDPM (diffusers' `DDPMScheduler`): ancestral sampling of Ho et al. (2020) on a subset of
//! the training timesteps. Each step moves to the posterior mean of x_{t_prev} given the
//! predicted x₀ and adds noise of the posterior's ("fixed small") or the step's beta
//! ("fixed large") variance, except at t = 0.

use candle_core::Tensor;

use super::ddim::{alpha_sampler_basics, x0_and_eps, AlphaSteps};
use super::kdiff::noise_like;
use super::ops::{add, mul};
use super::schedule;
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// Which variance the noise of a DDPM step has (`variance_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdpmVariance {
    /// The posterior's variance β̃_t = (1 − ᾱ_prev) / (1 − ᾱ_t) · β_t (diffusers' default).
    FixedSmall,
    /// The step's own β_t.
    FixedLarge,
}

/// DDPM sampling.
#[derive(Debug, Clone)]
pub struct Ddpm {
    alphas: AlphaSteps,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    prediction: PredictionType,
    clip_sample: Option<f32>,
    variance: DdpmVariance,
}

impl Ddpm {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize, variance: DdpmVariance) -> Result<Self> {
        let timesteps = schedule::discrete_timesteps(
            cfg.timestep_spacing,
            cfg.num_train_timesteps,
            steps,
            cfg.steps_offset,
        );
        // After the last timestep diffusers' DDPM always uses ᾱ = 1.
        let alphas = AlphaSteps {
            final_alpha_cumprod: 1.0,
            ..AlphaSteps::new(cfg, steps)?
        };
        Ok(Self {
            alphas,
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            prediction: cfg.prediction_type,
            clip_sample: cfg.clip_sample.then_some(cfg.clip_sample_range as f32),
            variance,
        })
    }
}

impl Sampler for Ddpm {
    alpha_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let t = self.timesteps[step];
        let prev_t = self.timesteps.get(step + 1).copied().unwrap_or(-1);
        let alpha_t = self.alphas.alpha_cumprod(t)?;
        let alpha_prev = self.alphas.alpha_cumprod(prev_t)?;
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let current_alpha = alpha_t / alpha_prev;
        let current_beta = 1.0 - current_alpha;
        let (mut x0, _) = x0_and_eps(self.prediction, model_output, sample, alpha_t)?;
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range)?;
        }
        // The posterior mean μ̃(x_t, x₀).
        let x0_coeff = alpha_prev.sqrt() * current_beta / beta_t;
        let sample_coeff = current_alpha.sqrt() * beta_prev / beta_t;
        let mean = add(&mul(&x0, x0_coeff)?, &mul(sample, sample_coeff)?)?;
        if t <= 0 {
            return Ok(mean);
        }
        let noise = noise_like(&mean, rng)?;
        let variance = match self.variance {
            DdpmVariance::FixedSmall => (beta_prev / beta_t * current_beta).max(1e-20),
            DdpmVariance::FixedLarge => current_beta,
        };
        add(&mean, &mul(&noise, variance.sqrt())?)
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Ddpm
    }
}
