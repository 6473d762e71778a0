//! Parity of the torch-compatible CPU random stream with `torch.randn` (fixtures/rng/).

mod common;

use candle_core::Device;
use stable_diffusion::rng::{NoiseSource, TorchCpuRng};

/// Counts the values of `actual` that differ from `expected` in any bit.
fn bit_differences(actual: &[f32], expected: &[f32]) -> usize {
    actual
        .iter()
        .zip(expected)
        .filter(|(a, e)| a.to_bits() != e.to_bits())
        .count()
}

#[test]
fn torch_cpu_rng_matches_torch_randn_bit_for_bit() {
    let cases = common::load_json("rng/cases.json");
    let tensors = common::load_tensors("rng/randn.safetensors");
    let cases = cases["cases"].as_array().expect("cases array");
    assert!(cases.len() >= 18, "too few cases: {}", cases.len());
    let mut checked = 0usize;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let seed = case["seed"].as_u64().unwrap();
        let mut rng = TorchCpuRng::new(seed);
        for (i, shape) in case["shapes"].as_array().unwrap().iter().enumerate() {
            let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
            let drawn = rng.randn(&shape, &Device::Cpu).unwrap();
            let expected = &tensors[&format!("{name}.{i}")];
            assert_eq!(drawn.dims(), expected.dims(), "{name} draw {i}");
            let drawn = drawn.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let differing = bit_differences(&drawn, &expected);
            assert_eq!(
                differing,
                0,
                "{name} (seed {seed}) draw {i} {shape:?}: {differing} of {} values differ",
                drawn.len()
            );
            checked += drawn.len();
        }
    }
    assert!(checked > 10_000);
}

#[test]
fn scalar_draws_reuse_the_cached_second_value_across_calls() {
    // torch's scalar path makes values in pairs: two single draws equal one draw of two.
    let mut singles = TorchCpuRng::new(99);
    let a = singles.randn_vec(1);
    let b = singles.randn_vec(1);
    let pair = TorchCpuRng::new(99).randn_vec(2);
    assert_eq!([a[0], b[0]], [pair[0], pair[1]]);
}
