use super::*;
use crate::cpu::{with_level, Level};
use crate::testutil::{assert_close, with_threads, Rng};

/// Plain `softmax(Q·Kᵀ·scale)·V` in f64, and for each output the magnitude it was made from
/// (the probability-weighted |v|, grown by the magnitude the scores were summed from).
fn reference(
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    causal: bool,
) -> (Vec<f64>, Vec<f64>) {
    let AttentionShape {
        batch,
        heads,
        seq_q,
        seq_kv,
        head_dim: d,
    } = shape;
    let ld = heads * d;
    let mut want = vec![0f64; shape.q_len()];
    let mut magnitude = vec![0f64; shape.q_len()];
    let scale = scale as f64;
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq_q {
                let qi = &q[(b * seq_q + i) * ld + h * d..][..d];
                let seen = if causal { seq_kv.min(i + 1) } else { seq_kv };
                let mut scores = Vec::with_capacity(seen);
                let mut score_size = Vec::with_capacity(seen);
                for j in 0..seen {
                    let kj = &k[(b * seq_kv + j) * ld + h * d..][..d];
                    let dot: f64 = qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let size: f64 = qi.iter().zip(kj).map(|(&a, &b)| (a * b).abs() as f64).sum();
                    scores.push(dot * scale);
                    score_size.push(size * scale.abs());
                }
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|&s| (s - max).exp()).collect();
                let total: f64 = p.iter().sum();
                let spread: f64 = p.iter().zip(&score_size).map(|(p, s)| p * s).sum::<f64>();
                let at = (b * seq_q + i) * ld + h * d;
                for (j, pj) in p.iter().enumerate() {
                    let vj = &v[(b * seq_kv + j) * ld + h * d..][..d];
                    for dim in 0..d {
                        want[at + dim] += pj / total * vj[dim] as f64;
                        magnitude[at + dim] += pj / total * (vj[dim] as f64).abs();
                    }
                }
                for dim in 0..d {
                    magnitude[at + dim] *= 1.0 + spread / total;
                }
            }
        }
    }
    (want, magnitude)
}

fn shape(
    batch: usize,
    heads: usize,
    seq_q: usize,
    seq_kv: usize,
    head_dim: usize,
) -> AttentionShape {
    AttentionShape {
        batch,
        heads,
        seq_q,
        seq_kv,
        head_dim,
    }
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn inputs(shape: AttentionShape, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    Inputs {
        q: rng.vec(shape.q_len()),
        k: rng.vec(shape.kv_len()),
        v: rng.vec(shape.kv_len()),
    }
}

/// Odd shapes: seq 1, heads 1, batch 1 and 2, head dims that are not multiples of 16 (40!)
/// or deeper than one GEMM block, key counts that are no multiple of any block, several
/// query blocks.
const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 1),
    (1, 1, 1, 5, 3),
    (2, 3, 17, 33, 40),
    (1, 2, 50, 77, 64),
    (2, 1, 33, 400, 7),
    (1, 1, 300, 130, 160),
    (1, 1, 40, 70, 300),
    (1, 1, 45, 333, 300),
    (1, 1, 70, 700, 160),
    (1, 1, 500, 500, 40),
    (1, 2, 77, 77, 64),
    (1, 1, 20, 100, 512),
    (1, 1, 30, 50, 16),
    (2, 2, 50, 30, 80),
];

fn check(level: Level, s: AttentionShape, seed: u64, scale: f32, causal: bool, data: &Inputs) {
    let (want, magnitude) = reference(s, &data.q, &data.k, &data.v, scale, causal);
    let mut out = vec![f32::NAN; s.q_len()];
    with_level(level, || {
        attention(s, &data.q, &data.k, &data.v, scale, causal, &mut out)
    });
    let what = format!("{level} {s:?} scale {scale} causal {causal} seed {seed}");
    assert_close(&what, &out, &want, &magnitude, 2e-6);
}

#[test]
fn the_shapes_cover_partial_and_several_key_blocks() {
    let several = |&&(_, _, _, skv, d): &&(usize, usize, usize, usize, usize)| {
        skv > kv_block(d) && skv % kv_block(d) != 0
    };
    assert!(SHAPES.iter().filter(several).count() >= 3);
    assert!(SHAPES.iter().any(|&(_, _, _, _, d)| d > KC));
    assert!(SHAPES.iter().any(|&(_, _, sq, _, _)| sq > 2 * NR));
}

#[test]
fn every_level_matches_the_plain_softmax_on_odd_shapes() {
    for &level in &Level::available() {
        for (seed, &(b, h, sq, skv, d)) in SHAPES.iter().enumerate() {
            let s = shape(b, h, sq, skv, d);
            let data = inputs(s, seed as u64);
            let scale = 1.0 / (d as f32).sqrt();
            for causal in [false, true] {
                check(level, s, seed as u64, scale, causal, &data);
            }
        }
    }
}

