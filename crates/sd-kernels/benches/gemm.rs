//! Speed of the packed GEMM and the implicit-GEMM convolution on Stable Diffusion's shapes,
//! at the process's kernel level (`SD_CPU_KERNELS` picks another). Prints GFLOP/s.
//!
//! Run: `cargo bench -p sd-kernels --bench gemm` (`-- linear` or `-- conv` for one half,
//! `-- bf16` for bf16 weights only).

use std::time::Instant;

use sd_kernels::conv::{ConvGeometry, PackedConv};
use sd_kernels::gemm::{matmul, PackedB, Storage};

/// Median seconds of `runs` calls after one warm-up.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[runs / 2]
}

fn values(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wants = |what: &str| {
        !args.iter().any(|a| a == "linear" || a == "conv") || args.iter().any(|a| a == what)
    };
    let storages = if args.iter().any(|a| a == "bf16") {
        vec![Storage::Bf16]
    } else {
        vec![Storage::F32, Storage::Bf16]
    };
    println!(
        "level: {}, threads: {}",
        sd_kernels::cpu::level(),
        rayon::current_num_threads()
    );
    for storage in storages {
        // SD 1.5 at 512² (batch 2): attention projections, GEGLU, the middle level, the
        // context's keys; SDXL at 1024²: the 32x32 level's GEGLU and its output projection.
        let linear: &[(usize, usize, usize)] = &[
            (8192, 320, 320),
            (8192, 320, 2560),
            (2048, 1280, 1280),
            (154, 768, 768),
            (2048, 1280, 10240),
            (2048, 5120, 1280),
        ];
        for &(m, k, n) in linear.iter().filter(|_| wants("linear")) {
            let a = values(m * k);
            let b = PackedB::from_kxn(&values(k * n), k, n, n, storage);
            let mut out = vec![0f32; m * n];
            let seconds = time(5, || matmul(&a, m, &b, None, None, &mut out));
            let gflops = 2.0 * (m * k * n) as f64 / seconds / 1e9;
            println!(
                "gemm {m}x{k}x{n} {storage:?}: {:.2} ms, {gflops:.1} GFLOP/s",
                seconds * 1e3
            );
        }
        for &(batch, cin, cout, size, kernel) in [
            (2, 320, 320, 64, 3),
            (2, 1280, 1280, 8, 3),
            (2, 640, 320, 64, 1),
            (1, 128, 128, 512, 3),
            (1, 512, 512, 128, 3),
        ]
        .iter()
        .filter(|_| wants("conv"))
        {
            let geometry = ConvGeometry {
                in_channels: cin,
                out_channels: cout,
                kernel,
                stride: 1,
                padding: kernel / 2,
            };
            let conv = PackedConv::new(&values(cout * geometry.depth()), geometry, storage);
            let input = values(batch * cin * size * size);
            let mut out = vec![0f32; batch * cout * size * size];
            let runs = if size >= 512 { 1 } else { 5 };
            let seconds = time(runs, || {
                conv.forward(&input, batch, size, size, None, None, None, &mut out)
            });
            let flops = 2.0 * (batch * cout * size * size * geometry.depth()) as f64;
            println!(
                "conv {kernel}x{kernel} {cin}->{cout} {batch}x{size}x{size} {storage:?}: {:.2} ms, {:.1} GFLOP/s",
                seconds * 1e3,
                flops / seconds / 1e9
            );
        }
    }
}
