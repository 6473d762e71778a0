//! Infotext written by AUTOMATIC1111 (in the layout of its `create_infotext`: prompt,
//! `Negative prompt:` line, one line of `Key: value` pairs) read with A1111's own rules.

use stable_diffusion::image::InfoText;
use stable_diffusion::pipeline::{
    format_network_hashes, parse_network_hashes, GenerationRequest, HiresFix, HiresUpscaler,
    RngKind,
};
use stable_diffusion::scheduler::{SamplerKind, SigmaSchedule};

/// A1111's infotext for `params` (the last line), with a fixed prompt pair.
fn a1111(params: &str) -> GenerationRequest {
    let text = format!("a castle on a hill\nNegative prompt: blurry\n{params}");
    GenerationRequest::from_infotext(&InfoText::parse(&text))
        .unwrap_or_else(|e| panic!("{params}: {e}"))
}

#[test]
fn a_missing_rng_key_means_a1111s_default_gpu_noise() {
    let request = a1111("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1");
    assert_eq!(request.rng, RngKind::Cuda);
    assert_eq!(
        (request.prompt.as_str(), request.negative_prompt.as_str()),
        ("a castle on a hill", "blurry")
    );
    assert_eq!(a1111("Steps: 20, Seed: 5, RNG: CPU").rng, RngKind::Cpu);
    assert_eq!(a1111("Steps: 20, Seed: 5, RNG: NV").rng, RngKind::Cuda);
    // Our own infotext always names its stream, so it reads back as written.
    let ours = GenerationRequest {
        prompt: "x".into(),
        ..Default::default()
    };
    let text = ours.to_infotext("m", None, 0).to_string();
    assert!(text.contains("RNG: CPU"), "{text}");
    let back = GenerationRequest::from_infotext(&InfoText::parse(&text)).unwrap();
    assert_eq!(back.rng, RngKind::Cpu);
}

#[test]
fn combined_sampler_and_schedule_names_of_a1111_1_6_to_1_8_split_as_a1111_splits_them() {
    for (name, sampler, schedule) in [
        (
            "DPM++ 2M Karras",
            SamplerKind::DpmPp2M,
            SigmaSchedule::Karras,
        ),
        (
            "DPM++ 2M SDE Exponential",
            SamplerKind::DpmPp2MSde,
            SigmaSchedule::Exponential,
        ),
        (
            "DPM++ 2M SDE Heun Karras",
            SamplerKind::DpmPp2MSdeHeun,
            SigmaSchedule::Karras,
        ),
        (
            "DPM++ 2M SDE Heun Exponential",
            SamplerKind::DpmPp2MSdeHeun,
            SigmaSchedule::Exponential,
        ),
        (
            "DPM++ 3M SDE Exponential",
            SamplerKind::DpmPp3MSde,
            SigmaSchedule::Exponential,
        ),
        (
            "Euler a SGM Uniform",
            SamplerKind::EulerA,
            SigmaSchedule::SgmUniform,
        ),
        (
            "Euler sgm_uniform",
            SamplerKind::Euler,
            SigmaSchedule::SgmUniform,
        ),
        ("DPM2 a Karras", SamplerKind::Dpm2A, SigmaSchedule::Karras),
    ] {
        let request = a1111(&format!("Steps: 20, Sampler: {name}, Seed: 1"));
        assert_eq!(
            (request.sampler, request.schedule),
            (sampler, schedule),
            "{name}"
        );
    }
    // The plain name keeps the schedule key's value.
    let request = a1111("Steps: 20, Sampler: DPM++ 2M SDE, Schedule type: Karras, Seed: 1");
    assert_eq!(
        (request.sampler, request.schedule),
        (SamplerKind::DpmPp2MSde, SigmaSchedule::Karras)
    );
    for (name, schedule) in [
        ("DPM++ 2M Polyexponential", SigmaSchedule::Polyexponential),
        ("Euler Normal", SigmaSchedule::Normal),
    ] {
        let request = a1111(&format!("Steps: 20, Sampler: {name}, Seed: 1"));
        assert_eq!(request.schedule, schedule, "{name}");
    }
    let err = GenerationRequest::from_infotext(&InfoText::parse(
        "x\nSteps: 20, Sampler: Magic Karras, Seed: 1",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("Magic Karras"), "{err}");
}

#[test]
fn hires_resize_and_the_old_first_pass_size_become_a_resize_to_the_final_size() {
    let request = a1111("Steps: 20, Sampler: Euler, Seed: 1, Size: 512x768, Denoising strength: 0.5, Hires resize: 1024x0, Hires upscaler: Latent");
    let hires = request.hires.clone().expect("a hires pass");
    assert_eq!(hires.resize, Some((1024, 0)));
    assert_eq!(
        (hires.strength, hires.upscaler),
        (0.5, HiresUpscaler::Latent)
    );
    assert_eq!(hires.target_size(512, 768, 8), (1024, 1536));
    // Written back as A1111 writes it: "Hires resize" instead of "Hires upscale".
    let text = request.to_infotext("m", None, 0).to_string();
    assert!(
        text.contains("Hires resize: 1024x0") && !text.contains("Hires upscale:"),
        "{text}"
    );
    let back = GenerationRequest::from_infotext(&InfoText::parse(&text)).unwrap();
    assert_eq!(back.hires, request.hires);

    // Both sides in the first pass's aspect ratio: no crop; another ratio: A1111 crops.
    let both = HiresFix {
        resize: Some((768, 1152)),
        ..hires.clone()
    };
    assert_eq!(both.target_size(512, 768, 8), (768, 1152));
    assert!(!both.crops(512, 768, 8));
    let square = HiresFix {
        resize: Some((1024, 1024)),
        ..hires.clone()
    };
    assert_eq!(square.target_size(512, 768, 8), (1024, 1536));
    assert!(square.crops(512, 768, 8));
    let tall = HiresFix {
        resize: Some((0, 960)),
        ..hires
    };
    assert_eq!(tall.target_size(512, 768, 8), (640, 960));

    // Before 1.0: "First pass size" is the first pass, "Size" the final image.
    let old = a1111("Steps: 20, Sampler: Euler, Seed: 1, Size: 1024x1024, First pass size: 384x384, Denoising strength: 0.6");
    assert_eq!((old.width, old.height), (Some(384), Some(384)));
    assert_eq!(old.hires.as_ref().unwrap().resize, Some((1024, 1024)));
    assert_eq!(
        old.hires.as_ref().unwrap().target_size(384, 384, 8),
        (1024, 1024)
    );
    // 0x0: A1111's old rule, about 512² pixels in the final aspect ratio, sides rounded up to 64.
    let auto =
        a1111("Steps: 20, Seed: 1, Size: 1024x1536, First pass size: 0x0, Denoising strength: 0.6");
    assert_eq!((auto.width, auto.height), (Some(448), Some(640)));
    assert_eq!(auto.hires.unwrap().resize, Some((1024, 1536)));
}

#[test]
fn network_hash_lines_are_written_and_read_with_a1111s_rules() {
    let line = format_network_hashes([("my,lora:v2", "abc123def456"), ("style", "0011aabbccdd")]);
    assert_eq!(line, "mylorav2: abc123def456, style: 0011aabbccdd");
    assert_eq!(
        parse_network_hashes(&line),
        vec![
            ("mylorav2".to_string(), "abc123def456".to_string()),
            ("style".to_string(), "0011aabbccdd".to_string())
        ]
    );
    // A1111's reader: split on ",", then on the first ":", both sides trimmed.
    assert_eq!(
        parse_network_hashes(" a :1, junk, b: 2:3 ,"),
        vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2:3".to_string())
        ]
    );
}

