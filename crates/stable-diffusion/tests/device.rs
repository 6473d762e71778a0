//! Parity on the device named by `SD_TEST_DEVICE` (cpu when unset; cuda, cuda:N, metal with a
//! GPU build): the tiny UNets, the VAE, the text encoder and the whole pipeline must match the
//! diffusers / transformers references there too. Weights are loaded onto the device; the
//! noise still comes from the torch-exact CPU stream and is moved there, so seeds keep their
//! images. On the CPU these repeat the per-model tests; their point is a GPU run:
//! `SD_TEST_DEVICE=cuda cargo test --release -p stable-diffusion --features cuda --test device`.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stable_diffusion::device::device_name;
use stable_diffusion::image::{load_init_image, ImageData, Resize};
use stable_diffusion::loading::DiffusersFolder;
use stable_diffusion::pipeline::{
    Control, GenerationRequest, Inputs, LoadOptions, StableDiffusion,
};
use stable_diffusion::text_encoder::{ClipTextModel, HiddenLayer};
use stable_diffusion::unet::{AddedConditions, UNet2DConditionModel, UNetConfig};
use stable_diffusion::vae::{AutoencoderKL, VaeConfig};

/// The per-model tolerance, as on the CPU.
const TOL: f32 = 1e-4;
/// Final latents after a whole sampling run (6 steps, CFG 7.5 amplifying every difference),
/// relative to the largest reference value (latents reach |140|; the CPU is within 1e-5).
const PIPELINE_REL_TOL: f32 = 5e-5;

fn on(device: &Device, tensor: &Tensor) -> Tensor {
    tensor.to_device(device).unwrap()
}

#[test]
fn unets_match_reference_on_test_device() {
    let device = common::test_device();
    for name in ["tiny_sd15", "tiny_sd2", "tiny_inpaint", "tiny_sdxl"] {
        let meta = common::load_json(&format!("unet/{name}_io.json"));
        let io = common::load_tensors(&format!("unet/{name}_io.safetensors"));
        let folder = meta["model"].as_str().unwrap();
        let config = UNetConfig::from_file(common::fixture(&format!("{folder}/config.json")))
            .expect("tiny UNet config parses");
        let weights =
            common::load_tensors(&format!("{folder}/diffusion_pytorch_model.safetensors"));
        let model = UNet2DConditionModel::new(
            VarBuilder::from_tensors(weights, DType::F32, &device),
            &config,
        )
        .expect("tiny UNet builds");
        let cases = meta["cases"].as_array().unwrap();
        assert!(!cases.is_empty());
        for (i, case) in cases.iter().enumerate() {
            let timestep = case["timestep"].as_f64().unwrap();
            let get = |key: &str| on(&device, &io[&format!("case{i}_{key}")]);
            let added = config.needs_added_conditions().then(|| AddedConditions {
                text_embeds: get("text_embeds"),
                time_ids: get("time_ids"),
            });
            let out = model
                .forward(
                    &get("sample"),
                    timestep,
                    &get("encoder_hidden_states"),
                    added.as_ref(),
                )
                .unwrap();
            assert!(out.device().same_device(&device), "{name}: output device");
            let expected = &io[&format!("case{i}_out")];
            println!(
                "{} unet {name} case {i}: max abs diff {:e}",
                device_name(&device),
                common::max_abs_diff(&out, expected)
            );
            common::assert_close(&format!("{name} case {i}"), &out, expected, TOL);
        }
    }
}

#[test]
fn vae_matches_reference_on_test_device() {
    let device = common::test_device();
    let config = VaeConfig::from_file(common::fixture("models/tiny-sd15/vae/config.json")).unwrap();
    let weights = common::load_tensors("models/tiny-sd15/vae/diffusion_pytorch_model.safetensors");
    let vae = AutoencoderKL::new(
        VarBuilder::from_tensors(weights, DType::F32, &device),
        &config,
    )
    .unwrap();
    let fx = common::load_tensors("vae/tiny_sd15.safetensors");
    for suffix in ["", "_odd"] {
        let key = |name: &str| format!("{name}{suffix}");
        let posterior = vae.encode(&on(&device, &fx[&key("images")])).unwrap();
        let decoded = vae.decode(&on(&device, &fx[&key("latents")])).unwrap();
        println!(
            "{} vae{suffix}: mean {:e} logvar {:e} decoded {:e}",
            device_name(&device),
            common::max_abs_diff(&posterior.mean, &fx[&key("mean")]),
            common::max_abs_diff(&posterior.logvar, &fx[&key("logvar")]),
            common::max_abs_diff(&decoded, &fx[&key("decoded")]),
        );
        common::assert_close(&key("mean"), &posterior.mean, &fx[&key("mean")], TOL);
        common::assert_close(&key("logvar"), &posterior.logvar, &fx[&key("logvar")], TOL);
        common::assert_close(&key("decoded"), &decoded, &fx[&key("decoded")], TOL);
    }
}

