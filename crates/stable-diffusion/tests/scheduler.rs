//! Parity of the samplers with diffusers' schedulers (fixtures/scheduler/, made by
//! tools/reference/parts/scheduler.py): timesteps, sigmas, init_noise_sigma and every step of
//! full denoising loops driven by a deterministic stand-in model, with the noise drawn from
//! the torch-compatible generator in the pipelines' order.

mod common;

use candle_core::{Device, Tensor};
use stable_diffusion::rng::{NoiseSource, TorchCpuRng};
use stable_diffusion::scheduler::{
    self as sched, img2img_start_step, BetaSchedule, NoiseSchedule, Sampler, SamplerFlavor,
    SamplerKind, SamplerOptions, SchedulerConfig, SigmaSchedule, TimestepSpacing,
};

/// The diffusers class a plan drives (these tests step it by hand).
fn diffusers_class(plan: sched::SamplerPlan) -> Box<dyn Sampler> {
    let kind = plan.kind();
    plan.into_diffusers()
        .unwrap_or_else(|| panic!("{kind} is not in the diffusers flavor"))
}

/// [`sched::build_sampler`], for a diffusers class.
fn build_sampler(
    kind: SamplerKind,
    schedule: SigmaSchedule,
    config: &SchedulerConfig,
    steps: usize,
    eta: f64,
) -> stable_diffusion::Result<Box<dyn Sampler>> {
    sched::build_sampler(kind, schedule, config, steps, eta).map(diffusers_class)
}

/// [`sched::build_sampler_with`], for a diffusers class.
fn build_sampler_with(
    kind: SamplerKind,
    schedule: SigmaSchedule,
    config: &SchedulerConfig,
    steps: usize,
    options: &SamplerOptions,
) -> stable_diffusion::Result<Box<dyn Sampler>> {
    sched::build_sampler_with(kind, schedule, config, steps, options).map(diffusers_class)
}

fn relative_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// The largest step-to-step error over all loops must stay below this (times the reference's
/// magnitude where that exceeds 1: the cosine schedule's σ_max ≈ 2·10⁴ blows latents up to
/// ~10⁴, where one f32 ulp is already ~10⁻³).
const STEP_TOLERANCE: f32 = 1e-5;

