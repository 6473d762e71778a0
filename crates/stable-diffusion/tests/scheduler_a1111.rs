//! Parity of A1111's own timestep samplers ("DDIM", "DDIM CFG++", "PLMS", "UniPC"; the
//! k-diffusion flavor of ddim, ddim_cfgpp, pndm and unipc) with a transcription of A1111's loops
//! (fixtures/scheduler_a1111/, made by tools/reference/parts/a1111_timesteps.py): the model
//! timesteps, the sample at every model call and the final sample, with the k-diffusion
//! fixtures' stand-in model (DDIM CFG++: two stand-in outputs mixed by CFG).

mod common;

use candle_core::Device;
use stable_diffusion::rng::{NoiseSource, TorchCpuRng};
use stable_diffusion::scheduler::{
    build_sampler_with, SamplerFlavor, SamplerKind, SamplerOptions, SchedulerConfig, SigmaSchedule,
};

/// Samples must match to this (times max(1, |reference|)).
const TOLERANCE: f32 = 1e-4;

#[test]
fn a1111_timestep_samplers_match_a1111_call_by_call() {
    check_fixture("cases.json", "loops.safetensors", 20);
}

#[test]
fn a1111_ddim_cfgpp_matches_a1111_call_by_call() {
    check_fixture("cfgpp.json", "cfgpp.safetensors", 8);
}

