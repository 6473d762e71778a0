//! k-diffusion's `sample_dpm_fast` and `sample_dpm_adaptive` (A1111's "DPM fast" and "DPM
//! adaptive"): DPM-Solver's first-, second- and third-order steps in t = −log σ on the noise
//! prediction ε = (x − D(x, σ)) / σ, from σ_max down to σ_min (never to 0: the run ends on a
//! sample at σ_min, which A1111 decodes as it is).
//!
//! k-diffusion takes `sigma_min`, `sigma_max` (and for DPM fast `n`) instead of a sigma list.
//! These loops read them from the list they are handed, as A1111's img2img hands them over:
//! σ_max = `sigmas[0]`, σ_min = the last nonzero sigma, n = `sigmas.len() − 1`. For txt2img
//! A1111 passes the training table's smallest and largest sigma and n = steps instead; on the
//! full list of the "Automatic" schedule (Uniform: training timesteps T − 1 down to 0) those are
//! the same values, as they are (to rounding) for Karras, Exponential and Polyexponential, which
//! also run between the table's ends. Other schedules are taken at their word (their ends are
//! used), and img2img or a refiner handoff runs on its slice of the list. Both loops take
//! A1111's eta (1 unless set: ancestral noise) and `s_noise`.

use candle_core::Tensor;

use super::denoiser::Denoiser;
use super::kdiff::{get_ancestral_step, noise_like, sigma_fn, t_fn, KSettings};
use super::ops::{div, mul, sub};
use super::schedule::torch_linspace_f32;
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// σ_max, σ_min and the step count n that k-diffusion would be called with for `sigmas`.
fn sigma_range(sigmas: &[f32], sampler: &str) -> Result<(f32, f32, usize)> {
    let sigma_max = sigmas.first().copied().unwrap_or(0.0);
    let sigma_min = sigmas
        .iter()
        .rev()
        .copied()
        .find(|&s| s != 0.0)
        .unwrap_or(0.0);
    if !(sigma_min > 0.0 && sigma_max >= sigma_min) {
        return Err(Error::invalid(
            "sigmas",
            format!(
                "{sampler} runs from the first sigma down to the last nonzero one, which must be \
                 positive and no larger; got {sigmas:?}"
            ),
        ));
    }
    Ok((sigma_max, sigma_min, sigmas.len().saturating_sub(1)))
}

/// DPM-Solver's steps with the model evaluations they make, each reported as a progress step
/// (see [`sample_dpm_fast`]) when `report` is set.
struct Solver<'m, 'a> {
    model: &'m mut Denoiser<'a>,
    report: bool,
    evaluations: usize,
}

/// The ε evaluations of one step, kept so that a later, higher-order formula reuses them
/// (k-diffusion's `eps_cache`).
#[derive(Default)]
struct Cache {
    eps: Option<(Tensor, Tensor)>,
    eps_r1: Option<Tensor>,
    eps_r2: Option<Tensor>,
}

impl Solver<'_, '_> {
    /// ε = (x − D(x, σ(t))) / σ(t), with the denoised estimate.
    fn eps(&mut self, x: &Tensor, t: f32) -> Result<(Tensor, Tensor)> {
        let sigma = sigma_fn(t);
        let denoised = self.model.denoise(x, sigma)?;
        let eps = div(&sub(x, &denoised)?, sigma)?;
        if self.report {
            self.model.step_done(self.evaluations, x, Some(&denoised))?;
        }
        self.evaluations += 1;
        Ok((eps, denoised))
    }