/// The largest absolute value of a tensor.
#[test]
fn samplers_match_diffusers_step_by_step() {
    let fixture = common::load_json("scheduler/cases.json");
    let tensors = common::load_tensors("scheduler/loops.safetensors");
    let shape: Vec<usize> = serde_json::from_value(fixture["shape"].clone()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut worst_step = (0f32, String::new());
    let mut worst_sigma = 0f64;
    let mut loops_checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let kind: SamplerKind = case["sampler"].as_str().unwrap().parse().unwrap();
        let schedule: SigmaSchedule = case["schedule"].as_str().unwrap().parse().unwrap();
        let config_text = serde_json::to_string(&case["config"]).unwrap();
        let config = SchedulerConfig::from_json(&config_text, "case config".as_ref()).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let eta = case["eta"].as_f64().unwrap();
        let mut sampler = build_sampler(kind, schedule, &config, steps, eta)
            .unwrap_or_else(|e| panic!("{name}: {e}"));

        let timesteps: Vec<f64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        assert_eq!(
            sampler.timesteps().len(),
            timesteps.len(),
            "{name}: timestep count"
        );
        for (i, (a, e)) in sampler.timesteps().iter().zip(&timesteps).enumerate() {
            assert!(
                (a - e).abs() <= 1e-3,
                "{name}: timestep {i} is {a}, reference {e}\nours: {:?}\nreference: {timesteps:?}",
                sampler.timesteps()
            );
        }
        if let Some(expected) = case.get("sigmas") {
            let expected: Vec<f64> = serde_json::from_value(expected.clone()).unwrap();
            let ours = sampler.sigmas().expect("a sigma-based sampler");
            assert_eq!(ours.len(), expected.len(), "{name}: sigma count");
            for (i, (a, e)) in ours.iter().zip(&expected).enumerate() {
                let rel = if *e == 0.0 {
                    a.abs()
                } else {
                    relative_diff(*a, *e)
                };
                worst_sigma = worst_sigma.max(rel);
                assert!(rel <= 1e-6, "{name}: sigma {i} is {a}, reference {e}");
            }
        }
        let init_sigma = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            relative_diff(sampler.init_noise_sigma(), init_sigma) <= 1e-6,
            "{name}: init_noise_sigma {} vs {init_sigma}",
            sampler.init_noise_sigma()
        );

        // The loop, with one generator for every draw.
        let mut rng = TorchCpuRng::new(case["seed"].as_u64().unwrap());
        let start = case["start_step"].as_u64().unwrap() as usize;
        let mut latents = if let Some(strength) = case.get("strength") {
            let first = img2img_start_step(steps, strength.as_f64().unwrap()).unwrap();
            assert_eq!(first, start, "{name}: img2img start step");
            sampler.start_at(start).unwrap();
            let original = rng.randn(&shape, &Device::Cpu).unwrap();
            common::assert_close(
                &format!("{name} clean latents"),
                &original,
                &tensors[&format!("{name}.original")],
                0.0,
            );
            let noise = rng.randn(&shape, &Device::Cpu).unwrap();
            let noisy = sampler.add_noise(&original, &noise, start).unwrap();
            common::assert_close(
                &format!("{name} noised latents"),
                &noisy,
                &tensors[&format!("{name}.noisy")],
                1e-5,
            );
            noisy
        } else {
            let initial = rng.randn(&shape, &Device::Cpu).unwrap();
            common::assert_close(
                &format!("{name} initial latents"),
                &initial,
                &tensors[&format!("{name}.initial")],
                0.0,
            );
            (initial * sampler.init_noise_sigma()).unwrap()
        };
        let loop_steps = case["num_loop_steps"].as_u64().unwrap() as usize;
        assert_eq!(
            sampler.timesteps().len() - start,
            loop_steps,
            "{name}: loop length"
        );
        for i in start..sampler.timesteps().len() {
            let t = sampler.timesteps()[i];
            let input = sampler.scale_model_input(&latents, i).unwrap();
            let output = common::fake_model(&input, t);
            latents = sampler.step(&output, i, &latents, &mut rng).unwrap();
            let expected = &tensors[&format!("{name}.step{}", i - start)];
            let scale = common::max_abs(expected).max(1.0);
            let diff = common::max_abs_diff(&latents, expected) / scale;
            if diff > worst_step.0 {
                worst_step = (diff, format!("{name} step {}", i - start));
            }
            common::assert_close(
                &format!("{name} step {}", i - start),
                &latents,
                expected,
                STEP_TOLERANCE * scale,
            );
        }
        loops_checked += 1;
    }
    println!(
        "{loops_checked} loops; worst step diff (relative to max(1, |reference|)) {:e} ({}); worst sigma rel diff {worst_sigma:e}",
        worst_step.0, worst_step.1
    );
}

#[test]
fn training_schedules_match_diffusers_alphas_cumprod() {
    let expected = common::load_tensors("scheduler/schedules.safetensors");
    let cases = [
        ("scaled_linear", BetaSchedule::ScaledLinear, 0.00085, 0.012),
        ("linear", BetaSchedule::Linear, 0.0001, 0.02),
        (
            "squaredcos_cap_v2",
            BetaSchedule::SquaredCosCapV2,
            0.0001,
            0.02,
        ),
    ];
    for (key, kind, start, end) in cases {
        let ours = NoiseSchedule::new(kind, start, end, 1000, None).unwrap();
        let reference = expected[&format!("alphas_cumprod.{key}")]
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours.alphas_cumprod.len(), reference.len());
        let worst = ours
            .alphas_cumprod
            .iter()
            .zip(&reference)
            .map(|(a, e)| relative_diff(f64::from(*a), f64::from(*e)))
            .fold(0.0, f64::max);
        println!("{key}: worst relative diff {worst:e}");
        assert!(
            worst <= 1e-6,
            "{key}: alphas_cumprod relative diff {worst:e}"
        );
    }
}

