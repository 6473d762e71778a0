//! The two training stages and the loop they share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::checkpoint::{self, CheckpointInfo};
use super::optim::{clip_global_norm, AdamW, AdamWConfig, Ema};
use super::{export, init, step_seed, StageOptions, Stages, TrainEvent, TrainOptions};
use crate::shapes::{
    coverage_to_tensor, scenes_to_tensor, Dataset, Scene, SplitMix64, CAPTION_CLASSES, IMAGE_SIZE,
};
use stable_diffusion::pipeline::{Control, GenerationRequest, LoadOptions, StableDiffusion};
use stable_diffusion::rng::{NoiseSource, TorchCpuRng};
use stable_diffusion::scheduler::{BetaSchedule, NoiseSchedule};
use stable_diffusion::text_encoder::{ClipTextModel, HiddenLayer};
use stable_diffusion::tokenizer::{ClipTokenizer, PadStyle};
use stable_diffusion::unet::UNet2DConditionModel;
use stable_diffusion::vae::AutoencoderKL;
use stable_diffusion::{Error, Result};

/// Stage names, as used in file names and events.
const VAE: &str = "vae";
const TEXT: &str = "text";
const DIFFUSION: &str = "diffusion";
/// Images used to measure the latents' standard deviation.
const SCALING_IMAGES: usize = 256;
/// Where the high-noise timesteps of [`TrainOptions::high_noise_fraction`] start, per 1000.
const HIGH_NOISE_START: usize = 850;
/// The largest per-sample loss weight of the diffusion stage (see [`train_diffusion`]).
const LOSS_WEIGHT_CAP: f64 = 5.0;
/// Captions of the sample grids written during the diffusion stage (the last two are
/// held-out combinations).
const SAMPLE_CAPTIONS: [&str; 8] = [
    "a large red circle in the center on a blue background",
    "a small yellow square in the top left corner on a black background",
    "a large white triangle at the bottom on a green background",
    "a small orange circle on the right on a purple background",
    "a large blue square in the bottom right corner on a yellow background",
    "a small black triangle on the left on a white background",
    "a large red circle in the top left corner on a green background",
    "a large green square on the left on a red background",
];

/// Variables of a `VarMap`, sorted by name.
struct Trainable {
    names: Vec<String>,
    vars: Vec<Var>,
    adam: AdamW,
    ema: Ema,
}

impl Trainable {
    fn new(varmap: &VarMap, ema_decay: f64) -> Result<Self> {
        let mut entries: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| Error::invalid("training", "variable map lock poisoned"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, vars): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let adam = AdamW::new(vars.clone(), AdamWConfig::default())?;
        let ema = Ema::new(&vars, ema_decay)?;
        Ok(Self {
            names,
            vars,
            adam,
            ema,
        })
    }

    /// The EMA weights whose names start with `prefix`, with the prefix removed.
    fn ema_with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.names
            .iter()
            .zip(&self.ema.weights)
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
            .collect()
    }
}

/// Runs the stages `options` asks for and exports the model; returns the model folder.
/// `events` sees progress; returning [`Control::Cancel`] from it stops after the current
/// step with a checkpoint, and the run ends with [`Error::Cancelled`].
pub fn train(
    options: &TrainOptions,
    events: &mut dyn FnMut(TrainEvent) -> Control,
) -> Result<PathBuf> {
    options.validate()?;
    std::fs::create_dir_all(&options.out_dir).map_err(|e| Error::io(&options.out_dir, e))?;
    std::fs::create_dir_all(options.out_dir.join("samples"))
        .map_err(|e| Error::io(&options.out_dir, e))?;
    let previous = stable_diffusion::nn::differentiable();
    stable_diffusion::nn::set_differentiable(true);
    let result = run_stages(options, events);
    stable_diffusion::nn::set_differentiable(previous);
    result
}

