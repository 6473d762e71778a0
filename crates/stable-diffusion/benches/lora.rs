//! Request-scoped LoRA, the two strategies of issue 16 side by side.
//!
//! 1. Merged weights (what the library does): a model + LoRA set is its own entry of the model
//!    store's cache. Runs a model without and with a LoRA through `pipeline::run` on one store,
//!    interleaved: seconds per step of each, the LoRA entry's load (merge) time, and the
//!    resident memory that holding the second entry adds. Default: the tiny SD 1.5 fixture with
//!    `fixtures/lora/kohya.safetensors`; `SD_BENCH_LORA_MODEL`, `SD_BENCH_LORA_FILE`,
//!    `SD_BENCH_LORA_SIZE` (64), `SD_BENCH_LORA_STEPS` (8) pick others.
//! 2. Low-rank deltas at run time (not built): every linear layer that a typical kohya LoRA
//!    patches in full-size SD 1.5's UNet (attention q/k/v/out, both feed-forward layers), at
//!    `SD_BENCH_LORA_PIXELS` (256) pixels a side, CFG batch 2, rank `SD_BENCH_LORA_RANK` (16),
//!    timed with the project's own `nn::Linear` as `x·Wᵀ` against `x·Wᵀ + (x·Aᵀ)·Bᵀ` (the
//!    low-rank product added in the base layer's pass, `forward_residual`), and the
//!    merge itself (`W + B·A`, packed again) per layer. Random weights: only shapes matter.
//!
//! Ratios are against the baseline measured in the same run; on a shared machine, absolute
//! times are approximate.
//!
//! Measured (Intel Xeon, 2 threads shared with builds, so ±30%): a merged LoRA entry steps as
//! fast as the base (tiny fixture: 0.994-0.996x) but is a whole second copy of the model
//! (1.01x the base entry's resident memory; f32 SD 1.5 would be ~4 GB, of which only 924 MiB
//! are layers the LoRA patches), and its first request pays a load. Run-time deltas at rank
//! 16 keep 23 MiB instead, but the patched layers take 1.18-1.37x as long (256² and 512²),
//! ~5-11% of a full step; merging all of them once costs 1.7-3.7 s, 1.6-10 UNet calls' worth
//! of that extra. So the library merges (speed first; the cache budget bounds the memory);
//! the next saving is a LoRA entry that shares the unpatched layers with the base entry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use stable_diffusion::candle_core::{DType, Device, Tensor};
use stable_diffusion::nn::{Linear, VarBuilder};
use stable_diffusion::pipeline::{
    run, Asset, Control, GenerationRequest, LoadOptions, ModelStore, NetworkRef,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's resident memory now, in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn merged_end_to_end() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"));
    let model = std::env::var_os("SD_BENCH_LORA_MODEL")
        .map_or_else(|| root.join("models/tiny-sd15"), PathBuf::from);
    let lora = std::env::var_os("SD_BENCH_LORA_FILE")
        .map_or_else(|| root.join("lora/kohya.safetensors"), PathBuf::from);
    let size: usize = env_or("SD_BENCH_LORA_SIZE", 64);
    let steps: usize = env_or("SD_BENCH_LORA_STEPS", 8);
    let mut store = ModelStore::new();
    let model_name = store.add(Asset::Checkpoint, &model);
    let lora_name = store.add(Asset::Lora, &lora);
    let plain = GenerationRequest {
        model: Some(model_name),
        prompt: "a red circle on a blue background".into(),
        negative_prompt: "blurry".into(),
        width: Some(size),
        height: Some(size),
        steps,
        seed: Some(1234),
        ..GenerationRequest::default()
    };
    let with_lora = GenerationRequest {
        loras: vec![NetworkRef {
            name: lora_name,
            weight: 0.8,
        }],
        ..plain.clone()
    };
    let options = LoadOptions::default();
    // (wall seconds, seconds per step) of one run.
    let go = |request: &GenerationRequest| {
        let start = Instant::now();
        let out = run(&store, &options, request, &mut |_| Control::Continue)
            .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
        (
            start.elapsed().as_secs_f64(),
            out.timings.seconds_per_step(),
        )
    };
    let before = rss_bytes();
    let (plain_first, _) = go(&plain);
    let with_base = rss_bytes();
    let (lora_first, _) = go(&with_lora);
    let with_both = rss_bytes();
    let (mut plain_steps, mut lora_steps) = (Vec::new(), Vec::new());
    let (mut plain_warm, mut lora_warm) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (wall, step) = go(&plain);
        plain_warm.push(wall);
        plain_steps.push(step);
        let (wall, step) = go(&with_lora);
        lora_warm.push(wall);
        lora_steps.push(step);
    }
    assert_eq!(store.loads(), 2, "the two entries are loaded once each");
    let (plain_step, lora_step) = (median(plain_steps), median(lora_steps));
    let (plain_warm, lora_warm) = (median(plain_warm), median(lora_warm));
    let base_entry = with_base.saturating_sub(before);
    let lora_entry = with_both.saturating_sub(with_base);
    println!(
        "lora merged, {} at {size}x{size}, {steps} steps, LoRA {} at 0.8 (median of 3, interleaved):",
        model.display(),
        lora.display()
    );
    println!(
        "  s/step: no LoRA {plain_step:.4}, merged LoRA {lora_step:.4} (ratio {:.3})",
        lora_step / plain_step
    );
    println!(
        "  first request (load + run): no LoRA {plain_first:.3} s, LoRA {lora_first:.3} s; \
         warm: {plain_warm:.3} s, {lora_warm:.3} s; the LoRA entry's load (the model read \
         again, the LoRA merged) = first - warm = {:.3} s ({:.2}x a warm run)",
        lora_first - lora_warm,
        (lora_first - lora_warm) / lora_warm
    );
    println!(
        "  resident memory: base entry +{:.1} MiB, LoRA entry +{:.1} MiB ({:.2}x the base entry)",
        mib(base_entry),
        mib(lora_entry),
        lora_entry as f64 / base_entry.max(1) as f64
    );
}

