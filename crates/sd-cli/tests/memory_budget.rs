//! `sd generate --max-memory`: a model or a request estimated above the limit is refused with
//! exit code 2 before anything is allocated, the message naming what was needed and what is
//! allowed; a generous limit runs; a limit that only a tiled decode fits tiles the decode.
//!
//! The tiny SD 1.5 fixture's weights come to about 7.9 MB in f32; a 128x128 image adds about
//! 2.1 MB to decode in one piece (10.0 MB in all) and under 1 MB in tiles (8.8 MB in all).

mod common;

use std::path::Path;
use std::process::Output;

use common::{scratch, sd, tiny_model};

/// `sd generate` on the tiny model, 2 steps, `extra` appended, writing `output`.
fn generate(output: &Path, extra: &[&str]) -> Output {
    let model = tiny_model();
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--prompt".into(),
        "a red circle".into(),
        "--steps".into(),
        "2".into(),
        "--seed".into(),
        "1".into(),
        "--output".into(),
        output.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    sd(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_limit_below_the_weights_is_refused_naming_both_sizes() {
    let dir = scratch("budget-weights");
    let out = dir.join("out.png");
    let output = generate(&out, &["--max-memory", "1M"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("not enough memory"), "{text}");
    assert!(text.contains("weights in f32"), "{text}");
    assert!(text.contains("needs about 7.9 MB"), "{text}");
    assert!(text.contains("limit of 1.0 MB (--max-memory)"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn half_weights_halve_what_the_model_needs() {
    let dir = scratch("budget-bf16");
    let output = generate(
        &dir.join("out.png"),
        &["--max-memory", "1M", "--weight-dtype", "bf16"],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("weights in bf16) needs about 3.9 MB"),
        "{text}"
    );
}

#[test]
fn a_request_over_the_limit_is_refused_before_it_runs() {
    let dir = scratch("budget-request");
    let out = dir.join("out.png");
    let started = std::time::Instant::now();
    let output = generate(
        &out,
        &["--max-memory", "20M", "--width", "4096", "--height", "4096"],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("a 4096x4096 image"), "{text}");
    assert!(text.contains("limit of 20.0 MB"), "{text}");
    // The estimate (hundreds of MB) is named, and the refusal comes before any step.
    let needed = text
        .split("needs about ")
        .nth(1)
        .and_then(|rest| rest.split(" MB").next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no size in MB: {text}"));
    assert!(needed > 100.0, "{text}");
    assert!(!text.contains("step"), "{text}");
    assert!(started.elapsed().as_secs() < 30);
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn a_generous_limit_runs() {
    let dir = scratch("budget-generous");
    let out = dir.join("out.png");
    let output = generate(
        &out,
        &["--max-memory", "2G", "--width", "128", "--height", "128"],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(!text.contains("in tiles"), "{text}");
    assert_eq!(common::rgb(&out).dimensions(), (128, 128));
}

#[test]
fn a_limit_only_a_tiled_decode_fits_tiles_the_decode() {
    let dir = scratch("budget-tiles");
    let out = dir.join("out.png");
    let output = generate(
        &out,
        &["--max-memory", "9.3M", "--width", "128", "--height", "128"],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("decoding the VAE in tiles"), "{text}");
    assert!(text.contains("9.3 MB are allowed"), "{text}");
    // The same image with tiles forced: the automatic choice is the forced one.
    let forced = dir.join("forced.png");
    let output = generate(
        &forced,
        &["--vae-tiling", "--width", "128", "--height", "128"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(common::rgb(&out), common::rgb(&forced));
}

#[test]
fn a_memory_size_that_is_not_one_is_a_usage_error() {
    let dir = scratch("budget-bad-size");
    for bad in ["lots", "0", "12 parsecs"] {
        let output = generate(&dir.join("out.png"), &["--max-memory", bad]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{bad}: {text}");
        assert!(text.contains("invalid memory size"), "{bad}: {text}");
    }
}
