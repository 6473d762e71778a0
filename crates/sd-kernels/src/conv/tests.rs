use super::*;
use crate::cpu::{with_level, Level};
use crate::testutil::{assert_close, round_bf16, with_threads, Rng};

struct Case {
    batch: usize,
    geometry: ConvGeometry,
    height: usize,
    width: usize,
}

/// The plain convolution in f64 plus bias, batch bias and residual, with magnitudes.
fn reference(
    case: &Case,
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    batch_bias: &[f32],
    residual: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let g = case.geometry;
    let (oh, ow) = g.output_size(case.height, case.width).unwrap();
    let (h, w, k) = (case.height, case.width, g.kernel);
    let mut want = vec![0f64; case.batch * g.out_channels * oh * ow];
    let mut scale = vec![0f64; want.len()];
    for b in 0..case.batch {
        for co in 0..g.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let at = ((b * g.out_channels + co) * oh + oy) * ow + ox;
                    let extra = bias[co] + batch_bias[b * g.out_channels + co] + residual[at];
                    let (mut sum, mut mag) = (extra as f64, extra.abs() as f64);
                    for ci in 0..g.in_channels {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                                let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                    continue;
                                }
                                let x = input[((b * g.in_channels + ci) * h + iy as usize) * w
                                    + ix as usize];
                                let wt = weight[((co * g.in_channels + ci) * k + ky) * k + kx];
                                let t = x as f64 * wt as f64;
                                sum += t;
                                mag += t.abs();
                            }
                        }
                    }
                    want[at] = sum;
                    scale[at] = mag;
                }
            }
        }
    }
    (want, scale)
}

fn cases() -> Vec<Case> {
    let geometry = |in_channels, out_channels, kernel, stride, padding| ConvGeometry {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
    };
    vec![
        Case {
            batch: 1,
            geometry: geometry(3, 5, 3, 1, 1),
            height: 7,
            width: 9,
        },
        Case {
            batch: 2,
            geometry: geometry(17, 19, 3, 1, 1),
            height: 11,
            width: 13,
        },
        Case {
            batch: 2,
            geometry: geometry(8, 33, 1, 1, 0),
            height: 5,
            width: 7,
        },
        Case {
            batch: 1,
            geometry: geometry(6, 7, 3, 2, 1),
            height: 9,
            width: 8,
        },
        Case {
            batch: 2,
            geometry: geometry(5, 4, 3, 2, 0),
            height: 10,
            width: 7,
        },
        Case {
            batch: 1,
            geometry: geometry(30, 40, 3, 1, 1),
            height: 1,
            width: 1,
        },
        Case {
            batch: 2,
            geometry: geometry(32, 20, 3, 1, 1),
            height: 16,
            width: 16,
        },
        Case {
            batch: 1,
            geometry: geometry(4, 3, 3, 1, 0),
            height: 3,
            width: 3,
        },
        // Rows wider than a panel: interior panels (straight copies) beside edge panels, and
        // a depth over one block (360 > KC), so a block starts inside a channel's taps.
        Case {
            batch: 2,
            geometry: geometry(40, 9, 3, 1, 1),
            height: 5,
            width: 37,
        },
        Case {
            batch: 1,
            geometry: geometry(7, 5, 3, 1, 0),
            height: 4,
            width: 40,
        },
        Case {
            batch: 2,
            geometry: geometry(6, 11, 1, 1, 0),
            height: 3,
            width: 34,
        },
        // More output channels than one task's rows (several row blocks of the weights).
        Case {
            batch: 2,
            geometry: geometry(3, 400, 3, 1, 1),
            height: 5,
            width: 6,
        },
    ]
}

/// `packed` applied to `input` at `level` without bias, batch bias or residual.
fn plain(packed: &PackedConv, case: &Case, input: &[f32], level: Level) -> Vec<f32> {
    let g = case.geometry;
    let (oh, ow) = g.output_size(case.height, case.width).unwrap();
    let mut out = vec![f32::NAN; case.batch * g.out_channels * oh * ow];
    with_level(level, || {
        packed.forward(
            input,
            case.batch,
            case.height,
            case.width,
            None,
            None,
            None,
            &mut out,
        )
    });
    out
}

