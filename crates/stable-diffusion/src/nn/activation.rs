use std::str::FromStr;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{kernels, Linear};
use crate::{Error, Result};

/// The activation functions that Stable Diffusion's models use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x Φ(x)` with the error function (torch's default).
    Gelu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// `x σ(1.702 x)`, OpenAI CLIP's activation.
    QuickGelu,
    /// `x σ(x)`, also called swish.
    Silu,
    /// `max(x, 0)` (TAESD's activation).
    Relu,
}

impl Activation {
    /// Every name [`Activation::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &[
        "gelu",
        "gelu_pytorch_tanh",
        "gelu_new",
        "quick_gelu",
        "silu",
        "swish",
        "relu",
    ];

    /// Applies the activation elementwise.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        if kernels::runs(x) {
            return kernels::map_copy(x, |values| match self {
                Activation::Gelu => sd_kernels::math::gelu_erf(values),
                Activation::GeluTanh => sd_kernels::math::gelu_tanh(values),
                Activation::QuickGelu => sd_kernels::math::quick_gelu(values),
                Activation::Silu => sd_kernels::math::silu(values),
                // NaN stays NaN, as torch's relu leaves it.
                Activation::Relu => values.iter_mut().for_each(|v| {
                    if *v < 0.0 {
                        *v = 0.0
                    }
                }),
            });
        }
        Ok(match self {
            Activation::Gelu => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
            Activation::Silu => candle_nn::ops::silu(x)?,
            Activation::Relu => x.relu()?,
        })
    }
}

impl FromStr for Activation {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
            "quick_gelu" => Ok(Activation::QuickGelu),
            "silu" | "swish" => Ok(Activation::Silu),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::Unsupported {
                what: "activation function",
                value: other.to_string(),
                valid: Activation::NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Activation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The gated GELU feed-forward input projection: `a · gelu(b)` where `[a, b] = proj(x)`.
#[derive(Debug, Clone)]
pub struct GeGlu {
    proj: Linear,
    /// Whether `proj`'s columns are interleaved for the fused kernel (values and gates of a
    /// group side by side, so the product's sink applies the gate and the projection is
    /// never written out).
    fused: bool,
}

impl GeGlu {
    /// Loads `proj` (`dim` → `2 · inner_dim`) under `vb`.
    pub fn new(vb: VarBuilder, dim: usize, inner_dim: usize) -> Result<Self> {
        let vb = vb.pp("proj");
        let weight = vb.get((inner_dim * 2, dim), "weight")?;
        let bias = vb.get(inner_dim * 2, "bias")?;
        if kernels::packs(&weight) && inner_dim.is_multiple_of(sd_kernels::gemm::GEGLU_GROUP) {
            let order: Vec<u32> = sd_kernels::gemm::geglu_interleave(inner_dim)
                .into_iter()
                .map(|c| c as u32)
                .collect();
            let order = Tensor::new(order.as_slice(), weight.device())?;
            let proj = Linear::from_tensors(
                weight.index_select(&order, 0)?,
                Some(bias.index_select(&order, 0)?),
                dim,
                inner_dim * 2,
            )?;
            if proj.packed() {
                return Ok(Self { proj, fused: true });
            }
        }
        Ok(Self {
            proj: Linear::from_tensors(weight, Some(bias), dim, inner_dim * 2)?,
            fused: false,
        })
    }

    /// `(..., dim)` → `(..., inner_dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused {
            // A packed layer always runs on the kernels.
            return self.proj.forward_geglu(x);
        }
        let projected = self.proj.forward(x)?;
        if kernels::runs(&projected) {
            let inner = projected.dim(candle_core::D::Minus1)? / 2;
            let rows = projected.elem_count() / (2 * inner).max(1);
            let mut shape = projected.dims().to_vec();
            if let Some(last) = shape.last_mut() {
                *last = inner;
            }
            return kernels::fill(&projected, shape, |out| {
                kernels::with_f32(&projected, |p| sd_kernels::norm::geglu(p, rows, inner, out))
            });
        }
        let last = projected.rank() - 1;
        let chunks = projected.chunk(2, last)?;
        Ok((&chunks[0] * chunks[1].gelu_erf()?)?)
    }
}
