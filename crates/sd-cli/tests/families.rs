//! End-to-end for every model family: `sd generate` on the tiny SD 2.x, SDXL, SDXL refiner and
//! inpainting models must give diffusers' images. The cases and reference PNGs come from
//! tools/reference/parts/pipeline_families.py; each case names its model folder.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{
    assert_images_match, assert_success, case_args, fixtures, read_cases, rgb, scratch, sd_in,
};

fn cases_dir() -> PathBuf {
    fixtures().join("pipeline_families")
}

fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn sd(args: &[String]) -> Output {
    sd_in(&cases_dir(), args)
}

/// Runs every case whose name starts with `prefix` (at least one must) plus `extra` arguments,
/// and compares its images with diffusers'.
fn check_cases(prefix: &str, extra: &[&str]) {
    let dir = scratch(&format!("{prefix}{}", extra.join("")));
    let cases: Vec<_> = read_cases(&cases_dir().join("cases.json"))
        .into_iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with(prefix))
        .collect();
    assert!(!cases.is_empty(), "no case named {prefix}*");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let output = dir.join(format!("{name}.png"));
        let mut args = case_args(&model(case["model"].as_str().unwrap()), &output, &case);
        args.extend(extra.iter().map(|s| s.to_string()));
        assert_success(&sd(&args), name);
        for image in case["images"].as_array().unwrap() {
            let image = image.as_str().unwrap();
            let actual = dir.join(image);
            let expected = cases_dir().join(image);
            let worst = assert_images_match(&format!("{name}/{image}"), &actual, &expected);
            eprintln!("{name}/{image}: worst channel (max, mean) |diff| {worst:?}");
        }
    }
}

#[test]
fn sd2_v_prediction_matches_diffusers() {
    check_cases("sd2_", &[]);
}

#[test]
fn sdxl_base_matches_diffusers() {
    check_cases("sdxl_", &[]);
}

#[test]
fn sdxl_refiner_img2img_matches_diffusers() {
    check_cases("refiner_", &[]);
}

#[test]
fn sdxl_base_to_refiner_handoff_matches_diffusers() {
    check_cases("handoff_", &[]);
}

#[test]
fn inpainting_with_9_channel_model_matches_diffusers() {
    check_cases("inpaint9_", &[]);
}

#[test]
fn inpainting_with_4_channel_model_matches_diffusers() {
    check_cases("inpaint4_", &[]);
}

#[test]
fn external_vae_matches_diffusers() {
    check_cases("external_vae", &[]);
}

/// The fixtures' weights are f16-exact, so half storage with f32 compute must give the same
/// images (converted per layer, never rounded further).
#[test]
fn f16_weights_give_the_same_images() {
    check_cases("sdxl_euler_80x48", &["--weight-dtype", "f16"]);
    check_cases("inpaint9_", &["--weight-dtype", "f16"]);
}

#[test]
fn bf16_weights_run_and_stay_close() {
    let dir = scratch("bf16");
    let output = dir.join("bf16.png");
    let run = sd(&[
        "generate".into(),
        "--model".into(),
        model("tiny-sdxl").display().to_string(),
        "--prompt".into(),
        "a red circle".into(),
        "--steps".into(),
        "3".into(),
        "--seed".into(),
        "3".into(),
        "--weight-dtype".into(),
        "bf16".into(),
        "--output".into(),
        output.display().to_string(),
    ]);
    assert_success(&run, "sd");
    assert_eq!(
        rgb(&output).dimensions(),
        (64, 64),
        "the native size of the tiny SDXL"
    );
}

/// Runs `sd generate` on `model` with `extra` arguments and expects exit code 2 with
/// `needle` in stderr, and no output file.
fn assert_usage_error(model_name: &str, extra: &[&str], needle: &str) {
    let dir = scratch("usage");
    let output = dir.join("never.png");
    let mut args: Vec<String> = vec![
        "generate".into(),
        "--model".into(),
        model(model_name).display().to_string(),
        "--prompt".into(),
        "x".into(),
        "--steps".into(),
        "2".into(),
        "--output".into(),
        output.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = sd(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{extra:?}: stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "{extra:?}: stderr {stderr:?} lacks {needle:?}"
    );
    assert!(!output.exists());
}

#[test]
fn bad_family_input_exits_2_with_a_clear_message() {
    let small = scratch("small-mask").join("small.png");
    image::RgbImage::new(32, 32).save(&small).unwrap();
    let small = small.display().to_string();
    assert_usage_error(
        "tiny-sd15-inpaint",
        &["--init-image", "init.png", "--mask", &small],
        "mask is 32x32, the init image is 64x64",
    );
    assert_usage_error("tiny-sd15", &["--mask", "mask.png"], "init image");
    assert_usage_error("tiny-sd15", &["--weight-dtype", "f8"], "f32, f16, bf16");
    assert_usage_error("tiny-sd15", &["--compute-dtype", "int8"], "bf16");
    for switch in ["0", "1", "1.5", "-0.2", "nan"] {
        let switch = format!("--refiner-switch={switch}");
        assert_usage_error(
            "tiny-sdxl",
            &["--refiner", "../models/tiny-sdxl-refiner", &switch],
            "refiner switch",
        );
    }
    assert_usage_error(
        "tiny-sdxl",
        &["--refiner", "../models/does-not-exist"],
        "refiner not found",
    );
    assert_usage_error("tiny-sd15", &["--vae", "../models/nope"], "VAE not found");
    assert_usage_error("tiny-sd15-inpaint", &[], "inpainting model");
}

#[test]
fn refiner_handoff_is_written_to_the_infotext() {
    let dir = scratch("refiner-info");
    let output = dir.join("refined.png");
    let run = sd(&[
        "generate".into(),
        "--model".into(),
        model("tiny-sdxl").display().to_string(),
        "--prompt".into(),
        "a lighthouse".into(),
        "--steps".into(),
        "4".into(),
        "--seed".into(),
        "8".into(),
        "--refiner".into(),
        "../models/tiny-sdxl-refiner".into(),
        "--refiner-switch".into(),
        "0.75".into(),
        "--output".into(),
        output.display().to_string(),
    ]);
    assert_success(&run, "sd");
    let info = sd(&["info".into(), output.display().to_string()]);
    let text = String::from_utf8(info.stdout).unwrap();
    assert!(
        text.contains("Refiner: tiny-sdxl-refiner, Refiner switch at: 0.75"),
        "{text}"
    );
    assert!(text.contains("Model: tiny-sdxl"), "{text}");
}
