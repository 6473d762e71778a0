//! `sd generate`: arguments, their validation, the progress display and the PNG files.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stable_diffusion::device::parse_device;
use stable_diffusion::image::{
    encode_png, read_parameters, write_all_atomically, ImageData, InfoText, PARAMETERS_KEY,
};
use stable_diffusion::loading::LoraSpec;
use stable_diffusion::pipeline::memory::parse_memory_size;
use stable_diffusion::pipeline::{
    parse_dtype, precheck, Asset, Control, GenerationRequest, HiresFix, HiresUpscaler, LoadOptions,
    ModelStore, NetworkRef, Progress, RngKind,
};
use stable_diffusion::prompt::PromptSyntax;
use stable_diffusion::scheduler::{parse_sampler_and_schedule, SamplerFlavor, SigmaSchedule};

use crate::UsageError;

/// Arguments of `sd generate`. Options left out take the values of `--from-png`, then the
/// defaults shown.
#[derive(clap::Args, Debug, Default)]
pub struct GenerateArgs {
    /// The prompt (the same as --prompt).
    #[arg(value_name = "PROMPT", conflicts_with = "prompt")]
    positional_prompt: Option<String>,
    /// The model: a diffusers pipeline folder (with model_index.json), a single-file checkpoint (.safetensors, .ckpt), or a name in --models-dir [default: the built-in shapes model, models/shapes or $SD_DEFAULT_MODEL].
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// What the image should show.
    #[arg(long, short)]
    prompt: Option<String>,
    /// What the image should not show.
    #[arg(long, short = 'n')]
    negative_prompt: Option<String>,
    /// Image width in pixels, a multiple of 8 [default: the model's native size, or the init image's].
    #[arg(long, short = 'W')]
    width: Option<usize>,
    /// Image height in pixels, a multiple of 8 [default: the model's native size, or the init image's].
    #[arg(long, short = 'H')]
    height: Option<usize>,
    /// Sampling steps [default: 20].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 turns guidance off [default: 7.5].
    #[arg(long)]
    cfg_scale: Option<f64>,
    /// Sampler (see `sd samplers`); A1111's names ("DPM++ 2M", also "DPM++ 2M Karras" with a schedule) select A1111's sampling [default: euler_a].
    #[arg(long)]
    sampler: Option<String>,
    /// Follow diffusers or k-diffusion (A1111) [default: diffusers where the sampler and schedule allow].
    #[arg(long)]
    sampler_flavor: Option<String>,
    /// Karras churn for euler, heun, dpm2 [default: 0].
    #[arg(long)]
    s_churn: Option<f64>,
    /// Lowest sigma that is churned [default: 0].
    #[arg(long)]
    s_tmin: Option<f64>,
    /// Highest sigma that is churned [default: infinity].
    #[arg(long)]
    s_tmax: Option<f64>,
    /// Scale of the sampler's fresh noise [default: 1].
    #[arg(long)]
    s_noise: Option<f64>,
    /// Rescale the noise schedule to zero terminal SNR with trailing timesteps (diffusers'
    /// rescale_betas_zero_snr; for v-prediction models trained that way; diffusers flavor).
    #[arg(long)]
    rescale_zero_snr: bool,
    /// Custom sigmas, largest first, comma separated (k-diffusion flavor), e.g. 14.6,5,1.5,0.3,0.
    #[arg(long, value_delimiter = ',')]
    sigmas: Option<Vec<f64>>,
    /// Sigma schedule (see `sd samplers`): default, karras, exponential, ... [default: default].
    #[arg(long)]
    schedule: Option<String>,
    /// Seed of the noise [default: random, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Random number stream: cpu (torch.Generator("cpu"), the same images as diffusers on CPU) or cuda (torch's CUDA Philox stream, A1111's "GPU"/"NV" noise, computed on the CPU) [default: cpu].
    #[arg(long)]
    rng: Option<String>,
    /// Images to make from the prompt in one run [default: 1].
    #[arg(long, short = 'b')]
    batch_size: Option<usize>,
    /// DDIM eta: 0 is deterministic DDIM, 1 is DDPM-like [default: 0].
    #[arg(long)]
    eta: Option<f64>,
    /// Start image for img2img (PNG, JPEG or WebP).
    #[arg(long, short = 'i')]
    init_image: Option<PathBuf>,
    /// How much img2img changes the start image, in (0, 1] [default: 0.75].
    #[arg(long)]
    strength: Option<f64>,
    /// Inpainting mask (PNG, the init image's size): white repaints, black keeps. Needs --init-image.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// An SDXL refiner (a diffusers folder) that takes over the last part of the schedule.
    #[arg(long)]
    refiner: Option<PathBuf>,
    /// Where the refiner takes over, a fraction of the schedule in (0, 1) [default: 0.8].
    #[arg(long)]
    refiner_switch: Option<f64>,
    /// A VAE to use instead of the model's: a diffusers AutoencoderKL folder, or a single VAE file (.safetensors/.ckpt/.pt, A1111 or diffusers names).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Decode in overlapping tiles (bounded memory at any size, blended seams); without it,
    /// tiles are used only when the whole decode would not fit in --max-memory.
    #[arg(long)]
    vae_tiling: bool,
    /// The most memory the run may use: bytes or a size such as 8G, 512M, 1.5GB, 4GiB. A model or a request estimated above it is refused (exit code 2) before anything is allocated [default: the memory available now, MemAvailable].
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<String>,
    /// The dtype weights are kept in: f32, f16 or bf16 (half weights stay half in memory) [default: f32].
    #[arg(long)]
    weight_dtype: Option<String>,
    /// The dtype layers compute in: f32, f16 or bf16 (half is slow on most CPUs) [default: f32].
    #[arg(long)]
    compute_dtype: Option<String>,
    /// Override the detected model family: sd1, sd2, sdxl, sdxl-refiner.
    #[arg(long)]
    family: Option<String>,
    /// Override the prediction type: epsilon, v_prediction or sample (SD 2.x single files do not say).
    #[arg(long)]
    prediction_type: Option<String>,
    /// For a single-file checkpoint: a diffusers folder whose configs describe it (default: the family's full-size configs).
    #[arg(long, value_name = "DIR")]
    config: Option<PathBuf>,
    /// A LoRA / LyCORIS network (.safetensors) merged into the weights, with its multiplier: PATH[:WEIGHT] (repeatable) [default weight: 1].
    #[arg(long = "lora", value_name = "PATH[:WEIGHT]")]
    loras: Vec<String>,
    /// Folder where networks named in <lora:name:weight> prompt tags are looked up (NAME.safetensors).
    #[arg(long, value_name = "DIR")]
    lora_dir: Option<PathBuf>,
    /// Hires fix: generate at --width x --height, enlarge by this factor (--hires-upscaler), then img2img at --hires-strength.
    #[arg(long, value_name = "FACTOR")]
    hires_scale: Option<f64>,
    /// Sampling steps of the hires pass before the strength truncation; 0 = the first pass's [default: 0].
    #[arg(long)]
    hires_steps: Option<usize>,
    /// Denoising strength of the hires pass, in (0, 1] [default: 0.7].
    #[arg(long)]
    hires_strength: Option<f64>,
    /// How the first pass is enlarged: lanczos (the picture) or latent (A1111's "Latent": the latents, bilinear) [default: lanczos].
    #[arg(long)]
    hires_upscaler: Option<String>,
    /// Output PNG file; with N > 1 images, STEM-0.png ... STEM-(N-1).png beside it.
    #[arg(long, short, default_value = "output.png")]
    output: PathBuf,
    /// How prompts are read: plain (diffusers: literal text, cut at 77 tokens) or a1111
    /// ((word:1.2) emphasis, BREAK, <lora:...> tags, any length) [default: plain].
    #[arg(long, value_name = "SYNTAX")]
    prompt_syntax: Option<String>,
    /// Clip skip, as AUTOMATIC1111 counts: 1 = the text encoder's last layer, 2 = the penultimate [default: 1].
    #[arg(long, value_name = "N")]
    clip_skip: Option<usize>,
    /// A textual-inversion embedding (.safetensors, .pt, .bin) whose file name, written in a prompt, stands for its vectors; repeatable.
    #[arg(long, value_name = "PATH")]
    embedding: Vec<PathBuf>,
    /// A folder of embeddings; those whose name appears in a prompt are loaded.
    #[arg(long, value_name = "DIR")]
    embeddings_dir: Option<PathBuf>,
    /// AUTOMATIC1111's variation seed: its noise is slerped into the seed's by --variation-strength.
    #[arg(long, value_name = "N")]
    variation_seed: Option<u64>,
    /// How far toward the variation seed's noise, in [0, 1] [default: 0].
    #[arg(long, value_name = "S")]
    variation_strength: Option<f64>,
    /// AUTOMATIC1111's seed resize: make the seed's noise as for this width and paste its centre (with --seed-resize-from-h).
    #[arg(long, value_name = "W", requires = "seed_resize_from_h")]
    seed_resize_from_w: Option<usize>,
    /// The height for --seed-resize-from-w.
    #[arg(long, value_name = "H", requires = "seed_resize_from_w")]
    seed_resize_from_h: Option<usize>,
    /// AUTOMATIC1111's eta noise seed delta (ENSD): after the initial noise, each image's stream restarts at its seed plus N (k-diffusion flavor) [default: 0].
    #[arg(long, value_name = "N")]
    ensd: Option<u64>,
    /// Re-run the parameters stored in a PNG made by sd or AUTOMATIC1111; options given here override them.
    #[arg(long, value_name = "FILE.png", conflicts_with = "request")]
    from_png: Option<PathBuf>,
    /// Run a JSON request (the library's GenerationRequest; `-` reads stdin); options given here override it.
    #[arg(long, value_name = "FILE.json")]
    request: Option<PathBuf>,
    /// Print the JSON request that the options make, and exit without running it.
    #[arg(long)]
    print_request: bool,
    /// Print the JSON Schema of a request (the fields --request reads, with their defaults), and exit.
    #[arg(long)]
    print_schema: bool,
    /// A models folder in AUTOMATIC1111's layout (models/Stable-diffusion, models/Lora, models/VAE, embeddings): --model, --vae, --refiner, <lora:> tags, embedding names and --from-png's model resolve in it by name.
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Where to run: cpu, cuda, cuda:N, metal, metal:N or auto (GPUs need a build with `--features cuda` / `metal`) [default: cpu].
    #[arg(long)]
    device: Option<String>,
    /// Shorthand for --weight-dtype and --compute-dtype together: f32, f16 or bf16 (half precision is for GPUs) [default: f32].
    #[arg(long)]
    dtype: Option<String>,
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Any library error caused by the input becomes a usage error (exit code 2).
fn as_usage(err: stable_diffusion::Error) -> anyhow::Error {
    use stable_diffusion::Error as E;
    match err {
        E::InvalidArgument { .. }
        | E::Unsupported { .. }
        | E::Image { .. }
        | E::NotFound { .. } => usage(err.to_string()),
        other => other.into(),
    }
}

/// The output paths: exactly `output` for one image, `STEM-i.EXT` beside it for several.
pub fn output_paths(output: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![output.to_path_buf()];
    }
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".to_string());
    (0..count)
        .map(|i| output.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

/// A path given on the command line, as the name the store knows it by: `what` names it in
/// the error when it does not exist (a name of the models folder is kept as it is).
pub(crate) fn given_path(
    store: &mut ModelStore,
    asset: Asset,
    path: &Path,
    what: &str,
    hint: &str,
) -> Result<String> {
    if path.exists() {
        return Ok(store.add(asset, path));
    }
    let name = path.to_string_lossy();
    if store.find(asset, &name).is_some() {
        return Ok(name.into_owned());
    }
    if store.list(asset).is_empty() {
        return Err(usage(format!("{what} not found: {}{hint}", path.display())));
    }
    // A store with files of this kind: the error lists them.
    match store.resolve(asset, &name) {
        Err(e) => Err(usage(format!("{what} not found: {e}"))),
        Ok(_) => Ok(name.into_owned()),
    }
}

/// The bytes of an image file given on the command line, checked to decode now so that a bad
/// file is named before any model loads.
fn image_file(path: &Path, what: &str) -> Result<ImageData> {
    let data = ImageData::read(path).map_err(as_usage)?;
    data.decode(what)
        .map_err(|e| usage(format!("{what} {}: {e}", path.display())))?;
    Ok(data)
}

/// Builds the request: defaults, then the PNG's or the JSON request's parameters, then the
/// options given; paths given are added to `store` and the request names them.
fn build_request(
    args: &GenerateArgs,
    base: Option<GenerationRequest>,
    store: &mut ModelStore,
) -> Result<GenerationRequest> {
    let mut request = base.unwrap_or_default();
    if let Some(path) = &args.model {
        request.model = Some(given_path(store, Asset::Checkpoint, path, "model", "")?);
    }
    if let Some(prompt) = args.prompt.as_ref().or(args.positional_prompt.as_ref()) {
        request.prompt = prompt.clone();
    }
    if let Some(v) = &args.negative_prompt {
        request.negative_prompt = v.clone();
    }
    if let Some(v) = args.width {
        request.width = Some(v);
    }
    if let Some(v) = args.height {
        request.height = Some(v);
    }
    if let Some(v) = args.steps {
        request.steps = v;
    }
    if let Some(v) = args.cfg_scale {
        request.cfg_scale = v;
    }
    if let Some(v) = &args.sampler {
        // "DPM++ 2M Karras": A1111's combined names set the schedule too (--schedule wins).
        let (kind, flavor, schedule) = parse_sampler_and_schedule(v).map_err(as_usage)?;
        request.sampler = kind;
        request.sampler_options.flavor = flavor;
        if let Some(schedule) = schedule {
            request.schedule = schedule;
        }
    }
    if let Some(v) = &args.sampler_flavor {
        request.sampler_options.flavor = Some(v.parse::<SamplerFlavor>().map_err(as_usage)?);
    }
    let options = &mut request.sampler_options;
    for (value, slot) in [
        (args.s_churn, &mut options.s_churn),
        (args.s_tmin, &mut options.s_tmin),
        (args.s_tmax, &mut options.s_tmax),
        (args.s_noise, &mut options.s_noise),
    ] {
        if value.is_some() {
            *slot = value;
        }
    }
    if let Some(list) = &args.sigmas {
        options.sigmas = Some(list.clone());
    }
    if args.rescale_zero_snr {
        options.rescale_zero_snr = true;
    }
    if let Some(v) = &args.schedule {
        request.schedule = v.parse::<SigmaSchedule>().map_err(as_usage)?;
    }
    if let Some(v) = args.seed {
        request.seed = Some(v);
    }
    if let Some(v) = &args.rng {
        request.rng = v.parse::<RngKind>().map_err(as_usage)?;
    }
    if let Some(v) = args.batch_size {
        request.batch_size = v;
    }
    if let Some(v) = args.eta {
        request.eta = v;
        if !request.sampler.uses_ddim_eta() {
            request.sampler_options.eta = Some(v);
        }
    }
    if let Some(v) = &args.init_image {
        request.init_image = Some(image_file(v, "init image")?);
    }
    if let Some(v) = args.strength {
        request.strength = v;
    }
    if let Some(v) = &args.mask {
        request.mask = Some(image_file(v, "mask")?);
    }
    if let Some(path) = &args.refiner {
        let hint = " (pass --refiner PATH, a diffusers folder)";
        request.refiner = Some(given_path(store, Asset::Checkpoint, path, "refiner", hint)?);
    }
    if let Some(path) = &args.vae {
        request.vae = Some(given_path(store, Asset::Vae, path, "VAE", "")?);
    }
    if args.vae_tiling {
        request.vae_tiling = Some(true);
    }
    for arg in &args.loras {
        let spec = LoraSpec::parse(arg).map_err(as_usage)?;
        let name = given_path(store, Asset::Lora, &spec.path, "LoRA", "")?;
        request.loras.push(NetworkRef {
            name,
            // The shortest decimal of the f32 weight: 0.8 stays 0.8 in the JSON.
            weight: spec
                .weight
                .to_string()
                .parse()
                .unwrap_or(f64::from(spec.weight)),
        });
    }
    for path in &args.embedding {
        if !path.is_file() {
            return Err(usage(format!("embedding not found: {}", path.display())));
        }
        request.embeddings.push(store.add(Asset::Embedding, path));
    }
    if let Some(v) = args.refiner_switch {
        request.refiner_switch = v;
    }
    request
        .sampler_options
        .resolve_flavor(request.sampler, request.schedule)
        .map_err(as_usage)?;
    if let Some(v) = &args.prompt_syntax {
        request.prompt_syntax = v.parse::<PromptSyntax>().map_err(as_usage)?;
    }
    if let Some(v) = args.clip_skip {
        request.clip_skip = v;
    }
    if let Some(v) = args.variation_seed {
        request.variation_seed = Some(v);
    }
    if let Some(v) = args.variation_strength {
        request.variation_strength = v;
    }
    if request.variation_strength != 0.0 && request.variation_seed.is_none() {
        return Err(usage("--variation-strength needs --variation-seed"));
    }
    if let (Some(w), Some(h)) = (args.seed_resize_from_w, args.seed_resize_from_h) {
        request.seed_resize_from = Some((w, h));
    }
    if let Some(v) = args.ensd {
        request.eta_noise_seed_delta = v;
    }
    if let Some(scale) = args.hires_scale {
        request.hires.get_or_insert_with(HiresFix::default).scale = scale;
    }
    if let Some(hires) = request.hires.as_mut() {
        if let Some(v) = args.hires_steps {
            hires.steps = v;
        }
        if let Some(v) = args.hires_strength {
            hires.strength = v;
        }
        if let Some(v) = &args.hires_upscaler {
            hires.upscaler = v.parse::<HiresUpscaler>().map_err(as_usage)?;
        }
    }
    Ok(request)
}

/// The request of `--request FILE` (`-`: stdin) or `--from-png FILE`, if any.
fn base_request(args: &GenerateArgs) -> Result<Option<GenerationRequest>> {
    if let Some(path) = &args.request {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the request from stdin")?
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read request {}: {e}", path.display())))?
        };
        let request = GenerationRequest::from_json(&text)
            .map_err(|e| usage(format!("{}: {e}", path.display())))?;
        return Ok(Some(request));
    }
    let Some(png) = &args.from_png else {
        return Ok(None);
    };
    let text = read_parameters(png)
        .map_err(as_usage)?
        .ok_or_else(|| usage(format!("{}: no generation parameters found", png.display())))?;
    let info = InfoText::parse(&text);
    for key in GenerationRequest::unsupported_infotext_keys(&info) {
        eprintln!(
            "warning: {}: `{key}` is not supported and is ignored; the image will differ",
            png.display()
        );
    }
    Ok(Some(
        GenerationRequest::from_infotext(&info).map_err(as_usage)?,
    ))
}

/// The load options of the model flags (device, dtypes, family, prediction, config).
fn load_options(args: &GenerateArgs) -> Result<LoadOptions> {
    let mut options = LoadOptions::default();
    if let Some(v) = &args.max_memory {
        options.max_memory = Some(parse_memory_size(v).map_err(as_usage)?);
    }
    if let Some(v) = &args.weight_dtype {
        options.weight_dtype = parse_dtype("weight dtype", v).map_err(as_usage)?;
    }
    if let Some(v) = &args.compute_dtype {
        options.compute_dtype = parse_dtype("compute dtype", v).map_err(as_usage)?;
    }
    if let Some(v) = &args.family {
        options.family = Some(v.parse().map_err(as_usage)?);
    }
    if let Some(v) = &args.prediction_type {
        options.prediction = Some(v.parse().map_err(as_usage)?);
    }
    if let Some(dir) = &args.config {
        if !dir.join("model_index.json").is_file() {
            return Err(usage(format!(
                "--config {}: not a diffusers folder (no model_index.json)",
                dir.display()
            )));
        }
        options.config = Some(dir.clone());
    }
    options.device = parse_device(args.device.as_deref().unwrap_or("cpu")).map_err(as_usage)?;
    if let Some(v) = &args.dtype {
        let dtype = parse_dtype("dtype", v).map_err(as_usage)?;
        options.weight_dtype = dtype;
        options.compute_dtype = dtype;
    }
    Ok(options)
}

/// The model store of the folder flags.
fn model_store(args: &GenerateArgs) -> Result<ModelStore> {
    let mut store = match &args.models_dir {
        Some(dir) => ModelStore::with_models_dir(dir).map_err(as_usage)?,
        None => ModelStore::new(),
    };
    if let Some(dir) = &args.lora_dir {
        store.add_folder(Asset::Lora, dir).map_err(as_usage)?;
    }
    if let Some(dir) = &args.embeddings_dir {
        store.add_folder(Asset::Embedding, dir).map_err(as_usage)?;
    }
    Ok(store)
}

/// Runs `sd generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    // Ctrl-C from the start: a first one cancels cleanly at the next stage or step (exit 130,
    // nothing written), a second one exits at once.
    let cancelled = Arc::new(AtomicBool::new(false));
    {
        let cancelled = cancelled.clone();
        let _ = ctrlc::set_handler(move || {
            if cancelled.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    if args.print_schema {
        let schema = GenerationRequest::json_schema();
        outln!("{}", serde_json::to_string_pretty(&schema)?);
        return Ok(());
    }
    // 1. Everything the user gave is checked before the model is loaded.
    let mut store = model_store(&args)?;
    let base = base_request(&args)?;
    let mut request = build_request(&args, base, &mut store)?;
    if request.prompt.is_empty()
        && args.from_png.is_none()
        && args.request.is_none()
        && args.prompt.is_none()
        && args.positional_prompt.is_none()
    {
        return Err(usage("no prompt given: pass --prompt TEXT"));
    }
    if args.from_png.is_some() {
        // A PNG names its model and VAE; without a store that holds them, the model given
        // (or the default) is used, as before the store.
        if args.model.is_none() {
            if let Some(name) = request
                .model
                .take_if(|n| store.resolve(Asset::Checkpoint, n).is_err())
            {
                eprintln!("warning: the PNG's model `{name}` is not in the store (--models-dir); using the default model");
            }
        }
        if args.vae.is_none() {
            if let Some(name) = request
                .vae
                .take_if(|n| store.resolve(Asset::Vae, n).is_err())
            {
                eprintln!("warning: the PNG's VAE `{name}` is not in the store (--models-dir); using the model's own");
            }
        }
    }
    if request.model.is_none() && store.list(Asset::Checkpoint).is_empty() {
        // No --model: the built-in shapes model (models/shapes, or $SD_DEFAULT_MODEL).
        let path = stable_diffusion::default_model_path().map_err(|e| {
            usage(format!(
                "no model given and no default model available ({e}): pass --model PATH (a diffusers folder or a single-file checkpoint)"
            ))
        })?;
        store.set_default_model(path);
    }
    let options = load_options(&args)?;
    precheck(&request).map_err(as_usage)?;
    if args.print_request {
        outln!("{}", request.to_json());
        return Ok(());
    }
    let outputs = output_paths(&args.output, request.batch_size.max(1));
    let folder = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(usage(format!(
            "output folder does not exist: {}",
            folder.display()
        )));
    }
    if let Some(taken) = outputs.iter().find(|p| p.is_dir()) {
        return Err(usage(format!(
            "output path is a folder: {} (give a file name such as {}/out.png)",
            taken.display(),
            taken.display()
        )));
    }

    // 2. Generate, with a progress bar on a terminal and Ctrl-C as a clean cancel.
    let bar = ProgressBar::new(request.effective_steps() as u64);
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {pos}/{len} steps, {elapsed} ({per_sec})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let mut on_progress = |event: Progress| {
        match event {
            Progress::EncodingText => bar.set_message("text"),
            Progress::EncodingImage => bar.set_message("image"),
            Progress::Step { step, total } => {
                bar.set_length(total as u64);
                bar.set_message("sampling");
                bar.set_position(step as u64);
            }
            Progress::Decoding => bar.set_message("decoding"),
        }
        if cancelled.load(Ordering::SeqCst) {
            Control::Cancel
        } else {
            Control::Continue
        }
    };
    let seed_given = request.seed.is_some();
    let result = stable_diffusion::pipeline::run(&store, &options, &request, &mut on_progress);
    bar.finish_and_clear();
    // Inputs the model cannot take (a mask for a model that needs none, ...) are usage errors.
    let output = result.map_err(as_usage)?;
    for warning in &output.warnings {
        eprintln!("warning: {warning}");
    }
    if !seed_given {
        eprintln!("seed: {}", output.request.seed_value());
    }

    // 3. Write the PNGs with the parameters that re-create them, all or nothing: a failure or
    //    a kill leaves every earlier file as it was.
    let mut files = Vec::with_capacity(outputs.len());
    for ((image, info), path) in output.images.iter().zip(&output.infotexts).zip(&outputs) {
        let text = [(PARAMETERS_KEY.to_string(), info.to_string())];
        let bytes =
            encode_png(image, &text).with_context(|| format!("encoding {}", path.display()))?;
        files.push((path.as_path(), bytes));
    }
    let files: Vec<(&Path, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    write_all_atomically(&files).context("writing the images")?;
    for path in &outputs {
        outln!("{}", path.display());
    }
    let device = options.device;
    let t = output.timings;
    // Scripts read this line (tools/bench/peers.py): keep its wording, add to its end only.
    let peak_rss = peak_rss_bytes()
        .map(|bytes| format!(", peak RSS {:.2} GB", bytes as f64 / 1e9))
        .unwrap_or_default();
    // What ran the heavy ops: the CPU kernel level (or candle), or the GPU.
    let kernels = if device.is_cpu() {
        format!(
            ", CPU kernels: {}",
            stable_diffusion::nn::kernels::cpu_backend_name()
        )
    } else {
        String::new()
    };
    eprintln!(
        "text encoding {:.2} s, sampling {} steps in {:.2} s ({:.3} s/step), VAE decoding {:.2} s{peak_rss}{kernels}",
        t.text_encoding.as_secs_f64() + t.image_encoding.as_secs_f64(),
        t.steps,
        t.sampling.as_secs_f64(),
        t.seconds_per_step(),
        t.decoding.as_secs_f64()
    );
    Ok(())
}

/// The most resident memory this process has held so far, in bytes: `VmHWM` of
/// `/proc/self/status` (Linux); `None` where that file does not exist or lacks the line.
fn peak_rss_bytes() -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The `VmHWM:  123456 kB` line of a `/proc/<pid>/status` text, in bytes (the kernel's kB
/// are KiB).
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let mut fields = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_vm_hwm;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tsd\nVmPeak:\t 9000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(123456 * 1024));
    }

    #[test]
    fn a_status_without_vm_hwm_gives_none() {
        assert_eq!(parse_vm_hwm("Name:\tsd\nVmRSS:\t 100 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t lots\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t 12 pages\n"), None);
    }
}
