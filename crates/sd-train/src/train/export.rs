//! Writing trained weights as a diffusers `StableDiffusionPipeline` folder (weights in f16).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use super::ModelConfig;
use stable_diffusion::unet::PerBlock;
use stable_diffusion::{Error, Result};

fn per_block<T: serde::Serialize + Clone>(value: &PerBlock<T>) -> Value {
    match value {
        PerBlock::Uniform(v) => json!(v),
        PerBlock::List(items) => json!(items),
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid("model export", e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

fn write_weights(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let half: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::F16)?)))
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&half, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

/// The scheduler config written with the model: SD's PNDM settings (scaled-linear betas
/// 0.00085…0.012 over 1000 steps, epsilon prediction).
pub fn scheduler_config_json() -> Value {
    json!({
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.42.1",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": null
    })
}

/// Writes `dir` as a diffusers folder: `model_index.json`, `scheduler/`, `text_encoder/`
/// (transformers 5.x key names), `unet/` and `vae/` (with `scaling_factor`). Weight maps use
/// the components' own names (no `text_encoder.` / `unet.` / `vae.` prefix). The tokenizer is
/// left out: the loader falls back to the embedded CLIP vocabulary.
pub fn export_model(
    dir: &Path,
    config: &ModelConfig,
    scaling_factor: f64,
    text_encoder: &HashMap<String, Tensor>,
    unet: &HashMap<String, Tensor>,
    vae: &HashMap<String, Tensor>,
) -> Result<()> {
    for sub in ["scheduler", "text_encoder", "unet", "vae"] {
        create_dir(&dir.join(sub))?;
    }
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": [null, null],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]
        }),
    )?;
    write_json(
        &dir.join("scheduler").join("scheduler_config.json"),
        &scheduler_config_json(),
    )?;

    let t = &config.text;
    write_json(
        &dir.join("text_encoder").join("config.json"),
        &json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "attention_dropout": 0.0,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
            "pad_token_id": t.pad_token_id,
            "hidden_act": "quick_gelu",
            "hidden_size": t.hidden_size,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": t.intermediate_size,
            "layer_norm_eps": t.layer_norm_eps,
            "max_position_embeddings": t.max_position_embeddings,
            "num_attention_heads": t.num_attention_heads,
            "num_hidden_layers": t.num_hidden_layers,
            "projection_dim": t.projection_dim,
            "torch_dtype": "float16",
            "vocab_size": t.vocab_size
        }),
    )?;
    write_weights(
        &dir.join("text_encoder").join("model.safetensors"),
        text_encoder,
    )?;

    let u = &config.unet;
    write_json(
        &dir.join("unet").join("config.json"),
        &json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.42.1",
            "act_fn": "silu",
            "attention_head_dim": per_block(&u.attention_head_dim),
            "block_out_channels": u.block_out_channels,
            "center_input_sample": false,
            "cross_attention_dim": per_block(&u.cross_attention_dim),
            "down_block_types": u.down_block_types,
            "downsample_padding": u.downsample_padding,
            "flip_sin_to_cos": u.flip_sin_to_cos,
            "freq_shift": u.freq_shift,
            "in_channels": u.in_channels,
            "layers_per_block": per_block(&u.layers_per_block),
            "mid_block_scale_factor": u.mid_block_scale_factor,
            "mid_block_type": u.mid_block_type,
            "norm_eps": u.norm_eps,
            "norm_num_groups": u.norm_num_groups,
            "out_channels": u.out_channels,
            "sample_size": u.sample_size.as_ref().map(per_block),
            "up_block_types": u.up_block_types,
            "use_linear_projection": u.use_linear_projection
        }),
    )?;
    write_weights(
        &dir.join("unet").join("diffusion_pytorch_model.safetensors"),
        unet,
    )?;

    let v = &config.vae;
    write_json(
        &dir.join("vae").join("config.json"),
        &json!({
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.42.1",
            "act_fn": "silu",
            "block_out_channels": v.block_out_channels,
            "down_block_types": v.down_block_types,
            "force_upcast": true,
            "in_channels": v.in_channels,
            "latent_channels": v.latent_channels,
            "layers_per_block": v.layers_per_block,
            "norm_num_groups": v.norm_num_groups,
            "out_channels": v.out_channels,
            "sample_size": crate::shapes::IMAGE_SIZE,
            "scaling_factor": scaling_factor,
            "up_block_types": v.up_block_types
        }),
    )?;
    write_weights(
        &dir.join("vae").join("diffusion_pytorch_model.safetensors"),
        vae,
    )
}
