//! A1111's txt2img / img2img request body, with A1111's field names and defaults, and the
//! library requests (one per iteration) that it stands for.
//!
//! Unknown fields are ignored and a `null` means "the default" (clients send every field they
//! know). Fields that would change A1111's image but are not built here are refused with 422
//! naming the field, unless they hold A1111's default.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stable_diffusion::image::ImageData;
use stable_diffusion::pipeline::{
    random_seed, Asset, GenerationRequest, HiresFix, HiresUpscaler, ModelStore, MAX_BATCH,
};
use stable_diffusion::prompt::PromptSyntax;
use stable_diffusion::scheduler::{parse_sampler_and_schedule, SigmaSchedule};

use super::options::Options;
use crate::error::Api;
use crate::ApiError;

/// The fields of A1111's `StableDiffusionProcessingTxt2Img` / `Img2Img` API models that this
/// server reads, with A1111's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Body {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
    /// Prompt styles by name (none are defined here; named ones are refused).
    pub styles: Vec<String>,
    /// The seed; -1 draws a random one.
    pub seed: i64,
    /// The variation seed; -1 draws a random one when `subseed_strength` is set.
    pub subseed: i64,
    /// How far toward the variation seed's noise, in [0, 1].
    pub subseed_strength: f64,
    /// Seed resize: the height the noise is made at (≤ 0: off).
    pub seed_resize_from_h: i64,
    /// Seed resize: the width the noise is made at (≤ 0: off).
    pub seed_resize_from_w: i64,
    /// The sampler's A1111 name, possibly with a schedule ("DPM++ 2M Karras").
    pub sampler_name: Option<String>,
    /// The legacy sampler field, read when `sampler_name` is unset.
    pub sampler_index: String,
    /// The schedule: a name or label ("karras", "Karras", "automatic").
    pub scheduler: Option<String>,
    /// Images per iteration.
    pub batch_size: usize,
    /// Iterations (batches run one after another).
    pub n_iter: usize,
    /// Sampling steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub cfg_scale: f64,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The sampler's eta (DDIM's, or the ancestral samplers'); unset: the options'.
    pub eta: Option<f64>,
    /// Karras churn.
    pub s_churn: Option<f64>,
    /// Highest churned sigma (0: infinity).
    pub s_tmax: Option<f64>,
    /// Lowest churned sigma.
    pub s_tmin: Option<f64>,
    /// Noise scale.
    pub s_noise: Option<f64>,
    /// Settings for this request only (`sd_model_checkpoint`, `CLIP_stop_at_last_layers`, ...).
    pub override_settings: Map<String, Value>,
    /// Whether `override_settings` end with the request (false: they are kept).
    pub override_settings_restore_afterwards: bool,
    /// The SDXL refiner checkpoint.
    pub refiner_checkpoint: Option<String>,
    /// Where the refiner takes over, a fraction of the steps.
    pub refiner_switch_at: Option<f64>,
    /// Restore faces (not supported: true is refused).
    pub restore_faces: Option<bool>,
    /// Tiling (not supported: true is refused).
    pub tiling: Option<bool>,
    /// Hires fix on (txt2img).
    pub enable_hr: bool,
    /// Hires scale.
    pub hr_scale: f64,
    /// Hires upscaler ("Latent", "Lanczos").
    pub hr_upscaler: Option<String>,
    /// Hires steps (0: the first pass's).
    pub hr_second_pass_steps: usize,
    /// Hires target width (0: from the scale).
    pub hr_resize_x: usize,
    /// Hires target height (0: from the scale).
    pub hr_resize_y: usize,
    /// Hires checkpoint (only the same one).
    pub hr_checkpoint_name: Option<String>,
    /// Hires sampler (only the same one).
    pub hr_sampler_name: Option<String>,
    /// Hires scheduler (only the same one).
    pub hr_scheduler: Option<String>,
    /// Hires prompt (only the same one, or empty).
    pub hr_prompt: String,
    /// Hires negative prompt (only the same one, or empty).
    pub hr_negative_prompt: String,
    /// Denoising strength: img2img's, or the hires pass's.
    pub denoising_strength: Option<f64>,
    /// Whether the reply carries the images.
    pub send_images: bool,
    /// Whether A1111 would save them (this server never writes files).
    pub save_images: bool,
    /// A script by name (none are installed: a name is refused).
    pub script_name: Option<String>,
    /// Always-on scripts' arguments (none are installed: entries are refused).
    pub alwayson_scripts: Map<String, Value>,
    /// img2img: the start images (raw base64 or data: URIs; one is supported).
    pub init_images: Option<Vec<String>>,
    /// img2img: the inpainting mask (white repaints).
    pub mask: Option<String>,
    /// img2img: 1 inverts the mask.
    pub inpainting_mask_invert: i64,
    /// img2img: mask blur in pixels (read, not applied yet).
    pub mask_blur: Option<i64>,
    /// img2img: what fills the masked area first (read, not applied yet).
    pub inpainting_fill: i64,
    /// img2img: inpaint at full resolution (read, not applied yet).
    pub inpaint_full_res: bool,
    /// img2img: padding of the full-resolution crop (read, not applied yet).
    pub inpaint_full_res_padding: i64,
    /// img2img: how the init image is fitted (0: just resize; the others are not built).
    pub resize_mode: i64,
    /// img2img: append the init images to the reply's images.
    pub include_init_images: bool,
}

