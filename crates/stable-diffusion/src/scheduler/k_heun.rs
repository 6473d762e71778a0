//! k-diffusion's second-order samplers with one extra model evaluation per step:
//! `sample_heun` (A1111 "Heun"), `sample_dpm_2` ("DPM2") and `sample_dpm_2_ancestral`
//! ("DPM2 a"). The last step (to σ = 0) is a plain Euler step.

use candle_core::Tensor;

use super::kdiff::{add_noise_scaled, get_ancestral_step, log_midpoint, to_d, Churn, KAlgorithm};
use super::ops::{add, mul};
use crate::rng::NoiseSource;
use crate::{Error, Result};

fn missing_first_stage() -> Error {
    Error::invalid("step", "a second evaluation came without the first")
}

/// One stage of a DPM2 step from σ `from` to σ `to` through their log midpoint: stage 0 takes
/// the Euler step to the midpoint (straight to `to` when it is 0, a one-stage step) and keeps
/// the start in `start`; stage 1 steps from the start to `to` with the midpoint's direction.
fn dpm2_stage(
    start: &mut Option<Tensor>,
    stage: usize,
    x: &Tensor,
    denoised: &Tensor,
    from: f32,
    to: f32,
) -> Result<Tensor> {
    if stage == 0 {
        let d = to_d(x, denoised, from)?;
        if to == 0.0 {
            return add(x, &mul(&d, to - from)?);
        }
        *start = Some(x.clone());
        return add(x, &mul(&d, log_midpoint(from, to) - from)?);
    }
    let first = start.take().ok_or_else(missing_first_stage)?;
    let d_2 = to_d(x, denoised, log_midpoint(from, to))?;
    add(&first, &mul(&d_2, to - from)?)
}

/// What the first evaluation of a two-stage step leaves for the second.
struct FirstStage {
    /// The sample at the step's start.
    x: Tensor,
    /// The direction there (Heun averages it with the second one).
    d: Tensor,
}

/// Heun's method (Karras et al. 2022, Algorithm 2): Euler to σ_next, re-evaluate there, and
/// step again from the start with the average direction.
pub(crate) struct KHeun {
    pub churn: Churn,
    first: Option<FirstStage>,
}

impl KHeun {
    /// Heun with the given churn.
    pub fn new(churn: Churn) -> Self {
        Self { churn, first: None }
    }
}

impl KAlgorithm for KHeun {
    fn eval_sigmas(&self, sigmas: &[f32], i: usize) -> Vec<f32> {
        let sigma_hat = self.churn.sigma_hat(sigmas, i);
        if sigmas[i + 1] == 0.0 {
            vec![sigma_hat]
        } else {
            vec![sigma_hat, sigmas[i + 1]]
        }
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
        stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma_hat = self.churn.sigma_hat(sigmas, i);
        let sigma_next = sigmas[i + 1];
        let dt = sigma_next - sigma_hat;
        if stage == 0 {
            let d = to_d(x, denoised, sigma_hat)?;
            let euler = add(x, &mul(&d, dt)?)?;
            if sigma_next != 0.0 {
                self.first = Some(FirstStage { x: x.clone(), d });
            }
            return Ok(euler);
        }
        let first = self.first.take().ok_or_else(missing_first_stage)?;
        let d_2 = to_d(x, denoised, sigma_next)?;
        let d_prime = mul(&add(&first.d, &d_2)?, 0.5)?;
        add(&first.x, &mul(&d_prime, dt)?)
    }

    fn reset(&mut self) {
        self.first = None;
    }
}

/// DPM2: evaluate again at the geometric midpoint of σ̂ and σ_next, step with that direction.
pub(crate) struct KDpm2 {
    pub churn: Churn,
    start: Option<Tensor>,
}

impl KDpm2 {
    /// DPM2 with the given churn.
    pub fn new(churn: Churn) -> Self {
        Self { churn, start: None }
    }
}

impl KAlgorithm for KDpm2 {
    fn eval_sigmas(&self, sigmas: &[f32], i: usize) -> Vec<f32> {
        let sigma_hat = self.churn.sigma_hat(sigmas, i);
        if sigmas[i + 1] == 0.0 {
            vec![sigma_hat]
        } else {
            vec![sigma_hat, log_midpoint(sigma_hat, sigmas[i + 1])]
        }
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
        stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma_hat = self.churn.sigma_hat(sigmas, i);
        dpm2_stage(
            &mut self.start,
            stage,
            x,
            denoised,
            sigma_hat,
            sigmas[i + 1],
        )
    }

    fn reset(&mut self) {
        self.start = None;
    }
}

/// DPM2 ancestral: the DPM2 step aims at σ_down, then fresh noise of σ_up.
pub(crate) struct KDpm2Ancestral {
    pub eta: f32,
    pub s_noise: f32,
    start: Option<Tensor>,
}

impl KDpm2Ancestral {
    /// DPM2 a with the given eta and noise scale.
    pub fn new(eta: f32, s_noise: f32) -> Self {
        Self {
            eta,
            s_noise,
            start: None,
        }
    }
}

impl KAlgorithm for KDpm2Ancestral {
    fn eval_sigmas(&self, sigmas: &[f32], i: usize) -> Vec<f32> {
        let (sigma_down, _) = get_ancestral_step(sigmas[i], sigmas[i + 1], self.eta);
        if sigma_down == 0.0 {
            vec![sigmas[i]]
        } else {
            vec![sigmas[i], log_midpoint(sigmas[i], sigma_down)]
        }
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
        let sigma = sigmas[i];
        let (sigma_down, sigma_up) = get_ancestral_step(sigma, sigmas[i + 1], self.eta);
        let x = dpm2_stage(&mut self.start, stage, x, denoised, sigma, sigma_down)?;
        if stage == 0 {
            // The midpoint, or (σ_down = 0, so σ_up = 0 too) the finished sample.
            return Ok(x);
        }
        add_noise_scaled(&x, rng, self.s_noise * sigma_up)
    }

    fn reset(&mut self) {
        self.start = None;
    }
}
