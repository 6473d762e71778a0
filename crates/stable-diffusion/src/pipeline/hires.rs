//! Hires fix (AUTOMATIC1111's two-pass txt2img): generate at the request's size, enlarge the
//! picture, then run img2img on it at a denoising strength.
//!
//! Upscalers: Lanczos (a = 3) on the decoded picture, or A1111's "Latent": the first pass's
//! latents enlarged bilinearly (torch's `interpolate(mode="bilinear", antialias=False)`,
//! half-pixel centres) and handed to the second pass as they are, without the VAE.
//! A1111's prompt schedules count the second pass from the first pass's steps
//! ([`crate::prompt::ScheduleSteps::Hires`]).

use std::str::FromStr;

use candle_core::{DType, Tensor};

use ::image::imageops::FilterType;

use super::preview::PreviewHook;
use super::{Control, Generation, GenerationRequest, Inputs, Progress, StableDiffusion};
use crate::image::image_to_tensor;
use crate::{Error, Result};

/// The second pass of a hires-fix run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct HiresFix {
    /// The factor the first pass's size is multiplied by (A1111's "Hires upscale").
    pub scale: f64,
    /// Sampling steps of the second pass before the strength truncation; 0 = the first
    /// pass's ("Hires steps").
    pub steps: usize,
    /// How much the second pass changes the enlarged image, in (0, 1] ("Denoising strength").
    pub strength: f64,
    /// How the first pass is enlarged ("Hires upscaler").
    pub upscaler: HiresUpscaler,
    /// A1111's "Hires resize": the second pass's size `(width, height)` in pixels instead of
    /// `scale` (`hr_resize_x` / `hr_resize_y`; a side of 0 follows the first pass's aspect
    /// ratio). `None` scales by `scale`.
    pub resize: Option<(usize, usize)>,
}

impl Default for HiresFix {
    /// A1111's defaults: twice the size, the first pass's steps, strength 0.7 (Lanczos here,
    /// where A1111's upscaler list starts with "Latent").
    fn default() -> Self {
        Self {
            scale: 2.0,
            steps: 0,
            strength: 0.7,
            upscaler: HiresUpscaler::Lanczos,
            resize: None,
        }
    }
}

/// How a hires fix enlarges its first pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HiresUpscaler {
    /// The decoded picture, Lanczos (a = 3), encoded again by the VAE.
    #[default]
    Lanczos,
    /// A1111's "Latent": the latents, bilinear, no antialiasing.
    Latent,
}

impl HiresUpscaler {
    /// Every name [`HiresUpscaler::from_str`] accepts (lower case).
    pub const NAMES: &'static [&'static str] = &["lanczos", "latent"];

    /// The name used on the command line and in request JSON.
    pub fn name(self) -> &'static str {
        match self {
            HiresUpscaler::Lanczos => "lanczos",
            HiresUpscaler::Latent => "latent",
        }
    }

    /// The name A1111 writes in its "Hires upscaler" infotext field.
    pub fn a1111_name(self) -> &'static str {
        match self {
            HiresUpscaler::Lanczos => "Lanczos",
            HiresUpscaler::Latent => "Latent",
        }
    }
}

