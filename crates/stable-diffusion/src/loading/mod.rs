//! Weight and config loading: safetensors (mmap), diffusers folders, dtype conversion.
