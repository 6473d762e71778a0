//! Times GroupNorm+SiLU, LayerNorm and GEGLU on Stable Diffusion's shapes and prints the
//! bandwidth each reaches, next to a parallel copy of the same size (about what the memory
//! allows): `cargo bench -p sd-kernels --bench norms`. It runs the process's kernel level;
//! `SD_CPU_KERNELS=generic` (or another level) times that one instead.
//!
//! GB/s counts the bytes each kernel must move at least once: its input read and its output
//! written (GroupNorm also reads its input a second time, from cache when a group fits).

use std::hint::black_box;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use sd_kernels::cpu::{self, Level};
use sd_kernels::norm;

/// The best time of `f` over runs filling about `budget` after a warm-up (the warm-up alone
/// when it already took that long).
fn best(budget: Duration, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    f();
    let mut best = t.elapsed();
    if best >= budget {
        return best;
    }
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn report(what: &str, level: &str, bytes: usize, time: Duration) {
    println!(
        "{what:<34} {level:>8} {:>9.2} ms {:>7.1} GB/s",
        time.as_secs_f64() * 1e3,
        bytes as f64 / time.as_secs_f64() / 1e9
    );
}

/// Deterministic values in [-2, 2) (every page already touched, as all buffers here are).
fn values(len: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 22) as f32 - 2.0
        })
        .collect()
}

/// Times a parallel copy of `src` into `dst` (the bandwidth reference) and reports it.
fn copy(what: &str, budget: Duration, src: &[f32], dst: &mut [f32]) {
    let time = best(budget, || {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(o, i)| o.copy_from_slice(i));
        black_box(&*dst);
    });
    report(what, "-", 8 * dst.len(), time);
}

fn main() {
    let budget = Duration::from_millis(250);
    let level = cpu::level();
    println!(
        "threads {}, level {level} (available: {})",
        rayon::current_num_threads(),
        Level::available()
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (batch, channels, side) in [(2, 320, 64), (1, 128, 512)] {
        let spatial = side * side;
        let len = batch * channels * spatial;
        let x = values(len);
        let mut out = vec![1f32; len];
        let weight = values(channels);
        let bias = values(channels);
        let shape = format!("{batch}x{channels}x{side}x{side}");
        copy(&format!("copy {shape}"), budget, &x, &mut out);
        let time = best(budget, || {
            norm::group_norm(
                &x, batch, channels, spatial, 32, &weight, &bias, 1e-5, true, &mut out,
            );
            black_box(&out);
        });
        report(
            &format!("group_norm+silu {shape}"),
            level.name(),
            8 * len,
            time,
        );
    }

    let (rows, dim) = (2 * 4096, 320);
    let x = values(rows * dim);
    let mut out = vec![1f32; rows * dim];
    let weight = values(dim);
    let bias = values(dim);
    let time = best(budget, || {
        norm::layer_norm(&x, rows, dim, Some(&weight), Some(&bias), 1e-5, &mut out);
        black_box(&out);
    });
    report(
        &format!("layer_norm {rows}x{dim}"),
        level.name(),
        8 * rows * dim,
        time,
    );

    let (rows, inner) = (8192, 2560);
    let projected = values(rows * 2 * inner);
    let mut out = vec![1f32; rows * inner];
    copy(
        &format!("copy {rows}x{inner}"),
        budget,
        &projected[..out.len()],
        &mut out,
    );
    let time = best(budget, || {
        norm::geglu(&projected, rows, inner, &mut out);
        black_box(&out);
    });
    report(
        &format!("geglu {rows}x{inner}"),
        level.name(),
        12 * rows * inner,
        time,
    );
}
