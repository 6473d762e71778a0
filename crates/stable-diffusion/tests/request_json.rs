//! The request as JSON: every field written and read back unchanged, every field optional,
//! unknown fields ignored, A1111's sampler names selecting A1111's sampling as on the command
//! line, errors naming the field; and the infotext naming the model, VAE and refiner for the
//! model store.

use stable_diffusion::image::{ImageData, InfoText};
use stable_diffusion::pipeline::{GenerationRequest, HiresFix, HiresUpscaler, NetworkRef, RngKind};
use stable_diffusion::prompt::PromptSyntax;
use stable_diffusion::scheduler::{SamplerFlavor, SamplerKind, SamplerOptions, SigmaSchedule};

/// A request with every field away from its default.
fn everything() -> GenerationRequest {
    GenerationRequest {
        model: Some("sd15 [abcdef0123]".into()),
        prompt: "a (red:1.2) circle, \"quoted\"\nBREAK".into(),
        negative_prompt: "blurry".into(),
        width: Some(640),
        height: Some(384),
        steps: 31,
        cfg_scale: 5.5,
        sampler: SamplerKind::DpmPp2MSde,
        schedule: SigmaSchedule::Polyexponential,
        seed: Some(u64::MAX),
        rng: RngKind::Cuda,
        batch_size: 3,
        eta: 0.25,
        init_image: Some(ImageData(vec![0x89, b'P', b'N', b'G', 0, 255, 7])),
        strength: 0.55,
        mask: Some(ImageData(vec![1, 2, 3])),
        refiner: Some("refiner".into()),
        refiner_switch: 0.7,
        aesthetic_score: 5.0,
        negative_aesthetic_score: 2.0,
        vae: Some("vae-ft-mse.safetensors".into()),
        vae_tiling: Some(true),
        loras: vec![NetworkRef {
            name: "style".into(),
            weight: -0.5,
        }],
        embeddings: vec!["easynegative".into()],
        sampler_options: SamplerOptions {
            eta: Some(0.9),
            s_noise: Some(1.01),
            s_churn: Some(0.5),
            s_tmin: Some(0.1),
            s_tmax: Some(10.0),
            sigmas: Some(vec![14.6, 3.0, 0.0]),
            flavor: Some(SamplerFlavor::KDiffusion),
            sdxl: true,
            rescale_zero_snr: true,
        },
        prompt_syntax: PromptSyntax::A1111,
        clip_skip: 2,
        variation_seed: Some(17),
        variation_strength: 0.3,
        seed_resize_from: Some((512, 768)),
        eta_noise_seed_delta: 31337,
        hires: Some(HiresFix {
            scale: 1.5,
            steps: 12,
            strength: 0.45,
            upscaler: HiresUpscaler::Latent,
            resize: Some((1024, 0)),
        }),
    }
}

#[test]
fn request_to_json_and_back_is_the_identity() {
    for request in [everything(), GenerationRequest::default()] {
        let json = request.to_json();
        assert_eq!(
            GenerationRequest::from_json(&json).unwrap(),
            request,
            "{json}"
        );
    }
    // Names, not debug spellings, and images as base64.
    let json = everything().to_json();
    for text in [
        r#""sampler": "dpmpp_2m_sde""#,
        r#""schedule": "polyexponential""#,
        r#""rng": "cuda""#,
        r#""flavor": "k-diffusion""#,
        r#""upscaler": "latent""#,
        r#""mask": "AQID""#,
    ] {
        assert!(json.contains(text), "{text} not in {json}");
    }
}

#[test]
fn every_field_is_optional_and_unknown_fields_are_ignored() {
    assert_eq!(
        GenerationRequest::from_json("{}").unwrap(),
        GenerationRequest::default()
    );
    let request = GenerationRequest::from_json(
        r#"{"prompt": "a cat", "steps": 9, "send_images": true, "alwayson_scripts": {},
            "hires": {"scale": 2.5}, "loras": [{"name": "x"}], "seed": null}"#,
    )
    .unwrap();
    assert_eq!(request.prompt, "a cat");
    assert_eq!(request.steps, 9);
    assert_eq!(request.seed, None);
    let hires = request.hires.unwrap();
    assert_eq!(
        (hires.scale, hires.strength),
        (2.5, HiresFix::default().strength)
    );
    assert_eq!(request.loras[0].weight, 1.0);
}

