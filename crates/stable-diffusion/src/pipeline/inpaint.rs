//! Inpainting inputs, as diffusers' `StableDiffusionInpaintPipeline` prepares them: the mask
//! (white repaints, black keeps) binarized at one half, resized to the latents by nearest
//! neighbour, and the masked image (the kept part, the repainted part set to 0 = mid grey).

use crate::scheduler::Blend;
use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::{Error, Result};

/// A mask image as `(1, 1, height, width)` f32 in `{0, 1}`: PIL's `L` conversion
/// (ITU-R 601 luma, integer rounding), scaled to [0, 1] and binarized (`>= 0.5` repaints).
pub fn mask_to_tensor(mask: &RgbImage, device: &Device) -> Result<Tensor> {
    let (width, height) = mask.dimensions();
    let values: Vec<f32> = mask
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            let luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
            if luma as f32 / 255.0 < 0.5 {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(
        values,
        (1, 1, height as usize, width as usize),
        device,
    )?)
}

/// Checks that the mask `(1, 1, h, w)` covers the image `(1, 3, h, w)` exactly.
pub(super) fn check_mask(mask: &Tensor, image: &Tensor) -> Result<()> {
    let (_, channels, mh, mw) = mask.dims4()?;
    let (_, _, ih, iw) = image.dims4()?;
    if channels != 1 {
        return Err(Error::invalid(
            "mask",
            format!("expected one channel, found {channels}"),
        ));
    }
    if (mh, mw) != (ih, iw) {
        return Err(Error::invalid(
            "mask",
            format!("the mask is {mw}x{mh}, the image is {iw}x{ih}; they must be the same size"),
        ));
    }
    Ok(())
}

/// The mask at latent resolution, `(1, 1, h / factor, w / factor)`, as torch's default
/// (`nearest`) interpolation picks it: source index `floor(i * in / out)`.
pub(super) fn latent_mask(mask: &Tensor, factor: usize) -> Result<Tensor> {
    let (_, _, height, width) = mask.dims4()?;
    let pick = |size: usize| -> Result<Tensor> {
        let out = size / factor;
        let scale = size as f32 / out as f32;
        let index: Vec<u32> = (0..out)
            .map(|i| ((i as f32 * scale).floor() as usize).min(size - 1) as u32)
            .collect();
        Ok(Tensor::from_vec(index, out, mask.device())?)
    };
    Ok(mask
        .index_select(&pick(height)?, 2)?
        .index_select(&pick(width)?, 3)?)
}

/// The image with the repainted part zeroed: `image * (mask < 0.5)`.
pub(super) fn masked_image(image: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let keep = mask.lt(0.5)?.to_dtype(image.dtype())?;
    Ok(image.broadcast_mul(&keep)?)
}

/// How the denoising loop uses the mask.
pub(super) enum InpaintMode {
    /// No mask.
    None,
    /// A 9-channel UNet: `[latents, mask, masked-image latents]` on the channel axis; both
    /// extra inputs already batched like the UNet input (doubled with guidance).
    Concat {
        mask: Tensor,
        masked_latents: Tensor,
    },
    /// A 4-channel UNet: the init image is blended back in, by the sampler's rules (after
    /// each step, noised to the next timestep, in the diffusers flavor; into the denoised
    /// estimate in A1111's).
    Blend(Blend),
}

impl InpaintMode {
    /// The blend of a 4-channel inpainting run.
    pub(super) fn blend(&self) -> Option<&Blend> {
        match self {
            InpaintMode::Blend(blend) => Some(blend),
            _ => None,
        }
    }

    /// The UNet input: the scaled latents, with the mask channels for a 9-channel UNet.
    pub(super) fn unet_input(&self, scaled: Tensor) -> Result<Tensor> {
        match self {
            InpaintMode::Concat {
                mask,
                masked_latents,
            } => {
                let dtype = scaled.dtype();
                Ok(Tensor::cat(
                    &[
                        &scaled,
                        &mask.to_dtype(dtype)?,
                        &masked_latents.to_dtype(dtype)?,
                    ],
                    1,
                )?)
            }
            _ => Ok(scaled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_binarizes_at_one_half_and_downsamples_by_nearest() {
        let mut image = RgbImage::new(16, 16);
        for (x, _, p) in image.enumerate_pixels_mut() {
            let v = if x >= 8 { 128 } else { 127 };
            p.0 = [v, v, v];
        }
        let mask = mask_to_tensor(&image, &Device::Cpu).unwrap();
        let small = latent_mask(&mask, 8).unwrap();
        assert_eq!(small.dims(), &[1, 1, 2, 2]);
        let values: Vec<f32> = small.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(values, vec![0.0, 1.0, 0.0, 1.0]);
    }
}