/// One linear layer of the UNet that a LoRA patches: rows of input, in and out features.
struct Layer {
    rows: usize,
    input: usize,
    output: usize,
}

/// The linear layers of full-size SD 1.5's UNet that kohya's default LoRA patches, for one
/// UNet call at `pixels`² with CFG (batch 2): per transformer block attn1 q/k/v/out, attn2
/// q/out on the image tokens and k/v on the 77 text tokens, ff.net.0 (GEGLU, 8c) and ff.net.2.
fn sd15_lora_layers(pixels: usize) -> Vec<Layer> {
    let latent = pixels / 8;
    // (tokens side, channels, transformer blocks): down 2+2+2, mid 1, up 3+3+3.
    let levels = [
        (latent, 320, 5),
        (latent / 2, 640, 5),
        (latent / 4, 1280, 5),
        (latent / 8, 1280, 1),
    ];
    let mut layers = Vec::new();
    for (side, c, blocks) in levels {
        let rows = 2 * side * side;
        for _ in 0..blocks {
            for (rows, input, output) in [
                (rows, c, c),
                (rows, c, c),
                (rows, c, c),
                (rows, c, c),
                (rows, c, c),
                (2 * 77, 768, c),
                (2 * 77, 768, c),
                (rows, c, c),
                (rows, c, 8 * c),
                (rows, 4 * c, c),
            ] {
                layers.push(Layer {
                    rows,
                    input,
                    output,
                });
            }
        }
    }
    layers
}

