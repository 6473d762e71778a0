//! The model as a sampler calls it.
//!
//! A sampler never sees the UNet, guidance, the prompt schedule or a mask: it calls a
//! [`Denoiser`], which wraps the caller's [`Model`] (the guided model output at a timestep)
//! the way AUTOMATIC1111 wraps its model for k-diffusion:
//!
//! - sigma samplers ask for k-diffusion's D(x, σ) ([`Denoiser::denoise`]): the sample is
//!   scaled by c_in = 1/sqrt(σ² + 1), σ becomes a timestep by log-sigma interpolation of the
//!   training sigmas, and the output becomes the denoised estimate (x − σ·ε for ε-prediction);
//! - A1111's timestep samplers ask for ε at a training timestep ([`Denoiser::eps`]), the
//!   model seeing the unscaled sample and a v-prediction turned into ε with ᾱ at `int(t)`;
//!   its CFG++ sampler asks for the guided and the unconditional ε of one call
//!   ([`Denoiser::eps_with_uncond`], through [`Model::predict_with_uncond`]).
//!
//! With an inpainting mask on a 4-channel model the denoiser blends in the init image's
//! latents as A1111 does: into the denoised estimate for sigma samplers, into the model's input
//! for the timestep samplers (its `mask_before_denoising`). Every sampler step ends in
//! [`Denoiser::step_done`] (k-diffusion's `callback`), where the caller reports progress and may
//! cancel.

use candle_core::Tensor;

use super::euler::predict_original;
use super::ops::{add, mul};
use super::sigmas::ModelSigmas;
use super::PredictionType;
use crate::Result;

/// What the denoiser calls: the model with everything a request adds (guidance, the prompt
/// schedule, inpainting channels), and the per-step hook.
pub trait Model {
    /// The (guided) model output for `input`, already scaled as the sampler wants, at the
    /// training timestep `timestep` (fractional for sigma samplers).
    fn predict(&mut self, input: &Tensor, timestep: f64) -> Result<Tensor>;

    /// Like [`Model::predict`], with the guidance scale multiplied by `scale_multiplier`, and
    /// the unconditional output the guided one was mixed from (A1111's
    /// `cond_scale_miltiplier` and `last_noise_uncond`, which its CFG++ samplers use). A model
    /// without guidance has one output, and returns it as both.
    fn predict_with_uncond(
        &mut self,
        input: &Tensor,
        timestep: f64,
        scale_multiplier: f64,
    ) -> Result<GuidedPrediction> {
        let _ = scale_multiplier;
        let output = self.predict(input, timestep)?;
        Ok(GuidedPrediction {
            guided: output.clone(),
            uncond: output,
        })
    }

    /// Called once after each sampler step; an error (such as [`crate::Error::Cancelled`])
    /// ends the run.
    fn step_done(&mut self, step: &StepInfo<'_>) -> Result<()>;
}

/// A guided model output beside the unconditional output it was mixed from.
#[derive(Debug, Clone)]
pub struct GuidedPrediction {
    /// `uncond + (cond − uncond) · scale`, the scale as the sampler asked for it.
    pub guided: Tensor,
    /// The unconditional (negative prompt) output.
    pub uncond: Tensor,
}

/// What a sampler reports after a step.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo<'a> {
    /// The step just taken, from 0.
    pub step: usize,
    /// The sample: for sigma samplers the one the step started from (after any churn, as
    /// k-diffusion's callback reports it), else the one the step made.
    pub x: &'a Tensor,
    /// The step's denoised estimate, when the sampler has one.
    pub denoised: Option<&'a Tensor>,
}

/// An inpainting blend: where `mask` is 1 the sample is repainted, elsewhere the init image's
/// latents are kept. Tensors are batched like the latents.
#[derive(Debug, Clone)]
pub struct Blend {
    /// 1 where the sample is repainted, 0 where the init image is kept.
    pub mask: Tensor,
    /// The init image's latents (unnoised).
    pub image_latents: Tensor,
    /// The noise the diffusers flavor adds to `image_latents` at each step's level.
    pub noise: Tensor,
}

impl Blend {
    /// `(1 − mask)·kept + mask·latents`.
    pub fn apply(&self, kept: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let mask = self.mask.to_dtype(latents.dtype())?;
        let inverse = mask.affine(-1.0, 1.0)?;
        Ok((inverse.broadcast_mul(&kept.to_dtype(latents.dtype())?)?
            + mask.broadcast_mul(latents)?)?)
    }

    /// The init latents blended into `latents`, unnoised (A1111's rule).
    pub fn keep_init(&self, latents: &Tensor) -> Result<Tensor> {
        self.apply(&self.image_latents, latents)
    }
}

/// How the model's timesteps relate to the sample.
enum Wrapping<'a> {
    /// k-diffusion's sigma parametrization on the training sigmas.
    Sigmas(&'a ModelSigmas),
    /// A1111's timestep samplers on the cumulative alphas.
    Alphas(&'a [f32]),
}

/// The model as a sampler calls it (see the module docs).
pub struct Denoiser<'a> {
    model: &'a mut dyn Model,
    wrapping: Wrapping<'a>,
    prediction: PredictionType,
    blend: Option<&'a Blend>,
}

