//! k-diffusion's samplers (`k_diffusion.sampling.sample_*`) as AUTOMATIC1111 drives them, run
//! one model evaluation at a time so the pipeline's loop can drive them like any [`Sampler`].
//!
//! The model is wrapped the way A1111's `CompVisDenoiser` wraps it: the sample is scaled by
//! c_in = 1/sqrt(σ² + 1), the timestep is found from σ by log-sigma interpolation of the
//! training sigmas, and the denoised estimate is x − σ·ε (or the v-prediction equivalent).
//! The samplers work on the unscaled sample x (variance σ² + 1) and walk a sigma list from
//! [`super::sigmas`]. A step from `sigmas[i]` to `sigmas[i + 1]` may evaluate the model more
//! than once (Heun, DPM2, DPM++ 2S a, DPM++ SDE); every evaluation is one entry of
//! [`Sampler::timesteps`], planned when the sampler is built.

use candle_core::Tensor;

use super::euler::predict_original;
use super::ops::{add, mul, sub};
use super::sigmas::ModelSigmas;
use super::{check_step, PredictionType, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// k-diffusion's `to_d`: the ODE's direction `(x − denoised) / σ`.
pub(crate) fn to_d(x: &Tensor, denoised: &Tensor, sigma: f32) -> Result<Tensor> {
    super::ops::div(&sub(x, denoised)?, sigma)
}

/// k-diffusion's `get_ancestral_step`: the deterministic target σ_down and the fresh noise σ_up
/// of a step from `sigma_from` to `sigma_to`, with σ_down² + σ_up² = σ_to² (`eta` scales σ_up).
pub(crate) fn get_ancestral_step(sigma_from: f32, sigma_to: f32, eta: f32) -> (f32, f32) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
    let sigma_up = sigma_to.min(eta * (to2 * (from2 - to2) / from2).sqrt());
    let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

/// The log-SNR-like time of DPM-Solver: t = −log σ.
pub(crate) fn t_fn(sigma: f32) -> f32 {
    -sigma.ln()
}

/// The inverse of [`t_fn`]: σ = e^{−t}.
pub(crate) fn sigma_fn(t: f32) -> f32 {
    (-t).exp()
}

/// The geometric midpoint of two sigmas, as `exp(lerp(log a, log b, 1/2))` in torch.
pub(crate) fn log_midpoint(a: f32, b: f32) -> f32 {
    let (la, lb) = (a.ln(), b.ln());
    // torch.lerp with weight >= 0.5 counts back from the end.
    (lb - (lb - la) * 0.5).exp()
}

/// Draws N(0, 1) noise shaped like `x` (k-diffusion's default noise sampler, `randn_like`).
pub(crate) fn noise_like(x: &Tensor, rng: &mut dyn NoiseSource) -> Result<Tensor> {
    Ok(rng.randn(x.dims(), x.device())?.to_dtype(x.dtype())?)
}

/// `x + noise · scale` with fresh noise.
pub(crate) fn add_noise_scaled(
    x: &Tensor,
    rng: &mut dyn NoiseSource,
    scale: f32,
) -> Result<Tensor> {
    let noise = noise_like(x, rng)?;
    add(x, &mul(&noise, scale)?)
}

/// Karras's "churn" (Algorithm 2): before step i, raise the noise level from σ to
/// σ̂ = σ·(1 + γ) by adding fresh noise, γ = min(s_churn / steps, √2 − 1) inside [s_tmin, s_tmax].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// Total churn over the run (0: none, the default).
    pub s_churn: f32,
    /// Lowest sigma that is churned.
    pub s_tmin: f32,
    /// Highest sigma that is churned.
    pub s_tmax: f32,
    /// Scale of the added noise.
    pub s_noise: f32,
}

impl Churn {
    /// γ for a step at `sigma` in a run of `steps` steps.
    pub fn gamma(&self, sigma: f32, steps: usize) -> f32 {
        if self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / steps as f32).min(std::f32::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }

    /// σ̂ of step `i` of `sigmas`.
    pub fn sigma_hat(&self, sigmas: &[f32], i: usize) -> f32 {
        sigmas[i] * (self.gamma(sigmas[i], sigmas.len() - 1) + 1.0)
    }

    /// Adds the churn noise before step `i` (k-diffusion draws it every step once churn is on).
    pub fn apply(
        &self,
        sigmas: &[f32],
        i: usize,
        x: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        if self.s_churn <= 0.0 {
            return Ok(x.clone());
        }
        let eps = mul(&noise_like(x, rng)?, self.s_noise)?;
        let sigma = sigmas[i];
        let gamma = self.gamma(sigma, sigmas.len() - 1);
        if gamma > 0.0 {
            let sigma_hat = sigma * (gamma + 1.0);
            add(
                x,
                &mul(&eps, (sigma_hat * sigma_hat - sigma * sigma).sqrt())?,
            )
        } else {
            Ok(x.clone())
        }
    }
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f32::INFINITY,
            s_noise: 1.0,
        }
    }
}

/// One k-diffusion sampling algorithm, fed one denoised prediction at a time. `sigmas` is the
/// run's sigma list (for img2img, the part from the start); `i` indexes its steps.
pub(crate) trait KAlgorithm: Send {
    /// The sigmas at which step `i` evaluates the model, in order (by default one evaluation,
    /// at the step's own sigma).
    fn eval_sigmas(&self, sigmas: &[f32], i: usize) -> Vec<f32> {
        vec![sigmas[i]]
    }

    /// Called before the first evaluation of step `i`; may change the sample (churn).
    fn begin_step(
        &mut self,
        _sigmas: &[f32],
        _i: usize,
        x: &Tensor,
        _rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        Ok(x.clone())
    }