/// A pseudo-random tensor of `shape` with values in ±`scale` (a fixed xorshift stream).
fn random(shape: &[usize], scale: f32, state: &mut u64) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            ((*state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn linear(weight: Tensor) -> Linear {
    let (output, input) = weight.dims2().unwrap();
    let tensors = HashMap::from([("weight".to_string(), weight)]);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    Linear::new(vb, input, output, false).unwrap()
}

fn runtime_deltas_against_merged() {
    let pixels: usize = env_or("SD_BENCH_LORA_PIXELS", 256);
    let rank: usize = env_or("SD_BENCH_LORA_RANK", 16);
    let layers = sd15_lora_layers(pixels);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let (mut base_s, mut delta_s, mut merge_s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut weight_bytes, mut delta_bytes) = (0u64, 0u64);
    // The layers repeat: time each distinct shape once per repeat, weighted by its count.
    let mut shapes: Vec<((usize, usize, usize), usize)> = Vec::new();
    for l in &layers {
        let key = (l.rows, l.input, l.output);
        weight_bytes += (l.input * l.output * 4) as u64;
        delta_bytes += (rank * (l.input + l.output) * 4) as u64;
        match shapes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, count)) => *count += 1,
            None => shapes.push((key, 1)),
        }
    }
    for _ in 0..3 {
        let (mut base, mut delta, mut merge) = (0.0, 0.0, 0.0);
        for &((rows, input, output), count) in &shapes {
            let w = random(&[output, input], (3.0 / input as f32).sqrt(), &mut state);
            let down = random(&[rank, input], (3.0 / input as f32).sqrt(), &mut state);
            let up = random(&[output, rank], 0.01, &mut state);
            let x = random(&[rows, input], 1.0, &mut state);
            let base_layer = linear(w.clone());
            let (down_layer, up_layer) = (linear(down.clone()), linear(up.clone()));
            // Warm both paths once, then time them alternately.
            base_layer.forward(&x).unwrap();
            let start = Instant::now();
            let y = base_layer.forward(&x).unwrap();
            base += start.elapsed().as_secs_f64() * count as f64;
            assert_eq!(y.dims(), &[rows, output]);
            let start = Instant::now();
            // The low-rank product first, then added in the base layer's own pass.
            let low = up_layer.forward(&down_layer.forward(&x).unwrap()).unwrap();
            let patched = base_layer.forward_residual(&x, Some(&low)).unwrap();
            delta += start.elapsed().as_secs_f64() * count as f64;
            assert_eq!(patched.dims(), &[rows, output]);
            let start = Instant::now();
            let merged = (w + up.matmul(&down).unwrap()).unwrap();
            let _ = linear(merged);
            merge += start.elapsed().as_secs_f64() * count as f64;
        }
        base_s.push(base);
        delta_s.push(delta);
        merge_s.push(merge);
    }
    let (base, delta, merge) = (median(base_s), median(delta_s), median(merge_s));
    let share_at_512 = sd15_lora_layers(512)
        .iter()
        .map(|l| 2.0 * (l.rows * l.input * l.output) as f64)
        .sum::<f64>()
        / 1607e9;
    println!(
        "lora deltas at run time, SD 1.5 UNet shapes at {pixels}x{pixels} (CFG batch 2), rank {rank}, \
         {} patched linear layers (median of 3):",
        layers.len()
    );
    println!(
        "  per UNet call: the patched layers take {base:.3} s merged, {delta:.3} s with the deltas \
         (+{:.3} s, ratio {:.3}); at 512² these layers are {:.0}% of a UNet call's 1,607 GFLOP \
         (tools/bench), so a step there would take ~{:.2}x",
        delta - base,
        delta / base,
        100.0 * share_at_512,
        1.0 + share_at_512 * (delta / base - 1.0)
    );
    println!(
        "  merging once (W + B·A, packed again) for all of them: {merge:.3} s ({:.1} UNet calls' worth of the deltas' extra)",
        merge / (delta - base).max(1e-9)
    );
    println!(
        "  memory: merged copy of the patched weights {:.0} MiB (f32; a whole second model while the \
         store also holds the base entry), deltas {:.1} MiB ({:.4}x)",
        mib(weight_bytes),
        mib(delta_bytes),
        delta_bytes as f64 / weight_bytes as f64
    );
}

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if only.as_deref().is_none_or(|o| "merged".contains(o)) {
        merged_end_to_end();
    }
    if only.as_deref().is_none_or(|o| "deltas".contains(o)) {
        runtime_deltas_against_merged();
    }
}
