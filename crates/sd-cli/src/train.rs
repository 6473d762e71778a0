//! `sd train` (train the shapes model from scratch) and `sd eval` (score a model on the
//! shapes captions from its pixels).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sd_train::shapes::{evaluate, evaluation_scenes, EvalOptions};
use sd_train::train::{self, ModelConfig, Stages, TrainEvent, TrainOptions};
use stable_diffusion::pipeline::{Control, LoadOptions, StableDiffusion};
use stable_diffusion::scheduler::SamplerKind;

use crate::UsageError;

/// Arguments of `sd train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Folder for checkpoints, sample grids and the final diffusers model (`<out>/model`);
    /// created if missing, but its parent must exist.
    #[arg(long, short)]
    out: PathBuf,
    /// Which stages to run: `all` (VAE, text encoder, then UNet), `vae`, `text` or `diffusion`.
    #[arg(long, default_value = "all")]
    stage: String,
    /// The architecture preset: `shapes` (the shipped model) or `tiny` (for quick checks).
    #[arg(long, default_value = "shapes")]
    preset: String,
    /// Continue from the checkpoints in the output folder.
    #[arg(long)]
    resume: bool,
    /// Seed of everything random (data, noise, timesteps, dropout, initial weights).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Optimizer steps of the VAE stage [default: 1000].
    #[arg(long)]
    vae_steps: Option<usize>,
    /// Images per VAE step [default: 8].
    #[arg(long)]
    vae_batch: Option<usize>,
    /// Peak learning rate of the VAE stage [default: 0.001].
    #[arg(long)]
    vae_lr: Option<f64>,
    /// Extra reconstruction weight on the pixels the shape covers (1 + W x coverage) in the VAE
    /// stage [default: 10].
    #[arg(long)]
    vae_foreground_weight: Option<f64>,
    /// Optimizer steps of the text encoder stage [default: 1500].
    #[arg(long)]
    text_steps: Option<usize>,
    /// Captions per text encoder step [default: 64].
    #[arg(long)]
    text_batch: Option<usize>,
    /// Optimizer steps of the UNet (diffusion) stage [default: 4000].
    #[arg(long)]
    steps: Option<usize>,
    /// Images per UNet step [default: 16].
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate of the UNet stage [default: 0.001].
    #[arg(long)]
    lr: Option<f64>,
    /// Standard deviation of the per-channel offset added to the training noise [default: 0.2].
    #[arg(long)]
    offset_noise: Option<f64>,
    /// Factor per level of the low-resolution noise added to the training noise [default: 0].
    #[arg(long)]
    pyramid_noise: Option<f64>,
    /// Fraction of samples trained at the top 15% of the noise schedule (t ≥ 850) [default: 0].
    #[arg(long)]
    high_noise: Option<f64>,
    /// Extra loss weight on the latent pixels the shape covers (1 + W x coverage) [default: 10].
    #[arg(long)]
    foreground_weight: Option<f64>,
    /// Steps between checkpoints (0: only at the end or on Ctrl-C) [default: 100].
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Steps between sample grids (0: only at the end) [default: 500].
    #[arg(long)]
    sample_every: Option<usize>,
    /// Print a log line every N steps (always, besides the progress bar on a terminal).
    #[arg(long, default_value_t = 50)]
    log_every: usize,
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

fn options_from(args: &TrainArgs) -> Result<TrainOptions> {
    let mut options = TrainOptions::shapes(&args.out);
    options.model = ModelConfig::preset(&args.preset).map_err(|e| usage(e.to_string()))?;
    options.stages = match args.stage.as_str() {
        "all" => Stages::All,
        "vae" => Stages::Vae,
        "text" => Stages::Text,
        "diffusion" => Stages::Diffusion,
        other => {
            return Err(usage(format!(
                "unknown stage `{other}`: use all, vae, text or diffusion"
            )))
        }
    };
    options.resume = args.resume;
    options.seed = args.seed;
    if let Some(v) = args.vae_steps {
        options.vae.steps = v;
        options.vae.warmup_steps = options.vae.warmup_steps.min(v / 10);
    }
    if let Some(v) = args.vae_batch {
        options.vae.batch_size = v;
    }
    if let Some(v) = args.vae_lr {
        options.vae.learning_rate = v;
    }
    if let Some(v) = args.vae_foreground_weight {
        options.vae_foreground_weight = v;
    }
    if let Some(v) = args.text_steps {
        options.text.steps = v;
        options.text.warmup_steps = options.text.warmup_steps.min(v / 10);
    }
    if let Some(v) = args.text_batch {
        options.text.batch_size = v;
    }
    if let Some(v) = args.steps {
        options.diffusion.steps = v;
        options.diffusion.warmup_steps = options.diffusion.warmup_steps.min(v / 10);
    }
    if let Some(v) = args.batch {
        options.diffusion.batch_size = v;
    }
    if let Some(v) = args.lr {
        options.diffusion.learning_rate = v;
    }
    if let Some(v) = args.offset_noise {
        options.offset_noise = v;
    }
    if let Some(v) = args.pyramid_noise {
        options.pyramid_noise = v;
    }
    if let Some(v) = args.high_noise {
        options.high_noise_fraction = v;
    }
    if let Some(v) = args.foreground_weight {
        options.foreground_weight = v;
    }
    if let Some(v) = args.checkpoint_every {
        options.checkpoint_every = v;
    }
    if let Some(v) = args.sample_every {
        options.sample_every = v;
    }
    options.validate().map_err(|e| usage(e.to_string()))?;
    Ok(options)
}

