"""End-to-end parity for every model family: SD 2.x (v-prediction), SDXL base, SDXL refiner (img2img
and the base-to-refiner handoff), inpainting (9-channel and 4-channel UNets) and an external VAE.

The tiny model folders under fixtures/models/ are assembled from the existing tiny components with
symlinks (one new tiny UNet for the refiner and one new tiny VAE); every case is one
`sd generate` command line, run in fixtures/pipeline_families/, and the images diffusers makes.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import common
from parts.pipeline import make_scheduler

MODELS = common.MODELS
OUT = "pipeline_families"
TEXT = common.TINY_TEXT_HIDDEN

SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# stable-diffusion-2-1 (768-v) ships a DDIM config with v-prediction.
SD2_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# The refiner's UNet in small: cross-attention on text_encoder_2 only (32), pooled 32 + 5 time
# ids (original size, crop, aesthetic score) x 8.
TINY_REFINER_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[8, 16, 16],
    layers_per_block=1,
    transformer_layers_per_block=2,
    norm_num_groups=4,
    cross_attention_dim=TEXT,
    attention_head_dim=[2, 4, 4],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=TEXT + 5 * 8,
)


def link(path: Path, target: str) -> None:
    """A relative symlink `path` -> `target` (replacing what was there)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def write_json(path: Path, value) -> None:
    common.save_json(path, value)


def model_index(class_name: str, components: dict, **extra) -> dict:
    index = {"_class_name": class_name, "_diffusers_version": "0.42.1"}
    index.update(extra)
    index.update(components)
    return index


