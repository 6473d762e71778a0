//! The noise schedule shared by every sampler: betas, cumulative alphas, training sigmas,
//! timestep spacing, Karras sigmas and the sigma ↔ timestep interpolation.
//!
//! Values are computed the way diffusers computes them (f32 tensors where it uses f32 tensors,
//! f64 where it uses numpy), so that timesteps and sigmas agree to the last few bits.

use crate::{Error, Result};

/// How the betas of the training schedule are spaced (diffusers' `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// Betas evenly spaced from `beta_start` to `beta_end`.
    Linear,
    /// Square roots of the betas evenly spaced (Stable Diffusion's schedule).
    ScaledLinear,
    /// The cosine schedule of improved DDPM ("Glide"), betas capped at 0.999.
    SquaredCosCapV2,
}

impl std::str::FromStr for BetaSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Self::Linear),
            "scaled_linear" => Ok(Self::ScaledLinear),
            "squaredcos_cap_v2" => Ok(Self::SquaredCosCapV2),
            other => Err(Error::Unsupported {
                what: "beta schedule",
                value: other.to_string(),
                valid: vec![
                    "linear".into(),
                    "scaled_linear".into(),
                    "squaredcos_cap_v2".into(),
                ],
            }),
        }
    }
}

/// How inference timesteps are picked from the training timesteps (`timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Evenly spaced over `[0, T - 1]`, both ends included.
    Linspace,
    /// Multiples of `T / steps` from 0, plus `steps_offset`.
    Leading,
    /// Multiples of `T / steps` counted down from `T`, minus one.
    Trailing,
}

