//! Tensor <-> image conversion and PNG files with AUTOMATIC1111 infotext.
//!
//! - [`tensor_to_images`] turns the VAE's decoded `(B, 3, H, W)` output into RGB8 images with the
//!   exact arithmetic of diffusers' `VaeImageProcessor.postprocess(output_type="pil")`.
//! - [`image_to_tensor`] / [`load_init_image`] turn an image into the `(1, 3, H, W)` tensor in
//!   `[-1, 1]` that `VaeImageProcessor.preprocess` makes for img2img.
//! - [`png`] writes PNGs atomically with text chunks and reads them back; [`infotext`] formats
//!   and parses AUTOMATIC1111's `parameters` text.

mod data;
pub mod infotext;
pub mod png;

use std::path::Path;

use ::image::imageops::FilterType;
use candle_core::{DType, Device, Tensor};

pub use self::data::ImageData;
pub use self::infotext::{format_float, quote, unquote, InfoText};
pub use self::png::{
    encode_png, read_parameters, read_png_text, save_png, save_png_with_infotext,
    write_all_atomically, write_atomically, PARAMETERS_KEY,
};
pub use ::image::RgbImage;

use crate::{Error, Result};

/// Tiles images of one size into one picture, `columns` per row, row-major (an empty list
/// gives a 1x1 black image).
pub fn grid(images: &[RgbImage], columns: usize) -> RgbImage {
    let (w, h) = images
        .first()
        .map(|i| (i.width(), i.height()))
        .unwrap_or((1, 1));
    let columns = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(columns).max(1) as u32;
    let mut out = RgbImage::new(w * columns as u32, h * rows);
    for (i, img) in images.iter().enumerate() {
        let (x, y) = ((i % columns) as u32 * w, (i / columns) as u32 * h);
        ::image::imageops::replace(&mut out, img, x as i64, y as i64);
    }
    out
}

/// Decoded images `(B, 3, H, W)`, about `[-1, 1]`, → one RGB8 image per batch entry.
///
/// Matches diffusers bit for bit: `v = clamp(x · 0.5 + 0.5, 0, 1)` in f32, then
/// `round(v · 255)` with numpy's round-half-to-even, then `uint8`.
pub fn tensor_to_images(decoded: &Tensor) -> Result<Vec<RgbImage>> {
    let (batch, channels, height, width) = decoded.dims4()?;
    if channels != 3 {
        return Err(Error::invalid(
            "decoded images",
            format!("expected 3 channels (RGB), found {channels}"),
        ));
    }
    let values = decoded
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = height * width;
    let mut images = Vec::with_capacity(batch);
    for b in 0..batch {
        let chw = &values[b * 3 * plane..(b + 1) * 3 * plane];
        let mut pixels = Vec::with_capacity(3 * plane);
        for i in 0..plane {
            for c in 0..3 {
                pixels.push(to_u8(chw[c * plane + i]));
            }
        }
        let image = RgbImage::from_raw(width as u32, height as u32, pixels)
            .expect("buffer size matches the dimensions");
        images.push(image);
    }
    Ok(images)
}

/// One channel value in `[-1, 1]` → u8, as diffusers' denormalize + `numpy_to_pil` compute it.
fn to_u8(x: f32) -> u8 {
    let unit = (x * 0.5 + 0.5).clamp(0.0, 1.0);
    // `as u8` saturates and maps NaN to 0.
    (unit * 255.0).round_ties_even() as u8
}

/// An RGB8 image → `(1, 3, H, W)` f32 in `[-1, 1]` on `device`: `2 · (v / 255) − 1` in f32,
/// as `VaeImageProcessor.preprocess` computes it.
pub fn image_to_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let plane = width * height;
    let mut chw = vec![0f32; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            let unit = pixel.0[c] as f32 / 255.0;
            chw[c * plane + i] = 2.0 * unit - 1.0;
        }
    }
    Ok(Tensor::from_vec(chw, (1, 3, height, width), device)?)
}

/// Reads an image file (PNG, JPEG or WebP) as RGB8. Alpha is dropped without compositing and
/// grayscale is expanded, as PIL's `convert("RGB")` does.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let image_error = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| image_error(format!("cannot read: {e}")))?;
    decode_image(&bytes).map_err(image_error)
}

/// The most pixels an input image may have (64 megapixels: 16384 x 4096, 8192 x 8192, ...),
/// checked from its header before any pixel is decoded, so a small file that claims a huge
/// size (a decompression bomb) is refused without the memory.
pub const MAX_INPUT_PIXELS: u64 = 64 << 20;

/// The most bytes decoding one input image may allocate.
const MAX_DECODE_ALLOC: u64 = 1 << 30;

/// Decodes PNG, JPEG or WebP bytes to RGB8 within [`MAX_INPUT_PIXELS`]; the error is the
/// message alone (callers add the source).
pub(crate) fn decode_image(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let reader = ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| format!("cannot decode: {e}"))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_INPUT_PIXELS {
        return Err(format!(
            "{width}x{height} is {:.0} megapixels, more than the {} megapixels an input image may \
             have",
            pixels as f64 / (1 << 20) as f64,
            MAX_INPUT_PIXELS >> 20
        ));
    }
    let mut reader = ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut limits = ::image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| format!("cannot decode: {e}"))?;
    Ok(decoded.to_rgb8())
}

/// What to do when an init image's size differs from the requested one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resize {
    /// Refuse images of another size (the only mode with bit-exact parity with diffusers).
    #[default]
    Exact,
    /// Stretch to the requested size with a Lanczos (a = 3) filter, like diffusers' default
    /// `resize_mode="default"` with PIL's LANCZOS; the pixels are close to PIL's but not equal.
    Lanczos3,
}

/// Fits `image` to `width` x `height` according to `resize`.
pub fn fit_image(image: RgbImage, width: u32, height: u32, resize: Resize) -> Result<RgbImage> {
    if image.width() == width && image.height() == height {
        return Ok(image);
    }
    match resize {
        Resize::Exact => Err(Error::invalid(
            "init image",
            format!(
                "the image is {}x{}, the request is {width}x{height} (resize it, or allow resizing)",
                image.width(),
                image.height()
            ),
        )),
        Resize::Lanczos3 => Ok(::image::imageops::resize(
            &image,
            width,
            height,
            FilterType::Lanczos3,
        )),
    }
}

/// Loads an img2img init image as `(1, 3, height, width)` in `[-1, 1]` on `device`.
///
/// `width` and `height` are the generation size (diffusers first rounds them down to a multiple
/// of the VAE factor, 8; the pipeline validates that). Images of another size are refused or
/// resized according to `resize`.
pub fn load_init_image(
    path: impl AsRef<Path>,
    width: u32,
    height: u32,
    resize: Resize,
    device: &Device,
) -> Result<Tensor> {
    let path = path.as_ref();
    let image = fit_image(load_image(path)?, width, height, resize).map_err(|e| match e {
        Error::InvalidArgument { msg, .. } => Error::Image {
            path: path.to_path_buf(),
            msg,
        },
        other => other,
    })?;
    image_to_tensor(&image, device)
}
