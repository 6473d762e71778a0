//! DDIM (diffusers' `DDIMScheduler`): the deterministic (η = 0) or stochastic (η > 0)
//! implicit sampler of Song et al. (2020).

use candle_core::Tensor;

use super::kdiff::noise_like;
use super::ops::{add, div, mul, sub};
use super::schedule::{self, NoiseSchedule};
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// ᾱ-based timesteps shared by DDIM and PLMS.
#[derive(Debug, Clone)]
pub(crate) struct AlphaSteps {
    /// The training schedule.
    pub noise: NoiseSchedule,
    /// ᾱ used after the last timestep (1, or ᾱ₀).
    pub final_alpha_cumprod: f32,
    /// `T / steps` (integer division): how far back one step goes.
    pub step_ratio: i64,
}

impl AlphaSteps {
    /// The schedule of `cfg` for `steps` steps.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        let noise = cfg.noise_schedule()?;
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            noise.alphas_cumprod[0]
        };
        Ok(Self {
            noise,
            final_alpha_cumprod,
            step_ratio: (cfg.num_train_timesteps / steps) as i64,
        })
    }

    /// ᾱ_t; a negative `t` means "after the last step".
    pub fn alpha_cumprod(&self, t: i64) -> Result<f32> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.noise
            .alphas_cumprod
            .get(t as usize)
            .copied()
            .ok_or_else(|| {
                Error::invalid(
                    "timestep",
                    format!("{t} is beyond the {} training timesteps", self.noise.len()),
                )
            })
    }

    /// `sqrt(ᾱ_t) · original + sqrt(1 − ᾱ_t) · noise`.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, t: i64) -> Result<Tensor> {
        let alpha = self.alpha_cumprod(t)?;
        add(
            &mul(original, alpha.sqrt())?,
            &mul(noise, (1.0 - alpha).sqrt())?,
        )
    }
}

/// The [`Sampler`] methods that every ᾱ sampler (DDIM, DDPM, PLMS, LCM, TCD) answers from its
/// `timesteps` (integers), `timesteps_f64` and `alphas: AlphaSteps` fields: the timesteps and
/// add_noise.
macro_rules! alpha_sampler_basics {
    () => {
        fn timesteps(&self) -> &[f64] {
            &self.timesteps_f64
        }

        fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
            super::check_step(step, self.timesteps.len())?;
            self.alphas.add_noise(original, noise, self.timesteps[step])
        }
    };
}
pub(crate) use alpha_sampler_basics;

/// The clean-sample and noise estimates (x₀, ε) from the model output at cumulative alpha
/// `alpha_t`, as diffusers' ᾱ-based schedulers compute them (f32 scalars).
pub(crate) fn x0_and_eps(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_t: f32,
) -> Result<(Tensor, Tensor)> {
    let beta_t = 1.0 - alpha_t;
    Ok(match prediction {
        PredictionType::Epsilon => (
            div(
                &sub(sample, &mul(model_output, beta_t.sqrt())?)?,
                alpha_t.sqrt(),
            )?,
            model_output.clone(),
        ),
        PredictionType::Sample => (
            model_output.clone(),
            div(
                &sub(sample, &mul(model_output, alpha_t.sqrt())?)?,
                beta_t.sqrt(),
            )?,
        ),
        PredictionType::VPrediction => (
            sub(
                &mul(sample, alpha_t.sqrt())?,
                &mul(model_output, beta_t.sqrt())?,
            )?,
            add(
                &mul(model_output, alpha_t.sqrt())?,
                &mul(sample, beta_t.sqrt())?,
            )?,
        ),
    })
}

/// The DDIM sampler.
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas: AlphaSteps,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    prediction: PredictionType,
    clip_sample: Option<f32>,
    eta: f32,
}

impl Ddim {
    /// Sets up `steps` steps with stochasticity `eta`.
    pub fn new(cfg: &ResolvedConfig, steps: usize, eta: f64) -> Result<Self> {
        let timesteps = schedule::discrete_timesteps(
            cfg.timestep_spacing,
            cfg.num_train_timesteps,
            steps,
            cfg.steps_offset,
        );
        Ok(Self {
            alphas: AlphaSteps::new(cfg, steps)?,
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            prediction: cfg.prediction_type,
            clip_sample: cfg.clip_sample.then_some(cfg.clip_sample_range as f32),
            eta: eta as f32,
        })
    }
}

impl Sampler for Ddim {
    alpha_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let t = self.timesteps[step];
        let prev_t = t - self.alphas.step_ratio;
        let alpha_t = self.alphas.alpha_cumprod(t)?;
        let alpha_prev = self.alphas.alpha_cumprod(prev_t)?;
        let beta_t = 1.0 - alpha_t;
        let (mut x0, eps) = x0_and_eps(self.prediction, model_output, sample, alpha_t)?;
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range)?;
        }
        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = mul(&eps, (1.0 - alpha_prev - std_dev * std_dev).sqrt())?;
        let prev = add(&mul(&x0, alpha_prev.sqrt())?, &direction)?;
        if self.eta > 0.0 {
            let noise = noise_like(&prev, rng)?;
            return add(&prev, &mul(&noise, std_dev)?);
        }
        Ok(prev)
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Ddim
    }
}