impl Default for Body {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            styles: Vec::new(),
            seed: -1,
            subseed: -1,
            subseed_strength: 0.0,
            seed_resize_from_h: -1,
            seed_resize_from_w: -1,
            sampler_name: None,
            sampler_index: "Euler".into(),
            scheduler: None,
            batch_size: 1,
            n_iter: 1,
            steps: 50,
            cfg_scale: 7.0,
            width: 512,
            height: 512,
            eta: None,
            s_churn: None,
            s_tmax: None,
            s_tmin: None,
            s_noise: None,
            override_settings: Map::new(),
            override_settings_restore_afterwards: true,
            refiner_checkpoint: None,
            refiner_switch_at: None,
            restore_faces: None,
            tiling: None,
            enable_hr: false,
            hr_scale: 2.0,
            hr_upscaler: None,
            hr_second_pass_steps: 0,
            hr_resize_x: 0,
            hr_resize_y: 0,
            hr_checkpoint_name: None,
            hr_sampler_name: None,
            hr_scheduler: None,
            hr_prompt: String::new(),
            hr_negative_prompt: String::new(),
            denoising_strength: None,
            send_images: true,
            save_images: false,
            script_name: None,
            alwayson_scripts: Map::new(),
            init_images: None,
            mask: None,
            inpainting_mask_invert: 0,
            mask_blur: None,
            inpainting_fill: 0,
            inpaint_full_res: true,
            inpaint_full_res_padding: 0,
            resize_mode: 0,
            include_init_images: false,
        }
    }
}

/// The fields only img2img reads, left out of txt2img's `parameters`.
pub const IMG2IMG_ONLY: &[&str] = &[
    "init_images",
    "mask",
    "inpainting_mask_invert",
    "mask_blur",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "resize_mode",
    "include_init_images",
];

/// The fields only txt2img reads, left out of img2img's `parameters`.
pub const TXT2IMG_ONLY: &[&str] = &[
    "enable_hr",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
];

/// Which route a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `/sdapi/v1/txt2img`.
    Txt2Img,
    /// `/sdapi/v1/img2img`.
    Img2Img,
}

/// Parses a JSON body: an object, `null` fields dropped (the default), unknown ones ignored;
/// an error names the field.
pub fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::invalid(
            "the body must be a JSON object of fields ({\"prompt\": ..., ...})",
        ));
    };
    fields.retain(|_, v| !v.is_null());
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." => ApiError::invalid(inner.to_string()),
            field => ApiError::field(field, inner),
        }
    })
}

/// A base64 image field (raw or a `data:` URI), `field` named in errors.
pub fn image_field(field: &str, text: &str) -> Result<ImageData, ApiError> {
    ImageData::from_base64(text).map_err(|e| ApiError::field(field, e))
}

