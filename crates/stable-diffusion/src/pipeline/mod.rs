//! The generation pipeline: txt2img, img2img and inpainting as one loop with classifier-free
//! guidance, for every model family (SD 1.x, SD 2.x, SDXL base and refiner, inpainting models).
//!
//! ```text
//! prompt ─► tokenizer ─► text encoder ─► (uncond, cond) embeddings ─┐
//! seed ─► noise ─► latents (txt2img) / VAE-encoded init image + noise (img2img)
//!         └─► for each timestep: UNet(x, t, embeddings) ─► CFG ─► sampler.step ─► ...
//!                                                              └─► VAE decode ─► images
//! ```
//!
//! Files: `family` (what was loaded), `model` (assembling and loading a model), `precision`
//! (half-precision storage), `conditioning` (text → embeddings per family), `inpaint` (mask
//! inputs), `refiner` (the SDXL handoff split), `denoise` (the generation itself), `request`
//! and `infotext` (the request and its PNG text), `variation` (A1111's variation seeds and seed
//! resize in the initial noise), `preview` (live previews of the estimate during sampling).

mod conditioning;
mod denoise;
mod family;
mod hires;
mod infotext;
mod inpaint;
pub mod memory;
mod model;
mod precision;
pub mod preview;
pub mod refiner;
mod request;
mod run;
mod store;
mod variation;

pub use crate::model_family::ModelDescription;
pub use conditioning::{Conditioning, ConditioningSchedule, PromptEmbedding, TextOptions};
pub use denoise::Inputs;
pub use family::ModelFamily;
pub use hires::{upscale_latents_bilinear, HiresFix, HiresUpscaler};
pub use infotext::{format_network_hashes, parse_network_hashes};
pub use inpaint::mask_to_tensor;
pub use model::{load_vae, LoadOptions, ModelParts, StableDiffusion, TextEncoderPart};
pub use precision::{dtype_name, parse_dtype, Precision, DTYPE_NAMES};
pub use preview::{PreviewHook, StepPreview};
pub use request::{
    GenerationRequest, NetworkRef, RngKind, DEFAULT_REFINER_SWITCH, MAX_BATCH, MAX_PROMPT_BYTES,
    MAX_SIDE, MAX_STEPS,
};
pub use run::{precheck, random_seed, run, run_with_previews, RunOutput};
pub use store::{asset_name, disk_bytes, Asset, Entry, ModelStore};
pub use variation::{initial_noise, ImageStreams, RunNoise};

use std::time::Duration;

/// Where a generation is, reported to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The prompts are being encoded.
    EncodingText,
    /// The init image is being encoded (img2img, inpainting).
    EncodingImage,
    /// Sampling step `step` (1-based) of `total` has finished.
    Step {
        /// Steps done.
        step: usize,
        /// Steps in this run.
        total: usize,
    },
    /// The latents are being decoded to images.
    Decoding,
}

/// What the progress callback tells the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop as soon as possible; the run ends with [`crate::Error::Cancelled`].
    Cancel,
    /// Stop sampling after this step and decode the sampler's current estimate (A1111's
    /// interrupt): the run returns images, marked [`Generation::interrupted`]. Before sampling
    /// starts there is nothing to decode, and it cancels as [`Control::Cancel`] does; while
    /// decoding it lets the decode finish.
    Finish,
}

/// Time spent in each stage of a generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Tokenizing and encoding the prompts.
    pub text_encoding: Duration,
    /// Encoding the init image (img2img).
    pub image_encoding: Duration,
    /// The whole denoising loop.
    pub sampling: Duration,
    /// Steps in the denoising loop.
    pub steps: usize,
    /// Decoding the latents to images.
    pub decoding: Duration,
}

impl Timings {
    /// Seconds per sampling step (0 when no step ran).
    pub fn seconds_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.sampling.as_secs_f64() / self.steps as f64
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The images, `batch_size` of them.
    pub images: Vec<::image::RgbImage>,
    /// The final latents before VAE decoding, `(batch, channels, h, w)`, unscaled.
    pub latents: candle_core::Tensor,
    /// Where the time went.
    pub timings: Timings,
    /// Whether [`Control::Finish`] stopped the sampling early (the images are the estimate at
    /// that step).
    pub interrupted: bool,
}
