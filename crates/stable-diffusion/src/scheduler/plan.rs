//! A sampler set up for one run ([`SamplerPlan`]), as the pipeline drives it: where it starts
//! (txt2img, img2img), where it stops (a refiner handoff), and the run itself.
//!
//! - The diffusers flavor drives a diffusers scheduler class ([`Sampler`]) through one adapter
//!   loop, as diffusers' pipelines do: scale the input, call the model, `step`, and for a
//!   4-channel inpainting model put the init image back, noised to the next timestep.
//! - The k-diffusion flavor hands a slice of its sigma list to a k-diffusion sampler, or
//!   A1111's timestep grid to one of A1111's own samplers; img2img and the refiner are slices.

use candle_core::Tensor;

use super::a1111_timesteps::{a1111_grid, img2img_t_enc, TimestepSampler};
use super::catalog::{DiffusersSettings, KRun};
use super::denoiser::{Blend, Denoiser, Model, StepInfo};
use super::kdiff::{KSettings, SigmaSampler};
use super::ops::{add, mul};
use super::sigmas::ModelSigmas;
use super::{
    img2img_start_step, kdiffusion_sigmas, PredictionType, ResolvedConfig, Sampler, SamplerFlavor,
    SamplerKind, SamplerOptions, SchedulerConfig, SigmaSchedule,
};
use crate::rng::NoiseSource;
use crate::{Error, Result};

/// A sampler set up for one run of a request's steps.
pub struct SamplerPlan {
    kind: SamplerKind,
    run: Run,
}

/// What runs, and the part of it this run takes.
enum Run {
    /// A diffusers class over its timesteps `first..end`.
    Diffusers {
        sampler: Box<dyn Sampler>,
        first: usize,
        end: usize,
    },
    /// A k-diffusion sampler over the steps `first..end` of `sigmas` (step i goes from
    /// `sigmas[i]` to `sigmas[i + 1]`).
    Sigmas {
        sample: SigmaSampler,
        settings: KSettings,
        table: ModelSigmas,
        prediction: PredictionType,
        sigmas: Vec<f32>,
        first: usize,
        end: usize,
    },
    /// One of A1111's samplers over `grid` (or its first `t_enc` timesteps for img2img).
    Timesteps {
        sample: TimestepSampler,
        settings: KSettings,
        alphas_cumprod: Vec<f32>,
        prediction: PredictionType,
        grid: Vec<usize>,
        t_enc: Option<usize>,
        min_steps: usize,
        steps_on_grid: fn(usize) -> usize,
    },
}

/// Builds a sampler for `steps` steps. `eta` is DDIM's stochasticity (0 = deterministic; also
/// DDIM CFG++'s) and is ignored by the other samplers (which keep their defaults; see
/// [`build_sampler_with`]).
pub fn build_sampler(
    kind: SamplerKind,
    schedule: SigmaSchedule,
    config: &SchedulerConfig,
    steps: usize,
    eta: f64,
) -> Result<SamplerPlan> {
    let options = SamplerOptions {
        eta: kind.uses_ddim_eta().then_some(eta),
        ..SamplerOptions::default()
    };
    build_sampler_with(kind, schedule, config, steps, &options)
}