fn run_stages(
    options: &TrainOptions,
    events: &mut dyn FnMut(TrainEvent) -> Control,
) -> Result<PathBuf> {
    if matches!(options.stages, Stages::All | Stages::Vae) {
        train_vae(options, events)?;
    }
    if matches!(options.stages, Stages::All | Stages::Text) {
        train_text(options, events)?;
    }
    if matches!(options.stages, Stages::All | Stages::Diffusion) {
        train_diffusion(options, events)?;
        return Ok(super::model_dir(&options.out_dir));
    }
    Ok(options.out_dir.clone())
}

/// Where a stage starts: 0, or the step of its checkpoint when resuming. Refuses to overwrite
/// an existing checkpoint unless resuming.
fn start_step(options: &TrainOptions, stage: &str) -> Result<Option<CheckpointInfo>> {
    let (tensors, info) = checkpoint::checkpoint_paths(&options.out_dir, stage);
    if !info.exists() {
        return Ok(None);
    }
    if !options.resume {
        return Err(Error::invalid(
            "training output folder",
            format!(
                "{} already holds a {stage} checkpoint ({}); resume it or choose another folder",
                options.out_dir.display(),
                tensors.display()
            ),
        ));
    }
    let info = checkpoint::read_info(&info)?;
    if info.seed != options.seed {
        return Err(Error::invalid(
            "resume checkpoint",
            format!(
                "the {stage} checkpoint was made with seed {}, this run uses seed {}",
                info.seed, options.seed
            ),
        ));
    }
    Ok(Some(info))
}

/// One optimizer step's result.
struct StepResult {
    loss: f64,
    grad_norm: f64,
}

/// The shared loop: `loss_at(step)` gives the loss to minimise for 0-based step `step`.
#[allow(clippy::too_many_arguments)]
fn run_loop(
    options: &TrainOptions,
    stage: &'static str,
    stage_options: &StageOptions,
    trainable: &mut Trainable,
    mut info: CheckpointInfo,
    loss_at: &mut dyn FnMut(usize) -> Result<Tensor>,
    sample: &mut dyn FnMut(usize, &Trainable) -> Result<Option<TrainEvent>>,
    events: &mut dyn FnMut(TrainEvent) -> Control,
) -> Result<()> {
    let total = stage_options.steps;
    info.total_steps = total;
    events(TrainEvent::StageStarted {
        stage,
        step: info.step,
        total,
    });
    let mut recent: Vec<f64> = Vec::new();
    let save = |trainable: &Trainable, info: &CheckpointInfo| -> Result<TrainEvent> {
        checkpoint::save(
            &options.out_dir,
            stage,
            &trainable.names,
            &trainable.vars,
            &trainable.adam,
            &trainable.ema,
            info,
        )?;
        Ok(TrainEvent::Checkpoint {
            path: checkpoint::checkpoint_paths(&options.out_dir, stage).0,
            step: info.step,
        })
    };
    while info.step < total {
        let step = info.step;
        let result = optimizer_step(trainable, loss_at(step)?, stage_options, options, step)?;
        if !result.loss.is_finite() {
            return Err(Error::invalid(
                "training",
                format!(
                    "the {stage} loss became {} at step {}",
                    result.loss,
                    step + 1
                ),
            ));
        }
        info.step += 1;
        recent.push(result.loss);
        if recent.len() > 50 {
            recent.remove(0);
        }
        info.recent_loss = Some(recent.iter().sum::<f64>() / recent.len() as f64);
        let control = events(TrainEvent::Step {
            stage,
            step: info.step,
            total,
            loss: result.loss,
            grad_norm: result.grad_norm,
        });
        let done = info.step == total;
        let stop = control == Control::Cancel;
        if done
            || stop
            || (options.checkpoint_every > 0 && info.step.is_multiple_of(options.checkpoint_every))
        {
            let event = save(trainable, &info)?;
            events(event);
        }
        if done || (options.sample_every > 0 && info.step.is_multiple_of(options.sample_every)) {
            stable_diffusion::nn::set_differentiable(false);
            let sampled = sample(info.step, trainable);
            stable_diffusion::nn::set_differentiable(true);
            if let Some(event) = sampled? {
                events(event);
            }
        }
        if stop && !done {
            return Err(Error::Cancelled);
        }
    }
    Ok(())
}

