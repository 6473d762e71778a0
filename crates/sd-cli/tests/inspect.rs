//! `sd inspect`: single files and folders, text and JSON, and refusals of bad files.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_success, fixtures, sd};

fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

fn inspect_json(path: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["inspect", path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = sd(&args);
    assert_success(&out, "sd inspect");
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

#[test]
fn inspect_json_describes_a_single_file() {
    let json = inspect_json(&fixture("single_file/tiny_sd15.safetensors"), &[]);
    assert_eq!(json["family"], "sd1");
    assert_eq!(json["prediction_type"], "epsilon");
    assert_eq!(json["inpainting"], false);
    assert_eq!(json["kind"], "single-file checkpoint");
    assert!(json["dtypes"]["F16"].as_u64().unwrap() > 100);
    let components: Vec<&str> = json["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(components, ["unet", "vae", "text_encoder"]);
    // The tiny file does not fit the full-size SD 1.5 preset: reported, not hidden.
    assert_eq!(json["complete"], false);
    let known: Vec<&str> = json["known_unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(known.contains(&"betas"), "{known:?}");
}

#[test]
fn inspect_json_describes_a_folder_completely() {
    let json = inspect_json(&fixture("models/tiny-sd15"), &[]);
    assert_eq!(json["kind"], "diffusers folder");
    assert_eq!(json["family"], "sd1");
    assert_eq!(json["complete"], true);
    assert_eq!(json["unused"].as_array().unwrap().len(), 0);
    let unet = &json["components"][0];
    assert_eq!(unet["component"], "unet");
    assert!(unet["parameters"].as_u64().unwrap() > 10_000);
}

#[test]
fn inspect_overrides_family_and_prediction() {
    let json = inspect_json(
        &fixture("single_file/tiny_sd2_text.safetensors"),
        &["--prediction-type", "epsilon"],
    );
    assert_eq!(json["family"], "sd2");
    assert_eq!(json["prediction_type"], "epsilon");
    assert_eq!(json["prediction_reason"], "given by the user");
    let json = inspect_json(&fixture("single_file/tiny_sd2_text.safetensors"), &[]);
    assert_eq!(json["prediction_type"], "v_prediction");
    let text = &json["components"][2];
    assert_eq!(text["component"], "text_encoder");
    assert_eq!(text["stored_layers"], 3);
}

#[test]
fn inspect_text_output_names_family_and_components() {
    let out = sd([
        "inspect",
        fixture("single_file/tiny_sdxl.safetensors")
            .to_str()
            .unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("family:       SDXL base (sdxl)"), "{text}");
    assert!(text.contains("text_encoder_2"), "{text}");
    assert!(text.contains("stored dtype: F16"), "{text}");
}

#[test]
fn inspect_refuses_a_pickle_that_runs_code() {
    let out = sd([
        "inspect",
        fixture("single_file/malicious_os_system.ckpt")
            .to_str()
            .unwrap(),
    ]);
    // A hostile file is the input's fault: exit code 2.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to load"), "{err}");
    assert!(err.contains("system"), "{err}");
}

#[test]
fn inspect_of_a_missing_path_or_bad_family_is_a_usage_error() {
    let out = sd(["inspect", "/nonexistent/model.safetensors"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sd([
        "inspect",
        fixture("single_file/tiny_sd15.safetensors")
            .to_str()
            .unwrap(),
        "--family",
        "sd9",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sdxl-refiner"));
}
