//! `sd train` and `sd eval` reject bad settings before any work starts.

use std::process::{Command, Output};

fn sd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(args)
        .output()
        .expect("sd runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn train_rejects_a_zero_batch_size() {
    let out = std::env::temp_dir().join(format!("sd-cli-train-{}", std::process::id()));
    let output = sd(&["train", "--out", out.to_str().unwrap(), "--batch", "0"]);
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
    let output = sd(&["train", "--out", "/no/such/parent/run"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("/no/such/parent"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn train_requires_an_output_folder_and_a_known_stage() {
    let output = sd(&["train"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--out"), "{}", stderr(&output));
    let output = sd(&["train", "--out", "/tmp/x", "--stage", "everything"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown stage"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn eval_rejects_a_missing_model() {
    let output = sd(&["eval", "--model", "/no/such/model", "--count", "1"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("model not found"),
        "{}",
        stderr(&output)
    );
}
