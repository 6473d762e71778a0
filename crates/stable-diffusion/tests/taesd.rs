//! AutoencoderTiny (TAESD) parity against diffusers on a tiny random model, TAESD's own file
//! layout, the full-size manifest, and refusals of what is not a tiny VAE.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use stable_diffusion::loading::record_shapes;
use stable_diffusion::pipeline::preview::tiny_images;
use stable_diffusion::vae::{AutoencoderTiny, TinyVaeConfig};
use stable_diffusion::Error;

const TOL: f32 = 1e-4;

fn load(rel: &str) -> AutoencoderTiny {
    AutoencoderTiny::load(&common::fixture(rel), DType::F32, &Device::Cpu).unwrap()
}

fn load_err(path: &Path) -> Error {
    AutoencoderTiny::load(path, DType::F32, &Device::Cpu).unwrap_err()
}

#[test]
fn decode_and_encode_match_diffusers_at_every_cpu_kernel_level() {
    let vae = load("models/tiny-taesd");
    assert!(vae.has_encoder() && vae.has_decoder());
    let fx = common::load_tensors("taesd/tiny.safetensors");
    for level in sd_kernels::Level::available() {
        sd_kernels::cpu::with_level(level, || {
            for suffix in ["", "_odd"] {
                let what = |name: &str| format!("{level} {name}{suffix}");
                let decoded = vae.decode(&fx[&format!("latents{suffix}")]).unwrap();
                let expected = &fx[&format!("decoded{suffix}")];
                let encoded = vae.encode(&fx[&format!("images{suffix}")]).unwrap();
                let expected_latents = &fx[&format!("encoded{suffix}")];
                common::assert_close(&what("encoded"), &encoded, expected_latents, TOL);
                common::assert_close(&what("decoded"), &decoded, expected, TOL);
                println!(
                    "{}: decode {:e}, encode {:e}",
                    what(""),
                    common::max_abs_diff(&decoded, expected),
                    common::max_abs_diff(&encoded, expected_latents)
                );
            }
        });
    }
    // Three 2x stages: 4x6 latents make 32x48 pixels, 32x48 pixels make 4x6 latents.
    assert_eq!(fx["decoded"].dims(), &[2, 3, 32, 48]);
    assert_eq!(fx["encoded_odd"].dims(), &[1, 4, 5, 3]);
}

#[test]
fn taesd_part_files_load_under_their_own_names_with_the_layout_read_from_the_tensors() {
    let folder = load("models/tiny-taesd");
    let decoder = load("taesd/taesd_decoder.safetensors");
    let encoder = load("taesd/taesd_encoder.safetensors");
    assert!(decoder.has_decoder() && !decoder.has_encoder());
    assert!(encoder.has_encoder() && !encoder.has_decoder());
    // No config.json beside them: the tensors give the same layout as the folder's config.
    let (d, e, f) = (decoder.config(), encoder.config(), folder.config());
    assert_eq!(
        (
            d.latent_channels,
            d.out_channels,
            &d.decoder_block_out_channels,
            &d.num_decoder_blocks
        ),
        (
            f.latent_channels,
            f.out_channels,
            &f.decoder_block_out_channels,
            &f.num_decoder_blocks
        ),
    );
    assert_eq!(
        (
            e.latent_channels,
            e.in_channels,
            &e.encoder_block_out_channels,
            &e.num_encoder_blocks
        ),
        (
            f.latent_channels,
            f.in_channels,
            &f.encoder_block_out_channels,
            &f.num_encoder_blocks
        ),
    );
    let fx = common::load_tensors("taesd/tiny.safetensors");
    let decoded = decoder.decode(&fx["latents"]).unwrap();
    assert_eq!(
        common::max_abs_diff(&decoded, &folder.decode(&fx["latents"]).unwrap()),
        0.0
    );
    let encoded = encoder.encode(&fx["images"]).unwrap();
    assert_eq!(
        common::max_abs_diff(&encoded, &folder.encode(&fx["images"]).unwrap()),
        0.0
    );
    // The folder's weights file alone (no config.json) reads the same layout too.
    let file = load("models/tiny-taesd/diffusion_pytorch_model.safetensors");
    assert_eq!(file.config(), folder.config());

    let err = encoder.decode(&fx["latents"]).unwrap_err();
    assert!(err.to_string().contains("no decoder"), "{err}");
    let err = decoder.encode(&fx["images"]).unwrap_err();
    assert!(err.to_string().contains("no encoder"), "{err}");
}