    /// The step's first evaluation, at (x, t).
    fn first<'c>(&mut self, cache: &'c mut Cache, x: &Tensor, t: f32) -> Result<&'c Tensor> {
        if cache.eps.is_none() {
            cache.eps = Some(self.eps(x, t)?);
        }
        Ok(&cache.eps.as_ref().expect("just evaluated").0)
    }

    /// First order (DDIM-like): `x − σ(t') (e^h − 1) ε`.
    fn step_1(&mut self, cache: &mut Cache, x: &Tensor, t: f32, t_next: f32) -> Result<Tensor> {
        let h = t_next - t;
        let eps = self.first(cache, x, t)?;
        sub(x, &mul(eps, sigma_fn(t_next) * h.exp_m1())?)
    }

    /// Second order through one intermediate point at `t + r1·h`.
    fn step_2(
        &mut self,
        cache: &mut Cache,
        x: &Tensor,
        t: f32,
        t_next: f32,
        r1: f64,
    ) -> Result<Tensor> {
        let h = t_next - t;
        let eps = self.first(cache, x, t)?.clone();
        let r1_h = r1 as f32 * h;
        let s1 = t + r1_h;
        if cache.eps_r1.is_none() {
            let u1 = sub(x, &mul(&eps, sigma_fn(s1) * r1_h.exp_m1())?)?;
            cache.eps_r1 = Some(self.eps(&u1, s1)?.0);
        }
        let eps_r1 = cache.eps_r1.as_ref().expect("just evaluated");
        let sigma_next = sigma_fn(t_next);
        let first = sub(x, &mul(&eps, sigma_next * h.exp_m1())?)?;
        let correction = sigma_next / (2.0 * r1) as f32 * h.exp_m1();
        sub(&first, &mul(&sub(eps_r1, &eps)?, correction)?)
    }

    /// Third order through intermediate points at `t + h/3` and `t + 2h/3`.
    fn step_3(&mut self, cache: &mut Cache, x: &Tensor, t: f32, t_next: f32) -> Result<Tensor> {
        let (r1, r2) = (1.0f64 / 3.0, 2.0f64 / 3.0);
        let h = t_next - t;
        let eps = self.first(cache, x, t)?.clone();
        let (r1_h, r2_h) = (r1 as f32 * h, r2 as f32 * h);
        let (s1, s2) = (t + r1_h, t + r2_h);
        if cache.eps_r1.is_none() {
            let u1 = sub(x, &mul(&eps, sigma_fn(s1) * r1_h.exp_m1())?)?;
            cache.eps_r1 = Some(self.eps(&u1, s1)?.0);
        }
        let eps_r1 = cache.eps_r1.clone().expect("just evaluated");
        if cache.eps_r2.is_none() {
            let sigma_s2 = sigma_fn(s2);
            let u2 = sub(x, &mul(&eps, sigma_s2 * r2_h.exp_m1())?)?;
            let scale = sigma_s2 * (r2 / r1) as f32 * (r2_h.exp_m1() / r2_h - 1.0);
            let u2 = sub(&u2, &mul(&sub(&eps_r1, &eps)?, scale)?)?;
            cache.eps_r2 = Some(self.eps(&u2, s2)?.0);
        }
        let eps_r2 = cache.eps_r2.as_ref().expect("just evaluated");
        let sigma_next = sigma_fn(t_next);
        let first = sub(x, &mul(&eps, sigma_next * h.exp_m1())?)?;
        let scale = sigma_next / r2 as f32 * (h.exp_m1() / h - 1.0);
        sub(&first, &mul(&sub(eps_r2, &eps)?, scale)?)
    }
}

/// Where an ancestral step from t to `t_next` aims its deterministic part (never past
/// `t_end`), and the noise that brings it back to σ(`t_next`).
fn ancestral_target(t: f32, t_next: f32, t_end: f32, eta: f32) -> (f32, f32) {
    if eta == 0.0 {
        return (t_next, 0.0);
    }
    let (sigma_down, _) = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta);
    let target = t_end.min(t_fn(sigma_down));
    let (sigma_next, sigma_target) = (sigma_fn(t_next), sigma_fn(target));
    let sigma_up = (sigma_next * sigma_next - sigma_target * sigma_target).sqrt();
    (target, sigma_up)
}

