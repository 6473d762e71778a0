//! AUTOMATIC1111's variation seeds and seed resize: the initial noise of a request.
//!
//! ```text
//! shape₀   = (C, H₀/8, W₀/8) with "seed resize from" W₀xH₀, else the latent (C, H, W)
//! noise    = randn(seed, shape₀)             (the run's own stream when shape₀ is the latent's)
//! noise    = slerp(strength, noise, randn(variation seed, shape₀))   with a variation seed
//! resized: x = randn(seed, (C, H, W)) from the run's stream, the noise's centre pasted in
//!          (offsets (W − W₀/8) // 2 and (H − H₀/8) // 2, floor; a negative one crops)
//! ```
//!
//! Each fresh `randn(s, ·)` is a new stream of the request's kind (CPU or CUDA Philox) seeded
//! with `s`. In a batch, image `i` takes variation seed `v + i` and, as A1111 does when the
//! strength is not 0, the same seed for its resized noise; its own noise is the `i`-th slice
//! of the run's stream (A1111 would seed each image's stream apart, so batches of more than
//! one image reproduce A1111's first image only).

use candle_core::{Device, Tensor};

use super::{GenerationRequest, RngKind};
use crate::rng::{variation_slerp, NoiseSource, PhiloxRng, TorchCpuRng};
use crate::{Error, Result};

/// A fresh stream of `kind` seeded with `seed`.
fn fresh_stream(kind: RngKind, seed: u64) -> Box<dyn NoiseSource> {
    match kind {
        RngKind::Cpu => Box::new(TorchCpuRng::new(seed)),
        RngKind::Cuda => Box::new(PhiloxRng::new(seed)),
    }
}

impl GenerationRequest {
    /// Whether A1111's variation seed is in effect (a seed and a strength above 0).
    pub fn uses_variation(&self) -> bool {
        self.variation_seed.is_some() && self.variation_strength != 0.0
    }
}

/// The initial noise of `request`, `shape = (batch, C, H, W)`: `rng`'s next draw, with the
/// request's variation seed and seed resize applied as A1111 applies them (see the module
/// documentation). `factor` is the VAE's spatial factor (8).
pub fn initial_noise(
    request: &GenerationRequest,
    rng: &mut dyn NoiseSource,
    shape: &[usize],
    factor: usize,
    device: &Device,
) -> Result<Tensor> {
    let variation = request.uses_variation();
    if !variation && request.seed_resize_from.is_none() {
        return rng.randn(shape, device);
    }
    let &[batch, channels, height, width] = shape else {
        return Err(Error::invalid(
            "noise shape",
            format!("expected (batch, channels, height, width), found {shape:?}"),
        ));
    };
    let small = match request.seed_resize_from {
        Some((w, h)) => [channels, h / factor, w / factor],
        None => [channels, height, width],
    };
    if small[1] == 0 || small[2] == 0 {
        return Err(Error::invalid(
            "seed resize from",
            format!("{small:?} latents are empty: give at least {factor}x{factor} pixels"),
        ));
    }
    let resized = small != [channels, height, width];
    let cpu = Device::Cpu;
    let stream = rng.randn(shape, &cpu)?;
    let mut images = Vec::with_capacity(batch);
    for i in 0..batch {
        let own = stream.get(i)?; // (C, H, W)
        let mut noise = if resized {
            let seed = if variation {
                request.seed
            } else {
                request.seed.wrapping_add(i as u64)
            };
            fresh_stream(request.rng, seed).randn(&small, &cpu)?
        } else {
            own.clone()
        };
        if let (true, Some(variation_seed)) = (variation, request.variation_seed) {
            let other = fresh_stream(request.rng, variation_seed.wrapping_add(i as u64))
                .randn(&small, &cpu)?;
            noise = variation_slerp(request.variation_strength, &noise, &other)?;
        }
        if resized {
            noise = paste_centre(&noise, &own)?;
        }
        images.push(noise);
    }
    Ok(Tensor::stack(&images, 0)?.to_device(device)?)
}

/// `target` with the centre of `noise` pasted over it (both `(C, h, w)`), A1111's offsets.
fn paste_centre(noise: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (channels, nh, nw) = noise.dims3()?;
    let (_, th, tw) = target.dims3()?;
    // Python's floor division.
    let offset = |t: usize, n: usize| (t as i64 - n as i64).div_euclid(2);
    let (dx, dy) = (offset(tw, nw), offset(th, nh));
    let span = |n: usize, d: i64| (n as i64 + 2 * d.min(0)) as usize;
    let (w, h) = (span(nw, dx), span(nh, dy));
    let (tx, ty) = (dx.max(0) as usize, dy.max(0) as usize);
    let (sx, sy) = ((-dx).max(0) as usize, (-dy).max(0) as usize);
    let source = noise.to_dtype(candle_core::DType::F32)?.to_vec3::<f32>()?;
    let mut out = target.to_dtype(candle_core::DType::F32)?.to_vec3::<f32>()?;
    for c in 0..channels {
        for y in 0..h {
            out[c][ty + y][tx..tx + w].copy_from_slice(&source[c][sy + y][sx..sx + w]);
        }
    }
    let flat: Vec<f32> = out.into_iter().flatten().flatten().collect();
    Ok(Tensor::from_vec(flat, (channels, th, tw), target.device())?)
}
