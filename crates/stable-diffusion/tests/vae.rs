//! AutoencoderKL parity against diffusers on the tiny random VAE, and full-size manifests.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stable_diffusion::loading::record_shapes;
use stable_diffusion::rng::NoiseSource;
use stable_diffusion::vae::{AutoencoderKL, VaeConfig};
use stable_diffusion::Error;

const TOL: f32 = 1e-4;

fn tiny_vae() -> AutoencoderKL {
    let config = VaeConfig::from_file(common::fixture("models/tiny-sd15/vae/config.json")).unwrap();
    let weights = common::load_tensors("models/tiny-sd15/vae/diffusion_pytorch_model.safetensors");
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    AutoencoderKL::new(vb, &config).unwrap()
}

#[test]
fn tiny_config_reads_diffusers_values_and_defaults() {
    let config = VaeConfig::from_file(common::fixture("models/tiny-sd15/vae/config.json")).unwrap();
    assert_eq!(config.block_out_channels, vec![8, 16, 16, 16]);
    assert_eq!(config.norm_num_groups, 4);
    assert_eq!(config.layers_per_block, 1);
    assert_eq!(config.scaling_factor, 0.18215);
    assert_eq!(config.shift_factor, None);
    assert_eq!(config.downsample_factor(), 8);
    assert!(config.use_quant_conv && config.use_post_quant_conv);

    // Missing keys take diffusers' defaults.
    let sparse = VaeConfig::from_json("{\"latent_channels\": 4}", "mem".as_ref()).unwrap();
    assert_eq!(sparse, VaeConfig::default());
}

