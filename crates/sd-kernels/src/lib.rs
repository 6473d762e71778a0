//! CPU kernels for stable-diffusion-rs: plain Rust on slices, no tensor library.
//!
//! - [`cpu`]: which instruction-set level runs (detected once, `SD_CPU_KERNELS` forces one);
//! - [`gemm`]: blocked GEMM with B packed once (weights) and A packed as the product runs;
//! - [`conv`]: 2-D convolution as implicit GEMM (patches packed on the fly, no im2col matrix);
//! - [`convert`]: bf16 <-> f32 conversion of whole buffers, in parallel;
//! - [`math`]: vectorized `exp` and activations (SiLU, GELU erf/tanh, quick GELU) in place;
//! - [`norm`]: GroupNorm (fused with SiLU), LayerNorm and GEGLU, one pass over the output.
//! - [`workspace`]: a global allocator that reuses large freed blocks (no page faults in a
//!   steady-state step).
//!
//! Every level is tested against the generic one on odd shapes; results never depend on the
//! thread count.

pub mod attention;
pub mod conv;
pub mod convert;
pub mod cpu;
pub mod gemm;
pub mod math;
pub mod norm;
pub mod workspace;

pub use cpu::Level;

#[cfg(test)]
mod testutil;
