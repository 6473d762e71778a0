//! The library's one entry point: a [`GenerationRequest`] in, images with their infotexts out.
//! Every front end (the CLI, the server) runs requests through [`run`], so the same request
//! makes the same images everywhere.
//!
//! ```text
//! request ─► seed, names ─► model store (checkpoint, refiner, VAE, LoRAs, embeddings)
//!         ─► images decoded, sizes filled in, validated ─► model loaded ─► generate / hires
//!         ─► infotext per image (hashes of model, networks, embeddings)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::memory;
use super::preview::PreviewHook;
use super::store::{asset_name, disk_bytes, Asset, ModelStore};
use super::{
    format_network_hashes, load_vae, mask_to_tensor, Control, GenerationRequest, LoadOptions,
    Progress, StableDiffusion, Timings,
};
use crate::image::{fit_image, image_to_tensor, InfoText, Resize, RgbImage};
use crate::loading::embeddings::TextualInversion;
use crate::loading::{lora_tags, model_hash, LoraFile, LoraSpec};
use crate::{Error, Result};

/// What a run made.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The images, `batch_size` of them.
    pub images: Vec<RgbImage>,
    /// The A1111 infotext of each image: what re-makes it.
    pub infotexts: Vec<InfoText>,
    /// The seed each image's infotext gives (A1111's per-image seeds, or the request's seed).
    pub seeds: Vec<u64>,
    /// The request as it ran: the seed, width and height filled in.
    pub request: GenerationRequest,
    /// Where the time went.
    pub timings: Timings,
    /// Whether [`Control::Finish`] stopped the sampling early (the images are the estimate
    /// at that step; A1111's interrupted result).
    pub interrupted: bool,
    /// Things the user should know that did not stop the run (an unknown `<lora:>` tag, LoRA
    /// keys that match no weight, a model that could not be hashed).
    pub warnings: Vec<String>,
}

/// A seed for requests that name none: below 2^32, as AUTOMATIC1111 shows them.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish() & 0xffff_ffff
}

/// The files a request names, found in the store, and its images decoded: everything checked
/// before a model is loaded.
struct Resolved {
    model: PathBuf,
    refiner: Option<PathBuf>,
    vae: Option<PathBuf>,
    loras: Vec<LoraSpec>,
    embeddings: Vec<PathBuf>,
    init_image: Option<RgbImage>,
    mask: Option<RgbImage>,
}

/// Resolves the names of `request` in `store`, decodes its images and fills in the seed and
/// the sizes an init image gives; warnings go to `warnings`.
fn resolve(
    store: &ModelStore,
    request: &mut GenerationRequest,
    warnings: &mut Vec<String>,
) -> Result<Resolved> {
    if request.seed.is_none() {
        request.seed = Some(random_seed());
    }
    let model = store.checkpoint(request.model.as_deref())?;
    let refiner = match &request.refiner {
        Some(name) => Some(store.resolve(Asset::Checkpoint, name)?),
        None => None,
    };
    let vae = match &request.vae {
        Some(name) => Some(store.resolve(Asset::Vae, name)?),
        None => None,
    };
    let mut loras = Vec::new();
    for network in &request.loras {
        if !network.weight.is_finite() {
            return Err(Error::invalid(
                "lora",
                format!(
                    "weight {} of `{}` is not a finite number",
                    network.weight, network.name
                ),
            ));
        }
        loras.push(LoraSpec {
            path: store.resolve(Asset::Lora, &network.name)?,
            weight: network.weight as f32,
        });
    }
    for (name, weight) in lora_tags(&request.prompt)? {
        // As A1111: a network the prompt names but the store lacks is a warning.
        match store.find(Asset::Lora, &name) {
            Some(path) => loras.push(LoraSpec { path, weight }),
            None => warnings.push(format!(
                "the prompt names LoRA `{name}`, which no LoRA folder holds (--lora-dir, \
                 --models-dir); the tag is ignored"
            )),
        }
    }
    let mut embeddings = Vec::new();
    for name in &request.embeddings {
        embeddings.push(store.resolve(Asset::Embedding, name)?);
    }
    // The store's embeddings that a prompt names (files named by their content always).
    for entry in store.list(Asset::Embedding) {
        let used = match TextualInversion::name_of(&entry.path) {
            Some(name) => request.prompt.contains(&name) || request.negative_prompt.contains(&name),
            None => true,
        };
        let given = embeddings
            .iter()
            .any(|f| TextualInversion::name_of(f) == TextualInversion::name_of(&entry.path));
        if used && !given {
            embeddings.push(entry.path.clone());
        }
    }
    let init_image = match &request.init_image {
        Some(data) => Some(data.decode("init image")?),
        None => None,
    };
    let mask = match &request.mask {
        Some(data) => Some(data.decode("mask")?),
        None => None,
    };
    if let (Some(image), Some(mask)) = (&init_image, &mask) {
        if image.dimensions() != mask.dimensions() {
            return Err(Error::invalid(
                "mask",
                format!(
                    "the mask is {}x{}, the init image is {}x{}; they must be the same size",
                    mask.width(),
                    mask.height(),
                    image.width(),
                    image.height()
                ),
            ));
        }
    }
    if let Some(image) = &init_image {
        // As diffusers: img2img defaults to the image's size, rounded down to a multiple of 8.
        request.width.get_or_insert(image.width() as usize / 8 * 8);
        request
            .height
            .get_or_insert(image.height() as usize / 8 * 8);
    }
    Ok(Resolved {
        model,
        refiner,
        vae,
        loras,
        embeddings,
        init_image,
        mask,
    })
}