fn optimizer_step(
    trainable: &mut Trainable,
    loss: Tensor,
    stage_options: &StageOptions,
    options: &TrainOptions,
    step: usize,
) -> Result<StepResult> {
    let loss_value = loss.to_scalar::<f32>()? as f64;
    let grads = loss.backward()?;
    let mut gradients = trainable.adam.gradients(&grads)?;
    drop(grads);
    let grad_norm = clip_global_norm(&mut gradients, options.max_grad_norm)?;
    if loss_value.is_finite() && grad_norm.is_finite() {
        trainable
            .adam
            .step(&gradients, stage_options.learning_rate_at(step))?;
        trainable.ema.update(&trainable.vars, trainable.adam.t)?;
    }
    Ok(StepResult {
        loss: if grad_norm.is_finite() {
            loss_value
        } else {
            f64::NAN
        },
        grad_norm,
    })
}

/// A fresh stage state, or the one in the stage's checkpoint.
fn prepare(
    options: &TrainOptions,
    stage: &'static str,
    varmap: &VarMap,
    init_seed: u64,
) -> Result<(Trainable, CheckpointInfo)> {
    let resumed = start_step(options, stage)?;
    let mut trainable = Trainable::new(varmap, options.ema_decay)?;
    let info = match resumed {
        Some(info) => {
            let (path, _) = checkpoint::checkpoint_paths(&options.out_dir, stage);
            checkpoint::load(
                &path,
                &trainable.names,
                &trainable.vars,
                &mut trainable.adam,
                &mut trainable.ema,
            )?;
            info
        }
        None => {
            init::initialize(&trainable.names, &trainable.vars, init_seed)?;
            trainable.ema = Ema::new(&trainable.vars, options.ema_decay)?;
            CheckpointInfo {
                stage: stage.to_string(),
                step: 0,
                total_steps: 0,
                seed: options.seed,
                scaling_factor: None,
                recent_loss: None,
            }
        }
    };
    Ok((trainable, info))
}

fn train_vae(options: &TrainOptions, events: &mut dyn FnMut(TrainEvent) -> Control) -> Result<()> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let vae = AutoencoderKL::new(vb.pp("vae"), &options.model.vae)?;
    let (mut trainable, info) = prepare(options, VAE, &varmap, options.seed ^ 0x7661_6500)?;
    if info.step >= options.vae.steps && info.total_steps == options.vae.steps {
        events(TrainEvent::StageSkipped { stage: VAE });
        return Ok(());
    }
    let data = Dataset::new(options.seed ^ 0x0076_6165);
    let batch = options.vae.batch_size;
    let kl_weight = options.kl_weight;
    let foreground = options.vae_foreground_weight;
    let seed = options.seed;
    let mut loss_at = |step: usize| -> Result<Tensor> {
        let (scenes, _) = data.items((step * batch) as u64, batch);
        let images = scenes_to_tensor(&scenes, &device)?;
        let posterior = vae.encode(&images)?;
        let mut rng = TorchCpuRng::new(step_seed(seed, 1, step));
        let noise = rng.randn(posterior.mean.dims(), &device)?;
        let z = posterior.sample_with_noise(&noise)?;
        let recon = vae.decode(&z)?;
        let diff = (recon - &images)?;
        let (l1, l2) = if foreground > 0.0 {
            let weights = foreground_weights(&scenes, 1, foreground, &device)?;
            (
                diff.abs()?.broadcast_mul(&weights)?.mean_all()?,
                diff.sqr()?.broadcast_mul(&weights)?.mean_all()?,
            )
        } else {
            (diff.abs()?.mean_all()?, diff.sqr()?.mean_all()?)
        };
        let kl = ((posterior.mean.sqr()? + posterior.logvar.exp()?)? - 1.0)?;
        let kl = ((kl - &posterior.logvar)?.mean_all()? * 0.5)?;
        Ok(((l1 + l2)? + (kl * kl_weight)?)?)
    };
    let fixed: Vec<Scene> = {
        let mut rng = SplitMix64::new(options.seed ^ 0x5a5a);
        (0..8).map(|_| Scene::random(&mut rng)).collect()
    };
    let out_dir = options.out_dir.clone();
    let mut sample = |step: usize, _t: &Trainable| -> Result<Option<TrainEvent>> {
        let images = scenes_to_tensor(&fixed, &device)?;
        let recon = vae.decode(&vae.encode(&images)?.mode()?)?;
        let mut all = stable_diffusion::image::tensor_to_images(&images)?;
        all.extend(stable_diffusion::image::tensor_to_images(&recon)?);
        let path = out_dir.join("samples").join(format!("vae-{step:06}.png"));
        stable_diffusion::image::save_png(&path, &stable_diffusion::image::grid(&all, 8), &[])?;
        Ok(Some(TrainEvent::Samples { path }))
    };
    run_loop(
        options,
        VAE,
        &options.vae,
        &mut trainable,
        info,
        &mut loss_at,
        &mut sample,
        events,
    )
}