impl<'a> Denoiser<'a> {
    /// A denoiser for sigma samplers on the training sigmas `table`.
    pub fn sigmas(
        model: &'a mut dyn Model,
        table: &'a ModelSigmas,
        prediction: PredictionType,
        blend: Option<&'a Blend>,
    ) -> Self {
        Self {
            model,
            wrapping: Wrapping::Sigmas(table),
            prediction,
            blend,
        }
    }

    /// A denoiser for A1111's timestep samplers on the cumulative alphas `alphas_cumprod`.
    pub fn timesteps(
        model: &'a mut dyn Model,
        alphas_cumprod: &'a [f32],
        prediction: PredictionType,
        blend: Option<&'a Blend>,
    ) -> Self {
        Self {
            model,
            wrapping: Wrapping::Alphas(alphas_cumprod),
            prediction,
            blend,
        }
    }

    /// The fractional training timestep of `sigma` (sigma samplers; 0 otherwise).
    pub fn sigma_to_t(&self, sigma: f32) -> f32 {
        match self.wrapping {
            Wrapping::Sigmas(table) => table.sigma_to_t(sigma),
            Wrapping::Alphas(_) => 0.0,
        }
    }

    /// The cumulative alphas of a timestep denoiser (empty for sigma samplers).
    pub fn alphas_cumprod(&self) -> &'a [f32] {
        match self.wrapping {
            Wrapping::Alphas(table) => table,
            Wrapping::Sigmas(_) => &[],
        }
    }

    /// k-diffusion's D(x, σ): the denoised estimate of the unscaled sample `x` at noise level
    /// `sigma`.
    pub fn denoise(&mut self, x: &Tensor, sigma: f32) -> Result<Tensor> {
        let input = mul(x, 1.0 / (sigma * sigma + 1.0).sqrt())?;
        let timestep = f64::from(self.sigma_to_t(sigma));
        let output = self.model.predict(&input, timestep)?;
        let denoised = predict_original(self.prediction, &output, x, sigma)?;
        match self.blend {
            Some(blend) => blend.keep_init(&denoised),
            None => Ok(denoised),
        }
    }

    /// ε at training timestep `timestep` for the sample `x` (A1111's timestep samplers).
    pub fn eps(&mut self, x: &Tensor, timestep: f64) -> Result<Tensor> {
        let x = self.timestep_input(x)?;
        let output = self.model.predict(&x, timestep)?;
        self.output_to_eps(output, &x, timestep)
    }

    /// The guided ε, its guidance scale multiplied by `scale_multiplier`, and the
    /// unconditional ε, at training timestep `timestep` for the sample `x` (A1111's CFG++
    /// timestep samplers).
    pub fn eps_with_uncond(
        &mut self,
        x: &Tensor,
        timestep: f64,
        scale_multiplier: f64,
    ) -> Result<GuidedPrediction> {
        let x = self.timestep_input(x)?;
        let output = self
            .model
            .predict_with_uncond(&x, timestep, scale_multiplier)?;
        Ok(GuidedPrediction {
            guided: self.output_to_eps(output.guided, &x, timestep)?,
            uncond: self.output_to_eps(output.uncond, &x, timestep)?,
        })
    }

    /// The model's input for the timestep samplers: `x` with the init image blended in
    /// (A1111's `mask_before_denoising`).
    fn timestep_input(&self, x: &Tensor) -> Result<Tensor> {
        match self.blend {
            Some(blend) => blend.keep_init(x),
            None => Ok(x.clone()),
        }
    }

    /// The model's output for the input `x` at `timestep` as ε: a v-prediction is turned
    /// into ε with ᾱ at `int(timestep)`.
    fn output_to_eps(&self, output: Tensor, x: &Tensor, timestep: f64) -> Result<Tensor> {
        match (self.prediction, &self.wrapping) {
            (PredictionType::VPrediction, Wrapping::Alphas(table)) if !table.is_empty() => {
                let alpha = table[(timestep as usize).min(table.len() - 1)];
                add(&mul(&output, alpha.sqrt())?, &mul(x, (1.0 - alpha).sqrt())?)
            }
            _ => Ok(output),
        }
    }

    /// The denoised estimate at the start of step `step` (at `sigma`), reported to the hook as
    /// that step's result, as k-diffusion's samplers call their callback.
    pub fn denoise_step(&mut self, step: usize, x: &Tensor, sigma: f32) -> Result<Tensor> {
        let denoised = self.denoise(x, sigma)?;
        self.step_done(step, x, Some(&denoised))?;
        Ok(denoised)
    }

    /// Reports the end of a sampler step to the caller's hook.
    pub fn step_done(&mut self, step: usize, x: &Tensor, denoised: Option<&Tensor>) -> Result<()> {
        self.model.step_done(&StepInfo { step, x, denoised })
    }
}