/// `x + σ_up · s_noise · noise`, with fresh noise drawn whatever σ_up is (k-diffusion draws it
/// every step, also when eta is 0).
fn add_step_noise(
    x: &Tensor,
    rng: &mut dyn NoiseSource,
    sigma_up: f32,
    settings: &KSettings,
) -> Result<Tensor> {
    let noise = noise_like(x, rng)?;
    super::ops::add(x, &mul(&noise, sigma_up * settings.s_noise())?)
}

/// DPM-Solver-fast: n model evaluations on an even grid in t, ⌊n/3⌋ + 1 steps of order 3 with
/// a last step of order n mod 3 (or 2 then 1 when 3 divides n).
///
/// Progress: k-diffusion's own progress bar counts DPM fast by model evaluation (its total is
/// n), so this loop reports each evaluation as a step: exactly n = `sigmas.len() − 1` reports,
/// each with the sample that evaluation saw and its denoised estimate.
pub(crate) fn sample_dpm_fast(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    let (sigma_max, sigma_min, n) = sigma_range(sigmas, "DPM fast")?;
    let (t_start, t_end) = (t_fn(sigma_max), t_fn(sigma_min));
    let m = n / 3 + 1;
    let ts = torch_linspace_f32(f64::from(t_start), f64::from(t_end), m + 1);
    if n == 0 {
        return Ok(x);
    }
    let orders = if n % 3 == 0 {
        let mut o = vec![3; m.saturating_sub(2)];
        o.extend([2, 1]);
        o
    } else {
        let mut o = vec![3; m - 1];
        o.push(n % 3);
        o
    };
    let mut solver = Solver {
        model,
        report: true,
        evaluations: 0,
    };
    for (i, &order) in orders.iter().enumerate() {
        let (t, t_next) = (ts[i], ts[i + 1]);
        let (target, sigma_up) = ancestral_target(t, t_next, t_end, settings.eta);
        let mut cache = Cache::default();
        solver.first(&mut cache, &x, t)?;
        x = match order {
            1 => solver.step_1(&mut cache, &x, t, target)?,
            2 => solver.step_2(&mut cache, &x, t, target, 0.5)?,
            _ => solver.step_3(&mut cache, &x, t, target)?,
        };
        x = add_step_noise(&x, rng, sigma_up, settings)?;
    }
    Ok(x)
}

/// k-diffusion's PID step-size controller, with the defaults A1111 runs DPM adaptive with
/// (integral control only: pcoeff 0, icoeff 1, dcoeff 0; accept_safety 0.81).
struct StepSizeController {
    h: f64,
    b1: f64,
    b2: f64,
    b3: f64,
    errs: Option<[f64; 3]>,
}

impl StepSizeController {
    /// Safety factor under which a proposed step is rejected.
    const ACCEPT_SAFETY: f64 = 0.81;

    /// A controller starting at step `h` for a method of order `order`.
    fn new(h: f64, order: f64) -> Self {
        let (pcoeff, icoeff, dcoeff) = (0.0f64, 1.0f64, 0.0f64);
        Self {
            h,
            b1: (pcoeff + icoeff + dcoeff) / order,
            b2: -(pcoeff + 2.0 * dcoeff) / order,
            b3: dcoeff / order,
            errs: None,
        }
    }

    /// Scales the step by the error of the last one; whether that step is accepted.
    fn propose(&mut self, error: f64) -> bool {
        let inv_error = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv_error; 3]);
        errs[0] = inv_error;
        let factor = errs[0].powf(self.b1) * errs[1].powf(self.b2) * errs[2].powf(self.b3);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= Self::ACCEPT_SAFETY;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

