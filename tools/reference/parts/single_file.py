"""Single-file (LDM / CompVis / AUTOMATIC1111 / sgm layout) checkpoints.

The LDM key layout is produced here by inverting diffusers' own single-file converters, and
every file or manifest written is checked by running diffusers 0.42.1's converters
(`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
`convert_open_clip_checkpoint`) on it: they must give back exactly the diffusers model's state
dict (names and shapes; for the tiny files, the values too).

Writes:
- fixtures/manifests/ldm_{sd15,sd21_v,sdxl_base,sdxl_refiner,sd15_inpaint}.json: name -> shape
  of the full-size single files, with the extra tensors real files carry (DDPM schedule
  buffers, EMA bookkeeping, position ids, OpenCLIP's logit scale, SD 2.x's 24th text layer
  and text projection). No weights are needed: models are built on the meta device.
- fixtures/single_file/tiny_sd15.safetensors: fixtures/models/tiny-sd15 as one LDM file (f16).
- fixtures/single_file/tiny_sd15_unet_vae.ckpt: its VAE and UNet time embedding as a torch.save'd
  {"state_dict": ..., "global_step": ...} (one tensor saved as a non-contiguous view).
- fixtures/single_file/tiny_sdxl.safetensors: a tiny SDXL UNet and its two tiny text encoders
  (CLIP under conditioner.embedders.0.transformer, OpenCLIP with projection under
  conditioner.embedders.1.model) in LDM layout, and tiny_sdxl_reference.safetensors: what
  diffusers' converters make of it, under `unet.`, `text_encoder.`, `text_encoder_2.`.
- fixtures/single_file/tiny_sd2_text.safetensors: a tiny OpenCLIP text tower as SD 2.x stores
  it (cond_stage_model.model, one more layer than the model uses, a text projection), and
  tiny_sd2_text_reference.safetensors: diffusers' conversion, under `text_encoder.`.
- fixtures/single_file/mixed_dtypes.ckpt: an unwrapped state dict of every storage kind, and
  mixed_dtypes_legacy.ckpt: the same in the legacy (torch < 1.6) format.
- fixtures/single_file/malicious_{os_system,eval}.ckpt: archives whose pickle asks to call
  os.system / builtins.eval, and bad_view.ckpt: a tensor view reaching past its storage.
"""

import collections
import io
import json
import os
import pickle
import zipfile

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import common
from parts.unet import FULL_SD15, FULL_SD21_V, FULL_SDXL_BASE, FULL_SDXL_REFINER
from parts.vae import FULL_VAE

# The DDPM buffers every CompVis (SD 1.x / 2.x) checkpoint carries (LatentDiffusion's
# register_schedule, persistent ones only).
DDPM_BUFFERS = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
]

# An SDXL-layout UNet smaller than the UNet part's (no attention at the top level, a deeper
# transformer below, the text_time added embedding), to keep the fixture small.
SMALL_SDXL = dict(
    sample_size=8,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[8, 16],
    layers_per_block=1,
    transformer_layers_per_block=[1, 2],
    norm_num_groups=4,
    cross_attention_dim=2 * common.TINY_TEXT_HIDDEN,
    attention_head_dim=[2, 4],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=common.TINY_TEXT_HIDDEN + 6 * 8,
)
# Tiny text encoders for the key-layout tests: a 100-token vocabulary keeps them small.
SMALL_VOCAB = 100

VIT_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
             num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768)
VIT_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
             num_attention_heads=16, hidden_act="gelu", projection_dim=1024)
VIT_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                num_attention_heads=20, hidden_act="gelu", projection_dim=1280)


# ---------------------------------------------------------------------------------------------
# diffusers -> LDM names (the inverse of diffusers' converters)
# ---------------------------------------------------------------------------------------------

RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_to_ldm(state: dict, lpb: int) -> dict:
    """A diffusers UNet state dict in LDM names (`model.diffusion_model.` not added)."""
    per = lpb + 1
    up_has_attention = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    out = {}
    for k, v in state.items():
        p = k.split(".")
        if p[0] in ("time_embedding", "add_embedding"):
            base = "time_embed" if p[0] == "time_embedding" else "label_emb.0"
            idx = {"linear_1": 0, "linear_2": 2}[p[1]]
            new = f"{base}.{idx}.{p[2]}"
        elif p[0] == "conv_in":
            new = f"input_blocks.0.0.{p[1]}"
        elif p[0] == "conv_norm_out":
            new = f"out.0.{p[1]}"
        elif p[0] == "conv_out":
            new = f"out.2.{p[1]}"
        elif p[0] == "down_blocks":
            b = int(p[1])
            if p[2] == "resnets":
                i = 1 + b * per + int(p[3])
                new = f"input_blocks.{i}.0.{RESNET_TO_LDM[p[4]]}.{p[5]}"
            elif p[2] == "attentions":
                i = 1 + b * per + int(p[3])
                new = f"input_blocks.{i}.1." + ".".join(p[4:])
            else:  # downsamplers.0.conv.X
                i = 1 + b * per + lpb
                new = f"input_blocks.{i}.0.op.{p[5]}"
        elif p[0] == "mid_block":
            if p[1] == "resnets":
                new = f"middle_block.{2 * int(p[2])}.{RESNET_TO_LDM[p[3]]}.{p[4]}"
            else:
                new = "middle_block.1." + ".".join(p[3:])
        elif p[0] == "up_blocks":
            b = int(p[1])
            if p[2] == "resnets":
                i = b * per + int(p[3])
                new = f"output_blocks.{i}.0.{RESNET_TO_LDM[p[4]]}.{p[5]}"
            elif p[2] == "attentions":
                i = b * per + int(p[3])
                new = f"output_blocks.{i}.1." + ".".join(p[4:])
            else:  # upsamplers.0.conv.X
                i = b * per + lpb
                slot = 2 if b in up_has_attention else 1
                new = f"output_blocks.{i}.{slot}.conv.{p[5]}"
        else:
            raise ValueError(f"unmapped UNet key {k}")
        out[new] = v
    return out


def vae_to_ldm(state: dict, blocks: int) -> dict:
    """A diffusers VAE state dict in LDM names; attention linears become 1x1 convolutions."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    for k, v in state.items():
        p = k.split(".")
        if p[0] in ("quant_conv", "post_quant_conv"):
            new = k
        else:
            coder, part = p[0], p[1]
            if part in ("conv_in", "conv_out"):
                new = k
            elif part == "conv_norm_out":
                new = f"{coder}.norm_out.{p[2]}"
            elif part == "mid_block" and p[2] == "resnets":
                new = f"{coder}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
            elif part == "mid_block":  # attentions.0.<layer>[.0].param
                layer = attn[p[4]]
                new = f"{coder}.mid.attn_1.{layer}.{p[-1]}"
                if v.ndim == 2:
                    v = v.reshape(*v.shape, 1, 1)
            elif part == "down_blocks":
                if p[3] == "resnets":
                    new = f"encoder.down.{p[2]}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
                else:
                    new = f"encoder.down.{p[2]}.downsample.conv.{p[-1]}"
            elif part == "up_blocks":
                b = blocks - 1 - int(p[2])
                if p[3] == "resnets":
                    new = f"decoder.up.{b}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
                else:
                    new = f"decoder.up.{b}.upsample.conv.{p[-1]}"
            else:
                raise ValueError(f"unmapped VAE key {k}")
        out[new] = v
    return out


def clip_to_ldm(state: dict) -> dict:
    """transformers CLIP names as SD 1.x / SDXL files hold them (`text_model.` included)."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state.items()}


OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                   "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def open_clip_to_ldm(state: dict) -> dict:
    """transformers CLIP names -> OpenCLIP's (fused q/k/v, transposed projection)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {}
    fused = collections.defaultdict(dict)
    for k, v in state.items():
        if k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("final_layer_norm."):
            out["ln_final." + k.split(".")[-1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
        elif k.startswith("encoder.layers."):
            p = k.split(".")
            layer, module, param = p[2], ".".join(p[3:-1]), p[-1]
            block = f"transformer.resblocks.{layer}"
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                fused[(block, param)][module[-6]] = v
            else:
                out[f"{block}.{OPEN_CLIP_LAYER[module]}.{param}"] = v
        else:
            raise ValueError(f"unmapped text key {k}")
    for (block, param), parts in fused.items():
        out[f"{block}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Checks with diffusers' own converters
# ---------------------------------------------------------------------------------------------

def _same(what, converted: dict, expected: dict, values: bool, ignore=()):
    keys = set(converted) - set(ignore)
    missing = sorted(set(expected) - keys)
    extra = sorted(keys - set(expected))
    assert not missing and not extra, f"{what}: missing {missing[:5]}, extra {extra[:5]}"
    for k, v in expected.items():
        assert tuple(converted[k].shape) == tuple(v.shape), f"{what}: {k} {converted[k].shape} vs {v.shape}"
        if values:
            assert torch.equal(converted[k].float(), v.float()), f"{what}: {k} differs"


def check_unet(ldm: dict, model: UNet2DConditionModel, values=False):
    converted = sfu.convert_ldm_unet_checkpoint(prefixed("model.diffusion_model.", ldm), dict(model.config))
    _same("unet", converted, model.state_dict(), values)


def check_vae(ldm: dict, model: AutoencoderKL, values=False):
    converted = sfu.convert_ldm_vae_checkpoint(ldm, dict(model.config))
    _same("vae", converted, model.state_dict(), values)


def check_clip(ldm: dict, model, prefix: str, values=False):
    converted = sfu.convert_ldm_clip_checkpoint(ldm, prefix)
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    expected = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    _same("clip", converted, expected, values, ignore=["embeddings.position_ids"])


def check_open_clip(ldm: dict, model, prefix: str, values=False) -> dict:
    converted = sfu.convert_open_clip_checkpoint(model, ldm, prefix=prefix)
    if not hasattr(model, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    expected = model.state_dict()
    # The converter ignores SD 2.x's 24th layer by name only; a tiny model's extra stored
    # layer passes through, and the model (strict=False) drops it, as here.
    extra = [k for k in converted if k not in expected and ".layers." in k]
    _same("open_clip", converted, expected, values, ignore=extra)
    return {k: converted[k] for k in expected}


# ---------------------------------------------------------------------------------------------
# Full-size manifests
# ---------------------------------------------------------------------------------------------

def _text_model(cls, args):
    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0,
                            eos_token_id=2, pad_token_id=1, **args)
    with torch.device("meta"):
        return cls(config)


def _full_manifest(name: str, unet_config: dict, family: str, vae_scaling: float):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**FULL_VAE, scaling_factor=vae_scaling)
    ckpt = {}
    unet_ldm = unet_to_ldm(unet.state_dict(), 2)
    check_unet(unet_ldm, unet)
    ckpt.update(prefixed("model.diffusion_model.", unet_ldm))
    vae_ldm = vae_to_ldm(vae.state_dict(), 4)
    check_vae(vae_ldm, vae)
    ckpt.update(prefixed("first_stage_model.", vae_ldm))
    meta = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device="meta")  # noqa: E731

    if family == "sd1":
        clip = _text_model(CLIPTextModel, VIT_L)
        text = prefixed("cond_stage_model.transformer.", clip_to_ldm(clip.state_dict()))
        text["cond_stage_model.transformer.text_model.embeddings.position_ids"] = meta(1, 77, dtype=torch.int64)
        check_clip(text, clip, None)
        ckpt.update(text)
    elif family == "sd2":
        # The file holds all 24 OpenCLIP layers and the projection; diffusers' text encoder
        # has 23 layers and no projection.
        stored = _text_model(CLIPTextModelWithProjection, VIT_H)
        text = prefixed("cond_stage_model.model.", open_clip_to_ldm(stored.state_dict()))
        text["cond_stage_model.model.logit_scale"] = meta()
        used = _text_model(CLIPTextModel, dict(VIT_H, num_hidden_layers=23, projection_dim=512))
        check_open_clip(text, used, "cond_stage_model.model.")
        ckpt.update(text)
    else:
        big_g = _text_model(CLIPTextModelWithProjection, VIT_BIGG)
        prefix = "conditioner.embedders.1.model." if family == "sdxl" else "conditioner.embedders.0.model."
        text = prefixed(prefix, open_clip_to_ldm(big_g.state_dict()))
        text[prefix + "logit_scale"] = meta()
        check_open_clip(text, big_g, prefix)
        ckpt.update(text)
        if family == "sdxl":
            clip = _text_model(CLIPTextModel, VIT_L)
            text = prefixed("conditioner.embedders.0.transformer.", clip_to_ldm(clip.state_dict()))
            text["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = meta(1, 77, dtype=torch.int64)
            check_clip(text, clip, "conditioner.embedders.0.transformer.")
            ckpt.update(text)
    if family in ("sd1", "sd2"):
        # CompVis files: the DDPM schedule buffers and the EMA bookkeeping scalars.
        for buffer in DDPM_BUFFERS:
            ckpt[buffer] = meta(1000)
        ckpt["model_ema.decay"] = meta()
        ckpt["model_ema.num_updates"] = meta(dtype=torch.int32)
    model_type = sfu.infer_diffusers_model_type(ckpt)
    # One tensor per line: these manifests are long.
    lines = [f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in sorted(ckpt.items())]
    path = common.FIXTURES / "manifests" / f"ldm_{name}.json"
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return model_type


def make_manifests():
    expected_types = {
        "sd15": ("v1", dict(FULL_SD15), "sd1", 0.18215),
        "sd15_inpaint": ("inpainting", dict(FULL_SD15, in_channels=9), "sd1", 0.18215),
        "sd21_v": ("v2", dict(FULL_SD21_V), "sd2", 0.18215),
        "sdxl_base": ("xl_base", dict(FULL_SDXL_BASE), "sdxl", 0.13025),
        "sdxl_refiner": ("xl_refiner", dict(FULL_SDXL_REFINER), "refiner", 0.13025),
    }
    for name, (diffusers_type, config, family, scaling) in expected_types.items():
        found = _full_manifest(name, config, family, scaling)
        # diffusers' own detector must recognise the file as the family it is.
        assert found == diffusers_type, f"{name}: diffusers detects {found}"
        print(f"  ldm_{name}: diffusers detects {found}")


# ---------------------------------------------------------------------------------------------
# Tiny single files for parity
# ---------------------------------------------------------------------------------------------

def _half(state: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def make_tiny_sd15(out_dir):
    folder = common.MODELS / "tiny-sd15"
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    text = CLIPTextModel.from_pretrained(folder / "text_encoder")
    unet_ldm = unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)
    check_unet(unet_ldm, unet, values=True)
    vae_ldm = vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels))
    check_vae(vae_ldm, vae, values=True)
    text_ldm = prefixed("cond_stage_model.transformer.", clip_to_ldm(text.state_dict()))
    check_clip(text_ldm, text, None, values=True)

    ckpt = {}
    ckpt.update(prefixed("model.diffusion_model.", unet_ldm))
    ckpt.update(prefixed("first_stage_model.", vae_ldm))
    ckpt.update(text_ldm)
    # Every weight was rounded to f16 by its maker: f16 storage is exact.
    for k, v in ckpt.items():
        assert torch.equal(v.half().float(), v.float()), f"{k} is not f16-exact"
    ckpt = _half(ckpt)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ckpt["betas"] = betas.float()
    ckpt["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    ckpt["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    ckpt["model_ema.decay"] = torch.tensor(0.9999)
    assert sfu.infer_diffusers_model_type(ckpt) == "v1"
    save_file(ckpt, str(out_dir / "tiny_sd15.safetensors"), metadata={"format": "pt"})

    # The .ckpt: the VAE and the UNet's time embedding, wrapped as Lightning does, one weight
    # saved as a non-contiguous (transposed) view so the reader must honour strides.
    state = collections.OrderedDict((k, v) for k, v in ckpt.items()
                                    if k.startswith(("model.diffusion_model.time_embed.", "first_stage_model.")))
    key = "model.diffusion_model.time_embed.0.weight"
    state[key] = state[key].t().contiguous().t()
    assert not state[key].is_contiguous()
    torch.save({"state_dict": state, "global_step": 7, "epoch": 1}, out_dir / "tiny_sd15_unet_vae.ckpt")


def make_tiny_sdxl(out_dir):
    common.seed_everything(4242)
    unet = UNet2DConditionModel(**SMALL_SDXL)
    common.randomize_(unet)
    common.round_params_to_f16(unet)
    small = dict(vocab_size=SMALL_VOCAB, max_position_embeddings=77, hidden_size=common.TINY_TEXT_HIDDEN,
                 intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 bos_token_id=0, eos_token_id=2, pad_token_id=1)
    clip = CLIPTextModel(CLIPTextConfig(hidden_act="quick_gelu", projection_dim=32, **small))
    big_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_act="gelu", projection_dim=32, **small))
    for model in (clip, big_g):
        common.randomize_(model)
        common.round_params_to_f16(model)

    ckpt = {}
    ckpt.update(prefixed("model.diffusion_model.", unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)))
    ckpt.update(prefixed("conditioner.embedders.0.transformer.", clip_to_ldm(clip.state_dict())))
    ckpt.update(prefixed("conditioner.embedders.1.model.", open_clip_to_ldm(big_g.state_dict())))
    ckpt["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6052)
    ckpt = _half(ckpt)
    # (diffusers' own detector needs a 10th OpenCLIP layer, which the tiny model lacks.)

    reference = {}
    unet_ldm = {k.removeprefix("model.diffusion_model."): v.float() for k, v in ckpt.items()
                if k.startswith("model.diffusion_model.")}
    converted = sfu.convert_ldm_unet_checkpoint(prefixed("model.diffusion_model.", unet_ldm), dict(unet.config))
    _same("tiny sdxl unet", converted, unet.state_dict(), values=True)
    reference.update(prefixed("unet.", converted))
    converted = sfu.convert_ldm_clip_checkpoint({k: v.float() for k, v in ckpt.items()},
                                                "conditioner.embedders.0.transformer.")
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    _same("tiny sdxl clip", converted, clip.state_dict(), values=True)
    reference.update(prefixed("text_encoder.", converted))
    converted = check_open_clip({k: v.float() for k, v in ckpt.items()}, big_g,
                                "conditioner.embedders.1.model.", values=True)
    reference.update(prefixed("text_encoder_2.", converted))
    save_file(ckpt, str(out_dir / "tiny_sdxl.safetensors"))
    save_file(_half(reference), str(out_dir / "tiny_sdxl_reference.safetensors"))


def make_tiny_sd2_text(out_dir):
    common.seed_everything(4343)
    small = dict(vocab_size=SMALL_VOCAB, max_position_embeddings=77, hidden_size=common.TINY_TEXT_HIDDEN,
                 intermediate_size=64, num_attention_heads=4, hidden_act="gelu",
                 bos_token_id=0, eos_token_id=2, pad_token_id=1)
    # As SD 2.x: the file holds one layer more than the model uses, and a projection.
    stored = CLIPTextModelWithProjection(CLIPTextConfig(num_hidden_layers=3, projection_dim=32, **small))
    common.randomize_(stored)
    common.round_params_to_f16(stored)
    ckpt = prefixed("cond_stage_model.model.", open_clip_to_ldm(stored.state_dict()))
    ckpt["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)
    ckpt = _half(ckpt)
    used = CLIPTextModel(CLIPTextConfig(num_hidden_layers=2, projection_dim=32, **small))
    converted = sfu.convert_open_clip_checkpoint(used, {k: v.float() for k, v in ckpt.items()},
                                                 prefix="cond_stage_model.model.")
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    missing, unexpected = used.load_state_dict(converted, strict=False)
    assert not missing, missing
    assert all(".layers.2." in k for k in unexpected), unexpected
    reference = {k: converted[k] for k in used.state_dict()}
    save_file(ckpt, str(out_dir / "tiny_sd2_text.safetensors"))
    save_file(_half(prefixed("text_encoder.", reference)),
              str(out_dir / "tiny_sd2_text_reference.safetensors"))


class _Reduces:
    """Pickles as a call of `func(*args)` (never unpickled here)."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_archive(path, pickle_bytes: bytes, storages: dict):
    """A torch.save-style zip: <stem>/data.pkl, <stem>/data/<key>, <stem>/byteorder, stored."""
    stem = path.stem
    entries = {f"{stem}/data.pkl": pickle_bytes, f"{stem}/byteorder": b"little"}
    entries.update({f"{stem}/data/{key}": data for key, data in storages.items()})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            # A fixed timestamp keeps the fixture byte-for-byte reproducible.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)


