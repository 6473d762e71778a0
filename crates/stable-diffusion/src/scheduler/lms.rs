//! Linear multistep (diffusers' `LMSDiscreteScheduler`): the next sample is the current one
//! plus a weighted sum of the last (up to four) ODE directions, the weights being the integrals
//! over [σ, σ_next] of the Lagrange polynomials through the earlier sigmas.

use std::collections::VecDeque;

use candle_core::Tensor;

use super::euler::{predict_original, sigma_sampler_basics, to_d, SigmaSteps};
use super::heun::plain_sigma_steps;
use super::k_lms::linear_multistep_coeff;
use super::ops::{add, mul};
use super::schedule::TimestepSpacing;
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// diffusers' default (and A1111's) order.
const ORDER: usize = 4;

/// LMS sampling.
#[derive(Debug, Clone)]
pub struct Lms {
    steps: SigmaSteps,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    /// The last directions, newest last.
    derivatives: VecDeque<Tensor>,
}

impl Lms {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        let (timesteps, sigmas) = plain_sigma_steps(cfg, steps)?;
        Ok(Self {
            steps: SigmaSteps::new(timesteps, sigmas),
            prediction: cfg.prediction_type,
            spacing: cfg.timestep_spacing,
            derivatives: VecDeque::new(),
        })
    }
}

impl Sampler for Lms {
    sigma_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.steps.timesteps.len())?;
        let sigma = self.steps.sigmas[step];
        let denoised = predict_original(self.prediction, model_output, sample, sigma)?;
        self.derivatives.push_back(to_d(sample, &denoised, sigma)?);
        if self.derivatives.len() > ORDER {
            self.derivatives.pop_front();
        }
        // diffusers takes the order from the step index, not from the directions it holds: after
        // an img2img start the polynomial runs through earlier sigmas than the directions
        // (zip keeps only as many terms as there are directions).
        let order = (step + 1).min(ORDER);
        let mut change: Option<Tensor> = None;
        for (j, derivative) in self.derivatives.iter().rev().enumerate().take(order) {
            let coeff = linear_multistep_coeff(order, &self.steps.sigmas, step, j) as f32;
            let term = mul(derivative, coeff)?;
            change = Some(match change {
                Some(sum) => add(&sum, &term)?,
                None => term,
            });
        }
        match change {
            Some(change) => add(sample, &change),
            None => Ok(sample.clone()),
        }
    }

    fn reset(&mut self) {
        self.derivatives.clear();
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Lms
    }
}
