//! k-diffusion's DPM-Solver++ samplers in the sigma parametrisation, time t = −log σ:
//! `sample_dpmpp_2m` ("DPM++ 2M"), `sample_dpmpp_2s_ancestral` ("DPM++ 2S a"),
//! `sample_dpmpp_sde` ("DPM++ SDE"), `sample_dpmpp_2m_sde` ("DPM++ 2M SDE", midpoint or Heun)
//! and `sample_dpmpp_3m_sde` ("DPM++ 3M SDE").
//!
//! The stochastic ones draw i.i.d. N(0, 1) noise from the request's generator where k-diffusion
//! (and A1111) use a Brownian tree by default: same per-step statistics, different values.

use candle_core::Tensor;

use super::kdiff::{add_noise_scaled, get_ancestral_step, sigma_fn, t_fn, to_d, KAlgorithm};
use super::ops::{add, mul, sub};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// The DPM-Solver++ first-order update from t to t_next: (σ_next/σ)·x − expm1(−h)·denoised.
fn first_order(x: &Tensor, denoised: &Tensor, t: f32, t_next: f32) -> Result<Tensor> {
    let h = t_next - t;
    sub(
        &mul(x, sigma_fn(t_next) / sigma_fn(t))?,
        &mul(denoised, (-h).exp_m1())?,
    )
}

fn missing_first_stage() -> Error {
    Error::invalid("step", "a second evaluation came without the first")
}

/// DPM-Solver++(2M): second-order multistep on the denoised estimates.
pub(crate) struct KDpmPp2M {
    old_denoised: Option<Tensor>,
}

impl KDpmPp2M {
    /// A fresh solver.
    pub fn new() -> Self {
        Self { old_denoised: None }
    }
}

impl KAlgorithm for KDpmPp2M {
    fn advance(
        &mut self,
        sigmas: &[f32],
        i: usize,
        _stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let (t, t_next) = (t_fn(sigmas[i]), t_fn(sigmas[i + 1]));
        let h = t_next - t;
        let old = self.old_denoised.replace(denoised.clone());
        match old {
            Some(old) if sigmas[i + 1] != 0.0 => {
                let h_last = t - t_fn(sigmas[i - 1]);
                let r = h_last / h;
                let w = 1.0 / (2.0 * r);
                let denoised_d = sub(&mul(denoised, 1.0 + w)?, &mul(&old, w)?)?;
                first_order(x, &denoised_d, t, t_next)
            }
            _ => first_order(x, denoised, t, t_next),
        }
    }

    fn reset(&mut self) {
        self.old_denoised = None;
    }
}

/// DPM-Solver++(2S) ancestral: a single-step second-order update towards σ_down through the
/// midpoint in t, then fresh noise of σ_up.
pub(crate) struct KDpmPp2SAncestral {
    pub eta: f32,
    pub s_noise: f32,
    start: Option<Tensor>,
}

impl KDpmPp2SAncestral {
    /// The sampler with the given eta and noise scale.
    pub fn new(eta: f32, s_noise: f32) -> Self {
        Self {
            eta,
            s_noise,
            start: None,
        }
    }

    /// (t, t_next, s): the times of σ, σ_down and their midpoint.
    fn times(sigma: f32, sigma_down: f32) -> (f32, f32, f32) {
        let (t, t_next) = (t_fn(sigma), t_fn(sigma_down));
        (t, t_next, t + 0.5 * (t_next - t))
    }
}

impl KAlgorithm for KDpmPp2SAncestral {
    fn eval_sigmas(&self, sigmas: &[f32], i: usize) -> Vec<f32> {
        let (sigma_down, _) = get_ancestral_step(sigmas[i], sigmas[i + 1], self.eta);
        if sigma_down == 0.0 {
            return vec![sigmas[i]];
        }
        let (_, _, s) = Self::times(sigmas[i], sigma_down);
        vec![sigmas[i], sigma_fn(s)]
    }