#[test]
fn keys_that_change_a1111s_image_but_are_not_built_are_listed_for_a_warning() {
    let info = InfoText::parse(
        "x\nSteps: 20, Seed: 1, Hires sampler: DPM++ 2M, Hires prompt: , Tiling: True, \
         Emphasis: Original, Schedule rho: 0, Schedule max sigma: 14.6, Face restoration: CodeFormer",
    );
    assert_eq!(
        GenerationRequest::unsupported_infotext_keys(&info),
        vec![
            "Hires sampler: DPM++ 2M".to_string(),
            "Tiling: True".to_string(),
            "Face restoration: CodeFormer".to_string(),
            "Schedule max sigma: 14.6".to_string(),
        ]
    );
    let ours = GenerationRequest {
        prompt: "x".into(),
        ..Default::default()
    };
    let text = ours.to_infotext("m", None, 0);
    assert!(GenerationRequest::unsupported_infotext_keys(&text).is_empty());
}

#[test]
fn ddim_cfgpp_reads_and_writes_as_a1111_names_it_with_ddim_s_eta() {
    // As A1111 1.10 writes it (its eta is "Eta DDIM", written when not 0).
    let request = a1111("Steps: 20, Sampler: DDIM CFG++, Schedule type: Automatic, CFG scale: 1, Seed: 5, Size: 512x512, Eta DDIM: 0.3, Version: v1.10.1");
    assert_eq!(request.sampler, SamplerKind::DdimCfgPp);
    assert_eq!(request.eta, 0.3);
    assert_eq!(request.resolved_sampler_options().eta, Some(0.3));
    // The negative prompt runs at CFG 1 too: CFG++ steps along it.
    assert!(request.uses_cfg());
    let text = request.to_infotext("m", None, 0).to_string();
    assert!(
        text.contains("Sampler: DDIM CFG++, Schedule type: Automatic, CFG scale: 1,")
            && text.contains("Eta DDIM: 0.3")
            && !text.contains("Eta: ")
            && !text.contains("Sampler flavor"),
        "{text}"
    );
    let back = GenerationRequest::from_infotext(&InfoText::parse(&text)).unwrap();
    assert_eq!((back.sampler, back.eta), (SamplerKind::DdimCfgPp, 0.3));
    // Other samplers keep guidance off at CFG 1.
    let euler = a1111("Steps: 20, Sampler: Euler, CFG scale: 1, Seed: 5");
    assert!(!euler.uses_cfg());
}
