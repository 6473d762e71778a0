//! k-diffusion's `sample_euler` (with Karras's churn) and `sample_euler_ancestral`
//! (A1111's "Euler" and "Euler a").

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::{add_noise_scaled, get_ancestral_step, to_d, KSettings};
use super::ops::{add, mul};
use crate::rng::NoiseSource;
use crate::Result;

/// Euler steps on the probability-flow ODE, after the churn: `x ← x + d · (σ_next − σ̂)`.
pub(crate) fn sample_euler(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    let churn = settings.churn;
    for i in 0..sigmas.len() - 1 {
        x = churn.apply(sigmas, i, &x, rng)?;
        let sigma_hat = churn.sigma_hat(sigmas, i);
        let denoised = model.denoise_step(i, &x, sigma_hat)?;
        let d = to_d(&x, &denoised, sigma_hat)?;
        x = add(&x, &mul(&d, sigmas[i + 1] - sigma_hat)?)?;
    }
    Ok(x)
}

/// Euler ancestral: an Euler step down to σ_down, then fresh noise of σ_up.
pub(crate) fn sample_euler_ancestral(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = model.denoise_step(i, &x, sigma)?;
        let (sigma_down, sigma_up) = get_ancestral_step(sigma, sigma_next, settings.eta);
        let d = to_d(&x, &denoised, sigma)?;
        x = add(&x, &mul(&d, sigma_down - sigma)?)?;
        if sigma_next > 0.0 {
            x = add_noise_scaled(&x, rng, settings.s_noise() * sigma_up)?;
        }
    }
    Ok(x)
}
