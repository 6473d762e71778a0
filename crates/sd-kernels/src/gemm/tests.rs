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

/// A row-major `K x N` matrix as a gathered right operand.
struct RowMajorB<'a> {
    data: &'a [f32],
    k: usize,
    n: usize,
}

impl PackB for RowMajorB<'_> {
    fn cols(&self) -> usize {
        self.n
    }

    fn depth(&self) -> usize {
        self.k
    }

    fn pack(&self, n0: usize, nc: usize, k0: usize, kc: usize, dst: &mut [f32]) {
        for (q, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
            for kk in 0..kc {
                for j in 0..NR {
                    let col = q * NR + j;
                    panel[kk * NR + j] = if col < nc {
                        self.data[(k0 + kk) * self.n + n0 + col]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

#[test]
fn packed_a_products_match_the_plain_product_at_every_level() {
    // Shapes past MC_A rows and NC_B columns, depths past KC, and odd edges.
    let shapes = [
        (1, 1, 1),
        (7, 17, 15),
        (13, 300, 33),
        (400, 40, 270),
        (50, 513, 600),
    ];
    for storage in [Storage::F32, Storage::Bf16] {
        for (seed, &(m, k, n)) in shapes.iter().enumerate() {
            let mut rng = Rng::new(40 + seed as u64);
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            let a_used: Vec<f32> = match storage {
                Storage::F32 => a.clone(),
                Storage::Bf16 => a.iter().map(|&x| round_bf16(x)).collect(),
            };
            let (want, scale) = reference(&a_used, &b, m, k, n);
            let packed = PackedA::from_mxk(&a, m, k, k, storage);
            assert_eq!(packed.get(m - 1, k - 1), a_used[m * k - 1]);
            let gathered = RowMajorB { data: &b, k, n };
            for &level in &Level::available() {
                let mut out = vec![f32::NAN; m * n];
                let sink = RowMajorSink::new(&mut out, n, None, None);
                gemm_packed_a_at(level, &packed, &gathered, &sink);
                assert_close(
                    &format!("{level} {storage:?} {m}x{k}x{n}"),
                    &out,
                    &want,
                    &scale,
                    1e-6,
                );
                let once = out.clone();
                let again = with_threads(1, || {
                    let mut out = vec![0f32; m * n];
                    let sink = RowMajorSink::new(&mut out, n, None, None);
                    gemm_packed_a_at(level, &packed, &gathered, &sink);
                    out
                });
                assert_eq!(once, again, "{level}: 1 thread differs");
            }
        }
    }
}