/// Checks `request` before any model is loaded; sizes still unset (the model's native size
/// fills them in later) are checked with a size that is surely valid.
pub fn precheck(request: &GenerationRequest) -> Result<()> {
    let mut probe = request.clone();
    probe.width.get_or_insert(8);
    probe.height.get_or_insert(8);
    probe.seed.get_or_insert(0);
    probe.validate(8)
}

/// Runs `request` end to end: names resolved in `store`, models loaded with `options`, the
/// seed chosen when unset, sizes from the init image or the model, hires fix, refiner, VAE,
/// networks and embeddings, and the full infotext of each image. `progress` is called after
/// each stage and step; returning [`Control::Cancel`] ends the run with [`Error::Cancelled`],
/// [`Control::Finish`] ends the sampling and decodes the estimate so far.
pub fn run(
    store: &ModelStore,
    options: &LoadOptions,
    request: &GenerationRequest,
    progress: &mut dyn FnMut(Progress) -> Control,
) -> Result<RunOutput> {
    run_with_previews(store, options, request, None, progress)
}

/// [`run`] with a live-preview hook, called after every sampling step with the step's
/// estimate (see [`super::preview`]).
pub fn run_with_previews(
    store: &ModelStore,
    options: &LoadOptions,
    request: &GenerationRequest,
    previews: Option<PreviewHook<'_>>,
    progress: &mut dyn FnMut(Progress) -> Control,
) -> Result<RunOutput> {
    let mut request = request.clone();
    let mut warnings = Vec::new();
    precheck(&request)?;
    let mut resolved = resolve(store, &mut request, &mut warnings)?;
    precheck(&request)?;

    let model_options = LoadOptions {
        loras: resolved.loras.clone(),
        ..options.clone()
    };
    let vae = resolved.vae.as_deref();
    let base = load_model(store, &resolved.model, &model_options, vae)?;
    for key in base.lora_warnings() {
        warnings.push(format!(
            "LoRA key `{key}` matches no weight of the model; ignored"
        ));
    }
    // Networks patch the base model only.
    let refiner_options = LoadOptions {
        loras: Vec::new(),
        ..options.clone()
    };
    let refiner = match &resolved.refiner {
        Some(path) => Some(load_model(store, path, &refiner_options, vae)?),
        None => None,
    };
    // Embeddings go into this request's copy of the model; the cached one is unchanged.
    let mut embeddings = Vec::new();
    let mut ti_hashes = Vec::new();
    for path in &resolved.embeddings {
        let embedding = TextualInversion::load(path)?;
        let name = &embedding.name;
        // A1111's "TI hashes": `name: shorthash` for each embedding the prompts use.
        if request.prompt.contains(name.as_str()) || request.negative_prompt.contains(name.as_str())
        {
            ti_hashes.push((name.clone(), embedding.short_hash()?));
        }
        embeddings.push(embedding);
    }
    let model = match embeddings.is_empty() {
        true => base,
        false => Arc::new(base.with_embeddings(&embeddings)?),
    };
    request.width.get_or_insert(model.native_size());
    request.height.get_or_insert(model.native_size());
    request.validate(model.spatial_factor())?;
    // With a limit, the loaded weights count against it; without one, the memory available
    // now is what they left.
    let resident = match options.max_memory {
        Some(_) => {
            let mut bytes = memory::weight_bytes(model.description(), options.weight_dtype)?;
            if let Some(refiner) = &refiner {
                bytes += memory::weight_bytes(refiner.description(), options.weight_dtype)?;
            }
            bytes
        }
        None => 0,
    };
    choose_vae_tiling(
        &mut request,
        &model,
        resident,
        options.max_memory,
        &mut warnings,
    );
    check_request_fits(
        &request,
        &model,
        refiner.as_deref(),
        resolved.init_image.is_some(),
        resident,
        options.max_memory,
    )?;

    let (width, height) = (request.width_px() as u32, request.height_px() as u32);
    let device = options.device.clone();
    let init_tensor = match resolved.init_image.take() {
        // Same size: exact. Another size: Lanczos, as diffusers resizes (close, not equal).
        Some(image) => Some(image_to_tensor(
            &fit_image(image, width, height, Resize::Lanczos3)?,
            &device,
        )?),
        None => None,
    };
    let mask_tensor = match resolved.mask.take() {
        Some(mask) => Some(mask_to_tensor(
            &fit_image(mask, width, height, Resize::Lanczos3)?,
            &device,
        )?),
        None => None,
    };
    let inputs = super::Inputs {
        init_image: init_tensor.as_ref(),
        mask: mask_tensor.as_ref(),
        refiner: refiner.as_deref(),
        previews,
        ..super::Inputs::default()
    };
    let generation = match &request.hires {
        Some(hires) => model.generate_hires_with_previews(&request, hires, previews, progress)?,
        None => model.generate(&request, &inputs, progress)?,
    };

    let infotexts = infotexts(&request, &model, &resolved, &ti_hashes, &mut warnings)?;
    let per_image = request.per_image_seeds().unwrap_or(false);
    let seeds = (0..generation.images.len())
        .map(|i| match per_image {
            true => request.a1111_image_seeds(i).0,
            false => request.seed_value(),
        })
        .collect();
    Ok(RunOutput {
        images: generation.images,
        infotexts,
        seeds,
        request,
        timings: generation.timings,
        interrupted: generation.interrupted,
        warnings,
    })
}

