//! The trainer: settings validation, checkpoints and exact resumption (tiny model, few steps).

// The engine's test helpers, shared rather than copied.
#[path = "../../stable-diffusion/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use sd_train::train::{train, ModelConfig, Stages, TrainEvent, TrainOptions};
use stable_diffusion::pipeline::Control;
use stable_diffusion::Error;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn tiny_vae_options(out: &Path, steps: usize) -> TrainOptions {
    let mut options = TrainOptions::shapes(out);
    options.model = ModelConfig::tiny();
    options.stages = Stages::Vae;
    options.vae.steps = steps;
    options.vae.batch_size = 2;
    options.vae.warmup_steps = 1;
    options.text.steps = 1;
    options.text.batch_size = 2;
    options.text.warmup_steps = 1;
    options.checkpoint_every = 1;
    options.sample_every = 0;
    options
}

fn checkpoint_tensors(dir: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(dir.join("vae.safetensors"), &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k != "adam_t")
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn bad_settings_are_rejected_with_clear_errors() {
    let out = scratch("bad");
    let mut options = tiny_vae_options(&out, 1);
    options.diffusion.batch_size = 0;
    let err = options.validate().unwrap_err().to_string();
    assert!(err.contains("batch size is 0"), "{err}");

    let options = tiny_vae_options(Path::new("/definitely/not/here/run"), 1);
    let err = options.validate().unwrap_err().to_string();
    assert!(err.contains("/definitely/not/here"), "{err}");

    let mut options = tiny_vae_options(&out, 1);
    options.caption_dropout = 1.5;
    assert!(options.validate().is_err());
}

#[test]
fn interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one() {
    let straight = scratch("straight");
    train(&tiny_vae_options(&straight, 2), &mut |_| Control::Continue).unwrap();

    let interrupted = scratch("interrupted");
    let mut steps_seen = Vec::new();
    let result = train(&tiny_vae_options(&interrupted, 2), &mut |event| {
        if let TrainEvent::Step { step, .. } = event {
            steps_seen.push(step);
            return Control::Cancel;
        }
        Control::Continue
    });
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(steps_seen, vec![1]);

    // Without --resume the existing checkpoint is not overwritten.
    let err = train(&tiny_vae_options(&interrupted, 2), &mut |_| {
        Control::Continue
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("resume"), "{err}");

    let mut resumed = tiny_vae_options(&interrupted, 2);
    resumed.resume = true;
    let mut first_step = None;
    train(&resumed, &mut |event| {
        if let TrainEvent::StageStarted { step, .. } = event {
            first_step = Some(step);
        }
        Control::Continue
    })
    .unwrap();
    assert_eq!(first_step, Some(1), "the finished step was lost");
    let (a, b) = (
        checkpoint_tensors(&straight),
        checkpoint_tensors(&interrupted),
    );
    assert_eq!(a.len(), b.len());
    for (name, values) in &a {
        assert_eq!(values, &b[name], "{name} differs after resuming");
    }
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&interrupted);
}

#[test]
fn resuming_a_checkpoint_of_another_shape_is_an_error() {
    let out = scratch("shape");
    train(&tiny_vae_options(&out, 1), &mut |_| Control::Continue).unwrap();
    let mut other = tiny_vae_options(&out, 2);
    other.model.vae.block_out_channels = vec![8, 16, 32];
    other.resume = true;
    let err = train(&other, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit this model"), "{err}");
    assert!(err.contains("shape"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs `options` (writing to `out`, removed afterwards) and returns the last loss `stage`
/// reported.
fn last_loss(options: &TrainOptions, out: &Path, stage: &str) -> f64 {
    let mut loss = None;
    train(options, &mut |event| {
        if let TrainEvent::Step {
            stage: s, loss: l, ..
        } = event
        {
            if s == stage {
                loss = Some(l);
            }
        }
        Control::Continue
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(out);
    loss.unwrap_or_else(|| panic!("no {stage} step"))
}

/// Asserts that two losses of the same step, made from the same data, noise and initial weights
/// with only the per-pixel weighting changed, are finite and differ.
fn assert_weighting_changes_the_loss(plain: f64, weighted: f64) {
    assert!(plain.is_finite() && weighted.is_finite());
    assert!(
        (plain - weighted).abs() > 1e-6 * plain,
        "{plain} vs {weighted}"
    );
}

/// The error `validate` gives for the shapes preset changed by `edit`.
fn shapes_options_error(edit: impl FnOnce(&mut TrainOptions)) -> String {
    let mut options = TrainOptions::shapes(std::env::temp_dir());
    edit(&mut options);
    options.validate().unwrap_err().to_string()
}

/// The diffusion stage's first loss with `foreground_weight`.
fn first_diffusion_loss(name: &str, foreground_weight: f64) -> f64 {
    let out = scratch(name);
    let mut options = tiny_vae_options(&out, 1);
    options.stages = Stages::All;
    options.diffusion.steps = 1;
    options.diffusion.batch_size = 2;
    options.diffusion.warmup_steps = 1;
    options.foreground_weight = foreground_weight;
    last_loss(&options, &out, "diffusion")
}

#[test]
fn foreground_weight_reweights_the_diffusion_loss() {
    let plain = first_diffusion_loss("fg0", 0.0);
    let weighted = first_diffusion_loss("fg10", 10.0);
    assert_weighting_changes_the_loss(plain, weighted);
    let err = shapes_options_error(|options| options.foreground_weight = -1.0);
    assert!(err.contains("foreground weight"), "{err}");
}

#[test]
fn text_stage_learns_the_caption_attributes_and_the_unet_stage_keeps_it_fixed() {
    let out = scratch("text");
    let mut options = tiny_vae_options(&out, 1);
    options.stages = Stages::Diffusion;
    let err = train(&options, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vae stage first"), "{err}");
    options.stages = Stages::Vae;
    train(&options, &mut |_| Control::Continue).unwrap();
    options.stages = Stages::Diffusion;
    options.resume = true;
    let err = train(&options, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(err.contains("text stage first"), "{err}");

    options.stages = Stages::Text;
    options.text.steps = 60;
    options.text.batch_size = 16;
    options.text.learning_rate = 3e-3;
    options.checkpoint_every = 0;
    let mut losses = Vec::new();
    train(&options, &mut |event| {
        if let TrainEvent::Step { loss, .. } = event {
            losses.push(loss);
        }
        Control::Continue
    })
    .unwrap();
    assert_eq!(losses.len(), 60);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[55..]));
    assert!(last < 0.85 * first, "text loss {first} -> {last}");

    options.stages = Stages::Diffusion;
    options.diffusion.steps = 2;
    options.diffusion.batch_size = 2;
    options.diffusion.warmup_steps = 1;
    train(&options, &mut |_| Control::Continue).unwrap();
    // The exported text encoder is the text stage's (EMA) result, untouched by the UNet stage.
    let device = candle_core::Device::Cpu;
    let stage = candle_core::safetensors::load(out.join("text.safetensors"), &device).unwrap();
    let exported =
        candle_core::safetensors::load(out.join("model/text_encoder/model.safetensors"), &device)
            .unwrap();
    let mut compared = 0;
    for (name, tensor) in &exported {
        let Some(trained) = stage.get(&format!("ema/text_encoder.{name}")) else {
            continue;
        };
        let diff = common::max_abs_diff(tensor, trained);
        let scale = common::max_abs(trained);
        assert!(diff <= 1e-3 * scale.max(1.0), "{name}: {diff}");
        compared += 1;
    }
    assert!(
        compared > 10,
        "only {compared} text encoder tensors compared"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn vae_foreground_weight_reweights_the_reconstruction_loss() {
    let first_loss = |name: &str, weight: f64| -> f64 {
        let out = scratch(name);
        let mut options = tiny_vae_options(&out, 1);
        options.vae_foreground_weight = weight;
        last_loss(&options, &out, "vae")
    };
    let plain = first_loss("vfg0", 0.0);
    let weighted = first_loss("vfg10", 10.0);
    assert_weighting_changes_the_loss(plain, weighted);
    let err = shapes_options_error(|options| options.vae_foreground_weight = f64::NAN);
    assert!(err.contains("VAE foreground weight"), "{err}");
}
