//! `sd generate` on single-file checkpoints: the same weights as a diffusers folder give the
//! same image; detection overrides are validated.

mod common;

use std::path::Path;
use std::process::Output;

use common::{assert_success, fixtures, scratch, sd, sd_command};

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
    assert_success(&run, "sd");
    let config = folder.to_str().unwrap();
    let run = generate(&file, &["--config", config], &from_file);
    assert_success(&run, "sd");
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
    assert_eq!(run.status.code(), Some(2), "{stderr}");
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
    let run = sd_command()
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
    assert_success(&run, "sd");
    let expected = stable_diffusion::loading::sha256_file(&file).unwrap();
    let info = sd(["info", output.to_str().unwrap()]);
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

/// Writes the tensors of `source` whose names start with `prefix`, with the prefix removed.
fn write_stripped(source: &Path, prefix: &str, dest: &Path) -> usize {
    let bytes = std::fs::read(source).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| Some((name.strip_prefix(prefix)?.to_string(), view)))
        .collect();
    let count = kept.len();
    safetensors::serialize_to_file(kept, None, dest).unwrap();
    count
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

#[test]
fn single_vae_files_in_ldm_or_diffusers_names_replace_the_models_vae() {
    let dir = scratch("vae-file");
    let folder = fixtures().join("models/tiny-sd15");
    let run = |extra: &[&str], name: &str| {
        let out = dir.join(name);
        let output = generate(&folder, extra, &out);
        assert_success(&output, "sd");
        out
    };
    // The VAE of the LDM single file (the same weights as the folder's), as A1111 users keep a
    // VAE: bare `encoder.down.0…` names in a file of its own.
    let ldm_vae = dir.join("vae-ldm.safetensors");
    let stored = write_stripped(
        &fixtures().join("single_file/tiny_sd15.safetensors"),
        "first_stage_model.",
        &ldm_vae,
    );
    assert!(
        stored > 20,
        "the fixture holds a whole VAE ({stored} tensors)"
    );
    let own = run(&[], "own.png");
    let from_ldm = run(&["--vae", ldm_vae.to_str().unwrap()], "ldm.png");
    assert!(
        pixels(&own) == pixels(&from_ldm),
        "the LDM-named VAE file is not the same VAE"
    );
    let info = String::from_utf8(sd(["info", from_ldm.to_str().unwrap()]).stdout).unwrap();
    assert!(info.contains("VAE: vae-ldm.safetensors"), "{info}");
    // A pickle checkpoint that holds the VAE under `first_stage_model.` (read by the
    // restricted reader) serves as a VAE file too.
    let ckpt = fixtures().join("single_file/tiny_sd15_unet_vae.ckpt");
    let from_ckpt = run(&["--vae", ckpt.to_str().unwrap()], "ckpt.png");
    assert!(pixels(&own) == pixels(&from_ckpt));

    // Another VAE: its folder, and its weights file alone (diffusers names, no config).
    let alt = fixtures().join("models/tiny-vae-alt");
    let alt_folder = run(&["--vae", alt.to_str().unwrap()], "alt-folder.png");
    let alt_file = alt.join("diffusion_pytorch_model.safetensors");
    let alt_single = run(&["--vae", alt_file.to_str().unwrap()], "alt-file.png");
    assert!(pixels(&alt_folder) == pixels(&alt_single));
    assert!(
        pixels(&alt_folder) != pixels(&own),
        "the other VAE must change the picture, or this test proves nothing"
    );
}

#[test]
fn a_file_without_vae_tensors_is_refused_as_vae_naming_what_it_holds() {
    let dir = scratch("not-vae");
    let unet_only = dir.join("unet.safetensors");
    write_stripped(
        &fixtures().join("single_file/tiny_sd15.safetensors"),
        "model.diffusion_model.",
        &unet_only,
    );
    let output = generate(
        &fixtures().join("models/tiny-sd15"),
        &["--vae", unet_only.to_str().unwrap()],
        &dir.join("never.png"),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a VAE"), "{stderr}");
    assert!(!dir.join("never.png").exists());
}
