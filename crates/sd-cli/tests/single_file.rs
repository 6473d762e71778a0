//! `sd generate` on single-file checkpoints: the same weights as a diffusers folder give the
//! same image; detection overrides are validated.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-single-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(args)
        .output()
        .expect("sd runs")
}

fn generate(model: &Path, extra: &[&str], output: &Path) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a red circle on a blue background",
        "--negative-prompt",
        "blurry",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "4",
        "--sampler",
        "dpmpp_2m",
        "--seed",
        "31",
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sd(&args)
}

#[test]
fn single_file_and_diffusers_folder_give_identical_pixels() {
    let dir = scratch("same");
    let folder = fixtures().join("models/tiny-sd15");
    let file = fixtures().join("single_file/tiny_sd15.safetensors");
    let from_folder = dir.join("folder.png");
    let from_file = dir.join("file.png");
    let run = generate(&folder, &[], &from_folder);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let config = folder.to_str().unwrap();
    let run = generate(&file, &["--config", config], &from_file);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let a = image::open(&from_folder).unwrap().to_rgb8();
    let b = image::open(&from_file).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), b.dimensions());
    assert!(
        a.as_raw() == b.as_raw(),
        "the single file and the folder give different pixels"
    );
}

#[test]
fn tiny_single_file_without_config_is_refused_with_the_tensor_named() {
    // Without --config the family's full-size configs are used: the tiny file's tensors do
    // not fit them, and the error names one (never a panic).
    let dir = scratch("preset");
    let file = fixtures().join("single_file/tiny_sd15.safetensors");
    let run = generate(&file, &[], &dir.join("x.png"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("shape"), "{stderr}");
    assert!(!dir.join("x.png").exists());
}

#[test]
fn bad_overrides_exit_2_listing_the_valid_values() {
    let dir = scratch("overrides");
    let file = fixtures().join("single_file/tiny_sd15.safetensors");
    for (extra, needle) in [
        (vec!["--family", "sd9"], "sdxl"),
        (vec!["--prediction-type", "x"], "v_prediction"),
        (vec!["--config", "/nonexistent"], "model_index.json"),
    ] {
        let run = generate(&file, &extra, &dir.join("x.png"));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}

#[test]
fn infotext_of_a_single_file_carries_a1111_model_hash() {
    let dir = scratch("hash");
    let cache = dir.join("cache");
    let file = fixtures().join("single_file/tiny_sd15.safetensors");
    let folder = fixtures().join("models/tiny-sd15");
    let output = dir.join("hashed.png");
    let run = Command::new(env!("CARGO_BIN_EXE_sd"))
        .env("SD_CACHE_DIR", &cache)
        .args([
            "generate",
            "--model",
            file.to_str().unwrap(),
            "--config",
            folder.to_str().unwrap(),
            "--prompt",
            "x",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "1",
            "--seed",
            "3",
            "--output",
            output.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let expected = stable_diffusion::loading::sha256_file(&file).unwrap();
    let info = sd(&["info", output.to_str().unwrap()]);
    let text = String::from_utf8(info.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "Model hash: {}, Model: tiny_sd15",
            &expected[..10]
        )),
        "{text}"
    );
    assert!(cache.join("hashes.json").is_file(), "the hash is cached");
}
