//! `sd generate --lora PATH:WEIGHT` on the tiny SD 1.5 model gives diffusers' images with the
//! same networks fused (kohya and PEFT files, weights 0.5 and 1, two at once). Cases and
//! images: tools/reference/parts/lora.py.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
        .to_rgb8()
}

/// Per channel: max |diff| <= 2 of 255 and mean |diff| <= 0.02.
fn assert_images_match(case: &str, actual: &Path, expected: &Path) {
    let (a, b) = (rgb(actual), rgb(expected));
    assert_eq!(a.dimensions(), b.dimensions(), "{case}: image size");
    for channel in 0..3 {
        let diffs: Vec<f64> = a
            .pixels()
            .zip(b.pixels())
            .map(|(p, q)| (p.0[channel] as f64 - q.0[channel] as f64).abs())
            .collect();
        let max = diffs.iter().cloned().fold(0.0, f64::max);
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        println!("{case}: channel {channel} max {max} mean {mean:.4}");
        assert!(
            max <= 2.0 && mean <= 0.02,
            "{case}: channel {channel} max |diff| {max}, mean {mean:.4}"
        );
    }
}

#[test]
fn lora_generate_matches_diffusers_fused_loras() {
    let dir = std::env::temp_dir().join(format!("sd-cli-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("lora/cases.json")).unwrap())
            .unwrap();
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let output = dir.join(format!("{name}.png"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_sd"));
        command
            .current_dir(fixtures().join("lora"))
            .arg("generate")
            .arg("--model")
            .arg(fixtures().join("models/tiny-sd15"))
            .arg("--output")
            .arg(&output);
        for arg in case["args"].as_array().unwrap() {
            command.arg(arg.as_str().unwrap());
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = fixtures()
            .join("lora")
            .join(case["image"].as_str().unwrap());
        assert_images_match(name, &output, &expected);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_lora_file_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args([
            "generate",
            "--prompt",
            "x",
            "--lora",
            "nope.safetensors:0.5",
            "--model",
        ])
        .arg(fixtures().join("models/tiny-sd15"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.safetensors"));
}