    fn advance(
        &mut self,
        sigmas: &[f32],
        i: usize,
        stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let (sigma_down, sigma_up) = get_ancestral_step(sigma, sigma_next, self.eta);
        let x = if stage == 0 {
            if sigma_down != 0.0 {
                let (t, _, s) = Self::times(sigma, sigma_down);
                self.start = Some(x.clone());
                return first_order(x, denoised, t, s);
            }
            let d = to_d(x, denoised, sigma)?;
            add(x, &mul(&d, sigma_down - sigma)?)?
        } else {
            let start = self.start.take().ok_or_else(missing_first_stage)?;
            let (t, t_next, _) = Self::times(sigma, sigma_down);
            first_order(&start, denoised, t, t_next)?
        };
        if sigma_next > 0.0 {
            add_noise_scaled(&x, rng, self.s_noise * sigma_up)
        } else {
            Ok(x)
        }
    }

    fn reset(&mut self) {
        self.start = None;
    }
}

/// DPM-Solver++ (stochastic, "DPM++ SDE"): two stages per step with noise after each.
pub(crate) struct KDpmPpSde {
    pub eta: f32,
    pub s_noise: f32,
    /// The midpoint ratio r (1/2).
    pub r: f32,
    start: Option<(Tensor, Tensor)>,
}

impl KDpmPpSde {
    /// The sampler with the given eta and noise scale, r = 1/2.
    pub fn new(eta: f32, s_noise: f32) -> Self {
        Self {
            eta,
            s_noise,
            r: 0.5,
            start: None,
        }
    }

    /// (t, t_next, s).
    fn times(&self, sigma: f32, sigma_next: f32) -> (f32, f32, f32) {
        let (t, t_next) = (t_fn(sigma), t_fn(sigma_next));
        (t, t_next, t + (t_next - t) * self.r)
    }
}

impl KAlgorithm for KDpmPpSde {
    fn eval_sigmas(&self, sigmas: &[f32], i: usize) -> Vec<f32> {
        if sigmas[i + 1] == 0.0 {
            return vec![sigmas[i]];
        }
        let (_, _, s) = self.times(sigmas[i], sigmas[i + 1]);
        vec![sigmas[i], sigma_fn(s)]
    }

    fn advance(
        &mut self,
        sigmas: &[f32],
        i: usize,
        stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        if sigma_next == 0.0 {
            let d = to_d(x, denoised, sigma)?;
            return add(x, &mul(&d, sigma_next - sigma)?);
        }
        let (t, t_next, s) = self.times(sigma, sigma_next);
        if stage == 0 {
            let (sd, su) = get_ancestral_step(sigma_fn(t), sigma_fn(s), self.eta);
            let s_ = t_fn(sd);
            let x_2 = sub(
                &mul(x, sigma_fn(s_) / sigma_fn(t))?,
                &mul(denoised, (t - s_).exp_m1())?,
            )?;
            self.start = Some((x.clone(), denoised.clone()));
            return add_noise_scaled(&x_2, rng, self.s_noise * su);
        }
        let (start, denoised_1) = self.start.take().ok_or_else(missing_first_stage)?;
        let (sd, su) = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), self.eta);
        let t_next_ = t_fn(sd);
        let fac = 1.0 / (2.0 * self.r);
        let denoised_d = add(&mul(&denoised_1, 1.0 - fac)?, &mul(denoised, fac)?)?;
        let x = sub(
            &mul(&start, sigma_fn(t_next_) / sigma_fn(t))?,
            &mul(&denoised_d, (t - t_next_).exp_m1())?,
        )?;
        add_noise_scaled(&x, rng, self.s_noise * su)
    }

    fn reset(&mut self) {
        self.start = None;
    }
}

/// DPM-Solver++(2M) SDE: the 2M update with the noise of an SDE step (η = 1 by default).
pub(crate) struct KDpmPp2MSde {
    pub eta: f32,
    pub s_noise: f32,
    /// Heun-type second-order correction instead of the midpoint one.
    pub heun: bool,
    old: Option<(Tensor, f32)>,
}