/// The EMA weights under `prefix` (removed) of the finished stage `stage`.
fn finished_stage(
    options: &TrainOptions,
    stage: &str,
    prefix: &str,
) -> Result<HashMap<String, Tensor>> {
    let (tensors_path, info_path) = checkpoint::checkpoint_paths(&options.out_dir, stage);
    if !info_path.exists() {
        return Err(Error::NotFound {
            what: if stage == VAE {
                "VAE stage checkpoint (run the vae stage first)"
            } else {
                "text stage checkpoint (run the text stage first)"
            },
            path: info_path,
        });
    }
    let info = checkpoint::read_info(&info_path)?;
    if info.step < info.total_steps {
        return Err(Error::invalid(
            "training stages",
            format!(
                "the {stage} stage stopped at step {} of {}; resume it first",
                info.step, info.total_steps
            ),
        ));
    }
    let tensors = candle_core::safetensors::load(&tensors_path, &Device::Cpu)?;
    let prefix = format!("ema/{prefix}");
    Ok(tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n.to_string(), v)))
        .collect())
}

/// The text stage: the CLIP text encoder learns to keep every attribute a caption names
/// readable from its output, before the UNet ever sees it.
///
/// Why: trained only through the UNet's ε loss (together with it, from scratch), the text
/// encoder kept the colours apart but let the position phrases collapse (their contexts moved
/// 0.05 relative to each other, the padding tokens attended to the start token), so the UNet
/// never learned positions from text, while it learned them in 1000 steps from a strong, free
/// signal (a class table, or a table row as the whole context). Real SD gets such features from
/// CLIP's pretraining on images and captions; this stage is that pretraining in miniature: linear
/// heads read the mean of all 77 output tokens (padding included, so the padding that the UNet
/// attends to carries the whole caption) and are trained with cross-entropy on the caption's
/// colour, background, shape, size and position (each with a class "not named"). The heads are
/// discarded; the diffusion stage keeps the text encoder fixed.
fn train_text(options: &TrainOptions, events: &mut dyn FnMut(TrainEvent) -> Control) -> Result<()> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let text_encoder = ClipTextModel::new(vb.pp("text_encoder"), &options.model.text)?;
    let classes: usize = CAPTION_CLASSES.iter().sum();
    let width = options.model.text.hidden_size;
    let heads_weight = vb.pp("heads").get((classes, width), "weight")?;
    let heads_bias = vb.pp("heads").get(classes, "bias")?;
    let (mut trainable, info) = prepare(options, TEXT, &varmap, options.seed ^ 0x7465_7874)?;
    if info.step >= options.text.steps && info.total_steps == options.text.steps {
        events(TrainEvent::StageSkipped { stage: TEXT });
        return Ok(());
    }
    let data = Dataset::new(options.seed ^ 0x0074_6578);
    let tokenizer = ClipTokenizer::embedded()?;
    let batch = options.text.batch_size;
    let seed = options.seed;
    let dropout = options.caption_dropout;
    let mut loss_at = |step: usize| -> Result<Tensor> {
        let (scenes, captions) = data.items((step * batch) as u64, batch);
        let mut choices = SplitMix64::new(step_seed(seed, 4, step));
        let mut ids = Vec::with_capacity(batch * 77);
        let mut targets = vec![0f32; batch * classes];
        for (n, (scene, caption)) in scenes.iter().zip(&captions).enumerate() {
            let text = if choices.unit() < dropout {
                ""
            } else {
                caption.as_str()
            };
            ids.extend(tokenizer.encode_padded(text, 77, PadStyle::EndOfText)?);
            let mut start = 0;
            for (label, count) in scene.caption_labels(text).iter().zip(CAPTION_CLASSES) {
                targets[n * classes + start + label] = 1.0;
                start += count;
            }
        }
        let ids = Tensor::from_vec(ids, (batch, 77), &device)?;
        let hidden = text_encoder.forward(&ids, HiddenLayer::LAST)?.hidden;
        let logits = hidden
            .mean(1)?
            .matmul(&heads_weight.t()?)?
            .broadcast_add(&heads_bias)?;
        let targets = Tensor::from_vec(targets, (batch, classes), &device)?;
        let mut loss = Tensor::zeros((), DType::F32, &device)?;
        let mut start = 0;
        for count in CAPTION_CLASSES {
            let part = logits.narrow(1, start, count)?;
            let max = part.max_keepdim(1)?.detach();
            let shifted = part.broadcast_sub(&max)?;
            let log_sum = shifted.exp()?.sum_keepdim(1)?.log()?;
            let log_probs = shifted.broadcast_sub(&log_sum)?;
            let picked = (log_probs * targets.narrow(1, start, count)?)?.sum_all()?;
            loss = (loss - (picked / batch as f64)?)?;
            start += count;
        }
        Ok(loss)
    };
    let mut sample = |_step: usize, _t: &Trainable| -> Result<Option<TrainEvent>> { Ok(None) };
    run_loop(
        options,
        TEXT,
        &options.text,
        &mut trainable,
        info,
        &mut loss_at,
        &mut sample,
        events,
    )
}

