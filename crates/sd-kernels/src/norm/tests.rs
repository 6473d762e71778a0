use super::*;
use crate::cpu::with_level;
use crate::testutil::{assert_close, with_threads, Rng};

fn silu64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Random values around `offset` with spread `spread`.
fn data(seed: u64, len: usize, offset: f32, spread: f32) -> Vec<f32> {
    Rng::new(seed)
        .vec(len)
        .into_iter()
        .map(|v| offset + spread * v)
        .collect()
}

/// Plain two-pass GroupNorm in f64, with the magnitude of each output's terms.
#[allow(clippy::too_many_arguments)]
fn group_norm_reference(
    x: &[f32],
    batch: usize,
    channels: usize,
    spatial: usize,
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
) -> (Vec<f64>, Vec<f64>) {
    let per = channels / groups;
    let mut want = vec![0f64; x.len()];
    let mut scale = vec![0f64; x.len()];
    for b in 0..batch {
        for g in 0..groups {
            let start = (b * channels + g * per) * spatial;
            let group = &x[start..start + per * spatial];
            let n = group.len() as f64;
            let mean = group.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = group
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for (i, &v) in group.iter().enumerate() {
                let c = g * per + i / spatial;
                let y = (v as f64 - mean) * rstd * weight[c] as f64 + bias[c] as f64;
                let mag =
                    ((v as f64 - mean) * rstd * weight[c] as f64).abs() + bias[c].abs() as f64;
                want[start + i] = if silu { silu64(y) } else { y };
                scale[start + i] = mag;
            }
        }
    }
    (want, scale)
}

struct GroupCase {
    batch: usize,
    channels: usize,
    spatial: usize,
    groups: usize,
}

fn group_cases() -> Vec<GroupCase> {
    let mut cases = Vec::new();
    for (channels, groups) in [(6, 3), (9, 3), (7, 1), (64, 32), (96, 32), (3, 3)] {
        for spatial in [1, 7, 4096] {
            for batch in [1, 2] {
                cases.push(GroupCase {
                    batch,
                    channels,
                    spatial,
                    groups,
                });
            }
        }
    }
    // Groups of several chunks, channels longer than a chunk.
    cases.push(GroupCase {
        batch: 1,
        channels: 6,
        spatial: CHUNK + 37,
        groups: 3,
    });
    cases
}

fn run_group_norm(case: &GroupCase, x: &[f32], w: &[f32], b: &[f32], silu: bool) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.len()];
    group_norm(
        x,
        case.batch,
        case.channels,
        case.spatial,
        case.groups,
        w,
        b,
        1e-5,
        silu,
        &mut out,
    );
    out
}

#[test]
fn group_norm_matches_f64_reference_at_every_level() {
    for (n, case) in group_cases().iter().enumerate() {
        let len = case.batch * case.channels * case.spatial;
        let x = data(n as u64, len, 0.3, 2.0);
        let w = data(100 + n as u64, case.channels, 1.0, 0.5);
        let b = data(200 + n as u64, case.channels, 0.0, 0.5);
        for silu in [false, true] {
            let (want, scale) = group_norm_reference(
                &x,
                case.batch,
                case.channels,
                case.spatial,
                case.groups,
                &w,
                &b,
                1e-5,
                silu,
            );
            for level in Level::available() {
                let got = with_level(level, || run_group_norm(case, &x, &w, &b, silu));
                let what = format!(
                    "{level} group_norm {}x{}x{} / {} groups, silu {silu}",
                    case.batch, case.channels, case.spatial, case.groups
                );
                assert_close(&what, &got, &want, &scale, 1e-6);
            }
        }
    }
}

#[test]
fn group_norm_keeps_accuracy_for_a_large_mean_and_a_large_group() {
    // One group of 2^19 values with mean 1000 and spread 0.01: a naive f32 sum of squares
    // would lose all of the variance.
    let (channels, spatial) = (4, 1 << 17);
    let x = data(5, channels * spatial, 1000.0, 0.01);
    let w = vec![1.0; channels];
    let b = vec![0.0; channels];
    let (want, scale) = group_norm_reference(&x, 1, channels, spatial, 1, &w, &b, 1e-12, false);
    for level in Level::available() {
        let mut got = vec![0.0; x.len()];
        with_level(level, || {
            group_norm(&x, 1, channels, spatial, 1, &w, &b, 1e-12, false, &mut got)
        });
        assert_close(&format!("{level} large mean"), &got, &want, &scale, 1e-6);
    }
}