#[test]
fn missing_config_keys_take_the_target_samplers_defaults() {
    // SD 1.5's file has no timestep_spacing: DDIM/PNDM default to "leading", the others to
    // "linspace"; the file's steps_offset is kept either way.
    let config = SchedulerConfig::sd15();
    let ddim = config.resolve(SamplerKind::Ddim).unwrap();
    assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
    assert_eq!(ddim.steps_offset, 1);
    assert!(!ddim.clip_sample && !ddim.set_alpha_to_one);
    let euler = config.resolve(SamplerKind::Euler).unwrap();
    assert_eq!(euler.timestep_spacing, TimestepSpacing::Linspace);
    assert_eq!(euler.steps_offset, 1);
    // An empty config: DDIM's own defaults clip and set alpha to one.
    let empty = SchedulerConfig::default()
        .resolve(SamplerKind::Ddim)
        .unwrap();
    assert!(empty.clip_sample && empty.set_alpha_to_one);
    assert_eq!(empty.beta_schedule, BetaSchedule::Linear);
}

#[test]
fn tiny_pipeline_scheduler_config_is_sd15s() {
    let path = common::fixture("models/tiny-sd15/scheduler/scheduler_config.json");
    let config = SchedulerConfig::from_file(&path).unwrap();
    let resolved = config.resolve(SamplerKind::Pndm).unwrap();
    assert_eq!(resolved.beta_schedule, BetaSchedule::ScaledLinear);
    assert_eq!(resolved.steps_offset, 1);
    assert_eq!(config.class_name.as_deref(), Some("PNDMScheduler"));
    let sampler = build_sampler(SamplerKind::Pndm, SigmaSchedule::Default, &config, 4, 0.0);
    assert_eq!(
        sampler.unwrap().timesteps(),
        &[751.0, 501.0, 501.0, 251.0, 1.0]
    );
}

#[test]
fn karras_with_ddim_or_pndm_is_a_clear_error() {
    for kind in [SamplerKind::Ddim, SamplerKind::Pndm] {
        let err = build_sampler(
            kind,
            SigmaSchedule::Karras,
            &SchedulerConfig::sd15(),
            10,
            0.0,
        )
        .err()
        .expect("karras must be refused");
        let msg = err.to_string();
        assert!(
            msg.contains("karras") && msg.contains("euler") && msg.contains("own integer"),
            "{msg}"
        );
    }
}

#[test]
fn sampler_names_parse_and_unknown_names_list_the_valid_ones() {
    for kind in SamplerKind::ALL {
        assert_eq!(kind.name().parse::<SamplerKind>().unwrap(), kind);
        assert_eq!(kind.a1111_name().parse::<SamplerKind>().unwrap(), kind);
    }
    assert_eq!("plms".parse::<SamplerKind>().unwrap(), SamplerKind::Pndm);
    let err = "heun_x".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(
        err.contains("heun_x") && err.contains("dpmpp_2m") && err.contains("plms"),
        "{err}"
    );
    assert_eq!(
        "Karras".parse::<SigmaSchedule>().unwrap(),
        SigmaSchedule::Karras
    );
    assert_eq!(
        "Automatic".parse::<SigmaSchedule>().unwrap(),
        SigmaSchedule::Default
    );
    assert_eq!(
        "exponential".parse::<SigmaSchedule>().unwrap(),
        SigmaSchedule::Exponential
    );
    assert!("exponentiall".parse::<SigmaSchedule>().is_err());
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let config = SchedulerConfig::sd15();
    assert!(build_sampler(SamplerKind::Euler, SigmaSchedule::Default, &config, 0, 0.0).is_err());
    assert!(build_sampler(
        SamplerKind::Euler,
        SigmaSchedule::Default,
        &config,
        5000,
        0.0
    )
    .is_err());
    assert!(build_sampler(SamplerKind::Ddim, SigmaSchedule::Default, &config, 10, -1.0).is_err());
    let bad = SchedulerConfig {
        beta_schedule: Some("quadratic".into()),
        ..SchedulerConfig::sd15()
    };
    let err = build_sampler(SamplerKind::Euler, SigmaSchedule::Default, &bad, 10, 0.0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("quadratic"), "{err}");
    let mut sampler =
        build_sampler(SamplerKind::Euler, SigmaSchedule::Default, &config, 4, 0.0).unwrap();
    let x = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut rng = TorchCpuRng::new(0);
    assert!(sampler.step(&x, 4, &x, &mut rng).is_err());
    assert!(sampler.start_at(9).is_err());
    assert!(img2img_start_step(10, 1.5).is_err());
    assert_eq!(img2img_start_step(10, 0.55).unwrap(), 5);
    assert_eq!(img2img_start_step(10, 1.0).unwrap(), 0);
}