/// `1 / std` of VAE latent samples over [`SCALING_IMAGES`] training images.
fn measure_scaling(vae: &AutoencoderKL, data: &Dataset, seed: u64, device: &Device) -> Result<f64> {
    let mut sum = 0f64;
    let mut sum_sq = 0f64;
    let mut count = 0usize;
    let mut rng = TorchCpuRng::new(seed);
    for start in (0..SCALING_IMAGES).step_by(32) {
        let (images, _) = data.batch(start as u64, 32, device)?;
        let latents = vae.encode(&images)?.sample(&mut rng)?;
        let values = latents.flatten_all()?.to_vec1::<f32>()?;
        for v in values {
            sum += v as f64;
            sum_sq += (v as f64) * (v as f64);
            count += 1;
        }
    }
    let mean = sum / count as f64;
    let std = (sum_sq / count as f64 - mean * mean).max(1e-12).sqrt();
    Ok(1.0 / std)
}

fn train_diffusion(
    options: &TrainOptions,
    events: &mut dyn FnMut(TrainEvent) -> Control,
) -> Result<()> {
    let device = Device::Cpu;
    let vae_weights = finished_stage(options, VAE, "vae.")?;
    let text_weights = finished_stage(options, TEXT, "text_encoder.")?;
    let vae = AutoencoderKL::new(
        VarBuilder::from_tensors(vae_weights.clone(), DType::F32, &device),
        &options.model.vae,
    )?;
    let text_encoder = ClipTextModel::new(
        VarBuilder::from_tensors(text_weights.clone(), DType::F32, &device),
        &options.model.text,
    )?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let unet = UNet2DConditionModel::new(vb.pp("unet"), &options.model.unet)?;
    let (mut trainable, mut info) =
        prepare(options, DIFFUSION, &varmap, options.seed ^ 0x756e_6574)?;
    if info.step >= options.diffusion.steps && info.total_steps == options.diffusion.steps {
        events(TrainEvent::StageSkipped { stage: DIFFUSION });
        return Ok(());
    }
    let data = Dataset::new(options.seed ^ 0x6469_6666);
    let scaling = match info.scaling_factor {
        Some(s) => s,
        None => {
            stable_diffusion::nn::set_differentiable(false);
            let s = measure_scaling(&vae, &data, options.seed ^ 0x5ca1e, &device);
            stable_diffusion::nn::set_differentiable(true);
            s?
        }
    };
    info.scaling_factor = Some(scaling);
    let schedule = NoiseSchedule::new(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000, None)?;
    // Why the caption gets learned. With plain noise and the plain ε loss, a model trained from
    // scratch learned no conditioning at all in 1500 steps (measured: the same loss with right,
    // shuffled or empty captions). These images are flat colours on 16x16 latents, so even at
    // t = 999 the noisy latent's per-channel mean still shows the colours (0.07·x₀ averaged
    // over 256 positions stands out of the noise), and the caption adds nothing. Two standard
    // remedies fix it: offset noise (a per-channel constant added to the noise) hides the mean,
    // and each sample's squared error is weighted by min(1/ᾱ_t, 5) (1/ᾱ_t is what the same
    // error costs in v-prediction's loss; capped as min-SNR weighting caps, and normalised to
    // mean 1) so the high-noise steps, where only the caption tells the colours and layout,
    // count more. Uncapped 1/ᾱ_t (up to 214) learned the backgrounds within 1000 steps but
    // starved the low-noise steps that draw the shapes. The model still predicts ε on SD's
    // schedule, so it samples like any SD checkpoint.
    let weight_of = |alpha_bar: f64| (1.0 / alpha_bar).min(LOSS_WEIGHT_CAP);
    let mean_weight = schedule
        .alphas_cumprod
        .iter()
        .map(|&a| weight_of(a as f64))
        .sum::<f64>()
        / schedule.len() as f64;
    let tokenizer = ClipTokenizer::embedded()?;
    let batch = options.diffusion.batch_size;
    let seed = options.seed;
    let dropout = options.caption_dropout;
    let offset_noise = options.offset_noise;
    let pyramid = options.pyramid_noise;
    let high_noise = options.high_noise_fraction;
    let foreground = options.foreground_weight;
    let mut loss_at = |step: usize| -> Result<Tensor> {
        let (scenes, captions) = data.items((step * batch) as u64, batch);
        let images = scenes_to_tensor(&scenes, &device)?;
        let mut choices = SplitMix64::new(step_seed(seed, 2, step));
        let mut noise_rng = TorchCpuRng::new(step_seed(seed, 3, step));
        let posterior = vae.encode(&images)?;
        let posterior_noise = noise_rng.randn(posterior.mean.dims(), &device)?;
        let latents = (posterior.sample_with_noise(&posterior_noise)?.detach() * scaling)?;
        let mut ids = Vec::with_capacity(batch * 77);
        let mut timesteps = Vec::with_capacity(batch);
        let mut signal = Vec::with_capacity(batch);
        let mut noise_level = Vec::with_capacity(batch);
        let mut weights = Vec::with_capacity(batch);
        for caption in &captions {
            let text = if choices.unit() < dropout {
                ""
            } else {
                caption
            };
            ids.extend(tokenizer.encode_padded(text, 77, PadStyle::EndOfText)?);
            let t = if high_noise > 0.0 && choices.unit() < high_noise {
                let start = schedule.len() * HIGH_NOISE_START / 1000;
                start + choices.below(schedule.len() - start)
            } else {
                choices.below(schedule.len())
            };
            let alpha_bar = schedule.alphas_cumprod[t] as f64;
            timesteps.push(t as f64);
            signal.push(alpha_bar.sqrt() as f32);
            noise_level.push((1.0 - alpha_bar).sqrt() as f32);
            weights.push((weight_of(alpha_bar) / mean_weight) as f32);
        }
        let ids = Tensor::from_vec(ids, (batch, 77), &device)?;
        // The text encoder is fixed here: no graph for it.
        stable_diffusion::nn::set_differentiable(false);
        let context = text_encoder.forward(&ids, HiddenLayer::LAST);
        stable_diffusion::nn::set_differentiable(true);
        let context = context?.hidden;
        let noise = noise_rng.randn(latents.dims(), &device)?;
        let noise = if offset_noise > 0.0 {
            let (b, c) = (latents.dim(0)?, latents.dim(1)?);
            let offset = (noise_rng.randn(&[b, c, 1, 1], &device)? * offset_noise)?;
            noise.broadcast_add(&offset)?
        } else {
            noise
        };
        let noise = if pyramid > 0.0 {
            (noise + pyramid_noise(&mut noise_rng, latents.dims(), pyramid, &device)?)?
        } else {
            noise
        };
        let signal = Tensor::from_vec(signal, (batch, 1, 1, 1), &device)?;
        let noise_level = Tensor::from_vec(noise_level, (batch, 1, 1, 1), &device)?;
        let noisy = (latents.broadcast_mul(&signal)? + noise.broadcast_mul(&noise_level)?)?;
        let prediction = unet.forward_per_sample(&noisy, &timesteps, &context, None)?;
        let error = (prediction - noise)?.sqr()?;
        let error = if foreground > 0.0 {
            let factor = IMAGE_SIZE / latents.dim(3)?;
            error.broadcast_mul(&foreground_weights(&scenes, factor, foreground, &device)?)?
        } else {
            error
        };
        let per_sample = error.flatten_from(1)?.mean(1)?;
        let weights = Tensor::from_vec(weights, batch, &device)?;
        Ok((per_sample * weights)?.mean_all()?)
    };
    let out_dir = options.out_dir.clone();
    let model_config = options.model.clone();
    let mut sample = |step: usize, trainable: &Trainable| -> Result<Option<TrainEvent>> {
        let model_dir = super::model_dir(&out_dir);
        export::export_model(
            &model_dir,
            &model_config,
            scaling,
            &text_weights,
            &trainable.ema_with_prefix("unet."),
            &vae_weights,
        )?;
        let path = sample_grid(&model_dir, &out_dir, step)?;
        Ok(Some(TrainEvent::Samples { path }))
    };
    run_loop(
        options,
        DIFFUSION,
        &options.diffusion,
        &mut trainable,
        info,
        &mut loss_at,
        &mut sample,
        events,
    )?;
    events(TrainEvent::Exported {
        path: super::model_dir(&options.out_dir),
    });
    Ok(())
}

