//! Shared building blocks. Model code calls these, never candle's raw ops for the heavy work,
//! so faster kernels can replace the first versions without touching the models.

mod activation;
pub(crate) mod attention;
mod conv;
pub mod flops;
pub mod kernels;
mod linear;
mod norm;
mod training;

pub use activation::{Activation, GeGlu};
pub use attention::{attention, attention_tokens, attention_tokens_in, causal_mask};
pub use conv::{Conv2d, Conv2dOptions};
pub use linear::Linear;
pub use norm::{GroupNorm, LayerNorm};
pub use training::{differentiable, set_differentiable};

pub use candle_nn::VarBuilder;
