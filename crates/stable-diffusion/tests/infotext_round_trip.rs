//! Request → infotext → request keeps every field the infotext carries: a request with all of
//! them away from their defaults reads back equal (the fields the infotext leaves to the
//! model store or the files, such as images, networks and the VAE, aside).

use stable_diffusion::image::InfoText;
use stable_diffusion::pipeline::{GenerationRequest, HiresFix, HiresUpscaler, RngKind};
use stable_diffusion::prompt::PromptSyntax;
use stable_diffusion::scheduler::{SamplerFlavor, SamplerKind, SamplerOptions, SigmaSchedule};

/// A txt2img + hires request with every field the infotext carries set.
fn everything_the_infotext_carries() -> GenerationRequest {
    GenerationRequest {
        model: Some("sd15 [abcdef0123]".into()),
        prompt: "a (red:1.2) circle, \"quoted\"".into(),
        negative_prompt: "blurry, low quality".into(),
        width: Some(640),
        height: Some(384),
        steps: 31,
        cfg_scale: 5.5,
        sampler: SamplerKind::DpmPp2MSde,
        schedule: SigmaSchedule::Karras,
        seed: Some(77),
        rng: RngKind::Cuda,
        sampler_options: SamplerOptions {
            eta: Some(0.7),
            s_noise: Some(0.9),
            s_churn: Some(0.5),
            s_tmin: Some(0.1),
            s_tmax: Some(10.0),
            flavor: Some(SamplerFlavor::KDiffusion),
            rescale_zero_snr: true,
            ..SamplerOptions::default()
        },
        prompt_syntax: PromptSyntax::A1111,
        clip_skip: 2,
        variation_seed: Some(5),
        variation_strength: 0.25,
        seed_resize_from: Some((512, 448)),
        eta_noise_seed_delta: 31337,
        // The hires pass's strength is the infotext's "Denoising strength", which A1111 (and
        // we) also read as the request's strength.
        strength: 0.55,
        hires: Some(HiresFix {
            scale: 1.5,
            steps: 10,
            strength: 0.55,
            upscaler: HiresUpscaler::Latent,
            resize: None,
        }),
        refiner: Some("refiner [0123456789]".into()),
        refiner_switch: 0.7,
        aesthetic_score: 5.0,
        negative_aesthetic_score: 2.0,
        vae_tiling: Some(true),
        ..GenerationRequest::default()
    }
}

fn round_trip(request: &GenerationRequest) -> GenerationRequest {
    let text = request
        .to_infotext("sd15", Some("abcdef0123"), 0)
        .to_string();
    GenerationRequest::from_infotext(&InfoText::parse(&text))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn request_to_infotext_to_request_keeps_every_field_the_infotext_carries() {
    let request = everything_the_infotext_carries();
    assert_eq!(round_trip(&request), request);
}

#[test]
fn the_other_flavors_and_streams_read_back_too() {
    // The diffusers flavor, plain syntax, CPU noise, DDIM's eta, a custom sigma list, a
    // hires resize and the SDXL Align Your Steps table.
    let ddim = GenerationRequest {
        model: Some("sd15 [abcdef0123]".into()),
        prompt: "(not emphasis)".into(),
        width: Some(512),
        height: Some(512),
        seed: Some(1),
        sampler: SamplerKind::Ddim,
        eta: 0.3,
        sampler_options: SamplerOptions {
            flavor: Some(SamplerFlavor::Diffusers),
            ..SamplerOptions::default()
        },
        prompt_syntax: PromptSyntax::Plain,
        rng: RngKind::Cpu,
        ..GenerationRequest::default()
    };
    assert_eq!(round_trip(&ddim), ddim);
    let ays = GenerationRequest {
        sampler: SamplerKind::Euler,
        eta: 0.0, // DDIM's eta only (Euler's is `sampler_options.eta`)
        schedule: SigmaSchedule::AlignYourSteps,
        sampler_options: SamplerOptions {
            sdxl: true,
            flavor: Some(SamplerFlavor::KDiffusion),
            ..SamplerOptions::default()
        },
        prompt_syntax: PromptSyntax::A1111,
        strength: 0.6,
        hires: Some(HiresFix {
            resize: Some((1024, 768)),
            strength: 0.6,
            steps: 0,
            // A resize is written instead of the scale, and read back as scale 1.
            scale: 1.0,
            upscaler: HiresUpscaler::Lanczos,
        }),
        ..ddim.clone()
    };
    assert_eq!(round_trip(&ays), ays);
    let sigmas = GenerationRequest {
        sampler: SamplerKind::Euler,
        eta: 0.0,
        sampler_options: SamplerOptions {
            sigmas: Some(vec![14.6, 3.5, 0.8, 0.0]),
            flavor: Some(SamplerFlavor::KDiffusion),
            ..SamplerOptions::default()
        },
        prompt_syntax: PromptSyntax::A1111,
        ..ddim
    };
    assert_eq!(round_trip(&sigmas), sigmas);
}
