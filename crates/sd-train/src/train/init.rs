//! Initial weights for a model built on a `VarMap` (whose own default is all zeros).

use std::collections::BTreeSet;

use candle_core::{Tensor, Var};

use stable_diffusion::rng::TorchCpuRng;
use stable_diffusion::tokenizer::{ClipTokenizer, PadStyle};
use stable_diffusion::Result;

/// The token ids the data set's captions use (plus start and end), whose embedding rows get
/// random initial values; every other row starts (and, never seeing a gradient, stays) zero,
/// which keeps the exported 49408-row table highly compressible.
pub fn caption_token_ids() -> Result<BTreeSet<u32>> {
    let tokenizer = ClipTokenizer::embedded()?;
    let mut ids = BTreeSet::new();
    for word in crate::shapes::vocabulary() {
        ids.extend(tokenizer.encode_padded(word, 77, PadStyle::EndOfText)?);
    }
    Ok(ids)
}

/// How one variable starts.
fn initial_value(
    name: &str,
    var: &Var,
    rng: &mut TorchCpuRng,
    tokens: &BTreeSet<u32>,
) -> Result<Tensor> {
    let tensor = var.as_tensor();
    let dims = tensor.dims().to_vec();
    let device = tensor.device();
    let zero_init = name.starts_with("unet.")
        && (name.ends_with("unet.conv_out.weight")
            || (name.contains(".resnets.") && name.ends_with(".conv2.weight"))
            || (name.contains(".attentions.") && name.ends_with(".proj_out.weight")));
    if name.ends_with("token_embedding.weight") {
        let (rows, width) = (dims[0], dims[1]);
        let mut values = vec![0f32; rows * width];
        for &id in tokens {
            let id = id as usize;
            if id < rows {
                for (v, r) in values[id * width..(id + 1) * width]
                    .iter_mut()
                    .zip(rng.randn_vec(width))
                {
                    *v = 0.02 * r;
                }
            }
        }
        return Ok(Tensor::from_vec(values, dims, device)?);
    }
    if name.ends_with("position_embedding.weight") {
        let n = tensor.elem_count();
        let values: Vec<f32> = rng.randn_vec(n).into_iter().map(|v| 0.01 * v).collect();
        return Ok(Tensor::from_vec(values, dims, device)?);
    }
    if name.ends_with(".bias") || zero_init {
        return Ok(tensor.zeros_like()?);
    }
    if dims.len() == 1 {
        // Norm scales.
        return Ok(tensor.ones_like()?);
    }
    // torch's default for linear and conv layers: std 1 / sqrt(3 · fan_in).
    let fan_in: usize = dims[1..].iter().product();
    let std = 1.0 / (3.0 * fan_in as f32).sqrt();
    let values: Vec<f32> = rng
        .randn_vec(tensor.elem_count())
        .into_iter()
        .map(|v| std * v)
        .collect();
    Ok(Tensor::from_vec(values, dims, device)?)
}

/// Sets every variable (sorted by name) to its initial value, drawn from `seed`.
pub fn initialize(names: &[String], vars: &[Var], seed: u64) -> Result<()> {
    let tokens = caption_token_ids()?;
    let mut rng = TorchCpuRng::new(seed);
    for (name, var) in names.iter().zip(vars) {
        var.set(&initial_value(name, var, &mut rng, &tokens)?)?;
    }
    Ok(())
}
