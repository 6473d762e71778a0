"""UNet2DConditionModel fixtures: tiny random UNets (SD 1.5-, SD 2-, inpainting- and SDXL-style),
their inputs and outputs, and name/shape manifests of the full-size UNets."""

import torch
from diffusers import UNet2DConditionModel

import common

TEXT = common.TINY_TEXT_HIDDEN  # 32: the tiny text encoders' width

# SD 1.5 layout in small: 1x1-conv projections, `attention_head_dim` is the number of heads.
TINY_SD15 = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[16, 32],
    layers_per_block=2,
    norm_num_groups=8,
    cross_attention_dim=TEXT,
    attention_head_dim=2,
)

# SD 2 layout in small: linear projections, a per-block head list, three levels (so odd latent
# sizes need the skip-sized upsampling), upcast_attention as SD 2.1 sets it.
TINY_SD2 = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[8, 16, 16],
    layers_per_block=1,
    norm_num_groups=4,
    cross_attention_dim=TEXT,
    attention_head_dim=[2, 2, 4],
    use_linear_projection=True,
    upcast_attention=True,
)

# Inpainting: 9 input channels (latents, mask, masked-image latents).
TINY_INPAINT = dict(TINY_SD15, in_channels=9, layers_per_block=1, block_out_channels=[8, 16], norm_num_groups=4)

# SDXL layout in small: no attention at the top level, deeper transformers below, the
# text_time added embedding (pooled text 32 + 6 time ids x 8), two text encoders' width (2 x 32).
TINY_SDXL = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[8, 16, 16],
    layers_per_block=1,
    transformer_layers_per_block=[1, 1, 2],
    norm_num_groups=4,
    cross_attention_dim=2 * TEXT,
    attention_head_dim=[2, 2, 4],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=TEXT + 6 * 8,
)

# Asymmetric transformer depths (per attention layer, SSD-1B style): only a manifest is kept.
TINY_ASYMMETRIC = dict(
    TINY_SDXL,
    layers_per_block=2,
    transformer_layers_per_block=[[1, 1], [1, 2], [3, 1]],
    reverse_transformer_layers_per_block=[[2, 1, 3], [1, 2, 1], [1, 1, 1]],
)

# The full-size configs (diffusers' published config.json values).
FULL_SD15 = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
FULL_SD21_V = dict(
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=[5, 10, 20, 20],
    use_linear_projection=True,
    upcast_attention=True,
)
FULL_SDXL_BASE = dict(
    sample_size=128,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280],
    cross_attention_dim=2048,
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
FULL_SDXL_REFINER = dict(
    sample_size=128,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[384, 768, 1536, 1536],
    cross_attention_dim=1280,
    attention_head_dim=[6, 12, 24, 24],
    transformer_layers_per_block=4,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560,
)

# (name, config, cases): each case is (batch, height, width, timestep, text tokens).
VARIANTS = [
    ("tiny_sd15", TINY_SD15, [(2, 8, 8, 999.0, 9), (1, 7, 5, 466.6666666666667, 9)]),
    ("tiny_sd2", TINY_SD2, [(2, 8, 8, 891.0, 9), (1, 10, 6, 12.345678901234, 9)]),
    ("tiny_inpaint", TINY_INPAINT, [(1, 8, 8, 999.0, 9), (2, 6, 10, 500.5, 9)]),
    ("tiny_sdxl", TINY_SDXL, [(2, 8, 8, 999.0, 9), (1, 10, 6, 333.3333333333333, 9)]),
]


def build_tiny(config: dict, seed: int) -> UNet2DConditionModel:
    common.seed_everything(seed)
    model = UNet2DConditionModel(**config).eval()
    common.randomize_(model)
    common.round_params_to_f16(model)
    return model


def save_model(model: UNet2DConditionModel, folder) -> None:
    """A diffusers folder with f16 weights (the values are f16-exact, see round_params_to_f16)."""
    model.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)
    model.to(torch.float32)


def run_cases(model: UNet2DConditionModel, config: dict, cases, seed: int):
    common.seed_everything(seed + 1)
    captured = {}
    hooks = [
        model.time_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("t_emb", o)),
        model.time_embedding.register_forward_hook(
            lambda m, i, o: captured.__setitem__("time_embedding", o)
        ),
    ]
    if config.get("addition_embed_type") == "text_time":
        hooks.append(
            model.add_embedding.register_forward_hook(lambda m, i, o: captured.__setitem__("aug_emb", o))
        )
    tensors, meta = {}, []
    for index, (batch, height, width, timestep, tokens) in enumerate(cases):
        sample = torch.randn(batch, config["in_channels"], height, width)
        context = torch.randn(batch, tokens, config["cross_attention_dim"])
        kwargs = {}
        prefix = f"case{index}_"
        if config.get("addition_embed_type") == "text_time":
            text_embeds = torch.randn(batch, TEXT)
            # SDXL's time ids: original size, crop top-left, target size (pixels).
            time_ids = torch.tensor([[1024.0, 768.0, 0.0, 16.0, 8.0 * height, 8.0 * width]] * batch)
            time_ids[-1, 0] = 512.0
            kwargs["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": time_ids}
            tensors[prefix + "text_embeds"] = text_embeds
            tensors[prefix + "time_ids"] = time_ids
        with torch.no_grad():
            out = model(sample, timestep, context, **kwargs).sample
        tensors[prefix + "sample"] = sample
        tensors[prefix + "encoder_hidden_states"] = context
        tensors[prefix + "out"] = out
        for key, value in captured.items():
            tensors[prefix + key] = value
        meta.append({"timestep": timestep, "batch": batch, "height": height, "width": width})
        print(f"  case {index}: {tuple(sample.shape)} t={timestep} out |max| {out.abs().max():.3f}")
    for hook in hooks:
        hook.remove()
    return tensors, meta


def make(root) -> None:
    for seed, (name, config, cases) in enumerate(VARIANTS):
        model = build_tiny(config, 100 + seed)
        tensors, meta = run_cases(model, config, cases, 100 + seed)
        folder = root / "models" / "tiny-sd15" / "unet" if name == "tiny_sd15" else root / "unet" / name
        save_model(model, folder)
        common.save_tensors(root / "unet" / f"{name}_io.safetensors", tensors)
        common.save_json(root / "unet" / f"{name}_io.json", {"model": str(folder.relative_to(root)), "cases": meta})
        print(f"  {name}: {sum(p.numel() for p in model.parameters())} parameters -> {folder}")

    for name, config in [
        ("unet_tiny_asymmetric", TINY_ASYMMETRIC),
        ("unet_sd15", FULL_SD15),
        ("unet_sd21_v", FULL_SD21_V),
        ("unet_sdxl_base", FULL_SDXL_BASE),
        ("unet_sdxl_refiner", FULL_SDXL_REFINER),
    ]:
        with torch.device("meta"):
            model = UNet2DConditionModel(**config)
        common.write_manifest(name, model)
        print(f"  manifest {name}: {len(model.state_dict())} tensors")