/// Builds a sampler for `steps` steps with the user's options, in the flavor
/// [`SamplerOptions::resolve_flavor`] picks.
pub fn build_sampler_with(
    kind: SamplerKind,
    schedule: SigmaSchedule,
    config: &SchedulerConfig,
    steps: usize,
    options: &SamplerOptions,
) -> Result<SamplerPlan> {
    let default_eta = match kind {
        _ if kind.uses_ddim_eta() => 0.0,
        SamplerKind::Tcd => super::tcd::DEFAULT_GAMMA,
        _ => 1.0,
    };
    let eta = options.eta.unwrap_or(default_eta);
    if !eta.is_finite() || eta < 0.0 {
        return Err(Error::invalid("eta", format!("must be >= 0, got {eta}")));
    }
    let churn = options.churn()?;
    let flavor = options.resolve_flavor(kind, schedule)?;
    let rescaled;
    let config = if options.rescale_zero_snr {
        // Zero terminal SNR needs the first step at the last training timestep: trailing.
        rescaled = SchedulerConfig {
            rescale_betas_zero_snr: Some(true),
            timestep_spacing: Some("trailing".into()),
            ..config.clone()
        };
        &rescaled
    } else {
        config
    };
    let mut cfg = config.resolve(kind)?;
    if cfg.zero_snr.is_some() && flavor == SamplerFlavor::KDiffusion {
        return Err(Error::invalid(
            "rescale_zero_snr",
            format!(
                "zero terminal SNR rescaling runs in the diffusers flavor only; \
                 use --sampler {} --sampler-flavor diffusers",
                kind.name()
            ),
        ));
    }
    if steps == 0 {
        return Err(Error::invalid("steps", "must be at least 1"));
    }
    if steps > cfg.num_train_timesteps {
        return Err(Error::invalid(
            "steps",
            format!(
                "{steps} is more than the model's {} training timesteps",
                cfg.num_train_timesteps
            ),
        ));
    }
    if flavor == SamplerFlavor::KDiffusion {
        let settings = KSettings {
            eta: eta as f32,
            churn,
        };
        return build_kdiffusion(kind, schedule, &cfg, steps, options, settings);
    }
    if churn.s_churn > 0.0 && kind != SamplerKind::Euler {
        return Err(Error::invalid(
            "s_churn",
            format!(
                "diffusers' {} has no churn; use euler, or the k-diffusion flavor",
                kind.name()
            ),
        ));
    }
    if options.eta.is_some() && !matches!(kind, SamplerKind::Ddim | SamplerKind::Tcd) {
        return Err(Error::invalid(
            "eta",
            format!(
                "diffusers' {} has no eta (only DDIM's eta and TCD's gamma exist there); for an \
                 ancestral or SDE sampler's eta use the k-diffusion flavor",
                kind.diffusers_class().unwrap_or(kind.name())
            ),
        ));
    }
    if schedule == SigmaSchedule::Karras {
        cfg.use_karras_sigmas = true;
    } else if kind == SamplerKind::EulerA {
        // diffusers' EulerAncestral has no `use_karras_sigmas` and ignores the key in a config.
        cfg.use_karras_sigmas = false;
    }
    let Some(diffusers) = kind.info().diffusers else {
        return Err(Error::invalid(
            "sampler",
            format!("{} has no diffusers implementation", kind.name()),
        ));
    };
    let sampler = (diffusers.build)(&cfg, steps, &DiffusersSettings { eta, churn })?;
    let end = sampler.timesteps().len();
    Ok(SamplerPlan {
        kind,
        run: Run::Diffusers {
            sampler,
            first: 0,
            end,
        },
    })
}

/// The k-diffusion flavor: A1111's timestep grid, or the sigma list of the schedule.
fn build_kdiffusion(
    kind: SamplerKind,
    schedule: SigmaSchedule,
    cfg: &ResolvedConfig,
    steps: usize,
    options: &SamplerOptions,
    settings: KSettings,
) -> Result<SamplerPlan> {
    let Some(k) = kind.info().kdiffusion else {
        return Err(Error::invalid(
            "sampler flavor",
            format!("{} has no k-diffusion implementation", kind.name()),
        ));
    };
    let noise = cfg.noise_schedule()?;
    let run = match k.run {
        KRun::Timesteps {
            sample,
            min_steps,
            steps_on_grid,
        } => {
            if cfg.prediction_type == PredictionType::Sample {
                return Err(Error::invalid(
                    "prediction type",
                    format!(
                        "A1111's {} supports epsilon and v-prediction models, not sample \
                         prediction",
                        kind.a1111_name()
                    ),
                ));
            }
            let grid = a1111_grid(steps, noise.alphas_cumprod.len());
            check_grid(kind, grid.len(), min_steps)?;
            Run::Timesteps {
                sample,
                settings,
                alphas_cumprod: noise.alphas_cumprod.clone(),
                prediction: cfg.prediction_type,
                grid,
                t_enc: None,
                min_steps,
                steps_on_grid,
            }
        }
        KRun::Sigmas(sample) => {
            let table = if kind == SamplerKind::Lcm {
                ModelSigmas::lcm(&noise)
            } else {
                ModelSigmas::new(&noise)
            };
            let sigmas = kdiffusion_sigmas(kind, schedule, &table, steps, options)?;
            if sigmas.len() < 2 {
                return Err(Error::invalid(
                    "sigmas",
                    "a schedule needs at least two sigmas",
                ));
            }
            let end = sigmas.len() - 1;
            Run::Sigmas {
                sample,
                settings,
                table,
                prediction: cfg.prediction_type,
                sigmas,
                first: 0,
                end,
            }
        }
    };
    Ok(SamplerPlan { kind, run })
}

