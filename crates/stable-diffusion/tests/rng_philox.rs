//! `--rng cuda`: torch's CUDA Philox `randn` computed on the CPU. Expected values: real torch
//! on an NVIDIA H200 (fixtures/philox/cuda_randn.safetensors, 132 SMs × 2048 threads) and an
//! independent numpy transcription (tools/reference/parts/philox.py).

mod common;

use stable_diffusion::rng::{NoiseSource, PhiloxRng};

/// The H200 (and H100) that made the CUDA fixture: 132 SMs of 2048 resident threads.
const H200_THREADS: u64 = 132 * 2048;

/// Draws every case as the fixtures did: `randn(shape)` then `randn(7)` on one generator.
fn check_against(file: &str, tol: f32) -> f32 {
    let expected = common::load_tensors(file);
    let cases = common::load_json("philox/cases.json");
    let mut worst = 0f32;
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let seed: u64 = case["seed"].as_str().unwrap().parse().unwrap();
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let mut rng = PhiloxRng::with_max_threads(seed, H200_THREADS);
        let first = rng.randn_vec(shape.iter().product());
        let second = rng.randn_vec(7);
        let mut compare = |key: String, actual: &[f32]| {
            let want = expected[&key]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(want.len(), actual.len(), "{file} {key}: length");
            let diff = want
                .iter()
                .zip(actual)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff <= tol,
                "{file} {key} (seed {seed}): max |diff| {diff} > {tol}"
            );
            worst = worst.max(diff);
        };
        if expected.contains_key(&format!("case{i}.first")) {
            compare(format!("case{i}.first"), &first);
        } else {
            compare(format!("case{i}.first_head"), &first[..4096]);
            compare(format!("case{i}.first_tail"), &first[first.len() - 4096..]);
        }
        compare(format!("case{i}.second"), &second);
    }
    worst
}

#[test]
fn philox_randn_matches_the_numpy_transcription() {
    let worst = check_against("philox/transcription.safetensors", 5e-7);
    println!("max |rust - transcription| = {worst:e}");
}

#[test]
fn philox_randn_matches_torch_cuda_on_an_h200() {
    // Same words and layout; CUDA's logf/sinf/cosf are not correctly rounded, so values
    // differ from the correctly rounded ones by a few ulps (at most ~2e-6 seen).
    let worst = check_against("philox/cuda_randn.safetensors", 3e-6);
    println!("max |rust - torch cuda| = {worst:e}");
}

#[test]
fn philox_randn_gives_torchs_well_known_first_values() {
    // torch.randn(4, generator=torch.Generator("cuda").manual_seed(0), device="cuda")
    let values = PhiloxRng::new(0).randn_vec(4);
    let want = [-0.9247f32, -0.4253, -2.6438, 0.1452];
    for (v, w) in values.iter().zip(want) {
        assert!((v - w).abs() < 1e-4, "{values:?}");
    }
}

#[test]
fn philox_noise_source_fills_the_shape_and_continues_the_stream() {
    let mut rng = PhiloxRng::new(99);
    let a = rng.randn(&[1, 4, 8, 8], &candle_core::Device::Cpu).unwrap();
    assert_eq!(a.dims(), &[1, 4, 8, 8]);
    let b = rng.randn_vec(256);
    assert_ne!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b);
}
