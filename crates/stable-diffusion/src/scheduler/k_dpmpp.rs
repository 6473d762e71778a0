//! k-diffusion's DPM-Solver++ samplers in the sigma parametrisation, time t = −log σ:
//! `sample_dpmpp_2m` ("DPM++ 2M"), `sample_dpmpp_2s_ancestral` ("DPM++ 2S a"),
//! `sample_dpmpp_sde` ("DPM++ SDE"), `sample_dpmpp_2m_sde` ("DPM++ 2M SDE", midpoint or Heun)
//! and `sample_dpmpp_3m_sde` ("DPM++ 3M SDE").
//!
//! The stochastic ones draw i.i.d. N(0, 1) noise from the request's generator where k-diffusion
//! (and A1111) use a Brownian tree by default: same per-step statistics, different values.

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::{add_noise_scaled, get_ancestral_step, sigma_fn, t_fn, to_d, KSettings};
use super::ops::{add, div, mul, sub};
use crate::rng::NoiseSource;
use crate::Result;

/// The DPM-Solver++ first-order update from t to t_next: (σ_next/σ)·x − expm1(−h)·denoised.
fn first_order(x: &Tensor, denoised: &Tensor, t: f32, t_next: f32) -> Result<Tensor> {
    let h = t_next - t;
    sub(
        &mul(x, sigma_fn(t_next) / sigma_fn(t))?,
        &mul(denoised, (-h).exp_m1())?,
    )
}

/// DPM-Solver++(2M): second-order multistep on the denoised estimates.
pub(crate) fn sample_dpmpp_2m(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    _rng: &mut dyn NoiseSource,
    _settings: &KSettings,
) -> Result<Tensor> {
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let denoised = model.denoise_step(i, &x, sigmas[i])?;
        let (t, t_next) = (t_fn(sigmas[i]), t_fn(sigmas[i + 1]));
        let h = t_next - t;
        x = match &old_denoised {
            Some(old) if sigmas[i + 1] != 0.0 => {
                let h_last = t - t_fn(sigmas[i - 1]);
                let r = h_last / h;
                let w = 1.0 / (2.0 * r);
                let denoised_d = sub(&mul(&denoised, 1.0 + w)?, &mul(old, w)?)?;
                first_order(&x, &denoised_d, t, t_next)?
            }
            _ => first_order(&x, &denoised, t, t_next)?,
        };
        old_denoised = Some(denoised);
    }
    Ok(x)
}

/// DPM-Solver++(2S) ancestral: a single-step second-order update towards σ_down through the
/// midpoint in t, then fresh noise of σ_up.
pub(crate) fn sample_dpmpp_2s_ancestral(
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
        x = if sigma_down == 0.0 {
            let d = to_d(&x, &denoised, sigma)?;
            add(&x, &mul(&d, sigma_down - sigma)?)?
        } else {
            let (t, t_next) = (t_fn(sigma), t_fn(sigma_down));
            let s = t + 0.5 * (t_next - t);
            let x_2 = first_order(&x, &denoised, t, s)?;
            let denoised_2 = model.denoise(&x_2, sigma_fn(s))?;
            first_order(&x, &denoised_2, t, t_next)?
        };
        if sigma_next > 0.0 {
            x = add_noise_scaled(&x, rng, settings.s_noise() * sigma_up)?;
        }
    }
    Ok(x)
}

/// DPM-Solver++ (stochastic, "DPM++ SDE"): two stages per step, at the midpoint ratio r = ½,
/// with noise after each.
pub(crate) fn sample_dpmpp_sde(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    let (eta, s_noise, r) = (settings.eta, settings.s_noise(), 0.5f32);
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = model.denoise_step(i, &x, sigma)?;
        if sigma_next == 0.0 {
            let d = to_d(&x, &denoised, sigma)?;
            x = add(&x, &mul(&d, sigma_next - sigma)?)?;
            continue;
        }
        let (t, t_next) = (t_fn(sigma), t_fn(sigma_next));
        let s = t + (t_next - t) * r;
        // Step 1: to the midpoint s, with noise.
        let (sd, su) = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta);
        let s_ = t_fn(sd);
        let x_2 = sub(
            &mul(&x, sigma_fn(s_) / sigma_fn(t))?,
            &mul(&denoised, (t - s_).exp_m1())?,
        )?;
        let x_2 = add_noise_scaled(&x_2, rng, s_noise * su)?;
        let denoised_2 = model.denoise(&x_2, sigma_fn(s))?;
        // Step 2: to t_next with the blended estimate, with noise.
        let (sd, su) = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta);
        let t_next_ = t_fn(sd);
        let fac = 1.0 / (2.0 * r);
        let denoised_d = add(&mul(&denoised, 1.0 - fac)?, &mul(&denoised_2, fac)?)?;
        let next = sub(
            &mul(&x, sigma_fn(t_next_) / sigma_fn(t))?,
            &mul(&denoised_d, (t - t_next_).exp_m1())?,
        )?;
        x = add_noise_scaled(&next, rng, s_noise * su)?;
    }
    Ok(x)
}