/// Per-pixel loss weights `(n, 1, 64 / factor, 64 / factor)`: 1 + `weight` times the fraction of
/// each `factor x factor` cell the scene's shape covers, normalised to mean 1 per image.
fn foreground_weights(
    scenes: &[Scene],
    factor: usize,
    weight: f64,
    device: &Device,
) -> Result<Tensor> {
    let weights = ((coverage_to_tensor(scenes, factor, device)? * weight)? + 1.0)?;
    Ok(weights.broadcast_div(&weights.mean_keepdim((2, 3))?)?)
}

/// Low-frequency noise of shape `dims` (`b, c, h, w`): white noise drawn at `h/2 x w/2`,
/// `h/4 x w/4`, ... down to 2 pixels, each upsampled bilinearly and scaled by `factor^level`.
fn pyramid_noise(
    rng: &mut TorchCpuRng,
    dims: &[usize],
    factor: f64,
    device: &Device,
) -> Result<Tensor> {
    let (b, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
    let mut total = Tensor::zeros((b, c, h, w), DType::F32, device)?;
    let mut level = 1;
    while h >> level >= 2 && w >> level >= 2 {
        let (lh, lw) = (h >> level, w >> level);
        let low = rng.randn(&[b, c, lh, lw], device)?;
        let rows = bilinear_matrix(lh, h, device)?;
        let columns = bilinear_matrix(lw, w, device)?.t()?;
        let up = rows.broadcast_matmul(&low)?.broadcast_matmul(&columns)?;
        total = (total + (up * factor.powi(level))?)?;
        level += 1;
    }
    Ok(total)
}

/// The `(to, from)` matrix of bilinear upsampling along one axis (pixel centres aligned, edges
/// clamped, as torch's `align_corners=False`).
fn bilinear_matrix(from: usize, to: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; to * from];
    let scale = from as f64 / to as f64;
    for i in 0..to {
        let x = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (from - 1) as f64);
        let lo = x.floor() as usize;
        let hi = (lo + 1).min(from - 1);
        let t = (x - lo as f64) as f32;
        m[i * from + lo] += 1.0 - t;
        m[i * from + hi] += t;
    }
    Ok(Tensor::from_vec(m, (to, from), device)?)
}

