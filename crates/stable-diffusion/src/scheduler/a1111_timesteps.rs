//! AUTOMATIC1111's own timestep samplers, "DDIM", "PLMS" and "UniPC" (its
//! `sd_samplers_timesteps`): they walk integer training timesteps, not a sigma schedule, so A1111's
//! schedule types do not apply to them.
//!
//! A1111 plans the ascending grid `clip(range(0, T, T / steps) + 1, 0, T − 1)` (integer
//! division, so 7 steps plan 8 timesteps), gives the model the unscaled sample, and turns a
//! v-prediction output into ε with ᾱ at `int(t)`:
//!
//! ```text
//! ε = sqrt(ᾱ_int(t)) · v + sqrt(1 − ᾱ_int(t)) · x
//! ```
//!
//! img2img (A1111's default, `img2img_fix_steps` off): `t_enc = int(min(strength, 0.999) ·
//! steps)`, the clean latents are noised to ᾱ of `grid[t_enc]`, and the sampler runs on
//! `grid[..t_enc]`. Each algorithm ([`super::a1111_ddim`], [`super::a1111_unipc`]) plans its own
//! model calls on the grid it is given.

use std::cell::Cell;

use candle_core::Tensor;

use super::ops::{add, mul};
use super::{check_step, img2img_start_step, PredictionType, Sampler, SamplerKind};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// The integer timesteps A1111 plans for `steps` steps of a `train`-step model, ascending.
pub fn a1111_grid(steps: usize, train: usize) -> Vec<usize> {
    let stride = (train / steps.max(1)).max(1);
    (0..train)
        .step_by(stride)
        .map(|t| (t + 1).min(train - 1))
        .collect()
}

/// One planned model call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Call {
    /// The (possibly fractional) timestep the model sees.
    pub timestep: f64,
    /// Whether the call begins a sampler step (false for PLMS's second warm-up call).
    pub step_start: bool,
}

/// One of A1111's timestep algorithms, fed one ε prediction at a time.
pub(crate) trait TimestepAlgorithm: Send {
    /// The model calls of a run over `grid` (ascending); `img2img` says the run continues a
    /// noised image (UniPC starts its continuous time from the grid then).
    fn plan(&self, grid: &[usize], img2img: bool) -> Result<Vec<Call>>;

    /// Starts a run over `grid`, forgetting any history.
    fn start(&mut self, grid: &[usize], img2img: bool) -> Result<()>;

    /// Takes ε of call `call` of the run (made at sample `x`) and returns the sample of the
    /// next call, or the result after the last.
    fn advance(
        &mut self,
        call: usize,
        x: &Tensor,
        eps: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor>;
}

/// An img2img run: where it starts and how many grid timesteps it uses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Img2Img {
    first: usize,
    t_enc: usize,
}

/// A1111's timestep sampler: the grid, the ε conversion and img2img, around one algorithm.
pub struct A1111Timesteps {
    kind: SamplerKind,
    algorithm: Box<dyn TimestepAlgorithm>,
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    grid: Vec<usize>,
    calls: Vec<Call>,
    timesteps: Vec<f64>,
    /// The call where the current run starts.
    offset: usize,
    /// The img2img run planned by `img2img_start`, taken up by `start_at`.
    pending: Cell<Option<Img2Img>>,
    /// The img2img run in progress, if any.
    img2img: Option<Img2Img>,
}

impl A1111Timesteps {
    /// `algorithm` over A1111's grid for `steps` steps of the schedule `alphas_cumprod`.
    pub(crate) fn new(
        kind: SamplerKind,
        mut algorithm: Box<dyn TimestepAlgorithm>,
        alphas_cumprod: Vec<f32>,
        prediction: PredictionType,
        steps: usize,
    ) -> Result<Self> {
        if prediction == PredictionType::Sample {
            return Err(Error::invalid(
                "prediction type",
                format!(
                    "A1111's {} supports epsilon and v-prediction models, not sample prediction",
                    kind.a1111_name()
                ),
            ));
        }
        let grid = a1111_grid(steps, alphas_cumprod.len());
        let calls = algorithm.plan(&grid, false)?;
        algorithm.start(&grid, false)?;
        let mut sampler = Self {
            kind,
            algorithm,
            alphas_cumprod,
            prediction,
            timesteps: Vec::new(),
            calls: Vec::new(),
            grid,
            offset: 0,
            pending: Cell::new(None),
            img2img: None,
        };
        sampler.set_calls(calls);
        Ok(sampler)
    }

