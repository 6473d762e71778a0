//! Memory: what the machine has (the figures of `/proc/meminfo`), and what a model and a
//! request are estimated to need, so that what cannot fit is refused before it allocates.
//!
//! The estimates are the one place the library sizes its work: the loader checks a model's
//! weights (at the dtype they are kept in) before reading them, [`super::run`] checks a request
//! (latents, the UNet's activations, the VAE decode and encode at the final size, after a hires
//! pass) before the first step, and the automatic VAE tiling tiles when the untiled decode would
//! not fit the same budget. They aim at the peak resident memory within some 20%: SD 1.5 at
//! 512² in f32 comes out at about 4.8 GB (measured peak RSS: 5.1 GB), SDXL at 1024² at about
//! 16 GB (measured: 17.2 GB).

use std::collections::BTreeMap;

use candle_core::DType;

use crate::model_family::ModelDescription;
use crate::text_encoder::ClipTextModel;
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::{Error, Result};

/// Buffers of the largest activation alive at once around a VAE resnet (input, normalized,
/// convolved, residual sum).
const VAE_LIVE_BUFFERS: u64 = 4;
/// Buffers of a UNet level's activation alive at once: a resnet's four, and a transformer's
/// feed-forward, whose GEGLU projection is 8 times as wide as the level.
const UNET_LIVE_BUFFERS: u64 = 12;
/// Copies of the latents a sampler keeps (the sample, the model output, the guided and
/// unguided halves, a multistep sampler's history, the noise).
const LATENT_COPIES: u64 = 8;

/// A `/proc/meminfo` entry in bytes (`None` where the file or the key is missing).
fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The machine's memory (`MemTotal`), or 16 GB where that is unknown.
pub fn total_memory() -> u64 {
    meminfo("MemTotal").unwrap_or(16_000_000_000)
}

/// The memory a new allocation can get now without swapping (`MemAvailable`), or half of
/// [`total_memory`] where that is unknown.
pub fn available_memory() -> u64 {
    meminfo("MemAvailable").unwrap_or_else(|| total_memory() / 2)
}

/// A byte count as people read it: `812 B`, `4.2 KB`, `37.5 MB`, `5.13 GB` (powers of 1000).
pub fn format_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.1} KB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// Reads a memory size: bytes (`1500000000`), or a number with a unit, `K`/`KB`, `M`/`MB`,
/// `G`/`GB`, `T`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), in any
/// case: `8G`, `1.5GB`, `512MiB`.
pub fn parse_memory_size(text: &str) -> Result<u64> {
    let bad = |why: &str| {
        Error::invalid(
            "memory size",
            format!("`{text}` {why} (write bytes or a size such as 8G, 512M, 1.5GB, 4GiB)"),
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad("is not a number"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad("has an unknown unit")),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad("is not a size of at least one byte"));
    }
    Ok(bytes as u64)
}

/// Checks that `needed` more bytes fit: against `max_memory` (the caller's limit for the whole
/// run) with `resident` bytes already taken by what was loaded before, or, without a limit,
/// against what the machine has available now (what is loaded is already taken from that).
/// `what` names what needs the memory in the error ("the model's weights (f32)").
pub fn check_fits(what: &str, needed: u64, resident: u64, max_memory: Option<u64>) -> Result<()> {
    let (needed, allowed) = match max_memory {
        Some(max) => (needed.saturating_add(resident), max),
        None => (needed, available_memory()),
    };
    if needed <= allowed {
        return Ok(());
    }
    Err(Error::MemoryBudget {
        what: what.to_string(),
        needed,
        allowed,
        limit_given: max_memory.is_some(),
    })
}

/// Elements of every tensor of `shapes`.
fn elements(shapes: &BTreeMap<String, Vec<usize>>) -> u64 {
    shapes
        .values()
        .map(|shape| shape.iter().map(|&d| d as u64).product::<u64>())
        .sum()
}

