//! The one request type that the CLI, the server and the library all build, validated in one
//! place and written back out as the PNG infotext.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::image::ImageData;
use crate::prompt::PromptSyntax;
use crate::scheduler::{SamplerKind, SamplerOptions, SigmaSchedule};
use crate::{Error, Result};

/// The largest width or height accepted, in pixels (SDXL's native size is 1024; 4096 leaves
/// room for upscaled work while refusing sizes that would exhaust memory at once).
pub const MAX_SIDE: usize = 4096;

/// The largest batch accepted in one request.
pub const MAX_BATCH: usize = 64;

/// The largest number of sampling steps accepted.
pub const MAX_STEPS: usize = 1000;

/// The longest prompt or negative prompt accepted, in bytes (about 16,000 tokens, hundreds of
/// 75-token chunks): A1111's emphasis parser costs the brackets left open times the pieces
/// after them, so unbounded text could stall a run (or a server) on one request.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

/// Which random stream the noise comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RngKind {
    /// `torch.Generator("cpu")`: the same seed gives diffusers' CPU-generator images.
    #[default]
    Cpu,
    /// torch's CUDA Philox `randn`, computed on the CPU: AUTOMATIC1111's default "GPU" noise
    /// on NVIDIA cards (its "NV" option elsewhere).
    Cuda,
}

impl RngKind {
    /// Every name [`RngKind::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &["cpu", "cuda"];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            RngKind::Cpu => "cpu",
            RngKind::Cuda => "cuda",
        }
    }

    /// A fresh stream of this kind seeded with `seed`.
    pub fn stream(self, seed: u64) -> Box<dyn crate::rng::NoiseSource> {
        match self {
            RngKind::Cpu => Box::new(crate::rng::TorchCpuRng::new(seed)),
            RngKind::Cuda => Box::new(crate::rng::PhiloxRng::new(seed)),
        }
    }

    /// The value AUTOMATIC1111 writes in its `RNG` infotext field.
    pub fn a1111_name(self) -> &'static str {
        match self {
            RngKind::Cpu => "CPU",
            RngKind::Cuda => "NV",
        }
    }
}

impl FromStr for RngKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(RngKind::Cpu),
            // A1111 writes "NV" for its CPU copy of the CUDA stream and "GPU" for the device's.
            "cuda" | "nv" | "gpu" | "philox" => Ok(RngKind::Cuda),
            _ => Err(Error::Unsupported {
                what: "rng",
                value: s.to_string(),
                valid: RngKind::NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
}

/// A LoRA / LyCORIS network for one request, by name (a file of the model store's `Lora`
/// folder, or a path) with its multiplier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct NetworkRef {
    /// The network's name (its file name without extension) or a path to its file.
    pub name: String,
    /// The multiplier (1 = as trained).
    pub weight: f64,
}

impl Default for NetworkRef {
    fn default() -> Self {
        Self {
            name: String::new(),
            weight: 1.0,
        }
    }
}

