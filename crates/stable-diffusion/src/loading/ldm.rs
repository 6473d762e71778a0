//! The original (CompVis / LDM / AUTOMATIC1111 / sgm) single-file key layout, mapped into
//! diffusers' names.
//!
//! Each function takes the diffusers name a model asks for (without the component prefix)
//! and returns where that tensor lives in an LDM checkpoint (also without the component
//! prefix), possibly as a slice, reshape or transpose of a stored tensor. The layout facts were
//! read from diffusers' own converters (`convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`)
//! and are checked against full-size name/shape manifests in `tests/single_file.rs`.

use super::keys::{KeyMap, Source};
use crate::model_family::ModelFamily;

/// Where the UNet lives in an LDM checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Where the VAE lives in an LDM checkpoint (`vae.` in a few community files).
pub const VAE_PREFIXES: &[&str] = &["first_stage_model.", "vae."];

/// Where a standalone VAE file keeps its LDM-named tensors: bare (`encoder.down.0…`, as in
/// `vae-ft-mse-840000-ema-pruned`), or under a full checkpoint's VAE prefix.
pub const VAE_FILE_PREFIXES: &[&str] = &["", "first_stage_model.", "vae."];

/// Where each family keeps its text encoders in an LDM file: (family, diffusers component,
/// prefix, whether the layout is OpenCLIP's (fused `in_proj`, `resblocks`) rather than
/// transformers' CLIP). Each prefix belongs to one family, so finding one names the family.
pub const TEXT_ENCODER_PREFIXES: [(ModelFamily, &str, &str, bool); 5] = [
    (
        ModelFamily::Sd1,
        "text_encoder",
        "cond_stage_model.transformer.",
        false,
    ),
    (
        ModelFamily::Sd2,
        "text_encoder",
        "cond_stage_model.model.",
        true,
    ),
    (
        ModelFamily::Sdxl,
        "text_encoder",
        "conditioner.embedders.0.transformer.",
        false,
    ),
    (
        ModelFamily::Sdxl,
        "text_encoder_2",
        "conditioner.embedders.1.model.",
        true,
    ),
    (
        ModelFamily::SdxlRefiner,
        "text_encoder_2",
        "conditioner.embedders.0.model.",
        true,
    ),
];

/// Splits `a.b.rest` into (`a`, `b.rest`).
fn head(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
}

/// Splits `N.rest` into (N, `rest`).
fn index(name: &str) -> Option<(usize, &str)> {
    let (n, rest) = head(name)?;
    Some((n.parse().ok()?, rest))
}

