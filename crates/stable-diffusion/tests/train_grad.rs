//! The trainer's gradients against torch's autograd: one diffusion-stage loss on the tiny
//! SD 1.5 text encoder + UNet, back-propagated to every parameter of both
//! (tools/reference/parts/train_grad.py).

mod common;

use std::collections::HashMap;

use stable_diffusion::candle_core::{DType, Device, Tensor};
use stable_diffusion::candle_nn::{VarBuilder, VarMap};
use stable_diffusion::scheduler::{BetaSchedule, NoiseSchedule};
use stable_diffusion::text_encoder::{ClipTextConfig, ClipTextModel, HiddenLayer};
use stable_diffusion::unet::{UNet2DConditionModel, UNetConfig};

const TOKEN_TABLE: &str = "text_encoder.embeddings.token_embedding.weight";

/// The fixture's weights for a variable of ours (`text_encoder.…` / `unet.…`).
fn weight<'a>(
    name: &str,
    text: &'a HashMap<String, Tensor>,
    unet: &'a HashMap<String, Tensor>,
) -> &'a Tensor {
    let found = match name.split_once('.') {
        Some(("text_encoder", rest)) => text
            .get(rest)
            .or_else(|| text.get(rest.trim_start_matches("text_model."))),
        Some(("unet", rest)) => unet.get(rest),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("no fixture weight for {name}"))
}

#[test]
fn one_training_step_backpropagates_like_torch() {
    let cpu = Device::Cpu;
    let model = common::fixture("models/tiny-sd15");
    let text_config = ClipTextConfig::from_file(model.join("text_encoder/config.json")).unwrap();
    let unet_config = UNetConfig::from_file(model.join("unet/config.json")).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &cpu);
    let text_encoder = ClipTextModel::new(vb.pp("text_encoder"), &text_config).unwrap();
    let unet = UNet2DConditionModel::new(vb.pp("unet"), &unet_config).unwrap();
    let text_weights = stable_diffusion::candle_core::safetensors::load(
        model.join("text_encoder/model.safetensors"),
        &cpu,
    )
    .unwrap();
    let unet_weights = stable_diffusion::candle_core::safetensors::load(
        model.join("unet/diffusion_pytorch_model.safetensors"),
        &cpu,
    )
    .unwrap();
    let vars: Vec<(String, stable_diffusion::candle_core::Var)> = {
        let data = varmap.data().lock().unwrap();
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    for (name, var) in &vars {
        let value = weight(name, &text_weights, &unet_weights);
        var.set(&value.to_dtype(DType::F32).unwrap()).unwrap();
    }

    let inputs = common::load_tensors("train_grad/inputs.safetensors");
    let expected = common::load_tensors("train_grad/grads.safetensors");
    stable_diffusion::nn::set_differentiable(true);
    let ids = inputs["ids"].to_dtype(DType::U32).unwrap();
    let context = text_encoder
        .forward(&ids, HiddenLayer::LAST)
        .unwrap()
        .hidden;
    let schedule =
        NoiseSchedule::new(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000, None).unwrap();
    let timesteps: Vec<i64> = inputs["timesteps"].to_vec1().unwrap();
    let column = |f: &dyn Fn(f32) -> f32| {
        let values: Vec<f32> = timesteps
            .iter()
            .map(|&t| f(schedule.alphas_cumprod[t as usize]))
            .collect();
        Tensor::from_vec(values, (timesteps.len(), 1, 1, 1), &cpu).unwrap()
    };
    let signal = column(&|a| a.sqrt());
    let level = column(&|a| (1.0 - a).sqrt());
    let (latents, noise) = (&inputs["latents"], &inputs["noise"]);
    let noisy =
        (latents.broadcast_mul(&signal).unwrap() + noise.broadcast_mul(&level).unwrap()).unwrap();
    let t: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
    let eps = unet.forward_per_sample(&noisy, &t, &context, None).unwrap();
    let per_sample = (eps - noise)
        .unwrap()
        .sqr()
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .mean(1)
        .unwrap();
    let loss = (per_sample * &inputs["weights"])
        .unwrap()
        .mean_all()
        .unwrap();
    stable_diffusion::nn::set_differentiable(false);
    let ours: f32 = loss.to_scalar().unwrap();
    let theirs: Vec<f32> = inputs["loss"].to_vec1().unwrap();
    assert!(
        (ours - theirs[0]).abs() <= 1e-5 * theirs[0],
        "loss {ours} vs {}",
        theirs[0]
    );

    let grads = loss.backward().unwrap();
    let mut worst = (0f32, String::new());
    for (name, var) in &vars {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reached {name}"));
        let reference_name = name.replace("text_encoder.text_model.", "text_encoder.");
        let (grad, reference) = if reference_name == TOKEN_TABLE {
            // Only the rows of the tokens used may be non-zero.
            let rows = expected[&format!("{TOKEN_TABLE}.row_ids")]
                .to_dtype(DType::U32)
                .unwrap();
            let used = grad.index_select(&rows, 0).unwrap();
            let total: f32 = grad.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            let in_rows: f32 = used.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(
                (total - in_rows).abs() <= 1e-6 * total,
                "{name}: other rows moved"
            );
            (used, expected[&format!("{TOKEN_TABLE}.rows")].clone())
        } else {
            let reference = expected
                .get(&reference_name)
                .unwrap_or_else(|| panic!("torch has no gradient for {name}"));
            (grad.clone(), reference.clone())
        };
        let scale: f32 = reference
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        // Relative to the tensor's largest gradient, with an absolute floor for gradients
        // that are zero up to rounding (the key projections' biases: softmax ignores them).
        let diff = common::max_abs_diff(&grad, &reference) / scale.max(1e-4);
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
        assert!(
            diff <= 1e-3,
            "{name}: max |diff| {diff:e} of its largest gradient {scale:e}"
        );
    }
    eprintln!(
        "{} gradients match; worst relative max |diff| {:e} ({})",
        vars.len(),
        worst.0,
        worst.1
    );
    assert_eq!(vars.len(), expected.len() - 1, "parameter counts differ");
}