/// The bytes a model's weights take kept in `storage` (`--weight-dtype`): every tensor its text
/// encoders, UNet and VAE are built with (counted from shape-only weights, so nothing is read
/// or allocated), whatever the file stores besides (EMA copies, optimizer state).
pub fn weight_bytes(description: &ModelDescription, storage: DType) -> Result<u64> {
    weight_bytes_located(description, storage, |err, _| err)
}

/// [`weight_bytes`], with `locate(error, component)` turning a component's config error into
/// one that names its file (a diffusers folder's `unet/config.json`).
pub(crate) fn weight_bytes_located(
    description: &ModelDescription,
    storage: DType,
    locate: impl Fn(Error, &str) -> Error,
) -> Result<u64> {
    let mut count = 0u64;
    for text in &description.text_encoders {
        let shapes = crate::loading::record_shapes(|vb| {
            ClipTextModel::from_class(vb, &text.config, &text.class)
        })
        .map_err(|e| locate(e, &text.component))?;
        count = count.saturating_add(elements(&shapes));
    }
    let unet = crate::loading::record_shapes(|vb| UNet2DConditionModel::new(vb, &description.unet))
        .map_err(|e| locate(e, "unet"))?;
    let vae = crate::loading::record_shapes(|vb| AutoencoderKL::new(vb, &description.vae))
        .map_err(|e| locate(e, "vae"))?;
    count = count
        .saturating_add(elements(&unet))
        .saturating_add(elements(&vae));
    Ok(count.saturating_mul(storage.size_in_bytes() as u64))
}

/// About how many bytes decoding `batch` images of `width` x `height` in one piece takes: the
/// decoder's largest activation (channels times pixels at the resolution of each level) times
/// the few buffers alive around a resnet. Encoding an image of that size takes about the same.
pub fn decode_bytes(
    vae: &VaeConfig,
    width: usize,
    height: usize,
    batch: usize,
    dtype: DType,
) -> u64 {
    let pixels = width as u64 * height as u64;
    let largest = vae
        .block_out_channels
        .iter()
        .enumerate()
        .map(|(level, &channels)| channels as u64 * (pixels >> (2 * level).min(63)))
        .max()
        .unwrap_or(0);
    largest
        .saturating_mul(dtype.size_in_bytes() as u64)
        .saturating_mul(batch as u64)
        .saturating_mul(VAE_LIVE_BUFFERS)
}

/// About how many bytes decoding in tiles takes ([`AutoencoderKL::decode_tiled`]): one tile's
/// decode, and the decoded tiles, blended and joined, of the whole image (about four copies of
/// its pixels: the tiles overlap, then rows and the image are joined).
pub fn tiled_decode_bytes(
    vae: &VaeConfig,
    width: usize,
    height: usize,
    batch: usize,
    dtype: DType,
) -> u64 {
    let (_, tile) = vae.tile_sizes();
    let one_tile = decode_bytes(vae, tile.min(width), tile.min(height), batch, dtype);
    let image = 3 * width as u64 * height as u64 * batch as u64 * dtype.size_in_bytes() as u64;
    one_tile.saturating_add(image.saturating_mul(4))
}

/// About how many bytes the denoising loop takes for `batch` images of `width` x `height`
/// (pixels) beyond the weights, with classifier-free guidance (two UNet rows per image): the
/// latents and the sampler's copies of them, the down path's outputs the UNet keeps for its
/// skip connections, the buffers alive at its widest level, and, with `attention_scores`
/// (the portable attention, which forms score matrices; the CPU kernels form none), two chunks
/// of attention scores.
pub fn denoise_bytes(
    unet: &UNetConfig,
    vae: &VaeConfig,
    width: usize,
    height: usize,
    batch: usize,
    dtype: DType,
    attention_scores: bool,
) -> u64 {
    let factor = vae.downsample_factor().max(1);
    let pixels = (width / factor) as u64 * (height / factor) as u64;
    let rows = 2 * batch as u64;
    let levels: Vec<u64> = unet
        .block_out_channels
        .iter()
        .enumerate()
        .map(|(level, &channels)| channels as u64 * (pixels >> (2 * level).min(63)))
        .collect();
    let layers = unet
        .layers_per_block
        .expand(levels.len(), "layers_per_block")
        .unwrap_or_else(|_| vec![2; levels.len()]);
    let skips: u64 = levels
        .iter()
        .zip(&layers)
        .map(|(&level, &layers)| level.saturating_mul(layers as u64 + 1))
        .fold(0, u64::saturating_add);
    let widest = levels.iter().copied().max().unwrap_or(0);
    let activations = skips.saturating_add(widest.saturating_mul(UNET_LIVE_BUFFERS));
    let element = dtype.size_in_bytes() as u64;
    // The scores and their softmax, one chunk each (a 64x64 latent's already fill a chunk).
    let scores = match attention_scores {
        true => 2 * crate::nn::attention::MAX_SCORE_BYTES as u64,
        false => 0,
    };
    let latents = (unet.in_channels.max(unet.out_channels) as u64)
        .saturating_mul(pixels)
        .saturating_mul(LATENT_COPIES);
    activations
        .saturating_add(latents)
        .saturating_mul(rows)
        .saturating_mul(element)
        .saturating_add(scores)
}