/// The scaled error between the two solutions of a step:
/// ‖(x_low − x_high) / max(atol, rtol · max(|x_low|, |x_prev|))‖₂ / √numel.
fn step_error(x_low: &Tensor, x_high: &Tensor, x_prev: &Tensor) -> Result<f64> {
    const RTOL: f64 = 0.05;
    const ATOL: f32 = 0.0078;
    let scale = x_low.abs()?.maximum(&x_prev.abs()?)?;
    let delta = mul(&scale, RTOL as f32)?.maximum(ATOL)?;
    let scaled = (x_low - x_high)?.broadcast_div(&delta)?;
    let norm = scaled.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    Ok(f64::from(norm / (x_low.elem_count() as f64).sqrt() as f32))
}

/// The most step attempts DPM adaptive makes before it gives up (a sane model needs well under
/// a thousand).
const MAX_ATTEMPTS: usize = 100_000;

/// DPM-Solver-23 with adaptive steps (k-diffusion's `sample_dpm_adaptive` at A1111's settings:
/// order 3, rtol 0.05, atol 0.0078, h_init 0.05, integral control): each attempt makes a
/// second- and a third-order solution from three model evaluations and the controller accepts
/// or shrinks the step by their difference.
///
/// Progress: the number of steps is not known in advance, so the run reports the share of the
/// t range (−log σ_max to −log σ_min) it has covered, in `sigmas.len() − 1` parts: after each
/// accepted step, one report per part completed (the last when the run ends), each with the
/// sample after that step and the denoised estimate at its start (what k-diffusion's callback
/// is given). The progress total is then exact; how much work a part takes varies.
pub(crate) fn sample_dpm_adaptive(
    model: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    rng: &mut dyn NoiseSource,
    settings: &KSettings,
) -> Result<Tensor> {
    let (sigma_max, sigma_min, parts) = sigma_range(sigmas, "DPM adaptive")?;
    let (t_start, t_end) = (t_fn(sigma_max), t_fn(sigma_min));
    let order = if settings.eta != 0.0 { 1.5 } else { 3.0 };
    let mut pid = StepSizeController::new(0.05, order);
    let mut solver = Solver {
        model,
        report: false,
        evaluations: 0,
    };
    let mut s = t_start;
    let mut x_prev = x.clone();
    let mut reported = 0;
    let mut last_denoised = None;
    let mut attempts = 0usize;
    while s < t_end - 1e-5 {
        attempts += 1;
        if attempts > MAX_ATTEMPTS {
            return Err(Error::invalid(
                "DPM adaptive",
                format!(
                    "no end after {MAX_ATTEMPTS} steps (stuck at sigma {})",
                    sigma_fn(s)
                ),
            ));
        }
        let t = t_end.min(s + pid.h as f32);
        let (target, sigma_up) = ancestral_target(s, t, t_end, settings.eta);
        let mut cache = Cache::default();
        solver.first(&mut cache, &x, s)?;
        let x_low = solver.step_2(&mut cache, &x, s, target, 1.0 / 3.0)?;
        let x_high = solver.step_3(&mut cache, &x, s, target)?;
        let error = step_error(&x_low, &x_high, &x_prev)?;
        if !error.is_finite() {
            return Err(Error::invalid(
                "DPM adaptive",
                format!("the step error became {error} at sigma {}", sigma_fn(s)),
            ));
        }
        if pid.propose(error) {
            x = add_step_noise(&x_high, rng, sigma_up, settings)?;
            x_prev = x_low;
            s = t;
            let denoised = cache.eps.take().map(|(_, d)| d);
            let done =
                (f64::from(s) - f64::from(t_start)) / (f64::from(t_end) - f64::from(t_start));
            let due = ((done * parts as f64).floor() as usize).min(parts.saturating_sub(1));
            while reported < due {
                solver.model.step_done(reported, &x, denoised.as_ref())?;
                reported += 1;
            }
            last_denoised = denoised;
        }
    }
    while reported < parts {
        solver
            .model
            .step_done(reported, &x, last_denoised.as_ref())?;
        reported += 1;
    }
    Ok(x)
}
