//! Hires fix (AUTOMATIC1111's two-pass txt2img): generate at the request's size, enlarge the
//! picture, then run img2img on it at a denoising strength.
//!
//! The image upscaler (Lanczos, a = 3) is supported; A1111's "Latent" upscalers (bilinear or
//! nearest on the latents) are not built yet.

use std::path::PathBuf;

use ::image::imageops::FilterType;

use super::{Control, Generation, GenerationRequest, Inputs, Progress, StableDiffusion};
use crate::image::image_to_tensor;
use crate::{Error, Result};

/// The second pass of a hires-fix run.
#[derive(Debug, Clone, PartialEq)]
pub struct HiresFix {
    /// The factor the first pass's size is multiplied by (A1111's "Hires upscale").
    pub scale: f64,
    /// Sampling steps of the second pass before the strength truncation; 0 = the first
    /// pass's ("Hires steps").
    pub steps: usize,
    /// How much the second pass changes the enlarged image, in (0, 1] ("Denoising strength").
    pub strength: f64,
}

impl HiresFix {
    /// The second pass's size: the first pass's times the scale, rounded down to a multiple
    /// of `factor`.
    pub fn target_size(&self, width: usize, height: usize, factor: usize) -> (usize, usize) {
        let scaled = |v: usize| ((v as f64 * self.scale) as usize) / factor * factor;
        (scaled(width), scaled(height))
    }

    /// The img2img request of the second pass for `first` (the first pass's request).
    pub fn second_pass(&self, first: &GenerationRequest, factor: usize) -> GenerationRequest {
        let (width, height) = self.target_size(first.width, first.height, factor);
        GenerationRequest {
            width,
            height,
            steps: if self.steps == 0 {
                first.steps
            } else {
                self.steps
            },
            strength: self.strength,
            init_image: Some(PathBuf::from("<hires fix first pass>")),
            batch_size: 1,
            ..first.clone()
        }
    }
}

impl StableDiffusion {
    /// Runs a hires-fix generation: `request` (txt2img, one image) at its size, the image
    /// enlarged with Lanczos to `hires`' size, then img2img on it with the same seed.
    pub fn generate_hires(
        &self,
        request: &GenerationRequest,
        hires: &HiresFix,
        progress: &mut dyn FnMut(Progress) -> Control,
    ) -> Result<Generation> {
        if request.init_image.is_some() || request.mask.is_some() || request.refiner.is_some() {
            return Err(Error::invalid(
                "hires fix",
                "it runs on txt2img only (no init image, mask or refiner)",
            ));
        }
        if request.batch_size != 1 {
            return Err(Error::invalid(
                "hires fix",
                "it makes one image at a time (batch size 1)",
            ));
        }
        if !(hires.scale >= 1.0 && hires.scale.is_finite()) {
            return Err(Error::invalid(
                "hires scale",
                format!("{} is not a factor of 1 or more", hires.scale),
            ));
        }
        let first = self.generate(request, &Inputs::default(), progress)?;
        let second_request = hires.second_pass(request, self.spatial_factor());
        let image = ::image::imageops::resize(
            &first.images[0],
            second_request.width as u32,
            second_request.height as u32,
            FilterType::Lanczos3,
        );
        let init = image_to_tensor(&image, &self.device)?;
        self.generate(
            &second_request,
            &Inputs {
                init_image: Some(&init),
                ..Inputs::default()
            },
            progress,
        )
    }
}
