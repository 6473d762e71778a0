//! Euler's method on the probability-flow ODE (diffusers' `EulerDiscreteScheduler`,
//! k-diffusion's `sample_euler` without churn).

use candle_core::Tensor;

use super::kdiff::noise_like;
use super::kdiff::Churn;
use super::ops::{add, div, mul, sub};
use super::schedule::{self, NoiseSchedule, TimestepSpacing};
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// The initial noise's standard deviation of diffusers' sigma-based classes: σ_max, or
/// sqrt(σ_max² + 1) for "leading" spacing.
pub(crate) fn sigma_init_noise(sigmas: &[f32], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(f32::MIN, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => f64::from(max),
        TimestepSpacing::Leading => f64::from((max * max + 1.0).sqrt()),
    }
}

/// The [`Sampler`] methods that a sigma-based diffusers class answers from its tables: the
/// type has `steps: SigmaSteps` and `spacing: TimestepSpacing`.
macro_rules! sigma_sampler_basics {
    () => {
        fn timesteps(&self) -> &[f64] {
            &self.steps.timesteps
        }

        fn sigmas(&self) -> Option<&[f64]> {
            Some(&self.steps.sigmas_f64)
        }

        fn init_noise_sigma(&self) -> f64 {
            self.steps.init_noise_sigma(self.spacing)
        }

        fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
            self.steps.scale_model_input(sample, step)
        }

        fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
            self.steps.add_noise(original, noise, step)
        }
    };
}
pub(crate) use sigma_sampler_basics;

/// Timesteps and sigmas of the sigma-based samplers (Euler, Euler a, Heun, LMS).
#[derive(Debug, Clone)]
pub(crate) struct SigmaSteps {
    /// Model timesteps (f32 values kept as f64).
    pub timesteps: Vec<f64>,
    /// Sigmas (f32), one more than the timesteps; the last is 0 or σ_min.
    pub sigmas: Vec<f32>,
    /// The same sigmas as f64, for [`Sampler::sigmas`].
    pub sigmas_f64: Vec<f64>,
}

impl SigmaSteps {
    /// Euler's `set_timesteps`: spaced timesteps, sigmas interpolated from the training
    /// sigmas, or Karras sigmas with their timesteps found by log-sigma interpolation.
    pub fn euler(cfg: &ResolvedConfig, noise: &NoiseSchedule, steps: usize) -> Self {
        let train = noise.train_sigmas();
        let mut timesteps: Vec<f64> = schedule::continuous_timesteps(
            cfg.timestep_spacing,
            cfg.num_train_timesteps,
            steps,
            cfg.steps_offset,
        )
        .into_iter()
        .map(f64::from)
        .collect();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| schedule::interp_sigma(t, &train))
            .collect();
        if cfg.use_karras_sigmas {
            let sigma_min = cfg.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = cfg.sigma_max.unwrap_or(sigmas[0]);
            sigmas = schedule::karras_sigmas(sigma_min, sigma_max, steps);
            let log_sigmas = noise.log_train_sigmas();
            timesteps = sigmas
                .iter()
                .map(|&s| schedule::sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
        }
        let last = if cfg.final_sigma_min {
            f64::from(train[0])
        } else {
            0.0
        };
        Self::from_parts(timesteps, sigmas, last)
    }

    /// Rounds the sigmas to f32 and appends the final one.
    pub fn from_parts(timesteps: Vec<f64>, sigmas: Vec<f64>, last: f64) -> Self {
        let sigmas: Vec<f32> = sigmas
            .into_iter()
            .chain(std::iter::once(last))
            .map(|s| s as f32)
            .collect();
        Self::new(timesteps, sigmas)
    }

    /// The tables as given (one sigma per model evaluation plus the final one).
    pub fn new(timesteps: Vec<f64>, sigmas: Vec<f32>) -> Self {
        let sigmas_f64 = sigmas.iter().map(|&s| f64::from(s)).collect();
        Self {
            timesteps,
            sigmas,
            sigmas_f64,
        }
    }

    /// The initial noise's standard deviation: σ_max, or sqrt(σ_max² + 1) for "leading".
    pub fn init_noise_sigma(&self, spacing: TimestepSpacing) -> f64 {
        sigma_init_noise(&self.sigmas, spacing)
    }

    /// `sample / sqrt(σ² + 1)`: the model sees unit-variance input.
    pub fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let sigma = self.sigmas[step];
        div(sample, (sigma * sigma + 1.0).sqrt())
    }

    /// `original + noise * σ`.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        add(original, &mul(noise, self.sigmas[step])?)
    }
}

/// The denoised estimate x₀ from the model output at noise level `sigma`.
pub(crate) fn predict_original(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => sub(sample, &mul(model_output, sigma)?),
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            add(
                &mul(model_output, c_out)?,
                &div(sample, sigma * sigma + 1.0)?,
            )
        }
        PredictionType::Sample => Ok(model_output.clone()),
    }
}

/// The ODE's direction `(x - x₀) / σ`.
pub(crate) fn to_d(sample: &Tensor, denoised: &Tensor, sigma: f32) -> Result<Tensor> {
    div(&sub(sample, denoised)?, sigma)
}

/// Euler's method: `x ← x + d · (σ_next − σ)`.
#[derive(Debug, Clone)]
pub struct Euler {
    steps: SigmaSteps,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    churn: Churn,
}

impl Euler {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        let noise = cfg.noise_schedule()?;
        Ok(Self {
            steps: SigmaSteps::euler(cfg, &noise, steps),
            prediction: cfg.prediction_type,
            spacing: cfg.timestep_spacing,
            churn: Churn::default(),
        })
    }

    /// Adds Karras's churn as diffusers' `step(s_churn, s_tmin, s_tmax, s_noise)` applies it:
    /// after the model call, to the sample that call saw.
    pub fn with_churn(mut self, churn: Churn) -> Self {
        self.churn = churn;
        self
    }
}

impl Sampler for Euler {
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
        let gamma = self.churn.gamma(sigma, self.steps.timesteps.len());
        let sigma_hat = sigma * (gamma + 1.0);
        let mut sample = sample.clone();
        if gamma > 0.0 {
            let noise = noise_like(&sample, rng)?;
            let eps = mul(&noise, self.churn.s_noise)?;
            sample = add(
                &sample,
                &mul(&eps, (sigma_hat * sigma_hat - sigma * sigma).sqrt())?,
            )?;
        }
        // diffusers takes σ̂ for ε-prediction and σ for v-prediction.
        let denoised = match self.prediction {
            PredictionType::VPrediction => {
                predict_original(self.prediction, model_output, &sample, sigma)?
            }
            _ => predict_original(self.prediction, model_output, &sample, sigma_hat)?,
        };
        let derivative = to_d(&sample, &denoised, sigma_hat)?;
        let dt = self.steps.sigmas[step + 1] - sigma_hat;
        add(&sample, &mul(&derivative, dt)?)
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Euler
    }
}
