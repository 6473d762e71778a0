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
    // Panels (packed on a level without tiles) are read at every level as they are.
    let packed = with_level(Level::Generic, || {
        PackedB::from_kxn(&b, k, n, n, Storage::Bf16)
    });
    assert_eq!(packed.bytes(), k * n.div_ceil(NR) * NR * 2);
    assert_eq!(packed.get(299, 49), rounded[299 * n + 49]);
    for &level in &Level::available() {
        let mut out = vec![0f32; m * n];
        with_level(level, || matmul(&a, m, &packed, None, None, &mut out));
        assert_close(&format!("{level} bf16"), &out, &want, &scale, 1e-6);
    }
    // AMX tiles: read on other levels element by element (the same product), and on the
    // tiles with the activations rounded to bf16 too.
    if !Level::Amx.is_available() {
        return;
    }
    let tiled = with_level(Level::Amx, || PackedB::from_kxn(&b, k, n, n, Storage::Bf16));
    assert!(tiled.tiles().is_some());
    assert_eq!(tiled.get(299, 49), rounded[299 * n + 49]);
    for &level in &Level::available() {
        let mut out = vec![0f32; m * n];
        with_level(level, || matmul(&a, m, &tiled, None, None, &mut out));
        if level == Level::Amx {
            let a_rounded: Vec<f32> = a.iter().map(|&x| round_bf16(x)).collect();
            let (want, scale) = reference(&a_rounded, &rounded, m, k, n);
            assert_close("amx tiles", &out, &want, &scale, 1e-5);
        } else {
            assert_close(&format!("{level} tiles"), &out, &want, &scale, 1e-6);
        }
    }
}

/// The plain product of the bf16-rounded operands (what AMX tiles compute).
fn rounded_reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let a: Vec<f32> = a.iter().map(|&x| round_bf16(x)).collect();
    let b: Vec<f32> = b.iter().map(|&x| round_bf16(x)).collect();
    reference(&a, &b, m, k, n)
}

#[test]
fn amx_tiles_match_the_rounded_product_on_odd_shapes() {
    if !Level::Amx.is_available() {
        eprintln!("no AMX on this CPU: skipped");
        return;
    }
    // Edges of tiles (16), pairs (32), depth tiles (32), depth blocks (KC) and task blocks.
    let shapes = [
        (1, 1, 1),
        (7, 17, 15),
        (16, 32, 16),
        (33, 33, 33),
        (13, 255, 47),
        (97, 257, 17),
        (129, 513, 300),
        (300, 40, 600),
        (40, 2100, 50),
    ];
    for (seed, &(m, k, n)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(70 + seed as u64);
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let (want, scale) = rounded_reference(&a, &b, m, k, n);
        let what = format!("{m}x{k}x{n}");
        // Weights as B (linear layers).
        let packed = with_level(Level::Amx, || PackedB::from_kxn(&b, k, n, n, Storage::Bf16));
        let mut out = vec![f32::NAN; m * n];
        with_level(Level::Amx, || matmul(&a, m, &packed, None, None, &mut out));
        assert_close(&format!("B tiles {what}"), &out, &want, &scale, 1e-5);
        let one = with_threads(1, || {
            let mut out = vec![0f32; m * n];
            with_level(Level::Amx, || matmul(&a, m, &packed, None, None, &mut out));
            out
        });
        assert_eq!(out, one, "B tiles {what}: 1 thread differs");
        // Weights as A (convolutions), B gathered.
        let packed = with_level(Level::Amx, || PackedA::from_mxk(&a, m, k, k, Storage::Bf16));
        assert!(packed.tiles().is_some());
        let gathered = RowMajorB { data: &b, k, n };
        let mut out = vec![f32::NAN; m * n];
        let sink = RowMajorSink::new(&mut out, n, None, None);
        gemm_packed_a_at(Level::Amx, &packed, &gathered, &sink);
        assert_close(&format!("A tiles {what}"), &out, &want, &scale, 1e-5);
        let one = with_threads(1, || {
            let mut out = vec![0f32; m * n];
            let sink = RowMajorSink::new(&mut out, n, None, None);
            gemm_packed_a_at(Level::Amx, &packed, &gathered, &sink);
            out
        });
        assert_eq!(out, one, "A tiles {what}: 1 thread differs");
    }
}

