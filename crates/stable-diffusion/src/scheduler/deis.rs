//! DEIS (diffusers' `DEISMultistepScheduler`, "log-rho" multistep of order 2): exponential
//! integration of the noise prediction in ρ = σ/α, the earlier predictions combined through
//! Lagrange polynomials in log ρ, integrated exactly.
//!
//! Like diffusers, it stops at σ_min (not 0): the last step lands on the training schedule's
//! smallest sigma (or the last Karras sigma).

use candle_core::Tensor;

use super::ops::{add, div, mul, sub};
use super::vp::{data_prediction, dpm_solver_sigmas, lambda, vp_sampler_basics, VpSteps};
use super::{check_step, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// The integral's antiderivative for the order-2 Lagrange weight of the node at ρ = `b`
/// (the other node at `c`), evaluated at ρ = `t`, in f32 as diffusers computes it.
fn lagrange_integral(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// DEIS sampling (order 2).
#[derive(Debug, Clone)]
pub struct Deis {
    vp: VpSteps,
    lower_order_final: bool,
    /// The previous noise prediction (for the second-order update).
    previous: Option<Tensor>,
    /// Steps run since the start (capped at 2).
    lower_order_nums: usize,
}

impl Deis {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        let final_min = ResolvedConfig {
            final_sigma_min: true,
            ..cfg.clone()
        };
        let (timesteps, mut sigmas) = dpm_solver_sigmas(&final_min, steps, true)?;
        if cfg.use_karras_sigmas {
            // With Karras sigmas diffusers repeats the last one instead.
            let n = sigmas.len();
            sigmas[n - 1] = sigmas[n - 2];
        }
        Ok(Self {
            vp: VpSteps::new(timesteps, sigmas, cfg.prediction_type),
            lower_order_final: cfg.lower_order_final,
            previous: None,
            lower_order_nums: 0,
        })
    }

    /// The noise prediction ε at step `step`, through x₀ as diffusers computes it.
    fn noise_prediction(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        step: usize,
    ) -> Result<Tensor> {
        let x0 = data_prediction(
            self.vp.prediction,
            self.vp.sigmas[step],
            model_output,
            sample,
        )?;
        let (alpha, sigma) = self.vp.alpha_sigma(step);
        div(&sub(sample, &mul(&x0, alpha)?)?, sigma)
    }
}

impl Sampler for Deis {
    vp_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.vp.timesteps.len())?;
        let n = self.vp.timesteps.len();
        let lower_order_final = step == n - 1 && self.lower_order_final && n < 15;
        let eps = self.noise_prediction(model_output, sample, step)?;
        let previous = self.previous.replace(eps.clone());
        let (alpha_t, sigma_t) = self.vp.alpha_sigma(step + 1);
        let (alpha_s0, sigma_s0) = self.vp.alpha_sigma(step);
        let next = match previous {
            Some(m1) if self.lower_order_nums >= 1 && !lower_order_final => {
                let (alpha_s1, sigma_s1) = self.vp.alpha_sigma(step - 1);
                let (rho_t, rho_s0, rho_s1) =
                    (sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1);
                let coef0 = lagrange_integral(rho_t, rho_s0, rho_s1)
                    - lagrange_integral(rho_s0, rho_s0, rho_s1);
                let coef1 = lagrange_integral(rho_t, rho_s1, rho_s0)
                    - lagrange_integral(rho_s0, rho_s1, rho_s0);
                let inner = add(
                    &add(&div(sample, alpha_s0)?, &mul(&eps, coef0)?)?,
                    &mul(&m1, coef1)?,
                )?;
                mul(&inner, alpha_t)?
            }
            _ => {
                // First order: an exponential-integrator (DDIM-like) step.
                let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
                sub(
                    &mul(sample, alpha_t / alpha_s0)?,
                    &mul(&eps, sigma_t * (h.exp() - 1.0))?,
                )?
            }
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        Ok(next)
    }

    fn reset(&mut self) {
        self.previous = None;
        self.lower_order_nums = 0;
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Deis
    }
}