#[test]
fn group_norm_is_identical_for_any_thread_count_and_in_place() {
    let cases = [
        GroupCase {
            batch: 1,
            channels: 8,
            spatial: 3 * CHUNK + 5,
            groups: 2,
        },
        GroupCase {
            batch: 2,
            channels: 96,
            spatial: 33,
            groups: 32,
        },
        GroupCase {
            batch: 1,
            channels: 2,
            spatial: 1,
            groups: 1,
        },
    ];
    for (n, case) in cases.iter().enumerate() {
        let len = case.batch * case.channels * case.spatial;
        let x = data(40 + n as u64, len, -0.7, 3.0);
        let w = data(50 + n as u64, case.channels, 1.0, 0.5);
        let b = data(60 + n as u64, case.channels, 0.0, 0.5);
        for level in Level::available() {
            for silu in [false, true] {
                let run = |threads| {
                    with_threads(threads, || {
                        with_level(level, || run_group_norm(case, &x, &w, &b, silu))
                    })
                };
                let one = run(1);
                assert_eq!(one, run(2), "{level} 2 threads, case {n}");
                assert_eq!(one, run(3), "{level} 3 threads, case {n}");
                let mut data = x.clone();
                with_threads(3, || {
                    with_level(level, || {
                        group_norm_in_place(
                            &mut data,
                            case.batch,
                            case.channels,
                            case.spatial,
                            case.groups,
                            &w,
                            &b,
                            1e-5,
                            silu,
                        )
                    })
                });
                assert_eq!(one, data, "{level} in place, case {n}");
            }
        }
    }
}

#[test]
fn group_norm_of_nothing_and_bad_shapes() {
    let mut out: Vec<f32> = Vec::new();
    group_norm(&[], 0, 4, 9, 2, &[1.0; 4], &[0.0; 4], 1e-5, true, &mut out);
    group_norm(&[], 2, 4, 0, 2, &[1.0; 4], &[0.0; 4], 1e-5, true, &mut out);
    let bad = std::panic::catch_unwind(|| {
        let mut out = vec![0.0; 6];
        group_norm(
            &[0.0; 6], 1, 3, 2, 2, &[1.0; 3], &[0.0; 3], 1e-5, false, &mut out,
        );
    });
    assert!(bad.is_err(), "2 groups of 3 channels");
}

/// Plain two-pass LayerNorm in f64, with magnitudes.
fn layer_norm_reference(
    x: &[f32],
    dim: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) -> (Vec<f64>, Vec<f64>) {
    let mut want = Vec::with_capacity(x.len());
    let mut scale = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let n = dim as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let w = weight.map_or(1.0, |w| w[j] as f64);
            let b = bias.map_or(0.0, |b| b[j] as f64);
            let t = (v as f64 - mean) * rstd * w;
            want.push(t + b);
            scale.push(t.abs() + b.abs());
        }
    }
    (want, scale)
}

#[test]
fn layer_norm_matches_f64_reference_at_every_level_and_thread_count() {
    for (n, &(rows, dim)) in [(1, 1), (3, 7), (17, 320), (5, 769), (2, CHUNK + 9)]
        .iter()
        .enumerate()
    {
        let x = data(n as u64, rows * dim, 2.0, 1.5);
        let w = data(10 + n as u64, dim, 1.0, 0.5);
        let b = data(20 + n as u64, dim, 0.0, 0.5);
        for (weight, bias) in [
            (Some(&w[..]), Some(&b[..])),
            (Some(&w[..]), None),
            (None, Some(&b[..])),
            (None, None),
        ] {
            let (want, scale) = layer_norm_reference(&x, dim, weight, bias, 1e-5);
            for level in Level::available() {
                let run = |threads| {
                    with_threads(threads, || {
                        with_level(level, || {
                            let mut out = vec![f32::NAN; x.len()];
                            layer_norm(&x, rows, dim, weight, bias, 1e-5, &mut out);
                            out
                        })
                    })
                };
                let got = run(1);
                let what = format!(
                    "{level} layer_norm {rows}x{dim} weight {} bias {}",
                    weight.is_some(),
                    bias.is_some()
                );
                assert_close(&what, &got, &want, &scale, 1e-6);
                assert_eq!(got, run(2), "{what}: 2 threads");
                assert_eq!(got, run(3), "{what}: 3 threads");
                let mut data = x.clone();
                with_level(level, || {
                    layer_norm_in_place(&mut data, rows, dim, weight, bias, 1e-5)
                });
                assert_eq!(got, data, "{what}: in place");
            }
        }
    }
}