/// The size of the final image of `request` (after a hires pass).
fn final_size(request: &GenerationRequest, model: &StableDiffusion) -> (usize, usize) {
    match &request.hires {
        Some(hires) => hires.target_size(
            request.width_px(),
            request.height_px(),
            model.spatial_factor(),
        ),
        None => (request.width_px(), request.height_px()),
    }
}

/// Decides an unset `vae_tiling`: tiles only when the untiled decode of the final image (after
/// a hires pass) would not fit `max_memory` beside the `resident` weights (without a limit:
/// the memory available now); says so when it tiles.
fn choose_vae_tiling(
    request: &mut GenerationRequest,
    model: &StableDiffusion,
    resident: u64,
    max_memory: Option<u64>,
    warnings: &mut Vec<String>,
) {
    if request.vae_tiling.is_some() {
        return;
    }
    let (width, height) = final_size(request, model);
    let needed = model.untiled_decode_bytes(width, height, request.batch_size.max(1));
    if let Err(Error::MemoryBudget {
        needed, allowed, ..
    }) = memory::check_fits("", needed, resident, max_memory)
    {
        request.vae_tiling = Some(true);
        warnings.push(format!(
            "decoding the VAE in tiles: a {width}x{height} decode in one piece needs about \
             {}, {} {} (--vae-tiling forces tiles)",
            memory::format_bytes(needed),
            memory::format_bytes(allowed),
            match max_memory {
                Some(_) => "are allowed",
                None => "are available",
            }
        ));
    }
}

