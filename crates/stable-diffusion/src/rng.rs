//! Torch-compatible random number streams (CPU mt19937 and Gaussian sampling).
//!
//! Every random draw of a generation (initial latents, the VAE posterior sample, the noise of
//! each ancestral step) goes through one [`NoiseSource`], in the reference's draw order, so that
//! the same seed gives the reference's image.

use candle_core::{Device, Tensor};

use crate::Result;

/// A stream of standard-normal noise.
pub trait NoiseSource {
    /// Draws a tensor of independent N(0, 1) values (f32) of `shape` on `device`, advancing the
    /// stream exactly as the reference's `torch.randn(shape, generator=...)` does.
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor>;
}
