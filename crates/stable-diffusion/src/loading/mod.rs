//! Weight and config loading: safetensors (mmap), diffusers folders, dtype conversion.

mod recorder;

pub use recorder::record_shapes;
