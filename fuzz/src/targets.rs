//! One function per fuzz target: each feeds outside bytes through the library's real entry
//! point and returns `Ok(())` or the library's error message. A panic, stack overflow, hang or
//! huge allocation is a bug in the library; an `Err` is the expected answer to bad input.
//!
//! This file is also compiled into `crates/stable-diffusion/tests/fuzz_regressions.rs`, which
//! replays `fuzz/regressions/<target>/*` and `fuzz/corpus/<target>/*` under plain `cargo test`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use stable_diffusion::image::infotext::InfoText;
use stable_diffusion::image::png::png_text_from_bytes;
use stable_diffusion::loading::embeddings::TextualInversion;
use stable_diffusion::loading::{
    pickle, record_shapes, CkptFile, DiffusersFolder, LoraFile, LoraPatches, LoraTarget,
    SafetensorsFile, SingleFileCheckpoint, TensorStore,
};
use stable_diffusion::pipeline::GenerationRequest;
use stable_diffusion::prompt::{
    chunk_tokens, extract_extra_networks, parse_attention, prompt_schedule, ScheduleSteps,
    WeightedTokens, COMMA_BACKTRACK,
};
use stable_diffusion::scheduler::{SamplerKind, SchedulerConfig};
use stable_diffusion::text_encoder::{ClipTextConfig, ClipTextModel};
use stable_diffusion::tokenizer::{ClipTokenizer, PadStyle};
use stable_diffusion::unet::{UNet2DConditionModel, UNetConfig};
use stable_diffusion::vae::{AutoencoderKL, AutoencoderTiny, TinyVaeConfig, VaeConfig};

/// What a target returns: `Ok` or the error's message.
pub type Outcome = Result<(), String>;

/// A fuzz target: bytes in, outcome out.
pub type Target = fn(&[u8]) -> Outcome;

/// A component's weight names and shapes.
type Shapes = HashMap<String, Vec<usize>>;

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("ckpt", ckpt),
    ("pickle", pickle),
    ("single_file", single_file),
    ("lora", lora),
    ("embedding", embedding),
    ("unet_config", unet_config),
    ("vae_config", vae_config),
    ("tiny_vae", tiny_vae),
    ("text_encoder_config", text_encoder_config),
    ("scheduler_config", scheduler_config),
    ("model_index", model_index),
    ("infotext", infotext),
    ("png", png),
    ("prompt", prompt),
    ("tokenizer", tokenizer),
    ("request", request),
];

fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The repository root (the folder holding `fixtures/`), found from this crate's folder.
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("fixtures").is_dir() {
        if !dir.pop() {
            return PathBuf::from(".");
        }
    }
    dir
}

/// A scratch file of this process and thread for entry points that read a path.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, data: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let dir = std::env::temp_dir().join(format!(
            "sd-fuzz-{}-{}",
            std::process::id(),
            SLOT.with(|s| *s)
        ));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        let path = dir.join(name);
        std::fs::write(&path, data).expect("scratch file");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Loads every tensor of `store` (the file is small, so its tensors are too).
fn load_all(store: &dyn TensorStore) -> Outcome {
    let mut names = store.names();
    names.sort_unstable();
    for name in names {
        store.load(name, DType::F32, &Device::Cpu).map_err(msg)?;
    }
    Ok(())
}

/// A safetensors file: header, tensor table, every tensor read.
pub fn safetensors(data: &[u8]) -> Outcome {
    let file = Scratch::new("model.safetensors", data);
    let st = SafetensorsFile::open(file.path()).map_err(msg)?;
    load_all(&st)
}

/// A `.ckpt` (zip or legacy `torch.save`): archive, pickle, every tensor read.
pub fn ckpt(data: &[u8]) -> Outcome {
    let file = Scratch::new("model.ckpt", data);
    let ckpt = CkptFile::open(file.path()).map_err(msg)?;
    load_all(&ckpt)?;
    let nested = CkptFile::open_nested(file.path()).map_err(msg)?;
    load_all(&nested)
}

