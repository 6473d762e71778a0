//! Latent Consistency Model sampling (diffusers' `LCMScheduler`): each step maps the sample
//! straight to a clean estimate through the consistency boundary condition, then noises it
//! again to the next timestep with fresh noise (none after the last step).
//!
//! The timesteps come from the distillation's own grid (`original_inference_steps`, 50 by
//! default): `steps` of them evenly picked from the top. They ignore sigma schedules and the
//! config's spacing.

use candle_core::Tensor;

use super::ddim::{alpha_sampler_basics, x0_and_eps, AlphaSteps};
use super::kdiff::noise_like;
use super::ops::{add, mul};
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// The distillation grid's timesteps, `steps` of them picked evenly from the top (diffusers'
/// `LCMScheduler` / `TCDScheduler` `set_timesteps` with strength 1).
pub(crate) fn consistency_timesteps(
    num_train: usize,
    original_steps: usize,
    steps: usize,
    class: &str,
) -> Result<Vec<i64>> {
    if original_steps == 0 || original_steps > num_train {
        return Err(Error::invalid(
            "original_inference_steps",
            format!("must be in 1..={num_train}, got {original_steps}"),
        ));
    }
    if steps > original_steps {
        return Err(Error::invalid(
            "steps",
            format!(
                "{class} picks its timesteps from a grid of {original_steps} \
                 (original_inference_steps); {steps} steps is more than that"
            ),
        ));
    }
    let k = (num_train / original_steps) as i64;
    // The grid k − 1, 2k − 1, …, counted down from the top.
    let grid: Vec<i64> = (1..=original_steps as i64)
        .rev()
        .map(|i| i * k - 1)
        .collect();
    let stride = grid.len() as f64 / steps as f64;
    Ok((0..steps)
        .map(|i| grid[(i as f64 * stride).floor() as usize])
        .collect())
}

/// LCM sampling.
#[derive(Debug, Clone)]
pub struct Lcm {
    alphas: AlphaSteps,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    prediction: PredictionType,
    clip_sample: Option<f32>,
    timestep_scaling: f32,
}

impl Lcm {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        let timesteps = consistency_timesteps(
            cfg.num_train_timesteps,
            cfg.original_inference_steps,
            steps,
            "LCM",
        )?;
        Ok(Self {
            alphas: AlphaSteps::new(cfg, steps)?,
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            prediction: cfg.prediction_type,
            clip_sample: cfg.clip_sample.then_some(cfg.clip_sample_range as f32),
            timestep_scaling: cfg.timestep_scaling as f32,
        })
    }

    /// The consistency model's boundary-condition scalings (c_skip, c_out) at timestep `t`,
    /// with σ_data = 0.5.
    fn boundary_scalings(&self, t: i64) -> (f32, f32) {
        const SIGMA_DATA2: f32 = 0.5 * 0.5;
        let scaled = t as f32 * self.timestep_scaling;
        let c_skip = SIGMA_DATA2 / (scaled * scaled + SIGMA_DATA2);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA2).sqrt();
        (c_skip, c_out)
    }
}

impl Sampler for Lcm {
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
        let alpha_t = self.alphas.alpha_cumprod(t)?;
        let (mut x0, _) = x0_and_eps(self.prediction, model_output, sample, alpha_t)?;
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range)?;
        }
        let (c_skip, c_out) = self.boundary_scalings(t);
        let denoised = add(&mul(&x0, c_out)?, &mul(sample, c_skip)?)?;
        let Some(&prev_t) = self.timesteps.get(step + 1) else {
            return Ok(denoised);
        };
        let alpha_prev = self.alphas.alpha_cumprod(prev_t)?;
        let noise = noise_like(&denoised, rng)?;
        add(
            &mul(&denoised, alpha_prev.sqrt())?,
            &mul(&noise, (1.0 - alpha_prev).sqrt())?,
        )
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Lcm
    }
}