impl KDpmPp2MSde {
    /// The sampler with the given settings.
    pub fn new(eta: f32, s_noise: f32, heun: bool) -> Self {
        Self {
            eta,
            s_noise,
            heun,
            old: None,
        }
    }
}

impl KAlgorithm for KDpmPp2MSde {
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
        if sigma_next == 0.0 {
            self.old = None;
            return Ok(denoised.clone());
        }
        let (t, s) = (-sigma.ln(), -sigma_next.ln());
        let h = s - t;
        let eta_h = self.eta * h;
        let phi = -(-h - eta_h).exp_m1();
        let mut next = add(
            &mul(x, sigma_next / sigma * (-eta_h).exp())?,
            &mul(denoised, phi)?,
        )?;
        if let Some((old_denoised, h_last)) = &self.old {
            let r = h_last / h;
            let diff = sub(denoised, old_denoised)?;
            let c = if self.heun {
                (phi / (-h - eta_h) + 1.0) * (1.0 / r)
            } else {
                0.5 * phi * (1.0 / r)
            };
            next = add(&next, &mul(&diff, c)?)?;
        }
        if self.eta != 0.0 {
            let scale = sigma_next * (-(-2.0 * eta_h).exp_m1()).sqrt() * self.s_noise;
            next = add_noise_scaled(&next, rng, scale)?;
        }
        self.old = Some((denoised.clone(), h));
        Ok(next)
    }

    fn reset(&mut self) {
        self.old = None;
    }
}

/// DPM-Solver++(3M) SDE: third-order multistep with SDE noise.
pub(crate) struct KDpmPp3MSde {
    pub eta: f32,
    pub s_noise: f32,
    /// (denoised, h) of the last two steps, newest first.
    history: Vec<(Tensor, f32)>,
}

impl KDpmPp3MSde {
    /// The sampler with the given settings.
    pub fn new(eta: f32, s_noise: f32) -> Self {
        Self {
            eta,
            s_noise,
            history: Vec::new(),
        }
    }
}

impl KAlgorithm for KDpmPp3MSde {
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
        if sigma_next == 0.0 {
            return Ok(denoised.clone());
        }
        let (t, s) = (-sigma.ln(), -sigma_next.ln());
        let h = s - t;
        let h_eta = h * (self.eta + 1.0);
        let mut next = add(
            &mul(x, (-h_eta).exp())?,
            &mul(denoised, -(-h_eta).exp_m1())?,
        )?;
        let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
        match self.history.as_slice() {
            [(denoised_1, h_1), (denoised_2, h_2), ..] => {
                let (r0, r1) = (h_1 / h, h_2 / h);
                let d1_0 = super::ops::div(&sub(denoised, denoised_1)?, r0)?;
                let d1_1 = super::ops::div(&sub(denoised_1, denoised_2)?, r1)?;
                let d1 = add(&d1_0, &mul(&sub(&d1_0, &d1_1)?, r0 / (r0 + r1))?)?;
                let d2 = super::ops::div(&sub(&d1_0, &d1_1)?, r0 + r1)?;
                let phi_3 = phi_2 / h_eta - 0.5;
                next = sub(&add(&next, &mul(&d1, phi_2)?)?, &mul(&d2, phi_3)?)?;
            }
            [(denoised_1, h_1)] => {
                let r = h_1 / h;
                let d = super::ops::div(&sub(denoised, denoised_1)?, r)?;
                next = add(&next, &mul(&d, phi_2)?)?;
            }
            [] => {}
        }
        if self.eta != 0.0 {
            let scale = sigma_next * (-(-2.0 * h * self.eta).exp_m1()).sqrt() * self.s_noise;
            next = add_noise_scaled(&next, rng, scale)?;
        }
        self.history.insert(0, (denoised.clone(), h));
        self.history.truncate(2);
        Ok(next)
    }

    fn reset(&mut self) {
        self.history.clear();
    }
}
