//! End-to-end: `sd generate` on the tiny SD 1.5-shaped model must give diffusers' images.
//! The cases and the reference PNGs come from tools/reference/parts/pipeline.py.

mod common;

use std::process::{Command, Output};

use common::{
    assert_images_match, assert_success, case_args, fixtures, read_cases, scratch, sd_command,
    tiny_model,
};

fn sd(args: &[&str], threads: Option<usize>) -> Output {
    let mut command = sd_command();
    command.args(args).current_dir(fixtures().join("pipeline"));
    if let Some(threads) = threads {
        command.env("RAYON_NUM_THREADS", threads.to_string());
    }
    command.output().expect("sd runs")
}

#[test]
fn generate_matches_diffusers_for_every_reference_case() {
    let cases = read_cases(&fixtures().join("pipeline/cases.json"));
    let dir = scratch("parity");
    let model = tiny_model();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let output = dir.join(format!("{name}.png"));
        let args = case_args(&model, &output, case);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_success(&sd(&args, None), name);
        for image in case["images"].as_array().unwrap() {
            let image = image.as_str().unwrap();
            assert_images_match(
                &format!("{name}/{image}"),
                &dir.join(image),
                &fixtures().join("pipeline").join(image),
            );
        }
    }
}

#[test]
fn same_command_gives_byte_identical_pngs_with_any_thread_count() {
    let dir = scratch("determinism");
    let model = tiny_model();
    let mut outputs = Vec::new();
    for (run, threads) in [1, 1, 2].into_iter().enumerate() {
        let output = dir.join(format!("run{run}.png"));
        let result = sd(
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "a red circle on a blue background",
                "--width",
                "64",
                "--height",
                "64",
                "--steps",
                "4",
                "--sampler",
                "euler_a",
                "--seed",
                "99",
                "--output",
                output.to_str().unwrap(),
            ],
            Some(threads),
        );
        assert_success(&result, "sd");
        outputs.push(std::fs::read(&output).unwrap());
    }
    assert_eq!(outputs[0], outputs[1], "two runs with 1 thread differ");
    assert_eq!(outputs[0], outputs[2], "1 thread and 2 threads differ");
}

/// The summary line that scripts (tools/bench/peers.py) read: "text encoding X s, sampling N
/// steps in X s (Y s/step), VAE decoding Z s", then, where the OS tells it, ", peak RSS G GB",
/// then possibly more fields.
#[test]
fn summary_line_keeps_its_wording_and_reports_peak_rss() {
    let dir = scratch("summary");
    let model = tiny_model();
    let output = dir.join("summary.png");
    let run = sd(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a red circle on a blue background",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "3",
            "--sampler",
            "euler",
            "--seed",
            "5",
            "--output",
            output.to_str().unwrap(),
        ],
        None,
    );
    let stderr = assert_success(&run, "sd");
    let line = stderr
        .lines()
        .find(|line| line.starts_with("text encoding "))
        .unwrap_or_else(|| panic!("no summary line in {stderr:?}"));
    let number = |text: &str| -> f64 {
        text.parse()
            .unwrap_or_else(|_| panic!("{text:?} in {line:?} is not a number"))
    };
    let rest = line.strip_prefix("text encoding ").unwrap();
    let (encoding, rest) = rest.split_once(" s, sampling 3 steps in ").expect(line);
    let (sampling, rest) = rest.split_once(" s (").expect(line);
    let (per_step, rest) = rest.split_once(" s/step), VAE decoding ").expect(line);
    let (decoding, rest) = rest.split_once(" s").expect(line);
    for value in [encoding, sampling, per_step, decoding] {
        assert!(number(value) >= 0.0, "{line}");
    }
    // Later fields may follow (", CPU kernels: ..."): only the start of the rest is fixed.
    if cfg!(target_os = "linux") {
        let (rss, _) = rest
            .strip_prefix(", peak RSS ")
            .and_then(|rest| rest.split_once(" GB"))
            .unwrap_or_else(|| panic!("no peak RSS after the VAE time in {line:?}"));
        // The tiny model runs in well under 4 GB, and any process holds more than 1 MB.
        assert!((0.001..4.0).contains(&number(rss)), "{line}");
    } else {
        assert!(rest.is_empty() || rest.starts_with(", "), "{line}");
    }
}

