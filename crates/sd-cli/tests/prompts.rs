//! Prompt control end to end: `--clip-skip` and `--embedding` against diffusers' images
//! (tools/reference/parts/prompts.py), and `--prompt-syntax a1111` on a long weighted prompt.

mod common;

use std::path::Path;
use std::process::Output;

use common::{assert_success, channel_diffs, fixtures, rgb, scratch, sd_in, tiny_model};

fn sd(args: &[String]) -> Output {
    sd_in(&fixtures().join("prompts"), args)
}

fn generate(output: &Path, args: &[String]) {
    let mut all: Vec<String> = vec![
        "generate".into(),
        "--model".into(),
        tiny_model().display().to_string(),
        "--output".into(),
        output.display().to_string(),
    ];
    all.extend_from_slice(args);
    assert_success(&sd(&all), &format!("{args:?}"));
}

#[test]
fn clip_skip_and_embeddings_match_diffusers() {
    let cases = std::fs::read_to_string(fixtures().join("prompts/cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&cases).unwrap();
    let dir = scratch("parity");
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let args: Vec<String> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let output = dir.join(format!("{name}.png"));
        generate(&output, &args);
        let expected = fixtures()
            .join("prompts")
            .join(case["image"].as_str().unwrap());
        for (channel, (max, mean)) in channel_diffs(&rgb(&output), &rgb(&expected))
            .into_iter()
            .enumerate()
        {
            eprintln!("{name}: channel {channel} max {max} mean {mean:.4}");
            assert!(
                max <= 2.0 && mean <= 0.02,
                "{name}: channel {channel} max |diff| {max}, mean {mean:.4}"
            );
        }
    }
}

#[test]
fn clip_skip_is_written_to_the_infotext() {
    let dir = scratch("infotext");
    let output = dir.join("skip.png");
    let args: Vec<String> = [
        "--prompt",
        "a red circle",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "2",
        "--seed",
        "1",
        "--clip-skip",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    generate(&output, &args);
    let info = sd(&["info".into(), output.display().to_string()]);
    let text = String::from_utf8(info.stdout).unwrap();
    assert!(text.contains("Clip skip: 2"), "{text}");
}

#[test]
fn long_weighted_a1111_prompt_runs_and_differs_from_plain() {
    let dir = scratch("a1111");
    let prompt = format!(
        "(masterpiece:1.3), {}, a ((red circle)) on a [blue] background BREAK (sharp:0.8) <lora:none:0.5>",
        vec!["detailed"; 90].join(" ")
    );
    let base: Vec<String> = [
        "--prompt",
        &prompt,
        "--negative-prompt",
        "blurry",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "3",
        "--seed",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plain = dir.join("plain.png");
    generate(&plain, &base);
    let a1111 = dir.join("a1111.png");
    let mut args = base.clone();
    args.extend(["--prompt-syntax".to_string(), "a1111".to_string()]);
    generate(&a1111, &args);
    let diffs = channel_diffs(&rgb(&plain), &rgb(&a1111));
    assert!(
        diffs.iter().any(|(max, _)| *max > 5.0),
        "a1111 syntax made the plain image: {diffs:?}"
    );

    let bad = dir.join("bad.png");
    let mut args = base;
    args.extend(["--prompt-syntax".to_string(), "compel".to_string()]);
    let mut all: Vec<String> = vec![
        "generate".into(),
        "--model".into(),
        tiny_model().display().to_string(),
        "--output".into(),
        bad.display().to_string(),
    ];
    all.extend(args);
    let run = sd(&all);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("prompt syntax"));
}

#[test]
fn embeddings_dir_loads_the_embedding_named_in_the_prompt() {
    let dir = scratch("embdir");
    let cases = std::fs::read_to_string(fixtures().join("prompts/cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&cases).unwrap();
    let case = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ti_multi")
        .unwrap();
    let mut args: Vec<String> = case["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let at = args.iter().position(|a| a == "--embedding").unwrap();
    args.drain(at..at + 2);
    args.extend(["--embeddings-dir".to_string(), ".".to_string()]);
    let output = dir.join("dir.png");
    // The folder also holds wrongwidth.safetensors, not named in the prompt: not loaded.
    generate(&output, &args);
    let expected = fixtures().join("prompts/ti_multi.png");
    for (max, mean) in channel_diffs(&rgb(&output), &rgb(&expected)) {
        assert!(max <= 2.0 && mean <= 0.02, "max {max} mean {mean}");
    }
}
