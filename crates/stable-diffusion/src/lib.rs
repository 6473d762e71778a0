//! stable-diffusion: a Stable Diffusion engine in Rust.
//!
//! The data flows one way: prompt → [`tokenizer`] → [`text_encoder`] → conditioning;
//! [`rng`] → initial latents → denoising loop ([`unet`] + [`scheduler`]) → [`vae`] decoder →
//! [`image`]. The [`pipeline`] module ties them together; [`loading`] turns files on disk into
//! weights and configs.

mod default_model;
pub mod device;
pub mod error;
pub mod image;
pub mod limits;
pub mod loading;
pub mod model_family;
mod names;
pub mod nn;
pub mod pipeline;
pub mod prompt;
pub mod rng;
pub mod scheduler;
pub mod text_encoder;
pub mod tokenizer;
pub mod unet;
pub mod vae;

pub use default_model::{default_model_path, DEFAULT_MODEL_ENV};
pub use error::{Error, Result};

/// Re-export of the tensor library, so users need not depend on it directly.
pub use candle_core;
pub use candle_nn;