#[test]
fn config_karras_key_applies_where_diffusers_reads_it() {
    let plain = SchedulerConfig::sd15();
    let karras_key = SchedulerConfig {
        use_karras_sigmas: Some(true),
        ..SchedulerConfig::sd15()
    };
    let timesteps = |kind, config: &SchedulerConfig, schedule| {
        build_sampler(kind, schedule, config, 10, 0.0)
            .unwrap()
            .timesteps()
            .to_vec()
    };
    // Euler reads the key; Euler a (no such key in diffusers) and DDIM ignore it.
    let euler_karras = timesteps(SamplerKind::Euler, &plain, SigmaSchedule::Karras);
    assert_eq!(
        timesteps(SamplerKind::Euler, &karras_key, SigmaSchedule::Default),
        euler_karras
    );
    assert_ne!(
        timesteps(SamplerKind::Euler, &plain, SigmaSchedule::Default),
        euler_karras
    );
    for kind in [SamplerKind::EulerA, SamplerKind::Ddim] {
        assert_eq!(
            timesteps(kind, &karras_key, SigmaSchedule::Default),
            timesteps(kind, &plain, SigmaSchedule::Default),
            "{kind}"
        );
    }
}

/// Builds the diffusers-flavor sampler a `classes.json` case describes.
fn class_case_sampler(case: &serde_json::Value) -> Box<dyn Sampler> {
    let name = case["name"].as_str().unwrap();
    let kind: SamplerKind = case["sampler"].as_str().unwrap().parse().unwrap();
    let schedule: SigmaSchedule = case["schedule"].as_str().unwrap().parse().unwrap();
    let config_text = serde_json::to_string(&case["config"]).unwrap();
    let config = SchedulerConfig::from_json(&config_text, "case config".as_ref()).unwrap();
    let steps = case["steps"].as_u64().unwrap() as usize;
    let options = &case["options"];
    let options = SamplerOptions {
        eta: options.get("eta").and_then(|v| v.as_f64()),
        s_noise: options.get("s_noise").and_then(|v| v.as_f64()),
        s_churn: options.get("s_churn").and_then(|v| v.as_f64()),
        s_tmin: options.get("s_tmin").and_then(|v| v.as_f64()),
        s_tmax: options.get("s_tmax").and_then(|v| v.as_f64()),
        flavor: Some(SamplerFlavor::Diffusers),
        ..SamplerOptions::default()
    };
    build_sampler_with(kind, schedule, &config, steps, &options)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn diffusers_classes_match_step_by_step() {
    let fixture = common::load_json("scheduler/classes.json");
    let tensors = common::load_tensors("scheduler/classes.safetensors");
    let shape: Vec<usize> = serde_json::from_value(fixture["shape"].clone()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let mut worst: std::collections::BTreeMap<String, (f32, String)> = Default::default();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let sampler_name = case["sampler"].as_str().unwrap().to_string();
        let mut sampler = class_case_sampler(case);
        let steps = case["steps"].as_u64().unwrap() as usize;
        let timesteps: Vec<f64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        assert_eq!(
            sampler.timesteps().len(),
            timesteps.len(),
            "{name}: timestep count\nours: {:?}\nreference: {timesteps:?}",
            sampler.timesteps()
        );
        for (i, (a, e)) in sampler.timesteps().iter().zip(&timesteps).enumerate() {
            assert!(
                (a - e).abs() <= 1e-3,
                "{name}: timestep {i} is {a}, reference {e}\nours: {:?}\nreference: {timesteps:?}",
                sampler.timesteps()
            );
        }
        let init_sigma = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            relative_diff(sampler.init_noise_sigma(), init_sigma) <= 1e-6,
            "{name}: init_noise_sigma {} vs {init_sigma}",
            sampler.init_noise_sigma()
        );
        let mut rng = TorchCpuRng::new(case["seed"].as_u64().unwrap());
        let start = case["start_step"].as_u64().unwrap() as usize;
        let mut latents = if let Some(strength) = case.get("strength") {
            let first = sampler
                .img2img_start(steps, strength.as_f64().unwrap())
                .unwrap();
            assert_eq!(first, start, "{name}: img2img start step");
            sampler.start_at(start).unwrap();
            let original = rng.randn(&shape, &Device::Cpu).unwrap();
            let noise = rng.randn(&shape, &Device::Cpu).unwrap();
            let noisy = sampler.add_noise(&original, &noise, start).unwrap();
            common::assert_close(
                &format!("{name} noised latents"),
                &noisy,
                &tensors[&format!("{name}.noisy")],
                1e-5,
            );
            noisy
        } else {
            let initial = rng.randn(&shape, &Device::Cpu).unwrap();
            (initial * sampler.init_noise_sigma()).unwrap()
        };
        let loop_steps = case["num_loop_steps"].as_u64().unwrap() as usize;
        assert_eq!(
            sampler.timesteps().len() - start,
            loop_steps,
            "{name}: loop length"
        );
        for i in start..sampler.timesteps().len() {
            let t = sampler.timesteps()[i];
            let input = sampler.scale_model_input(&latents, i).unwrap();
            let output = common::fake_model(&input, t);
            latents = sampler.step(&output, i, &latents, &mut rng).unwrap();
            let expected = &tensors[&format!("{name}.step{}", i - start)];
            // Latents of order 1 (order σ_max ≈ 4096 in the first zero-SNR Euler steps, where
            // one f32 ulp is already ~5e-4): the bound is relative to max(1, |reference|).
            let scale = common::max_abs(expected).max(1.0);
            let diff = common::max_abs_diff(&latents, expected) / scale;
            let entry = worst.entry(sampler_name.clone()).or_default();
            if diff > entry.0 {
                *entry = (diff, format!("{name} step {}", i - start));
            }
            common::assert_close(
                &format!("{name} step {}", i - start),
                &latents,
                expected,
                CLASS_STEP_TOLERANCE * scale,
            );
        }
    }
    for (sampler, (diff, at)) in &worst {
        println!("{sampler}: worst max abs diff / max(1, |reference|) {diff:e} ({at})");
    }
    for kind in SamplerKind::ALL {
        if kind.diffusers_class().is_some()
            && !matches!(
                kind,
                SamplerKind::Ddim
                    | SamplerKind::Pndm
                    | SamplerKind::Euler
                    | SamplerKind::EulerA
                    | SamplerKind::DpmPp2M
            )
        {
            assert!(
                worst.contains_key(kind.name()),
                "{kind} has a diffusers class but no fixture loop"
            );
        }
    }
}

