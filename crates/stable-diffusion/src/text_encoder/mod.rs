//! CLIP and OpenCLIP text transformers: hidden-state selection, clip skip, pooled output.