#[test]
fn layer_norm_keeps_accuracy_for_a_large_mean() {
    let (rows, dim) = (3, 1280);
    let x = data(8, rows * dim, -5000.0, 0.5);
    let (want, scale) = layer_norm_reference(&x, dim, None, None, 1e-5);
    for level in Level::available() {
        let mut got = vec![0.0; x.len()];
        with_level(level, || {
            layer_norm(&x, rows, dim, None, None, 1e-5, &mut got)
        });
        assert_close(&format!("{level} large mean"), &got, &want, &scale, 1e-6);
    }
}

#[test]
fn geglu_is_a_times_the_levels_gelu_of_b() {
    for &(rows, inner) in &[(1, 1), (5, 7), (3, 33), (9, 640), (2, CHUNK + 3)] {
        let projected = data(rows as u64 * 31 + inner as u64, rows * 2 * inner, 0.0, 4.0);
        for level in Level::available() {
            // The expected value: the level's own gelu_erf times a (one rounding each).
            let mut want = Vec::with_capacity(rows * inner);
            for row in projected.chunks(2 * inner) {
                let (a, b) = row.split_at(inner);
                let mut g = b.to_vec();
                Activation::GeluErf.apply_serial(level, &mut g);
                want.extend(a.iter().zip(&g).map(|(&a, &g)| a * g));
            }
            for threads in [1, 2, 3] {
                let got = with_threads(threads, || {
                    with_level(level, || {
                        let mut out = vec![f32::NAN; rows * inner];
                        geglu(&projected, rows, inner, &mut out);
                        out
                    })
                });
                assert_eq!(got, want, "{level} geglu {rows}x{inner}, {threads} threads");
            }
        }
    }
}

#[test]
fn geglu_levels_agree() {
    // Every level against the generic one (math's tests bound gelu_erf to f64 itself).
    let (rows, inner) = (4, 37);
    let projected = data(77, rows * 2 * inner, 0.0, 5.0);
    let mut want = Vec::new();
    let mut scale = Vec::new();
    for row in projected.chunks(2 * inner) {
        let (a, b) = row.split_at(inner);
        for (&a, &b) in a.iter().zip(b) {
            let g = Activation::GeluErf.scalar(b) as f64;
            want.push(a as f64 * g);
            scale.push((a as f64 * g).abs());
        }
    }
    for level in Level::available() {
        let mut out = vec![0.0; rows * inner];
        with_level(level, || geglu(&projected, rows, inner, &mut out));
        assert_close(&format!("{level} geglu"), &out, &want, &scale, 1e-6);
    }
}

#[test]
fn group_norm_at_avx512_equals_avx2_to_the_bit() {
    let levels = Level::available();
    if !levels.contains(&Level::Avx512) {
        eprintln!("skipped: this CPU has no AVX-512F");
        return;
    }
    for (n, case) in group_cases().iter().enumerate() {
        let len = case.batch * case.channels * case.spatial;
        let x = data(300 + n as u64, len, 0.3, 2.0);
        let w = data(400 + n as u64, case.channels, 1.0, 0.5);
        let b = data(500 + n as u64, case.channels, 0.0, 0.5);
        for silu in [false, true] {
            let bits = |level| {
                with_level(level, || run_group_norm(case, &x, &w, &b, silu))
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                bits(Level::Avx512),
                bits(Level::Avx2),
                "group_norm {}x{}x{} / {} groups, silu {silu}",
                case.batch,
                case.channels,
                case.spatial,
                case.groups
            );
        }
    }
}
