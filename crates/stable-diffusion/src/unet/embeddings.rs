//! Timestep embeddings: the sinusoidal projection and the two-layer MLP after it.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Activation, Linear};
use crate::Result;

/// diffusers' `Timesteps`: a sinusoidal embedding of scalar values, without weights.
#[derive(Debug, Clone, Copy)]
pub struct Timesteps {
    channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
}

impl Timesteps {
    /// An embedding of width `channels`; `flip_sin_to_cos` puts the cosines first.
    pub fn new(channels: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Self {
        Self {
            channels,
            flip_sin_to_cos,
            freq_shift,
        }
    }

    /// Embeds each value: `(n)` → `(n, channels)` in f32.
    ///
    /// Follows the reference's float32 arithmetic step by step (the value is rounded to f32,
    /// the frequencies are computed in f32), so fractional timesteps embed identically.
    pub fn forward(&self, values: &[f64], device: &Device) -> Result<Tensor> {
        let half = self.channels / 2;
        let log_period = -(10000f64.ln()) as f32;
        let denominator = (half as f64 - self.freq_shift) as f32;
        let frequencies: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (log_period * i as f32) / denominator;
                (exponent as f64).exp() as f32
            })
            .collect();
        let mut data = Vec::with_capacity(values.len() * self.channels);
        for &value in values {
            let value = value as f32;
            let args: Vec<f32> = frequencies.iter().map(|f| value * f).collect();
            let sin = args.iter().map(|a| (*a as f64).sin() as f32);
            let cos = args.iter().map(|a| (*a as f64).cos() as f32);
            if self.flip_sin_to_cos {
                data.extend(cos);
                data.extend(sin);
            } else {
                data.extend(sin);
                data.extend(cos);
            }
            // An odd width is zero-padded.
            data.extend(std::iter::repeat_n(0f32, self.channels - 2 * half));
        }
        Ok(Tensor::from_vec(
            data,
            (values.len(), self.channels),
            device,
        )?)
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(act(linear_1(x)))`, optionally followed by `post_act`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
    post_act: Option<Activation>,
}

impl TimestepEmbedding {
    /// Loads `linear_1` (`in_dim` → `out_dim`) and `linear_2` (`out_dim` → `out_dim`) under `vb`.
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        act: Activation,
        post_act: Option<Activation>,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(vb.pp("linear_1"), in_dim, out_dim, true)?,
            linear_2: Linear::new(vb.pp("linear_2"), out_dim, out_dim, true)?,
            act,
            post_act,
        })
    }

    /// `(batch, in_dim)` → `(batch, out_dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.act.forward(&self.linear_1.forward(x)?)?;
        let x = self.linear_2.forward(&x)?;
        match self.post_act {
            Some(act) => act.forward(&x),
            None => Ok(x),
        }
    }
}
