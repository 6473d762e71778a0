//! Library level: the final latents (before VAE decoding) of every family's reference case must
//! match diffusers' `output_type="latent"` within 1e-3, through the public pipeline API
//! (`StableDiffusion::load`, `Inputs`, `generate`), not the command line.

mod common;

use common::fixtures;
use stable_diffusion::candle_core::{Device, Tensor};
use stable_diffusion::image::{image_to_tensor, ImageData};
use stable_diffusion::pipeline::{
    mask_to_tensor, Control, GenerationRequest, Inputs, LoadOptions, StableDiffusion,
};

fn load(name: &str) -> StableDiffusion {
    StableDiffusion::load(
        &fixtures().join("models").join(name),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn request_of(case: &serde_json::Value) -> GenerationRequest {
    let dir = fixtures().join("pipeline_families");
    let mut request = GenerationRequest {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
        width: Some(case["width"].as_u64().unwrap() as usize),
        height: Some(case["height"].as_u64().unwrap() as usize),
        steps: case["steps"].as_u64().unwrap() as usize,
        cfg_scale: case["cfg_scale"].as_f64().unwrap(),
        sampler: case["sampler"].as_str().unwrap().parse().unwrap(),
        seed: case["seed"].as_u64(),
        batch_size: case["batch_size"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    if let Some(image) = case["init_image"].as_str() {
        request.init_image = Some(ImageData::read(dir.join(image)).unwrap());
        request.strength = case["strength"].as_f64().unwrap();
    }
    if let Some(mask) = case["mask"].as_str() {
        request.mask = Some(ImageData::read(dir.join(mask)).unwrap());
    }
    if let Some(refiner) = case["refiner"].as_str() {
        request.refiner = Some(refiner.into());
        request.refiner_switch = case["switch"].as_f64().unwrap();
    }
    request
}

#[test]
fn final_latents_match_diffusers_for_every_family_case() {
    let dir = fixtures().join("pipeline_families");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut worst = 0f32;
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if case["vae"].is_string() {
            continue; // the VAE does not touch the latents
        }
        let model = load(case["model"].as_str().unwrap());
        let refiner = case["refiner"].as_str().map(load);
        let request = request_of(case);
        let image = request.init_image.as_ref().map(|data| {
            image_to_tensor(&data.decode("init image").unwrap(), &Device::Cpu).unwrap()
        });
        let mask = request
            .mask
            .as_ref()
            .map(|data| mask_to_tensor(&data.decode("mask").unwrap(), &Device::Cpu).unwrap());
        let inputs = Inputs {
            init_image: image.as_ref(),
            mask: mask.as_ref(),
            refiner: refiner.as_ref(),
            ..Inputs::default()
        };
        let generation = model
            .generate(&request, &inputs, &mut |_| Control::Continue)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = stable_diffusion::candle_core::safetensors::load(
            dir.join(format!("{name}.latents.safetensors")),
            &Device::Cpu,
        )
        .unwrap()
        .remove("latents")
        .unwrap();
        assert_eq!(generation.latents.dims(), expected.dims(), "{name}");
        let diff: f32 = (&generation.latents - &expected)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d: Tensor| d.to_scalar())
            .unwrap();
        eprintln!("{name}: max |latent diff| {diff:e}");
        worst = worst.max(diff);
        assert!(diff <= 1e-3, "{name}: max |latent diff| {diff}");
    }
    eprintln!("worst: {worst:e}");
}
