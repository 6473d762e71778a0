//! The cheap stages of a generation, which must stay negligible beside the models:
//! - tokenizer: a 300-word prompt with a warm merge cache, against the first call of the
//!   process (cold cache, every word through BPE) measured in the same run;
//! - noise: one SD 1.5 latent draw (1x4x64x64) from the torch-exact CPU generator, against
//!   filling the same buffer with zeros (the cost of the memory alone).
//!
//! Run: `cargo bench -p stable-diffusion --bench basics`.

use std::time::Instant;

use stable_diffusion::rng::TorchCpuRng;
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

    let mut rng = TorchCpuRng::new(1234);
    let mut buffer = vec![0f32; 4 * 64 * 64];
    let start = Instant::now();
    for _ in 0..runs {
        rng.fill_normal(std::hint::black_box(&mut buffer));
    }
    let noise = start.elapsed() / runs;
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(&mut buffer).fill(0.0);
    }
    let zeros = start.elapsed() / runs;
    println!(
        "1x4x64x64 noise: {noise:?} per draw, zero fill {zeros:?} ({:.0}x)",
        noise.as_secs_f64() / zeros.as_secs_f64().max(1e-12)
    );
}
