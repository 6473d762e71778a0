//! The generation pipeline: txt2img and img2img as one loop with classifier-free guidance.