/// Everything that defines one generation: the same value gives the same images. Plain data
/// (JSON through serde, every field optional, unknown fields ignored); models and networks are
/// names that a [`ModelStore`](super::ModelStore) resolves, images are their files' bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct GenerationRequest {
    /// The checkpoint: a name, an A1111 title (`name [hash]`), a hash or a path (`None`: the
    /// store's default model).
    pub model: Option<String>,
    /// What the image should show.
    pub prompt: String,
    /// What it should not show (empty: the unconditional embedding of "").
    pub negative_prompt: String,
    /// Image width in pixels, a multiple of the model's spatial factor (8) (`None`: the init
    /// image's width rounded down to a multiple of 8, else the model's native size).
    pub width: Option<usize>,
    /// Image height in pixels (`None`: as for the width).
    pub height: Option<usize>,
    /// Number of sampling steps (for img2img, before the strength truncation).
    pub steps: usize,
    /// Classifier-free guidance scale; 1 or below skips the unconditional pass (except for
    /// CFG++ samplers, which always run it).
    pub cfg_scale: f64,
    /// The sampler.
    pub sampler: SamplerKind,
    /// The sigma schedule.
    pub schedule: SigmaSchedule,
    /// The seed of the noise stream (`None`: a random one, reported in the result).
    pub seed: Option<u64>,
    /// Which noise stream.
    pub rng: RngKind,
    /// Images made from the prompt in one run.
    pub batch_size: usize,
    /// DDIM's eta, also DDIM CFG++'s (0 = deterministic).
    pub eta: f64,
    /// The starting image for img2img (the bytes of a PNG, JPEG or WebP file; base64 in JSON).
    pub init_image: Option<ImageData>,
    /// How much of the schedule img2img runs, in (0, 1].
    pub strength: f64,
    /// The inpainting mask (white repaints, black keeps; the init image's size); needs
    /// `init_image`.
    pub mask: Option<ImageData>,
    /// The SDXL refiner that takes over the last part of the schedule (txt2img only), named as
    /// `model` is.
    pub refiner: Option<String>,
    /// Where the refiner takes over, as a fraction of the schedule in (0, 1) (diffusers'
    /// `denoising_end` for the base, `denoising_start` for the refiner).
    pub refiner_switch: f64,
    /// The refiner's aesthetic-score conditioning (models with `requires_aesthetics_score`).
    pub aesthetic_score: f64,
    /// The aesthetic score of the unconditional pass.
    pub negative_aesthetic_score: f64,
    /// A VAE that decodes instead of the model's (a name of the store's `VAE` folder or a path).
    pub vae: Option<String>,
    /// Decode the latents in overlapping tiles (diffusers' `enable_tiling`), which bounds the
    /// decoder's memory at any size but blends the seams: `Some(true)` always (where the image
    /// is larger than one tile), `Some(false)` never, `None` only when the untiled decode
    /// would not fit in the memory available (the run reports the choice back).
    pub vae_tiling: Option<bool>,
    /// Networks applied for this request, beside the prompt's `<lora:name:weight>` tags.
    pub loras: Vec<NetworkRef>,
    /// Textual-inversion embeddings loaded for this request whatever the prompt says (names or
    /// paths); those of the store's embeddings folder are found by their name in a prompt.
    pub embeddings: Vec<String>,
    /// Sampler settings beyond DDIM's eta: flavor, noise scales, churn, custom sigmas.
    pub sampler_options: SamplerOptions,
    /// How the prompts are read: diffusers' plain text, or A1111's syntax.
    pub prompt_syntax: PromptSyntax,
    /// A1111's clip skip: 1 = the text encoder's last layer, 2 = the penultimate, ...
    pub clip_skip: usize,
    /// A1111's variation seed ("subseed"): its noise is slerped into the seed's noise.
    pub variation_seed: Option<u64>,
    /// How far toward the variation seed's noise, in [0, 1]; 0 leaves the seed's noise.
    pub variation_strength: f64,
    /// A1111's seed resize, (width, height) in pixels: the seed's noise is made at this size
    /// and its centre pasted into noise of the request's size.
    pub seed_resize_from: Option<(usize, usize)>,
    /// A1111's eta noise seed delta (ENSD): after the initial noise, each image's stream
    /// restarts at its seed plus this (k-diffusion flavor only; 0: no restart).
    pub eta_noise_seed_delta: u64,
    /// A1111's hires fix: a second, enlarged img2img pass
    /// ([`StableDiffusion::generate_hires`](super::StableDiffusion::generate_hires) runs it;
    /// `generate` runs the first pass only).
    pub hires: Option<super::HiresFix>,
}

/// The refiner switch point when none is given (AUTOMATIC1111's and diffusers' examples).
pub const DEFAULT_REFINER_SWITCH: f64 = 0.8;

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            model: None,
            prompt: String::new(),
            negative_prompt: String::new(),
            width: None,
            height: None,
            steps: 20,
            cfg_scale: 7.5,
            sampler: SamplerKind::EulerA,
            schedule: SigmaSchedule::Default,
            seed: None,
            rng: RngKind::Cpu,
            batch_size: 1,
            eta: 0.0,
            init_image: None,
            strength: 0.75,
            mask: None,
            refiner: None,
            refiner_switch: DEFAULT_REFINER_SWITCH,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
            vae: None,
            vae_tiling: None,
            loras: Vec::new(),
            embeddings: Vec::new(),
            sampler_options: SamplerOptions::default(),
            prompt_syntax: PromptSyntax::Plain,
            clip_skip: 1,
            variation_seed: None,
            variation_strength: 0.0,
            seed_resize_from: None,
            eta_noise_seed_delta: 0,
            hires: None,
        }
    }
}

