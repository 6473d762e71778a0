//! End-to-end parity of the k-diffusion (A1111) samplers through `sd generate`: every case of
//! fixtures/pipeline_samplers/ (made by tools/reference/parts/pipeline_samplers.py) is run with
//! its A1111 sampler name and compared with the reference PNG; plus `sd samplers` and the
//! errors for nonsense combinations.

mod common;

use std::path::Path;
use std::process::Output;

use common::{
    assert_images_match, assert_success, case_args, fixtures, read_cases, rgb, scratch, sd_in,
    tiny_model,
};

fn sd(args: &[&str]) -> Output {
    sd_in(&fixtures().join("pipeline_samplers"), args)
}

#[test]
fn a1111_samplers_match_k_diffusion_end_to_end() {
    let (count, max, mean) = run_png_cases("cases.json", 25);
    println!("{count} cases; worst channel max |diff| {max} /255, worst mean {mean:.4}");
}

/// Runs every case of a cases file through `sd generate` and compares the PNGs; returns the
/// worst (max, mean) channel difference.
fn run_png_cases(file: &str, min_cases: usize) -> (usize, f64, f64) {
    let cases = read_cases(&fixtures().join("pipeline_samplers").join(file));
    assert!(cases.len() >= min_cases, "only {} cases", cases.len());
    let dir = scratch(file.trim_end_matches(".json"));
    let model = tiny_model();
    let mut worst = (0.0f64, 0.0f64);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let output = dir.join(format!("{name}.png"));
        let args = case_args(&model, &output, case);
        assert_success(&sd_in(&fixtures().join("pipeline_samplers"), &args), name);
        let image = case["images"][0].as_str().unwrap();
        let (max, mean) = assert_images_match(
            name,
            &output,
            &fixtures().join("pipeline_samplers").join(image),
        );
        worst = (worst.0.max(max), worst.1.max(mean));
    }
    (cases.len(), worst.0, worst.1)
}

#[test]
fn diffusers_flavor_samplers_match_diffusers_pipelines_end_to_end() {
    let (count, max, mean) = run_png_cases("diffusers_cases.json", 10);
    println!("{count} cases; worst channel max |diff| {max} /255, worst mean {mean:.4}");
}

#[test]
fn a1111_infotext_reruns_with_k_diffusion_and_ours_round_trips() {
    let dir = scratch("infotext");
    let model = tiny_model();
    let model = model.to_str().unwrap();
    // A red circle, 64x64, 4 steps, seed 5, with `extra` arguments, written to `output`.
    let generate = |output: &Path, extra: &[&str]| {
        let mut args = vec!["generate", "--model", model, "--prompt", "a red circle"];
        args.extend([
            "--width", "64", "--height", "64", "--steps", "4", "--seed", "5",
        ]);
        args.extend(extra);
        args.extend(["--output", output.to_str().unwrap()]);
        assert_success(&sd(&args), &format!("{extra:?}"));
    };
    let info =
        |path: &Path| String::from_utf8(sd(&["info", path.to_str().unwrap()]).stdout).unwrap();

    // A PNG made with A1111's name carries no flavor key and re-runs identically.
    let first = dir.join("first.png");
    generate(
        &first,
        &[
            "--sampler",
            "DPM++ 2M SDE",
            "--schedule",
            "Karras",
            "--s-noise",
            "0.9",
        ],
    );
    let text = info(&first);
    assert!(
        text.contains("Sampler: DPM++ 2M SDE, Schedule type: Karras")
            && text.contains("Sigma noise: 0.9")
            && !text.contains("Sampler flavor"),
        "{text}"
    );
    let second = dir.join("second.png");
    let rerun = sd(&[
        "generate",
        "--model",
        model,
        "--from-png",
        first.to_str().unwrap(),
        "--output",
        second.to_str().unwrap(),
    ]);
    assert_success(&rerun, "sd --from-png");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );

    // Our name with the default schedule runs diffusers and says so.
    let third = dir.join("third.png");
    generate(&third, &["--sampler", "euler"]);
    let text = info(&third);
    assert!(text.contains("Sampler flavor: diffusers"), "{text}");
    // The same request in the k-diffusion flavor gives a different image.
    let fourth = dir.join("fourth.png");
    generate(&fourth, &["--sampler", "Euler"]);
    assert_ne!(rgb(&third), rgb(&fourth));
}