impl FromStr for HiresUpscaler {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lanczos" => Ok(HiresUpscaler::Lanczos),
            "latent" | "latent (bilinear)" => Ok(HiresUpscaler::Latent),
            _ => Err(Error::Unsupported {
                what: "hires upscaler",
                value: s.to_string(),
                valid: Self::NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
}

/// `latents` `(b, c, h, w)` resized to `(b, c, height, width)` as torch's bilinear
/// `interpolate` (align_corners=False, no antialiasing) does: each output position samples
/// the input at `(i + 0.5)·in/out − 0.5` (clamped at 0) between its two neighbours. Computed
/// as two interpolation matrices, `R_h · x · R_wᵀ`, on the latents' device.
pub fn upscale_latents_bilinear(latents: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (_, _, in_h, in_w) = latents.dims4()?;
    let dtype = latents.dtype();
    let matrix = |input: usize, output: usize| -> Result<Tensor> {
        let scale = input as f32 / output as f32;
        let mut values = vec![0f32; output * input];
        for i in 0..output {
            let source = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let low = (source.floor() as usize).min(input - 1);
            let lambda = (source - low as f32).clamp(0.0, 1.0);
            let high = if low + 1 < input { low + 1 } else { low };
            values[i * input + low] += 1.0 - lambda;
            values[i * input + high] += lambda;
        }
        Ok(Tensor::from_vec(values, (output, input), latents.device())?)
    };
    let rows = matrix(in_h, height)?; // (height, in_h)
    let columns = matrix(in_w, width)?.t()?; // (in_w, width)
    let x = latents.to_dtype(DType::F32)?;
    let x = rows.broadcast_matmul(&x)?; // (b, c, height, in_w)
    let x = x.broadcast_matmul(&columns)?; // (b, c, height, width)
    Ok(x.to_dtype(dtype)?)
}

impl HiresFix {
    /// The second pass's size: the first pass's times the scale, rounded down to a multiple
    /// of `factor`.
    ///
    /// With `resize`, A1111's `hr_upscale_to_x/y`: the given side(s), the other from the
    /// first pass's aspect ratio; when both sides are given and the aspect ratios differ,
    /// the size that covers them (A1111 then crops to the given size, see
    /// [`HiresFix::crops`]).
    pub fn target_size(&self, width: usize, height: usize, factor: usize) -> (usize, usize) {
        let (w, h) = match self.resize {
            None | Some((0, 0)) => (
                (width as f64 * self.scale) as usize,
                (height as f64 * self.scale) as usize,
            ),
            Some((x, 0)) => (x, x * height / width.max(1)),
            Some((0, y)) => (y * width / height.max(1), y),
            Some((x, y)) => {
                // As A1111: cover the requested box, keeping the first pass's aspect ratio.
                if (width as f64 / height as f64) < (x as f64 / y as f64) {
                    (x, x * height / width.max(1))
                } else {
                    (y * width / height.max(1), y)
                }
            }
        };
        (w / factor * factor, h / factor * factor)
    }

    /// Whether A1111 would crop the enlarged first pass to reach `resize` (both sides given,
    /// in an aspect ratio other than the first pass's): not built here.
    pub fn crops(&self, width: usize, height: usize, factor: usize) -> bool {
        match self.resize {
            Some((x, y)) if x > 0 && y > 0 => {
                let (w, h) = self.target_size(width, height, factor);
                (w, h) != (x / factor * factor, y / factor * factor)
            }
            _ => false,
        }
    }

    /// The img2img request of the second pass for `first` (the first pass's request).
    pub fn second_pass(&self, first: &GenerationRequest, factor: usize) -> GenerationRequest {
        let (width, height) = self.target_size(first.width_px(), first.height_px(), factor);
        GenerationRequest {
            width: Some(width),
            height: Some(height),
            steps: if self.steps == 0 {
                first.steps
            } else {
                self.steps
            },
            strength: self.strength,
            batch_size: 1,
            hires: None,
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
        self.generate_hires_with_previews(request, hires, None, progress)
    }

    /// [`Self::generate_hires`] with a live-preview hook called after every step of both
    /// passes.
    pub fn generate_hires_with_previews(
        &self,
        request: &GenerationRequest,
        hires: &HiresFix,
        previews: Option<PreviewHook<'_>>,
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
        let factor = self.spatial_factor();
        match hires.resize {
            None | Some((0, 0)) => {
                if !(hires.scale >= 1.0 && hires.scale.is_finite()) {
                    return Err(Error::invalid(
                        "hires scale",
                        format!("{} is not a factor of 1 or more", hires.scale),
                    ));
                }
                // Before the first pass: the enlarged picture must fit the size limit.
                let (w, h) = hires.target_size(request.width_px(), request.height_px(), factor);
                if w > super::MAX_SIDE || h > super::MAX_SIDE {
                    return Err(Error::invalid(
                        "hires scale",
                        format!(
                            "{} makes {w}x{h} of {}x{}, above the limit of {} pixels a side",
                            hires.scale,
                            request.width_px(),
                            request.height_px(),
                            super::MAX_SIDE
                        ),
                    ));
                }
            }
            Some((x, y)) => {
                let (w, h) = hires.target_size(request.width_px(), request.height_px(), factor);
                if x > super::MAX_SIDE || y > super::MAX_SIDE || w == 0 || h == 0 {
                    return Err(Error::invalid(
                        "hires resize",
                        format!(
                            "{x}x{y} from {}x{} gives {w}x{h}, not within {factor}..={} pixels a side",
                            request.width_px(),
                            request.height_px(),
                            super::MAX_SIDE
                        ),
                    ));
                }
                if hires.crops(request.width_px(), request.height_px(), factor) {
                    return Err(Error::invalid(
                        "hires resize",
                        format!(
                            "{x}x{y} has another aspect ratio than the first pass ({}x{}); \
                             A1111 enlarges to {w}x{h} and crops, which is not built here \
                             (give one side, 0 for the other)",
                            request.width_px(),
                            request.height_px()
                        ),
                    ));
                }
            }
        }
        let first_inputs = Inputs {
            previews,
            ..Inputs::default()
        };
        let first = self.generate(request, &first_inputs, progress)?;
        if first.interrupted {
            // As A1111: an interrupted first pass is the result, without the hires pass.
            return Ok(first);
        }
        let second_request = hires.second_pass(request, factor);
        let (width, height) = (second_request.width_px(), second_request.height_px());
        let (init_image, init_latents) = match hires.upscaler {
            HiresUpscaler::Lanczos => {
                let image = ::image::imageops::resize(
                    &first.images[0],
                    width as u32,
                    height as u32,
                    FilterType::Lanczos3,
                );
                (Some(image_to_tensor(&image, &self.device)?), None)
            }
            HiresUpscaler::Latent => {
                let latents =
                    upscale_latents_bilinear(&first.latents, height / factor, width / factor)?;
                (None, Some(latents))
            }
        };
        self.generate(
            &second_request,
            &Inputs {
                init_image: init_image.as_ref(),
                init_latents: init_latents.as_ref(),
                hires_first_pass_steps: Some(request.steps),
                previews,
                ..Inputs::default()
            },
            progress,
        )
    }
}
