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
//! with `s`. In a batch, image `i` takes variation seed `v + i`, and seed `s + i` without a
//! variation (`s` with one, as A1111 does when the strength is not 0).
//!
//! Where the batch's noise comes from follows the sampler's flavor:
//! - diffusers: one stream (the pipeline's `generator`) for the whole batch; image `i`'s noise
//!   is the `i`-th slice of each draw, and a resized image's `x` is that slice.
//! - k-diffusion (A1111): [`ImageStreams`], A1111's `ImageRNG`: image `i` draws from its own
//!   stream seeded with its seed, so every image of a batch is re-made alone from its own
//!   seed. A resized image's noise and `x` come from fresh streams and leave its stream
//!   untouched (the sampler's first noise then repeats `x`'s values, as in A1111). After the
//!   initial noise, an eta noise seed delta `d` restarts image `i`'s stream at its seed + `d`.

use candle_core::{Device, Tensor};

use super::{GenerationRequest, RngKind};
use crate::rng::{variation_slerp, NoiseSource};
use crate::scheduler::SamplerFlavor;
use crate::{Error, Result};

impl GenerationRequest {
    /// Whether A1111's variation seed is in effect (a seed and a strength above 0).
    pub fn uses_variation(&self) -> bool {
        self.variation_seed.is_some() && self.variation_strength != 0.0
    }

    /// Whether each image of a batch has its own stream (A1111's seeds: the k-diffusion
    /// flavor) rather than one stream for the batch (diffusers' generator).
    pub fn per_image_seeds(&self) -> Result<bool> {
        let flavor = self
            .sampler_options
            .resolve_flavor(self.sampler, self.schedule)?;
        Ok(flavor == SamplerFlavor::KDiffusion)
    }

    /// The seed and variation seed that image `i` of the batch is made with. Under A1111's
    /// per-image seeds these re-make image `i` alone (batch size 1); under one stream for the
    /// batch they are the request's own.
    pub fn image_seeds(&self, i: usize) -> Result<(u64, Option<u64>)> {
        if self.per_image_seeds()? {
            Ok(self.a1111_image_seeds(i))
        } else {
            Ok((self.seed_value(), self.variation_seed))
        }
    }

    /// A1111's seed and variation seed of image `i`: seed + i (the seed itself with a
    /// variation seed in effect) and variation seed + i.
    pub(super) fn a1111_image_seeds(&self, i: usize) -> (u64, Option<u64>) {
        let i = i as u64;
        let seed = if self.uses_variation() {
            self.seed_value()
        } else {
            self.seed_value().wrapping_add(i)
        };
        (seed, self.variation_seed.map(|v| v.wrapping_add(i)))
    }

    /// The random streams of a run of this request.
    pub fn noise_streams(&self) -> Result<RunNoise> {
        if self.per_image_seeds()? {
            let seeds = (0..self.batch_size)
                .map(|i| self.a1111_image_seeds(i).0)
                .collect();
            Ok(RunNoise::PerImage(ImageStreams::new(self.rng, seeds)))
        } else {
            Ok(RunNoise::Shared(self.rng.stream(self.seed_value())))
        }
    }
}

/// AUTOMATIC1111's noise for a batch (its `ImageRNG`): image `i` draws from its own stream.
pub struct ImageStreams {
    kind: RngKind,
    seeds: Vec<u64>,
    streams: Vec<Box<dyn NoiseSource>>,
}

impl ImageStreams {
    /// One stream of `kind` per image, seeded with `seeds[i]`.
    pub fn new(kind: RngKind, seeds: Vec<u64>) -> Self {
        let streams = seeds.iter().map(|&s| kind.stream(s)).collect();
        Self {
            kind,
            seeds,
            streams,
        }
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Checks that a draw for `batch` images has one stream per image.
    fn check_batch(&self, batch: usize) -> Result<()> {
        if batch == self.len() {
            return Ok(());
        }
        Err(Error::invalid(
            "noise shape",
            format!("{batch} images, but {} per-image streams", self.len()),
        ))
    }

    /// Restarts image `i`'s stream at `seeds[i] + delta` (A1111's eta noise seed delta, after
    /// the initial noise); a delta of 0 leaves the streams as they are.
    pub fn restart(&mut self, delta: u64) {
        if delta == 0 {
            return;
        }
        for (stream, &seed) in self.streams.iter_mut().zip(&self.seeds) {
            *stream = self.kind.stream(seed.wrapping_add(delta));
        }
    }

    /// The initial noise of `request` (module documentation), `shape = (batch, C, H, W)`,
    /// then the eta noise seed delta's restart.
    pub fn initial_noise(
        &mut self,
        request: &GenerationRequest,
        shape: &[usize],
        factor: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let (batch, image) = split_batch(shape)?;
        self.check_batch(batch)?;
        let small = resize_shape(request, image, factor)?;
        let resized = small != image;
        let cpu = Device::Cpu;
        let mut images = Vec::with_capacity(batch);
        for i in 0..batch {
            let (seed, variation_seed) = request.a1111_image_seeds(i);
            let mut noise = if resized {
                request.rng.stream(seed).randn(&small, &cpu)?
            } else {
                self.streams[i].randn(&image, &cpu)?
            };
            if let (true, Some(v)) = (request.uses_variation(), variation_seed) {
                let other = request.rng.stream(v).randn(&small, &cpu)?;
                noise = variation_slerp(request.variation_strength, &noise, &other)?;
            }
            if resized {
                let x = request.rng.stream(seed).randn(&image, &cpu)?;
                noise = paste_centre(&noise, &x)?;
            }
            images.push(noise);
        }
        self.restart(request.eta_noise_seed_delta);
        Ok(Tensor::stack(&images, 0)?.to_device(device)?)
    }
}

impl NoiseSource for ImageStreams {
    /// `shape = (batch, ...)`: image `i`'s slice from stream `i`.
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let (batch, image) = shape.split_first().ok_or_else(|| {
            Error::invalid("noise shape", "a per-image draw needs a batch dimension")
        })?;
        self.check_batch(*batch)?;
        let images = self
            .streams
            .iter_mut()
            .map(|stream| stream.randn(image, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&images, 0)?)
    }
}