/// The restricted unpickler on its own.
pub fn pickle(data: &[u8]) -> Outcome {
    pickle::unpickle(data).map(drop)
}

/// A single-file checkpoint: model detection from the tensor table and the load report.
pub fn single_file(data: &[u8]) -> Outcome {
    let name = if data.starts_with(b"PK") || data.first() == Some(&0x80) {
        "model.ckpt"
    } else {
        "model.safetensors"
    };
    let file = Scratch::new(name, data);
    let checkpoint = SingleFileCheckpoint::open(file.path()).map_err(msg)?;
    checkpoint.report().map(drop).map_err(msg)
}

/// Weight names and shapes of the tiny SD 1.5 fixture's UNet and text encoder.
fn lora_components() -> &'static [(LoraTarget, Shapes)] {
    static COMPONENTS: OnceLock<Vec<(LoraTarget, Shapes)>> = OnceLock::new();
    COMPONENTS.get_or_init(|| {
        let models = repo_root().join("fixtures/models/tiny-sd15");
        let read = |file: &str| {
            let st = SafetensorsFile::open(models.join(file)).expect("fixture weights");
            st.names()
                .map(|n| (n.to_string(), st.shape(n).expect("listed").to_vec()))
                .collect::<HashMap<_, _>>()
        };
        let text = read("text_encoder/model.safetensors");
        vec![
            (
                LoraTarget::Unet,
                read("unet/diffusion_pytorch_model.safetensors"),
            ),
            (LoraTarget::TextEncoder, text.clone()),
            (LoraTarget::TextEncoder2, text),
        ]
    })
}

/// A LoRA / LyCORIS network: key mapping against real weight names, shape checks, deltas.
pub fn lora(data: &[u8]) -> Outcome {
    let file = Scratch::new("network.safetensors", data);
    let network = LoraFile::open(file.path()).map_err(msg)?;
    network.unclaimed_keys();
    let networks = [(network, 0.75f32)];
    for (target, shapes) in lora_components() {
        let found =
            LoraPatches::build(&networks, *target, shapes.keys().map(String::as_str), |n| {
                shapes.get(n).cloned()
            })
            .map_err(msg)?;
        let mut names: Vec<&String> = shapes.keys().collect();
        names.sort_unstable();
        for name in names {
            if found.patches.patches(name) {
                let weight = Tensor::zeros(shapes[name].as_slice(), DType::F32, &Device::Cpu)
                    .map_err(msg)?;
                found
                    .patches
                    .apply(name, weight, DType::F32, &Device::Cpu)
                    .map_err(msg)?;
            }
        }
    }
    Ok(())
}

/// A textual-inversion embedding (`.pt` when the bytes look like a pickle or zip, else
/// `.safetensors`), then added to the tokenizer.
pub fn embedding(data: &[u8]) -> Outcome {
    let name = if data.starts_with(b"PK") || data.first() == Some(&0x80) {
        "emb.pt"
    } else {
        "emb.safetensors"
    };
    let file = Scratch::new(name, data);
    let ti = TextualInversion::load(file.path()).map_err(msg)?;
    let mut tokenizer = ClipTokenizer::embedded().map_err(msg)?;
    for vectors in [&ti.first, &ti.second].into_iter().flatten() {
        let count = vectors.dims().first().copied().unwrap_or(0);
        tokenizer.add_embedding(&ti.name, count).map_err(msg)?;
    }
    Ok(())
}

/// A UNet `config.json`, then the model built from shape-only weights (nothing allocated).
pub fn unet_config(data: &[u8]) -> Outcome {
    let config = UNetConfig::from_json(text(data).ok_or("not UTF-8")?).map_err(msg)?;
    record_shapes(|vb| UNet2DConditionModel::new(vb, &config))
        .map(drop)
        .map_err(msg)
}

