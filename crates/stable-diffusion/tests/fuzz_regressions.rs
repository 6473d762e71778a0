//! Replays the fuzz targets' inputs under plain `cargo test` (no nightly, no libFuzzer):
//! every file of `fuzz/corpus/<target>/` (the minimized corpora) and of
//! `fuzz/regressions/<target>/` (inputs that once crashed, hung or exhausted memory) goes
//! through the same entry point as the fuzz target (the target bodies are compiled in from
//! `fuzz/src/targets.rs`). Each must come back `Ok` or as a clean error; a regression must be
//! an error whose message names the problem (the table below).

#[allow(dead_code)]
#[path = "../../../fuzz/src/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

/// Each regression input (target, file name) and a piece of the error message it must give.
const REGRESSIONS: &[(&str, &str, &str)] = &[
    // Stack overflow: containers nested 5000 deep.
    ("pickle", "deep_nesting", "levels deep"),
    // Quadratic copying: a growing list memoized (PUT) after every append.
    ("pickle", "memo_copies", "copies more data"),
    // Stack overflow through a legacy `torch.save` file.
    ("ckpt", "deep_nesting_legacy", "levels deep"),
    // Stack overflow (and quadratic re-reading) in the schedule parser: 5000 nested brackets.
    ("prompt", "deep_brackets", "nest more than"),
    // A layer count that asked for a vector of 10^15 entries.
    (
        "unet_config",
        "huge_layers_per_block",
        "`layers_per_block` is",
    ),
    (
        "unet_config",
        "huge_transformer_depth",
        "`transformer_layers_per_block` is",
    ),
    // 100 levels: `1 << 99` overflowed in the downsample factor.
    ("vae_config", "many_blocks", "number of block_out_channels"),
    (
        "text_encoder_config",
        "huge_positions",
        "`max_position_embeddings` is",
    ),
    // Zero-byte factors whose product is 10^10 values (40 GB) before any shape check.
    ("lora", "loha_huge_second_half", "does not fit"),
    ("lora", "lokr_huge_factor", "do not make a LoKr factor"),
    // 10^12 training timesteps: a beta table of 4 TB allocated before anything refused it.
    (
        "scheduler_config",
        "huge_train_timesteps",
        "num_train_timesteps: 999999999991 is more than",
    ),
];

fn fuzz_dir() -> PathBuf {
    targets::repo_root().join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn target(name: &str) -> fn(&[u8]) -> targets::Outcome {
    targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target `{name}`"))
        .1
}

#[test]
fn every_regression_input_gives_the_error_that_names_its_problem() {
    let mut failures = Vec::new();
    let mut listed = 0;
    for (name, _) in targets::TARGETS {
        for file in files_in(&fuzz_dir().join("regressions").join(name)) {
            let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
            let Some((_, _, expected)) = REGRESSIONS
                .iter()
                .find(|(t, f, _)| t == name && *f == file_name)
            else {
                failures.push(format!("{name}/{file_name}: not listed in REGRESSIONS"));
                continue;
            };
            listed += 1;
            let bytes = std::fs::read(&file).unwrap();
            match target(name)(&bytes) {
                Err(message) if message.contains(expected) => {}
                Err(message) => failures.push(format!(
                    "{name}/{file_name}: error `{message}` does not mention `{expected}`"
                )),
                Ok(()) => failures.push(format!("{name}/{file_name}: accepted, expected an error")),
            }
        }
    }
    assert_eq!(
        listed,
        REGRESSIONS.len(),
        "a listed regression file is missing"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_corpus_input_is_accepted_or_refused_cleanly() {
    let mut count = 0;
    for (name, run) in targets::TARGETS {
        for file in files_in(&fuzz_dir().join("corpus").join(name)) {
            let bytes = std::fs::read(&file).unwrap();
            // A panic here fails the test and names the input.
            eprintln!("{name}: {}", file.display());
            let _ = run(&bytes);
            count += 1;
        }
    }
    assert!(count > 0, "no corpus found under {}", fuzz_dir().display());
}