/// The library requests of `body`, one per iteration, with the server `options` and the
/// per-request `override_settings` applied; names are checked in `store` now, so an unknown
/// model is refused before the job is queued.
pub fn requests(
    body: &Body,
    mode: Mode,
    options: &Options,
    store: &ModelStore,
) -> Result<Vec<GenerationRequest>, ApiError> {
    let mut options = options.clone();
    options.apply(&body.override_settings, "override_settings.")?;
    refuse_unsupported(body, mode)?;

    let mut request = GenerationRequest {
        prompt: body.prompt.clone(),
        negative_prompt: body.negative_prompt.clone(),
        prompt_syntax: PromptSyntax::A1111,
        width: Some(body.width),
        height: Some(body.height),
        steps: body.steps,
        cfg_scale: body.cfg_scale,
        batch_size: body.batch_size,
        rng: options.rng,
        clip_skip: options.clip_skip,
        eta_noise_seed_delta: options.eta_noise_seed_delta,
        ..GenerationRequest::default()
    };
    if body.n_iter == 0 || body.n_iter > MAX_BATCH {
        return Err(ApiError::field(
            "n_iter",
            format!("{} is not in 1..={MAX_BATCH}", body.n_iter),
        ));
    }

    // The model: the options' (or this request's override), checked now.
    let setting = |key: &str| match body.override_settings.contains_key(key) {
        true => format!("override_settings.{key}"),
        false => key.to_string(),
    };
    if let Some(name) = &options.model {
        store
            .resolve(Asset::Checkpoint, name)
            .map_err(|e| ApiError::field(&setting("sd_model_checkpoint"), e))?;
        request.model = Some(name.clone());
    }
    if let Some(name) = &options.vae {
        store
            .resolve(Asset::Vae, name)
            .map_err(|e| ApiError::field(&setting("sd_vae"), e))?;
        request.vae = Some(name.clone());
    }

    // Sampler and schedule: A1111's names select A1111's (k-diffusion) sampling.
    let (field, name) = match &body.sampler_name {
        Some(name) => ("sampler_name", name.as_str()),
        None => ("sampler_index", body.sampler_index.as_str()),
    };
    let (sampler, flavor, named_schedule) =
        parse_sampler_and_schedule(name).map_err(|e| ApiError::field(field, e))?;
    request.sampler = sampler;
    request.sampler_options.flavor = flavor;
    request.schedule = match body.scheduler.as_deref() {
        Some(text) if !text.trim().is_empty() => text
            .parse::<SigmaSchedule>()
            .map_err(|e| ApiError::field("scheduler", e))?,
        _ => SigmaSchedule::Default,
    };
    if request.schedule == SigmaSchedule::Default {
        if let Some(schedule) = named_schedule {
            request.schedule = schedule;
        }
    }
    sampler_settings(&mut request, body, &options)?;
    request
        .sampler_options
        .resolve_flavor(request.sampler, request.schedule)
        .map_err(|e| ApiError::field(field, e))?;

    // Seeds.
    let seed = match body.seed {
        -1 => random_seed(),
        s if s < 0 => return Err(ApiError::field("seed", format!("{s} is not -1 or >= 0"))),
        s => s as u64,
    };
    request.seed = Some(seed);
    if !(0.0..=1.0).contains(&body.subseed_strength) {
        return Err(ApiError::field(
            "subseed_strength",
            format!("{} is outside [0, 1]", body.subseed_strength),
        ));
    }
    if body.subseed_strength > 0.0 {
        let subseed = match body.subseed {
            -1 => random_seed(),
            s if s < 0 => return Err(ApiError::field("subseed", format!("{s} is not -1 or >= 0"))),
            s => s as u64,
        };
        request.variation_seed = Some(subseed);
        request.variation_strength = body.subseed_strength;
    }
    if body.seed_resize_from_w > 0 && body.seed_resize_from_h > 0 {
        request.seed_resize_from = Some((
            body.seed_resize_from_w as usize,
            body.seed_resize_from_h as usize,
        ));
    }

    // Refiner.
    if let Some(name) = body.refiner_checkpoint.as_deref().filter(|n| is_set(n)) {
        store
            .resolve(Asset::Checkpoint, name)
            .map_err(|e| ApiError::field("refiner_checkpoint", e))?;
        request.refiner = Some(name.to_string());
        if let Some(switch) = body.refiner_switch_at {
            request.refiner_switch = switch;
        }
    }

    match mode {
        Mode::Txt2Img => hires(&mut request, body)?,
        Mode::Img2Img => img2img(&mut request, body)?,
    }

    // The library's hires pass makes one image at a time; under A1111's per-image seeds a
    // batch is the same images made one by one.
    let mut runs = body.n_iter;
    if request.hires.is_some() && body.batch_size > 1 && body.batch_size <= MAX_BATCH {
        if !request.per_image_seeds().unwrap_or(false) {
            return Err(ApiError::field(
                "batch_size",
                "a hires batch needs A1111's per-image seeds (an A1111 sampler name)",
            ));
        }
        runs = body.n_iter * body.batch_size;
        request.batch_size = 1;
    }
    stable_diffusion::pipeline::precheck(&request)
        .map_err(|e| ApiError::from_library(&e, Api::A1111))?;

    // A1111's iterations: image i of the whole job has seed + i (the variation seed + i
    // under a variation), so run k starts at k · its batch size.
    let per_iteration = request.batch_size as u64;
    Ok((0..runs as u64)
        .map(|k| {
            let mut iteration = request.clone();
            let offset = k * per_iteration;
            if iteration.uses_variation() {
                iteration.variation_seed = iteration.variation_seed.map(|s| s + offset);
            } else {
                iteration.seed = Some(seed + offset);
            }
            iteration
        })
        .collect())
}