#[test]
fn png_carries_a1111_parameters_and_from_png_reruns_them() {
    let dir = scratch("infotext");
    let model = tiny_model();
    let first = dir.join("first.png");
    let run = sd(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a red circle, on a blue background",
            "--negative-prompt",
            "blurry",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "3",
            "--cfg-scale",
            "7",
            "--sampler",
            "dpmpp_2m",
            "--schedule",
            "karras",
            "--seed",
            "1234",
            "--output",
            first.to_str().unwrap(),
        ],
        None,
    );
    assert_success(&run, "sd");
    let info = sd(&["info", first.to_str().unwrap()], None);
    assert!(info.status.success());
    let text = String::from_utf8(info.stdout).unwrap();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    assert_eq!(lines[0], "a red circle, on a blue background");
    assert_eq!(lines[1], "Negative prompt: blurry");
    assert!(
        lines[2].starts_with(
            "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, "
        ),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains("Model: tiny-sd15"), "{}", lines[2]);

    let second = dir.join("second.png");
    let rerun = sd(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--from-png",
            first.to_str().unwrap(),
            "--output",
            second.to_str().unwrap(),
        ],
        None,
    );
    assert_success(&rerun, "sd");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
}

#[test]
fn batch_writes_numbered_files_beside_the_output() {
    let dir = scratch("batch");
    let output = dir.join("cat.png");
    let run = sd(
        &[
            "generate",
            "--model",
            tiny_model().to_str().unwrap(),
            "--prompt",
            "a cat",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
            "--batch-size",
            "3",
            "--seed",
            "5",
            "--output",
            output.to_str().unwrap(),
        ],
        None,
    );
    assert_success(&run, "sd");
    assert!(
        !output.exists(),
        "a batch must not write the plain output path"
    );
    for i in 0..3 {
        assert!(
            dir.join(format!("cat-{i}.png")).is_file(),
            "cat-{i}.png missing"
        );
    }
}

/// Runs `sd generate` with `extra` arguments and expects exit code 2 with `needle` in stderr,
/// and no output file.
fn assert_usage_error(extra: &[&str], needle: &str) {
    let dir = scratch("usage");
    let output = dir.join("never.png");
    let model = tiny_model();
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
    ];
    if !extra.contains(&"--output") {
        args.extend_from_slice(&["--output", output.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    let run = sd(&args, None);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{extra:?}: stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "{extra:?}: stderr {stderr:?} lacks {needle:?}"
    );
    assert!(!output.exists());
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    assert_usage_error(&["--width", "65", "--height", "64"], "width");
    assert_usage_error(&["--width", "64", "--height", "100"], "height");
    assert_usage_error(&["--width", "8192", "--height", "64"], "limit");
    assert_usage_error(&["--steps", "0"], "steps");
    assert_usage_error(&["--strength", "0"], "strength");
    assert_usage_error(&["--strength", "1.5"], "strength");
    assert_usage_error(&["--sampler", "nope"], "euler_a");
    assert_usage_error(&["--schedule", "nope"], "karras");
    assert_usage_error(
        &["--init-image", "does-not-exist.png"],
        "does-not-exist.png",
    );
    assert_usage_error(&["--output", "/nonexistent-folder/x.png"], "output folder");
    let corrupt = scratch("corrupt").join("corrupt.png");
    std::fs::write(&corrupt, b"not a png at all").unwrap();
    assert_usage_error(&["--init-image", corrupt.to_str().unwrap()], "corrupt.png");
}

#[test]
fn tokenize_prints_untruncated_ids_as_json() {
    let run = sd(&["tokenize", "--prompt", "a photo of a cat"], None);
    assert!(run.status.success());
    let ids: Vec<u32> = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(ids.first(), Some(&49406));
    assert_eq!(ids.last(), Some(&49407));
    assert_eq!(ids.len(), 7);
    let long = "cat ".repeat(100);
    let run = sd(&["tokenize", "--prompt", &long], None);
    let ids: Vec<u32> = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(ids.len(), 102, "tokenize must not truncate");
    let with_model = sd(
        &[
            "tokenize",
            "--prompt",
            "a photo of a cat",
            "--model",
            tiny_model().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        with_model.stdout,
        sd(&["tokenize", "--prompt", "a photo of a cat"], None).stdout
    );
}

#[test]
fn ctrl_c_stops_the_run_and_leaves_no_png() {
    let dir = scratch("interrupt");
    let output = dir.join("interrupted.png");
    let mut child = sd_command()
        .args([
            "generate",
            "--model",
            tiny_model().to_str().unwrap(),
            "--prompt",
            "a long run",
            "--width",
            "256",
            "--height",
            "256",
            "--steps",
            "1000",
            "--seed",
            "1",
            "--output",
            output.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sd starts");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}
