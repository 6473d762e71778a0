//! PLMS: the pseudo linear multistep method of PNDM (diffusers' `PNDMScheduler` with
//! `skip_prk_steps=True`, A1111's "PLMS").
//!
//! The first step is a plain pseudo-Euler step; the second re-evaluates the model at the same
//! timestep and averages (a Heun-like warm-up); then Adams–Bashforth combinations of the last
//! 2, 3 and 4 model outputs. That is why the timesteps repeat one value: `steps + 1` model
//! calls for `steps` steps.

use candle_core::Tensor;

use super::ddim::{alpha_sampler_basics, AlphaSteps};
use super::ops::{add, div, mul, sub};
use super::schedule;
use super::{check_step, PredictionType, ResolvedConfig, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// The PLMS sampler.
#[derive(Debug, Clone)]
pub struct Plms {
    alphas: AlphaSteps,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    prediction: PredictionType,
    /// Past model outputs (the last up to 4), oldest first.
    ets: Vec<Tensor>,
    /// The sample at the start of the warm-up step pair.
    cur_sample: Option<Tensor>,
    /// Steps taken since the start.
    counter: usize,
}

impl Plms {
    /// Sets up `steps` steps (`steps + 1` model calls).
    pub fn new(cfg: &ResolvedConfig, steps: usize) -> Result<Self> {
        if cfg.prediction_type == PredictionType::Sample {
            return Err(Error::Unsupported {
                what: "prediction type for PNDM",
                value: "sample".into(),
                valid: vec!["epsilon".into(), "v_prediction".into()],
            });
        }
        let base = schedule::discrete_timesteps(
            cfg.timestep_spacing,
            cfg.num_train_timesteps,
            steps,
            cfg.steps_offset,
        );
        // diffusers keeps ascending `_timesteps`, then [.. t[-2], t[-2], t[-1]] reversed; ours
        // are descending: [t0, t1, t1, t2, ...] for t0 > t1 > ...
        let mut timesteps = Vec::with_capacity(steps + 1);
        timesteps.push(base[0]);
        if steps > 1 {
            timesteps.push(base[1]);
        }
        timesteps.extend_from_slice(&base[1..]);
        Ok(Self {
            alphas: AlphaSteps::new(cfg, steps)?,
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            prediction: cfg.prediction_type,
            ets: Vec::new(),
            cur_sample: None,
            counter: 0,
        })
    }

    /// PNDM's formula (9): the sample at `prev_t` from the sample at `t` and the (combined)
    /// noise prediction.
    fn prev_sample(&self, sample: &Tensor, t: i64, prev_t: i64, eps: &Tensor) -> Result<Tensor> {
        let alpha_t = self.alphas.alpha_cumprod(t)?;
        let alpha_prev = self.alphas.alpha_cumprod(prev_t)?;
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let eps = match self.prediction {
            PredictionType::VPrediction => {
                add(&mul(eps, alpha_t.sqrt())?, &mul(sample, beta_t.sqrt())?)?
            }
            _ => eps.clone(),
        };
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denom = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        let correction = div(&mul(&eps, alpha_prev - alpha_t)?, denom)?;
        sub(&mul(sample, sample_coeff)?, &correction)
    }
}

/// `Σ cᵢ · tᵢ / d` over the given (coefficient, tensor) pairs.
fn combine(terms: &[(f32, &Tensor)], denom: f32) -> Result<Tensor> {
    let mut acc = mul(terms[0].1, terms[0].0)?;
    for &(c, t) in &terms[1..] {
        acc = add(&acc, &mul(t, c)?)?;
    }
    div(&acc, denom)
}

impl Sampler for Plms {
    alpha_sampler_basics!();

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.timesteps.len())?;
        let ratio = self.alphas.step_ratio;
        let mut t = self.timesteps[step];
        let mut prev_t = t - ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        } else {
            // The warm-up's second evaluation: same timestep, redo the first step.
            prev_t = t;
            t += ratio;
        }
        let n = self.ets.len();
        let mut sample = sample.clone();
        let eps = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if n == 1 && self.counter == 1 {
            let avg = div(&add(model_output, &self.ets[0])?, 2.0)?;
            if let Some(start) = self.cur_sample.take() {
                sample = start;
            }
            avg
        } else if n == 2 {
            combine(&[(3.0, &self.ets[1]), (-1.0, &self.ets[0])], 2.0)?
        } else if n == 3 {
            combine(
                &[
                    (23.0, &self.ets[2]),
                    (-16.0, &self.ets[1]),
                    (5.0, &self.ets[0]),
                ],
                12.0,
            )?
        } else {
            let e = &self.ets;
            let sum = combine(
                &[
                    (55.0, &e[n - 1]),
                    (-59.0, &e[n - 2]),
                    (37.0, &e[n - 3]),
                    (-9.0, &e[n - 4]),
                ],
                1.0,
            )?;
            mul(&sum, 1.0 / 24.0)?
        };
        let prev = self.prev_sample(&sample, t, prev_t, &eps)?;
        self.counter += 1;
        Ok(prev)
    }

    fn reset(&mut self) {
        self.ets.clear();
        self.cur_sample = None;
        self.counter = 0;
    }

    fn kind(&self) -> SamplerKind {
        SamplerKind::Pndm
    }
}
