//! The request as AUTOMATIC1111 infotext, and back: what a PNG carries so that it can be re-made.

use super::{GenerationRequest, HiresFix, HiresUpscaler, RngKind};
use crate::image::{format_float, InfoText};
use crate::prompt::PromptSyntax;
use crate::scheduler::{parse_sampler_and_schedule, SamplerFlavor, SigmaSchedule};
use crate::{Error, Result};

impl GenerationRequest {
    /// The infotext of image `batch_pos` of this request, with A1111's keys in A1111's order.
    /// `model_hash` is A1111's short hash when known.
    pub fn to_infotext(
        &self,
        model_name: &str,
        model_hash: Option<&str>,
        batch_pos: usize,
    ) -> InfoText {
        let mut info = InfoText::new(self.prompt.clone(), self.negative_prompt.clone())
            .with("Steps", self.steps)
            .with("Sampler", self.sampler.a1111_name())
            .with("Schedule type", self.schedule.a1111_name())
            .with("CFG scale", format_float(self.cfg_scale));
        // Under A1111's per-image seeds, image `batch_pos` is re-made alone from its own seeds
        // (as A1111 writes them); under one stream for the batch, from the request's seeds
        // with "Batch size" and "Batch pos".
        let per_image = self.per_image_seeds().unwrap_or(false);
        let (seed, variation_seed) = if per_image {
            self.a1111_image_seeds(batch_pos)
        } else {
            (self.seed_value(), self.variation_seed)
        };
        info.push("Seed", seed);
        info.push("Size", format!("{}x{}", self.width_px(), self.height_px()));
        if let Some(hash) = model_hash {
            info.push("Model hash", hash);
        }
        if !model_name.is_empty() {
            info.push("Model", model_name);
        }
        if let (true, Some(seed)) = (self.uses_variation(), variation_seed) {
            info.push("Variation seed", seed);
            info.push(
                "Variation seed strength",
                format_float(self.variation_strength),
            );
        }
        if let Some((w, h)) = self.seed_resize_from {
            info.push("Seed resize from", format!("{w}x{h}"));
        }
        if self.init_image.is_some() {
            info.push("Denoising strength", format_float(self.strength));
        }
        if let Some(hires) = &self.hires {
            info.push("Denoising strength", format_float(hires.strength));
        }
        if self.clip_skip > 1 {
            info.push("Clip skip", self.clip_skip);
        }
        if let Some(hires) = &self.hires {
            // As A1111: "Hires resize" replaces "Hires upscale" when a size was asked for.
            match hires.resize {
                Some((x, y)) if (x, y) != (0, 0) => info.push("Hires resize", format!("{x}x{y}")),
                _ => info.push("Hires upscale", format_float(hires.scale)),
            }
            if hires.steps > 0 {
                info.push("Hires steps", hires.steps);
            }
            info.push("Hires upscaler", hires.upscaler.a1111_name());
        }
        info.push("RNG", self.rng.a1111_name());
        if let Some(refiner) = &self.refiner {
            info.push("Refiner", refiner);
            info.push("Refiner switch at", format_float(self.refiner_switch));
        }
        if self.aesthetic_score != 6.0 {
            info.push("Aesthetic score", format_float(self.aesthetic_score));
        }
        if self.negative_aesthetic_score != 2.5 {
            info.push(
                "Negative aesthetic score",
                format_float(self.negative_aesthetic_score),
            );
        }
        if self.sampler.uses_ddim_eta() && self.eta != 0.0 {
            info.push("Eta DDIM", format_float(self.eta));
        }
        if self.batch_size > 1 && !per_image {
            info.push("Batch size", self.batch_size);
            info.push("Batch pos", batch_pos);
        }
        if self.eta_noise_seed_delta != 0 {
            info.push("ENSD", self.eta_noise_seed_delta);
        }
        if self.vae_tiling == Some(true) {
            info.push("VAE tiling", "True");
        }
        self.push_sampler_options(&mut info);
        info
    }