/// Whether an A1111 name field holds a choice (not empty, "None" or "Use same ...").
fn is_set(name: &str) -> bool {
    let name = name.trim();
    !(name.is_empty() || name.eq_ignore_ascii_case("none") || name.starts_with("Use same"))
}

/// Refuses fields that would change A1111's image but are not built here.
fn refuse_unsupported(body: &Body, mode: Mode) -> Result<(), ApiError> {
    if let Some(style) = body.styles.first() {
        return Err(ApiError::field(
            "styles",
            format!("style `{style}` is not defined (no prompt styles are)"),
        ));
    }
    if body.restore_faces == Some(true) {
        return Err(ApiError::field(
            "restore_faces",
            "face restoration is not supported",
        ));
    }
    if body.tiling == Some(true) {
        return Err(ApiError::field("tiling", "tiling is not supported"));
    }
    if let Some(name) = body.script_name.as_deref().filter(|n| is_set(n)) {
        return Err(ApiError::field(
            "script_name",
            format!("script `{name}` is not installed (no scripts are)"),
        ));
    }
    if let Some(name) = body.alwayson_scripts.keys().next() {
        return Err(ApiError::field(
            "alwayson_scripts",
            format!("script `{name}` is not installed (no scripts are)"),
        ));
    }
    if mode == Mode::Txt2Img && body.enable_hr {
        let same_sampler = |s: &Option<String>, main: &Option<String>| match s {
            Some(name) if is_set(name) => Some(name) == main.as_ref(),
            _ => true,
        };
        if !same_sampler(&body.hr_sampler_name, &body.sampler_name) {
            return Err(ApiError::field(
                "hr_sampler_name",
                "a hires sampler other than the first pass's is not supported",
            ));
        }
        if !same_sampler(&body.hr_scheduler, &body.scheduler) {
            return Err(ApiError::field(
                "hr_scheduler",
                "a hires scheduler other than the first pass's is not supported",
            ));
        }
        if body.hr_checkpoint_name.as_deref().is_some_and(is_set) {
            return Err(ApiError::field(
                "hr_checkpoint_name",
                "a hires checkpoint other than the first pass's is not supported",
            ));
        }
        for (field, text, main) in [
            ("hr_prompt", &body.hr_prompt, &body.prompt),
            (
                "hr_negative_prompt",
                &body.hr_negative_prompt,
                &body.negative_prompt,
            ),
        ] {
            if !text.is_empty() && text != main {
                return Err(ApiError::field(
                    field,
                    "a hires prompt other than the first pass's is not supported",
                ));
            }
        }
    }
    Ok(())
}

/// Eta and the churn settings, set only where they differ from A1111's defaults (so the
/// infotext is the one `sd generate` writes for the same image).
fn sampler_settings(
    request: &mut GenerationRequest,
    body: &Body,
    options: &Options,
) -> Result<(), ApiError> {
    for (field, value) in [
        ("eta", body.eta),
        ("s_churn", body.s_churn),
        ("s_tmax", body.s_tmax),
        ("s_tmin", body.s_tmin),
        ("s_noise", body.s_noise),
    ] {
        if let Some(v) = value {
            if !v.is_finite() || v < 0.0 {
                return Err(ApiError::field(
                    field,
                    format!("{v} is not a finite number >= 0"),
                ));
            }
        }
    }
    if request.sampler.uses_ddim_eta() {
        request.eta = body.eta.unwrap_or(options.eta_ddim);
    } else {
        let eta = body.eta.unwrap_or(options.eta_ancestral);
        if eta != 1.0 {
            request.sampler_options.eta = Some(eta);
        }
    }
    let defaults = [
        (body.s_churn.unwrap_or(options.s_churn), 0.0),
        (body.s_tmin.unwrap_or(options.s_tmin), 0.0),
        (body.s_tmax.unwrap_or(options.s_tmax), 0.0),
        (body.s_noise.unwrap_or(options.s_noise), 1.0),
    ];
    let slots = [
        &mut request.sampler_options.s_churn,
        &mut request.sampler_options.s_tmin,
        &mut request.sampler_options.s_tmax,
        &mut request.sampler_options.s_noise,
    ];
    for ((value, default), slot) in defaults.into_iter().zip(slots) {
        if value != default {
            *slot = Some(value);
        }
    }
    Ok(())
}