/// Refuses a request whose work (denoising, VAE decode and encode at its final size, with
/// `model` and the refiner) would not fit `max_memory` beside the `resident` weights (without a
/// limit: the memory available now), before anything is allocated.
fn check_request_fits(
    request: &GenerationRequest,
    model: &StableDiffusion,
    refiner: Option<&StableDiffusion>,
    init_image: bool,
    resident: u64,
    max_memory: Option<u64>,
) -> Result<()> {
    let (width, height) = final_size(request, model);
    if width > super::MAX_SIDE || height > super::MAX_SIDE {
        // A hires pass past the size limit: generate_hires refuses it, naming the scale.
        return Ok(());
    }
    let batch = request.batch_size.max(1);
    let size = memory::RequestSize {
        width,
        height,
        batch,
        encodes: init_image || request.hires.is_some(),
        tiled: request.vae_tiling == Some(true),
        attention_scores: !(model.device.is_cpu() && crate::nn::kernels::enabled()),
    };
    let needed = refiner
        .map_or(0, |refiner| refiner.request_bytes(size))
        .max(model.request_bytes(size));
    let images = match batch {
        1 => String::new(),
        n => format!(" x {n}"),
    };
    let what = format!(
        "a {width}x{height}{images} image{} (denoising{}, {} VAE decode)",
        if batch > 1 { "s" } else { "" },
        if request.hires.is_some() {
            " with the hires pass"
        } else {
            ""
        },
        if size.tiled { "tiled" } else { "untiled" },
    );
    memory::check_fits(&what, needed, resident, max_memory)
}

/// The model at `path` loaded with `options` and, when given, the VAE at `vae`, from the
/// store's cache when an earlier request loaded the same.
fn load_model(
    store: &ModelStore,
    path: &Path,
    options: &LoadOptions,
    vae: Option<&Path>,
) -> Result<Arc<StableDiffusion>> {
    let key = format!("{}|{options:?}|{vae:?}", path.display());
    store.cached_model(&key, || {
        let model = StableDiffusion::load(path, options)?;
        // Only a load measures the files: a cached model is served without touching them.
        let bytes = disk_bytes(path) + vae.map_or(0, disk_bytes);
        let model = match vae {
            // The external VAE decodes whichever model finishes the run.
            Some(vae) => {
                let (decoder, dtype) = load_vae(vae, model.vae().config(), options)?;
                model.with_vae(decoder, dtype)?
            }
            None => model,
        };
        Ok((model, bytes))
    })
}

/// The infotext of each image of a finished run, with A1111's hash lines.
fn infotexts(
    request: &GenerationRequest,
    model: &StableDiffusion,
    resolved: &Resolved,
    ti_hashes: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<Vec<InfoText>> {
    // A1111's "Lora hashes": `name: shorthash` for each network.
    let lora_hashes = resolved
        .loras
        .iter()
        .map(|spec| {
            let file = LoraFile::open(&spec.path)?;
            Ok((file.name().to_string(), file.short_hash()?))
        })
        .collect::<Result<Vec<_>>>()?;
    let lora_hashes = format_network_hashes(lora_hashes);
    let ti_hashes = format_network_hashes(ti_hashes.iter().map(|(n, h)| (n, h)));
    // A1111's model hash is known for single files (cached after the first run), not folders.
    let model_hash = model_hash(&resolved.model).unwrap_or_else(|e| {
        warnings.push(format!("cannot hash the model for the infotext: {e}"));
        None
    });
    let mut request = request.clone();
    if let Some(path) = &resolved.refiner {
        request.refiner = Some(asset_name(path));
    }
    let count = request.batch_size.max(1);
    Ok((0..count)
        .map(|index| {
            let mut info = request.to_infotext(&model.name(), model_hash.as_deref(), index);
            if !lora_hashes.is_empty() {
                info.push("Lora hashes", &lora_hashes);
            }
            // A1111 names the VAE by its file name.
            if let Some(name) = resolved.vae.as_deref().and_then(Path::file_name) {
                info.push("VAE", name.to_string_lossy());
            }
            if !ti_hashes.is_empty() {
                info.push("TI hashes", &ti_hashes);
            }
            info
        })
        .collect())
}
