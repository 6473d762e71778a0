//! k-diffusion's `sample_euler` (with Karras's churn) and `sample_euler_ancestral`
//! (A1111's "Euler" and "Euler a").

use candle_core::Tensor;

use super::kdiff::{add_noise_scaled, get_ancestral_step, to_d, Churn, KAlgorithm};
use super::ops::{add, mul};
use crate::rng::NoiseSource;
use crate::Result;

/// Euler steps on the probability-flow ODE: `x ← x + d · (σ_next − σ̂)`.
pub(crate) struct KEuler {
    pub churn: Churn,
}

impl KAlgorithm for KEuler {
    fn eval_sigmas(&self, sigmas: &[f32], i: usize) -> Vec<f32> {
        vec![self.churn.sigma_hat(sigmas, i)]
    }

    fn begin_step(
        &mut self,
        sigmas: &[f32],
        i: usize,
        x: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        self.churn.apply(sigmas, i, x, rng)
    }

    fn advance(
        &mut self,
        sigmas: &[f32],
        i: usize,
        _stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma_hat = self.churn.sigma_hat(sigmas, i);
        let d = to_d(x, denoised, sigma_hat)?;
        add(x, &mul(&d, sigmas[i + 1] - sigma_hat)?)
    }

    fn reset(&mut self) {}
}

/// Euler ancestral: an Euler step down to σ_down, then fresh noise of σ_up.
pub(crate) struct KEulerAncestral {
    pub eta: f32,
    pub s_noise: f32,
}

impl KAlgorithm for KEulerAncestral {
    fn advance(
        &mut self,
        sigmas: &[f32],
        i: usize,
        _stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let (sigma_down, sigma_up) = get_ancestral_step(sigma, sigma_next, self.eta);
        let d = to_d(x, denoised, sigma)?;
        let x = add(x, &mul(&d, sigma_down - sigma)?)?;
        if sigma_next > 0.0 {
            add_noise_scaled(&x, rng, self.s_noise * sigma_up)
        } else {
            Ok(x)
        }
    }

    fn reset(&mut self) {}
}
