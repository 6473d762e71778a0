//! k-diffusion's samplers (`k_diffusion.sampling.sample_*`) as AUTOMATIC1111 drives them: each
//! is a loop over a sigma list around the [`Denoiser`] (D(x, σ), the model wrapped as A1111's
//! `CompVisDenoiser` wraps it), as k-diffusion's `sampling.py` reads. The samplers work on the
//! unscaled sample x (variance σ² + 1), walk a sigma list from [`super::sigmas`] (for img2img,
//! the part from the start; for a refiner handoff, the part up to or from the switch) and draw
//! noise only from the generator handed to them. This file holds what they share.

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::ops::{add, mul, sub};
use crate::rng::NoiseSource;
use crate::Result;

/// k-diffusion's `to_d`: the ODE's direction `(x − denoised) / σ`.
pub(crate) fn to_d(x: &Tensor, denoised: &Tensor, sigma: f32) -> Result<Tensor> {
    super::ops::div(&sub(x, denoised)?, sigma)
}

/// k-diffusion's `get_ancestral_step`: the deterministic target σ_down and the fresh noise σ_up
/// of a step from `sigma_from` to `sigma_to`, with σ_down² + σ_up² = σ_to² (`eta` scales σ_up).
pub(crate) fn get_ancestral_step(sigma_from: f32, sigma_to: f32, eta: f32) -> (f32, f32) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
    let sigma_up = sigma_to.min(eta * (to2 * (from2 - to2) / from2).sqrt());
    let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

/// The log-SNR-like time of DPM-Solver: t = −log σ.
pub(crate) fn t_fn(sigma: f32) -> f32 {
    -sigma.ln()
}

/// The inverse of [`t_fn`]: σ = e^{−t}.
pub(crate) fn sigma_fn(t: f32) -> f32 {
    (-t).exp()
}

/// The geometric midpoint of two sigmas, as `exp(lerp(log a, log b, 1/2))` in torch.
pub(crate) fn log_midpoint(a: f32, b: f32) -> f32 {
    let (la, lb) = (a.ln(), b.ln());
    // torch.lerp with weight >= 0.5 counts back from the end.
    (lb - (lb - la) * 0.5).exp()
}

/// Draws N(0, 1) noise shaped like `x` (k-diffusion's default noise sampler, `randn_like`).
pub(crate) fn noise_like(x: &Tensor, rng: &mut dyn NoiseSource) -> Result<Tensor> {
    Ok(rng.randn(x.dims(), x.device())?.to_dtype(x.dtype())?)
}

/// `x + noise · scale` with fresh noise.
pub(crate) fn add_noise_scaled(
    x: &Tensor,
    rng: &mut dyn NoiseSource,
    scale: f32,
) -> Result<Tensor> {
    let noise = noise_like(x, rng)?;
    add(x, &mul(&noise, scale)?)
}

/// Karras's "churn" (Algorithm 2): before step i, raise the noise level from σ to
/// σ̂ = σ·(1 + γ) by adding fresh noise, γ = min(s_churn / steps, √2 − 1) inside [s_tmin, s_tmax].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// Total churn over the run (0: none, the default).
    pub s_churn: f32,
    /// Lowest sigma that is churned.
    pub s_tmin: f32,
    /// Highest sigma that is churned.
    pub s_tmax: f32,
    /// Scale of the added noise.
    pub s_noise: f32,
}

impl Churn {
    /// γ for a step at `sigma` in a run of `steps` steps.
    pub fn gamma(&self, sigma: f32, steps: usize) -> f32 {
        if self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / steps as f32).min(std::f32::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }

    /// σ̂ of step `i` of `sigmas`.
    pub fn sigma_hat(&self, sigmas: &[f32], i: usize) -> f32 {
        sigmas[i] * (self.gamma(sigmas[i], sigmas.len() - 1) + 1.0)
    }

    /// Adds the churn noise before step `i` (k-diffusion draws it every step once churn is on).
    pub fn apply(
        &self,
        sigmas: &[f32],
        i: usize,
        x: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        if self.s_churn <= 0.0 {
            return Ok(x.clone());
        }
        let eps = mul(&noise_like(x, rng)?, self.s_noise)?;
        let sigma = sigmas[i];
        let gamma = self.gamma(sigma, sigmas.len() - 1);
        if gamma > 0.0 {
            let sigma_hat = sigma * (gamma + 1.0);
            add(
                x,
                &mul(&eps, (sigma_hat * sigma_hat - sigma * sigma).sqrt())?,
            )
        } else {
            Ok(x.clone())
        }
    }
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f32::INFINITY,
            s_noise: 1.0,
        }
    }
}

/// What a k-diffusion sampler is tuned by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KSettings {
    /// The ancestral / SDE noise amount (k-diffusion's `eta`).
    pub eta: f32,
    /// Karras's churn, and the scale of all fresh noise (`s_noise`).
    pub churn: Churn,
}

impl KSettings {
    /// The scale of fresh noise (k-diffusion's `s_noise`).
    pub fn s_noise(&self) -> f32 {
        self.churn.s_noise
    }
}

/// A k-diffusion sampler: walks `sigmas` (largest first) from the sample `x`, calling the
/// denoiser and drawing fresh noise from the generator, and returns the final sample.
pub type SigmaSampler =
    fn(&mut Denoiser<'_>, Tensor, &[f32], &mut dyn NoiseSource, &KSettings) -> Result<Tensor>;
