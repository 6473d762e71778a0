//! The VAE posterior: a Gaussian with diagonal covariance over the latents.

use candle_core::Tensor;

use crate::rng::NoiseSource;
use crate::Result;

/// The bounds diffusers clamps the log-variance to.
const LOGVAR_MIN: f64 = -30.0;
const LOGVAR_MAX: f64 = 20.0;

/// diffusers' `DiagonalGaussianDistribution`: `mean` and clamped `logvar`, both `(B, C, h, w)`.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// The mean, `(B, C, h, w)`.
    pub mean: Tensor,
    /// The log-variance, clamped to `[-30, 20]`, `(B, C, h, w)`.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits `(B, 2C, h, w)` moments into mean (first C channels) and log-variance (clamped).
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let (_, channels, _, _) = moments.dims4()?;
        if channels % 2 != 0 {
            return Err(crate::Error::invalid(
                "VAE moments",
                format!("{channels} channels, expected an even number (mean and logvar)"),
            ));
        }
        let half = channels / 2;
        let mean = moments.narrow(1, 0, half)?.contiguous()?;
        let logvar = moments
            .narrow(1, half, half)?
            .clamp(LOGVAR_MIN, LOGVAR_MAX)?
            .contiguous()?;
        Ok(Self { mean, logvar })
    }

    /// The most likely latents (the mean), what `latent_dist.mode()` returns.
    pub fn mode(&self) -> Result<Tensor> {
        Ok(self.mean.clone())
    }

    /// The standard deviation, `exp(0.5 · logvar)`.
    pub fn std(&self) -> Result<Tensor> {
        Ok((&self.logvar * 0.5)?.exp()?)
    }

    /// `mean + std · noise` with `noise` drawn as `randn(mean.shape)` from `rng`.
    pub fn sample(&self, rng: &mut dyn NoiseSource) -> Result<Tensor> {
        let noise = rng.randn(self.mean.dims(), self.mean.device())?;
        self.sample_with_noise(&noise.to_dtype(self.mean.dtype())?)
    }

    /// `mean + std · noise` for a given standard-normal `noise` of the mean's shape.
    pub fn sample_with_noise(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            return Err(crate::Error::invalid(
                "VAE sample noise",
                format!(
                    "noise has shape {:?}, the posterior {:?}",
                    noise.dims(),
                    self.mean.dims()
                ),
            ));
        }
        Ok((&self.mean + (self.std()? * noise)?)?)
    }
}
