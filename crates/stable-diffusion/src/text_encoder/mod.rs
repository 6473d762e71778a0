//! CLIP and OpenCLIP text transformers: hidden-state selection, clip skip, pooled output.
//!
//! One [`ClipTextModel`] serves every SD text encoder: OpenAI CLIP ViT-L/14 (SD 1.x, SDXL's
//! first), OpenCLIP ViT-H/14 (SD 2.x) and OpenCLIP ViT-bigG/14 with its projection (SDXL's
//! second), configured by [`ClipTextConfig`]. [`HiddenLayer`] picks the per-token output the
//! pipeline conditions on (last layer, clip skip, SDXL's penultimate layer).

mod config;
mod model;

pub use config::ClipTextConfig;
pub use model::{ClipTextModel, ClipTextOutput, HiddenLayer};