#[test]
fn samplers_command_lists_every_sampler_and_schedule() {
    let out = sd(&["samplers"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "euler",
        "euler_a",
        "heun",
        "dpm2",
        "dpm2_a",
        "lms",
        "dpmpp_2m",
        "dpmpp_2s_a",
        "dpmpp_sde",
        "dpmpp_2m_sde",
        "dpmpp_3m_sde",
        "ipndm",
        "ddim",
        "ddim_cfgpp",
        "DDIM CFG++",
        "pndm",
        "ddpm",
        "lcm",
        "tcd",
        "unipc",
        "deis",
        "dpmpp_2s",
        "UniPC",
        "HeunDiscreteScheduler",
        "LCMScheduler",
        "DPM++ 2M SDE",
        "karras",
        "exponential",
        "sgm_uniform",
        "simple",
        "ddim_uniform",
        "beta",
        "kl_optimal",
        "align_your_steps",
        "normal",
        "polyexponential",
        "Automatic",
    ] {
        assert!(text.contains(name), "`sd samplers` lacks {name}:\n{text}");
    }
}

#[test]
fn nonsense_combinations_and_unknown_names_are_explained() {
    let model = tiny_model();
    let model = model.to_str().unwrap();
    let base = [
        "generate", "--model", model, "--prompt", "x", "--steps", "2",
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        let out = sd(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--sampler", "ddim", "--schedule", "karras"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ddim") && err.contains("karras") && err.contains("euler"),
        "{err}"
    );
    let (code, err) = run(&["--sampler", "DDIM CFG++", "--schedule", "karras"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("DDIM CFG++") && err.contains("own integer timesteps"),
        "{err}"
    );
    let (code, err) = run(&["--sampler", "ddim_cfgpp", "--sampler-flavor", "diffusers"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no diffusers scheduler class"), "{err}");
    let (code, err) = run(&["--sampler", "eulr"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("eulr") && err.contains("dpmpp_2m_sde") && err.contains("DPM++ 2M"),
        "{err}"
    );
    let (code, err) = run(&["--schedule", "exponentiall"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("kl_optimal"), "{err}");
    let (code, err) = run(&["--sampler", "ipndm", "--sampler-flavor", "diffusers"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("k-diffusion"), "{err}");
    // TCD walks its own timesteps: a sigma schedule is explained, not ignored (LCM takes one
    // in A1111's flavor, which the end-to-end cases check).
    let (code, err) = run(&["--sampler", "tcd", "--schedule", "karras"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tcd") && err.contains("karras") && err.contains("own timesteps"),
        "{err}"
    );
    // Zero terminal SNR exists only where diffusers' class has it.
    let (code, err) = run(&["--sampler", "heun", "--rescale-zero-snr"]);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("zero terminal SNR") && err.contains("unipc"),
        "{err}"
    );
    let (code, err) = run(&["--sampler", "euler", "--sigmas", "1,2,0"]);
    assert_eq!(code.map(|c| c != 0), Some(true), "{err}");
    assert!(err.contains("sigma"), "{err}");
}

#[test]
fn a_closed_stdout_ends_the_listing_quietly() {
    // The reader closes its end before `sd` writes: every write fails with EPIPE.
    let script = format!(
        "(sleep 0.3; '{}' samplers) | (exec 0<&-; sleep 1); echo \"sd=${{PIPESTATUS[0]}}\"",
        env!("CARGO_BIN_EXE_sd")
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("sd=0"), "exit status: {stdout} {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
