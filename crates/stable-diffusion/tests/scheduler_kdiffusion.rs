//! Parity of the k-diffusion flavor with k-diffusion's `sample_*` functions and A1111's sigma
//! schedules (fixtures/scheduler_kdiffusion/, made by tools/reference/parts/kdiffusion.py):
//! sigma lists, model timesteps, the sample at the start of every step and the final sample,
//! with a stand-in model wrapped like A1111's CompVisDenoiser and noise from the seeded
//! torch-compatible generator.

mod common;

use candle_core::Device;
use stable_diffusion::rng::{NoiseSource, TorchCpuRng};
use stable_diffusion::scheduler::{
    build_sampler_with, kdiffusion_sigmas, sigmas::ModelSigmas, SamplerFlavor, SamplerKind,
    SamplerOptions, SchedulerConfig, SigmaSchedule,
};

/// Latents after each step must match to this (times max(1, |reference|)).
const STEP_TOLERANCE: f32 = 1e-4;

fn options_of(case: &serde_json::Value) -> SamplerOptions {
    let o = &case["options"];
    let get = |k: &str| o.get(k).and_then(|v| v.as_f64());
    SamplerOptions {
        eta: get("eta"),
        s_noise: get("s_noise"),
        s_churn: get("s_churn"),
        s_tmin: get("s_tmin"),
        s_tmax: get("s_tmax"),
        sigmas: case
            .get("custom_sigmas")
            .map(|v| serde_json::from_value(v.clone()).unwrap()),
        flavor: Some(SamplerFlavor::KDiffusion),
        sdxl: false,
        rescale_zero_snr: false,
    }
}

#[test]
fn kdiffusion_samplers_match_k_diffusion_step_by_step() {
    let fixture = common::load_json("scheduler_kdiffusion/cases.json");
    let tensors = common::load_tensors("scheduler_kdiffusion/loops.safetensors");
    let shape: Vec<usize> = serde_json::from_value(fixture["shape"].clone()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut worst = (0f32, String::new());
    let mut worst_sigma = 0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let kind: SamplerKind = case["sampler"].as_str().unwrap().parse().unwrap();
        let schedule: SigmaSchedule = case["schedule"].as_str().unwrap().parse().unwrap();
        let config_text = serde_json::to_string(&case["config"]).unwrap();
        let config = SchedulerConfig::from_json(&config_text, "case config".as_ref()).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let options = options_of(case);
        let mut plan = build_sampler_with(kind, schedule, &config, steps, &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));

        let expected: Vec<f64> = serde_json::from_value(case["sigmas"].clone()).unwrap();
        let ours = plan.sigmas().unwrap();
        assert_eq!(
            ours.len(),
            expected.len(),
            "{name}: sigma count {ours:?} vs {expected:?}"
        );
        for (i, (a, e)) in ours.iter().zip(&expected).enumerate() {
            let rel = (a - e).abs() / e.abs().max(1e-3);
            worst_sigma = worst_sigma.max(rel);
            assert!(rel <= 2e-6, "{name}: sigma {i} is {a}, reference {e}");
        }

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
        let mut model = common::RecordingModel::default();
        let result = plan.run(&mut model, latents, &mut rng, None).unwrap();
        let timesteps: Vec<f64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        let ours: Vec<f64> = model.calls.iter().map(|(_, t)| *t).collect();
        assert_eq!(
            ours.len(),
            timesteps.len(),
            "{name}: model calls\nours {ours:?}\nreference {timesteps:?}"
        );
        for (a, e) in ours.iter().zip(&timesteps) {
            assert!((a - e).abs() <= 2e-3, "{name}: timestep {a} vs {e}");
        }
        // k-diffusion's callback reports the sample at the start of every step.
        assert_eq!(
            model.steps.len(),
            case["num_steps"].as_u64().unwrap() as usize,
            "{name}: steps"
        );
        assert_eq!(model.steps.len(), plan.steps(), "{name}: planned steps");
        for (step, x) in model.steps.iter().enumerate() {
            if let Some(expected) = tensors.get(&format!("{name}.start{step}")) {
                let diff = common::relative_diff(x, expected);
                if diff > worst.0 {
                    worst = (diff, format!("{name} step {step}"));
                }
                assert!(
                    diff <= STEP_TOLERANCE,
                    "{name}: step {step} start differs by {diff}"
                );
            }
        }
        let expected = &tensors[&format!("{name}.final")];
        let diff = common::relative_diff(&result, expected);
        if diff > worst.0 {
            worst = (diff, format!("{name} final"));
        }
        assert!(
            diff <= STEP_TOLERANCE,
            "{name}: final sample differs by {diff}"
        );
    }
    println!(
        "{} loops; worst step diff (relative to max(1, |ref|)) {:e} ({}); worst sigma rel diff {worst_sigma:e}",
        cases.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn a1111_schedules_match_the_reference() {
    let fixture = common::load_json("scheduler_kdiffusion/cases.json");
    let lists = fixture["schedules"].as_object().unwrap();
    let config = SchedulerConfig::sd15();
    let resolved = config.resolve(SamplerKind::Euler).unwrap();
    let model = ModelSigmas::new(&resolved.noise_schedule().unwrap());
    let mut worst = 0f64;
    for (key, expected) in lists {
        let expected: Vec<f64> = serde_json::from_value(expected.clone()).unwrap();
        let (name, n) = key.rsplit_once('_').unwrap();
        let n: usize = n.parse().unwrap();
        let (kind, schedule, sdxl) = match name {
            "align_your_steps_sdxl" => (SamplerKind::Euler, SigmaSchedule::AlignYourSteps, true),
            "dpm2_default" => (SamplerKind::Dpm2, SigmaSchedule::Default, false),
            other => (SamplerKind::Euler, other.parse().unwrap(), false),
        };
        let options = SamplerOptions {
            sdxl,
            ..SamplerOptions::default()
        };
        let ours = kdiffusion_sigmas(kind, schedule, &model, n, &options).unwrap();
        assert_eq!(
            ours.len(),
            expected.len(),
            "{key}: {ours:?} vs {expected:?}"
        );
        for (a, e) in ours.iter().zip(&expected) {
            let rel = (f64::from(*a) - e).abs() / e.abs().max(1e-3);
            worst = worst.max(rel);
            assert!(rel <= 2e-6, "{key}: {ours:?}\nvs {expected:?}");
        }
    }
    println!("{} schedules; worst relative diff {worst:e}", lists.len());
}
