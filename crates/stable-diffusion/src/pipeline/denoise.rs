//! One generation: initial latents (noise, an encoded init image, inpainting inputs), the
//! denoising loop with classifier-free guidance, the optional refiner handoff, VAE decoding.

use std::time::Instant;

use candle_core::{DType, Tensor};

use super::conditioning::ConditioningSchedule;
use super::inpaint::{self, InpaintMode};
use super::model::StableDiffusion;
use super::preview::{PreviewHook, StepPreview};
use super::refiner;
use super::variation::RunNoise;
use super::{Control, Generation, GenerationRequest, ModelFamily, Progress, Timings};
use crate::prompt::ScheduleSteps;
use crate::rng::NoiseSource;
use crate::scheduler::Blend;
use crate::scheduler::{build_sampler_with, GuidedPrediction, Model, SamplerPlan, StepInfo};
use crate::{Error, Result};

/// The inputs of a generation besides the request: tensors and models the caller loaded.
#[derive(Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// The img2img / inpainting start image, `(1, 3, height, width)` in [-1, 1].
    pub init_image: Option<&'a Tensor>,
    /// img2img start latents in the UNet's scale, `(1, channels, height/8, width/8)`, used
    /// instead of VAE-encoding an image (a hires fix's latent upscaler).
    pub init_latents: Option<&'a Tensor>,
    /// The inpainting mask, `(1, 1, height, width)` (see [`super::mask_to_tensor`]).
    pub mask: Option<&'a Tensor>,
    /// The refiner that takes over at `request.refiner_switch`.
    pub refiner: Option<&'a StableDiffusion>,
    /// Set for a hires fix's second pass: the first pass's steps, which A1111's prompt
    /// schedules (`[from:to:when]`) count from (see [`crate::prompt::ScheduleSteps`]).
    pub hires_first_pass_steps: Option<usize>,
    /// Called after every sampling step with the step's estimate (live previews).
    pub previews: Option<PreviewHook<'a>>,
}

/// The steps a request's prompt schedules count: A1111 counts model evaluations, so its
/// second-order samplers count twice the steps.
fn schedule_steps(request: &GenerationRequest, inputs: &Inputs) -> ScheduleSteps {
    let factor = if request.sampler.evaluates_twice_per_step() {
        2
    } else {
        1
    };
    match inputs.hires_first_pass_steps {
        Some(first_pass) => ScheduleSteps::Hires {
            first_pass: first_pass * factor,
            steps: request.steps * factor,
        },
        None => ScheduleSteps::Single(request.steps * factor),
    }
}

/// The default number of training timesteps when a scheduler config does not say.
const DEFAULT_TRAIN_TIMESTEPS: usize = 1000;