    /// Sets the planned calls and the timesteps the model sees at them.
    fn set_calls(&mut self, calls: Vec<Call>) {
        self.timesteps = calls.iter().map(|c| c.timestep).collect();
        self.calls = calls;
    }

    /// ᾱ at integer timestep `t` (clamped to the table).
    fn alpha_at(&self, t: usize) -> f32 {
        self.alphas_cumprod[t.min(self.alphas_cumprod.len() - 1)]
    }

    /// ε from the model output at call `call`.
    fn eps(&self, output: &Tensor, call: usize, sample: &Tensor) -> Result<Tensor> {
        match self.prediction {
            PredictionType::VPrediction => {
                let alpha = self.alpha_at(self.timesteps[call] as usize);
                add(
                    &mul(output, alpha.sqrt())?,
                    &mul(sample, (1.0 - alpha).sqrt())?,
                )
            }
            _ => Ok(output.clone()),
        }
    }
}

impl Sampler for A1111Timesteps {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(step, self.calls.len())?;
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_step(step, self.calls.len())?;
        if step < self.offset {
            return Err(Error::invalid(
                "step",
                format!("call {step} lies before the run's start"),
            ));
        }
        let eps = self.eps(model_output, step, sample)?;
        self.algorithm
            .advance(step - self.offset, sample, &eps, rng)
    }

    /// `sqrt(ᾱ)·x₀ + sqrt(1 − ᾱ)·noise` at the img2img start level (`grid[t_enc]`, one grid
    /// step above the first call, as A1111 noises it), else at call `step`'s own timestep.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let t = match self.img2img {
            Some(run) if run.first == step => self.grid[run.t_enc],
            _ => {
                check_step(step, self.calls.len())?;
                self.timesteps[step] as usize
            }
        };
        let alpha = self.alpha_at(t);
        add(
            &mul(original, alpha.sqrt())?,
            &mul(noise, (1.0 - alpha).sqrt())?,
        )
    }

    /// Starts the img2img run that [`Sampler::img2img_start`] planned; A1111's timestep
    /// samplers cannot start in the middle of a txt2img run (e.g. a refiner handoff).
    fn start_at(&mut self, step: usize) -> Result<()> {
        if step == 0 {
            self.offset = 0;
            self.img2img = None;
            let calls = self.algorithm.plan(&self.grid, false)?;
            self.set_calls(calls);
            return self.algorithm.start(&self.grid, false);
        }
        let run = match self.pending.get() {
            Some(run) if run.first == step => run,
            _ => {
                return Err(Error::invalid(
                    "sampler",
                    format!(
                        "A1111's {} runs whole: it starts at the first step or where \
                         img2img puts it, not at step {step} (use the diffusers flavor)",
                        self.kind.a1111_name()
                    ),
                ))
            }
        };
        let grid = &self.grid[..run.t_enc];
        let mut calls = self.calls[..run.first].to_vec();
        calls.extend(self.algorithm.plan(grid, true)?);
        self.algorithm.start(grid, true)?;
        self.set_calls(calls);
        self.offset = run.first;
        self.img2img = Some(run);
        Ok(())
    }

    /// A1111's rule: `t_enc = int(min(strength, 0.999) · steps)`; the run over `grid[..t_enc]`
    /// takes the last calls of the txt2img plan's length.
    fn img2img_start(&self, steps: usize, strength: f64) -> Result<usize> {
        img2img_start_step(steps, strength)?;
        let t_enc = ((strength.min(0.999) * steps as f64) as usize).min(self.grid.len() - 1);
        let calls = self.algorithm.plan(&self.grid[..t_enc], true)?.len();
        // Every plan keeps the txt2img run's length (an img2img run takes its last calls).
        let first = self.calls.len().checked_sub(calls).ok_or_else(|| {
            Error::invalid(
                "strength",
                format!("{strength} plans more calls than the whole run"),
            )
        })?;
        self.pending.set(Some(Img2Img { first, t_enc }));
        Ok(first)
    }

    fn is_step_start(&self, step: usize) -> bool {
        self.calls.get(step).is_some_and(|c| c.step_start)
    }

    fn kind(&self) -> SamplerKind {
        self.kind
    }
}
