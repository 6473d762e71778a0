//! Helpers shared by the integration tests: fixture paths, tensor loading, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// The repository's `fixtures/` folder (written by tools/reference/make_fixtures.py).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A path under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

/// Loads every tensor of a fixture safetensors file onto the CPU.
pub fn load_tensors(rel: &str) -> HashMap<String, Tensor> {
    let path = fixture(rel);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load fixture {}: {e}", path.display()))
}

/// The device the device-parity tests (tests/device.rs) run on: the `SD_TEST_DEVICE`
/// environment variable (cpu, cuda, cuda:N, metal, auto), the CPU when it is unset.
pub fn test_device() -> Device {
    let spec = std::env::var("SD_TEST_DEVICE").unwrap_or_else(|_| "cpu".to_string());
    stable_diffusion::device::parse_device(&spec)
        .unwrap_or_else(|e| panic!("SD_TEST_DEVICE={spec}: {e}"))
}

/// Reads a JSON fixture.
pub fn load_json(rel: &str) -> serde_json::Value {
    let path = fixture(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// The largest absolute difference between two tensors of the same shape (compared whole).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let a = a.to_vec1::<f32>().unwrap();
    let b = b.to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

/// The largest absolute value in `t`.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// [`max_abs_diff`] relative to max(1, |expected|): how the sampler tests compare samples.
pub fn relative_diff(actual: &Tensor, expected: &Tensor) -> f32 {
    max_abs_diff(actual, expected) / max_abs(expected).max(1.0)
}

/// The sampler fixtures' stand-in for the UNet: `0.9 * tanh(x) + 0.05 * t / 1000`.
pub fn fake_model(x: &Tensor, t: f64) -> Tensor {
    x.tanh().unwrap().affine(0.9, 0.05 * (t / 1000.0)).unwrap()
}

/// The sampler fixtures' stand-in for the negative prompt's UNet output (DDIM CFG++ cases):
/// `0.5 * tanh(x) + 0.2 * x - 0.03 * t / 1000`.
#[allow(dead_code)]
pub fn fake_uncond_model(x: &Tensor, t: f64) -> Tensor {
    let tanh = x.tanh().unwrap().affine(0.5, 0.0).unwrap();
    (tanh + x.affine(0.2, 0.0).unwrap())
        .unwrap()
        .affine(1.0, -0.03 * (t / 1000.0))
        .unwrap()
}

/// The stand-in model as a sampler calls it: [`fake_model`], with every call's input and
/// timestep and every step's reported sample recorded. With `cfg_scale` set it is a guided
/// model: [`fake_uncond_model`] + (fake_model − fake_uncond_model) · scale.
#[allow(dead_code)]
#[derive(Default)]
pub struct RecordingModel {
    /// (input, timestep) of each model call, in order.
    pub calls: Vec<(Tensor, f64)>,
    /// The sample each step reported (k-diffusion's callback `x`).
    pub steps: Vec<Tensor>,
    /// The guidance scale of the two-output stand-in (`None`: the one-output model).
    pub cfg_scale: Option<f64>,
}

impl RecordingModel {
    /// The (guided, unconditional) outputs for `input` with guidance `scale`.
    fn guided(input: &Tensor, timestep: f64, scale: f64) -> (Tensor, Tensor) {
        let (cond, uncond) = (
            fake_model(input, timestep),
            fake_uncond_model(input, timestep),
        );
        let guided = (&uncond + ((&cond - &uncond).unwrap() * scale).unwrap()).unwrap();
        (guided, uncond)
    }
}

impl stable_diffusion::scheduler::Model for RecordingModel {
    fn predict(&mut self, input: &Tensor, timestep: f64) -> stable_diffusion::Result<Tensor> {
        self.calls.push((input.clone(), timestep));
        Ok(match self.cfg_scale {
            Some(scale) => Self::guided(input, timestep, scale).0,
            None => fake_model(input, timestep),
        })
    }

    fn predict_with_uncond(
        &mut self,
        input: &Tensor,
        timestep: f64,
        scale_multiplier: f64,
    ) -> stable_diffusion::Result<stable_diffusion::scheduler::GuidedPrediction> {
        self.calls.push((input.clone(), timestep));
        let (guided, uncond) = match self.cfg_scale {
            Some(scale) => Self::guided(input, timestep, scale * scale_multiplier),
            None => {
                let output = fake_model(input, timestep);
                (output.clone(), output)
            }
        };
        Ok(stable_diffusion::scheduler::GuidedPrediction { guided, uncond })
    }

    fn step_done(
        &mut self,
        step: &stable_diffusion::scheduler::StepInfo<'_>,
    ) -> stable_diffusion::Result<()> {
        self.steps.push(step.x.clone());
        Ok(())
    }
}

/// Asserts that `actual` equals `expected` (whole tensors, same shape) within `tol` max abs diff.
#[track_caller]
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f32) {
    assert_eq!(
        actual.dims(),
        expected.dims(),
        "{what}: shape {:?}, reference {:?}",
        actual.dims(),
        expected.dims()
    );
    let diff = max_abs_diff(actual, expected);
    assert!(
        diff <= tol,
        "{what}: max abs diff {diff:e} > tolerance {tol:e}"
    );
}

/// Asserts that the names and shapes a model asked for equal a manifest written by the
/// reference script (`fixtures/manifests/<name>.json`), listing every difference.
#[track_caller]
pub fn assert_matches_manifest(
    manifest: &str,
    recorded: &std::collections::BTreeMap<String, Vec<usize>>,
) {
    let expected = load_json(&format!("manifests/{manifest}.json"));
    let expected = expected.as_object().expect("manifest is a JSON object");
    let mut problems = Vec::new();
    for (name, shape) in expected {
        let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
        match recorded.get(name) {
            None => problems.push(format!("missing: {name} {shape:?}")),
            Some(found) if *found != shape => {
                problems.push(format!("shape of {name}: built {found:?}, file {shape:?}"))
            }
            Some(_) => {}
        }
    }
    for (name, shape) in recorded {
        if !expected.contains_key(name) {
            problems.push(format!("extra: {name} {shape:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{manifest}: {} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
