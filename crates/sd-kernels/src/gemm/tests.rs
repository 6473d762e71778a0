use super::*;
use crate::cpu::{with_level, Level};
use crate::testutil::{assert_close, round_bf16, with_threads, Rng};

/// The plain product in f64, and the magnitude each element was summed from.
fn reference(a: &[f32], b_kxn: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0f64; m * n];
    let mut scale = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let t = a[i * k + p] as f64 * b_kxn[p * n + j] as f64;
                want[i * n + j] += t;
                scale[i * n + j] += t.abs();
            }
        }
    }
    (want, scale)
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (2, 3, 5),
    (7, 17, 15),
    (6, 16, 16),
    (13, 255, 33),
    (97, 257, 17),
    (100, 513, 300),
    (200, 40, 600),
];

#[test]
fn every_level_matches_the_plain_product_on_odd_shapes() {
    for &level in &Level::available() {
        for (seed, &(m, k, n)) in SHAPES.iter().enumerate() {
            let mut rng = Rng::new(seed as u64);
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            let (want, scale) = reference(&a, &b, m, k, n);
            let packed = PackedB::from_kxn(&b, k, n, n, Storage::F32);
            let mut out = vec![f32::NAN; m * n];
            with_level(level, || matmul(&a, m, &packed, None, None, &mut out));
            assert_close(&format!("{level} {m}x{k}x{n}"), &out, &want, &scale, 1e-6);
        }
    }
}

#[test]
fn transposed_source_bias_and_residual_are_applied() {
    let (m, k, n) = (29, 70, 45);
    let mut rng = Rng::new(7);
    let a = rng.vec(m * k);
    let w = rng.vec(n * k); // (out, in)
    let bias = rng.vec(n);
    let residual = rng.vec(m * n);
    let b_kxn: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
    let (mut want, mut scale) = reference(&a, &b_kxn, m, k, n);
    for i in 0..m * n {
        want[i] += bias[i % n] as f64 + residual[i] as f64;
        scale[i] += (bias[i % n].abs() + residual[i].abs()) as f64;
    }
    let packed = PackedB::from_nxk(&w, k, n, k, Storage::F32);
    for &level in &Level::available() {
        let mut out = vec![0f32; m * n];
        with_level(level, || {
            matmul(&a, m, &packed, Some(&bias), Some(&residual), &mut out)
        });
        assert_close(&format!("{level}"), &out, &want, &scale, 1e-6);
    }
}

#[test]
fn bf16_storage_multiplies_the_rounded_weights() {
    let (m, k, n) = (37, 300, 50);
    let mut rng = Rng::new(11);
    let a = rng.vec(m * k);
    let b = rng.vec(k * n);
    let rounded: Vec<f32> = b.iter().map(|&x| round_bf16(x)).collect();
    let (want, scale) = reference(&a, &rounded, m, k, n);
    let packed = PackedB::from_kxn(&b, k, n, n, Storage::Bf16);
    assert_eq!(packed.bytes(), k * n.div_ceil(NR) * NR * 2);
    assert_eq!(packed.get(299, 49), rounded[299 * n + 49]);
    for &level in &Level::available() {
        let mut out = vec![0f32; m * n];
        with_level(level, || matmul(&a, m, &packed, None, None, &mut out));
        assert_close(&format!("{level} bf16"), &out, &want, &scale, 1e-6);
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (m, k, n) = (301, 600, 530);
    let mut rng = Rng::new(3);
    let a = rng.vec(m * k);
    let b = rng.vec(k * n);
    let packed = PackedB::from_kxn(&b, k, n, n, Storage::F32);
    for &level in &Level::available() {
        let run = |threads| {
            with_threads(threads, || {
                with_level(level, || {
                    let mut out = vec![0f32; m * n];
                    matmul(&a, m, &packed, None, None, &mut out);
                    out
                })
            })
        };
        assert_eq!(run(1), run(2), "{level}");
        assert_eq!(run(1), run(3), "{level}");
    }
}

#[test]
fn zero_depth_gives_bias_only() {
    let packed = PackedB::from_kxn::<f32>(&[], 0, 3, 3, Storage::F32);
    let mut out = vec![9f32; 6];
    matmul(&[], 2, &packed, Some(&[1.0, 2.0, 3.0]), None, &mut out);
    assert_eq!(out, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
}