    /// The sampler settings beyond A1111's defaults, with A1111's key names where it has them.
    /// A run in the diffusers flavor says so ("Sampler flavor: diffusers"): without that key,
    /// infotext means A1111's (k-diffusion) sampling.
    fn push_sampler_options(&self, info: &mut InfoText) {
        let options = &self.sampler_options;
        if !self.sampler.uses_ddim_eta() {
            if let Some(eta) = options.eta {
                info.push("Eta", format_float(eta));
            }
        }
        for (key, value) in [
            ("Sigma churn", options.s_churn),
            ("Sigma tmin", options.s_tmin),
            ("Sigma tmax", options.s_tmax),
            ("Sigma noise", options.s_noise),
        ] {
            if let Some(v) = value {
                info.push(key, format_float(v));
            }
        }
        if let Some(list) = &options.sigmas {
            let text: Vec<String> = list.iter().map(|&v| format_float(v)).collect();
            info.push("Sigmas", text.join(" "));
        }
        if options.sdxl && self.schedule == SigmaSchedule::AlignYourSteps {
            info.push("AYS table", "SDXL");
        }
        if options.rescale_zero_snr {
            info.push("Zero terminal SNR", "True");
        }
        // A1111 always reads prompts with its syntax; a plain-syntax run says so.
        if self.prompt_syntax == PromptSyntax::Plain {
            info.push("Prompt syntax", PromptSyntax::Plain.name());
        }
        let flavor = options.resolve_flavor(self.sampler, self.schedule);
        if flavor.ok() == Some(SamplerFlavor::Diffusers) {
            info.push("Sampler flavor", SamplerFlavor::Diffusers.name());
        }
    }

