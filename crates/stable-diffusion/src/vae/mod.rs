//! AutoencoderKL: the VAE encoder (image → latents) and decoder (latents → image).
