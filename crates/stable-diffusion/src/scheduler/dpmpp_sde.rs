//! DPM-Solver++ SDE (diffusers' `DPMSolverSDEScheduler`; k-diffusion's `sample_dpmpp_sde`,
//! A1111's "DPM++ SDE"): each step from σ to σ_next evaluates the model twice, at σ and at the
//! log-sigma midpoint, and both stages are ancestral data-prediction steps (an exponential
//! integrator step to σ_down plus fresh noise of σ_up). The last step, to σ = 0, is one Euler
//! step.
//!
//! The noise: diffusers draws it from a Brownian tree (torchsde) seeded apart from the
//! pipeline's generator; we draw i.i.d. N(0, 1) noise from the request's generator instead.
//! Each increment has the same distribution, so images match diffusers' in statistics, not
//! bit for bit (the parity fixtures give diffusers the same i.i.d. noise to check the math).

use candle_core::Tensor;

use super::euler::sigma_init_noise;
use super::euler::{predict_original, to_d};
use super::heun::{interleave_repeat, plain_sigma_steps};
use super::kdiff::noise_like;
use super::ops::{add, div, mul};
use super::schedule::{self, TimestepSpacing};
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// DPM-Solver's time t = −log σ.
fn t_of(sigma: f32) -> f32 {
    -sigma.ln()
}

/// σ = e^{−t}.
fn sigma_of(t: f32) -> f32 {
    (-t).exp()
}

/// DPM-Solver++ SDE sampling.
#[derive(Debug, Clone)]
pub struct DpmPpSde {
    /// One timestep per model evaluation: `[t₀, t(mid₀), t₁, t(mid₁), …]`.
    timesteps: Vec<f64>,
    /// `[σ₀, σ₁, σ₁, …, σ_{n−1}, σ_{n−1}, 0]`, as diffusers lays them out.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    s_noise: f32,
    /// The first stage's state: the sample the step started from and the midpoint sigma.
    first_stage: Option<(Tensor, f32)>,
}

impl DpmPpSde {
    /// Sets up `steps` steps with noise scale `s_noise`.
    pub fn new(cfg: &ResolvedConfig, steps: usize, s_noise: f32) -> Result<Self> {
        if cfg.prediction_type == PredictionType::Sample {
            return Err(Error::Unsupported {
                what: "prediction type for diffusers' DPMSolverSDEScheduler",
                value: "sample".into(),
                valid: vec!["epsilon".into(), "v_prediction".into()],
            });
        }
        let (spaced, sigmas) = plain_sigma_steps(cfg, steps)?;
        let log_sigmas = cfg.noise_schedule()?.log_train_sigmas();
        let n = sigmas.len() - 1;
        let mut timesteps = vec![spaced[0]];
        for j in 1..n {
            // The model timestep of the log-sigma midpoint between σ_{j−1} and σ_j (numpy f64).
            let (a, b) = (-f64::from(sigmas[j - 1]).ln(), -f64::from(sigmas[j]).ln());
            let mid = (-(a + (b - a) * 0.5)).exp();
            timesteps.push(schedule::sigma_to_t(mid, &log_sigmas));
            timesteps.push(spaced[j]);
        }
        let mut layout = interleave_repeat(&sigmas[..n]);
        layout.push(0.0);
        Ok(Self {
            timesteps,
            sigmas: layout,
            prediction: cfg.prediction_type,
            spacing: cfg.timestep_spacing,
            s_noise,
            first_stage: None,
        })
    }

    /// (σ, σ_next) of the step that evaluation `k` belongs to.
    fn step_sigmas(&self, k: usize) -> (f32, f32) {
        if k.is_multiple_of(2) {
            (self.sigmas[k], self.sigmas[k + 1])
        } else {
            (self.sigmas[k - 1], self.sigmas[k])
        }
    }
}

impl Sampler for DpmPpSde {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        sigma_init_noise(&self.sigmas, self.spacing)
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let sigma = match (&self.first_stage, step % 2) {
            (Some((_, mid)), 1) => *mid,
            _ => self.sigmas[step],
        };
        div(sample, (sigma * sigma + 1.0).sqrt())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let (sigma, sigma_next) = self.step_sigmas(step);
        let second = step % 2 == 1 && self.first_stage.is_some();
        let (t, mut t_next) = (t_of(sigma), t_of(sigma_next));
        let t_mid = t + (t_next - t) * 0.5;
        let sigma_input = if second { sigma_of(t_mid) } else { sigma };
        let denoised = predict_original(self.prediction, model_output, sample, sigma_input)?;
        if sigma_next == 0.0 {
            let derivative = to_d(sample, &denoised, sigma)?;
            return add(sample, &mul(&derivative, sigma_next - sigma)?);
        }
        let start = if second {
            self.first_stage
                .take()
                .map(|(start, _)| start)
                .unwrap_or_else(|| sample.clone())
        } else {
            t_next = t_mid;
            sample.clone()
        };
        let (sigma_from, sigma_to) = (sigma_of(t), sigma_of(t_next));
        let sigma_up = sigma_to.min(
            (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
                / (sigma_from * sigma_from))
                .sqrt(),
        );
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let t_down = t_of(sigma_down);
        let next = mul(&start, sigma_of(t_down) / sigma_of(t))?;
        let next = add(&next, &mul(&denoised, -(t - t_down).exp_m1())?)?;
        let noise = noise_like(&next, rng)?;
        let next = add(&next, &mul(&mul(&noise, self.s_noise)?, sigma_up)?)?;
        if !second {
            self.first_stage = Some((start, sigma_to));
        }
        Ok(next)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        add(original, &mul(noise, self.sigmas[step])?)
    }

    fn reset(&mut self) {
        self.first_stage = None;
    }

    fn order(&self) -> usize {
        2
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::DpmPpSde
    }
}
