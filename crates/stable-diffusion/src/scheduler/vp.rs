//! What the variance-preserving multistep samplers of diffusers share (DPM-Solver++ 2M / 2S,
//! UniPC, DEIS): α and σ of the VP process at a sigma, the data prediction x₀ from a model
//! output, log-SNR time λ, DPM-Solver's timesteps and sigmas, and [`VpSteps`], the planned run
//! with the parts of diffusers' scheduler interface that are the same for all of them
//! (`vp_sampler_basics!` implements those [`super::Sampler`] methods).

use candle_core::Tensor;

use super::ops::{add, div, mul, sub};
use super::schedule::{self, NoiseSchedule};
use super::{check_step, PredictionType, ResolvedConfig};
use crate::Result;

/// `(α_t, σ_t)` of the variance-preserving process at the sigma-parametrisation `sigma`.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The data prediction x₀ from a model output at `sigma` (DPM-Solver's
/// `convert_model_output` for the data-prediction solvers: DPM++ 2M/2S, UniPC, DEIS).
pub(crate) fn data_prediction(
    prediction: PredictionType,
    sigma: f32,
    model_output: &Tensor,
    sample: &Tensor,
) -> Result<Tensor> {
    let (alpha, sigma) = alpha_sigma(sigma);
    match prediction {
        PredictionType::Epsilon => div(&sub(sample, &mul(model_output, sigma)?)?, alpha),
        PredictionType::Sample => Ok(model_output.clone()),
        PredictionType::VPrediction => sub(&mul(sample, alpha)?, &mul(model_output, sigma)?),
    }
}

/// λ = log α − log σ (+∞ at σ = 0).
pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// DPM-Solver's timesteps and sigmas (diffusers' `DPMSolverMultistepScheduler.set_timesteps`,
/// shared by UniPC and DEIS): `steps + 1` spaced timesteps with the last dropped and their
/// interpolated sigmas, or Karras sigmas over the whole training range with their rounded
/// timesteps (truncated for the cosine schedule unless `always_round`); then the final sigma.
pub(crate) fn dpm_solver_sigmas(
    cfg: &ResolvedConfig,
    steps: usize,
    always_round: bool,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let noise: NoiseSchedule = cfg.noise_schedule()?;
    let train = noise.train_sigmas();
    let (timesteps, sigmas): (Vec<f64>, Vec<f64>) = if cfg.use_karras_sigmas {
        // DPM's Karras bounds are the whole training range.
        let sigma_min = f64::from(train[0]);
        let sigma_max = f64::from(train[train.len() - 1]);
        let sigmas = schedule::karras_sigmas(sigma_min, sigma_max, steps);
        let log_sigmas = noise.log_train_sigmas();
        let timesteps = sigmas
            .iter()
            .map(|&s| {
                let t = schedule::sigma_to_t(s, &log_sigmas);
                if !always_round && cfg.beta_schedule == schedule::BetaSchedule::SquaredCosCapV2 {
                    t.trunc()
                } else {
                    schedule::round_half_even(t)
                }
            })
            .collect();
        (timesteps, sigmas)
    } else {
        let ts = schedule::dpm_timesteps(
            cfg.timestep_spacing,
            cfg.num_train_timesteps,
            steps,
            cfg.steps_offset,
        );
        let sigmas = ts
            .iter()
            .map(|&t| schedule::interp_sigma(t as f64, &train))
            .collect();
        (ts.into_iter().map(|t| t as f64).collect(), sigmas)
    };
    let last = if cfg.final_sigma_min {
        f64::from(train[0])
    } else {
        0.0
    };
    let sigmas: Vec<f32> = sigmas
        .into_iter()
        .chain(std::iter::once(last))
        .map(|s| s as f32)
        .collect();
    Ok((timesteps, sigmas))
}

/// The timesteps and sigmas of a VP multistep run, and what the model predicts.
#[derive(Debug, Clone)]
pub(crate) struct VpSteps {
    /// The model timesteps, one per step.
    pub timesteps: Vec<f64>,
    /// The sigmas, one more than the timesteps (the last is the final sigma).
    pub sigmas: Vec<f32>,
    /// `sigmas` in f64, as the [`super::Sampler`] interface hands them out.
    pub sigmas_f64: Vec<f64>,
    /// What the model predicts.
    pub prediction: PredictionType,
}

impl VpSteps {
    /// A run over `timesteps` and `sigmas`.
    pub fn new(timesteps: Vec<f64>, sigmas: Vec<f32>, prediction: PredictionType) -> Self {
        Self {
            timesteps,
            sigmas_f64: sigmas.iter().map(|&s| f64::from(s)).collect(),
            sigmas,
            prediction,
        }
    }

    /// DPM-Solver's run of `steps` steps ([`dpm_solver_sigmas`]).
    pub fn dpm_solver(cfg: &ResolvedConfig, steps: usize, always_round: bool) -> Result<Self> {
        let (timesteps, sigmas) = dpm_solver_sigmas(cfg, steps, always_round)?;
        Ok(Self::new(timesteps, sigmas, cfg.prediction_type))
    }

    /// `(α, σ)` at `sigmas[index]`.
    pub fn alpha_sigma(&self, index: usize) -> (f32, f32) {
        alpha_sigma(self.sigmas[index])
    }

    /// λ at `sigmas[index]`.
    pub fn lambda_at(&self, index: usize) -> f32 {
        let (alpha, sigma) = self.alpha_sigma(index);
        lambda(alpha, sigma)
    }

    /// The data prediction x₀ from the model output at step `step`.
    pub fn data_prediction(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        step: usize,
    ) -> Result<Tensor> {
        data_prediction(self.prediction, self.sigmas[step], model_output, sample)
    }

    /// `α·original + σ·noise` at step `step`'s level.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let (alpha, sigma) = self.alpha_sigma(step);
        add(&mul(original, alpha)?, &mul(noise, sigma)?)
    }
}

/// The [`super::Sampler`] methods that every VP multistep sampler answers from its `vp:
/// VpSteps` field: timesteps, sigmas, add_noise (unit initial noise and unscaled model input
/// are the trait's defaults).
macro_rules! vp_sampler_basics {
    () => {
        fn timesteps(&self) -> &[f64] {
            &self.vp.timesteps
        }

        fn sigmas(&self) -> Option<&[f64]> {
            Some(&self.vp.sigmas_f64)
        }

        fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
            self.vp.add_noise(original, noise, step)
        }
    };
}
pub(crate) use vp_sampler_basics;