/// txt2img's hires fix.
fn hires(request: &mut GenerationRequest, body: &Body) -> Result<(), ApiError> {
    if !body.enable_hr {
        return Ok(());
    }
    let upscaler = match body.hr_upscaler.as_deref() {
        Some(name) if is_set(name) => name
            .parse::<HiresUpscaler>()
            .map_err(|e| ApiError::field("hr_upscaler", e))?,
        // A1111's first hires upscaler.
        _ => HiresUpscaler::Latent,
    };
    let resize = (body.hr_resize_x > 0 || body.hr_resize_y > 0)
        .then_some((body.hr_resize_x, body.hr_resize_y));
    if !body.hr_scale.is_finite() || body.hr_scale <= 0.0 {
        return Err(ApiError::field(
            "hr_scale",
            format!("{} is not a number > 0", body.hr_scale),
        ));
    }
    request.hires = Some(HiresFix {
        scale: body.hr_scale,
        steps: body.hr_second_pass_steps,
        strength: body.denoising_strength.unwrap_or(0.75),
        upscaler,
        resize,
    });
    Ok(())
}

/// img2img's init image and mask.
fn img2img(request: &mut GenerationRequest, body: &Body) -> Result<(), ApiError> {
    let images = body.init_images.as_deref().unwrap_or_default();
    let Some(first) = images.first() else {
        return Err(ApiError::field(
            "init_images",
            "img2img needs an init image (a list of one base64 image)",
        ));
    };
    if images.len() > 1 {
        return Err(ApiError::field(
            "init_images",
            format!("{} images given; one is supported", images.len()),
        ));
    }
    if body.resize_mode != 0 {
        return Err(ApiError::field(
            "resize_mode",
            format!("{} is not supported (0: just resize is)", body.resize_mode),
        ));
    }
    request.init_image = Some(image_field("init_images[0]", first)?);
    request.strength = body.denoising_strength.unwrap_or(0.75);
    if let Some(mask) = body.mask.as_deref().filter(|m| !m.is_empty()) {
        let data = image_field("mask", mask)?;
        request.mask = Some(match body.inpainting_mask_invert {
            0 => data,
            1 => invert(&data)?,
            other => {
                return Err(ApiError::field(
                    "inpainting_mask_invert",
                    format!("{other} is not 0 or 1"),
                ))
            }
        });
    }
    Ok(())
}

