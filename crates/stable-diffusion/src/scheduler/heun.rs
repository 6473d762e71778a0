//! Heun's second-order method (diffusers' `HeunDiscreteScheduler`; k-diffusion's `sample_heun`
//! without churn).
//!
//! Each step from σ to σ_next costs two model evaluations: an Euler predictor to σ_next, then a
//! corrector that averages the directions at both ends. diffusers lists both evaluations in
//! its timesteps (every timestep after the first repeated), and so do we: evaluation `2j` is
//! the predictor of step `j`, evaluation `2j + 1` its corrector. The last step (to σ = 0) is a
//! plain Euler step.

use candle_core::Tensor;

use super::euler::{predict_original, sigma_sampler_basics, to_d, SigmaSteps};
use super::ops::{add, mul};
use super::schedule::TimestepSpacing;
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// The sigma-based samplers' per-step tables for diffusers' classes without final-sigma or
/// sigma-bound options (Heun, LMS, KDPM2): spaced timesteps with interpolated sigmas, or Karras
/// sigmas, and a final 0. Returns (timesteps, sigmas), sigmas one longer.
pub(crate) fn plain_sigma_steps(
    cfg: &ResolvedConfig,
    steps: usize,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let noise = cfg.noise_schedule()?;
    let cfg = ResolvedConfig {
        final_sigma_min: false,
        sigma_min: None,
        sigma_max: None,
        ..cfg.clone()
    };
    let table = SigmaSteps::euler(&cfg, &noise, steps);
    Ok((table.timesteps, table.sigmas))
}

/// Repeats every entry after the first twice: `[a, b, c] → [a, b, b, c, c]` (diffusers'
/// layout of second-order samplers' tables).
pub(crate) fn interleave_repeat<T: Copy>(values: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(values.len() * 2);
    if let Some(&first) = values.first() {
        out.push(first);
    }
    for &v in values.iter().skip(1) {
        out.push(v);
        out.push(v);
    }
    out
}

/// Heun sampling.
#[derive(Debug, Clone)]
pub struct Heun {
    /// One timestep per model evaluation, `[t₀, t₁, t₁, t₂, t₂, …]`, and one sigma per
    /// evaluation plus the final 0, `[σ₀, σ₁, σ₁, …, σ_{n−1}, σ_{n−1}, 0]`.
    steps: SigmaSteps,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    clip_sample: Option<f32>,
    /// The predictor's state: the sample it started from, its direction and its step size.
    predictor: Option<(Tensor, Tensor, f32)>,
}

impl Heun {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        let (timesteps, sigmas) = plain_sigma_steps(cfg, steps)?;
        let n = sigmas.len();
        let mut layout = interleave_repeat(&sigmas[..n - 1]);
        layout.push(sigmas[n - 1]);
        Ok(Self {
            steps: SigmaSteps::new(interleave_repeat(&timesteps), layout),
            prediction: cfg.prediction_type,
            spacing: cfg.timestep_spacing,
            clip_sample: cfg.clip_sample.then_some(cfg.clip_sample_range as f32),
            predictor: None,
        })
    }
}

impl Sampler for Heun {
    sigma_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.steps.timesteps.len())?;
        // Predictor at even evaluations (σ = sigmas[step]), corrector at odd ones, which sit at
        // σ_next = sigmas[step].
        let predictor = self.predictor.take();
        let first_order = step.is_multiple_of(2) || predictor.is_none();
        let sigma_input = self.steps.sigmas[step];
        let mut denoised = predict_original(self.prediction, model_output, sample, sigma_input)?;
        if let Some(range) = self.clip_sample {
            denoised = denoised.clamp(-range, range)?;
        }
        match predictor {
            Some((start, d_start, dt)) if !first_order => {
                let d_end = to_d(sample, &denoised, sigma_input)?;
                let derivative = mul(&add(&d_start, &d_end)?, 0.5)?;
                add(&start, &mul(&derivative, dt)?)
            }
            _ => {
                let sigma_next = self.steps.sigmas[step + 1];
                let derivative = to_d(sample, &denoised, sigma_input)?;
                let dt = sigma_next - sigma_input;
                let next = add(sample, &mul(&derivative, dt)?)?;
                self.predictor = Some((sample.clone(), derivative, dt));
                Ok(next)
            }
        }
    }

    fn reset(&mut self) {
        self.predictor = None;
    }

    fn order(&self) -> usize {
        2
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Heun
    }
}
