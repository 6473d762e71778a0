//! `SD_CPU_KERNELS`: every kernel level this CPU has (and candle's ops) makes the same image
//! up to rounding, the same level makes it bit for bit whatever the thread count, and a level
//! the CPU lacks or an unknown name is refused with exit code 2.

mod common;

use common::{assert_images_match, assert_success, scratch, sd_command, tiny_model};

/// Runs `sd generate` on the tiny model with `SD_CPU_KERNELS=kernels` and `threads` threads,
/// writing `name.png` in `dir`; returns the path and stderr, or `None` when this CPU lacks
/// the level.
fn try_generate(
    dir: &std::path::Path,
    name: &str,
    kernels: &str,
    threads: &str,
) -> Option<(std::path::PathBuf, String)> {
    let output = dir.join(format!("{name}.png"));
    let run = sd_command()
        .env("SD_CPU_KERNELS", kernels)
        .env("RAYON_NUM_THREADS", threads)
        .args(["generate", "--model"])
        .arg(tiny_model())
        .args(["--prompt", "a red circle", "--steps", "4", "--seed", "11"])
        .args(["--width", "72", "--height", "56", "--output"])
        .arg(&output)
        .output()
        .expect("sd runs");
    if run.status.code() == Some(2) && String::from_utf8_lossy(&run.stderr).contains("lacks") {
        return None;
    }
    let stderr = assert_success(&run, &format!("SD_CPU_KERNELS={kernels}"));
    Some((output, stderr))
}

/// [`try_generate`] at a level every CPU has.
fn generate(
    dir: &std::path::Path,
    name: &str,
    kernels: &str,
    threads: &str,
) -> (std::path::PathBuf, String) {
    try_generate(dir, name, kernels, threads).expect("a level every CPU has")
}

#[test]
fn every_kernel_level_and_candle_make_the_same_image() {
    let dir = scratch("kernels");
    let (reference, stderr) = generate(&dir, "candle", "candle", "2");
    assert!(stderr.contains("CPU kernels: candle"), "{stderr}");
    let mut ran = 0;
    for level in ["generic", "avx2", "avx512"] {
        let Some((image, stderr)) = try_generate(&dir, level, level, "2") else {
            eprintln!("{level}: not available on this CPU");
            continue;
        };
        ran += 1;
        assert!(
            stderr.contains(&format!("CPU kernels: {level}")),
            "{stderr}"
        );
        assert_images_match(level, &image, &reference);
    }
    assert!(ran >= 1, "the generic level runs everywhere");
}

#[test]
fn a_kernel_level_gives_identical_bytes_for_one_and_two_threads() {
    let dir = scratch("kernel-threads");
    let (one, _) = generate(&dir, "one", "", "1");
    let (two, _) = generate(&dir, "two", "", "2");
    assert_eq!(
        std::fs::read(&one).unwrap(),
        std::fs::read(&two).unwrap(),
        "1 and 2 threads differ"
    );
}

#[test]
fn unknown_or_unavailable_kernel_levels_are_usage_errors() {
    let dir = scratch("kernel-bad");
    let output = dir.join("never.png");
    for bad in ["sse9", "AVX-1024"] {
        let run = sd_command()
            .env("SD_CPU_KERNELS", bad)
            .args(["generate", "--model"])
            .arg(tiny_model())
            .args(["--prompt", "x", "--steps", "1", "--output"])
            .arg(&output)
            .output()
            .expect("sd runs");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("SD_CPU_KERNELS") && stderr.contains("generic"),
            "{bad}: {stderr}"
        );
        assert!(!output.exists());
    }
}