def make_folders() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from parts.vae import TINY_VAE

    # SD 2.x: the OpenCLIP-shaped text encoder (gelu) as a plain CLIPTextModel, "!" padding.
    sd2 = MODELS / "tiny-sd2"
    sd2.mkdir(parents=True, exist_ok=True)
    te_config = json.loads((common.FIXTURES / "text_encoder/tiny-openclip-proj/config.json").read_text())
    te_config["architectures"] = ["CLIPTextModel"]
    write_json(sd2 / "text_encoder/config.json", te_config)
    link(sd2 / "text_encoder/model.safetensors", "../../../text_encoder/tiny-openclip-proj/model.safetensors")
    for name in ["vocab.json", "merges.txt"]:
        link(sd2 / "tokenizer" / name, f"../../tiny-sd15/tokenizer/{name}")
    tok_config = json.loads((MODELS / "tiny-sd15/tokenizer/tokenizer_config.json").read_text())
    tok_config["pad_token"] = "!"
    write_json(sd2 / "tokenizer/tokenizer_config.json", tok_config)
    special = json.loads((MODELS / "tiny-sd15/tokenizer/special_tokens_map.json").read_text())
    special["pad_token"] = "!"
    write_json(sd2 / "tokenizer/special_tokens_map.json", special)
    link(sd2 / "unet", "../../unet/tiny_sd2")
    link(sd2 / "vae", "../tiny-sd15/vae")
    write_json(sd2 / "scheduler/scheduler_config.json", SD2_SCHEDULER)
    write_json(
        sd2 / "model_index.json",
        model_index(
            "StableDiffusionPipeline",
            {
                "feature_extractor": [None, None],
                "safety_checker": [None, None],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            requires_safety_checker=False,
        ),
    )

    # SDXL base: CLIP (tiny-sd15's) + OpenCLIP with projection, its own VAE config (0.13025).
    xl = MODELS / "tiny-sdxl"
    xl.mkdir(parents=True, exist_ok=True)
    link(xl / "text_encoder", "../tiny-sd15/text_encoder")
    link(xl / "tokenizer", "../tiny-sd15/tokenizer")
    link(xl / "text_encoder_2", "../../text_encoder/tiny-openclip-proj")
    link(xl / "tokenizer_2", "../tiny-sd2/tokenizer")
    link(xl / "unet", "../../unet/tiny_sdxl")
    vae_config = json.loads((MODELS / "tiny-sd15/vae/config.json").read_text())
    vae_config["scaling_factor"] = 0.13025
    vae_config["force_upcast"] = True
    write_json(xl / "vae/config.json", vae_config)
    link(xl / "vae/diffusion_pytorch_model.safetensors", "../../tiny-sd15/vae/diffusion_pytorch_model.safetensors")
    write_json(xl / "scheduler/scheduler_config.json", SDXL_SCHEDULER)
    write_json(
        xl / "model_index.json",
        model_index(
            "StableDiffusionXLPipeline",
            {
                "feature_extractor": [None, None],
                "image_encoder": [None, None],
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "tokenizer_2": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            force_zeros_for_empty_prompt=True,
        ),
    )

    # SDXL refiner: text_encoder_2 only, aesthetic-score conditioning, a new tiny UNet.
    refiner = MODELS / "tiny-sdxl-refiner"
    refiner.mkdir(parents=True, exist_ok=True)
    link(refiner / "text_encoder_2", "../../text_encoder/tiny-openclip-proj")
    link(refiner / "tokenizer_2", "../tiny-sd2/tokenizer")
    link(refiner / "vae", "../tiny-sdxl/vae")
    link(refiner / "scheduler", "../tiny-sdxl/scheduler")
    common.seed_everything(4242)
    unet = UNet2DConditionModel(**TINY_REFINER_UNET).eval()
    common.randomize_(unet)
    common.round_params_to_f16(unet)
    unet.to(torch.float16).save_pretrained(str(refiner / "unet"), safe_serialization=True)
    write_json(
        refiner / "model_index.json",
        model_index(
            "StableDiffusionXLImg2ImgPipeline",
            {
                "feature_extractor": [None, None],
                "image_encoder": [None, None],
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                "text_encoder": [None, None],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer": [None, None],
                "tokenizer_2": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            force_zeros_for_empty_prompt=False,
            requires_aesthetics_score=True,
        ),
    )

    # SD 1.5 inpainting: the 9-channel tiny UNet with tiny-sd15's other components.
    inpaint = MODELS / "tiny-sd15-inpaint"
    inpaint.mkdir(parents=True, exist_ok=True)
    for name in ["text_encoder", "tokenizer", "vae", "scheduler"]:
        link(inpaint / name, f"../tiny-sd15/{name}")
    link(inpaint / "unet", "../../unet/tiny_inpaint")
    index = json.loads((MODELS / "tiny-sd15/model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    write_json(inpaint / "model_index.json", index)

    # Another tiny VAE (other random weights, f16 file) for --vae.
    common.seed_everything(777)
    vae = AutoencoderKL(**TINY_VAE)
    common.randomize_(vae, std=0.2)
    common.round_params_to_f16(vae)
    vae.eval().to(torch.float16).save_pretrained(str(MODELS / "tiny-vae-alt"), safe_serialization=True)


BASE = dict(
    common.BASE_REQUEST,
    batch_size=1,
    schedule="default",
)


def case(name, model, **overrides):
    c = dict(BASE)
    c.update(overrides)
    c["name"] = name
    c["model"] = model
    return c


CASES = [
    # SD 2.x, v-prediction.
    case("sd2_euler_a", "tiny-sd2", sampler="euler_a"),
    case("sd2_dpmpp_2m", "tiny-sd2", sampler="dpmpp_2m"),
    case("sd2_ddim", "tiny-sd2", sampler="ddim"),
    case("sd2_euler_cfg1", "tiny-sd2", sampler="euler", cfg_scale=1.0, negative_prompt=""),
    # SDXL base.
    case("sdxl_euler_80x48", "tiny-sdxl", sampler="euler", width=80, height=48),
    case("sdxl_euler_a_80x48", "tiny-sdxl", sampler="euler_a", width=80, height=48),
    case("sdxl_dpmpp_2m_80x48", "tiny-sdxl", sampler="dpmpp_2m", width=80, height=48),
    case("sdxl_euler_cfg1", "tiny-sdxl", sampler="euler", cfg_scale=1.0, negative_prompt=""),
    case("sdxl_no_negative", "tiny-sdxl", sampler="euler", negative_prompt=""),
    case("sdxl_euler_a_batch2", "tiny-sdxl", sampler="euler_a", batch_size=2),
    # SDXL refiner: img2img, and the base-then-refiner handoff.
    case("refiner_img2img", "tiny-sdxl-refiner", sampler="euler_a", init_image="init.png", strength=0.6),
    case("refiner_img2img_no_negative", "tiny-sdxl-refiner", sampler="ddim", init_image="init.png",
         strength=0.5, negative_prompt=""),
    case("handoff_euler_a", "tiny-sdxl", sampler="euler_a", steps=10, refiner="tiny-sdxl-refiner", switch=0.8),
    case("handoff_dpmpp_2m", "tiny-sdxl", sampler="dpmpp_2m", steps=10, refiner="tiny-sdxl-refiner", switch=0.7,
         width=80, height=48),
    # Inpainting: the 9-channel model and an ordinary 4-channel one (latent blending).
    case("inpaint9_euler_a", "tiny-sd15-inpaint", sampler="euler_a", init_image="init.png", mask="mask.png",
         strength=1.0),
    case("inpaint9_ddim_strength", "tiny-sd15-inpaint", sampler="ddim", init_image="init.png", mask="mask.png",
         strength=0.6),
    case("inpaint4_euler_a", "tiny-sd15", sampler="euler_a", init_image="init.png", mask="mask.png",
         strength=1.0),
    case("inpaint4_dpmpp_2m_strength", "tiny-sd15", sampler="dpmpp_2m", init_image="init.png", mask="mask.png",
         strength=0.6, batch_size=2),
    # An external VAE.
    case("external_vae", "tiny-sd15", sampler="euler", vae="tiny-vae-alt"),
]


def init_image(path: Path) -> None:
    """A 64x64 gradient with a disc (as parts/pipeline.py makes it)."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    img = np.zeros((64, 64, 3), np.float32)
    img[..., 0] = x / 63.0
    img[..., 1] = y / 63.0
    img[..., 2] = 0.5
    disc = (x - 30) ** 2 + (y - 34) ** 2 < 14**2
    img[disc] = [0.9, 0.1, 0.1]
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)


def mask_image(path: Path) -> None:
    """A 64x64 RGB mask: a white rectangle (not on the 8-pixel grid) with grey edges on either
    side of 50% (binarized by the pipeline), on black."""
    m = np.zeros((64, 64), np.uint8)
    m[20:50, 13:45] = 255
    m[20:50, 45:48] = 127  # just below one half: keeps
    m[20:50, 10:13] = 128  # just above: repaints
    m[50:53, 13:45] = 200
    Image.fromarray(np.stack([m, m, m], -1)).save(path)


def args_for(c) -> list:
    args = [
        "--prompt", c["prompt"],
        "--width", str(c["width"]),
        "--height", str(c["height"]),
        "--steps", str(c["steps"]),
        "--cfg-scale", str(c["cfg_scale"]),
        "--sampler", c["sampler"],
        "--schedule", c["schedule"],
        "--seed", str(c["seed"]),
        "--batch-size", str(c["batch_size"]),
    ]
    if c["negative_prompt"]:
        args += ["--negative-prompt", c["negative_prompt"]]
    if c.get("init_image"):
        args += ["--init-image", c["init_image"], "--strength", str(c["strength"])]
    if c.get("mask"):
        args += ["--mask", c["mask"]]
    if c.get("refiner"):
        args += ["--refiner", f"../models/{c['refiner']}", "--refiner-switch", str(c["switch"])]
    if c.get("vae"):
        args += ["--vae", f"../models/{c['vae']}"]
    return args


def load_pipe(cls, folder, **kwargs):
    pipe = cls.from_pretrained(str(MODELS / folder), torch_dtype=torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_case(c, out: Path):
    from diffusers import (
        AutoencoderKL,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    model = c["model"]
    extra = {}
    if model.startswith("tiny-sd1") or model == "tiny-sd2":
        extra = dict(safety_checker=None, requires_safety_checker=False)
    if c.get("vae"):
        extra["vae"] = AutoencoderKL.from_pretrained(str(MODELS / c["vae"]), torch_dtype=torch.float32)
    if c.get("mask"):
        pipe = load_pipe(StableDiffusionInpaintPipeline, model, **extra)
    elif model == "tiny-sdxl-refiner":
        pipe = load_pipe(StableDiffusionXLImg2ImgPipeline, model)
    elif model == "tiny-sdxl":
        pipe = load_pipe(StableDiffusionXLPipeline, model)
    elif c.get("init_image"):
        pipe = load_pipe(StableDiffusionImg2ImgPipeline, model, **extra)
    else:
        pipe = load_pipe(StableDiffusionPipeline, model, **extra)
    pipe.scheduler = make_scheduler(pipe, c["sampler"], c["schedule"])
    refiner = None
    if c.get("refiner"):
        refiner = load_pipe(StableDiffusionXLImg2ImgPipeline, c["refiner"])
        refiner.scheduler = make_scheduler(refiner, c["sampler"], c["schedule"])

    def run(output_type):
        generator = torch.Generator("cpu").manual_seed(c["seed"])
        kwargs = dict(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"] or None,
            num_inference_steps=c["steps"],
            guidance_scale=c["cfg_scale"],
            num_images_per_prompt=c["batch_size"],
            generator=generator,
        )
        if c.get("init_image"):
            kwargs["image"] = Image.open(out / c["init_image"]).convert("RGB")
            kwargs["strength"] = c["strength"]
        if c.get("mask"):
            kwargs["mask_image"] = Image.open(out / c["mask"])
            kwargs["width"] = c["width"]
            kwargs["height"] = c["height"]
        if not c.get("init_image"):
            kwargs["width"] = c["width"]
            kwargs["height"] = c["height"]
        if refiner is None:
            return pipe(output_type=output_type, **kwargs).images
        # The handoff: the base stops at denoising_end and hands its latents over; one
        # generator runs through both.
        latents = pipe(output_type="latent", denoising_end=c["switch"], **kwargs).images
        return refiner(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"] or None,
            num_inference_steps=c["steps"],
            guidance_scale=c["cfg_scale"],
            image=latents,
            denoising_start=c["switch"],
            generator=generator,
            output_type=output_type,
        ).images

    latents = run("latent")
    images = run("pil")
    names = []
    for i, image in enumerate(images):
        name = f"{c['name']}.png" if len(images) == 1 else f"{c['name']}-{i}.png"
        image.save(out / name)
        names.append(name)
    common.save_tensors(out / f"{c['name']}.latents.safetensors", {"latents": latents})
    pixels = np.stack([np.asarray(im) for im in images]).astype(np.float32)
    saturated = float(((pixels == 0) | (pixels == 255)).mean())
    print(f"  {c['name']}: {len(images)} image(s), std {pixels.std():.1f}, saturated {saturated:.3f}")
    return names


def make(root: Path) -> None:
    make_folders()
    out = root / OUT
    out.mkdir(parents=True, exist_ok=True)
    init_image(out / "init.png")
    mask_image(out / "mask.png")
    cases = []
    for c in CASES:
        names = run_case(c, out)
        entry = dict(c, args=args_for(c), images=names)
        cases.append(entry)
    common.save_json(out / "cases.json", cases)