/// Generates [`SAMPLE_CAPTIONS`] with the exported model and saves them as one grid.
fn sample_grid(model_dir: &Path, out_dir: &Path, step: usize) -> Result<PathBuf> {
    let model = StableDiffusion::load(model_dir, &LoadOptions::default())?;
    let mut images = Vec::new();
    for (i, caption) in SAMPLE_CAPTIONS.iter().enumerate() {
        let request = GenerationRequest {
            prompt: caption.to_string(),
            width: Some(crate::shapes::IMAGE_SIZE),
            height: Some(crate::shapes::IMAGE_SIZE),
            steps: 20,
            seed: Some(i as u64),
            ..GenerationRequest::default()
        };
        let generation =
            model.generate(&request, &Default::default(), &mut |_| Control::Continue)?;
        images.extend(generation.images);
    }
    let path = out_dir
        .join("samples")
        .join(format!("diffusion-{step:06}.png"));
    stable_diffusion::image::save_png(&path, &stable_diffusion::image::grid(&images, 4), &[])?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_matrix_interpolates_like_torch() {
        // torch: F.interpolate(arange(2.).view(1,1,1,2), size=(1,4), mode="bilinear",
        // align_corners=False) = [0, 0.25, 0.75, 1].
        let m = bilinear_matrix(2, 4, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[0f32], [1.0]], &Device::Cpu).unwrap();
        let y: Vec<f32> = m
            .matmul(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![0.0, 0.25, 0.75, 1.0]);
        let rows: Vec<f32> = m.sum(1).unwrap().to_vec1().unwrap();
        assert!(rows.iter().all(|&r| (r - 1.0).abs() < 1e-6), "{rows:?}");
    }

    #[test]
    fn pyramid_noise_is_smooth_deterministic_and_scaled() {
        let dims = [64, 4, 16, 16];
        let draw = |seed| {
            let mut rng = TorchCpuRng::new(seed);
            pyramid_noise(&mut rng, &dims, 0.7, &Device::Cpu).unwrap()
        };
        let a = draw(7);
        let b = draw(7);
        let diff: f32 = (&a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
        // Levels 8x8, 4x4 and 2x2 with variances 0.49, 0.24, 0.12 before the (variance-
        // reducing) bilinear upsampling: the total lies well inside (0.3, 0.85).
        let var: f32 = a.sqr().unwrap().mean_all().unwrap().to_scalar().unwrap();
        assert!(var > 0.3 && var < 0.85, "variance {var}");
        // Low frequency: neighbouring pixels are strongly correlated (white noise: 0).
        let left = a.narrow(3, 0, 15).unwrap();
        let right = a.narrow(3, 1, 15).unwrap();
        let corr: f32 = (left * right)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(corr / var > 0.6, "neighbour correlation {}", corr / var);
    }
}