/// The bound on latents after each step, for the classes' loops.
const CLASS_STEP_TOLERANCE: f32 = 1e-4;

#[test]
fn rescale_zero_snr_option_equals_the_config_key_with_trailing_spacing() {
    let fixture = common::load_json("scheduler/classes.json");
    for name in ["euler_zero_snr_v_6", "ddim_zero_snr_v_6"] {
        let case = fixture["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let kind: SamplerKind = case["sampler"].as_str().unwrap().parse().unwrap();
        let options = SamplerOptions {
            rescale_zero_snr: true,
            flavor: Some(SamplerFlavor::Diffusers),
            ..SamplerOptions::default()
        };
        let sampler = build_sampler_with(
            kind,
            SigmaSchedule::Default,
            &SchedulerConfig::sd21_v(),
            6,
            &options,
        )
        .unwrap();
        let timesteps: Vec<f64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        assert_eq!(sampler.timesteps(), timesteps.as_slice(), "{name}");
        let init = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            relative_diff(sampler.init_noise_sigma(), init) <= 1e-6,
            "{name}: {} vs {init}",
            sampler.init_noise_sigma()
        );
    }
    // Samplers whose diffusers class has no such option say so.
    let options = SamplerOptions {
        rescale_zero_snr: true,
        ..SamplerOptions::default()
    };
    let err = build_sampler_with(
        SamplerKind::Heun,
        SigmaSchedule::Default,
        &SchedulerConfig::sd21_v(),
        6,
        &options,
    )
    .err()
    .expect("heun has no zero-SNR option")
    .to_string();
    assert!(
        err.contains("HeunDiscreteScheduler") && err.contains("euler"),
        "{err}"
    );
}

