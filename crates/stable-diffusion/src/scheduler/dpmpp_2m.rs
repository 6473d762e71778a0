//! DPM-Solver++(2M) (diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`; A1111's "DPM++ 2M"): a second-order
//! multistep solver on the data prediction x₀, in log-SNR time λ = log(α / σ).
//!
//! The same class with `algorithm_type="sde-dpmsolver++"` (A1111's "DPM++ 2M SDE") is the
//! stochastic variant: each step contracts the sample by e^{−h} more and adds fresh noise of
//! σ_t·sqrt(1 − e^{−2h}) ([`DpmPp2M::sde`]).

use candle_core::Tensor;

use super::ops::{add, div, mul, sub};
use super::schedule::{self, NoiseSchedule};
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::Result;

/// `(α_t, σ_t)` of the variance-preserving process at the sigma-parametrisation `sigma`.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The data prediction x₀ from a model output at `sigma` (DPM-Solver's
/// `convert_model_output` for the data-prediction solvers: DPM++ 2M/2S, UniPC, DEIS).
pub(crate) fn data_prediction(
    prediction: PredictionType,
    sigma: f32,
    model_output: &Tensor,
    sample: &Tensor,
) -> Result<Tensor> {
    let (alpha, sigma) = alpha_sigma(sigma);
    match prediction {
        PredictionType::Epsilon => div(&sub(sample, &mul(model_output, sigma)?)?, alpha),
        PredictionType::Sample => Ok(model_output.clone()),
        PredictionType::VPrediction => sub(&mul(sample, alpha)?, &mul(model_output, sigma)?),
    }
}

/// λ = log α − log σ (+∞ at σ = 0).
pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// DPM-Solver's timesteps and sigmas (diffusers' `DPMSolverMultistepScheduler.set_timesteps`,
/// shared by UniPC and DEIS): `steps + 1` spaced timesteps with the last dropped and their
/// interpolated sigmas, or Karras sigmas over the whole training range with their rounded
/// timesteps (truncated for the cosine schedule unless `always_round`); then the final sigma.
pub(crate) fn dpm_solver_sigmas(
    cfg: &ResolvedConfig,
    steps: usize,
    always_round: bool,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let noise: NoiseSchedule = cfg.noise_schedule()?;
    let train = noise.train_sigmas();
    let (timesteps, sigmas): (Vec<f64>, Vec<f64>) = if cfg.use_karras_sigmas {
        // DPM's Karras bounds are the whole training range.
        let sigma_min = f64::from(train[0]);
        let sigma_max = f64::from(train[train.len() - 1]);
        let sigmas = schedule::karras_sigmas(sigma_min, sigma_max, steps);
        let log_sigmas = noise.log_train_sigmas();
        let timesteps = sigmas
            .iter()
            .map(|&s| {
                let t = schedule::sigma_to_t(s, &log_sigmas);
                if !always_round && cfg.beta_schedule == schedule::BetaSchedule::SquaredCosCapV2 {
                    t.trunc()
                } else {
                    schedule::round_half_even(t)
                }
            })
            .collect();
        (timesteps, sigmas)
    } else {
        let ts = schedule::dpm_timesteps(
            cfg.timestep_spacing,
            cfg.num_train_timesteps,
            steps,
            cfg.steps_offset,
        );
        let sigmas = ts
            .iter()
            .map(|&t| schedule::interp_sigma(t as f64, &train))
            .collect();
        (ts.into_iter().map(|t| t as f64).collect(), sigmas)
    };
    let last = if cfg.final_sigma_min {
        f64::from(train[0])
    } else {
        0.0
    };
    let sigmas: Vec<f32> = sigmas
        .into_iter()
        .chain(std::iter::once(last))
        .map(|s| s as f32)
        .collect();
    Ok((timesteps, sigmas))
}

/// The DPM-Solver++(2M) sampler.
#[derive(Debug, Clone)]
pub struct DpmPp2M {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_f64: Vec<f64>,
    prediction: PredictionType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    heun: bool,
    /// `sde-dpmsolver++`: the stochastic update with fresh noise every step.
    sde: bool,
    /// The previous data prediction x₀ (for the second-order update).
    previous: Option<Tensor>,
    /// How many steps have run (capped at 2): the solver's order ramps up with it.
    lower_order_nums: usize,
}