    /// A request from infotext written by `sd` or AUTOMATIC1111. Keys it does not know are
    /// ignored; known keys with values it cannot use are errors naming the key.
    pub fn from_infotext(info: &InfoText) -> Result<Self> {
        let mut request = GenerationRequest {
            prompt: info.prompt.clone(),
            negative_prompt: info.negative_prompt.clone(),
            ..Default::default()
        };
        if let Some(v) = info.get("Steps") {
            request.steps = number("Steps", v)?;
        }
        if let Some(v) = info.get("Sampler") {
            let (sampler, _, schedule) = parse_sampler_and_schedule(v)?;
            request.sampler = sampler;
            if let Some(schedule) = schedule {
                request.schedule = schedule;
            }
            // Infotext without our flavor key was written by A1111: k-diffusion sampling.
            if sampler.kdiffusion_function().is_some() {
                request.sampler_options.flavor = Some(SamplerFlavor::KDiffusion);
            }
        }
        // As A1111 reads it: prompts are in its syntax unless ours says otherwise.
        request.prompt_syntax = match info.get("Prompt syntax") {
            Some(v) => v.parse()?,
            None => PromptSyntax::A1111,
        };
        if let Some(v) = info.get("Sampler flavor") {
            request.sampler_options.flavor = Some(v.parse()?);
        }
        let options = &mut request.sampler_options;
        for (key, slot) in [
            ("Eta", &mut options.eta),
            ("Sigma churn", &mut options.s_churn),
            ("Sigma tmin", &mut options.s_tmin),
            ("Sigma tmax", &mut options.s_tmax),
            ("Sigma noise", &mut options.s_noise),
        ] {
            if let Some(v) = info.get(key) {
                *slot = Some(number(key, v)?);
            }
        }
        if let Some(v) = info.get("Sigmas") {
            let list = v
                .split_whitespace()
                .map(|x| number("Sigmas", x))
                .collect::<Result<Vec<f64>>>()?;
            options.sigmas = Some(list);
        }
        options.sdxl = info.get("AYS table") == Some("SDXL");
        options.rescale_zero_snr = info.get("Zero terminal SNR") == Some("True");
        if let Some(v) = info.get("Schedule type") {
            request.schedule = v.parse()?;
        }
        if let Some(v) = info.get("VAE tiling") {
            request.vae_tiling = Some(v.trim().eq_ignore_ascii_case("true"));
        }
        if let Some(v) = info.get("Clip skip") {
            request.clip_skip = number("Clip skip", v)?;
        }
        if let Some(v) = info.get("CFG scale") {
            request.cfg_scale = number("CFG scale", v)?;
        }
        if let Some(v) = info.get("Seed") {
            request.seed = Some(number("Seed", v)?);
        }
        if let Some(v) = info.get("Size") {
            let (w, h) = size_pair("Size", v)?;
            (request.width, request.height) = (Some(w), Some(h));
        }
        if let Some(v) = info.get("Variation seed") {
            request.variation_seed = Some(number("Variation seed", v)?);
        }
        if let Some(v) = info.get("Variation seed strength") {
            request.variation_strength = number("Variation seed strength", v)?;
        }
        if let Some(v) = info.get("Seed resize from") {
            // A1111 writes -1x-1 for "off" in some versions.
            let (w, h): (i64, i64) = size_pair("Seed resize from", v)?;
            if w > 0 && h > 0 {
                request.seed_resize_from = Some((w as usize, h as usize));
            }
        }
        if let Some(v) = info.get("Denoising strength") {
            request.strength = number("Denoising strength", v)?;
        }
        // As A1111 reads it: no RNG key means its default, the GPU's (Philox) noise.
        request.rng = match info.get("RNG") {
            Some(v) => v.parse::<RngKind>()?,
            None => RngKind::Cuda,
        };
        if let Some(v) = info.get("Eta DDIM") {
            request.eta = number("Eta DDIM", v)?;
        }
        // The model as A1111 names it, `name [hash]`, for the model store to find.
        request.model = match (info.get("Model"), info.get("Model hash")) {
            (Some(name), Some(hash)) => Some(format!("{name} [{hash}]")),
            (Some(name), None) => Some(name.to_string()),
            (None, Some(hash)) => Some(hash.to_string()),
            (None, None) => None,
        };
        if let Some(v) = info.get("VAE") {
            request.vae = Some(v.to_string());
        }
        if let Some(v) = info.get("Refiner") {
            // A1111 writes "name [hash]", which the model store resolves.
            request.refiner = Some(v.trim().into());
        }
        if let Some(v) = info.get("Refiner switch at") {
            request.refiner_switch = number("Refiner switch at", v)?;
        }
        if let Some(v) = info.get("Aesthetic score") {
            request.aesthetic_score = number("Aesthetic score", v)?;
        }
        if let Some(v) = info.get("Negative aesthetic score") {
            request.negative_aesthetic_score = number("Negative aesthetic score", v)?;
        }
        // A1111 before 1.0 wrote the first pass's size as "First pass size" and the final
        // size as "Size"; its reader turns that into a "Hires resize" to the final size.
        let mut size = (request.width_px(), request.height_px());
        let mut resize = match info.get("Hires resize") {
            Some(v) => Some(size_pair("Hires resize", v)?),
            None => None,
        };
        if let Some(v) = info.get("First pass size") {
            let (w, h) = size_pair("First pass size", v)?;
            let first = if w == 0 || h == 0 {
                old_first_pass_size(size.0, size.1)
            } else {
                (w, h)
            };
            resize = Some(size);
            size = first;
        }
        if size != (0, 0) {
            (request.width, request.height) = (Some(size.0), Some(size.1));
        }
        let resize = resize.filter(|&r| r != (0, 0));
        if let Some(v) = info.get("Hires upscale").or(resize.map(|_| "1")) {
            let strength = match info.get("Denoising strength") {
                Some(v) => number("Denoising strength", v)?,
                None => 0.7,
            };
            // A1111's default upscaler is "Latent"; others it names (ESRGAN, ...) are not
            // built here and are refused by name.
            let upscaler = match info.get("Hires upscaler") {
                Some(v) => v.parse::<HiresUpscaler>()?,
                None => HiresUpscaler::Latent,
            };
            request.hires = Some(HiresFix {
                scale: number("Hires upscale", v)?,
                steps: match info.get("Hires steps") {
                    Some(v) => number("Hires steps", v)?,
                    None => 0,
                },
                strength,
                upscaler,
                resize,
            });
        }
        if let Some(v) = info.get("Batch size") {
            request.batch_size = number("Batch size", v)?;
        }
        if let Some(v) = info.get("ENSD") {
            request.eta_noise_seed_delta = number("ENSD", v)?;
        }
        Ok(request)
    }
}

