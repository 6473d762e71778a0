//! The sigma schedules of k-diffusion and AUTOMATIC1111 ("Schedule type"), and the model's
//! discrete sigma table they are built from (k-diffusion's `DiscreteSchedule`).
//!
//! Every schedule returns the sigmas a k-diffusion sampler walks, from the largest down, with
//! the trailing 0 where the reference appends one. Values are computed in f32 where the
//! reference computes with f32 torch tensors and in f64 where it uses Python floats or numpy.

use super::schedule::{np_linspace, torch_linspace_f32, NoiseSchedule};
use crate::{Error, Result};

/// The model's training sigmas and their logs (k-diffusion's `DiscreteSchedule`, as
/// A1111's `CompVisDenoiser` builds it from the model's `alphas_cumprod`).
#[derive(Debug, Clone)]
pub struct ModelSigmas {
    /// `sqrt((1 - ᾱ_t) / ᾱ_t)` for t = 0..T, ascending (f32).
    pub sigmas: Vec<f32>,
    /// Natural logs of `sigmas` (f32).
    pub log_sigmas: Vec<f32>,
    /// For A1111's LCM table ([`ModelSigmas::lcm`]): entry `j` is timestep `skip·j + skip − 1`.
    pub lcm_skip: Option<usize>,
}

/// The length of LCM's original timestep grid (every 20th of 1000 training steps).
pub const LCM_ORIGINAL_STEPS: usize = 50;

impl ModelSigmas {
    /// The table of a training noise schedule.
    pub fn new(noise: &NoiseSchedule) -> Self {
        Self::from_sigmas(noise.train_sigmas(), None)
    }

    /// A1111's LCM table (its `LCMCompVisDenoiser`): only the training sigmas of LCM's
    /// original 50-step grid, t = 19, 39, ..., 999. [`ModelSigmas::sigma_to_t`] then gives the
    /// nearest grid timestep and [`ModelSigmas::t_to_sigma`] takes timesteps on that grid.
    pub fn lcm(noise: &NoiseSchedule) -> Self {
        let all = noise.train_sigmas();
        let skip = (all.len() / LCM_ORIGINAL_STEPS).max(1);
        let sigmas = (0..all.len() / skip)
            .map(|j| all[skip * j + skip - 1])
            .collect();
        Self::from_sigmas(sigmas, Some(skip))
    }

    fn from_sigmas(sigmas: Vec<f32>, lcm_skip: Option<usize>) -> Self {
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Self {
            sigmas,
            log_sigmas,
            lcm_skip,
        }
    }

    /// The smallest training sigma (at t = 0).
    pub fn sigma_min(&self) -> f32 {
        self.sigmas[0]
    }

    /// The largest training sigma (at t = T − 1).
    pub fn sigma_max(&self) -> f32 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// The fractional timestep of `sigma`, by linear interpolation in log-sigma between the
    /// two neighbouring training sigmas (f32, as k-diffusion computes it).
    /// On the LCM table: the grid timestep of the nearest table entry in log-sigma.
    pub fn sigma_to_t(&self, sigma: f32) -> f32 {
        let log_sigma = sigma.ln();
        if let Some(skip) = self.lcm_skip {
            let mut nearest = 0;
            for (j, l) in self.log_sigmas.iter().enumerate() {
                if (log_sigma - l).abs() < (log_sigma - self.log_sigmas[nearest]).abs() {
                    nearest = j;
                }
            }
            return (nearest * skip + skip - 1) as f32;
        }
        let count = self
            .log_sigmas
            .iter()
            .filter(|&&l| log_sigma - l >= 0.0)
            .count();
        let low_idx = count.saturating_sub(1).min(self.log_sigmas.len() - 2);
        let high_idx = low_idx + 1;
        let (low, high) = (self.log_sigmas[low_idx], self.log_sigmas[high_idx]);
        let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
        (1.0 - w) * low_idx as f32 + w * high_idx as f32
    }

