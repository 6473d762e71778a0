//! `sd generate --device` / `--dtype`: bad values are usage errors (exit 2) that name the
//! problem, and `--device cpu` is the default.

mod common;

use std::process::Output;

use common::{scratch, sd_command, tiny_model};

/// Runs `sd generate` on the tiny model (64×64, 2 steps) with `extra` arguments.
fn generate(output: &std::path::Path, extra: &[&str]) -> Output {
    let model = tiny_model();
    sd_command()
        .args(["generate", "--model", model.to_str().unwrap()])
        .args(["--prompt", "a red circle", "-W", "64", "-H", "64"])
        .args([
            "--steps",
            "2",
            "--seed",
            "5",
            "--output",
            output.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .expect("sd runs")
}

#[track_caller]
fn assert_usage_error(extra: &[&str], needles: &[&str]) {
    let dir = scratch("usage");
    let run = generate(&dir.join("out.png"), extra);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{extra:?}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{extra:?}: {needle:?} not in {stderr}"
        );
    }
    assert!(!dir.join("out.png").exists());
}

#[test]
fn unknown_device_or_dtype_exits_2_naming_the_valid_values() {
    assert_usage_error(&["--device", "gpu"], &["`gpu`", "cuda:N"]);
    assert_usage_error(&["--device", "cuda:first"], &["GPU number"]);
    assert_usage_error(&["--dtype", "f64"], &["`f64`", "bf16"]);
}

#[test]
fn gpu_device_in_a_cpu_build_names_the_cargo_feature() {
    if !cfg!(feature = "cuda") {
        assert_usage_error(&["--device", "cuda"], &["--features cuda"]);
    }
    if !cfg!(feature = "metal") {
        assert_usage_error(&["--device", "metal"], &["--features metal"]);
    }
}

#[test]
fn cpu_device_is_the_default() {
    let dir = scratch("default");
    let (default, cpu) = (dir.join("default.png"), dir.join("cpu.png"));
    for (path, extra) in [
        (&default, &[][..]),
        (&cpu, &["--device", "cpu", "--dtype", "f32"][..]),
    ] {
        let run = generate(path, extra);
        assert!(
            run.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    assert_eq!(
        std::fs::read(&default).unwrap(),
        std::fs::read(&cpu).unwrap()
    );
}