#[test]
fn amx_conversions_match_their_plain_versions() {
    if !Level::Amx.is_available() {
        return;
    }
    for kc in [1, 2, 31, 32, 33, 100, KC] {
        let mut rng = Rng::new(kc as u64);
        let panel = rng.vec(kc * NR);
        let tiles = kc.div_ceil(amx::TILE_K) * amx::TILE_VALUES;
        let (mut fast, mut plain) = (vec![7u16; tiles], vec![9u16; tiles]);
        amx::panel_to_pairs_for_tests(&panel, kc, &mut fast);
        amx::panel_to_pairs_reference(&panel, kc, &mut plain);
        assert_eq!(fast, plain, "pairs, depth {kc}");
        for rows in [1, 5, 16, 17, 40] {
            let ld = kc + 3;
            let src = rng.vec(rows * ld);
            let len = rows.div_ceil(amx::PAIR) * amx::PAIR * kc.div_ceil(amx::TILE_K) * amx::TILE_K;
            let (mut fast, mut plain) = (vec![7u16; len], vec![9u16; len]);
            // SAFETY: AMX is available, which implies the conversion's features.
            unsafe { amx::rows_to_tiles_avx512(&src, ld, rows, kc, &mut fast) };
            amx::rows_to_tiles(&src, ld, rows, kc, &mut plain);
            assert_eq!(fast, plain, "rows {rows}, depth {kc}");
            // The trait's default (through f32 panels) agrees with the direct conversion.
            let a = RowMajor {
                data: &src,
                rows,
                cols: ld,
                ld,
            };
            let mut default = vec![5u16; len];
            PackADefault(&a).pack_bf16_tiles(0, rows, 0, kc, &mut default);
            assert_eq!(default, plain, "default, rows {rows}, depth {kc}");
        }
    }
}

/// A left operand that only implements [`PackA::pack`] (the trait's default conversion).
struct PackADefault<'a>(&'a RowMajor<'a>);