#[test]
fn a1111_sampler_names_in_json_select_a1111_sampling() {
    let request = GenerationRequest::from_json(r#"{"sampler": "DPM++ 2M"}"#).unwrap();
    assert_eq!(request.sampler, SamplerKind::DpmPp2M);
    assert_eq!(
        request.sampler_options.flavor,
        Some(SamplerFlavor::KDiffusion)
    );
    // A1111's combined names carry the schedule, unless the request gives one.
    let combined =
        GenerationRequest::from_json(r#"{"sampler": "DPM++ 2M SDE Exponential"}"#).unwrap();
    assert_eq!(combined.sampler, SamplerKind::DpmPp2MSde);
    assert_eq!(combined.schedule, SigmaSchedule::Exponential);
    let given =
        GenerationRequest::from_json(r#"{"sampler": "Euler a Karras", "schedule": "beta"}"#)
            .unwrap();
    assert_eq!(
        (given.sampler, given.schedule),
        (SamplerKind::EulerA, SigmaSchedule::Beta)
    );
    let ours = GenerationRequest::from_json(r#"{"sampler": "dpmpp_2m"}"#).unwrap();
    assert_eq!(ours.sampler_options.flavor, None);
    let explicit = GenerationRequest::from_json(
        r#"{"sampler": "DPM++ 2M", "sampler_options": {"flavor": "diffusers"}}"#,
    )
    .unwrap();
    assert_eq!(
        explicit.sampler_options.flavor,
        Some(SamplerFlavor::Diffusers)
    );
}

#[test]
fn json_errors_name_the_field() {
    for (json, field) in [
        (r#"{"width": -3}"#, "`width`"),
        (
            r#"{"sampler_options": {"sigmas": "1,2"}}"#,
            "`sampler_options.sigmas`",
        ),
        (
            r#"{"loras": [{"name": "a", "weight": "heavy"}]}"#,
            "`loras[0].weight`",
        ),
        (r#"{"schedule": "zigzag"}"#, "`schedule`"),
        (r#"{"mask": "data:image/png,AAAA"}"#, "`mask`"),
        (r#"{"prompt": "unterminated"#, "request"),
    ] {
        let err = GenerationRequest::from_json(json).unwrap_err().to_string();
        assert!(err.contains(field), "{json}: `{err}` does not name {field}");
    }
}

#[test]
fn image_data_reads_base64_with_and_without_a_data_uri() {
    let plain = ImageData::from_base64("iVBORw0K").unwrap();
    let uri = ImageData::from_base64("data:image/png;base64,iVBO\nRw0K").unwrap();
    assert_eq!(plain, uri);
    assert_eq!(plain.0[..4], [0x89, b'P', b'N', b'G']);
    assert_eq!(plain.to_base64(), "iVBORw0K");
    assert!(plain.decode("init image").is_err());
}

#[test]
fn infotext_names_the_model_vae_and_refiner_for_the_store() {
    let request = GenerationRequest {
        prompt: "p".into(),
        width: Some(64),
        height: Some(64),
        seed: Some(3),
        refiner: Some("sdxl-refiner".into()),
        ..Default::default()
    };
    let mut info = request.to_infotext("sd15", Some("0123456789"), 0);
    info.push("VAE", "vae-ft-mse.safetensors");
    let back = GenerationRequest::from_infotext(&InfoText::parse(&info.to_string())).unwrap();
    assert_eq!(back.model.as_deref(), Some("sd15 [0123456789]"));
    assert_eq!(back.vae.as_deref(), Some("vae-ft-mse.safetensors"));
    assert_eq!(back.refiner.as_deref(), Some("sdxl-refiner"));
    assert_eq!(
        (back.width, back.height, back.seed),
        (Some(64), Some(64), Some(3))
    );
    // Ours says when its prompt was read as plain text; A1111's never does: its syntax.
    assert_eq!(info.get("Prompt syntax"), Some("plain"));
    assert_eq!(back.prompt_syntax, PromptSyntax::Plain);
    let hash_only = InfoText::parse("p\nSteps: 20, Seed: 1, Model hash: 0123456789");
    let back = GenerationRequest::from_infotext(&hash_only).unwrap();
    assert_eq!(back.model.as_deref(), Some("0123456789"));
    assert_eq!(back.prompt_syntax, PromptSyntax::A1111);
    let a1111_run = GenerationRequest {
        prompt_syntax: PromptSyntax::A1111,
        ..request
    };
    let info = a1111_run.to_infotext("sd15", None, 0);
    assert_eq!(info.get("Prompt syntax"), None);
}
