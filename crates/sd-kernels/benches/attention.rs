//! Times flash attention on Stable Diffusion's largest attention shapes next to a naive
//! version that materializes the score matrix (GEMM, row softmax, GEMM), and a plain GEMM for
//! the micro-kernel's speed.
//!
//! `cargo bench -p sd-kernels --bench attention`; `SD_CPU_KERNELS` picks the level,
//! `RAYON_NUM_THREADS` the threads.

use std::time::Instant;

use rayon::prelude::*;
use sd_kernels::attention::{attention, attention_with, AttentionShape, Precision};
use sd_kernels::cpu;
use sd_kernels::gemm::{self, PackedB, RowMajor, RowMajorSink, Storage};

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Seconds the process's live threads have run on a CPU, summed from
/// `/proc/self/task/*/schedstat` (Linux, nanoseconds); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// The best wall-clock and CPU times of some runs, in seconds.
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: Option<f64>,
}

impl Timing {
    /// `flops` per wall second and per CPU second (a busy core's rate: meaningful on a
    /// machine that other work shares), as text.
    fn rate(&self, flops: f64) -> String {
        let per_cpu = match self.cpu {
            Some(cpu) if cpu > 0.0 => format!("{:6.1}", flops / cpu / 1e9),
            _ => "     -".into(),
        };
        format!(
            "{:7.1} ms {:6.1} GFLOP/s ({per_cpu} per core)",
            self.wall * 1e3,
            flops / self.wall / 1e9
        )
    }
}

/// The best of `runs` timings of `f`, after one warm-up call.
fn best_of(runs: usize, mut f: impl FnMut()) -> Timing {
    f();
    let mut best = Timing {
        wall: f64::INFINITY,
        cpu: None,
    };
    for _ in 0..runs {
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        f();
        let wall = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
        best.wall = best.wall.min(wall);
        best.cpu = match (best.cpu, cpu) {
            (Some(b), Some(c)) => Some(b.min(c)),
            (b, c) => c.or(b),
        };
    }
    best
}

/// Attention the way a tensor library runs it: per (batch, head) the whole score matrix
/// from a GEMM, a softmax over each row, and a second GEMM.
fn naive(shape: AttentionShape, q: &[f32], k: &[f32], v: &[f32], scale: f32, out: &mut [f32]) {
    let AttentionShape {
        batch,
        heads,
        seq_q,
        seq_kv,
        head_dim: d,
    } = shape;
    let ld = heads * d;
    let mut scores = vec![0f32; seq_q * seq_kv];
    for b in 0..batch {
        for h in 0..heads {
            let kv = b * seq_kv * ld + h * d;
            let keys = PackedB::from_nxk(&k[kv..], d, seq_kv, ld, Storage::F32);
            let queries = RowMajor {
                data: &q[b * seq_q * ld + h * d..],
                rows: seq_q,
                cols: d,
                ld,
            };
            gemm::gemm(
                &queries,
                &keys,
                &RowMajorSink::new(&mut scores, seq_kv, None, None),
            );
            scores.par_chunks_mut(seq_kv).for_each(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in row.iter_mut() {
                    *x = ((*x - max) * scale).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            });
            let values = PackedB::from_kxn(&v[kv..], seq_kv, d, ld, Storage::F32);
            let probabilities = RowMajor {
                data: &scores,
                rows: seq_q,
                cols: seq_kv,
                ld: seq_kv,
            };
            let o = b * seq_q * ld + h * d;
            let end = o + (seq_q - 1) * ld + d;
            gemm::gemm(
                &probabilities,
                &values,
                &RowMajorSink::new(&mut out[o..end], ld, None, None),
            );
        }
    }
}

fn bench(name: &str, shape: AttentionShape, runs: usize, with_naive: bool) {
    let q = values(shape.q_len(), 1);
    let k = values(shape.kv_len(), 2);
    let v = values(shape.kv_len(), 3);
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let mut out = vec![0f32; shape.q_len()];
    let flash = best_of(runs, || {
        attention(shape, &q, &k, &v, scale, false, &mut out)
    });
    let flops = shape.flops();
    // A bf16 model's attention (on the tiles where the level is amx).
    let mut rounded = vec![0f32; shape.q_len()];
    let bf16 = best_of(runs, || {
        let level = cpu::level();
        attention_with(
            level,
            Precision::Bf16,
            shape,
            &q,
            &k,
            &v,
            scale,
            false,
            &mut rounded,
        )
    });
    println!("{name:<32} bf16  {}", bf16.rate(flops));
    if !with_naive {
        println!("{name:<32} flash {}", flash.rate(flops));
        return;
    }
    let mut reference = vec![0f32; shape.q_len()];
    let plain = best_of(runs, || naive(shape, &q, &k, &v, scale, &mut reference));
    let diff = out
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "{name:<32} flash {} | naive {} | {:.2}x faster | max diff {diff:.1e}",
        flash.rate(flops),
        plain.rate(flops),
        plain.wall / flash.wall,
    );
}

fn bench_gemm(m: usize, k: usize, n: usize, runs: usize) {
    let a = values(m * k, 4);
    let b = PackedB::from_kxn(&values(k * n, 5), k, n, n, Storage::F32);
    let mut c = vec![0f32; m * n];
    let t = best_of(runs, || gemm::matmul(&a, m, &b, None, None, &mut c));
    let name = format!("gemm {m}x{k}x{n}");
    println!("{name:<32}       {}", t.rate(2.0 * (m * k * n) as f64));
}

fn main() {
    // `cargo bench` passes `--bench`; `--no-naive` skips the naive version; any other
    // argument keeps the cases whose name has it.
    let with_naive = !std::env::args().any(|a| a == "--no-naive");
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    println!(
        "level {}, {} threads",
        cpu::level(),
        rayon::current_num_threads()
    );
    if wanted("gemm") {
        bench_gemm(2048, 256, 2048, 3);
    }
    let shape = |batch, heads, seq, head_dim| AttentionShape {
        batch,
        heads,
        seq_q: seq,
        seq_kv: seq,
        head_dim,
    };
    let cases = [
        ("SD 1.5 self-attn 2x8x4096, d 40", shape(2, 8, 4096, 40)),
        ("SD 1.5 self-attn 2x8x1024, d 80", shape(2, 8, 1024, 80)),
        ("SDXL self-attn 2x10x4096, d 64", shape(2, 10, 4096, 64)),
        ("VAE mid-block 1x1x4096, d 512", shape(1, 1, 4096, 512)),
    ];
    for (name, shape) in cases {
        if wanted(name) {
            bench(name, shape, 2, with_naive);
        }
    }
}