#[test]
fn config_rejects_unknown_block_types_and_bad_group_counts() {
    let err = VaeConfig::from_json(
        r#"{"down_block_types": ["AttnDownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"]}"#,
        "cfg.json".as_ref(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("AttnDownEncoderBlock2D"), "{err}");
    let err = VaeConfig::from_json(
        r#"{"block_out_channels": [30], "norm_num_groups": 32}"#,
        "cfg.json".as_ref(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("cfg.json"), "{err}");
    let err = VaeConfig::from_file("/nonexistent/vae/config.json").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn encode_matches_reference_on_tiny_sd15() {
    let vae = tiny_vae();
    let fx = common::load_tensors("vae/tiny_sd15.safetensors");
    for suffix in ["", "_odd"] {
        let posterior = vae.encode(&fx[&format!("images{suffix}")]).unwrap();
        let what = |name: &str| format!("{name}{suffix}");
        common::assert_close(&what("mean"), &posterior.mean, &fx[&what("mean")], TOL);
        common::assert_close(
            &what("logvar"),
            &posterior.logvar,
            &fx[&what("logvar")],
            TOL,
        );
        common::assert_close(
            &what("std"),
            &posterior.std().unwrap(),
            &fx[&what("std")],
            TOL,
        );
        common::assert_close(
            &what("mode"),
            &posterior.mode().unwrap(),
            &fx[&what("mean")],
            TOL,
        );
        let sample = posterior.sample_with_noise(&fx[&what("noise")]).unwrap();
        common::assert_close(&what("sample"), &sample, &fx[&what("sample")], TOL);
        println!(
            "encode{suffix}: mean {:e} logvar {:e} sample {:e}",
            common::max_abs_diff(&posterior.mean, &fx[&what("mean")]),
            common::max_abs_diff(&posterior.logvar, &fx[&what("logvar")]),
            common::max_abs_diff(&sample, &fx[&what("sample")]),
        );
    }
}

#[test]
fn logvar_is_clamped_at_minus_30() {
    // The fixture's quant_conv drives logvar channel 3 far below -30.
    let vae = tiny_vae();
    let fx = common::load_tensors("vae/tiny_sd15.safetensors");
    let posterior = vae.encode(&fx["images"]).unwrap();
    let channel3 = posterior
        .logvar
        .narrow(1, 3, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    for v in channel3.to_vec1::<f32>().unwrap() {
        assert_eq!(v, -30.0);
    }
}

#[test]
fn decode_matches_reference_on_tiny_sd15() {
    let vae = tiny_vae();
    let fx = common::load_tensors("vae/tiny_sd15.safetensors");
    for suffix in ["", "_odd"] {
        let decoded = vae.decode(&fx[&format!("latents{suffix}")]).unwrap();
        let expected = &fx[&format!("decoded{suffix}")];
        common::assert_close(&format!("decoded{suffix}"), &decoded, expected, TOL);
        println!(
            "decode{suffix}: {:?} max abs diff {:e}",
            decoded.dims(),
            common::max_abs_diff(&decoded, expected)
        );
    }
    assert_eq!(fx["decoded_odd"].dims(), &[1, 3, 48, 80]);
}

/// Replays stored noise, to check that `sample` draws `randn(mean.shape)` once.
struct StoredNoise(Option<Tensor>);

impl NoiseSource for StoredNoise {
    fn randn(&mut self, shape: &[usize], _device: &Device) -> stable_diffusion::Result<Tensor> {
        let noise = self.0.take().expect("drawn once");
        assert_eq!(noise.dims(), shape);
        Ok(noise)
    }
}

#[test]
fn sample_draws_noise_of_the_mean_shape_from_the_rng() {
    let vae = tiny_vae();
    let fx = common::load_tensors("vae/tiny_sd15.safetensors");
    let posterior = vae.encode(&fx["images_odd"]).unwrap();
    let mut rng = StoredNoise(Some(fx["noise_odd"].clone()));
    let sample = posterior.sample(&mut rng).unwrap();
    common::assert_close("sample_odd", &sample, &fx["sample_odd"], TOL);
    assert!(rng.0.is_none());
}

#[test]
fn wrong_channel_counts_are_clear_errors() {
    let vae = tiny_vae();
    let err = vae
        .decode(&Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("3 channels"), "{err}");
    let err = vae
        .encode(&Tensor::zeros((1, 4, 16, 16), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("4 channels"), "{err}");
}

#[test]
fn missing_weights_name_the_tensor() {
    let config = VaeConfig::from_file(common::fixture("models/tiny-sd15/vae/config.json")).unwrap();
    let mut weights =
        common::load_tensors("models/tiny-sd15/vae/diffusion_pytorch_model.safetensors");
    weights.remove("decoder.mid_block.attentions.0.to_out.0.weight");
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let err = AutoencoderKL::new(vb, &config).unwrap_err();
    assert!(
        err.to_string()
            .contains("decoder.mid_block.attentions.0.to_out.0.weight"),
        "{err}"
    );
}

#[test]
fn sd15_preset_matches_the_full_size_manifest() {
    let recorded = record_shapes(|vb| AutoencoderKL::new(vb, &VaeConfig::sd15())).unwrap();
    common::assert_matches_manifest("vae_sd15", &recorded);
}

#[test]
fn sdxl_preset_matches_the_full_size_manifest() {
    let config = VaeConfig::sdxl();
    assert_eq!(config.scaling_factor, 0.13025);
    let recorded = record_shapes(|vb| AutoencoderKL::new(vb, &config)).unwrap();
    common::assert_matches_manifest("vae_sdxl", &recorded);
}

#[test]
fn encode_and_decode_match_reference_at_every_cpu_kernel_level() {
    // The other tests run the fastest level; this one runs each level this CPU has.
    let vae = tiny_vae();
    let fx = common::load_tensors("vae/tiny_sd15.safetensors");
    for level in sd_kernels::Level::available() {
        sd_kernels::cpu::with_level(level, || {
            for suffix in ["", "_odd"] {
                let what = |name: &str| format!("{level} {name}{suffix}");
                let posterior = vae.encode(&fx[&format!("images{suffix}")]).unwrap();
                let mean = &fx[&format!("mean{suffix}")];
                common::assert_close(&what("mean"), &posterior.mean, mean, TOL);
                let decoded = vae.decode(&fx[&format!("latents{suffix}")]).unwrap();
                let expected = &fx[&format!("decoded{suffix}")];
                common::assert_close(&what("decoded"), &decoded, expected, TOL);
            }
        });
    }
}

/// PSNR in dB of `a` against `b`, both images in [-1, 1].
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    10.0 * (4.0 / mse.max(1e-20)).log10()
}

#[test]
fn tiled_decoding_keeps_one_tile_exact_and_its_seams_blended() {
    // The tiny VAE with 64-pixel tiles (8 latents), decoding 16 x 24 latents: 3 x 4 tiles.
    let config = VaeConfig {
        sample_size: stable_diffusion::vae::SampleSize::Square(64),
        ..VaeConfig::from_file(common::fixture("models/tiny-sd15/vae/config.json")).unwrap()
    };
    let weights = common::load_tensors("models/tiny-sd15/vae/diffusion_pytorch_model.safetensors");
    let vae = AutoencoderKL::new(
        VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        &config,
    )
    .unwrap();
    assert_eq!(vae.tile_sizes(), (8, 64));
    let mut rng = stable_diffusion::rng::TorchCpuRng::new(7);
    // Smooth latents, as real ones are: noise averaged over 4 x 4 neighbourhoods.
    let noise = rng.randn(&[1, 4, 64, 96], &Device::Cpu).unwrap();
    let latents = noise.avg_pool2d(4).unwrap();
    let whole = vae.decode(&latents).unwrap();
    let tiled = vae.decode_tiled(&latents).unwrap();
    assert_eq!(tiled.dims(), whole.dims());
    let quality = psnr(&tiled, &whole);
    // Latents within one tile decode exactly as a whole.
    let small = latents.narrow(2, 0, 8).unwrap().narrow(3, 0, 8).unwrap();
    assert!(!vae.tiles_needed(8, 8) && vae.tiles_needed(16, 8));
    let one = vae.decode_tiled(&small).unwrap();
    assert_eq!(
        common::max_abs_diff(&one, &vae.decode(&small).unwrap()),
        0.0
    );
    // Seams: the error along tile borders is no worse than the error inside the tiles.
    let diff = (&tiled - &whole).unwrap().abs().unwrap();
    let column_error = |x: usize| -> f32 {
        diff.narrow(3, x, 1)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let borders: Vec<usize> = vec![48, 96, 144];
    let border = borders
        .iter()
        .map(|&x| column_error(x))
        .fold(0f32, f32::max);
    let inside: f32 = (0..192).map(column_error).sum::<f32>() / 192.0;
    println!("tiled vs whole: PSNR {quality:.1} dB, border column error {border:.4}, mean column error {inside:.4}");
    // The random tiny VAE's mid-block attention sees the whole image untiled and one tile
    // tiled, so the two differ everywhere (PSNR ~12 dB here); what tiling must not add is a
    // visible seam: no border column stands out from the rest.
    assert!(quality.is_finite() && quality > 5.0, "PSNR {quality:.1} dB");
    assert!(border < 2.0 * inside.max(1e-3), "seam {border} vs {inside}");
}