/// A VAE `config.json`, then the model built from shape-only weights.
pub fn vae_config(data: &[u8]) -> Outcome {
    let config =
        VaeConfig::from_json(text(data).ok_or("not UTF-8")?, Path::new("")).map_err(msg)?;
    record_shapes(|vb| AutoencoderKL::new(vb, &config))
        .map(drop)
        .map_err(msg)
}

/// A tiny VAE (TAESD): an even first byte makes the rest an `AutoencoderTiny` config.json
/// (both parts built on shape-only weights), an odd one a weights file loaded as
/// `sd serve --preview-vae` loads it (layout read from its tensors), then a 2x2 decode.
pub fn tiny_vae(data: &[u8]) -> Outcome {
    let (&kind, rest) = data.split_first().ok_or("empty")?;
    if kind % 2 == 0 {
        let config: TinyVaeConfig =
            serde_json::from_str(text(rest).ok_or("not UTF-8")?).map_err(msg)?;
        config.validate(Path::new("")).map_err(msg)?;
        return record_shapes(|vb| AutoencoderTiny::new(vb, &config, true, true))
            .map(drop)
            .map_err(msg);
    }
    let file = Scratch::new("taesd_decoder.safetensors", rest);
    let vae = AutoencoderTiny::load(file.path(), DType::F32, &Device::Cpu).map_err(msg)?;
    if vae.has_decoder() {
        let latents = Tensor::zeros(
            (1, vae.config().latent_channels, 2, 2),
            DType::F32,
            &Device::Cpu,
        )
        .map_err(msg)?;
        vae.decode(&latents).map(drop).map_err(msg)?;
    }
    Ok(())
}

/// A CLIP text encoder `config.json` (read as `ClipTextConfig::from_file` reads it), then the
/// model built from shape-only weights.
pub fn text_encoder_config(data: &[u8]) -> Outcome {
    let file = Scratch::new("config.json", data);
    let config = ClipTextConfig::from_file(file.path()).map_err(msg)?;
    config.validate().map_err(msg)?;
    record_shapes(|vb| ClipTextModel::new(vb, &config))
        .map(drop)
        .map_err(msg)?;
    record_shapes(|vb| ClipTextModel::new_with_projection(vb, &config))
        .map(drop)
        .map_err(msg)
}

