//! Speed of the two heavy models on full-size SD 1.5 configs with random weights: one UNet
//! forward (batch 2, as classifier-free guidance runs it) and one VAE decode, at 256x256 and
//! 512x512; and the published TAESD's decode (what a full-size live preview costs) as a share
//! of both. Prints seconds and GFLOP/s, and the ratio to a plain f32 GEMM measured in the same
//! run (the practical peak of this machine), so numbers from different machines compare.
//!
//! Run: `cargo bench -p stable-diffusion --bench models [-- 256|512] [bf16] [unet]` (`bf16`:
//! weights stored as bf16, as `--dtype bf16` loads them; `unet`: skip the VAE).

use std::time::Instant;

use candle_core::Shape;
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use stable_diffusion::nn::flops;
use stable_diffusion::unet::{UNet2DConditionModel, UNetConfig};
use stable_diffusion::vae::{AutoencoderKL, AutoencoderTiny, TinyVaeConfig, VaeConfig};

/// The allocator `sd` runs with, so that steps reuse their large blocks here too.
#[global_allocator]
static ALLOC: sd_kernels::workspace::Workspace = sd_kernels::workspace::Workspace::new();

/// Median wall time of `runs` calls of `f`, after one warm-up call.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> f64 {
    f();
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// GFLOP/s of a square f32 matmul through candle: the baseline.
fn gemm_gflops(device: &Device) -> f64 {
    let n = 2048;
    let a = Tensor::randn(0f32, 1.0, (n, n), device).unwrap();
    let b = Tensor::randn(0f32, 1.0, (n, n), device).unwrap();
    let seconds = time(5, || a.matmul(&b).unwrap());
    2.0 * (n * n * n) as f64 / seconds / 1e9
}

/// Hands out fresh random tensors (plain tensors, not trainable variables, so the CPU
/// kernels pack them as they would a loaded checkpoint's).
struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        _: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights: {name} requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Random weights of `dtype`.
fn random_vb(device: &Device, dtype: DType) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
}

fn main() {
    let device = Device::Cpu;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let dtype = if args.iter().any(|a| a == "bf16") {
        DType::BF16
    } else {
        DType::F32
    };
    let unet_only = args.iter().any(|a| a == "unet");
    let sizes = if sizes.is_empty() {
        vec![256, 512]
    } else {
        sizes
    };
    let threads = candle_core::utils::get_num_threads();
    println!(
        "threads: {threads}, CPU kernels: {}, weights: {dtype:?}",
        stable_diffusion::nn::kernels::cpu_backend_name()
    );
    let peak = gemm_gflops(&device);
    println!("baseline: f32 GEMM 2048^3: {peak:.1} GFLOP/s");

    let unet_config = UNetConfig::sd15();
    let vb = random_vb(&device, dtype);
    let unet = UNet2DConditionModel::new(vb, &unet_config).expect("build SD 1.5 UNet");
    let vae_config = VaeConfig::sd15();
    let vb = random_vb(&device, dtype);
    let vae = AutoencoderKL::new(vb, &vae_config).expect("build SD 1.5 VAE");
    let vb = random_vb(&device, DType::F32);
    let taesd = AutoencoderTiny::new(vb, &TinyVaeConfig::default(), false, true)
        .expect("build the TAESD decoder");

    for size in sizes {
        let latent = size / 8;
        let sample = Tensor::randn(0f32, 1.0, (2, 4, latent, latent), &device).unwrap();
        let context = Tensor::randn(0f32, 1.0, (2, 77, 768), &device).unwrap();
        flops::reset();
        unet.forward(&sample, 500.0, &context, None).unwrap();
        let unet_flops = flops::total() as f64;
        let runs = if size <= 256 { 3 } else { 1 };
        let seconds = time(runs, || {
            unet.forward(&sample, 500.0, &context, None).unwrap()
        });
        let unet_seconds = seconds;
        let gflops = unet_flops / seconds / 1e9;
        println!(
            "unet  sd15 {size}x{size} batch 2: {seconds:.3} s, {:.1} GFLOP, {gflops:.1} GFLOP/s ({:.0}% of GEMM)",
            unet_flops / 1e9,
            100.0 * gflops / peak
        );
        if unet_only {
            continue;
        }

        let latents = Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &device).unwrap();
        flops::reset();
        vae.decode(&latents).unwrap();
        let vae_flops = flops::total() as f64;
        let seconds = time(runs, || vae.decode(&latents).unwrap());
        let gflops = vae_flops / seconds / 1e9;
        println!(
            "vae   sd15 {size}x{size} decode:  {seconds:.3} s, {:.1} GFLOP, {gflops:.1} GFLOP/s ({:.0}% of GEMM)",
            vae_flops / 1e9,
            100.0 * gflops / peak
        );

        // Previews decode in f32 whatever the model's dtype (pipeline::preview::tiny_images).
        flops::reset();
        taesd.decode(&latents).unwrap();
        let taesd_flops = flops::total() as f64;
        let taesd_seconds = time(3, || taesd.decode(&latents).unwrap());
        println!(
            "taesd sd15 {size}x{size} decode:  {taesd_seconds:.3} s, {:.1} GFLOP, {:.1} GFLOP/s \
             ({:.1}% of the VAE decode, {:.1}% of a UNet step)",
            taesd_flops / 1e9,
            taesd_flops / taesd_seconds / 1e9,
            100.0 * taesd_seconds / seconds,
            100.0 * taesd_seconds / unet_seconds
        );
    }
}