/// Refuses a grid shorter than an A1111 sampler runs on.
fn check_grid(kind: SamplerKind, len: usize, min_steps: usize) -> Result<()> {
    if len < min_steps {
        return Err(Error::invalid(
            "steps",
            format!(
                "A1111's {} needs at least {min_steps} steps, this run has {len}",
                kind.a1111_name()
            ),
        ));
    }
    Ok(())
}

/// The error for a start or stop inside a run of A1111's timestep samplers.
fn runs_whole(kind: SamplerKind) -> Error {
    Error::invalid(
        "sampler",
        format!(
            "A1111's {} runs whole: it starts at the first step or where img2img puts it and \
             cannot hand over in the middle (use the diffusers flavor for a refiner)",
            kind.a1111_name()
        ),
    )
}

impl SamplerPlan {
    /// Which sampler this is.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The diffusers class this plan drives, if it is in the diffusers flavor.
    pub fn diffusers(&self) -> Option<&dyn Sampler> {
        match &self.run {
            Run::Diffusers { sampler, .. } => Some(sampler.as_ref()),
            _ => None,
        }
    }

    /// The diffusers class this plan drives, taken out of it (for driving it step by step).
    pub fn into_diffusers(self) -> Option<Box<dyn Sampler>> {
        match self.run {
            Run::Diffusers { sampler, .. } => Some(sampler),
            _ => None,
        }
    }

    /// The whole sigma list of a sigma-based run (the diffusers class's or the k-diffusion
    /// schedule's), else `None`.
    pub fn sigmas(&self) -> Option<Vec<f64>> {
        match &self.run {
            Run::Diffusers { sampler, .. } => sampler.sigmas().map(<[f64]>::to_vec),
            Run::Sigmas { sigmas, .. } => Some(sigmas.iter().map(|&s| f64::from(s)).collect()),
            Run::Timesteps { .. } => None,
        }
    }

    /// The standard deviation of txt2img's initial noise (multiply N(0, 1) latents by it).
    pub fn init_noise_sigma(&self) -> f64 {
        match &self.run {
            Run::Diffusers { sampler, .. } => sampler.init_noise_sigma(),
            Run::Sigmas { sigmas, .. } => f64::from(sigmas[0]),
            Run::Timesteps { .. } => 1.0,
        }
    }

    /// The steps this run takes (model calls in the diffusers flavor, as diffusers counts
    /// its progress; sampler steps otherwise).
    pub fn steps(&self) -> usize {
        match &self.run {
            Run::Diffusers { first, end, .. } | Run::Sigmas { first, end, .. } => end - first,
            Run::Timesteps {
                grid,
                t_enc,
                steps_on_grid,
                ..
            } => steps_on_grid(t_enc.unwrap_or(grid.len())),
        }
    }

    /// Starts the run where an img2img run of `steps` steps at `strength` starts: diffusers'
    /// rule in the diffusers flavor, AUTOMATIC1111's in the k-diffusion flavor (`t_enc =
    /// int(min(strength, 0.999) · steps)` steps are denoised, from one sigma before them).
    pub fn start_img2img(&mut self, steps: usize, strength: f64) -> Result<()> {
        img2img_start_step(steps, strength)?;
        let kind = self.kind;
        match &mut self.run {
            Run::Diffusers { sampler, first, .. } => {
                *first = sampler.img2img_start(steps, strength)?;
                sampler.start_at(*first)?;
            }
            Run::Sigmas { sigmas, first, .. } => {
                let t_enc = (strength.min(0.999) * steps as f64) as usize;
                *first = steps.saturating_sub(t_enc + 1).min(sigmas.len() - 2);
            }
            Run::Timesteps {
                grid,
                t_enc,
                min_steps,
                ..
            } => {
                let enc = img2img_t_enc(steps, strength, grid.len());
                check_grid(kind, enc, *min_steps)?;
                *t_enc = Some(enc);
            }
        }
        Ok(())
    }

    /// A clean sample `original` noised with `noise` to the level where the run starts
    /// (img2img's starting point).
    pub fn noised_start(&self, original: &Tensor, noise: &Tensor) -> Result<Tensor> {
        match &self.run {
            Run::Diffusers { sampler, first, .. } => sampler.add_noise(original, noise, *first),
            Run::Sigmas { sigmas, first, .. } => add(original, &mul(noise, sigmas[*first])?),
            Run::Timesteps {
                grid,
                t_enc,
                alphas_cumprod,
                ..
            } => {
                // A1111 noises to one grid step above the first call.
                let t = grid[t_enc.unwrap_or(grid.len() - 1)];
                let alpha = alphas_cumprod[t.min(alphas_cumprod.len() - 1)];
                add(
                    &mul(original, alpha.sqrt())?,
                    &mul(noise, (1.0 - alpha).sqrt())?,
                )
            }
        }
    }