/// A diffusers ResNet block's parameter (`norm1.weight`) in LDM's UNet naming
/// (`in_layers.0.weight`).
fn unet_resnet_param(rest: &str) -> Option<String> {
    let (layer, param) = head(rest)?;
    let ldm = match layer {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{ldm}.{param}"))
}

/// A transformer (spatial attention) parameter: same names in both layouts. `proj_in` and
/// `proj_out` are linear in SD 2.x / SDXL and 1x1 convolutions in SD 1.x; allow either.
fn unet_attention_source(ldm_block: String, rest: &str) -> Source {
    let source = Source::new(format!("{ldm_block}.{rest}"));
    if rest == "proj_in.weight" || rest == "proj_out.weight" {
        source.reshaped()
    } else {
        source
    }
}

/// Where the diffusers UNet tensor `name` is in an LDM UNet (`model.diffusion_model.`
/// stripped). `layers_per_block` is LDM's `num_res_blocks` (2 for every SD model).
pub fn unet_sources(name: &str, layers_per_block: usize) -> Vec<Source> {
    let per_block = layers_per_block + 1;
    let (top, rest) = match head(name) {
        Some(split) => split,
        None => return Vec::new(),
    };
    let one = |s: String| vec![Source::new(s)];
    match top {
        "time_embedding" | "add_embedding" => {
            let ldm = if top == "time_embedding" {
                "time_embed"
            } else {
                "label_emb.0"
            };
            match head(rest) {
                Some(("linear_1", param)) => one(format!("{ldm}.0.{param}")),
                Some(("linear_2", param)) => one(format!("{ldm}.2.{param}")),
                _ => Vec::new(),
            }
        }
        "conv_in" => one(format!("input_blocks.0.0.{rest}")),
        "conv_norm_out" => one(format!("out.0.{rest}")),
        "conv_out" => one(format!("out.2.{rest}")),
        "down_blocks" => {
            let Some((block, rest)) = index(rest) else {
                return Vec::new();
            };
            match head(rest) {
                Some(("resnets", rest)) => {
                    let Some((layer, param)) = index(rest) else {
                        return Vec::new();
                    };
                    let i = 1 + block * per_block + layer;
                    unet_resnet_param(param)
                        .map(|p| one(format!("input_blocks.{i}.0.{p}")))
                        .unwrap_or_default()
                }
                Some(("attentions", rest)) => {
                    let Some((layer, param)) = index(rest) else {
                        return Vec::new();
                    };
                    let i = 1 + block * per_block + layer;
                    vec![unet_attention_source(format!("input_blocks.{i}.1"), param)]
                }
                Some(("downsamplers", rest)) => match rest.strip_prefix("0.conv.") {
                    Some(param) => {
                        let i = 1 + block * per_block + layers_per_block;
                        one(format!("input_blocks.{i}.0.op.{param}"))
                    }
                    None => Vec::new(),
                },
                _ => Vec::new(),
            }
        }
        "mid_block" => match head(rest) {
            Some(("resnets", rest)) => {
                let Some((layer, param)) = index(rest) else {
                    return Vec::new();
                };
                unet_resnet_param(param)
                    .map(|p| one(format!("middle_block.{}.{p}", 2 * layer)))
                    .unwrap_or_default()
            }
            Some(("attentions", rest)) => match index(rest) {
                Some((0, param)) => vec![unet_attention_source("middle_block.1".into(), param)],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        "up_blocks" => {
            let Some((block, rest)) = index(rest) else {
                return Vec::new();
            };
            match head(rest) {
                Some(("resnets", rest)) => {
                    let Some((layer, param)) = index(rest) else {
                        return Vec::new();
                    };
                    let i = block * per_block + layer;
                    unet_resnet_param(param)
                        .map(|p| one(format!("output_blocks.{i}.0.{p}")))
                        .unwrap_or_default()
                }
                Some(("attentions", rest)) => {
                    let Some((layer, param)) = index(rest) else {
                        return Vec::new();
                    };
                    let i = block * per_block + layer;
                    vec![unet_attention_source(format!("output_blocks.{i}.1"), param)]
                }
                // The upsampler follows the block's last resnet: at `.1` without attention,
                // at `.2` after an attention.
                Some(("upsamplers", rest)) => match rest.strip_prefix("0.conv.") {
                    Some(param) => {
                        let i = block * per_block + layers_per_block;
                        vec![
                            Source::new(format!("output_blocks.{i}.1.conv.{param}")),
                            Source::new(format!("output_blocks.{i}.2.conv.{param}")),
                        ]
                    }
                    None => Vec::new(),
                },
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// A diffusers VAE ResNet parameter in LDM naming (only the shortcut is renamed).
fn vae_resnet_param(rest: &str) -> String {
    match rest.strip_prefix("conv_shortcut.") {
        Some(param) => format!("nin_shortcut.{param}"),
        None => rest.to_string(),
    }
}

/// A VAE mid-block attention parameter: diffusers' linear layers are LDM's 1x1 convolutions.
fn vae_attention_source(coder: &str, rest: &str) -> Vec<Source> {
    let Some((layer, param)) = head(rest) else {
        return Vec::new();
    };
    let (ldm, param) = match (layer, param) {
        ("group_norm", p) => ("norm", p),
        ("to_q", p) => ("q", p),
        ("to_k", p) => ("k", p),
        ("to_v", p) => ("v", p),
        ("to_out", p) => match p.strip_prefix("0.") {
            Some(p) => ("proj_out", p),
            None => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    vec![Source::new(format!("{coder}.mid.attn_1.{ldm}.{param}")).reshaped()]
}

/// Where the diffusers VAE tensor `name` is in an LDM VAE (`first_stage_model.` stripped).
/// `num_blocks` is the number of up/down blocks (4 for every SD VAE): LDM counts the
/// decoder's blocks from the bottom, diffusers from the top.
pub fn vae_sources(name: &str, num_blocks: usize) -> Vec<Source> {
    let one = |s: String| vec![Source::new(s)];
    let Some((top, rest)) = head(name) else {
        return Vec::new();
    };
    if top == "quant_conv" || top == "post_quant_conv" {
        return one(name.to_string());
    }
    if top != "encoder" && top != "decoder" {
        return Vec::new();
    }
    let coder = top;
    let Some((part, rest)) = head(rest) else {
        return Vec::new();
    };
    match part {
        "conv_in" | "conv_out" => one(format!("{coder}.{part}.{rest}")),
        "conv_norm_out" => one(format!("{coder}.norm_out.{rest}")),
        "mid_block" => match head(rest) {
            Some(("resnets", rest)) => match index(rest) {
                Some((k, param)) => one(format!(
                    "{coder}.mid.block_{}.{}",
                    k + 1,
                    vae_resnet_param(param)
                )),
                None => Vec::new(),
            },
            Some(("attentions", rest)) => match index(rest) {
                Some((0, param)) => vae_attention_source(coder, param),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        "down_blocks" if coder == "encoder" => {
            let Some((block, rest)) = index(rest) else {
                return Vec::new();
            };
            match head(rest) {
                Some(("resnets", rest)) => match index(rest) {
                    Some((j, param)) => one(format!(
                        "encoder.down.{block}.block.{j}.{}",
                        vae_resnet_param(param)
                    )),
                    None => Vec::new(),
                },
                Some(("downsamplers", rest)) => match rest.strip_prefix("0.conv.") {
                    Some(param) => one(format!("encoder.down.{block}.downsample.conv.{param}")),
                    None => Vec::new(),
                },
                _ => Vec::new(),
            }
        }
        "up_blocks" if coder == "decoder" => {
            let Some((block, rest)) = index(rest) else {
                return Vec::new();
            };
            let Some(ldm_block) = num_blocks.checked_sub(block + 1) else {
                return Vec::new();
            };
            match head(rest) {
                Some(("resnets", rest)) => match index(rest) {
                    Some((j, param)) => one(format!(
                        "decoder.up.{ldm_block}.block.{j}.{}",
                        vae_resnet_param(param)
                    )),
                    None => Vec::new(),
                },
                Some(("upsamplers", rest)) => match rest.strip_prefix("0.conv.") {
                    Some(param) => one(format!("decoder.up.{ldm_block}.upsample.conv.{param}")),
                    None => Vec::new(),
                },
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// Where a transformers CLIP text-encoder tensor is in an LDM file holding OpenAI CLIP under
/// a `transformer.` wrapper (SD 1.x's `cond_stage_model.transformer.`, SDXL's
/// `conditioner.embedders.0.transformer.`): the same names, with or without `text_model.`.
/// `name` may itself start with `text_model.`.
pub fn clip_sources(name: &str) -> Vec<Source> {
    let rest = name.strip_prefix("text_model.").unwrap_or(name);
    vec![
        Source::new(format!("text_model.{rest}")),
        Source::new(rest.to_string()),
    ]
}

/// Where a transformers CLIP text-encoder tensor is in an OpenCLIP text tower (SD 2.x's
/// `cond_stage_model.model.`, SDXL's `conditioner.embedders.N.model.`). `hidden` is the
/// width, which splits the fused `in_proj` into q, k and v rows.
pub fn open_clip_sources(name: &str, hidden: usize) -> Vec<Source> {
    let rest = name.strip_prefix("text_model.").unwrap_or(name);
    let one = |s: &str| vec![Source::new(s)];
    match rest {
        "embeddings.token_embedding.weight" => return one("token_embedding.weight"),
        "embeddings.position_embedding.weight" => return one("positional_embedding"),
        "final_layer_norm.weight" => return one("ln_final.weight"),
        "final_layer_norm.bias" => return one("ln_final.bias"),
        "text_projection.weight" => return vec![Source::new("text_projection").transposed()],
        _ => {}
    }
    let Some(rest) = rest.strip_prefix("encoder.layers.") else {
        return Vec::new();
    };
    let Some((layer, rest)) = index(rest) else {
        return Vec::new();
    };
    let block = format!("transformer.resblocks.{layer}");
    let Some((module, param)) = rest.rsplit_once('.') else {
        return Vec::new();
    };
    let fused = |part: usize| {
        vec![Source::new(format!("{block}.attn.in_proj_{param}"))
            .rows(part * hidden..(part + 1) * hidden)]
    };
    match module {
        "self_attn.q_proj" => fused(0),
        "self_attn.k_proj" => fused(1),
        "self_attn.v_proj" => fused(2),
        "self_attn.out_proj" => one(&format!("{block}.attn.out_proj.{param}")),
        "layer_norm1" => one(&format!("{block}.ln_1.{param}")),
        "layer_norm2" => one(&format!("{block}.ln_2.{param}")),
        "mlp.fc1" => one(&format!("{block}.mlp.c_fc.{param}")),
        "mlp.fc2" => one(&format!("{block}.mlp.c_proj.{param}")),
        _ => Vec::new(),
    }
}

/// A key map that looks a requested name up under `prefixes` (in order) through `sources`.
pub fn prefixed_map(
    prefixes: Vec<String>,
    sources: impl Fn(&str) -> Vec<Source> + Send + Sync + 'static,
) -> KeyMap {
    KeyMap::from_sources_fn(move |name| {
        let found = sources(name);
        prefixes
            .iter()
            .flat_map(|prefix| {
                found.iter().map(move |source| Source {
                    name: format!("{prefix}{}", source.name),
                    ..source.clone()
                })
            })
            .collect()
    })
}

/// Why a stored tensor that no model reads is expected in an LDM checkpoint, if it is one of
/// the extras real checkpoints carry.
pub fn known_unused_reason(name: &str) -> Option<&'static str> {
    const SCHEDULE_BUFFERS: &[&str] = &[
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
    ];
    if SCHEDULE_BUFFERS.contains(&name) || name.starts_with("denoiser.") {
        return Some("training noise-schedule buffer (the scheduler recomputes it)");
    }
    if name.starts_with("model_ema.") {
        return Some("EMA copy or EMA bookkeeping (the file's main weights are used)");
    }
    if name.ends_with("embeddings.position_ids") {
        return Some("position-id buffer (positions are 0..77)");
    }
    if name.ends_with(".logit_scale") {
        return Some("OpenCLIP image-text logit scale (not used for text conditioning)");
    }
    if name == "cond_stage_model.model.text_projection" {
        return Some("SD 2.x OpenCLIP text projection (SD 2.x conditions on hidden states)");
    }
    if name.starts_with("cond_stage_model.model.transformer.resblocks.23.") {
        return Some("SD 2.x OpenCLIP's last layer (SD 2.x conditions on the penultimate layer; diffusers drops it)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sources: Vec<Source>) -> Vec<String> {
        sources.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn unet_blocks_map_to_input_middle_and_output_blocks() {
        let map = |n| names(unet_sources(n, 2));
        assert_eq!(map("conv_in.weight"), ["input_blocks.0.0.weight"]);
        assert_eq!(
            map("down_blocks.1.resnets.0.conv1.weight"),
            ["input_blocks.4.0.in_layers.2.weight"]
        );
        assert_eq!(
            map("down_blocks.0.downsamplers.0.conv.bias"),
            ["input_blocks.3.0.op.bias"]
        );
        assert_eq!(
            map("down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"),
            ["input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight"]
        );
        assert_eq!(
            map("mid_block.resnets.1.time_emb_proj.bias"),
            ["middle_block.2.emb_layers.1.bias"]
        );
        assert_eq!(
            map("up_blocks.3.resnets.2.conv_shortcut.weight"),
            ["output_blocks.11.0.skip_connection.weight"]
        );
        assert_eq!(
            map("up_blocks.1.upsamplers.0.conv.weight"),
            [
                "output_blocks.5.1.conv.weight",
                "output_blocks.5.2.conv.weight"
            ]
        );
        assert_eq!(map("add_embedding.linear_2.bias"), ["label_emb.0.2.bias"]);
        assert!(map("nonsense.weight").is_empty());
    }

    #[test]
    fn vae_decoder_blocks_count_from_the_bottom() {
        let map = |n| names(vae_sources(n, 4));
        assert_eq!(
            map("decoder.up_blocks.0.resnets.2.norm1.weight"),
            ["decoder.up.3.block.2.norm1.weight"]
        );
        assert_eq!(
            map("decoder.up_blocks.2.upsamplers.0.conv.bias"),
            ["decoder.up.1.upsample.conv.bias"]
        );
        assert_eq!(
            map("encoder.mid_block.attentions.0.to_out.0.weight"),
            ["encoder.mid.attn_1.proj_out.weight"]
        );
        assert_eq!(
            map("encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
            ["encoder.down.1.block.0.nin_shortcut.weight"]
        );
        assert!(map("decoder.up_blocks.4.resnets.0.norm1.weight").is_empty());
    }

    #[test]
    fn open_clip_splits_in_proj_and_transposes_the_projection() {
        let q = open_clip_sources("text_model.encoder.layers.3.self_attn.k_proj.bias", 8);
        assert_eq!(q[0].name, "transformer.resblocks.3.attn.in_proj_bias");
        assert_eq!(q[0].rows, Some(8..16));
        let p = open_clip_sources("text_projection.weight", 8);
        assert!(p[0].transpose);
        assert_eq!(
            names(open_clip_sources("embeddings.position_embedding.weight", 8)),
            ["positional_embedding"]
        );
    }
}