/// A `WxH` value of the key `key`, each side parsed as `T`.
fn size_pair<T: std::str::FromStr>(key: &str, value: &str) -> Result<(T, T)> {
    let (w, h) = value.split_once('x').ok_or_else(|| {
        Error::invalid("infotext", format!("{key} `{value}` is not WIDTHxHEIGHT"))
    })?;
    Ok((number(key, w)?, number(key, h)?))
}

/// A1111's old hires fix's first pass when its size was left at 0x0: about 512² pixels in the
/// final size's aspect ratio, each side rounded up to a multiple of 64
/// (`old_hires_fix_first_pass_dimensions`).
fn old_first_pass_size(width: usize, height: usize) -> (usize, usize) {
    let scale = ((512.0 * 512.0) / (width.max(1) * height.max(1)) as f64).sqrt();
    let side = |v: usize| ((scale * v as f64 / 64.0).ceil() as usize) * 64;
    (side(width), side(height))
}

/// Infotext keys that change AUTOMATIC1111's image but that this engine does not build, with
/// the values A1111 means by "off"; a request read from infotext holding one of them with
/// another value makes a different image.
const UNSUPPORTED_KEYS: &[(&str, &[&str])] = &[
    ("Hires sampler", &["Use same sampler"]),
    ("Hires schedule type", &["Use same scheduler"]),
    ("Hires checkpoint", &["Use same checkpoint"]),
    ("Hires prompt", &[""]),
    ("Hires negative prompt", &[""]),
    ("Hires CFG Scale", &[]),
    ("Hires Distilled CFG Scale", &[]),
    ("Tiling", &["False"]),
    ("Face restoration", &[]),
    ("Emphasis", &["Original"]),
    ("Schedule rho", &["0"]),
    ("Schedule max sigma", &["0"]),
    ("Schedule min sigma", &["0"]),
    ("Hypernet", &[]),
    ("Noise multiplier", &["1", "1.0"]),
    ("Token merging ratio", &["0", "0.0"]),
    ("Token merging ratio hr", &["0", "0.0"]),
    ("NGMS", &["0", "0.0"]),
    ("Pad conds", &["False"]),
    ("Discard penultimate sigma", &["False"]),
    ("SGM noise multiplier", &["False"]),
    ("VAE Encoder", &["Full"]),
    ("VAE Decoder", &["Full"]),
    ("FP8 weight", &["Disable"]),
    ("Downcast alphas_cumprod", &["False"]),
    ("Skip Early CFG", &["0", "0.0"]),
    ("Conditional mask weight", &["1", "1.0"]),
];

impl GenerationRequest {
    /// The keys of `info` that change A1111's image but that a request cannot carry, as
    /// `key: value`; reading `info` ignores them, so the caller should warn that the image
    /// will differ.
    pub fn unsupported_infotext_keys(info: &InfoText) -> Vec<String> {
        UNSUPPORTED_KEYS
            .iter()
            .filter_map(|(key, off)| {
                let value = info.get(key)?;
                (!off.contains(&value.trim())).then(|| format!("{key}: {value}"))
            })
            .collect()
    }
}

/// A1111's `Lora hashes` / `TI hashes` value: `name: hash` pairs joined by `, `, with `:` and
/// `,` removed from each name as A1111 removes them (its reader splits on both).
pub fn format_network_hashes<N: AsRef<str>, H: std::fmt::Display>(
    pairs: impl IntoIterator<Item = (N, H)>,
) -> String {
    pairs
        .into_iter()
        .map(|(name, hash)| {
            let name: String = name
                .as_ref()
                .chars()
                .filter(|c| !matches!(c, ':' | ','))
                .collect();
            format!("{name}: {hash}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `Lora hashes` / `TI hashes` value read as A1111 reads it: split on `,`, each part on its
/// first `:`, both sides trimmed; parts without a `:` are skipped.
pub fn parse_network_hashes(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|part| {
            let (name, hash) = part.split_once(':')?;
            Some((name.trim().to_string(), hash.trim().to_string()))
        })
        .filter(|(name, hash)| !name.is_empty() && !hash.is_empty())
        .collect()
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| {
        Error::invalid(
            "infotext",
            format!("{key}: `{value}` is not a valid number"),
        )
    })
}