/// The random draws of one run: one stream for the batch, or one per image.
pub enum RunNoise {
    /// diffusers' `generator`: each draw covers the whole batch.
    Shared(Box<dyn NoiseSource>),
    /// A1111's per-image streams.
    PerImage(ImageStreams),
}

impl RunNoise {
    /// The initial noise (see [`initial_noise`] and [`ImageStreams::initial_noise`]).
    pub fn initial_noise(
        &mut self,
        request: &GenerationRequest,
        shape: &[usize],
        factor: usize,
        device: &Device,
    ) -> Result<Tensor> {
        match self {
            RunNoise::Shared(rng) => initial_noise(request, rng.as_mut(), shape, factor, device),
            RunNoise::PerImage(streams) => streams.initial_noise(request, shape, factor, device),
        }
    }

    /// Applies the request's eta noise seed delta after the initial noise (per-image streams
    /// only; see [`ImageStreams::restart`]).
    pub fn initial_noise_drawn(&mut self, request: &GenerationRequest) {
        if let RunNoise::PerImage(streams) = self {
            streams.restart(request.eta_noise_seed_delta);
        }
    }

    /// The number of per-image streams (`None`: one stream for the batch).
    pub fn per_image(&self) -> Option<usize> {
        match self {
            RunNoise::Shared(_) => None,
            RunNoise::PerImage(streams) => Some(streams.len()),
        }
    }
}

impl NoiseSource for RunNoise {
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        match self {
            RunNoise::Shared(rng) => rng.randn(shape, device),
            RunNoise::PerImage(streams) => streams.randn(shape, device),
        }
    }
}

/// `(batch, [C, H, W])` of a noise shape.
fn split_batch(shape: &[usize]) -> Result<(usize, [usize; 3])> {
    match *shape {
        [batch, channels, height, width] => Ok((batch, [channels, height, width])),
        _ => Err(Error::invalid(
            "noise shape",
            format!("expected (batch, channels, height, width), found {shape:?}"),
        )),
    }
}

/// The shape of the seed's noise: `(C, H₀/8, W₀/8)` with a seed resize, else `image`.
fn resize_shape(
    request: &GenerationRequest,
    image: [usize; 3],
    factor: usize,
) -> Result<[usize; 3]> {
    let small = match request.seed_resize_from {
        Some((w, h)) => [image[0], h / factor, w / factor],
        None => image,
    };
    if small[1] == 0 || small[2] == 0 {
        return Err(Error::invalid(
            "seed resize from",
            format!("{small:?} latents are empty: give at least {factor}x{factor} pixels"),
        ));
    }
    Ok(small)
}

/// The initial noise of `request` from one stream for the batch, `shape = (batch, C, H, W)`:
/// `rng`'s next draw, with the request's variation seed and seed resize applied as A1111 applies them (see the module
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
    let (batch, image) = split_batch(shape)?;
    let small = resize_shape(request, image, factor)?;
    let resized = small != image;
    let cpu = Device::Cpu;
    let stream = rng.randn(shape, &cpu)?;
    let mut images = Vec::with_capacity(batch);
    for i in 0..batch {
        let own = stream.get(i)?; // (C, H, W)
        let mut noise = if resized {
            let seed = if variation {
                request.seed_value()
            } else {
                request.seed_value().wrapping_add(i as u64)
            };
            request.rng.stream(seed).randn(&small, &cpu)?
        } else {
            own.clone()
        };
        if let (true, Some(variation_seed)) = (variation, request.variation_seed) {
            let other = request
                .rng
                .stream(variation_seed.wrapping_add(i as u64))
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
