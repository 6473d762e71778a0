//! The txt2img / img2img reply: `{images, parameters, info}`, `info` a JSON string with
//! A1111's keys (`all_seeds`, `infotexts`, `sd_model_name`, ...).

use serde_json::{json, Value};
use stable_diffusion::image::{encode_png, PARAMETERS_KEY};
use stable_diffusion::pipeline::RunOutput;

use super::request::{Body, Mode, IMG2IMG_ONLY, TXT2IMG_ONLY};
use crate::ApiError;

/// What A1111 reports as its version in `info`.
pub const VERSION: &str = concat!("sd-rs ", env!("CARGO_PKG_VERSION"));

/// The shape of a txt2img / img2img reply (its schema; [`reply`] builds it).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
pub struct GenerationReply {
    /// The images: raw base64 PNGs (no `data:` prefix) with their infotexts.
    images: Vec<String>,
    /// The request's fields with their defaults.
    parameters: serde_json::Map<String, Value>,
    /// A JSON string with A1111's keys (all_seeds, infotexts, sd_model_name, ...).
    info: String,
}

/// The reply for `body` from the finished iterations `outputs`; `timestamp` is the job's.
pub fn reply(
    body: &Body,
    mode: Mode,
    outputs: &[RunOutput],
    timestamp: &str,
) -> Result<Value, ApiError> {
    let mut images = Vec::new();
    let mut infotexts = Vec::new();
    let mut seeds = Vec::new();
    let mut subseeds = Vec::new();
    for output in outputs {
        for (index, (image, info)) in output.images.iter().zip(&output.infotexts).enumerate() {
            let text = info.to_string();
            if body.send_images {
                let png = encode_png(image, &[(PARAMETERS_KEY.to_string(), text.clone())])
                    .map_err(|e| ApiError::internal(format!("encoding a PNG: {e}")))?;
                images.push(Value::String(
                    stable_diffusion::image::ImageData(png).to_base64(),
                ));
            }
            infotexts.push(text);
            seeds.push(output.seeds.get(index).copied().unwrap_or_default());
            let subseed = match output.request.variation_seed {
                Some(s) if output.request.per_image_seeds().unwrap_or(false) => s + index as u64,
                Some(s) => s,
                None => 0,
            };
            subseeds.push(subseed);
        }
    }
    if mode == Mode::Img2Img && body.include_init_images && body.send_images {
        for image in body.init_images.iter().flatten() {
            let data = super::request::image_field("init_images", image)?;
            images.push(Value::String(data.to_base64()));
        }
    }
    let first = outputs.first();
    let request = first.map(|o| &o.request);
    let first_info = first.and_then(|o| o.infotexts.first());
    let count = infotexts.len();
    let info = json!({
        "prompt": body.prompt,
        "all_prompts": vec![&body.prompt; count],
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": vec![&body.negative_prompt; count],
        "seed": seeds.first().copied().or(request.and_then(|r| r.seed)),
        "all_seeds": seeds,
        "subseed": subseeds.first().copied().unwrap_or_default(),
        "all_subseeds": subseeds,
        "subseed_strength": body.subseed_strength,
        "width": request.and_then(|r| r.width).unwrap_or(body.width),
        "height": request.and_then(|r| r.height).unwrap_or(body.height),
        "sampler_name": request.map(|r| r.sampler.a1111_name()),
        "cfg_scale": body.cfg_scale,
        "steps": body.steps,
        "batch_size": body.batch_size,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": first_info.and_then(|i| i.get("Model")),
        "sd_model_hash": first_info.and_then(|i| i.get("Model hash")),
        "sd_vae_name": first_info.and_then(|i| i.get("VAE")),
        "sd_vae_hash": null,
        "seed_resize_from_w": body.seed_resize_from_w,
        "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": denoising_strength(body, mode),
        "extra_generation_params": extra_params(first_info),
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": body.styles,
        "job_timestamp": timestamp,
        "clip_skip": request.map(|r| r.clip_skip).unwrap_or(1),
        "is_using_inpainting_conditioning": false,
        "version": VERSION,
    });
    Ok(json!({
        "images": images,
        "parameters": parameters(body, mode),
        "info": info.to_string(),
    }))
}

/// The denoising strength A1111 reports: img2img's, the hires pass's, else null.
fn denoising_strength(body: &Body, mode: Mode) -> Value {
    match mode {
        Mode::Img2Img => json!(body.denoising_strength.unwrap_or(0.75)),
        Mode::Txt2Img if body.enable_hr => json!(body.denoising_strength.unwrap_or(0.75)),
        Mode::Txt2Img => Value::Null,
    }
}

/// The infotext keys beyond A1111's fixed ones, as `extra_generation_params`.
fn extra_params(info: Option<&stable_diffusion::image::InfoText>) -> Value {
    const FIXED: &[&str] = &[
        "Steps",
        "Sampler",
        "CFG scale",
        "Seed",
        "Size",
        "Model hash",
        "Model",
    ];
    let mut extra = serde_json::Map::new();
    for (key, value) in info.map(|i| i.params.as_slice()).unwrap_or_default() {
        if !FIXED.contains(&key.as_str()) {
            extra.insert(key.clone(), Value::String(value.clone()));
        }
    }
    Value::Object(extra)
}

/// The request as A1111 echoes it: every field with its value or default, the other route's
/// fields left out, init images and mask not echoed back (A1111 leaves them out too).
pub fn parameters(body: &Body, mode: Mode) -> Value {
    let mut value = serde_json::to_value(body).unwrap_or_default();
    if let Value::Object(fields) = &mut value {
        let other = match mode {
            Mode::Txt2Img => IMG2IMG_ONLY,
            Mode::Img2Img => TXT2IMG_ONLY,
        };
        for key in other {
            fields.remove(*key);
        }
        if mode == Mode::Img2Img {
            fields.insert("init_images".into(), Value::Null);
            fields.insert("mask".into(), Value::Null);
        }
    }
    value
}
