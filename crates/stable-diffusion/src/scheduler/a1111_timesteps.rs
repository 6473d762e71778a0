//! AUTOMATIC1111's own timestep samplers, "DDIM", "DDIM CFG++", "PLMS" and "UniPC" (its
//! `sd_samplers_timesteps`): they walk integer training timesteps, not a sigma schedule, so A1111's
//! schedule types do not apply to them.
//!
//! A1111 plans the ascending grid `clip(range(0, T, T / steps) + 1, 0, T − 1)` (integer
//! division, so 7 steps plan 8 timesteps), gives the model the unscaled sample, and turns a
//! v-prediction output into ε with ᾱ at `int(t)`:
//!
//! ```text
//! ε = sqrt(ᾱ_int(t)) · v + sqrt(1 − ᾱ_int(t)) · x
//! ```
//!
//! img2img (A1111's default, `img2img_fix_steps` off): `t_enc = int(min(strength, 0.999) ·
//! steps)`, the clean latents are noised to ᾱ of `grid[t_enc]`, and the sampler runs on
//! `grid[..t_enc]`. Each sampler ([`super::a1111_ddim`], [`super::a1111_ddim_cfgpp`],
//! [`super::a1111_unipc`]) walks the grid it is given; the [`Denoiser`] turns the model's output
//! into ε.

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::KSettings;
use crate::rng::NoiseSource;
use crate::Result;

/// The integer timesteps A1111 plans for `steps` steps of a `train`-step model, ascending.
pub fn a1111_grid(steps: usize, train: usize) -> Vec<usize> {
    let stride = (train / steps.max(1)).max(1);
    (0..train)
        .step_by(stride)
        .map(|t| (t + 1).min(train - 1))
        .collect()
}

/// How many grid timesteps an img2img run at `strength` uses (A1111's `t_enc`); the clean
/// latents are noised to ᾱ of `grid[t_enc]` and the sampler runs on `grid[..t_enc]`.
pub fn img2img_t_enc(steps: usize, strength: f64, grid_len: usize) -> usize {
    ((strength.min(0.999) * steps as f64) as usize).min(grid_len.saturating_sub(1))
}

/// One of A1111's timestep samplers: walks `grid` (ascending integer timesteps) from the sample
/// `x`, calling the denoiser for ε; `img2img` says the run continues a noised image.
pub type TimestepSampler = fn(
    &mut Denoiser<'_>,
    Tensor,
    &[usize],
    bool,
    &mut dyn NoiseSource,
    &KSettings,
) -> Result<Tensor>;
