//! Live previews: the sampler's current estimate after a step, handed to a hook, and the cheap
//! way to see it (AUTOMATIC1111's "Approx cheap"): a fixed linear map from the four latent
//! channels to RGB, one pixel per latent, no network.
//!
//! ```text
//! sampler step ─► StepInfo (denoised estimate, else the sample) ─► PreviewHook(StepPreview)
//!                                                   StepPreview::cheap_images ─► small RGB
//!                                                   StepPreview::tiny_images  ─► TAESD RGB
//! ```
//!
//! The tiny autoencoder ([`AutoencoderTiny`], TAESD) gives a full-size picture at a few percent
//! of a VAE decode.

use candle_core::{DType, Tensor};

use super::ModelFamily;
use crate::image::RgbImage;
use crate::vae::AutoencoderTiny;
use crate::{Error, Result};

/// Called after every sampling step with the step's estimate (see [`StepPreview`]); it may
/// render it or ignore it. Shared (`Fn`), so one hook serves a base model and its refiner.
pub type PreviewHook<'a> = &'a dyn Fn(&StepPreview<'_>);

/// The sampler's state after one step, for a live preview.
#[derive(Debug, Clone, Copy)]
pub struct StepPreview<'a> {
    /// Steps done in this pass (1-based, as [`super::Progress::Step`] counts them).
    pub step: usize,
    /// Steps in this pass.
    pub total: usize,
    /// The denoised estimate (the sample itself for samplers without one), in the UNet's
    /// latent scale: `(batch, channels, height / 8, width / 8)`.
    pub latents: &'a Tensor,
    /// The family of the model that made it, which decides the latent space.
    pub family: ModelFamily,
}

impl StepPreview<'_> {
    /// One small picture per image of the batch, by [`cheap_images`].
    pub fn cheap_images(&self) -> Result<Vec<RgbImage>> {
        cheap_images(self.latents, self.family)
    }

    /// One full-size picture per image of the batch, decoded by the tiny autoencoder `vae`
    /// (TAESD for SD 1.x / 2.x, TAESDXL for SDXL: the file must suit the model's latent space).
    pub fn tiny_images(&self, vae: &AutoencoderTiny) -> Result<Vec<RgbImage>> {
        tiny_images(self.latents, vae)
    }
}

/// The estimate `latents` (the UNet's scale) decoded by the tiny autoencoder in f32 whatever
/// the model computes in; `vae` must live on the latents' device.
pub fn tiny_images(latents: &Tensor, vae: &AutoencoderTiny) -> Result<Vec<RgbImage>> {
    let latents = latents.to_dtype(DType::F32)?;
    crate::image::tensor_to_images(&vae.decode(&latents)?)
}

/// The latent-to-RGB weights of "Approx cheap": row `l` is what latent channel `l` adds to
/// (red, green, blue). SD 1.x and 2.x share a VAE; SDXL's latent space has its own.
pub fn cheap_coefficients(family: ModelFamily) -> [[f32; 3]; 4] {
    if family.is_sdxl() {
        [
            [0.3448, 0.4168, 0.4395],
            [-0.1953, -0.0290, 0.0250],
            [0.1074, 0.0886, -0.0163],
            [-0.3730, -0.2499, -0.2088],
        ]
    } else {
        [
            [0.298, 0.207, 0.208],
            [0.187, 0.286, 0.173],
            [-0.158, 0.189, 0.264],
            [-0.184, -0.271, -0.473],
        ]
    }
}

/// The cheap preview of `latents` `(batch, 4, h, w)`: each pixel is the coefficients times
/// its four channels, taken from [-1, 1] to [0, 255] and cut to that range; an image is
/// `w` x `h` pixels (an eighth of the final size).
pub fn cheap_images(latents: &Tensor, family: ModelFamily) -> Result<Vec<RgbImage>> {
    let (batch, channels, height, width) = latents.dims4()?;
    if channels != 4 {
        return Err(Error::invalid(
            "preview latents",
            format!("expected 4 channels, found {channels}"),
        ));
    }
    let values: Vec<f32> = latents.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let coefficients = cheap_coefficients(family);
    let plane = height * width;
    let mut images = Vec::with_capacity(batch);
    for image in values.chunks_exact(channels * plane) {
        let mut pixels = Vec::with_capacity(plane * 3);
        for at in 0..plane {
            let mut rgb = [0.0f32; 3];
            for (l, weights) in coefficients.iter().enumerate() {
                let latent = image[l * plane + at];
                for (sum, weight) in rgb.iter_mut().zip(weights) {
                    *sum += latent * weight;
                }
            }
            // As A1111: (v + 1) / 2 clamped to [0, 1], times 255, truncated.
            pixels.extend(rgb.map(|v| (((v + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0) as u8));
        }
        let picture = RgbImage::from_raw(width as u32, height as u32, pixels)
            .expect("the buffer holds width x height pixels");
        images.push(picture);
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cheap_preview_maps_each_latent_pixel_through_the_coefficients() {
        // One image, 2x1 latents: pixel 0 is channel 0 = 1, pixel 1 is all zeros.
        let latents = Tensor::new(
            &[[[[1.0f32, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        let images = cheap_images(&latents, ModelFamily::Sd1).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].dimensions(), (2, 1));
        // (0.298 + 1) / 2 * 255 = 165.5 -> 165; (0.207 + 1) / 2 * 255 = 153.9 -> 153.
        assert_eq!(images[0].get_pixel(0, 0).0, [165, 153, 154]);
        assert_eq!(images[0].get_pixel(1, 0).0, [127, 127, 127]);
        let sdxl = cheap_images(&latents, ModelFamily::Sdxl).unwrap();
        // (0.3448 + 1) / 2 * 255 = 171.4 -> 171.
        assert_eq!(sdxl[0].get_pixel(0, 0).0[0], 171);
    }

    #[test]
    fn cheap_preview_clamps_and_refuses_other_channel_counts() {
        let big = Tensor::full(100.0f32, (2, 4, 1, 1), &Device::Cpu).unwrap();
        let images = cheap_images(&big, ModelFamily::Sd2).unwrap();
        assert_eq!(images.len(), 2);
        // Channel sums: red 0.143 * 100 > 1 -> 255; blue 0.172 * 100 -> 255.
        assert_eq!(images[1].get_pixel(0, 0).0, [255, 255, 255]);
        let three = Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let err = cheap_images(&three, ModelFamily::Sd1).unwrap_err();
        assert!(err.to_string().contains("4 channels"), "{err}");
    }
}