/// The mask with black and white swapped, as a PNG.
fn invert(mask: &ImageData) -> Result<ImageData, ApiError> {
    let mut image = mask
        .decode("mask")
        .map_err(|e| ApiError::field("mask", e))?;
    image::imageops::invert(&mut image);
    let png = stable_diffusion::image::encode_png(&image, &[])
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(ImageData(png))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stable_diffusion::pipeline::RngKind;
    use stable_diffusion::scheduler::{SamplerFlavor, SamplerKind};

    fn body(json: &str) -> Body {
        parse_json(json.as_bytes()).unwrap()
    }

    fn one(json: &str) -> GenerationRequest {
        let mut all = requests(
            &body(json),
            Mode::Txt2Img,
            &Options::default(),
            &ModelStore::new(),
        )
        .unwrap();
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    #[test]
    fn defaults_are_a1111s() {
        let request = one("{}");
        assert_eq!(request.steps, 50);
        assert_eq!(request.cfg_scale, 7.0);
        assert_eq!((request.width, request.height), (Some(512), Some(512)));
        assert_eq!(request.sampler, SamplerKind::Euler);
        assert_eq!(
            request.sampler_options.flavor,
            Some(SamplerFlavor::KDiffusion)
        );
        assert_eq!(request.rng, RngKind::Cuda);
        assert_eq!(request.prompt_syntax, PromptSyntax::A1111);
        assert!(request.seed.is_some());
    }

    #[test]
    fn nulls_and_unknown_fields_are_the_defaults() {
        let request = one(r#"{"steps": null, "cfg_scale": null, "no_such_field": [1, 2]}"#);
        assert_eq!(request.steps, 50);
        assert_eq!(request.cfg_scale, 7.0);
    }

    #[test]
    fn combined_sampler_names_set_the_schedule() {
        let request = one(r#"{"sampler_name": "DPM++ 2M Karras"}"#);
        assert_eq!(request.sampler, SamplerKind::DpmPp2M);
        assert_eq!(request.schedule, SigmaSchedule::Karras);
        let request = one(r#"{"sampler_index": "Euler a", "scheduler": "Exponential"}"#);
        assert_eq!(request.sampler, SamplerKind::EulerA);
        assert_eq!(request.schedule, SigmaSchedule::Exponential);
    }

    #[test]
    fn clip_skip_and_rng_come_from_override_settings() {
        let request =
            one(r#"{"override_settings": {"CLIP_stop_at_last_layers": 2, "randn_source": "CPU"}}"#);
        assert_eq!(request.clip_skip, 2);
        assert_eq!(request.rng, RngKind::Cpu);
    }

    #[test]
    fn iterations_advance_the_seed_by_the_batch() {
        let all = requests(
            &body(r#"{"seed": 10, "batch_size": 2, "n_iter": 3}"#),
            Mode::Txt2Img,
            &Options::default(),
            &ModelStore::new(),
        )
        .unwrap();
        let seeds: Vec<_> = all.iter().map(|r| r.seed.unwrap()).collect();
        assert_eq!(seeds, [10, 12, 14]);
    }

    #[test]
    fn a_hires_batch_runs_image_by_image_with_a1111s_seeds() {
        let all = requests(
            &body(r#"{"seed": 3, "batch_size": 2, "n_iter": 2, "enable_hr": true, "sampler_name": "Euler a"}"#),
            Mode::Txt2Img,
            &Options::default(),
            &ModelStore::new(),
        )
        .unwrap();
        let seeds: Vec<_> = all
            .iter()
            .map(|r| (r.seed.unwrap(), r.batch_size))
            .collect();
        assert_eq!(seeds, [(3, 1), (4, 1), (5, 1), (6, 1)]);
    }

    #[test]
    fn hires_fields_make_a_hires_fix() {
        let request = one(
            r#"{"enable_hr": true, "hr_scale": 1.5, "hr_second_pass_steps": 3, "denoising_strength": 0.5}"#,
        );
        let hires = request.hires.unwrap();
        assert_eq!(hires.scale, 1.5);
        assert_eq!(hires.steps, 3);
        assert_eq!(hires.strength, 0.5);
        assert_eq!(hires.upscaler, HiresUpscaler::Latent);
    }

    fn error(json: &str, mode: Mode) -> ApiError {
        let body = match parse_json::<Body>(json.as_bytes()) {
            Ok(body) => body,
            Err(e) => return e,
        };
        requests(&body, mode, &Options::default(), &ModelStore::new()).unwrap_err()
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, field) in [
            (r#"{"steps": "many"}"#, "`steps`"),
            (r#"{"width": -64}"#, "`width`"),
            (r#"{"sampler_name": "warp"}"#, "`sampler_name`"),
            (r#"{"scheduler": "warp"}"#, "`scheduler`"),
            (r#"{"steps": 0}"#, "`steps`"),
            (r#"{"batch_size": 0}"#, "`batch_size`"),
            (r#"{"n_iter": 0}"#, "`n_iter`"),
            (r#"{"width": 65}"#, "`width`"),
            (r#"{"seed": -7}"#, "`seed`"),
            (r#"{"styles": ["fancy"]}"#, "`styles`"),
            (
                r#"{"override_settings": {"sd_model_checkpoint": "nope"}}"#,
                "`override_settings.sd_model_checkpoint`",
            ),
            (
                r#"{"override_settings": {"CLIP_stop_at_last_layers": "two"}}"#,
                "`override_settings.CLIP_stop_at_last_layers`",
            ),
        ] {
            let err = error(json, Mode::Txt2Img);
            assert_eq!(err.status.as_u16(), 422, "{json}: {err}");
            assert!(err.message.contains(field), "{json}: {}", err.message);
        }
        let err = error(r#"{"init_images": ["%%%"]}"#, Mode::Img2Img);
        assert!(err.message.contains("`init_images[0]`"), "{}", err.message);
        let err = error("{}", Mode::Img2Img);
        assert!(err.message.contains("`init_images`"), "{}", err.message);
        let err = error("[1, 2]", Mode::Txt2Img);
        assert!(err.message.contains("JSON object"), "{}", err.message);
        let err = error("{\"steps\": ", Mode::Txt2Img);
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
    }
}