    /// The model timestep at the start of each step this run takes (for a refiner handoff).
    pub fn step_timesteps(&self) -> Result<Vec<f64>> {
        match &self.run {
            Run::Diffusers {
                sampler,
                first,
                end,
            } => Ok(sampler.timesteps()[*first..*end].to_vec()),
            Run::Sigmas {
                table,
                sigmas,
                first,
                end,
                ..
            } => Ok(sigmas[*first..*end]
                .iter()
                .map(|&s| f64::from(table.sigma_to_t(s)))
                .collect()),
            Run::Timesteps { .. } => Err(runs_whole(self.kind)),
        }
    }

    /// Stops the run after its first `steps` steps (the base model's part of a handoff).
    pub fn stop_after(&mut self, steps: usize) -> Result<()> {
        let all = self.steps();
        match &mut self.run {
            Run::Diffusers { first, end, .. } | Run::Sigmas { first, end, .. } => {
                *end = (*first + steps).min(*end);
                Ok(())
            }
            Run::Timesteps { .. } if steps >= all => Ok(()),
            Run::Timesteps { .. } => Err(runs_whole(self.kind)),
        }
    }

    /// Starts the run `steps` steps later (the refiner's part of a handoff): multistep
    /// histories start fresh there.
    pub fn skip(&mut self, steps: usize) -> Result<()> {
        match &mut self.run {
            Run::Diffusers {
                sampler,
                first,
                end,
            } => {
                *first = (*first + steps).min(*end);
                if *first < *end {
                    sampler.start_at(*first)?;
                }
                Ok(())
            }
            Run::Sigmas { first, end, .. } => {
                *first = (*first + steps).min(*end);
                Ok(())
            }
            Run::Timesteps { .. } if steps == 0 => Ok(()),
            Run::Timesteps { .. } => Err(runs_whole(self.kind)),
        }
    }

    /// Runs the sampler from the sample `x`, calling `model` and drawing noise from `rng`;
    /// `blend` is a 4-channel inpainting model's mask and init image.
    pub fn run(
        &mut self,
        model: &mut dyn Model,
        x: Tensor,
        rng: &mut dyn NoiseSource,
        blend: Option<&Blend>,
    ) -> Result<Tensor> {
        match &mut self.run {
            Run::Diffusers {
                sampler,
                first,
                end,
            } => diffusers_loop(sampler.as_mut(), *first..*end, model, x, rng, blend),
            Run::Sigmas {
                sample,
                settings,
                table,
                prediction,
                sigmas,
                first,
                end,
            } => {
                if first == end {
                    return Ok(x);
                }
                let mut denoiser = Denoiser::sigmas(model, table, *prediction, blend);
                let x = sample(&mut denoiser, x, &sigmas[*first..=*end], rng, settings)?;
                final_blend(x, blend)
            }
            Run::Timesteps {
                sample,
                settings,
                alphas_cumprod,
                prediction,
                grid,
                t_enc,
                ..
            } => {
                let run_grid = match t_enc {
                    Some(t) => &grid[..*t],
                    None => &grid[..],
                };
                let mut denoiser = Denoiser::timesteps(model, alphas_cumprod, *prediction, blend);
                let x = sample(&mut denoiser, x, run_grid, t_enc.is_some(), rng, settings)?;
                final_blend(x, blend)
            }
        }
    }
}

/// A1111 puts the init image back into the kept part once sampling ends.
fn final_blend(x: Tensor, blend: Option<&Blend>) -> Result<Tensor> {
    match blend {
        Some(blend) => blend.keep_init(&x),
        None => Ok(x),
    }
}

