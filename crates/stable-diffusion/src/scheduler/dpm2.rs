//! DPM2 (diffusers' `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler`;
//! k-diffusion's `sample_dpm_2` / `sample_dpm_2_ancestral`): second-order steps through the
//! geometric (log-sigma) midpoint.
//!
//! A step from σ_j first evaluates the model at σ_j and takes an Euler step to the midpoint
//! m_j; the second evaluation, at m_j, gives the direction used for the whole step from σ_j to
//! its target (σ_{j+1}, or σ_down for the ancestral variant, which then adds noise of σ_up).
//! diffusers lists both evaluations in its timesteps (`[t₀, t(m₀), t₁, t(m₁), …]`), and so do
//! we: evaluation `2j` is the first of step `j`, `2j + 1` the second. The last step goes
//! straight to σ = 0 with one evaluation.

use candle_core::Tensor;

use super::euler::sigma_init_noise;
use super::euler::{predict_original, to_d};
use super::euler_a::ancestral_step;
use super::heun::plain_sigma_steps;
use super::kdiff::log_midpoint;
use super::kdiff::noise_like;
use super::ops::{add, div, mul};
use super::schedule::{self, TimestepSpacing};
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// One step of DPM2: from `sigma` through `mid` to `target`, plus noise of `up`.
#[derive(Debug, Clone, Copy)]
struct Dpm2Step {
    sigma: f32,
    mid: f32,
    target: f32,
    up: f32,
}

/// DPM2 sampling, plain or ancestral.
#[derive(Debug, Clone)]
pub struct Dpm2 {
    timesteps: Vec<f64>,
    plan: Vec<Dpm2Step>,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    ancestral: bool,
    /// The sample the current step started from (between its two evaluations).
    start: Option<Tensor>,
}

impl Dpm2 {
    /// `KDPM2DiscreteScheduler`: `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        Self::build(cfg, steps, false)
    }

    /// `KDPM2AncestralDiscreteScheduler`: each step aims at σ_down and adds noise of σ_up.
    pub fn ancestral(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        Self::build(cfg, steps, true)
    }

    fn build(cfg: &ResolvedConfig, steps: usize, ancestral: bool) -> Result<Self> {
        if cfg.prediction_type == PredictionType::Sample {
            return Err(Error::Unsupported {
                what: "prediction type for diffusers' KDPM2 schedulers",
                value: "sample".into(),
                valid: vec!["epsilon".into(), "v_prediction".into()],
            });
        }
        let (spaced, sigmas) = plain_sigma_steps(cfg, steps)?;
        let n = sigmas.len() - 1;
        let plan: Vec<Dpm2Step> = (0..n)
            .map(|j| {
                let (sigma, next) = (sigmas[j], sigmas[j + 1]);
                let (target, up) = if ancestral {
                    ancestral_step(sigma, next)
                } else {
                    (next, 0.0)
                };
                // The last step has no midpoint: it goes to 0 in one evaluation.
                let mid = if j + 1 == n {
                    0.0
                } else if ancestral {
                    log_midpoint(sigma, target)
                } else {
                    log_midpoint(next, sigma)
                };
                Dpm2Step {
                    sigma,
                    mid,
                    target,
                    up,
                }
            })
            .collect();
        let noise = cfg.noise_schedule()?;
        let log_sigmas = noise.log_train_sigmas();
        let model_t = |t: f64| {
            if cfg.use_karras_sigmas {
                schedule::round_half_even(t)
            } else {
                t
            }
        };
        let mut timesteps = vec![model_t(spaced[0])];
        for j in 1..n {
            let mid_t = schedule::sigma_to_t(f64::from(plan[j - 1].mid), &log_sigmas) as f32;
            timesteps.push(f64::from(mid_t));
            timesteps.push(model_t(spaced[j]));
        }
        Ok(Self {
            timesteps,
            plan,
            prediction: cfg.prediction_type,
            spacing: cfg.timestep_spacing,
            ancestral,
            start: None,
        })
    }

    /// The sigma the model sees at evaluation `k`.
    fn eval_sigma(&self, k: usize) -> f32 {
        let step = &self.plan[k / 2];
        if k.is_multiple_of(2) {
            step.sigma
        } else {
            step.mid
        }
    }
}

impl Sampler for Dpm2 {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let sigmas: Vec<f32> = self.plan.iter().map(|s| s.sigma).collect();
        sigma_init_noise(&sigmas, self.spacing)
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let sigma = self.eval_sigma(step);
        div(sample, (sigma * sigma + 1.0).sqrt())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let plan = self.plan[step / 2];
        let sigma_input = self.eval_sigma(step);
        let denoised = predict_original(self.prediction, model_output, sample, sigma_input)?;
        let derivative = to_d(sample, &denoised, sigma_input)?;
        match self.start.take() {
            Some(start) if step % 2 == 1 => {
                let next = add(&start, &mul(&derivative, plan.target - plan.sigma)?)?;
                if !self.ancestral {
                    return Ok(next);
                }
                let noise = noise_like(&next, rng)?;
                add(&next, &mul(&noise, plan.up)?)
            }
            _ => {
                let next = add(sample, &mul(&derivative, plan.mid - plan.sigma)?)?;
                self.start = Some(sample.clone());
                Ok(next)
            }
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        add(original, &mul(noise, self.eval_sigma(step))?)
    }

    fn reset(&mut self) {
        self.start = None;
    }

    fn order(&self) -> usize {
        2
    }

    fn kind(&self) -> SamplerKind {
        if self.ancestral {
            SamplerKind::Dpm2A
        } else {
            SamplerKind::Dpm2
        }
    }
}
