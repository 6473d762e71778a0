//! Trajectory Consistency Distillation sampling (diffusers' `TCDScheduler`): like LCM, but
//! each step lands on an intermediate timestep s = ⌊(1 − γ) · t_prev⌋ along the
//! probability-flow trajectory and then re-noises from s to t_prev with fresh noise. γ (the
//! request's `eta`, 0.3 by default) sets the stochasticity: γ = 0 is deterministic.

use candle_core::Tensor;

use super::ddim::{alpha_sampler_basics, x0_and_eps, AlphaSteps};
use super::kdiff::noise_like;
use super::lcm::consistency_timesteps;
use super::ops::{add, mul};
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// TCD's default γ (diffusers' `step(eta=0.3)`).
pub const DEFAULT_GAMMA: f64 = 0.3;

/// TCD sampling.
#[derive(Debug, Clone)]
pub struct Tcd {
    alphas: AlphaSteps,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    prediction: PredictionType,
    gamma: f32,
}

impl Tcd {
    /// Sets up `steps` steps with stochasticity `gamma` in [0, 1].
    pub fn new(cfg: &ResolvedConfig, steps: usize, gamma: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&gamma) {
            return Err(Error::invalid(
                "eta",
                format!("TCD's gamma (--eta) must be in [0, 1], got {gamma}"),
            ));
        }
        let timesteps = consistency_timesteps(
            cfg.num_train_timesteps,
            cfg.original_inference_steps,
            steps,
            "TCD",
        )?;
        Ok(Self {
            alphas: AlphaSteps::new(cfg, steps)?,
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            prediction: cfg.prediction_type,
            gamma: gamma as f32,
        })
    }
}

impl Sampler for Tcd {
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
        let last = step + 1 == self.timesteps.len();
        let prev_t = self.timesteps.get(step + 1).copied().unwrap_or(0);
        // The intermediate timestep s on the trajectory (f32, as torch computes it).
        let s = ((1.0 - self.gamma) * prev_t as f32).floor() as i64;
        let alpha_t = self.alphas.alpha_cumprod(t)?;
        let alpha_prev = self.alphas.alpha_cumprod(prev_t)?;
        let alpha_s = self.alphas.alpha_cumprod(s)?;
        let (x0, eps) = x0_and_eps(self.prediction, model_output, sample, alpha_t)?;
        // The sample at s along the probability-flow ODE.
        let at_s = add(
            &mul(&x0, alpha_s.sqrt())?,
            &mul(&eps, (1.0 - alpha_s).sqrt())?,
        )?;
        if self.gamma <= 0.0 || last {
            return Ok(at_s);
        }
        let noise = noise_like(&at_s, rng)?;
        let ratio = alpha_prev / alpha_s;
        add(
            &mul(&at_s, ratio.sqrt())?,
            &mul(&noise, (1.0 - ratio).sqrt())?,
        )
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Tcd
    }
}