impl StableDiffusion {
    /// Runs one generation on tensors that are ready: `inputs` holds the init image, mask and
    /// refiner (the request's image data and model names are read by [`super::run`], which
    /// decodes and resolves them into `inputs`); width, height and seed must be set. `progress` is called after each stage and step; returning
    /// [`Control::Cancel`] ends the run with [`Error::Cancelled`].
    pub fn generate(
        &self,
        request: &GenerationRequest,
        inputs: &Inputs,
        progress: &mut dyn FnMut(Progress) -> Control,
    ) -> Result<Generation> {
        self.check_inputs(request, inputs)?;
        // Set when the caller asks to finish early: the sampler's error is then a stop.
        let finish = std::cell::Cell::new(false);
        let mut check = |event: Progress| match progress(event) {
            Control::Continue => Ok(()),
            Control::Finish if matches!(event, Progress::Decoding) => Ok(()),
            Control::Finish if matches!(event, Progress::Step { .. }) => {
                finish.set(true);
                Err(Error::Cancelled)
            }
            Control::Cancel | Control::Finish => Err(Error::Cancelled),
        };
        let mut timings = Timings::default();
        let batch = request.batch_size;

        check(Progress::EncodingText)?;
        let start = Instant::now();
        let schedule_steps = schedule_steps(request, inputs);
        let conditioning = self.scheduled_conditioning(request, schedule_steps)?;
        timings.text_encoding = start.elapsed();

        let mut rng = request.noise_streams()?;
        let mut plan = self.sampler(request)?;

        let factor = self.spatial_factor();
        let latent_shape = [
            batch,
            self.unet.config().out_channels,
            request.height_px() / factor,
            request.width_px() / factor,
        ];
        let image_start = Instant::now();
        let (latents, inpaint) = match (inputs.init_image, inputs.mask) {
            (None, _) if inputs.init_latents.is_none() => {
                let noise = rng.initial_noise(request, &latent_shape, factor, &self.device)?;
                ((noise * plan.init_noise_sigma())?, InpaintMode::None)
            }
            (None, _) | (Some(_), None) => {
                let init = match (inputs.init_latents, inputs.init_image) {
                    (Some(latents), _) => latents.to_device(&self.device)?.to_dtype(self.dtype)?,
                    (None, Some(image)) => {
                        check(Progress::EncodingImage)?;
                        self.encode_image(image, batch, &mut rng)?
                    }
                    (None, None) => unreachable!("txt2img is the arm above"),
                };
                let init = if init.dim(0)? == batch {
                    init
                } else {
                    init.repeat((batch, 1, 1, 1))?
                };
                plan.start_img2img(request.steps, request.strength)?;
                let noise = rng.initial_noise(request, &latent_shape, factor, &self.device)?;
                (plan.noised_start(&init, &noise)?, InpaintMode::None)
            }
            (Some(image), Some(mask)) => {
                check(Progress::EncodingImage)?;
                self.prepare_inpaint(request, image, mask, &latent_shape, &mut plan, &mut rng)?
            }
        };
        if inputs.init_image.is_some() {
            timings.image_encoding = image_start.elapsed();
        }
        let latents = latents.to_dtype(self.dtype)?;

        // The refiner takes the last steps: the base stops where it starts.
        let refiner_run = match inputs.refiner {
            Some(refiner) => {
                let switch = request.refiner_switch;
                let base =
                    refiner::base_steps(&plan.step_timesteps()?, switch, self.train_timesteps());
                plan.stop_after(base)?;
                let mut refiner_plan = refiner.sampler(request)?;
                let first = refiner::refiner_start(
                    &refiner_plan.step_timesteps()?,
                    switch,
                    refiner.train_timesteps(),
                );
                refiner_plan.skip(first)?;
                Some((refiner, refiner_plan))
            }
            None => None,
        };

        let total = plan.steps() + refiner_run.as_ref().map_or(0, |(_, p)| p.steps());
        let mut done = 0;
        let previews = inputs.previews;
        let mut step_done = |step: &StepInfo<'_>, family: ModelFamily| {
            done += 1;
            if let Some(hook) = previews {
                hook(&StepPreview {
                    step: done,
                    total,
                    latents: step.denoised.unwrap_or(step.x),
                    family,
                });
            }
            check(Progress::Step { step: done, total })
        };
        let start = Instant::now();
        let mut guided = Guided {
            model: self,
            schedule: &conditioning,
            calls: 0,
            request,
            inpaint: &inpaint,
            step_done: &mut step_done,
            last_estimate: None,
        };
        let blend = inpaint.blend();
        let sampled = plan.run(&mut guided, latents, &mut rng, blend);
        let (mut latents, mut interrupted) = finished_early(sampled, &mut guided, &finish)?;
        let calls = guided.calls;
        let decoder = match refiner_run {
            Some((refiner, mut refiner_plan)) if !interrupted => {
                let conditioning = refiner.scheduled_conditioning(request, schedule_steps)?;
                let mut guided = Guided {
                    model: refiner,
                    schedule: &conditioning,
                    calls,
                    request,
                    inpaint: &InpaintMode::None,
                    step_done: &mut step_done,
                    last_estimate: None,
                };
                let sampled = refiner_plan.run(
                    &mut guided,
                    latents.to_dtype(refiner.dtype)?,
                    &mut rng,
                    None,
                );
                (latents, interrupted) = finished_early(sampled, &mut guided, &finish)?;
                refiner
            }
            _ => self,
        };
        timings.sampling = start.elapsed();
        timings.steps = total;