#[test]
fn every_level_matches_the_plain_convolution() {
    for &level in &Level::available() {
        for (seed, case) in cases().iter().enumerate() {
            let g = case.geometry;
            let (oh, ow) = g.output_size(case.height, case.width).unwrap();
            let out_len = case.batch * g.out_channels * oh * ow;
            let mut rng = Rng::new(seed as u64 + 100);
            let input = rng.vec(case.batch * g.in_channels * case.height * case.width);
            let weight = rng.vec(g.out_channels * g.depth());
            let bias = rng.vec(g.out_channels);
            let batch_bias = rng.vec(case.batch * g.out_channels);
            let residual = rng.vec(out_len);
            let packed = PackedConv::new(&weight, g, Storage::F32);
            let (want, scale) = reference(case, &input, &weight, &bias, &batch_bias, &residual);
            let mut out = vec![f32::NAN; out_len];
            with_level(level, || {
                packed.forward(
                    &input,
                    case.batch,
                    case.height,
                    case.width,
                    Some(&bias),
                    Some(&batch_bias),
                    Some(&residual),
                    &mut out,
                )
            });
            assert_close(
                &format!("{level} case {seed} {g:?}"),
                &out,
                &want,
                &scale,
                1e-6,
            );
            // Without the extras.
            let zeros_c = vec![0f32; g.out_channels];
            let zeros_b = vec![0f32; case.batch * g.out_channels];
            let zeros_r = vec![0f32; out_len];
            let (want, scale) = reference(case, &input, &weight, &zeros_c, &zeros_b, &zeros_r);
            let out = plain(&packed, case, &input, level);
            assert_close(
                &format!("{level} case {seed} plain"),
                &out,
                &want,
                &scale,
                1e-6,
            );
        }
    }
}

#[test]
fn bf16_weights_convolve_as_their_rounded_values() {
    let case = &cases()[1];
    let g = case.geometry;
    let (oh, ow) = g.output_size(case.height, case.width).unwrap();
    let mut rng = Rng::new(5);
    let input = rng.vec(case.batch * g.in_channels * case.height * case.width);
    let weight = rng.vec(g.out_channels * g.depth());
    let rounded: Vec<f32> = weight.iter().map(|&w| round_bf16(w)).collect();
    let zeros = vec![0f32; case.batch * g.out_channels * oh * ow];
    let (want, scale) = reference(case, &input, &rounded, &zeros, &zeros, &zeros);
    // Panels, packed on a level without tiles, at every level.
    let packed = with_level(Level::Generic, || {
        PackedConv::new(&weight, g, Storage::Bf16)
    });
    for &level in &Level::available() {
        let out = plain(&packed, case, &input, level);
        assert_close(&format!("{level} bf16"), &out, &want, &scale, 1e-6);
    }
}

#[test]
fn amx_tiles_convolve_the_rounded_input_with_the_rounded_weights() {
    if !Level::Amx.is_available() {
        eprintln!("no AMX on this CPU: skipped");
        return;
    }
    for (seed, case) in cases().iter().enumerate() {
        let g = case.geometry;
        let (oh, ow) = g.output_size(case.height, case.width).unwrap();
        let mut rng = Rng::new(50 + seed as u64);
        let input = rng.vec(case.batch * g.in_channels * case.height * case.width);
        let weight = rng.vec(g.out_channels * g.depth());
        let round = |v: &[f32]| v.iter().map(|&x| round_bf16(x)).collect::<Vec<f32>>();
        let zeros = vec![0f32; case.batch * g.out_channels * oh * ow];
        let (want, scale) = reference(
            case,
            &round(&input),
            &round(&weight),
            &zeros,
            &zeros,
            &zeros,
        );
        let packed = with_level(Level::Amx, || PackedConv::new(&weight, g, Storage::Bf16));
        let out = plain(&packed, case, &input, Level::Amx);
        assert_close(&format!("amx case {seed}"), &out, &want, &scale, 1e-5);
        let one = with_threads(1, || plain(&packed, case, &input, Level::Amx));
        assert_eq!(out, one, "amx case {seed}: 1 thread differs");
        // The same tiles read on a level without them: the rounded weights, f32 input.
        let (want, scale) = reference(case, &input, &round(&weight), &zeros, &zeros, &zeros);
        let out = plain(&packed, case, &input, Level::Avx2);
        assert_close(
            &format!("tiles at avx2, case {seed}"),
            &out,
            &want,
            &scale,
            1e-6,
        );
    }
}