/// A `scheduler_config.json`, resolved for every sampler, with its noise schedule.
pub fn scheduler_config(data: &[u8]) -> Outcome {
    let config =
        SchedulerConfig::from_json(text(data).ok_or("not UTF-8")?, Path::new("")).map_err(msg)?;
    let mut first_error = None;
    for kind in SamplerKind::ALL {
        let result = config
            .resolve(kind)
            .and_then(|resolved| resolved.noise_schedule().map(drop));
        if let Err(e) = result {
            first_error.get_or_insert(e.to_string());
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A diffusers folder's `model_index.json`, and each component it names looked up.
pub fn model_index(data: &[u8]) -> Outcome {
    let file = Scratch::new("model_index.json", data);
    let dir = file.path().parent().expect("scratch folder");
    let folder = DiffusersFolder::open(dir).map_err(msg)?;
    folder.pipeline_class();
    folder.flag("force_zeros_for_empty_prompt");
    let components: Vec<String> = folder.components().keys().cloned().collect();
    for name in components {
        let _ = folder.config_path(&name);
        let _ = folder.weights_path(&name, None);
        let _ = folder.weights_path(&name, Some("fp16"));
    }
    Ok(())
}

/// A1111 infotext → request (and back to infotext).
pub fn infotext(data: &[u8]) -> Outcome {
    let info = InfoText::parse(&String::from_utf8_lossy(data));
    GenerationRequest::unsupported_infotext_keys(&info);
    for key in ["Lora hashes", "TI hashes"] {
        if let Some(value) = info.get(key) {
            stable_diffusion::pipeline::parse_network_hashes(value);
        }
    }
    let request = GenerationRequest::from_infotext(&info).map_err(msg)?;
    request.validate(8).map_err(msg)?;
    Ok(())
}

/// PNG text chunks (and the infotext in `parameters`), then the image decoded.
pub fn png(data: &[u8]) -> Outcome {
    let chunks = png_text_from_bytes(data, Path::new("image.png")).map_err(msg)?;
    for (key, value) in &chunks {
        if key == "parameters" {
            let info = InfoText::parse(value);
            let _ = GenerationRequest::from_infotext(&info);
        }
    }
    let file = Scratch::new("image.png", data);
    stable_diffusion::image::load_image(file.path())
        .map(drop)
        .map_err(msg)
}

/// Builds what the targets share (the embedded CLIP vocabulary, the `lora` target's model
/// shapes) before the first input, so that its one-time cost (over a second under
/// AddressSanitizer on a busy machine) is not charged to an input's 1 s limit.
pub fn warm_up() {
    let _ = embedded_tokenizer();
    let _ = lora_components();
}

fn embedded_tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| ClipTokenizer::embedded().expect("embedded vocabulary"))
}

/// An A1111 prompt: extra networks, the step schedule (edits, alternation), attention,
/// tokens and 75-token chunks, as the conditioning reads it. The first byte picks the steps.
pub fn prompt(data: &[u8]) -> Outcome {
    let (&first, rest) = data.split_first().ok_or("empty")?;
    let prompt = text(rest).ok_or("not UTF-8")?;
    let steps = match first % 4 {
        0 => ScheduleSteps::Single(usize::from(first)),
        1 => ScheduleSteps::Single(20),
        2 => ScheduleSteps::Hires {
            first_pass: 20,
            steps: usize::from(first / 4),
        },
        _ => ScheduleSteps::Single(1),
    };
    // A malformed weight is a clean error; the rest of the prompt is read either way.
    let _ = stable_diffusion::loading::lora_tags(prompt);
    let (without_networks, _) = extract_extra_networks(prompt);
    let tokenizer = embedded_tokenizer();
    let schedule = prompt_schedule(&without_networks, steps).map_err(msg)?;
    // The conditioning encodes each distinct text of the schedule once (an alternation makes
    // every step an entry, most of them equal).
    let mut seen = std::collections::HashSet::new();
    for entry in schedule
        .iter()
        .filter(|entry| seen.insert(entry.text.as_str()))
    {
        let mut pieces = Vec::new();
        for piece in parse_attention(&entry.text) {
            if piece.is_break() {
                pieces.push(WeightedTokens::Break);
                continue;
            }
            let ids = tokenizer
                .encode_content(&piece.text, PadStyle::EndOfText)
                .map_err(msg)?;
            pieces.push(WeightedTokens::Tokens {
                units: ids.into_iter().map(|id| vec![id]).collect(),
                weight: piece.weight,
            });
        }
        let comma = tokenizer.token_to_id(",</w>");
        chunk_tokens(&pieces, 75, comma, COMMA_BACKTRACK);
    }
    Ok(())
}

/// The CLIP tokenizer: encode, pad, decode, and an embedding named by the text.
pub fn tokenizer(data: &[u8]) -> Outcome {
    let prompt = String::from_utf8_lossy(data);
    let tokenizer = embedded_tokenizer();
    let ids = tokenizer.encode(&prompt).map_err(msg)?;
    tokenizer.decode(&ids);
    tokenizer
        .encode_padded(&prompt, 77, PadStyle::Exclamation)
        .map_err(msg)?;
    let mut with_embedding = tokenizer.clone();
    let word = prompt.split_whitespace().next().unwrap_or("");
    if !word.is_empty() && with_embedding.add_embedding(word, 3).is_ok() {
        with_embedding.encode(&prompt).map_err(msg)?;
    }
    Ok(())
}

/// A JSON generation request, checked as a run checks it.
pub fn request(data: &[u8]) -> Outcome {
    let request = GenerationRequest::from_json(text(data).ok_or("not UTF-8")?).map_err(msg)?;
    request.to_json();
    request.effective_steps();
    request.validate(8).map_err(msg)
}