#[test]
fn consistency_samplers_refuse_sigma_schedules_and_too_many_steps() {
    let config = SchedulerConfig::sd15();
    for kind in [SamplerKind::Tcd, SamplerKind::Ddpm] {
        let err = build_sampler(kind, SigmaSchedule::Karras, &config, 4, 0.0)
            .err()
            .expect("karras must be refused")
            .to_string();
        assert!(err.contains("own timesteps"), "{kind}: {err}");
    }
    // LCM on a sigma schedule is A1111's LCM (the k-diffusion flavor), on LCM's 50-step grid:
    // every model timestep is one of 19, 39, ..., 999.
    let plan =
        sched::build_sampler(SamplerKind::Lcm, SigmaSchedule::Karras, &config, 4, 0.0).unwrap();
    assert!(plan.diffusers().is_none());
    let timesteps = plan.step_timesteps().unwrap();
    assert_eq!(timesteps.len(), 4);
    for &t in &timesteps {
        assert!(t >= 19.0 && (t as usize + 1).is_multiple_of(20), "{t}");
    }
    assert_eq!(timesteps[0], 999.0);
    let err = build_sampler(SamplerKind::Lcm, SigmaSchedule::Default, &config, 60, 0.0)
        .err()
        .expect("more steps than LCM's grid")
        .to_string();
    assert!(err.contains("original_inference_steps"), "{err}");
}

#[test]
fn diffusers_classes_without_eta_refuse_one_instead_of_ignoring_it() {
    let config = SchedulerConfig::sd15();
    let with_eta = |flavor| SamplerOptions {
        eta: Some(0.5),
        flavor: Some(flavor),
        ..SamplerOptions::default()
    };
    for kind in [
        SamplerKind::EulerA,
        SamplerKind::DpmPp2MSde,
        SamplerKind::Euler,
    ] {
        let err = build_sampler_with(
            kind,
            SigmaSchedule::Default,
            &config,
            10,
            &with_eta(SamplerFlavor::Diffusers),
        )
        .err()
        .unwrap_or_else(|| panic!("{kind}: eta was accepted"));
        assert!(err.to_string().contains("has no eta"), "{err}");
    }
    // DDIM's eta, TCD's gamma and the k-diffusion ancestral eta are real.
    for (kind, flavor) in [
        (SamplerKind::Ddim, SamplerFlavor::Diffusers),
        (SamplerKind::Tcd, SamplerFlavor::Diffusers),
        (SamplerKind::EulerA, SamplerFlavor::KDiffusion),
    ] {
        sched::build_sampler_with(kind, SigmaSchedule::Default, &config, 4, &with_eta(flavor))
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}