#[test]
fn published_config_matches_the_full_size_manifest() {
    let config = TinyVaeConfig::default();
    let recorded = record_shapes(|vb| AutoencoderTiny::new(vb, &config, true, true)).unwrap();
    common::assert_matches_manifest("taesd", &recorded);
}

#[test]
fn what_is_not_a_tiny_vae_is_refused_naming_the_file() {
    // The full VAE's weights hold none of TAESD's tensors.
    let kl = common::fixture("models/tiny-sd15/vae/diffusion_pytorch_model.safetensors");
    let err = load_err(&kl);
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("not a TAESD"), "{err}");
    assert!(err.to_string().contains("tiny-sd15"), "{err}");

    let err = load_err(Path::new("/nonexistent/taesd_decoder.safetensors"));
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    let dir = std::env::temp_dir().join(format!("sd-rs-taesd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("taesd_decoder.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err = load_err(&garbage);
    assert!(
        err.to_string().contains("taesd_decoder.safetensors"),
        "{err}"
    );

    // A folder whose config disagrees with its weights names the tensor.
    let folder = dir.join("taesd");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        common::fixture("models/tiny-taesd/diffusion_pytorch_model.safetensors"),
        folder.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        folder.join("config.json"),
        r#"{"decoder_block_out_channels": [16, 16, 16, 16], "encoder_block_out_channels": [8, 8, 8, 8]}"#,
    )
    .unwrap();
    let err = load_err(&folder).to_string();
    assert!(err.contains("decoder.layers.0.weight"), "{err}");

    for (config, needle) in [
        (
            r#"{"decoder_block_out_channels": [8, 16, 8, 8]}"#,
            "one width",
        ),
        (r#"{"num_decoder_blocks": [3, 3]}"#, "same length"),
        (
            r#"{"num_encoder_blocks": [1, 3, 3, 100000]}"#,
            "more than the 64",
        ),
        (r#"{"upsample_fn": "bilinear"}"#, "bilinear"),
        (r#"{"latent_channels": 0}"#, "latent_channels"),
        (r#"{"act_fn": "tanh"}"#, "tanh"),
        (r#"{"upsampling_scaling_factor": 8}"#, "scales by 512"),
        (
            r#"{"num_decoder_blocks": [1, 1, 1, 1, 1, 1], "decoder_block_out_channels": [8, 8, 8, 8, 8, 8]}"#,
            "scales by 32",
        ),
    ] {
        std::fs::write(folder.join("config.json"), config).unwrap();
        let err = load_err(&folder).to_string();
        assert!(err.contains(needle), "{config}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latents_of_another_width_are_refused() {
    let vae = load("models/tiny-taesd");
    let latents = candle_core::Tensor::zeros((1, 16, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&latents).unwrap_err();
    assert!(err.to_string().contains("16 channels"), "{err}");
}

#[test]
fn previews_decode_the_estimate_into_full_size_pictures() {
    let vae = load("models/tiny-taesd");
    let fx = common::load_tensors("taesd/tiny.safetensors");
    let pictures = tiny_images(&fx["latents"], &vae).unwrap();
    let expected = stable_diffusion::image::tensor_to_images(&fx["decoded"]).unwrap();
    assert_eq!(pictures.len(), 2);
    for (picture, expected) in pictures.iter().zip(&expected) {
        assert_eq!(picture.dimensions(), (48, 32));
        // Equal to diffusers' decode after its post-processing (a value a rounding away from
        // a half may land on the next level).
        let worst = picture
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "a pixel differs by {worst}");
    }
    // bf16 latents (a bf16 model's estimate) decode too.
    let half = fx["latents"].to_dtype(DType::BF16).unwrap();
    assert_eq!(tiny_images(&half, &vae).unwrap()[0].dimensions(), (48, 32));
}