#[test]
fn convolution_does_not_depend_on_the_thread_count() {
    let case = &cases()[6];
    let g = case.geometry;
    let mut rng = Rng::new(9);
    let input = rng.vec(case.batch * g.in_channels * case.height * case.width);
    let weight = rng.vec(g.out_channels * g.depth());
    let packed = PackedConv::new(&weight, g, Storage::F32);
    for &level in &Level::available() {
        let run = |threads| with_threads(threads, || plain(&packed, case, &input, level));
        assert_eq!(run(1), run(2), "{level}");
    }
}

#[test]
fn output_size_refuses_kernels_larger_than_the_padded_input() {
    let g = ConvGeometry {
        in_channels: 1,
        out_channels: 1,
        kernel: 3,
        stride: 1,
        padding: 0,
    };
    assert_eq!(g.output_size(2, 5), None);
    assert_eq!(g.output_size(3, 5), Some((1, 3)));
}

#[test]
fn convolution_into_a_fresh_buffer_equals_the_one_into_a_given_buffer() {
    for (seed, case) in cases().iter().enumerate() {
        let g = case.geometry;
        let (oh, ow) = g.output_size(case.height, case.width).unwrap();
        let mut rng = Rng::new(70 + seed as u64);
        let input = rng.vec(case.batch * g.in_channels * case.height * case.width);
        let packed = PackedConv::new(&rng.vec(g.out_channels * g.depth()), g, Storage::F32);
        let bias = rng.vec(g.out_channels);
        let batch_bias = rng.vec(case.batch * g.out_channels);
        let residual = rng.vec(case.batch * g.out_channels * oh * ow);
        let (b, bb, r) = (Some(&bias[..]), Some(&batch_bias[..]), Some(&residual[..]));
        let mut given = vec![f32::NAN; residual.len()];
        let (h, w) = (case.height, case.width);
        packed.forward(&input, case.batch, h, w, b, bb, r, &mut given);
        let fresh = packed.forward_to_vec(&input, case.batch, h, w, b, bb, r);
        assert_eq!(fresh, given, "case {seed}");
    }
}

#[test]
fn channels_last_1x1_convolution_is_the_transposed_map_bit_for_bit() {
    // (batch, in, out, height, width): panels inside one row, across rows (narrow images),
    // a partial last panel, more than one block of output channels.
    let cases = [
        (1, 1, 1, 1, 1),
        (2, 3, 5, 4, 4),
        (1, 20, 33, 5, 7),
        (2, 64, 17, 8, 8),
        (2, 40, 400, 9, 16),
    ];
    for (seed, &(batch, cin, cout, h, w)) in cases.iter().enumerate() {
        let g = ConvGeometry {
            in_channels: cin,
            out_channels: cout,
            kernel: 1,
            stride: 1,
            padding: 0,
        };
        let mut rng = Rng::new(90 + seed as u64);
        let input = rng.vec(batch * cin * h * w);
        let weight = rng.vec(cout * cin);
        let bias = rng.vec(cout);
        for &level in &Level::available() {
            for storage in [Storage::F32, Storage::Bf16] {
                let packed = with_level(level, || PackedConv::new(&weight, g, storage));
                let (map, sequence) = with_level(level, || {
                    let map = packed.forward_to_vec(&input, batch, h, w, Some(&bias), None, None);
                    let sequence =
                        packed.forward_channels_last_to_vec(&input, batch, h, w, Some(&bias));
                    (map, sequence)
                });
                let pixels = h * w;
                let want: Vec<u32> = (0..batch * pixels * cout)
                    .map(|at| {
                        let (row, channel) = (at / cout, at % cout);
                        let (b, pixel) = (row / pixels, row % pixels);
                        map[(b * cout + channel) * pixels + pixel].to_bits()
                    })
                    .collect();
                let got: Vec<u32> = sequence.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want, "{level} {storage:?} case {seed}");
            }
        }
    }
}
