//! Training and evaluating the small built-in shapes model: the captioned shapes data set,
//! its pixel-based evaluator and the from-scratch trainer behind `sd train` / `sd eval`. The
//! engine itself lives in the `stable-diffusion` crate; this crate only uses its public API.

pub mod shapes;
pub mod train;
