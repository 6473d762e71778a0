//! AUTOMATIC1111's "LCM" sampler (`sample_lcm` with its `LCMCompVisDenoiser`): each step
//! jumps to the consistency model's estimate of the clean sample, then noises it afresh to
//! the next sigma.
//!
//! The model sees the nearest timestep of LCM's 50-step grid (see
//! [`super::sigmas::ModelSigmas::lcm`]); its x₀ estimate `x − σ·ε` is blended with the sample by LCM's
//! boundary-condition scalings at `s = 10·t` (σ_data = 0.5):
//!
//! ```text
//! c_skip = σ_data² / (s² + σ_data²)     c_out = s / sqrt(s² + σ_data²)
//! x ← c_out · x₀ + c_skip · x,   then   x ← x + σ_next · z   when σ_next > 0
//! ```
//! (A1111 blends with the unscaled k-diffusion sample x; at s ≥ 190, c_skip < 1e-5.)

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::{add_noise_scaled, KSettings};
use super::ops::{add, mul};
use crate::rng::NoiseSource;
use crate::Result;

/// LCM's σ_data².
const SIGMA_DATA_SQ: f32 = 0.25;

/// A1111's LCM steps (the denoiser runs on the LCM table, [`super::sigmas::ModelSigmas::lcm`]).
pub(crate) fn sample_lcm(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    _settings: &KSettings,
) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let denoised = model.denoise_step(i, &x, sigmas[i])?;
        let s = model.sigma_to_t(sigmas[i]) * 10.0;
        let c_skip = SIGMA_DATA_SQ / (s * s + SIGMA_DATA_SQ);
        let c_out = s / (s * s + SIGMA_DATA_SQ).sqrt();
        x = add(&mul(&denoised, c_out)?, &mul(&x, c_skip)?)?;
        if sigmas[i + 1] > 0.0 {
            x = add_noise_scaled(&x, rng, sigmas[i + 1])?;
        }
    }
    Ok(x)
}
