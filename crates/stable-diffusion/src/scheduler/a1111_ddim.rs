//! AUTOMATIC1111's "DDIM" and "PLMS" (its `sd_samplers_timesteps_impl`), on the grid of
//! [`super::a1111_timesteps`].
//!
//! Both visit `grid[m−1], …, grid[1]` (one call fewer than the grid has timesteps) and step from
//! `grid[k]` to `grid[k−1]`, so a run ends at ᾱ of `grid[0]` rather than at a clean sample:
//!
//! ```text
//! x₀ = (x − sqrt(1 − ᾱ_k)·ε) / sqrt(ᾱ_k)
//! DDIM:  x ← sqrt(ᾱ_{k−1})·x₀ + sqrt(1 − ᾱ_{k−1} − σ²)·ε + σ·z,
//!        σ = η·sqrt((1 − ᾱ_{k−1}) / (1 − ᾱ_k) · (1 − ᾱ_k / ᾱ_{k−1}))   (z drawn every step)
//! PLMS:  the same jump with η = 0 on a combined ε′: the first step averages ε at grid[k] and
//!        at grid[k−1] after a trial jump (a second model call); later steps use
//!        Adams–Bashforth of order 2, 3, 4 over the previous steps' ε:
//!        (3ε − ε₁)/2,  (23ε − 16ε₁ + 5ε₂)/12,  (55ε − 59ε₁ + 37ε₂ − 9ε₃)/24
//! ```

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::{noise_like, KSettings};
use super::ops::{add, div, mul, sub};
use crate::rng::NoiseSource;
use crate::Result;

/// The grid positions a run over `m` timesteps visits, in order: `m−1` down to 1.
fn visited(m: usize) -> impl Iterator<Item = usize> {
    (1..m).rev()
}

/// ᾱ at grid position `k` and at the one below it.
fn alphas(table: &[f32], grid: &[usize], k: usize) -> (f32, f32) {
    (table[grid[k]], table[grid[k - 1]])
}

/// The estimate of the clean sample, `(x − sqrt(1 − ᾱ)·ε) / sqrt(ᾱ)`.
fn clean(x: &Tensor, eps: &Tensor, alpha: f32) -> Result<Tensor> {
    div(&sub(x, &mul(eps, (1.0 - alpha).sqrt())?)?, alpha.sqrt())
}

/// A1111's DDIM with noise amount η (`settings.eta`).
pub(crate) fn sample_ddim(
    model: &mut Denoiser<'_>,
    x: Tensor,
    grid: &[usize],
    _img2img: bool,
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    ddim_loop(model, x, grid, rng, settings.eta, |model, x, t| {
        let eps = model.eps(x, t)?;
        Ok((eps.clone(), eps))
    })
}

/// DDIM's loop with η = `eta` over `grid`; `predict` gives, for the sample and a timestep, the
/// ε of the clean-sample estimate and the ε of the direction back to the noise level (the
/// same ε for DDIM; CFG++ takes the unconditional one for the direction).
pub(super) fn ddim_loop(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    grid: &[usize],
    rng: &mut dyn NoiseSource,
    eta: f32,
    mut predict: impl FnMut(&mut Denoiser<'_>, &Tensor, f64) -> Result<(Tensor, Tensor)>,
) -> Result<Tensor> {
    let table = model.alphas_cumprod().to_vec();
    for (step, k) in visited(grid.len()).enumerate() {
        let (eps, eps_direction) = predict(model, &x, grid[k] as f64)?;
        let (a_t, a_prev) = alphas(&table, grid, k);
        let (a64, prev64) = (f64::from(a_t), f64::from(a_prev));
        let sigma =
            (f64::from(eta) * ((1.0 - prev64) / (1.0 - a64) * (1.0 - a64 / prev64)).sqrt()) as f32;
        let x0 = clean(&x, &eps, a_t)?;
        let direction = mul(&eps_direction, (1.0 - a_prev - sigma * sigma).sqrt())?;
        // A1111 draws the noise even when η = 0 (it keeps the random stream's position).
        let noise = noise_like(&x, rng)?;
        x = add(
            &add(&mul(&x0, a_prev.sqrt())?, &direction)?,
            &mul(&noise, sigma)?,
        )?;
        model.step_done(step, &x, Some(&x0))?;
    }
    Ok(x)
}

/// The deterministic jump from grid position `k` to `k − 1` with ε′ = `eps`.
fn jump(table: &[f32], grid: &[usize], x: &Tensor, eps: &Tensor, k: usize) -> Result<Tensor> {
    let (a_t, a_prev) = alphas(table, grid, k);
    let x0 = clean(x, eps, a_t)?;
    add(&mul(&x0, a_prev.sqrt())?, &mul(eps, (1.0 - a_prev).sqrt())?)
}

/// The Adams–Bashforth combination of `eps` with the previous steps' ε (oldest first).
fn combined(eps: &Tensor, h: &[Tensor]) -> Result<Tensor> {
    let n = h.len();
    let term = |t: &Tensor, c: f32| mul(t, c);
    match n {
        1 => div(&sub(&term(eps, 3.0)?, &h[0])?, 2.0),
        2 => div(
            &add(
                &sub(&term(eps, 23.0)?, &term(&h[1], 16.0)?)?,
                &term(&h[0], 5.0)?,
            )?,
            12.0,
        ),
        _ => div(
            &sub(
                &add(
                    &sub(&term(eps, 55.0)?, &term(&h[n - 1], 59.0)?)?,
                    &term(&h[n - 2], 37.0)?,
                )?,
                &term(&h[n - 3], 9.0)?,
            )?,
            24.0,
        ),
    }
}

/// A1111's PLMS: the first step averages ε at both ends of a trial jump (two model calls),
/// later steps combine ε with up to three earlier ones.
pub(crate) fn sample_plms(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    grid: &[usize],
    _img2img: bool,
    _rng: &mut dyn NoiseSource,
    _settings: &KSettings,
) -> Result<Tensor> {
    let table = model.alphas_cumprod().to_vec();
    // ε of the previous steps, most recent last (at most three).
    let mut history: Vec<Tensor> = Vec::new();
    for (step, k) in visited(grid.len()).enumerate() {
        let eps = model.eps(&x, grid[k] as f64)?;
        x = if step == 0 {
            let ahead = jump(&table, grid, &x, &eps, k)?;
            let eps_ahead = model.eps(&ahead, grid[k - 1] as f64)?;
            let averaged = div(&add(&eps, &eps_ahead)?, 2.0)?;
            let next = jump(&table, grid, &x, &averaged, k)?;
            history.push(eps);
            next
        } else {
            let next = jump(&table, grid, &x, &combined(&eps, &history)?, k)?;
            history.push(eps);
            if history.len() > 3 {
                history.remove(0);
            }
            next
        };
        model.step_done(step, &x, None)?;
    }
    Ok(x)
}