impl std::str::FromStr for TimestepSpacing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linspace" => Ok(Self::Linspace),
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            other => Err(Error::Unsupported {
                what: "timestep spacing",
                value: other.to_string(),
                valid: vec!["linspace".into(), "leading".into(), "trailing".into()],
            }),
        }
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` as torch's CPU kernel computes it (f32, the
/// first half counted up from `start`, the second half down from `end`).
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start as f32];
    }
    let (start, end) = (start as f32, end as f32);
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// `np.linspace(start, end, n)` (f64): `start + i * step`, the last value exactly `end`.
pub fn np_linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = end;
    v
}

/// Rounds half to even, as numpy's `round` does.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// The betas of the cosine ("squaredcos_cap_v2") schedule, in f64 as diffusers computes them.
fn cosine_betas(n: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}

/// `cumprod(1 − β)` as torch computes it on f32: accumulated in f64, each partial product
/// stored as f32.
fn cumprod_alphas(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= f64::from(1.0f32 - b);
            acc as f32
        })
        .collect()
}

/// The training noise schedule: `alphas_cumprod[t]` for every training timestep `t`.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// Cumulative products of `1 - beta` (f32, as diffusers stores them).
    pub alphas_cumprod: Vec<f32>,
}

/// Refuses a `num_train_timesteps` above [`crate::limits::MAX_TRAIN_TIMESTEPS`] (the schedule,
/// and every sampler's timestep table, has one entry per training timestep).
pub(crate) fn check_train_timesteps(num_train_timesteps: usize) -> Result<()> {
    let max = crate::limits::MAX_TRAIN_TIMESTEPS;
    if num_train_timesteps > max {
        return Err(Error::invalid(
            "num_train_timesteps",
            format!("{num_train_timesteps} is more than the {max} this library accepts"),
        ));
    }
    Ok(())
}

impl NoiseSchedule {
    /// Builds the schedule from the betas' description (or explicit `trained_betas`).
    pub fn new(
        kind: BetaSchedule,
        beta_start: f64,
        beta_end: f64,
        num_train_timesteps: usize,
        trained_betas: Option<&[f64]>,
    ) -> Result<Self> {
        if num_train_timesteps < 2 {
            return Err(Error::invalid(
                "num_train_timesteps",
                format!("must be at least 2, got {num_train_timesteps}"),
            ));
        }
        check_train_timesteps(num_train_timesteps)?;
        let betas: Vec<f32> = match (trained_betas, kind) {
            (Some(b), _) => b.iter().map(|&x| x as f32).collect(),
            (None, BetaSchedule::Linear) => {
                torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
            }
            (None, BetaSchedule::ScaledLinear) => {
                torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), num_train_timesteps)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            (None, BetaSchedule::SquaredCosCapV2) => cosine_betas(num_train_timesteps)
                .into_iter()
                .map(|b| b as f32)
                .collect(),
        };
        Ok(Self {
            alphas_cumprod: cumprod_alphas(&betas),
        })
    }

    /// Rescales the schedule to zero terminal SNR (Lin et al. 2023, diffusers'
    /// `rescale_zero_terminal_snr`): sqrt(ᾱ) is shifted so its last value is 0 and scaled so its
    /// first is unchanged; the betas are recovered from it and the cumulative product taken
    /// again, so ᾱ at the last timestep is exactly 0 (pure noise).
    pub fn rescaled_zero_terminal_snr(&self) -> Self {
        let sqrt: Vec<f32> = self.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
        let scale = first / (first - last);
        let alpha_bar: Vec<f32> = sqrt
            .iter()
            .map(|&s| {
                let shifted = (s - last) * scale;
                shifted * shifted
            })
            .collect();
        let betas: Vec<f32> = alpha_bar
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let alpha = if i == 0 { a } else { a / alpha_bar[i - 1] };
                1.0 - alpha
            })
            .collect();
        Self {
            alphas_cumprod: cumprod_alphas(&betas),
        }
    }

    /// The number of training timesteps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Whether the schedule is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// The training sigmas `sqrt((1 - ᾱ_t) / ᾱ_t)` for `t = 0..T` (f32, ascending).
    pub fn train_sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    /// Natural logs of the training sigmas (f32, as numpy takes them of an f32 array).
    pub fn log_train_sigmas(&self) -> Vec<f32> {
        self.train_sigmas().into_iter().map(f32::ln).collect()
    }
}

/// Inference timesteps for the DDIM-style samplers (DDIM, PNDM): integers, descending.
pub fn discrete_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<i64> {
    let t = num_train as f64;
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, t - 1.0, steps)
            .into_iter()
            .rev()
            .map(|x| round_half_even(x) as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (num_train / steps) as i64;
            (0..steps as i64)
                .rev()
                .map(|i| i * ratio + steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => trailing(num_train, steps)
            .into_iter()
            .map(|x| x as i64)
            .collect(),
    }
}

/// `np.round(np.arange(T, 0, -T / steps)) - 1` (descending).
fn trailing(num_train: usize, steps: usize) -> Vec<f64> {
    let ratio = num_train as f64 / steps as f64;
    let t = num_train as f64;
    // np.arange with a float step holds ceil((stop - start) / step) values: start + i * step.
    let count = ((0.0 - t) / -ratio).ceil() as usize;
    (0..count)
        .map(|i| round_half_even(t + i as f64 * -ratio) - 1.0)
        .collect()
}

/// Inference timesteps of the sigma-based samplers (Euler, Euler a): f32 values, descending.
pub fn continuous_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<f32> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, num_train as f64 - 1.0, steps)
            .into_iter()
            .rev()
            .map(|x| x as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (num_train / steps) as f64;
            (0..steps)
                .rev()
                .map(|i| (i as f64 * ratio) as f32 + steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => trailing(num_train, steps)
            .into_iter()
            .map(|x| x as f32)
            .collect(),
    }
}

/// Inference timesteps of DPM-Solver: `steps + 1` points spaced over the training range, the
/// last (lowest) one dropped; integers, descending.
pub fn dpm_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<i64> = np_linspace(0.0, num_train as f64 - 1.0, steps + 1)
                .into_iter()
                .rev()
                .map(|x| round_half_even(x) as i64)
                .collect();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (num_train / (steps + 1)) as i64;
            (1..=steps as i64)
                .rev()
                .map(|i| i * ratio + steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => trailing(num_train, steps)
            .into_iter()
            .map(|x| x as i64)
            .collect(),
    }
}

/// `np.interp(x, arange(len(values)), values)`: linear interpolation of the training sigmas at
/// (possibly fractional) timesteps, in f64.
pub fn interp_sigma(t: f64, sigmas: &[f32]) -> f64 {
    let last = sigmas.len() - 1;
    if t <= 0.0 {
        return f64::from(sigmas[0]);
    }
    if t >= last as f64 {
        return f64::from(sigmas[last]);
    }
    let lo = t.floor() as usize;
    let (a, b) = (f64::from(sigmas[lo]), f64::from(sigmas[lo + 1]));
    let frac = t - lo as f64;
    // numpy: slope * (x - xp[j]) + fp[j]
    (b - a) * frac + a
}

/// The Karras et al. (2022) sigmas: `steps` values from `sigma_max` down to `sigma_min`,
/// evenly spaced in `sigma^(1/7)`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / RHO);
    let max_inv_rho = sigma_max.powf(1.0 / RHO);
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// The (fractional) training timestep whose sigma is `sigma`, interpolating linearly in
/// log-sigma between neighbouring training timesteps (diffusers' `_sigma_to_t`).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log-sigma is <= log_sigma (0 when none), capped at len - 2.
    let count = log_sigmas
        .iter()
        .filter(|&&l| log_sigma - f64::from(l) >= 0.0)
        .count();
    let low_idx = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = f64::from(log_sigmas[low_idx]);
    let high = f64::from(log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_rounding_is_half_to_even() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-0.4), 0.0);
        assert_eq!(round_half_even(7.6), 8.0);
    }

    #[test]
    fn trailing_spacing_counts_down_from_the_last_timestep() {
        assert_eq!(
            discrete_timesteps(TimestepSpacing::Trailing, 1000, 4, 0),
            vec![999, 749, 499, 249]
        );
    }
}
