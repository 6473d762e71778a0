//! Crash safety of `sd generate`'s outputs: a run killed at any moment (SIGKILL, no chance to
//! clean up) leaves each output either as it was before or complete, never half a PNG, and a
//! batch whose outputs cannot all be written writes none of them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{assert_success, scratch, sd_command, tiny_model};

/// The arguments of a short batch-of-two run writing `out.png` in `dir` with `seed`.
fn run_args(dir: &Path, seed: u32) -> Vec<String> {
    let model = tiny_model();
    [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a red circle on a blue background",
        "--width",
        "192",
        "--height",
        "192",
        "--steps",
        "6",
        "--seed",
        &seed.to_string(),
        "--batch-size",
        "2",
        "--output",
        dir.join("out.png").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn outputs(dir: &Path) -> [Vec<u8>; 2] {
    ["out-0.png", "out-1.png"].map(|name| std::fs::read(dir.join(name)).unwrap())
}

/// The files in `dir` besides the two outputs.
fn others(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "out-0.png" && n != "out-1.png")
        .collect();
    names.sort();
    names
}

#[test]
fn sigkill_at_any_moment_leaves_the_old_or_the_complete_new_output() {
    let dir = scratch("kill-loop");
    // What the killed runs would write, made once in another folder.
    let reference = scratch("kill-loop-reference");
    let run = sd_command().args(run_args(&reference, 3)).output().unwrap();
    assert_success(&run, "reference run");
    let new = outputs(&reference);
    // The earlier outputs the killed runs must not lose.
    let run = sd_command().args(run_args(&dir, 4)).output().unwrap();
    assert_success(&run, "earlier run");
    let old = outputs(&dir);
    assert_ne!(old, new, "the two seeds must give different images");

    // Kill times spread over the whole run (loading, sampling, decoding, writing), with a
    // fixed jitter so the test is the same every time.
    let start = std::time::Instant::now();
    let probe = sd_command().args(run_args(&reference, 3)).output().unwrap();
    assert_success(&probe, "timing run");
    let full = start.elapsed().as_millis() as u64;
    let mut became_new = 0;
    for k in 0..14u64 {
        let delay = full * k / 12 + (k * 37) % 23;
        let mut child = sd_command()
            .args(run_args(&dir, 3))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sd starts");
        std::thread::sleep(Duration::from_millis(delay));
        let _ = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status();
        let _ = child.wait();
        for (i, (now, (before, after))) in
            outputs(&dir).iter().zip(old.iter().zip(&new)).enumerate()
        {
            assert!(
                now == before || now == after,
                "kill after {delay} ms: out-{i}.png is neither the earlier nor the complete new \
                 image ({} bytes)",
                now.len()
            );
            if now == after {
                became_new += 1;
            }
        }
        // Only hidden temporary files of the killed run may be left next to the outputs.
        for name in others(&dir) {
            assert!(
                name.starts_with(".out-") && name.ends_with(".tmp"),
                "kill after {delay} ms left {name}"
            );
        }
        if became_new == 2 {
            // Both were replaced: put the earlier ones back for the next kill.
            for (i, bytes) in old.iter().enumerate() {
                std::fs::write(dir.join(format!("out-{i}.png")), bytes).unwrap();
            }
            became_new = 0;
        }
    }
    // The next complete run writes the new images and clears what killed runs left.
    let run = sd_command().args(run_args(&dir, 3)).output().unwrap();
    assert_success(&run, "final run");
    assert_eq!(outputs(&dir), new);
    assert_eq!(others(&dir), Vec::<String>::new(), "temporary files left");
}

#[test]
fn a_batch_with_an_output_that_is_a_folder_writes_nothing() {
    let dir = scratch("batch-folder");
    std::fs::write(dir.join("out-0.png"), b"an earlier output").unwrap();
    std::fs::create_dir(dir.join("out-1.png")).unwrap();
    let run = sd_command().args(run_args(&dir, 3)).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("out-1.png") && stderr.contains("folder"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.join("out-0.png")).unwrap(),
        b"an earlier output"
    );
}
