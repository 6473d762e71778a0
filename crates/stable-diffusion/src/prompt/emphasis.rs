//! AUTOMATIC1111's "Original" emphasis: each token's output vector is multiplied by its weight,
//! then the whole chunk is rescaled so that its mean (over every token and feature) is what it
//! was before: `z' = z·w · mean(z) / mean(z·w)`.

use candle_core::{DType, Tensor};

use crate::Result;

/// Applies `weights` (one per token) to `z` `(1, tokens, features)` and restores its mean.
/// Computed in f32; returns `z`'s dtype.
pub fn apply_emphasis(z: &Tensor, weights: &[f64]) -> Result<Tensor> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(z.clone());
    }
    let dtype = z.dtype();
    let z = z.to_dtype(DType::F32)?;
    let (batch, tokens, _) = z.dims3()?;
    let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let weights = Tensor::from_vec(weights, (1, tokens, 1), z.device())?;
    let original_mean = z.mean_all()?;
    let weighted = z.broadcast_mul(&weights.repeat((batch, 1, 1))?)?;
    let new_mean = weighted.mean_all()?;
    let scale = (original_mean / new_mean)?;
    Ok(weighted.broadcast_mul(&scale)?.to_dtype(dtype)?)
}