#[test]
fn growing_scores_rescale_the_running_sum() {
    // Keys grow along the sequence, so each later key block raises the running max a lot
    // (scores up to ~±60): the accumulator is rescaled many times.
    for &level in &Level::available() {
        for (seed, &(b, h, sq, skv, d)) in [(1, 2, 70, 1000, 40), (1, 1, 33, 300, 160)]
            .iter()
            .enumerate()
        {
            let s = shape(b, h, sq, skv, d);
            let mut data = inputs(s, 100 + seed as u64);
            let ld = h * d;
            for (i, x) in data.k.iter_mut().enumerate() {
                *x *= 1.0 + (i / ld) as f32 / 50.0;
            }
            for causal in [false, true] {
                check(
                    level,
                    s,
                    seed as u64,
                    3.0 / (d as f32).sqrt(),
                    causal,
                    &data,
                );
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count_or_the_query_block() {
    let s = shape(2, 3, 200, 450, 40);
    let data = inputs(s, 5);
    let scale = 0.15;
    for &level in &Level::available() {
        for causal in [false, true] {
            let run_with = |threads: usize| {
                with_threads(threads, || {
                    let mut out = vec![f32::NAN; s.q_len()];
                    with_level(level, || {
                        attention(s, &data.q, &data.k, &data.v, scale, causal, &mut out)
                    });
                    out
                })
            };
            let one = run_with(1);
            for threads in [2, 3] {
                assert!(
                    one.iter()
                        .zip(&run_with(threads))
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{level} causal {causal}: {threads} threads differ from 1"
                );
            }
            for q_block in [NR, 48, 128, MAX_Q_BLOCK] {
                let mut out = vec![f32::NAN; s.q_len()];
                run(
                    level,
                    Precision::F32,
                    s,
                    &data.q,
                    &data.k,
                    &data.v,
                    scale,
                    causal,
                    &mut out,
                    q_block,
                );
                assert!(
                    one.iter()
                        .zip(&out)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{level} causal {causal}: query block {q_block} differs"
                );
            }
        }
    }
}

#[test]
fn empty_shapes_write_nothing() {
    for s in [
        shape(0, 2, 3, 4, 5),
        shape(1, 1, 0, 4, 5),
        shape(1, 1, 3, 4, 0),
    ] {
        let data = inputs(s, 1);
        let mut out = vec![0f32; s.q_len()];
        attention(s, &data.q, &data.k, &data.v, 1.0, false, &mut out);
    }
}

#[test]
fn query_blocks_stay_multiples_of_the_panel() {
    for (sq, threads) in [(1, 1), (77, 2), (4096, 2), (4096, 64), (300, 3)] {
        let block = query_block(shape(1, 1, sq, 10, 40), threads);
        assert!(
            block.is_multiple_of(NR) && (NR..=MAX_Q_BLOCK).contains(&block),
            "{block}"
        );
    }
}

#[test]
fn amx_tiles_match_the_plain_softmax_within_bf16_rounding() {
    if !Level::Amx.is_available() {
        eprintln!("no AMX on this CPU: skipped");
        return;
    }
    for (seed, &(b, h, sq, skv, d)) in SHAPES.iter().enumerate() {
        let s = shape(b, h, sq, skv, d);
        let data = inputs(s, seed as u64);
        let scale = 1.0 / (d as f32).sqrt();
        for causal in [false, true] {
            let (want, magnitude) = reference(s, &data.q, &data.k, &data.v, scale, causal);
            let what = format!("amx {s:?} causal {causal}");
            let run_with = |threads: usize, q_block: Option<usize>| {
                with_threads(threads, || {
                    let mut out = vec![f32::NAN; s.q_len()];
                    let (q, k, v) = (&data.q, &data.k, &data.v);
                    match q_block {
                        None => attention_with(
                            Level::Amx,
                            Precision::Bf16,
                            s,
                            q,
                            k,
                            v,
                            scale,
                            causal,
                            &mut out,
                        ),
                        Some(block) => run(
                            Level::Amx,
                            Precision::Bf16,
                            s,
                            q,
                            k,
                            v,
                            scale,
                            causal,
                            &mut out,
                            block,
                        ),
                    }
                    out
                })
            };
            let out = run_with(2, None);
            // bf16 keeps 8 significant bits: scores and values err by ~2^-9 each.
            assert_close(&what, &out, &want, &magnitude, 1.5e-2);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&run_with(1, None)), "{what}: 1 thread");
            assert_eq!(
                bits(&out),
                bits(&run_with(2, Some(NR))),
                "{what}: query block"
            );
        }
    }
    // The tiles really round: on a shape with many keys the result differs from f32's.
    let s = shape(1, 1, 40, 300, 40);
    let data = inputs(s, 9);
    let mut tiles = vec![0f32; s.q_len()];
    let mut plain = vec![0f32; s.q_len()];
    for (precision, out) in [(Precision::Bf16, &mut tiles), (Precision::F32, &mut plain)] {
        attention_with(
            Level::Amx,
            precision,
            s,
            &data.q,
            &data.k,
            &data.v,
            0.2,
            false,
            out,
        );
    }
    assert_ne!(tiles, plain);
}
