//! Helpers shared by the `sd` command's integration tests: fixture paths, scratch folders,
//! running the binary and comparing the images it writes.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's `fixtures/` folder (written by tools/reference/make_fixtures.py).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The tiny SD 1.5 diffusers folder of the fixtures.
pub fn tiny_model() -> PathBuf {
    fixtures().join("models/tiny-sd15")
}

/// An empty scratch folder of this test process, `<tmp>/sd-cli-<pid>-<name>`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A command that runs the `sd` binary built with these tests.
pub fn sd_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sd"))
}

/// Runs `sd` with `args` in the current folder.
pub fn sd<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    sd_command().args(args).output().expect("sd runs")
}

/// Runs `sd` with `args` in `dir` (where a fixture case's relative paths resolve).
pub fn sd_in<I, S>(dir: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    sd_command()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("sd runs")
}

/// Asserts that `sd` exited with status 0 (showing `what` and its stderr otherwise) and
/// returns its stderr.
pub fn assert_success(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{what}: {stderr}");
    stderr
}

/// Reads an image file as 8-bit RGB.
pub fn rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
        .to_rgb8()
}

/// For each channel of two images of one size: the largest and the mean absolute difference
/// (in 1/255).
pub fn channel_diffs(a: &image::RgbImage, b: &image::RgbImage) -> [(f64, f64); 3] {
    assert_eq!(a.dimensions(), b.dimensions(), "image size");
    std::array::from_fn(|channel| {
        let diffs: Vec<f64> = a
            .pixels()
            .zip(b.pixels())
            .map(|(p, q)| (f64::from(p.0[channel]) - f64::from(q.0[channel])).abs())
            .collect();
        let max = diffs.iter().cloned().fold(0.0, f64::max);
        (max, diffs.iter().sum::<f64>() / diffs.len() as f64)
    })
}

/// Asserts that two image files are equal up to rounding (per channel at most 2/255 apart, and
/// 0.02/255 on average) and returns the worst channel's (max, mean) difference.
pub fn assert_images_match(case: &str, actual: &Path, expected: &Path) -> (f64, f64) {
    let (a, b) = (rgb(actual), rgb(expected));
    assert_eq!(a.dimensions(), b.dimensions(), "{case}: image size");
    let mut worst = (0.0f64, 0.0f64);
    for (channel, (max, mean)) in channel_diffs(&a, &b).into_iter().enumerate() {
        assert!(
            max <= 2.0 && mean <= 0.02,
            "{case}: channel {channel} max |diff| {max}, mean {mean:.4}"
        );
        worst = (worst.0.max(max), worst.1.max(mean));
    }
    worst
}

/// The cases of a reference `cases.json` (each with a `name`, `args` and its `images`).
pub fn read_cases(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    match serde_json::from_str(&text).expect("cases are JSON") {
        serde_json::Value::Array(cases) => cases,
        other => panic!("{}: not a list of cases: {other}", path.display()),
    }
}

/// `sd generate` arguments that run a reference `case` (its `args`) on `model`, writing to
/// `output`.
pub fn case_args(model: &Path, output: &Path, case: &serde_json::Value) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "generate".into(),
        "--model".into(),
        model.display().to_string(),
        "--output".into(),
        output.display().to_string(),
    ];
    args.extend(
        case["args"]
            .as_array()
            .expect("a case has `args`")
            .iter()
            .map(|a| a.as_str().expect("arguments are strings").to_string()),
    );
    args
}