    /// Takes the denoised prediction of evaluation `stage` of step `i` (made at sample `x`) and
    /// returns the sample of the next evaluation: the next stage's, or step `i + 1`'s start.
    fn advance(
        &mut self,
        sigmas: &[f32],
        i: usize,
        stage: usize,
        x: &Tensor,
        denoised: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor>;

    /// Forgets any history (a fresh run, e.g. img2img's start).
    fn reset(&mut self);
}

/// One planned model evaluation.
#[derive(Debug, Clone, Copy)]
struct Evaluation {
    /// The step (index into the sigmas).
    step: usize,
    /// Which evaluation of the step (0 first).
    stage: usize,
    /// The sigma the model sees.
    sigma: f32,
}

/// A k-diffusion sampler on a sigma list, driven by evaluation index.
pub struct KDiffusion {
    kind: SamplerKind,
    algorithm: Box<dyn KAlgorithm>,
    model: ModelSigmas,
    prediction: PredictionType,
    sigmas: Vec<f32>,
    sigmas_f64: Vec<f64>,
    evaluations: Vec<Evaluation>,
    timesteps: Vec<f64>,
    /// The sigma index where this run starts (img2img), 0 for txt2img.
    offset: usize,
}

impl KDiffusion {
    /// A sampler for `kind` running `algorithm` over `sigmas` (ending at 0 or a small σ).
    pub(crate) fn new(
        kind: SamplerKind,
        algorithm: Box<dyn KAlgorithm>,
        model: ModelSigmas,
        prediction: PredictionType,
        sigmas: Vec<f32>,
    ) -> Result<Self> {
        if sigmas.len() < 2 {
            return Err(Error::invalid(
                "sigmas",
                "a schedule needs at least two sigmas",
            ));
        }
        let mut sampler = Self {
            kind,
            algorithm,
            model,
            prediction,
            sigmas_f64: sigmas.iter().map(|&s| f64::from(s)).collect(),
            sigmas,
            evaluations: Vec::new(),
            timesteps: Vec::new(),
            offset: 0,
        };
        sampler.plan();
        Ok(sampler)
    }

    /// Lists the model evaluations of every step from `offset` on (earlier ones are kept).
    fn plan(&mut self) {
        let keep = self
            .evaluations
            .iter()
            .position(|e| e.step >= self.offset)
            .unwrap_or(self.evaluations.len());
        self.evaluations.truncate(keep);
        let run = &self.sigmas[self.offset..];
        for i in 0..run.len() - 1 {
            for (stage, sigma) in self.algorithm.eval_sigmas(run, i).into_iter().enumerate() {
                self.evaluations.push(Evaluation {
                    step: i + self.offset,
                    stage,
                    sigma,
                });
            }
        }
        self.timesteps = self
            .evaluations
            .iter()
            .map(|e| f64::from(self.model.sigma_to_t(e.sigma)))
            .collect();
    }

    /// The evaluation index where step `step` (a sigma index) begins.
    fn first_evaluation_of(&self, step: usize) -> usize {
        self.evaluations
            .iter()
            .position(|e| e.step == step && e.stage == 0)
            .unwrap_or(self.evaluations.len())
    }
}

impl Sampler for KDiffusion {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas_f64)
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.sigmas[0])
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.evaluations.len())?;
        let sigma = self.evaluations[step].sigma;
        mul(sample, 1.0 / (sigma * sigma + 1.0).sqrt())
    }

    fn prepare_step(
        &mut self,
        sample: &Tensor,
        step: usize,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.evaluations.len())?;
        let eval = self.evaluations[step];
        if eval.stage != 0 {
            return Ok(sample.clone());
        }
        let run = &self.sigmas[self.offset..];
        self.algorithm
            .begin_step(run, eval.step - self.offset, sample, rng)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.evaluations.len())?;
        let eval = self.evaluations[step];
        if eval.step < self.offset {
            return Err(Error::invalid(
                "step",
                format!("evaluation {step} lies before the run's start"),
            ));
        }
        let denoised = predict_original(self.prediction, model_output, sample, eval.sigma)?;
        let run = &self.sigmas[self.offset..];
        self.algorithm.advance(
            run,
            eval.step - self.offset,
            eval.stage,
            sample,
            &denoised,
            rng,
        )
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.evaluations.len())?;
        let sigma = self.sigmas[self.evaluations[step].step];
        add(original, &mul(noise, sigma)?)
    }

    fn start_at(&mut self, step: usize) -> Result<()> {
        check_step(step, self.evaluations.len())?;
        let eval = self.evaluations[step];
        if eval.stage != 0 {
            return Err(Error::invalid(
                "step",
                format!("evaluation {step} is in the middle of a sampler step"),
            ));
        }
        self.offset = eval.step;
        self.algorithm.reset();
        self.plan();
        Ok(())
    }

    /// AUTOMATIC1111's rule: `t_enc = int(min(strength, 0.999) · steps)` steps are denoised,
    /// starting one sigma before them (`sigmas[steps − t_enc − 1:]`).
    fn img2img_start(&self, steps: usize, strength: f64) -> Result<usize> {
        super::img2img_start_step(steps, strength)?;
        let t_enc = (strength.min(0.999) * steps as f64) as usize;
        let first = steps.saturating_sub(t_enc + 1).min(self.sigmas.len() - 2);
        Ok(self.first_evaluation_of(first))
    }

    fn is_step_start(&self, step: usize) -> bool {
        self.evaluations.get(step).is_some_and(|e| e.stage == 0)
    }

    fn kind(&self) -> SamplerKind {
        self.kind
    }
}