/// The diffusers pipelines' loop over the timesteps `steps` of a scheduler class.
fn diffusers_loop(
    sampler: &mut dyn Sampler,
    steps: std::ops::Range<usize>,
    model: &mut dyn Model,
    mut latents: Tensor,
    rng: &mut dyn NoiseSource,
    blend: Option<&Blend>,
) -> Result<Tensor> {
    let timesteps = sampler.timesteps().to_vec();
    for (step, index) in steps.enumerate() {
        let input = sampler.scale_model_input(&latents, index)?;
        let output = model.predict(&input, timesteps[index])?;
        latents = sampler.step(&output, index, &latents, rng)?;
        if let Some(blend) = blend {
            // diffusers' 4-channel inpainting: the kept part is the init image noised to the
            // next timestep (clean after the last).
            let kept = if index + 1 < timesteps.len() {
                sampler.add_noise(&blend.image_latents, &blend.noise, index + 1)?
            } else {
                blend.image_latents.clone()
            };
            latents = blend.apply(&kept, &latents)?;
        }
        model.step_done(&StepInfo {
            step,
            x: &latents,
            denoised: None,
        })?;
    }
    Ok(latents)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::rng::TorchCpuRng;
    use crate::scheduler::{SamplerFlavor, CATALOG};

    /// A stand-in model: ε = tanh(x)·0.9 + t/20000, counting its calls and steps.
    #[derive(Default)]
    struct Counting {
        calls: usize,
        steps: usize,
        inputs: Vec<Tensor>,
    }

    impl Model for Counting {
        fn predict(&mut self, input: &Tensor, timestep: f64) -> Result<Tensor> {
            self.calls += 1;
            self.inputs.push(input.clone());
            Ok(input.tanh()?.affine(0.9, timestep / 20000.0)?)
        }

        fn step_done(&mut self, step: &StepInfo<'_>) -> Result<()> {
            assert_eq!(step.step, self.steps, "steps are reported in order from 0");
            self.steps += 1;
            Ok(())
        }
    }

    fn latents(seed: u64) -> Tensor {
        TorchCpuRng::new(seed)
            .randn(&[1, 4, 2, 2], &Device::Cpu)
            .unwrap()
    }

    /// Every sampler in every flavor it has.
    fn every_plan(steps: usize) -> Vec<(String, SamplerPlan)> {
        let mut plans = Vec::new();
        for row in CATALOG {
            for flavor in [SamplerFlavor::Diffusers, SamplerFlavor::KDiffusion] {
                let options = SamplerOptions {
                    flavor: Some(flavor),
                    ..SamplerOptions::default()
                };
                let config = SchedulerConfig::sd15();
                if let Ok(plan) =
                    build_sampler_with(row.kind, SigmaSchedule::Default, &config, steps, &options)
                {
                    plans.push((format!("{} {}", row.name, flavor.name()), plan));
                }
            }
        }
        plans
    }

    #[test]
    fn the_progress_total_counts_the_steps_each_sampler_reports() {
        let plans = every_plan(6);
        assert!(plans.len() >= 30, "only {} plans", plans.len());
        for (name, mut plan) in plans {
            let mut model = Counting::default();
            let x = (latents(1) * plan.init_noise_sigma()).unwrap();
            let out = plan.run(&mut model, x, &mut TorchCpuRng::new(2), None);
            out.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(model.steps, plan.steps(), "{name}: txt2img");
            assert!(model.calls >= model.steps, "{name}");
            if plan.start_img2img(6, 0.5).is_ok() {
                let mut model = Counting::default();
                let x = plan.noised_start(&latents(3), &latents(4)).unwrap();
                plan.run(&mut model, x, &mut TorchCpuRng::new(2), None)
                    .unwrap();
                assert_eq!(model.steps, plan.steps(), "{name}: img2img");
                assert!(
                    model.steps < 6,
                    "{name}: img2img at 0.5 ran {}",
                    model.steps
                );
            }
        }
    }

    #[test]
    fn a_handoff_splits_the_steps_between_base_and_refiner() {
        for (name, base) in every_plan(8) {
            if base.step_timesteps().is_err() {
                continue; // A1111's timestep samplers run whole (tested with them).
            }
            let kind = base.kind();
            let all = base.steps();
            let mut base = base;
            base.stop_after(3).unwrap();
            let options = SamplerOptions {
                flavor: Some(if base.diffusers().is_some() {
                    SamplerFlavor::Diffusers
                } else {
                    SamplerFlavor::KDiffusion
                }),
                ..SamplerOptions::default()
            };
            let config = SchedulerConfig::sd15();
            let mut refiner =
                build_sampler_with(kind, SigmaSchedule::Default, &config, 8, &options).unwrap();
            refiner.skip(3).unwrap();
            assert_eq!(base.steps() + refiner.steps(), all, "{name}");
            let (mut a, mut b) = (Counting::default(), Counting::default());
            let mut rng = TorchCpuRng::new(5);
            let x = (latents(1) * base.init_noise_sigma()).unwrap();
            let x = base.run(&mut a, x, &mut rng, None).unwrap();
            refiner.run(&mut b, x, &mut rng, None).unwrap();
            assert_eq!((a.steps, b.steps), (3, all - 3), "{name}");
        }
    }

    /// A mask that repaints the left column and keeps the right one, and init latents of 7.
    fn blend() -> Blend {
        let mask = Tensor::new(&[[[[1f32, 0.0], [1.0, 0.0]]]], &Device::Cpu)
            .unwrap()
            .repeat((1, 4, 1, 1))
            .unwrap();
        Blend {
            mask,
            image_latents: Tensor::full(7f32, (1, 4, 2, 2), &Device::Cpu).unwrap(),
            noise: latents(9),
        }
    }

    /// The kept column of `t` (index 1 of the last axis) as a flat list.
    fn kept(t: &Tensor) -> Vec<f32> {
        t.narrow(3, 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn a1111_samplers_blend_the_init_image_into_the_denoised_estimate_and_the_result() {
        let blend = blend();
        let config = SchedulerConfig::sd15();
        let k = SamplerOptions {
            flavor: Some(SamplerFlavor::KDiffusion),
            ..SamplerOptions::default()
        };
        // Sigma samplers: D(x, σ) holds the init latents in the kept part.
        let plan =
            build_sampler_with(SamplerKind::Euler, SigmaSchedule::Default, &config, 4, &k).unwrap();
        let Run::Sigmas {
            table, prediction, ..
        } = &plan.run
        else {
            panic!("euler in A1111's flavor walks sigmas");
        };
        let mut model = Counting::default();
        let mut denoiser = Denoiser::sigmas(&mut model, table, *prediction, Some(&blend));
        let denoised = denoiser.denoise(&latents(1), 3.0).unwrap();
        assert_eq!(kept(&denoised), vec![7.0; 8]);
        let plain = Denoiser::sigmas(&mut model, table, *prediction, None)
            .denoise(&latents(1), 3.0)
            .unwrap();
        let repainted = |t: &Tensor| -> Vec<f32> {
            t.narrow(3, 0, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(repainted(&denoised), repainted(&plain));
        // Timestep samplers: the model sees the blended sample (A1111's mask_before_denoising).
        let plan =
            build_sampler_with(SamplerKind::Ddim, SigmaSchedule::Default, &config, 4, &k).unwrap();
        let Run::Timesteps {
            alphas_cumprod,
            prediction,
            ..
        } = &plan.run
        else {
            panic!("DDIM in A1111's flavor walks timesteps");
        };
        let mut model = Counting::default();
        Denoiser::timesteps(&mut model, alphas_cumprod, *prediction, Some(&blend))
            .eps(&latents(1), 501.0)
            .unwrap();
        assert_eq!(kept(&model.inputs[0]), vec![7.0; 8]);
        // Both end with the init latents in the kept part.
        for kind in [SamplerKind::Euler, SamplerKind::Ddim, SamplerKind::DpmPp2M] {
            let mut plan =
                build_sampler_with(kind, SigmaSchedule::Default, &config, 4, &k).unwrap();
            let x = (latents(2) * plan.init_noise_sigma()).unwrap();
            let mut model = Counting::default();
            let out = plan
                .run(&mut model, x, &mut TorchCpuRng::new(1), Some(&blend))
                .unwrap();
            assert_eq!(kept(&out), vec![7.0; 8], "{kind}");
        }
    }

    #[test]
    fn diffusers_samplers_put_the_noised_init_image_back_after_each_step() {
        let blend = blend();
        let options = SamplerOptions {
            flavor: Some(SamplerFlavor::Diffusers),
            ..SamplerOptions::default()
        };
        let config = SchedulerConfig::sd15();
        let mut plan = build_sampler_with(
            SamplerKind::Euler,
            SigmaSchedule::Default,
            &config,
            4,
            &options,
        )
        .unwrap();
        let x = (latents(2) * plan.init_noise_sigma()).unwrap();
        let mut model = Counting::default();
        let out = plan
            .run(&mut model, x, &mut TorchCpuRng::new(1), Some(&blend))
            .unwrap();
        assert_eq!(kept(&out), vec![7.0; 8]);
        // The model's second input holds the init latents noised to the second timestep.
        let sampler = plan.diffusers().unwrap();
        let noised = sampler
            .add_noise(&blend.image_latents, &blend.noise, 1)
            .unwrap();
        let expected = sampler.scale_model_input(&noised, 1).unwrap();
        assert_eq!(kept(&model.inputs[1]), kept(&expected));
    }
}
