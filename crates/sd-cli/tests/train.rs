//! `sd train` and `sd eval` reject bad settings before any work starts; training gives the same
//! weights with any thread count.

mod common;

use std::process::Output;

use common::sd;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn train_rejects_a_zero_batch_size() {
    let out = std::env::temp_dir().join(format!("sd-cli-train-{}", std::process::id()));
    let output = sd(["train", "--out", out.to_str().unwrap(), "--batch", "0"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("batch size is 0"),
        "{}",
        stderr(&output)
    );
    assert!(!out.exists(), "nothing may be written for bad settings");
}

#[test]
fn train_rejects_an_output_folder_whose_parent_is_missing() {
    let output = sd(["train", "--out", "/no/such/parent/run"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("/no/such/parent"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn train_requires_an_output_folder_and_a_known_stage() {
    let output = sd(["train"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--out"), "{}", stderr(&output));
    let output = sd(["train", "--out", "/tmp/x", "--stage", "everything"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown stage"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn eval_rejects_a_missing_model() {
    let output = sd(["eval", "--model", "/no/such/model", "--count", "1"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("model not found"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn train_help_states_the_presets_actual_defaults() {
    let help = String::from_utf8(sd(["train", "--help"]).stdout).unwrap();
    let preset = sd_train::train::TrainOptions::shapes("unused");
    let default_of = |flag: &str| -> String {
        let start = help
            .find(&format!("--{flag} <"))
            .unwrap_or_else(|| panic!("no --{flag} in the help"));
        let rest = &help[start..];
        let at = rest.find("[default: ").expect("a default") + "[default: ".len();
        rest[at..rest[at..].find(']').unwrap() + at].to_string()
    };
    assert_eq!(default_of("vae-steps"), preset.vae.steps.to_string());
    assert_eq!(default_of("vae-batch"), preset.vae.batch_size.to_string());
    assert_eq!(default_of("text-steps"), preset.text.steps.to_string());
    assert_eq!(default_of("text-batch"), preset.text.batch_size.to_string());
    assert_eq!(default_of("steps"), preset.diffusion.steps.to_string());
    assert_eq!(default_of("batch"), preset.diffusion.batch_size.to_string());
    assert_eq!(default_of("offset-noise"), preset.offset_noise.to_string());
    assert_eq!(
        default_of("pyramid-noise"),
        preset.pyramid_noise.to_string()
    );
    assert_eq!(
        default_of("vae-foreground-weight"),
        preset.vae_foreground_weight.to_string()
    );
    assert_eq!(
        default_of("foreground-weight"),
        preset.foreground_weight.to_string()
    );
    assert_eq!(
        default_of("checkpoint-every"),
        preset.checkpoint_every.to_string()
    );
    assert_eq!(default_of("sample-every"), preset.sample_every.to_string());
    let lr: f64 = default_of("lr").parse().unwrap();
    assert_eq!(lr, preset.diffusion.learning_rate);
    let vae_lr: f64 = default_of("vae-lr").parse().unwrap();
    assert_eq!(vae_lr, preset.vae.learning_rate);
}

#[test]
fn training_gives_byte_identical_weights_with_any_thread_count() {
    let run = |threads: &str| {
        let out = common::scratch(&format!("train-threads-{threads}"));
        let output = common::sd_command()
            .args(["train", "--out"])
            .arg(&out)
            .args(["--preset", "tiny", "--vae-steps", "3", "--text-steps", "3"])
            .args([
                "--steps",
                "3",
                "--vae-batch",
                "2",
                "--text-batch",
                "4",
                "--batch",
                "2",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .expect("sd runs");
        common::assert_success(&output, &format!("sd train with {threads} threads"));
        out.join("model")
    };
    let (one, two) = (run("1"), run("2"));
    for file in [
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ] {
        let (a, b) = (std::fs::read(one.join(file)), std::fs::read(two.join(file)));
        let (a, b) = (a.expect("1-thread weights"), b.expect("2-thread weights"));
        assert!(a == b, "{file} differs between 1 and 2 threads");
    }
}
