//! Tokenizer speed: a 300-word prompt with a warm merge cache, against the first call of the
//! process (cold cache, every word through BPE) measured in the same run.
//!
//! Run: `cargo bench -p stable-diffusion --bench tokenizer`.

use std::time::Instant;

use stable_diffusion::tokenizer::ClipTokenizer;

fn main() {
    let words = [
        "masterpiece",
        "portrait",
        "of",
        "a",
        "knight",
        "in",
        "golden",
        "armor,",
        "dramatic",
        "lighting",
        "(detailed:1.2)",
        "cinematic",
        "4k",
        "by",
        "greg",
        "rutkowski",
    ];
    let prompt = words
        .iter()
        .cycle()
        .take(300)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let runs = 200u32;

    let tokenizer = ClipTokenizer::embedded().expect("embedded vocabulary");
    // The first call finds the merge cache empty: every word goes through BPE.
    let start = Instant::now();
    std::hint::black_box(tokenizer.encode(&prompt).unwrap());
    let cold = start.elapsed();
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(tokenizer.encode(std::hint::black_box(&prompt)).unwrap());
    }
    let warm = start.elapsed() / runs;
    println!(
        "300-word prompt: warm cache {warm:?} per encode, cold cache {cold:?} ({:.1}x)",
        cold.as_secs_f64() / warm.as_secs_f64()
    );
}