/// Runs every case of a fixture file of scheduler_a1111/ and compares each model call's input
/// and the final sample; prints the worst difference.
fn check_fixture(cases_file: &str, tensors_file: &str, min_cases: usize) {
    let fixture = common::load_json(&format!("scheduler_a1111/{cases_file}"));
    let tensors = common::load_tensors(&format!("scheduler_a1111/{tensors_file}"));
    let shape: Vec<usize> = serde_json::from_value(fixture["shape"].clone()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= min_cases, "only {} cases", cases.len());
    let mut worst = (0f32, String::new());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let kind: SamplerKind = case["sampler"].as_str().unwrap().parse().unwrap();
        let config_text = serde_json::to_string(&case["config"]).unwrap();
        let config = SchedulerConfig::from_json(&config_text, "case config".as_ref()).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let options = SamplerOptions {
            eta: case.get("eta").and_then(|v| v.as_f64()),
            flavor: Some(SamplerFlavor::KDiffusion),
            ..SamplerOptions::default()
        };
        let mut plan = build_sampler_with(kind, SigmaSchedule::Default, &config, steps, &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut rng = TorchCpuRng::new(case["seed"].as_u64().unwrap());
        let latents = if let Some(strength) = case.get("strength") {
            plan.start_img2img(steps, strength.as_f64().unwrap())
                .unwrap();
            let original = rng.randn(&shape, &Device::Cpu).unwrap();
            common::assert_close(name, &original, &tensors[&format!("{name}.original")], 0.0);
            let noise = rng.randn(&shape, &Device::Cpu).unwrap();
            plan.noised_start(&original, &noise).unwrap()
        } else {
            let initial = rng.randn(&shape, &Device::Cpu).unwrap();
            common::assert_close(name, &initial, &tensors[&format!("{name}.initial")], 0.0);
            (initial * plan.init_noise_sigma()).unwrap()
        };
        let mut model = common::RecordingModel {
            cfg_scale: case.get("cfg_scale").and_then(|v| v.as_f64()),
            ..Default::default()
        };
        let latents = plan.run(&mut model, latents, &mut rng, None).unwrap();
        let expected: Vec<f64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        let ours: Vec<f64> = model.calls.iter().map(|(_, t)| *t).collect();
        assert_eq!(
            ours.len(),
            expected.len(),
            "{name}: model calls\nours {ours:?}\nreference {expected:?}"
        );
        for (a, e) in ours.iter().zip(&expected) {
            assert!((a - e).abs() <= 1e-3, "{name}: timestep {a} vs {e}");
        }
        assert_eq!(model.steps.len(), plan.steps(), "{name}: planned steps");
        // The sample the model saw at every call.
        for (call, (input, _)) in model.calls.iter().enumerate() {
            let reference = &tensors[&format!("{name}.call{call}")];
            let diff = common::relative_diff(input, reference);
            if diff > worst.0 {
                worst = (diff, format!("{name} call {call}"));
            }
            assert!(diff <= TOLERANCE, "{name}: call {call} differs by {diff}");
        }
        let diff = common::relative_diff(&latents, &tensors[&format!("{name}.final")]);
        if diff > worst.0 {
            worst = (diff, format!("{name} final"));
        }
        assert!(diff <= TOLERANCE, "{name}: final sample differs by {diff}");
    }
    println!(
        "{cases_file}: {} runs; worst diff (relative to max(1, |ref|)) {:e} ({})",
        cases.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn a1111_timestep_samplers_refuse_schedules_they_ignore() {
    let config = SchedulerConfig::sd15();
    for kind in [
        SamplerKind::Ddim,
        SamplerKind::DdimCfgPp,
        SamplerKind::Pndm,
        SamplerKind::UniPc,
    ] {
        let options = SamplerOptions {
            flavor: Some(SamplerFlavor::KDiffusion),
            ..SamplerOptions::default()
        };
        let err = build_sampler_with(kind, SigmaSchedule::Karras, &config, 10, &options)
            .err()
            .unwrap_or_else(|| panic!("{kind} accepted karras"))
            .to_string();
        assert!(err.contains("own integer timesteps"), "{kind}: {err}");
        assert!(err.contains(kind.a1111_name()), "{kind}: {err}");
    }
    // Our names keep diffusers' classes, including diffusers' Karras UniPC.
    let plain = SamplerOptions::default();
    let unipc = build_sampler_with(
        SamplerKind::UniPc,
        SigmaSchedule::Karras,
        &config,
        10,
        &plain,
    );
    assert!(unipc.is_ok());
    // A1111's UniPC needs as many steps as its order.
    let options = SamplerOptions {
        flavor: Some(SamplerFlavor::KDiffusion),
        ..SamplerOptions::default()
    };
    let mut plan = build_sampler_with(
        SamplerKind::UniPc,
        SigmaSchedule::Default,
        &config,
        10,
        &options,
    )
    .unwrap();
    let err = plan.start_img2img(10, 0.25).unwrap_err().to_string();
    assert!(err.contains("at least 3 steps"), "{err}");
    assert!(build_sampler_with(
        SamplerKind::UniPc,
        SigmaSchedule::Default,
        &config,
        2,
        &options
    )
    .is_err());
    // They run whole: no start or stop in the middle of a txt2img run (a refiner handoff).
    let err = plan.skip(4).unwrap_err().to_string();
    assert!(err.contains("runs whole"), "{err}");
    assert!(plan.stop_after(4).is_err());
    assert!(plan.step_timesteps().is_err());
}

#[test]
fn a1111_names_select_a1111_timestep_samplers_and_ours_keep_diffusers() {
    use stable_diffusion::scheduler::parse_sampler_name;
    let config = SchedulerConfig::sd15();
    for (name, kind) in [
        ("DDIM", SamplerKind::Ddim),
        ("PLMS", SamplerKind::Pndm),
        ("UniPC", SamplerKind::UniPc),
    ] {
        let (parsed, flavor) = parse_sampler_name(name).unwrap();
        assert_eq!((parsed, flavor), (kind, Some(SamplerFlavor::KDiffusion)));
        let options = SamplerOptions {
            flavor,
            ..SamplerOptions::default()
        };
        let mut a1111 =
            build_sampler_with(kind, SigmaSchedule::Default, &config, 7, &options).unwrap();
        // A1111 plans 8 timesteps for 7 steps; UniPC calls the model at all of them from
        // t = 999, DDIM skips the lowest, PLMS adds its warm-up call.
        let mut model = common::RecordingModel::default();
        let x = candle_core::Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu)
            .unwrap();
        a1111
            .run(&mut model, x, &mut TorchCpuRng::new(0), None)
            .unwrap();
        let calls: Vec<f64> = model.calls.iter().map(|(_, t)| *t).collect();
        let expected = match kind {
            SamplerKind::Ddim => 7,
            _ => 8,
        };
        assert_eq!(calls.len(), expected, "{name}: {calls:?}");
        let (ours, flavor) =
            parse_sampler_name(&name.to_lowercase().replace("plms", "pndm")).unwrap();
        assert_eq!((ours, flavor), (kind, None));
        let diffusers = build_sampler_with(
            kind,
            SigmaSchedule::Default,
            &config,
            7,
            &SamplerOptions::default(),
        )
        .unwrap();
        assert_ne!(diffusers.diffusers().unwrap().timesteps(), calls, "{name}");
    }
}

#[test]
fn ddim_cfgpp_goes_by_a1111_s_name_and_ours_and_runs_only_as_a1111_does() {
    use stable_diffusion::scheduler::parse_sampler_name;
    let kind = SamplerKind::DdimCfgPp;
    assert_eq!(kind.a1111_name(), "DDIM CFG++");
    assert_eq!(kind.name(), "ddim_cfgpp");
    for name in ["DDIM CFG++", "ddim cfg++"] {
        assert_eq!(
            parse_sampler_name(name).unwrap(),
            (kind, Some(SamplerFlavor::KDiffusion)),
            "{name}"
        );
    }
    assert_eq!(parse_sampler_name("ddim_cfgpp").unwrap(), (kind, None));
    assert!(kind.needs_uncond() && kind.uses_ddim_eta());
    assert!(SamplerKind::ALL
        .iter()
        .all(|k| k.needs_uncond() == (*k == kind)));
    // Our name runs A1111's loop too (there is no diffusers class): 7 steps, 7 calls.
    let config = SchedulerConfig::sd15();
    let mut plan = build_sampler_with(
        kind,
        SigmaSchedule::Default,
        &config,
        7,
        &SamplerOptions::default(),
    )
    .unwrap();
    assert!(plan.diffusers().is_none());
    let mut model = common::RecordingModel {
        cfg_scale: Some(7.5),
        ..Default::default()
    };
    let x = candle_core::Tensor::ones((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let first = plan
        .run(&mut model, x.clone(), &mut TorchCpuRng::new(0), None)
        .unwrap();
    assert_eq!(model.calls.len(), 7);
    // Its eta is DDIM's, 0 by default: the noise it draws does not count.
    let again = plan
        .run(&mut model, x, &mut TorchCpuRng::new(1), None)
        .unwrap();
    let diff = common::max_abs_diff(&first, &again);
    assert_eq!(diff, 0.0);
    let diffusers = SamplerOptions {
        flavor: Some(SamplerFlavor::Diffusers),
        ..SamplerOptions::default()
    };
    let err = build_sampler_with(kind, SigmaSchedule::Default, &config, 7, &diffusers)
        .err()
        .expect("no diffusers class")
        .to_string();
    assert!(err.contains("no diffusers scheduler class"), "{err}");
    // A negative eta is refused.
    let bad = SamplerOptions {
        eta: Some(-1.0),
        ..SamplerOptions::default()
    };
    assert!(build_sampler_with(kind, SigmaSchedule::Default, &config, 7, &bad).is_err());
}
