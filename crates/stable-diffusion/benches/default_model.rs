//! `sd generate` with no model: the built-in shapes model, 20 steps at 64x64 (Euler a, CFG 7.5),
//! load included, as a fresh `sd generate` pays it. Prints the median of 5 runs.

use std::time::Instant;

use stable_diffusion::pipeline::{Control, GenerationRequest, LoadOptions, StableDiffusion};

fn main() {
    let path = match stable_diffusion::default_model_path() {
        Ok(path) => path,
        Err(err) => {
            println!("default_model: skipped ({err})");
            return;
        }
    };
    let request = GenerationRequest {
        prompt: "a red circle on a blue background".to_string(),
        width: Some(64),
        height: Some(64),
        steps: 20,
        ..GenerationRequest::default()
    };
    let mut load_and_generate = Vec::new();
    let mut generate_only = Vec::new();
    for seed in 0..5 {
        let start = Instant::now();
        let model = StableDiffusion::load(&path, &LoadOptions::default()).expect("model loads");
        let loaded = start.elapsed();
        let request = GenerationRequest {
            seed: Some(seed),
            ..request.clone()
        };
        model
            .generate(&request, &Default::default(), &mut |_| Control::Continue)
            .expect("generation runs");
        load_and_generate.push(start.elapsed().as_secs_f64());
        generate_only.push((start.elapsed() - loaded).as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "default_model: load + 20 steps at 64x64: {:.3} s (generation alone {:.3} s), median of 5",
        median(&mut load_and_generate),
        median(&mut generate_only)
    );
}