/// Runs `sd train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let options = options_from(&args)?;
    let cancelled = Arc::new(AtomicBool::new(false));
    {
        let cancelled = cancelled.clone();
        let _ = ctrlc::set_handler(move || {
            if cancelled.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "stopping after this step (a checkpoint will be written); Ctrl-C again to quit now"
            );
        });
    }
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut started = Instant::now();
    let mut first_step = 0usize;
    let log_every = args.log_every.max(1);
    let mut on_event = |event: TrainEvent| {
        match &event {
            TrainEvent::StageStarted { stage, step, total } => {
                println!("stage {stage}: starting at step {step} of {total}");
                started = Instant::now();
                first_step = *step;
                let b = ProgressBar::new(*total as u64);
                if terminal {
                    b.set_draw_target(ProgressDrawTarget::stderr());
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>9} [{bar:30}] {pos}/{len} {msg} {elapsed}<{eta}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                } else {
                    b.set_draw_target(ProgressDrawTarget::hidden());
                }
                b.set_prefix(*stage);
                b.set_position(*step as u64);
                bar = Some(b);
            }
            TrainEvent::StageSkipped { stage } => {
                println!("stage {stage}: already finished, skipped")
            }
            TrainEvent::Step {
                stage,
                step,
                total,
                loss,
                grad_norm,
            } => {
                if let Some(b) = &bar {
                    b.set_position(*step as u64);
                    b.set_message(format!("loss {loss:.4}"));
                }
                if step % log_every == 0 || step == total {
                    let done = (step - first_step) as f64;
                    let per_step = started.elapsed().as_secs_f64() / done.max(1.0);
                    let eta = per_step * (total - step) as f64;
                    let line = format!(
                        "{stage} step {step}/{total} loss {loss:.5} grad-norm {grad_norm:.3} {per_step:.3} s/step eta {:.0} min",
                        eta / 60.0
                    );
                    match &bar {
                        Some(b) if terminal => b.println(line),
                        _ => println!("{line}"),
                    }
                }
            }
            TrainEvent::Checkpoint { path, step } => {
                let line = format!("checkpoint at step {step}: {}", path.display());
                match &bar {
                    Some(b) if terminal => b.println(line),
                    _ => println!("{line}"),
                }
            }
            TrainEvent::Samples { path } => {
                let line = format!("samples: {}", path.display());
                match &bar {
                    Some(b) if terminal => b.println(line),
                    _ => println!("{line}"),
                }
            }
            TrainEvent::Exported { path } => println!("model: {}", path.display()),
        }
        if cancelled.load(Ordering::SeqCst) {
            Control::Cancel
        } else {
            Control::Continue
        }
    };
    let result = train::train(&options, &mut on_event);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let folder = result?;
    println!("done: {}", folder.display());
    Ok(())
}

/// Arguments of `sd eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The model to score: a diffusers folder [default: the built-in shapes model].
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Number of captions (the 24 held-out combinations come first).
    #[arg(long, default_value_t = 120)]
    count: usize,
    /// Sampling steps per image.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.5)]
    cfg_scale: f64,
    /// Sampler (ddim, pndm, euler, euler_a, dpmpp_2m).
    #[arg(long, default_value = "euler_a")]
    sampler: String,
    /// Seed of the first image (image i uses seed + i); also picks the captions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder to write every image and `report.json` into.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write all images as one PNG grid (8 per row, in caption order) to this file.
    #[arg(long)]
    grid: Option<PathBuf>,
}

/// Runs `sd eval`.
pub fn run_eval(args: EvalArgs) -> Result<()> {
    if args.count == 0 {
        return Err(usage("--count must be at least 1"));
    }
    let sampler: SamplerKind = args
        .sampler
        .parse()
        .map_err(|e: stable_diffusion::Error| usage(e.to_string()))?;
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => sd_train::shapes::default_model_path()?,
    };
    if !model_path.exists() {
        return Err(usage(format!("model not found: {}", model_path.display())));
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let model = StableDiffusion::load(&model_path, &LoadOptions::default())
        .with_context(|| format!("loading model {}", model_path.display()))?;
    let scenes = evaluation_scenes(args.count, args.seed);
    let options = EvalOptions {
        steps: args.steps,
        cfg_scale: args.cfg_scale,
        sampler,
        seed: args.seed,
    };
    let bar = ProgressBar::new(scenes.len() as u64);
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let out = args.out.clone();
    let mut write_error = None;
    let mut images = Vec::new();
    let report = evaluate(&model, &scenes, &options, &mut |i, scene, image, _| {
        bar.set_position(i as u64 + 1);
        if args.grid.is_some() {
            images.push(image.clone());
        }
        if let Some(out) = &out {
            let name = format!("{i:03}-{}.png", scene.caption().replace(' ', "_"));
            if let Err(e) = stable_diffusion::image::save_png(out.join(name), image, &[]) {
                write_error = Some(e);
                return Control::Cancel;
            }
        }
        Control::Continue
    });
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let report = report?;
    print!("{report}");
    if let Some(path) = &args.grid {
        let grid = stable_diffusion::image::grid(&images, 8);
        stable_diffusion::image::save_png(path, &grid, &[])
            .with_context(|| format!("writing {}", path.display()))?;
        println!("grid: {} (8 per row):", path.display());
        for (i, scene) in scenes.iter().enumerate() {
            println!("  {i:3}: {}", scene.caption());
        }
    }
    if let Some(out) = &args.out {
        let path = out.join("report.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&report.to_json())? + "\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