def make_bad_ckpts(out_dir):
    """Checkpoints that must be refused: pickles that ask to run code, a view past its storage."""
    # os.system("echo pwned") as the state dict (protocol 2: GLOBAL 'posix system' + REDUCE).
    evil = _Reduces(os.system, ("echo pwned",))
    _write_archive(out_dir / "malicious_os_system.ckpt",
                   pickle.dumps({"state_dict": evil}, protocol=2), {})
    # builtins.eval("...") inside an otherwise ordinary dict.
    evil = _Reduces(eval, ("__import__('os').system('echo pwned')",))
    _write_archive(out_dir / "malicious_eval.ckpt",
                   pickle.dumps({"state_dict": {"w": evil}}, protocol=2, fix_imports=False), {})

    # A tensor of 10 floats over a storage of 4, in torch's own pickle form.
    placeholder = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is placeholder:
                return ("storage", torch.FloatStorage, "0", "cpu", 4)
            return None

    view = _Reduces(torch._utils._rebuild_tensor_v2,
                    (placeholder, 0, (10,), (1,), False, collections.OrderedDict()))
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"state_dict": collections.OrderedDict(w=view)})
    _write_archive(out_dir / "bad_view.ckpt", buffer.getvalue(), {"0": bytes(16)})


def make_mixed_ckpt(out_dir):
    """A plain (unwrapped) state dict of every storage kind the reader handles: f32, bf16,
    f16 views into a shared storage, int64, bool, a 0-d tensor and an nn.Parameter."""
    state = collections.OrderedDict()
    state["f32"] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    state["bf16"] = torch.arange(4, dtype=torch.bfloat16)
    state["i64"] = torch.arange(3)
    state["flag"] = torch.tensor([True, False])
    shared = torch.arange(10, dtype=torch.float16)
    state["view"] = shared[4:8]
    state["view_t"] = shared.reshape(2, 5).t()
    state["param"] = torch.nn.Parameter(torch.full((2,), 0.5))
    state["scalar"] = torch.tensor(2.5)
    state["note"] = "not a tensor"
    torch.save(state, out_dir / "mixed_dtypes.ckpt")
    # The same in the legacy (torch < 1.6) format.
    torch.save(state, out_dir / "mixed_dtypes_legacy.ckpt", _use_new_zipfile_serialization=False)


def make(root):
    make_manifests()
    out_dir = root / "single_file"
    out_dir.mkdir(parents=True, exist_ok=True)
    make_tiny_sd15(out_dir)
    make_tiny_sdxl(out_dir)
    make_tiny_sd2_text(out_dir)
    make_bad_ckpts(out_dir)
    make_mixed_ckpt(out_dir)
    for path in sorted(out_dir.iterdir()):
        print(f"  {path.relative_to(root)}: {path.stat().st_size} bytes")
