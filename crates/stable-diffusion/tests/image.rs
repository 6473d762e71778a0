//! The image layer: diffusers' pre/post-processing, PNG text chunks, A1111 infotext.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use stable_diffusion::image::{
    format_float, image_to_tensor, load_image, load_init_image, png::png_text_from_bytes, quote,
    read_parameters, read_png_text, save_png, save_png_with_infotext, tensor_to_images, unquote,
    InfoText, Resize, RgbImage,
};
use stable_diffusion::Error;

/// A fresh, empty scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-image-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gradient(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        ::image::Rgb([(x * 7) as u8, (y * 13) as u8, ((x + y) * 3) as u8])
    })
}

#[test]
fn postprocess_matches_diffusers_pil_output_exactly() {
    let fx = common::load_tensors("image/processing.safetensors");
    let images = tensor_to_images(&fx["decoded"]).unwrap();
    let expected = &fx["pixels"]; // (B, H, W, 3) u8
    let (batch, height, width, _) = expected.dims4().unwrap();
    assert_eq!(images.len(), batch);
    for (b, image) in images.iter().enumerate() {
        assert_eq!(
            (image.width() as usize, image.height() as usize),
            (width, height)
        );
        let want = expected
            .get(b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap();
        assert_eq!(image.as_raw(), &want, "image {b}");
    }
    // Row 0 of image 0, red channel: exact .5 ties round half to even (64.5 -> 64, 65.5 -> 66).
    let red: Vec<u8> = (0..12).map(|x| images[0].get_pixel(x, 0).0[0]).collect();
    assert_eq!(red, vec![64, 66, 66, 68, 68, 70, 70, 72, 72, 74, 74, 76]);
}

#[test]
fn preprocess_matches_diffusers_exactly_for_a_same_size_png() {
    let fx = common::load_tensors("image/processing.safetensors");
    let path = common::fixture("image/rgb_24x16.png");
    let tensor = load_init_image(&path, 24, 16, Resize::Exact, &Device::Cpu).unwrap();
    common::assert_close("preprocessed", &tensor, &fx["preprocessed"], 0.0);
    let via_image = image_to_tensor(&load_image(&path).unwrap(), &Device::Cpu).unwrap();
    common::assert_close("image_to_tensor", &via_image, &fx["preprocessed"], 0.0);
}

#[test]
fn postprocess_then_preprocess_round_trips_pixels() {
    let image = gradient(9, 5);
    let tensor = image_to_tensor(&image, &Device::Cpu).unwrap();
    assert_eq!(tensor.dims(), &[1, 3, 5, 9]);
    assert_eq!(tensor_to_images(&tensor).unwrap()[0], image);
}

#[test]
fn postprocess_rejects_non_rgb_tensors() {
    let four = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(tensor_to_images(&four).is_err());
}

#[test]
fn init_image_of_another_size_is_refused_or_resized() {
    let path = common::fixture("image/rgb_24x16.png");
    let err = load_init_image(&path, 32, 32, Resize::Exact, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("rgb_24x16.png") && msg.contains("24x16") && msg.contains("32x32"),
        "{msg}"
    );
    let resized = load_init_image(&path, 32, 8, Resize::Lanczos3, &Device::Cpu).unwrap();
    assert_eq!(resized.dims(), &[1, 3, 8, 32]);
    let (min, max) = (
        resized.min_all().unwrap().to_scalar::<f32>().unwrap(),
        resized.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!((-1.0..=1.0).contains(&min) && (-1.0..=1.0).contains(&max));
}

#[test]
fn missing_and_corrupt_images_are_image_errors_naming_the_path() {
    let dir = scratch("corrupt");
    let missing = dir.join("nope.png");
    let err = load_image(&missing).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    assert!(err.to_string().contains("nope.png"), "{err}");

    let corrupt = dir.join("corrupt.png");
    let mut bytes = std::fs::read(common::fixture("image/rgb_24x16.png")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    for err in [
        load_image(&corrupt).unwrap_err(),
        read_png_text(&corrupt).unwrap_err(),
        read_png_text(&missing).unwrap_err(),
    ] {
        assert!(matches!(err, Error::Image { .. }), "{err}");
        assert!(err.to_string().contains(".png"), "{err}");
    }
    std::fs::write(&corrupt, b"not an image at all").unwrap();
    let err = load_image(&corrupt).unwrap_err();
    assert!(err.to_string().contains("corrupt.png"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn reads_parameters_that_pil_wrote_as_text_itxt_and_ztxt() {
    let expected = common::load_json("image/text_chunks.json");
    for (file, text) in expected.as_object().unwrap() {
        let path = common::fixture(&format!("image/{file}"));
        let found = read_parameters(&path).unwrap();
        assert_eq!(found.as_deref(), text.as_str(), "{file}");
    }
    let none = read_parameters(common::fixture("image/rgb_24x16.png")).unwrap();
    assert_eq!(none, None);
}

/// The chunk types in a PNG, in file order.
fn chunk_types(bytes: &[u8]) -> Vec<String> {
    let mut types = Vec::new();
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        types.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        at += 12 + len;
    }
    types
}

#[test]
fn writes_latin1_as_text_and_other_text_as_itxt_like_pil() {
    let dir = scratch("chunks");
    let image = gradient(6, 4);
    let latin1 = InfoText::new("café au lait", "").with("Steps", 20);
    let path = dir.join("latin1.png");
    save_png_with_infotext(&path, &image, &latin1).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(chunk_types(&bytes), ["IHDR", "tEXt", "IDAT", "IEND"]);
    // tEXt holds the keyword, a NUL and the Latin-1 bytes.
    let pos = bytes
        .windows(11)
        .position(|w| w == b"parameters\0")
        .unwrap();
    assert_eq!(&bytes[pos + 11..pos + 15], b"caf\xe9");

    let unicode = InfoText::new("猫 ✨", "").with("Steps", 20);
    let path = dir.join("unicode.png");
    save_png_with_infotext(&path, &image, &unicode).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(chunk_types(&bytes), ["IHDR", "iTXt", "IDAT", "IEND"]);
    // iTXt as PIL writes it: keyword, NUL, uncompressed, method 0, empty language, empty
    // translated keyword, UTF-8 text.
    let mut header = b"parameters\0\0\0\0\0".to_vec();
    header.extend_from_slice("猫".as_bytes());
    assert!(bytes.windows(header.len()).any(|w| w == header.as_slice()));
    assert_eq!(read_parameters(&path).unwrap(), Some(unicode.to_string()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn png_round_trips_pixels_and_every_text_chunk() {
    let dir = scratch("roundtrip");
    let path = dir.join("out.png");
    let image = gradient(10, 7);
    let text = vec![
        (
            "parameters".to_string(),
            "a\nSteps: 1, Seed: 2, Size: 10x7".to_string(),
        ),
        ("comment".to_string(), "ünïcödé ✓".to_string()),
    ];
    save_png(&path, &image, &text).unwrap();
    assert_eq!(load_image(&path).unwrap(), image);
    let mut found = read_png_text(&path).unwrap();
    found.sort();
    let mut want = text.clone();
    want.sort();
    assert_eq!(found, want);
    let bytes = std::fs::read(&path).unwrap();
    let mut again = png_text_from_bytes(&bytes, &path).unwrap();
    again.sort();
    assert_eq!(again, want);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn saving_is_atomic_and_leaves_no_temporary_files() {
    let dir = scratch("atomic");
    let path = dir.join("image.png");
    std::fs::write(&path, b"old contents").unwrap();
    save_png(&path, &gradient(4, 4), &[]).unwrap();
    assert_eq!(load_image(&path).unwrap(), gradient(4, 4));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["image.png"]);

    // A folder that does not exist: an I/O error naming the target, and nothing written.
    let bad = dir.join("missing-folder").join("x.png");
    let err = save_png(&bad, &gradient(2, 2), &[]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("x.png"), "{err}");
    assert!(!bad.exists());

    // A bad text key is refused before anything is written.
    let err = save_png(
        dir.join("k.png"),
        &gradient(2, 2),
        &[(String::new(), "v".into())],
    );
    assert!(err.is_err());
    assert!(!dir.join("k.png").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

fn params_of(value: &serde_json::Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_parsed(text: &str, parsed: &serde_json::Value) {
    let info = InfoText::parse(text);
    assert_eq!(
        info.prompt,
        parsed["prompt"].as_str().unwrap(),
        "prompt of {text:?}"
    );
    assert_eq!(
        info.negative_prompt,
        parsed["negative_prompt"].as_str().unwrap(),
        "negative prompt of {text:?}"
    );
    assert_eq!(
        info.params,
        params_of(&parsed["params"]),
        "params of {text:?}"
    );
}

#[test]
fn infotext_formats_and_parses_like_a1111() {
    let cases = common::load_json("image/infotext.json");
    for case in cases["create"].as_array().unwrap() {
        let info = InfoText {
            prompt: case["prompt"].as_str().unwrap().to_string(),
            negative_prompt: case["negative_prompt"].as_str().unwrap().to_string(),
            params: params_of(&case["params"]),
        };
        let text = case["text"].as_str().unwrap();
        assert_eq!(info.to_string(), text);
        assert_parsed(text, &case["parsed"]);
    }
    for case in cases["parse"].as_array().unwrap() {
        assert_parsed(case["text"].as_str().unwrap(), &case["parsed"]);
    }
    for (value, quoted) in cases["quote"].as_object().unwrap() {
        assert_eq!(quote(value), quoted.as_str().unwrap(), "quote({value:?})");
        assert_eq!(unquote(&quote(value)), *value);
    }
}

#[test]
fn infotext_writes_the_documented_a1111_layout() {
    let info = InfoText::new("a lighthouse at dusk, oil painting", "blurry, text")
        .with("Steps", 20)
        .with("Sampler", "Euler a")
        .with("Schedule type", "Karras")
        .with("CFG scale", format_float(7.0))
        .with("Seed", 1234)
        .with("Size", "512x512")
        .with("Model hash", "abcdef1234")
        .with("Model", "name");
    let text = "a lighthouse at dusk, oil painting\n\
                Negative prompt: blurry, text\n\
                Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, \
                Size: 512x512, Model hash: abcdef1234, Model: name";
    assert_eq!(info.to_string(), text);
    assert_eq!(InfoText::parse(text), info);
    assert_eq!(info.get("Seed"), Some("1234"));
    assert_eq!(info.get("Clip skip"), None);

    // Without a negative prompt the line is left out.
    let bare = InfoText::new("x", "").with("Steps", 1);
    assert_eq!(bare.to_string(), "x\nSteps: 1");
}

#[test]
fn infotext_quotes_values_with_separators_and_round_trips_them() {
    let info = InfoText::new("p", "")
        .with("Steps", 20)
        .with("Lora hashes", "add_detail: 7c6bad76eb54, style: 0123abcd")
        .with("Prompt note", "line1\nline2 \"q\" \\ end")
        .with("Seed", 1);
    let text = info.to_string();
    assert_eq!(
        text,
        "p\nSteps: 20, Lora hashes: \"add_detail: 7c6bad76eb54, style: 0123abcd\", \
         Prompt note: \"line1\\nline2 \\\"q\\\" \\\\ end\", Seed: 1"
    );
    assert_eq!(InfoText::parse(&text), info);
}

#[test]
fn infotext_with_too_few_params_keeps_the_last_line_in_the_prompt() {
    let info = InfoText::parse("first line\nSteps: 20, Seed: 3");
    assert_eq!(info.prompt, "first line\nSteps: 20, Seed: 3");
    assert!(info.params.is_empty());
}

#[test]
fn floats_are_formatted_as_a1111_shows_them() {
    assert_eq!(format_float(7.0), "7");
    assert_eq!(format_float(7.5), "7.5");
    assert_eq!(format_float(0.75), "0.75");
    assert_eq!(format_float(-2.0), "-2");
    assert_eq!(format_float(0.1 + 0.2), "0.30000000000000004");
    assert_eq!(format_float(0.0001), "0.0001");
    assert_eq!(format_float(0.00001), "1e-05");
    assert_eq!(format_float(1.5e-7), "1.5e-07");
    assert_eq!(format_float(1e16), "1e+16");
    assert_eq!(format_float(12345.678), "12345.678");
}

/// CRC-32 (PNG's polynomial) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `width` x `height` 1-bit gray pixels, with a tiny (truncated)
/// image stream: a few bytes that would decode to gigabytes.
fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([1, 0, 0, 0, 0]); // 1-bit grayscale, deflate, adaptive filter, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn images_that_claim_too_many_pixels_are_refused_before_decoding() {
    let bomb = stable_diffusion::image::ImageData(bomb_png(22000, 22000));
    let err = bomb.decode("init image").unwrap_err().to_string();
    assert!(
        err.contains("22000x22000") && err.contains("megapixels") && err.contains("init image"),
        "{err}"
    );
    let dir = scratch("bomb");
    let path = dir.join("bomb.png");
    std::fs::write(&path, bomb_png(9000, 9000)).unwrap();
    let err = load_image(&path).unwrap_err().to_string();
    assert!(
        err.contains("9000x9000") && err.contains("bomb.png"),
        "{err}"
    );
    // Within the limit, the same truncated stream is an ordinary decode error.
    let err = stable_diffusion::image::ImageData(bomb_png(64, 64))
        .decode("mask")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot decode"), "{err}");
}
