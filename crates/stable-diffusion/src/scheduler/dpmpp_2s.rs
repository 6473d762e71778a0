//! DPM-Solver++(2S) (diffusers' `DPMSolverSinglestepScheduler`, `dpmsolver++`, order 2): the
//! steps are grouped in pairs; the first of a pair is a first-order step to the intermediate
//! sigma, the second uses both data predictions for a second-order step over the whole pair
//! from the pair's starting sample. With the final sigma 0, the last step is first order.
//!
//! diffusers' class has no `timestep_spacing`: its timesteps are always linspace-spaced.

use candle_core::Tensor;

use super::ops::{mul, sub};
use super::schedule::TimestepSpacing;
use super::vp::{dpm_solver_sigmas, lambda, vp_sampler_basics, VpSteps};
use super::{check_step, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// The order of each step (diffusers' `get_order_list` for order 2 with lower-order final
/// steps): `1, 2, 1, 2, …`, ending `1, 1` for an even count and `1` for an odd one.
fn order_list(steps: usize) -> Vec<usize> {
    let mut orders: Vec<usize> = if steps.is_multiple_of(2) {
        [1, 2]
            .repeat((steps / 2).saturating_sub(1))
            .into_iter()
            .chain([1, 1])
            .collect()
    } else {
        [1, 2].repeat(steps / 2).into_iter().chain([1]).collect()
    };
    orders.truncate(steps);
    if let Some(last) = orders.last_mut() {
        *last = 1;
    }
    orders
}

/// DPM-Solver++(2S) sampling.
#[derive(Debug, Clone)]
pub struct DpmPp2S {
    vp: VpSteps,
    orders: Vec<usize>,
    /// The data prediction of the previous step.
    previous: Option<Tensor>,
    /// The sample the current pair started from.
    pair_start: Option<Tensor>,
}

impl DpmPp2S {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        let linspace = ResolvedConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..cfg.clone()
        };
        let (timesteps, sigmas) = dpm_solver_sigmas(&linspace, steps, true)?;
        Ok(Self {
            orders: order_list(timesteps.len()),
            vp: VpSteps::new(timesteps, sigmas, cfg.prediction_type),
            previous: None,
            pair_start: None,
        })
    }
}

impl Sampler for DpmPp2S {
    vp_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.vp.timesteps.len())?;
        let x0 = self.vp.data_prediction(model_output, sample, step)?;
        let previous = self.previous.replace(x0.clone());
        let (alpha_t, sigma_t) = self.vp.alpha_sigma(step + 1);
        match previous {
            Some(m1) if self.orders[step] == 2 => {
                // Second order over the pair, from its start at sigmas[step − 1].
                let start = self.pair_start.clone().unwrap_or_else(|| sample.clone());
                let (alpha_s1, sigma_s1) = self.vp.alpha_sigma(step - 1);
                let (alpha_s0, sigma_s0) = self.vp.alpha_sigma(step);
                let lambda_s1 = lambda(alpha_s1, sigma_s1);
                let h = lambda(alpha_t, sigma_t) - lambda_s1;
                let h_0 = lambda(alpha_s0, sigma_s0) - lambda_s1;
                let r0 = h_0 / h;
                let d1 = mul(&sub(&x0, &m1)?, 1.0 / r0)?;
                let phi = alpha_t * ((-h).exp() - 1.0);
                sub(
                    &sub(&mul(&start, sigma_t / sigma_s1)?, &mul(&m1, phi)?)?,
                    &mul(&d1, 0.5 * phi)?,
                )
            }
            _ => {
                self.pair_start = Some(sample.clone());
                let (alpha_s, sigma_s) = self.vp.alpha_sigma(step);
                let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
                sub(
                    &mul(sample, sigma_t / sigma_s)?,
                    &mul(&x0, alpha_t * ((-h).exp() - 1.0))?,
                )
            }
        }
    }

    fn reset(&mut self) {
        self.previous = None;
        self.pair_start = None;
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::DpmPp2S
    }
}

#[cfg(test)]
mod tests {
    use super::order_list;

    #[test]
    fn pairs_end_with_first_order_steps() {
        assert_eq!(order_list(1), vec![1]);
        assert_eq!(order_list(4), vec![1, 2, 1, 1]);
        assert_eq!(order_list(5), vec![1, 2, 1, 2, 1]);
        assert_eq!(order_list(6), vec![1, 2, 1, 2, 1, 1]);
    }
}
