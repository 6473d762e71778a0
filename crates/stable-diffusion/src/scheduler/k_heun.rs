//! k-diffusion's second-order samplers with one extra model evaluation per step:
//! `sample_heun` (A1111 "Heun"), `sample_dpm_2` ("DPM2") and `sample_dpm_2_ancestral`
//! ("DPM2 a"). The last step (to σ = 0) is a plain Euler step.

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::{add_noise_scaled, get_ancestral_step, log_midpoint, to_d, KSettings};
use super::ops::{add, mul};
use crate::rng::NoiseSource;
use crate::Result;

/// Heun's method (Karras et al. 2022, Algorithm 2): Euler to σ_next, re-evaluate there, and
/// step again from the start with the average direction.
pub(crate) fn sample_heun(
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
        let sigma_next = sigmas[i + 1];
        let denoised = model.denoise_step(i, &x, sigma_hat)?;
        let d = to_d(&x, &denoised, sigma_hat)?;
        let dt = sigma_next - sigma_hat;
        let euler = add(&x, &mul(&d, dt)?)?;
        if sigma_next == 0.0 {
            x = euler;
            continue;
        }
        let denoised_2 = model.denoise(&euler, sigma_next)?;
        let d_2 = to_d(&euler, &denoised_2, sigma_next)?;
        let d_prime = mul(&add(&d, &d_2)?, 0.5)?;
        x = add(&x, &mul(&d_prime, dt)?)?;
    }
    Ok(x)
}

/// One DPM2 step from σ `from` to σ `to` through their log midpoint, with the denoised
/// estimate at the start already made (straight to `to` when it is 0).
fn dpm2_step(
    model: &mut Denoiser<'_>,
    x: &Tensor,
    denoised: &Tensor,
    from: f32,
    to: f32,
) -> Result<Tensor> {
    let d = to_d(x, denoised, from)?;
    if to == 0.0 {
        return add(x, &mul(&d, to - from)?);
    }
    let sigma_mid = log_midpoint(from, to);
    let x_2 = add(x, &mul(&d, sigma_mid - from)?)?;
    let denoised_2 = model.denoise(&x_2, sigma_mid)?;
    let d_2 = to_d(&x_2, &denoised_2, sigma_mid)?;
    add(x, &mul(&d_2, to - from)?)
}

/// DPM2: evaluate again at the geometric midpoint of σ̂ and σ_next, step with that direction.
pub(crate) fn sample_dpm_2(
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
        x = dpm2_step(model, &x, &denoised, sigma_hat, sigmas[i + 1])?;
    }
    Ok(x)
}

/// DPM2 ancestral: the DPM2 step aims at σ_down, then fresh noise of σ_up.
pub(crate) fn sample_dpm_2_ancestral(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let denoised = model.denoise_step(i, &x, sigma)?;
        let (sigma_down, sigma_up) = get_ancestral_step(sigma, sigmas[i + 1], settings.eta);
        x = dpm2_step(model, &x, &denoised, sigma, sigma_down)?;
        // σ_down = 0 only on the last step, where σ_up = 0 too: no noise.
        if sigma_down != 0.0 {
            x = add_noise_scaled(&x, rng, settings.s_noise() * sigma_up)?;
        }
    }
    Ok(x)
}