impl PackA for PackADefault<'_> {
    fn rows(&self) -> usize {
        self.0.rows()
    }

    fn depth(&self) -> usize {
        self.0.depth()
    }

    fn pack(&self, m0: usize, mc: usize, k0: usize, kc: usize, dst: &mut [f32]) {
        self.0.pack(m0, mc, k0, kc, dst)
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
    // bf16 packed on a level without tiles (the AMX tiles have their own test).
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
            let packed = with_level(Level::Generic, || PackedA::from_mxk(&a, m, k, k, storage));
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

#[test]
fn products_into_fresh_buffers_equal_the_ones_into_given_buffers() {
    for &level in &Level::available() {
        for (seed, &(m, k, n)) in SHAPES.iter().enumerate() {
            let mut rng = Rng::new(90 + seed as u64);
            let (a, b) = (rng.vec(m * k), rng.vec(k * n));
            let (bias, residual) = (rng.vec(n), rng.vec(m * n));
            let packed = PackedB::from_kxn(&b, k, n, n, Storage::F32);
            let mut given = vec![f32::NAN; m * n];
            let fresh = with_level(level, || {
                matmul(&a, m, &packed, Some(&bias), Some(&residual), &mut given);
                matmul_to_vec(&a, m, &packed, Some(&bias), Some(&residual))
            });
            assert_eq!(fresh, given, "{level} {m}x{k}x{n}");
        }
    }
    let empty = PackedB::from_kxn::<f32>(&[], 0, 3, 3, Storage::F32);
    assert_eq!(
        matmul_to_vec(&[], 2, &empty, Some(&[1.0, 2.0, 3.0]), None),
        [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    );
}

#[test]
fn fused_geglu_equals_the_product_then_geglu_bit_for_bit() {
    // (rows, depth, inner): inner in whole groups, odd rows and depths, more than one block
    // of C along both sides.
    for (seed, &(m, k, inner)) in [(1, 1, 8), (7, 17, 24), (33, 70, 40), (200, 257, 328)]
        .iter()
        .enumerate()
    {
        let n = 2 * inner;
        let mut rng = Rng::new(40 + seed as u64);
        let a = rng.vec(m * k);
        let w = rng.vec(n * k); // (out, in): values then gates
        let bias = rng.vec(n);
        let order = geglu_interleave(inner);
        let w_fused: Vec<f32> = order
            .iter()
            .flat_map(|&c| w[c * k..][..k].to_vec())
            .collect();
        let bias_fused: Vec<f32> = order.iter().map(|&c| bias[c]).collect();
        for &level in &Level::available() {
            for storage in [Storage::F32, Storage::Bf16] {
                let what = format!("{level} {storage:?} {m}x{k}x{inner}");
                let (plain, fused) = with_level(level, || {
                    let plain = PackedB::from_nxk(&w, k, n, k, storage);
                    let fused = PackedB::from_nxk(&w_fused, k, n, k, storage);
                    (plain, fused)
                });
                let (want, got) = with_level(level, || {
                    let projected = matmul_to_vec(&a, m, &plain, Some(&bias), None);
                    let mut want = vec![0f32; m * inner];
                    crate::norm::geglu(&projected, m, inner, &mut want);
                    (want, matmul_geglu_to_vec(&a, m, &fused, Some(&bias_fused)))
                });
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{what}");
            }
        }
    }
}

#[test]
fn geglu_interleave_puts_each_value_beside_its_gate() {
    let order = geglu_interleave(16);
    assert_eq!(order.len(), 32);
    assert_eq!(&order[..8], &[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(&order[8..16], &[16, 17, 18, 19, 20, 21, 22, 23]);
    assert_eq!(&order[16..24], &[8, 9, 10, 11, 12, 13, 14, 15]);
    assert_eq!(&order[24..], &[24, 25, 26, 27, 28, 29, 30, 31]);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..32).collect::<Vec<_>>());
}

#[test]
fn channels_first_product_is_the_transposed_product_bit_for_bit() {
    // (batch, pixels, depth, channels): images that end inside a block of C, several blocks.
    for (seed, &(batch, pixels, k, n)) in [
        (1, 1, 1, 1),
        (2, 7, 5, 3),
        (2, 64, 40, 33),
        (3, 100, 77, 520),
    ]
    .iter()
    .enumerate()
    {
        let m = batch * pixels;
        let mut rng = Rng::new(60 + seed as u64);
        let a = rng.vec(m * k);
        let w = rng.vec(n * k);
        let bias = rng.vec(n);
        let residual = rng.vec(m * n); // channels first
        let residual_rows: Vec<f32> = (0..m * n)
            .map(|at| {
                let (row, channel) = (at / n, at % n);
                let (b, pixel) = (row / pixels, row % pixels);
                residual[(b * n + channel) * pixels + pixel]
            })
            .collect();
        for &level in &Level::available() {
            for storage in [Storage::F32, Storage::Bf16] {
                let packed = with_level(level, || PackedB::from_nxk(&w, k, n, k, storage));
                let (rows, map) = with_level(level, || {
                    let rows = matmul_to_vec(&a, m, &packed, Some(&bias), Some(&residual_rows));
                    let map = matmul_channels_first_to_vec(
                        &a,
                        m,
                        &packed,
                        Some(&bias),
                        Some(&residual),
                        pixels,
                    );
                    (rows, map)
                });
                let want: Vec<u32> = (0..m * n)
                    .map(|at| {
                        let (bc, pixel) = (at / pixels, at % pixels);
                        let (b, channel) = (bc / n, bc % n);
                        rows[(b * pixels + pixel) * n + channel].to_bits()
                    })
                    .collect();
                let got: Vec<u32> = map.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want, "{level} {storage:?} case {seed}");
            }
        }
    }
}