impl GenerationRequest {
    /// The width in pixels (0 while unset; [`Self::validate`] refuses that).
    pub fn width_px(&self) -> usize {
        self.width.unwrap_or(0)
    }

    /// The height in pixels (0 while unset; [`Self::validate`] refuses that).
    pub fn height_px(&self) -> usize {
        self.height.unwrap_or(0)
    }

    /// The seed (0 while unset; [`Self::validate`] refuses that).
    pub fn seed_value(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    /// Reads a request from JSON: every field may be left out, unknown fields are ignored, and
    /// an error names the field that is wrong (`sampler_options.s_churn: invalid type ...`).
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::invalid("request", e.to_string()))?;
        if !value.is_object() {
            return Err(Error::invalid(
                "request",
                "a request is a JSON object of fields ({\"prompt\": ..., ...})",
            ));
        }
        // The text is parsed once; the fields are read from the parsed value.
        let sampler = value
            .get("sampler")
            .and_then(|v| v.as_str())
            .map(String::from);
        let schedule_given = value.get("schedule").is_some();
        let mut request: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.into_inner().to_string();
            match path.as_str() {
                "." => Error::invalid("request", msg),
                field => Error::invalid("request", format!("field `{field}`: {msg}")),
            }
        })?;
        // A1111's sampler names ("DPM++ 2M") select A1111's sampling, as on the command line,
        // and a schedule at the end ("DPM++ 2M Karras") is the schedule unless one is given.
        if let Some(name) = sampler {
            let (_, flavor, schedule) = crate::scheduler::parse_sampler_and_schedule(&name)?;
            if request.sampler_options.flavor.is_none() {
                request.sampler_options.flavor = flavor;
            }
            if let (Some(schedule), false) = (schedule, schedule_given) {
                request.schedule = schedule;
            }
        }
        Ok(request)
    }

    /// The request as pretty-printed JSON (every field written).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a request always serializes")
    }

    /// The JSON Schema (draft 2020-12) of a request as [`Self::from_json`] reads it: every
    /// field with its type, default and documentation (the doc comments above).
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(GenerationRequest))
            .expect("a schema always serializes")
    }

    /// Whether classifier-free guidance runs (an unconditional pass beside the conditional one):
    /// above CFG scale 1, and always for a sampler that steps along the unconditional
    /// prediction (CFG++).
    pub fn uses_cfg(&self) -> bool {
        self.cfg_scale > 1.0 || self.sampler.needs_uncond()
    }

    /// The sampler options to build with: `sampler_options`, with `eta` filling in DDIM's eta
    /// (also DDIM CFG++'s) when the options leave it unset.
    pub fn resolved_sampler_options(&self) -> SamplerOptions {
        let mut options = self.sampler_options.clone();
        if options.eta.is_none() && self.sampler.uses_ddim_eta() {
            options.eta = Some(self.eta);
        }
        options
    }

    /// The number of steps img2img actually runs (all of them for txt2img), as diffusers counts.
    pub fn effective_steps(&self) -> usize {
        if self.init_image.is_some() {
            ((self.steps as f64 * self.strength) as usize).min(self.steps)
        } else {
            self.steps
        }
    }

    /// Checks every parameter against the model's spatial factor (8 for SD's VAE), before any
    /// work starts. The error names the parameter and says what is allowed.
    pub fn validate(&self, spatial_factor: usize) -> Result<()> {
        for (what, text) in [
            ("prompt", &self.prompt),
            ("negative prompt", &self.negative_prompt),
        ] {
            if text.len() > MAX_PROMPT_BYTES {
                return Err(Error::invalid(
                    what,
                    format!(
                        "{} bytes is above the limit of {MAX_PROMPT_BYTES} bytes",
                        text.len()
                    ),
                ));
            }
        }
        for (what, value) in [("width", self.width), ("height", self.height)] {
            let Some(value) = value else {
                continue; // refused below, after the values that are set
            };
            if value == 0 || value % spatial_factor != 0 {
                return Err(Error::invalid(
                    what,
                    format!("{value} is not a positive multiple of {spatial_factor}"),
                ));
            }
            if value > MAX_SIDE {
                return Err(Error::invalid(
                    what,
                    format!("{value} is above the limit of {MAX_SIDE} pixels"),
                ));
            }
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(Error::invalid(
                "steps",
                format!("{} is not in 1..={MAX_STEPS}", self.steps),
            ));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(Error::invalid(
                "batch size",
                format!("{} is not in 1..={MAX_BATCH}", self.batch_size),
            ));
        }
        if !self.cfg_scale.is_finite() || self.cfg_scale < 0.0 {
            return Err(Error::invalid(
                "cfg scale",
                format!("{} is not a finite number >= 0", self.cfg_scale),
            ));
        }
        if !self.eta.is_finite() || self.eta < 0.0 {
            return Err(Error::invalid(
                "eta",
                format!("{} is not a finite number >= 0", self.eta),
            ));
        }
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            return Err(Error::invalid(
                "strength",
                format!("{} is outside (0, 1]", self.strength),
            ));
        }
        if self.mask.is_some() && self.init_image.is_none() {
            return Err(Error::invalid(
                "mask",
                "a mask needs an init image to inpaint (--init-image)",
            ));
        }
        if !(self.refiner_switch > 0.0 && self.refiner_switch < 1.0) {
            return Err(Error::invalid(
                "refiner switch",
                format!("{} is outside (0, 1)", self.refiner_switch),
            ));
        }
        if self.refiner.is_some() && self.init_image.is_some() {
            return Err(Error::invalid(
                "refiner",
                "the refiner handoff follows a txt2img run; for img2img, run the refiner model itself with --init-image",
            ));
        }
        for (what, value) in [
            ("aesthetic score", self.aesthetic_score),
            ("negative aesthetic score", self.negative_aesthetic_score),
        ] {
            if !value.is_finite() {
                return Err(Error::invalid(
                    what,
                    format!("{value} is not a finite number"),
                ));
            }
        }
        if self.clip_skip == 0 {
            return Err(Error::invalid(
                "clip skip",
                "0 is not allowed: 1 is the last layer, 2 the penultimate, ...",
            ));
        }
        if self.eta_noise_seed_delta != 0 && !self.per_image_seeds()? {
            return Err(Error::invalid(
                "eta noise seed delta",
                format!(
                    "ENSD restarts A1111's per-image streams, which only the k-diffusion flavor \
                     uses; {} here follows diffusers (use its A1111 name or \
                     --sampler-flavor k-diffusion)",
                    self.sampler.name()
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.variation_strength) {
            return Err(Error::invalid(
                "variation strength",
                format!("{} is outside [0, 1]", self.variation_strength),
            ));
        }
        if let Some((w, h)) = self.seed_resize_from {
            if w < spatial_factor || h < spatial_factor || w > MAX_SIDE || h > MAX_SIDE {
                return Err(Error::invalid(
                    "seed resize from",
                    format!("{w}x{h} is not within {spatial_factor}..={MAX_SIDE} pixels a side"),
                ));
            }
        }
        if self.init_image.is_some() && self.effective_steps() == 0 {
            return Err(Error::invalid(
                "strength",
                format!(
                    "{} of {} steps runs no step at all; raise --strength or --steps",
                    self.strength, self.steps
                ),
            ));
        }
        for (what, unset) in [
            ("width", self.width.is_none()),
            ("height", self.height.is_none()),
        ] {
            if unset {
                return Err(Error::invalid(
                    what,
                    "unset: a run fills in the model's native size (or the init image's)",
                ));
            }
        }
        if self.seed.is_none() {
            return Err(Error::invalid(
                "seed",
                "unset: a run picks a random one and reports it",
            ));
        }
        Ok(())
    }
}