impl DpmPp2M {
    /// Sets up `steps` steps with the resolved config.
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        let (timesteps, sigmas) = dpm_solver_sigmas(cfg, steps, false)?;
        Ok(Self {
            timesteps,
            sigmas_f64: sigmas.iter().map(|&s| f64::from(s)).collect(),
            sigmas,
            prediction: cfg.prediction_type,
            lower_order_final: cfg.lower_order_final,
            euler_at_final: cfg.euler_at_final,
            final_sigma_zero: !cfg.final_sigma_min,
            heun: cfg.heun,
            sde: false,
            previous: None,
            lower_order_nums: 0,
        })
    }

    /// `algorithm_type="sde-dpmsolver++"`: `steps` steps of DPM-Solver++ (2M) SDE, with the
    /// config's `solver_type` ("midpoint", or "heun" for A1111's "DPM++ 2M SDE Heun").
    pub fn sde(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        Ok(Self {
            sde: true,
            ..Self::new(cfg, steps)?
        })
    }

    /// The data prediction x₀ from the model output at step `step`.
    fn data_prediction(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        step: usize,
    ) -> Result<Tensor> {
        data_prediction(self.prediction, self.sigmas[step], model_output, sample)
    }
}

impl Sampler for DpmPp2M {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas_f64)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let n = self.timesteps.len();
        let short = self.lower_order_final && n < 15;
        let lower_order_final =
            step == n - 1 && (self.euler_at_final || short || self.final_sigma_zero);
        let x0 = self.data_prediction(model_output, sample, step)?;
        let previous = self.previous.replace(x0.clone());

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let phi = alpha_t * ((-h).exp() - 1.0); // α_t (e^{−h} − 1)
        let scaled_sample = mul(sample, sigma_t / sigma_s0)?;

        if self.sde {
            // diffusers draws the noise on every step, the last (where σ_t = 0) included.
            let noise = rng
                .randn(model_output.dims(), model_output.device())?
                .to_dtype(sample.dtype())?;
            let decay = (-2.0 * h).exp(); // e^{−2h}
            let scaled_sample = mul(sample, sigma_t / sigma_s0 * (-h).exp())?;
            let data_weight = alpha_t * (1.0 - decay);
            let mut prev = add(&scaled_sample, &mul(&x0, data_weight)?)?;
            if let Some(m1) = previous.filter(|_| self.lower_order_nums >= 1 && !lower_order_final)
            {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1]);
                let h_0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
                let d1 = mul(&sub(&x0, &m1)?, 1.0 / (h_0 / h))?;
                let c = if self.heun {
                    alpha_t * ((1.0 - decay) / (-2.0 * h) + 1.0)
                } else {
                    0.5 * data_weight
                };
                prev = add(&prev, &mul(&d1, c)?)?;
            }
            let prev = add(&prev, &mul(&noise, sigma_t * (1.0 - decay).sqrt())?)?;
            if self.lower_order_nums < 2 {
                self.lower_order_nums += 1;
            }
            return Ok(prev);
        }
        let prev = match previous {
            Some(m1) if self.lower_order_nums >= 1 && !lower_order_final => {
                // Second order: D1 = (m0 − m1) / r0, r0 = h_prev / h.
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1]);
                let h_0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
                let r0 = h_0 / h;
                let d1 = mul(&sub(&x0, &m1)?, 1.0 / r0)?;
                let first = sub(&scaled_sample, &mul(&x0, phi)?)?;
                if self.heun {
                    let c = alpha_t * (((-h).exp() - 1.0) / h + 1.0);
                    add(&first, &mul(&d1, c)?)?
                } else {
                    sub(&first, &mul(&d1, 0.5 * phi)?)?
                }
            }
            _ => sub(&scaled_sample, &mul(&x0, phi)?)?,
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let (alpha, sigma) = alpha_sigma(self.sigmas[step]);
        add(&mul(original, alpha)?, &mul(noise, sigma)?)
    }

    fn start_at(&mut self, step: usize) -> Result<()> {
        check_step(step, self.timesteps.len())?;
        self.previous = None;
        self.lower_order_nums = 0;
        Ok(())
    }

    fn kind(&self) -> SamplerKind {
        match (self.sde, self.heun) {
            (false, _) => SamplerKind::DpmPp2M,
            (true, false) => SamplerKind::DpmPp2MSde,
            (true, true) => SamplerKind::DpmPp2MSdeHeun,
        }
    }
}
