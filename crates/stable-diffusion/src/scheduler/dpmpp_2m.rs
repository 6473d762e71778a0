//! DPM-Solver++(2M) (diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`; A1111's "DPM++ 2M"): a second-order
//! multistep solver on the data prediction x₀, in log-SNR time λ = log(α / σ).
//!
//! The same class with `algorithm_type="sde-dpmsolver++"` (A1111's "DPM++ 2M SDE") is the
//! stochastic variant: each step contracts the sample by e^{−h} more and adds fresh noise of
//! σ_t·sqrt(1 − e^{−2h}) ([`DpmPp2M::sde`]).

use candle_core::Tensor;

use super::kdiff::noise_like;
use super::ops::{add, mul, sub};
use super::vp::{lambda, vp_sampler_basics, VpSteps};
use super::{check_step, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// The DPM-Solver++(2M) sampler.
#[derive(Debug, Clone)]
pub struct DpmPp2M {
    vp: VpSteps,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    heun: bool,
    /// `sde-dpmsolver++`: the stochastic update with fresh noise every step.
    sde: bool,
    /// The previous data prediction x₀ (for the second-order update).
    previous: Option<Tensor>,
    /// How many steps have run (capped at 2): the solver's order ramps up with it.
    lower_order_nums: usize,
}

impl DpmPp2M {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        Ok(Self {
            vp: VpSteps::dpm_solver(cfg, steps, false)?,
            lower_order_final: cfg.lower_order_final,
            euler_at_final: cfg.euler_at_final,
            final_sigma_zero: !cfg.final_sigma_min,
            heun: cfg.heun,
            sde: false,
            previous: None,
            lower_order_nums: 0,
        })
    }

    /// `algorithm_type="sde-dpmsolver++"`: `steps` steps of DPM-Solver++ (2M) SDE, with the
    /// config's `solver_type` ("midpoint", or "heun" for A1111's "DPM++ 2M SDE Heun").
    pub fn sde(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        Ok(Self {
            sde: true,
            ..Self::new(cfg, steps)?
        })
    }
}

impl Sampler for DpmPp2M {
    vp_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.vp.timesteps.len())?;
        let n = self.vp.timesteps.len();
        let short = self.lower_order_final && n < 15;
        let lower_order_final =
            step == n - 1 && (self.euler_at_final || short || self.final_sigma_zero);
        let x0 = self.vp.data_prediction(model_output, sample, step)?;
        let previous = self.previous.replace(x0.clone());

        let (alpha_t, sigma_t) = self.vp.alpha_sigma(step + 1);
        let (alpha_s0, sigma_s0) = self.vp.alpha_sigma(step);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let phi = alpha_t * ((-h).exp() - 1.0); // α_t (e^{−h} − 1)
        let scaled_sample = mul(sample, sigma_t / sigma_s0)?;

        if self.sde {
            // diffusers draws the noise on every step, the last (where σ_t = 0) included.
            let noise = noise_like(sample, rng)?;
            let decay = (-2.0 * h).exp(); // e^{−2h}
            let scaled_sample = mul(sample, sigma_t / sigma_s0 * (-h).exp())?;
            let data_weight = alpha_t * (1.0 - decay);
            let mut prev = add(&scaled_sample, &mul(&x0, data_weight)?)?;
            if let Some(m1) = previous.filter(|_| self.lower_order_nums >= 1 && !lower_order_final)
            {
                let (alpha_s1, sigma_s1) = self.vp.alpha_sigma(step - 1);
                let h_0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
                let d1 = mul(&sub(&x0, &m1)?, 1.0 / (h_0 / h))?;
                let c = if self.heun {
                    alpha_t * ((1.0 - decay) / (-2.0 * h) + 1.0)
                } else {
                    0.5 * data_weight
                };
                prev = add(&prev, &mul(&d1, c)?)?;
            }
            let prev = add(&prev, &mul(&noise, sigma_t * (1.0 - decay).sqrt())?)?;
            if self.lower_order_nums < 2 {
                self.lower_order_nums += 1;
            }
            return Ok(prev);
        }
        let prev = match previous {
            Some(m1) if self.lower_order_nums >= 1 && !lower_order_final => {
                // Second order: D1 = (m0 − m1) / r0, r0 = h_prev / h.
                let (alpha_s1, sigma_s1) = self.vp.alpha_sigma(step - 1);
                let h_0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
                let r0 = h_0 / h;
                let d1 = mul(&sub(&x0, &m1)?, 1.0 / r0)?;
                let first = sub(&scaled_sample, &mul(&x0, phi)?)?;
                if self.heun {
                    let c = alpha_t * (((-h).exp() - 1.0) / h + 1.0);
                    add(&first, &mul(&d1, c)?)?
                } else {
                    sub(&first, &mul(&d1, 0.5 * phi)?)?
                }
            }
            _ => sub(&scaled_sample, &mul(&x0, phi)?)?,
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }

    fn reset(&mut self) {
        self.previous = None;
        self.lower_order_nums = 0;
    }

    fn kind(&self) -> SamplerKind {
        match (self.sde, self.heun) {
            (false, _) => SamplerKind::DpmPp2M,
            (true, false) => SamplerKind::DpmPp2MSde,
            (true, true) => SamplerKind::DpmPp2MSdeHeun,
        }
    }
}