        check(Progress::Decoding)?;
        let start = Instant::now();
        let images = decoder.decode_latents(&latents, request.vae_tiling == Some(true))?;
        timings.decoding = start.elapsed();
        Ok(Generation {
            images,
            latents,
            timings,
            interrupted,
        })
    }

    /// Checks the inputs against the request and the model before any work.
    fn check_inputs(&self, request: &GenerationRequest, inputs: &Inputs) -> Result<()> {
        request.validate(self.spatial_factor())?;
        if let Some(latents) = inputs.init_latents {
            let factor = self.spatial_factor();
            let expected = [
                1,
                self.unet.config().out_channels,
                request.height_px() / factor,
                request.width_px() / factor,
            ];
            if inputs.init_image.is_some() || inputs.mask.is_some() || latents.dims() != expected {
                return Err(Error::invalid(
                    "init latents",
                    format!(
                        "expected {expected:?} and no init image or mask, found {:?}",
                        latents.dims()
                    ),
                ));
            }
        }
        if let Some(image) = inputs.init_image {
            let (_, channels, h, w) = image.dims4()?;
            if channels != 3 || (h, w) != (request.height_px(), request.width_px()) {
                return Err(Error::invalid(
                    "init image",
                    format!(
                        "expected (1, 3, {}, {}), found {:?}; resize it to the request's size first",
                        request.height_px(),
                        request.width_px(),
                        image.dims()
                    ),
                ));
            }
            if let Some(mask) = inputs.mask {
                inpaint::check_mask(mask, image)?;
            }
        }
        if self.description.inpainting && inputs.mask.is_none() {
            return Err(Error::invalid(
                "mask",
                format!(
                    "{} is an inpainting model: give an init image and a mask",
                    self.name()
                ),
            ));
        }
        if let Some(refiner) = inputs.refiner {
            if refiner.description.inpainting {
                return Err(Error::invalid(
                    "refiner",
                    "an inpainting model cannot be a refiner",
                ));
            }
            let ours = (self.unet.config().out_channels, self.spatial_factor());
            let theirs = (refiner.unet.config().out_channels, refiner.spatial_factor());
            if ours != theirs {
                return Err(Error::invalid(
                    "refiner",
                    format!(
                        "the refiner's latents ({} channels, factor {}) differ from the model's ({} channels, factor {})",
                        theirs.0, theirs.1, ours.0, ours.1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// About how many bytes decoding `batch` images of `width` x `height` in one piece takes
    /// (see [`super::memory::decode_bytes`]).
    pub fn untiled_decode_bytes(&self, width: usize, height: usize, batch: usize) -> u64 {
        super::memory::decode_bytes(self.vae.config(), width, height, batch, self.vae_dtype)
    }

    /// About how many bytes a request of `size` takes beyond the weights (see
    /// [`super::memory::request_bytes`]).
    pub fn request_bytes(&self, size: super::memory::RequestSize) -> u64 {
        super::memory::request_bytes(
            self.unet.config(),
            self.vae.config(),
            size,
            self.dtype,
            self.vae_dtype,
        )
    }

    /// The training timesteps of the model's schedule.
    fn train_timesteps(&self) -> usize {
        self.scheduler_config
            .num_train_timesteps
            .unwrap_or(DEFAULT_TRAIN_TIMESTEPS)
    }

    /// A sampler for the request on this model's schedule.
    fn sampler(&self, request: &GenerationRequest) -> Result<SamplerPlan> {
        build_sampler_with(
            request.sampler,
            request.schedule,
            &self.scheduler_config,
            request.steps,
            &request.resolved_sampler_options(),
        )
    }

    /// VAE-encodes an image `(1, 3, h, w)` to scaled latents `(batch, ...)` in the compute
    /// dtype. The posterior is sampled from `rng` once and repeated, as diffusers'
    /// `retrieve_latents(..., generator)` does; with per-image streams each image samples it
    /// from its own stream.
    fn encode_image(&self, image: &Tensor, batch: usize, rng: &mut RunNoise) -> Result<Tensor> {
        let image = image.to_device(&self.device)?.to_dtype(self.vae_dtype)?;
        let posterior = self.vae.encode(&image)?;
        let latents = match rng.per_image() {
            Some(images) if images > 1 => {
                let mean = posterior.mean.repeat((images, 1, 1, 1))?;
                let noise = rng
                    .randn(mean.dims(), mean.device())?
                    .to_dtype(mean.dtype())?;
                (mean + posterior.std()?.broadcast_mul(&noise)?)?
            }
            _ => posterior.sample(rng)?.repeat((batch, 1, 1, 1))?,
        };
        self.scale_latents(&latents)?
            .to_dtype(self.dtype)
            .map_err(Into::into)
    }

    /// VAE latents → the UNet's scale: `scaling · z`, or `(z − mean) · scaling / std` when the
    /// VAE config has latent statistics.
    fn scale_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let config = self.vae.config();
        match self.latent_stats(latents)? {
            Some((mean, std)) => Ok(latents
                .broadcast_sub(&mean)?
                .affine(config.scaling_factor, 0.0)?
                .broadcast_div(&std)?),
            None => Ok(latents.affine(config.scaling_factor, 0.0)?),
        }
    }

    /// The VAE's per-channel latent mean and std as `(1, c, 1, 1)`, when its config has them.
    fn latent_stats(&self, like: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let config = self.vae.config();
        match (&config.latents_mean, &config.latents_std) {
            (Some(mean), Some(std)) => {
                let as_tensor = |v: &Vec<f64>| -> Result<Tensor> {
                    Ok(Tensor::new(v.as_slice(), like.device())?
                        .to_dtype(like.dtype())?
                        .reshape((1, v.len(), 1, 1))?)
                };
                Ok(Some((as_tensor(mean)?, as_tensor(std)?)))
            }
            _ => Ok(None),
        }
    }

    /// Decodes final latents to images, in the VAE's dtype (f32 when it must be upcast), in
    /// tiles when `tiled` and the latents are larger than one.
    fn decode_latents(&self, latents: &Tensor, tiled: bool) -> Result<Vec<image::RgbImage>> {
        let latents = latents.to_dtype(self.vae_dtype)?;
        let scaling = self.vae.config().scaling_factor;
        let unscaled = match self.latent_stats(&latents)? {
            Some((mean, std)) => latents
                .broadcast_mul(&std)?
                .affine(1.0 / scaling, 0.0)?
                .broadcast_add(&mean)?,
            None => (&latents / scaling)?,
        };
        let decoded = if tiled {
            self.vae.decode_tiled(&unscaled)?
        } else {
            self.vae.decode(&unscaled)?
        };
        crate::image::tensor_to_images(&decoded.to_dtype(DType::F32)?)
    }

    /// Prepares inpainting as diffusers does, in its order of random draws: the init image's
    /// latents (when the UNet has 4 channels or the strength is below 1), the noise, then the
    /// masked image's latents. Returns the start latents, the first step and the loop's mode.
    fn prepare_inpaint(
        &self,
        request: &GenerationRequest,
        image: &Tensor,
        mask: &Tensor,
        latent_shape: &[usize],
        plan: &mut SamplerPlan,
        rng: &mut RunNoise,
    ) -> Result<(Tensor, InpaintMode)> {
        let batch = request.batch_size;
        let full_strength = request.strength >= 1.0;
        plan.start_img2img(request.steps, request.strength)?;
        let nine_channels = self.description.inpainting;
        let image_latents = if !nine_channels || !full_strength {
            Some(self.encode_image(image, batch, rng)?)
        } else {
            None
        };
        let noise = rng.randn(latent_shape, &self.device)?;
        rng.initial_noise_drawn(request);
        let latents = match &image_latents {
            Some(init) if !full_strength => plan.noised_start(init, &noise)?,
            _ => (&noise * plan.init_noise_sigma())?,
        };
        let small_mask = inpaint::latent_mask(mask, self.spatial_factor())?.to_dtype(self.dtype)?;
        let masked = inpaint::masked_image(image, mask)?;
        let mode = if nine_channels {
            let masked_latents = self.encode_image(&masked, batch, rng)?;
            let copies = if request.uses_cfg() { 2 } else { 1 };
            InpaintMode::Concat {
                mask: small_mask.repeat((copies * batch, 1, 1, 1))?,
                masked_latents: masked_latents.repeat((copies, 1, 1, 1))?,
            }
        } else {
            // diffusers encodes the masked image for 4-channel UNets too, and does not use it:
            // only its draw from the generator matters.
            let images = rng.per_image().unwrap_or(1);
            let shape = [images, latent_shape[1], latent_shape[2], latent_shape[3]];
            rng.randn(&shape, &self.device)?;
            InpaintMode::Blend(Blend {
                mask: small_mask.repeat((batch, 1, 1, 1))?,
                image_latents: image_latents.expect("encoded for 4 channels"),
                noise: noise.to_dtype(self.dtype)?,
            })
        };
        Ok((latents, mode))
    }
}

/// The model as the sampler calls it for one request: the UNet with classifier-free
/// guidance, the prompt schedule (by model call, as A1111 counts it) and a 9-channel
/// inpainting model's extra inputs.
/// The sampler's result, or after [`Control::Finish`] stopped it, the estimate of the last
/// step (and `true`).
fn finished_early(
    sampled: Result<Tensor>,
    guided: &mut Guided<'_>,
    finish: &std::cell::Cell<bool>,
) -> Result<(Tensor, bool)> {
    match sampled {
        Ok(latents) => Ok((latents, false)),
        Err(Error::Cancelled) if finish.get() => match guided.last_estimate.take() {
            Some(estimate) => Ok((estimate, true)),
            None => Err(Error::Cancelled),
        },
        Err(e) => Err(e),
    }
}

struct Guided<'a> {
    model: &'a StableDiffusion,
    schedule: &'a ConditioningSchedule,
    /// Model calls so far, the prompt schedule's position (a refiner continues the base's).
    calls: usize,
    request: &'a GenerationRequest,
    inpaint: &'a InpaintMode,
    step_done: &'a mut dyn FnMut(&StepInfo<'_>, ModelFamily) -> Result<()>,
    /// The step's denoised estimate (else its sample) when the caller stopped the run there.
    last_estimate: Option<Tensor>,
}

impl Guided<'_> {
    /// The UNet's output for `input` at `timestep`: the (unconditional, conditional) halves
    /// with guidance, else the one conditional output.
    fn forward(&mut self, input: &Tensor, timestep: f64) -> Result<(Option<Tensor>, Tensor)> {
        let conditioning = self.schedule.at(self.calls);
        self.calls += 1;
        let cfg = self.request.uses_cfg();
        let model_input = if cfg {
            Tensor::cat(&[input, input], 0)?
        } else {
            input.clone()
        };
        let model_input = self.inpaint.unet_input(model_input)?;
        let prediction = self.model.unet.forward(
            &model_input,
            timestep,
            &conditioning.context,
            conditioning.added.as_ref(),
        )?;
        if !cfg {
            return Ok((None, prediction));
        }
        let halves = prediction.chunk(2, 0)?;
        Ok((Some(halves[0].clone()), halves[1].clone()))
    }
}

/// `uncond + (cond − uncond) · scale`.
fn guide(uncond: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
    Ok((uncond + ((cond - uncond)? * scale)?)?)
}

impl Model for Guided<'_> {
    fn predict(&mut self, input: &Tensor, timestep: f64) -> Result<Tensor> {
        match self.forward(input, timestep)? {
            (Some(uncond), cond) => guide(&uncond, &cond, self.request.cfg_scale),
            (None, cond) => Ok(cond),
        }
    }

    fn predict_with_uncond(
        &mut self,
        input: &Tensor,
        timestep: f64,
        scale_multiplier: f64,
    ) -> Result<GuidedPrediction> {
        match self.forward(input, timestep)? {
            (Some(uncond), cond) => Ok(GuidedPrediction {
                guided: guide(&uncond, &cond, self.request.cfg_scale * scale_multiplier)?,
                uncond,
            }),
            (None, cond) => Ok(GuidedPrediction {
                guided: cond.clone(),
                uncond: cond,
            }),
        }
    }

    fn step_done(&mut self, step: &StepInfo<'_>) -> Result<()> {
        let result = (self.step_done)(step, self.model.family());
        if result.is_err() {
            // Kept for Control::Finish: what A1111 decodes when interrupted.
            self.last_estimate = Some(step.denoised.unwrap_or(step.x).clone());
        }
        result
    }
}