/// DPM-Solver++(2M) SDE with the midpoint correction ("DPM++ 2M SDE").
pub(crate) fn sample_dpmpp_2m_sde(
    model: &mut Denoiser<'_>,
    x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    dpmpp_2m_sde(model, x, sigmas, rng, settings, false)
}

/// DPM-Solver++(2M) SDE with the Heun-type correction ("DPM++ 2M SDE Heun").
pub(crate) fn sample_dpmpp_2m_sde_heun(
    model: &mut Denoiser<'_>,
    x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    dpmpp_2m_sde(model, x, sigmas, rng, settings, true)
}

/// The 2M update with the noise of an SDE step (η = 1 by default).
fn dpmpp_2m_sde(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
    heun: bool,
) -> Result<Tensor> {
    let eta = settings.eta;
    let mut old: Option<(Tensor, f32)> = None;
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = model.denoise_step(i, &x, sigma)?;
        if sigma_next == 0.0 {
            x = denoised;
            old = None;
            continue;
        }
        let (t, s) = (-sigma.ln(), -sigma_next.ln());
        let h = s - t;
        let eta_h = eta * h;
        let phi = -(-h - eta_h).exp_m1();
        let mut next = add(
            &mul(&x, sigma_next / sigma * (-eta_h).exp())?,
            &mul(&denoised, phi)?,
        )?;
        if let Some((old_denoised, h_last)) = &old {
            let r = h_last / h;
            let diff = sub(&denoised, old_denoised)?;
            let c = if heun {
                (phi / (-h - eta_h) + 1.0) * (1.0 / r)
            } else {
                0.5 * phi * (1.0 / r)
            };
            next = add(&next, &mul(&diff, c)?)?;
        }
        if eta != 0.0 {
            let scale = sigma_next * (-(-2.0 * eta_h).exp_m1()).sqrt() * settings.s_noise();
            next = add_noise_scaled(&next, rng, scale)?;
        }
        x = next;
        old = Some((denoised, h));
    }
    Ok(x)
}

/// DPM-Solver++(3M) SDE: third-order multistep with SDE noise.
pub(crate) fn sample_dpmpp_3m_sde(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    let eta = settings.eta;
    // (denoised, h) of the last two steps, newest first.
    let mut history: Vec<(Tensor, f32)> = Vec::new();
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = model.denoise_step(i, &x, sigma)?;
        if sigma_next == 0.0 {
            x = denoised;
            continue;
        }
        let (t, s) = (-sigma.ln(), -sigma_next.ln());
        let h = s - t;
        let h_eta = h * (eta + 1.0);
        let mut next = add(
            &mul(&x, (-h_eta).exp())?,
            &mul(&denoised, -(-h_eta).exp_m1())?,
        )?;
        let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
        match history.as_slice() {
            [(denoised_1, h_1), (denoised_2, h_2), ..] => {
                let (r0, r1) = (h_1 / h, h_2 / h);
                let d1_0 = div(&sub(&denoised, denoised_1)?, r0)?;
                let d1_1 = div(&sub(denoised_1, denoised_2)?, r1)?;
                let d1 = add(&d1_0, &mul(&sub(&d1_0, &d1_1)?, r0 / (r0 + r1))?)?;
                let d2 = div(&sub(&d1_0, &d1_1)?, r0 + r1)?;
                let phi_3 = phi_2 / h_eta - 0.5;
                next = sub(&add(&next, &mul(&d1, phi_2)?)?, &mul(&d2, phi_3)?)?;
            }
            [(denoised_1, h_1)] => {
                let r = h_1 / h;
                let d = div(&sub(&denoised, denoised_1)?, r)?;
                next = add(&next, &mul(&d, phi_2)?)?;
            }
            [] => {}
        }
        if eta != 0.0 {
            let scale = sigma_next * (-(-2.0 * h * eta).exp_m1()).sqrt() * settings.s_noise();
            next = add_noise_scaled(&next, rng, scale)?;
        }
        x = next;
        history.insert(0, (denoised, h));
        history.truncate(2);
    }
    Ok(x)
}