#[test]
fn text_encoder_matches_reference_on_test_device() {
    let device = common::test_device();
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    let model = ClipTextModel::load(&folder, "text_encoder", None, DType::F32, &device).unwrap();
    let io = common::load_tensors("text_encoder/tiny_sd15_io.safetensors");
    let out = model
        .forward(&on(&device, &io["input_ids"]), HiddenLayer::LAST)
        .unwrap();
    let skipped = model
        .forward(&on(&device, &io["input_ids"]), HiddenLayer::clip_skip(2))
        .unwrap();
    let checks = [
        ("last_hidden_state", &out.hidden),
        ("pooler_output", &out.pooled),
        ("clip_skip.2", &skipped.hidden),
    ];
    for (key, actual) in checks {
        println!(
            "{} text encoder {key}: max abs diff {:e}",
            device_name(&device),
            common::max_abs_diff(actual, &io[key])
        );
        common::assert_close(key, actual, &io[key], TOL);
    }
}

#[test]
fn pipeline_matches_diffusers_latents_on_test_device() {
    let device = common::test_device();
    let options = LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load(&common::fixture("models/tiny-sd15"), &options).unwrap();
    let cases = common::load_json("pipeline/cases.json");
    let cases = cases.as_array().unwrap();
    assert!(!cases.is_empty());
    let mut worst = 0f32;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = |key: &str| case[key].as_str().unwrap().to_string();
        let count = |key: &str| case[key].as_u64().unwrap() as usize;
        let init_image = case
            .get("init_image")
            .and_then(|v| v.as_str())
            .map(|file| common::fixture(&format!("pipeline/{file}")));
        let request = GenerationRequest {
            prompt: text("prompt"),
            negative_prompt: text("negative_prompt"),
            width: Some(count("width")),
            height: Some(count("height")),
            steps: count("steps"),
            cfg_scale: case["cfg_scale"].as_f64().unwrap(),
            sampler: text("sampler").parse().unwrap(),
            schedule: text("schedule").parse().unwrap(),
            seed: Some(case["seed"].as_u64().unwrap()),
            batch_size: count("batch_size"),
            eta: case["eta"].as_f64().unwrap(),
            strength: case
                .get("strength")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.75),
            init_image: init_image
                .as_ref()
                .map(|path| ImageData::read(path).unwrap()),
            ..GenerationRequest::default()
        };
        // The init image is handed over on the CPU: the pipeline moves it to its device.
        let init = init_image.map(|path| {
            let (w, h) = (request.width_px() as u32, request.height_px() as u32);
            load_init_image(path, w, h, Resize::Exact, &Device::Cpu).unwrap()
        });
        let generation = model
            .generate(
                &request,
                &Inputs {
                    init_image: init.as_ref(),
                    ..Inputs::default()
                },
                &mut |_| Control::Continue,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(generation.latents.device().same_device(&device));
        assert_eq!(generation.images.len(), request.batch_size, "{name}");
        let expected =
            &common::load_tensors(&format!("pipeline/{name}.latents.safetensors"))["latents"];
        let diff = common::max_abs_diff(&generation.latents, expected);
        let scale = expected.abs().unwrap().max_all().unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        println!(
            "{} pipeline {name}: latents max abs diff {diff:e} (largest |value| {scale:.1})",
            device_name(&device)
        );
        common::assert_close(
            name,
            &generation.latents,
            expected,
            PIPELINE_REL_TOL * scale,
        );
        worst = worst.max(diff / scale);
    }
    println!(
        "{} pipeline: worst latents diff {worst:e} of the largest value, over {} cases",
        device_name(&device),
        cases.len()
    );
}