/// The size of a request as the estimates see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSize {
    /// The final image width in pixels (after a hires pass).
    pub width: usize,
    /// The final image height in pixels.
    pub height: usize,
    /// Images made at once.
    pub batch: usize,
    /// Whether an image is VAE-encoded at the final size (img2img, inpainting, a hires pass).
    pub encodes: bool,
    /// Whether the VAE decodes in tiles.
    pub tiled: bool,
    /// Whether attention forms score matrices (the portable path: a GPU, or the CPU without
    /// its kernels); the CPU kernels' flash attention forms none.
    pub attention_scores: bool,
}

/// About how many bytes a request takes beyond the weights: the largest of the denoising loop,
/// the decode (tiled or not) and the encode, which never run at the same time.
pub fn request_bytes(
    unet: &UNetConfig,
    vae: &VaeConfig,
    size: RequestSize,
    dtype: DType,
    vae_dtype: DType,
) -> u64 {
    let RequestSize {
        width,
        height,
        batch,
        ..
    } = size;
    let denoise = denoise_bytes(
        unet,
        vae,
        width,
        height,
        batch,
        dtype,
        size.attention_scores,
    );
    let decode = match size.tiled {
        true => tiled_decode_bytes(vae, width, height, batch, vae_dtype),
        false => decode_bytes(vae, width, height, batch, vae_dtype),
    };
    let encode = match size.encodes {
        true => decode_bytes(vae, width, height, 1, vae_dtype),
        false => 0,
    };
    denoise.max(decode).max(encode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_family::ModelFamily;
    use crate::scheduler::PredictionType;

    #[test]
    fn the_figures_are_plausible() {
        let (total, available) = (total_memory(), available_memory());
        assert!(total >= 1 << 28, "{total}");
        assert!(
            available > 0 && available <= total,
            "{available} of {total}"
        );
    }

    fn sd15() -> ModelDescription {
        ModelDescription::preset(ModelFamily::Sd1, false, PredictionType::Epsilon)
    }

    fn sd15_request(side: usize, batch: usize) -> u64 {
        let d = sd15();
        let size = RequestSize {
            width: side,
            height: side,
            batch,
            encodes: false,
            tiled: false,
            attention_scores: false,
        };
        request_bytes(&d.unet, &d.vae, size, DType::F32, DType::F32)
    }

    #[test]
    fn sd15_512_in_f32_is_about_its_measured_peak() {
        let d = sd15();
        let weights = weight_bytes(&d, DType::F32).unwrap();
        // 1.07 billion parameters: UNet 860M, CLIP ViT-L 123M, VAE 84M.
        assert!(
            (4_100_000_000..4_400_000_000).contains(&weights),
            "{weights}"
        );
        assert_eq!(weight_bytes(&d, DType::BF16).unwrap() * 2, weights);
        // The README's peer benchmark measured a peak RSS of 5.13 GB (f32) for SD 1.5 at 512².
        let total = weights + sd15_request(512, 1);
        assert!(
            (4_300_000_000..6_200_000_000).contains(&total),
            "{}",
            format_bytes(total)
        );
    }

    #[test]
    fn sdxl_1024_in_f32_is_about_its_measured_peak() {
        let d = ModelDescription::preset(ModelFamily::Sdxl, false, PredictionType::Epsilon);
        let weights = weight_bytes(&d, DType::F32).unwrap();
        // 3.47 billion parameters: UNet 2.57B, CLIP ViT-L 123M, OpenCLIP bigG 695M, VAE 84M.
        assert!(
            (13_500_000_000..14_200_000_000).contains(&weights),
            "{weights}"
        );
        let size = RequestSize {
            width: 1024,
            height: 1024,
            batch: 1,
            encodes: false,
            tiled: false,
            attention_scores: false,
        };
        let total = weights + request_bytes(&d.unet, &d.vae, size, DType::F32, DType::F32);
        // Measured peak RSS: 17.16 GB (the README's SDXL peer benchmark).
        assert!(
            (14_500_000_000..19_000_000_000).contains(&total),
            "{}",
            format_bytes(total)
        );
    }

    #[test]
    fn estimates_grow_with_size_and_batch() {
        let mut last = 0;
        for side in [64, 128, 256, 512, 1024, 2048, 4096] {
            let bytes = sd15_request(side, 1);
            assert!(bytes > last, "{side}: {bytes} <= {last}");
            last = bytes;
        }
        assert!(sd15_request(512, 2) > sd15_request(512, 1));
        assert!(sd15_request(512, 4) > sd15_request(512, 2));
        // Quadrupling the pixels about quadruples the request.
        let ratio = sd15_request(2048, 1) as f64 / sd15_request(1024, 1) as f64;
        assert!((3.5..4.5).contains(&ratio), "{ratio}");
        // The portable attention's score chunks add at most 256 MiB.
        let d = sd15();
        let denoise = |scores| denoise_bytes(&d.unet, &d.vae, 512, 512, 1, DType::F32, scores);
        let extra = denoise(true) - denoise(false);
        assert_eq!(extra, 256 << 20);
    }

    #[test]
    fn tiles_bound_the_decode() {
        let vae = sd15().vae;
        let whole = decode_bytes(&vae, 4096, 4096, 1, DType::F32);
        let tiled = tiled_decode_bytes(&vae, 4096, 4096, 1, DType::F32);
        assert!(tiled * 4 < whole, "{tiled} vs {whole}");
        // One tile's decode does not depend on the image size; the joined image does.
        assert!(tiled_decode_bytes(&vae, 2048, 2048, 1, DType::F32) < tiled);
        assert!(
            tiled_decode_bytes(&vae, 2048, 2048, 1, DType::F32)
                >= decode_bytes(&vae, 512, 512, 1, DType::F32)
        );
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_overflowing() {
        let d = sd15();
        let size = RequestSize {
            width: usize::MAX,
            height: usize::MAX,
            batch: usize::MAX,
            encodes: true,
            tiled: false,
            attention_scores: true,
        };
        assert_eq!(
            request_bytes(&d.unet, &d.vae, size, DType::F32, DType::F32),
            u64::MAX
        );
    }

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory_size("1500").unwrap(), 1500);
        assert_eq!(parse_memory_size("8G").unwrap(), 8_000_000_000);
        assert_eq!(parse_memory_size("1.5gb").unwrap(), 1_500_000_000);
        assert_eq!(parse_memory_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_memory_size(" 2 KB ").unwrap(), 2000);
        for bad in ["", "G", "-1G", "0", "1.2.3G", "8 parsecs", "1e400", "0.5"] {
            let err = parse_memory_size(bad).unwrap_err().to_string();
            assert!(err.contains("memory size"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_limit_counts_what_is_loaded() {
        assert!(check_fits("x", 10, 0, Some(10)).is_ok());
        let err = check_fits("the request", 6, 5, Some(10)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("11 B") && text.contains("10 B"), "{text}");
        assert!(check_fits("x", u64::MAX, 0, None).is_err());
    }
}