    /// The sigma at fractional timestep `t`: log-linear interpolation of the table (on the LCM
    /// table, `t` is first mapped to its grid position, clamped to the table).
    pub fn t_to_sigma(&self, t: f32) -> f32 {
        let t = match self.lcm_skip {
            Some(skip) => {
                ((t - (skip - 1) as f32) / skip as f32).clamp(0.0, (self.sigmas.len() - 1) as f32)
            }
            None => t,
        };
        let low = t.floor();
        let (low_idx, high_idx) = (low as usize, t.ceil() as usize);
        let w = t - low;
        ((1.0 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()
    }
}

/// The published Align Your Steps sigmas for 10 steps (Stable Diffusion 1.5).
pub const AYS_SD15: [f64; 11] = [
    14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029,
];

/// The published Align Your Steps sigmas for 10 steps (SDXL).
pub const AYS_SDXL: [f64; 11] = [
    14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029,
];

/// The shape parameters α = β of A1111's default "Beta" schedule.
pub const BETA_SCHEDULE_ALPHA: f64 = 0.6;

/// k-diffusion's `get_sigmas(n)` (A1111's "Uniform", the "Automatic" of most samplers):
/// `n` timesteps evenly spaced from T − 1 down to 0, mapped to sigmas, then 0.
pub fn discrete(model: &ModelSigmas, n: usize) -> Vec<f32> {
    let t_max = (model.sigmas.len() - 1) as f64;
    let mut sigmas: Vec<f32> = torch_linspace_f32(t_max, 0.0, n)
        .into_iter()
        .map(|t| model.t_to_sigma(t))
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// A1111's LCM "Automatic" / "Uniform" (its `LCMCompVisDenoiser.get_sigmas`): `n` grid
/// timesteps evenly spaced from that of σ_max down to that of σ_min, mapped to sigmas, then 0.
pub fn lcm(model: &ModelSigmas, n: usize) -> Vec<f32> {
    let mut sigmas = spaced_timesteps(model, n, n);
    sigmas.push(0.0);
    sigmas
}

/// The sigmas of the first `take` of `count` timesteps evenly spaced from that of σ_max down
/// to that of σ_min.
fn spaced_timesteps(model: &ModelSigmas, count: usize, take: usize) -> Vec<f32> {
    let start = model.sigma_to_t(model.sigma_max());
    let end = model.sigma_to_t(model.sigma_min());
    torch_linspace_f32(f64::from(start), f64::from(end), count)
        .into_iter()
        .take(take)
        .map(|t| model.t_to_sigma(t))
        .collect()
}

/// Karras et al. (2022): `n` sigmas evenly spaced in σ^(1/7), then 0.
pub fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f32> {
    const RHO: f64 = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / RHO);
    let max_inv_rho = sigma_max.powf(1.0 / RHO);
    let span = (min_inv_rho - max_inv_rho) as f32;
    let mut sigmas: Vec<f32> = torch_linspace_f32(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho as f32 + ramp * span).powf(RHO as f32))
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// `n` sigmas evenly spaced in log σ, then 0.
pub fn exponential(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f32> {
    let mut sigmas: Vec<f32> = torch_linspace_f32(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f32::exp)
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// "SGM Uniform": `n + 1` timesteps evenly spaced between those of σ_max and σ_min, the last
/// dropped, mapped to sigmas, then 0.
pub fn sgm_uniform(model: &ModelSigmas, n: usize) -> Vec<f32> {
    let mut sigmas = spaced_timesteps(model, n + 1, n);
    sigmas.push(0.0);
    sigmas
}

/// A1111's "Normal" (`normal_scheduler`): `n` timesteps evenly spaced between those of σ_max
/// and σ_min, mapped to sigmas, then 0 (SGM Uniform without dropping the last).
pub fn normal(model: &ModelSigmas, n: usize) -> Vec<f32> {
    let mut sigmas = spaced_timesteps(model, n, n);
    sigmas.push(0.0);
    sigmas
}

/// The ρ of A1111's "Polyexponential" schedule.
pub const POLYEXPONENTIAL_RHO: f64 = 1.0;

/// k-diffusion's `get_sigmas_polyexponential`: a ramp from 1 to 0 raised to `rho`, mapped
/// to `exp(ramp · (ln σ_max − ln σ_min) + ln σ_min)` in f32 as torch computes it, then 0.
pub fn polyexponential(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f32> {
    let span = (sigma_max.ln() - sigma_min.ln()) as f32;
    let low = sigma_min.ln() as f32;
    let mut sigmas: Vec<f32> = torch_linspace_f32(1.0, 0.0, n)
        .into_iter()
        .map(|ramp| (ramp.powf(rho as f32) * span + low).exp())
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// "Simple": every (T / n)-th training sigma from the top, then 0.
pub fn simple(model: &ModelSigmas, n: usize) -> Vec<f32> {
    let len = model.sigmas.len();
    let stride = len as f64 / n as f64;
    let mut sigmas: Vec<f32> = (0..n)
        .map(|x| model.sigmas[len - 1 - (x as f64 * stride) as usize])
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// "DDIM": the training sigmas at 1, 1 + T/n, 1 + 2T/n, ... (DDIM's uniform timesteps),
/// descending, then 0. Like A1111 this can give one sigma more than `n` when T/n does not
/// divide evenly.
pub fn ddim_uniform(model: &ModelSigmas, n: usize) -> Vec<f32> {
    let len = model.sigmas.len();
    let stride = (len / n).max(1);
    let mut sigmas: Vec<f32> = (1..len).step_by(stride).map(|x| model.sigmas[x]).collect();
    sigmas.reverse();
    sigmas.push(0.0);
    sigmas
}

/// "Beta" (Lee et al. 2024, as A1111 implements it): quantiles of a Beta(α, α) distribution at
/// evenly spaced points, scaled into [σ_min, σ_max], then 0.
pub fn beta(sigma_min: f64, sigma_max: f64, n: usize, alpha: f64) -> Vec<f32> {
    let mut sigmas: Vec<f32> = np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| {
            let q = beta_ppf(1.0 - x, alpha, alpha);
            (sigma_min + q * (sigma_max - sigma_min)) as f32
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// "KL Optimal" (Sabour et al. 2024): evenly spaced in arctan σ, `n + 1` values from σ_max
/// to σ_min (no trailing 0: the last step ends at σ_min).
pub fn kl_optimal(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f32> {
    let alpha_min = (sigma_min as f32).atan();
    let alpha_max = (sigma_max as f32).atan();
    (0..=n)
        .map(|i| {
            let frac = i as f32 / n as f32;
            (frac * alpha_min + (1.0 - frac) * alpha_max).tan()
        })
        .collect()
}

/// Align Your Steps: the published 10-step table, log-linearly interpolated to `n` steps, then 0.
pub fn align_your_steps(table: &[f64], n: usize) -> Vec<f32> {
    let mut sigmas: Vec<f64> = if n == table.len() {
        table.to_vec()
    } else {
        // Interpolate log σ over [0, 1] in ascending order, as the reference does.
        let ys: Vec<f64> = table.iter().rev().map(|s| s.ln()).collect();
        let xs = np_linspace(0.0, 1.0, table.len());
        let mut out: Vec<f64> = np_linspace(0.0, 1.0, n)
            .into_iter()
            .map(|x| np_interp(x, &xs, &ys).exp())
            .collect();
        out.reverse();
        out
    };
    sigmas.push(0.0);
    sigmas.into_iter().map(|s| s as f32).collect()
}

/// A user's own sigma list: must be finite, non-negative and non-increasing, at least two values.
pub fn custom(list: &[f64]) -> Result<Vec<f32>> {
    if list.len() < 2 {
        return Err(Error::invalid(
            "sigmas",
            format!(
                "need at least two sigmas (start and end), got {}",
                list.len()
            ),
        ));
    }
    for (i, s) in list.iter().enumerate() {
        if !s.is_finite() || *s < 0.0 {
            return Err(Error::invalid(
                "sigmas",
                format!("sigma {i} is {s}: every sigma must be a finite number >= 0"),
            ));
        }
        if i > 0 && *s > list[i - 1] {
            return Err(Error::invalid(
                "sigmas",
                format!(
                    "sigma {i} ({s}) is larger than the one before ({}): sigmas must not increase",
                    list[i - 1]
                ),
            ));
        }
    }
    if list[0] == 0.0 {
        return Err(Error::invalid("sigmas", "the first sigma must be above 0"));
    }
    Ok(list.iter().map(|&s| s as f32).collect())
}

/// `np.interp(x, xs, ys)` for ascending `xs`.
fn np_interp(x: f64, xs: &[f64], ys: &[f64]) -> f64 {
    if x <= xs[0] {
        return ys[0];
    }
    let last = xs.len() - 1;
    if x >= xs[last] {
        return ys[last];
    }
    let j = xs.iter().rposition(|&v| v <= x).unwrap_or(0).min(last - 1);
    let slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]);
    slope * (x - xs[j]) + ys[j]
}

/// The quantile function of the Beta(a, b) distribution (scipy's `stats.beta.ppf`), by
/// bisection on the regularized incomplete beta function, to f64 precision.
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if regularized_incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// I_x(a, b), from the continued fraction (Lentz's method) on the side where it converges fast.
fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let log_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        log_front.exp() * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - log_front.exp() * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of the incomplete beta function.
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut result = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even term.
        let num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
        d = 1.0 + num * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + num / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        result *= d * c;
        // Odd term.
        let num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
        d = 1.0 + num * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + num / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let delta = d * c;
        result *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    result
}

/// ln Γ(x) for x > 0 (Lanczos approximation, g = 7, 9 terms; ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const COEFFS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = COEFFS[1..]
        .iter()
        .enumerate()
        .fold(COEFFS[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_quantiles_invert_the_distribution() {
        // Symmetric distributions have their median at 1/2; Beta(1, 1) is uniform.
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-12);
        assert!((beta_ppf(0.3, 1.0, 1.0) - 0.3).abs() < 1e-12);
        // Beta(2, 1) has CDF x², so the quantile of p is sqrt(p).
        assert!((beta_ppf(0.49, 2.0, 1.0) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn custom_sigmas_must_decrease() {
        assert!(custom(&[10.0, 1.0, 0.0]).is_ok());
        assert!(custom(&[1.0, 2.0]).is_err());
        assert!(custom(&[1.0]).is_err());
        assert!(custom(&[1.0, f64::NAN]).is_err());
    }
}
