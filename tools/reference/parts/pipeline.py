"""End-to-end parity: diffusers' StableDiffusion(Img2Img)Pipeline on the tiny SD 1.5-shaped model.

Every case is one `sd generate` command line (the Rust test runs exactly these arguments) and the
images diffusers makes for it, plus the final latents before VAE decoding.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import common

MODEL = common.MODELS / "tiny-sd15"

LONG_PROMPT = ", ".join(
    [
        "a very detailed oil painting of a lighthouse on a rocky cliff at dusk",
        "dramatic clouds, crashing waves, seagulls, warm light from the windows",
        "by an old master, cinematic composition, high contrast, rich colours",
        "intricate brushwork, golden hour, mist over the sea, tiny boats on the horizon",
        "a winding path with lanterns leading up to the door, masterpiece, best quality",
        "a small red rowing boat pulled up on the shingle, nets drying on wooden poles",
        "stars appearing in a violet sky, the first beam of the lamp sweeping over the water",
    ]
)

BASE = dict(
    common.BASE_REQUEST,
    batch_size=1,
    schedule="default",
    eta=0.0,
)


def case(name, **overrides):
    c = dict(BASE)
    c.update(overrides)
    c["name"] = name
    return c


CASES = [
    # Every sampler, CFG 7.5 with a negative prompt.
    case("ddim", sampler="ddim"),
    case("pndm", sampler="pndm"),
    case("euler", sampler="euler"),
    case("euler_a", sampler="euler_a"),
    case("dpmpp_2m", sampler="dpmpp_2m"),
    case("euler_karras", sampler="euler", schedule="karras"),
    case("euler_a_karras", sampler="euler_a", schedule="karras"),
    case("dpmpp_2m_karras", sampler="dpmpp_2m", schedule="karras"),
    case("ddim_eta", sampler="ddim", eta=0.7, seed=77),
    # CFG 1.0 (no unconditional pass) and no negative prompt.
    case("euler_a_cfg1", sampler="euler_a", cfg_scale=1.0, negative_prompt=""),
    case("ddim_cfg1", sampler="ddim", cfg_scale=1.0, negative_prompt=""),
    case("pndm_no_negative", sampler="pndm", negative_prompt=""),
    case("dpmpp_2m_cfg1", sampler="dpmpp_2m", cfg_scale=1.0, negative_prompt=""),
    # Batches, odd sizes, long prompts, large seeds.
    case("euler_a_batch2", sampler="euler_a", batch_size=2),
    case("dpmpp_2m_batch2_cfg1", sampler="dpmpp_2m", batch_size=2, cfg_scale=1.0),
    case("euler_80x48", sampler="euler", width=80, height=48),
    case("ddim_long_prompt", sampler="ddim", prompt=LONG_PROMPT),
    case("euler_a_big_seed", sampler="euler_a", seed=2**32 + 7),
    case("pndm_max_seed", sampler="pndm", seed=2**64 - 1),
    # img2img at strength 0.6.
    case("img2img_euler_a", sampler="euler_a", init_image="init.png", strength=0.6),
    case("img2img_ddim", sampler="ddim", init_image="init.png", strength=0.6),
    case("img2img_dpmpp_2m_batch2", sampler="dpmpp_2m", init_image="init.png", strength=0.6, batch_size=2),
    case("img2img_pndm", sampler="pndm", init_image="init.png", strength=0.6, steps=5),
]


def make_scheduler(pipe, sampler, schedule):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    config = pipe.scheduler.config
    karras = schedule == "karras"
    if sampler == "ddim":
        return DDIMScheduler.from_config(config)
    if sampler == "pndm":
        return PNDMScheduler.from_config(config)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(config, use_karras_sigmas=karras)
    if sampler == "euler_a":
        if not karras:
            return EulerAncestralDiscreteScheduler.from_config(config)

        # diffusers' Euler a has no Karras option (k-diffusion's and A1111's has): walk
        # EulerDiscreteScheduler's Karras sigmas and timesteps with the ancestral step.
        class EulerAncestralKarras(EulerAncestralDiscreteScheduler):
            def set_timesteps(self, num_inference_steps, device=None):
                super().set_timesteps(num_inference_steps, device=device)
                karras_sched = EulerDiscreteScheduler.from_config(self.config, use_karras_sigmas=True)
                karras_sched.set_timesteps(num_inference_steps, device=device)
                self.sigmas = karras_sched.sigmas.clone()
                self.timesteps = karras_sched.timesteps.clone()

        return EulerAncestralKarras.from_config(config)
    if sampler == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", use_karras_sigmas=karras
        )
    raise ValueError(sampler)


def init_image(path: Path) -> None:
    """A deterministic 64x64 picture: a gradient with a disc, for img2img."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    img = np.zeros((64, 64, 3), np.float32)
    img[..., 0] = x / 63.0
    img[..., 1] = y / 63.0
    img[..., 2] = 0.5
    disc = (x - 30) ** 2 + (y - 34) ** 2 < 14**2
    img[disc] = [0.9, 0.1, 0.1]
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)


def args_for(c) -> list:
    """The `sd generate` arguments of a case (the output path is added by the test)."""
    args = [
        "--prompt", c["prompt"],
        "--width", str(c["width"]),
        "--height", str(c["height"]),
        "--steps", str(c["steps"]),
        "--cfg-scale", str(c["cfg_scale"]),
        "--sampler", c["sampler"],
        "--schedule", c["schedule"],
        "--seed", str(c["seed"]),
        "--rng", "cpu",
        "--batch-size", str(c["batch_size"]),
    ]
    if c["negative_prompt"]:
        args += ["--negative-prompt", c["negative_prompt"]]
    if c["eta"]:
        args += ["--eta", str(c["eta"])]
    if c.get("init_image"):
        args += ["--init-image", c["init_image"], "--strength", str(c["strength"])]
    return args


def make(root: Path) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    out = root / "pipeline"
    out.mkdir(parents=True, exist_ok=True)
    init_image(out / "init.png")

    txt2img = StableDiffusionPipeline.from_pretrained(
        str(MODEL), safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
    )
    txt2img.set_progress_bar_config(disable=True)
    img2img = StableDiffusionImg2ImgPipeline(**txt2img.components)
    img2img.set_progress_bar_config(disable=True)

    cases = []
    for c in CASES:
        pipe = img2img if c.get("init_image") else txt2img
        pipe.scheduler = make_scheduler(txt2img, c["sampler"], c["schedule"])
        generator = torch.Generator("cpu").manual_seed(c["seed"])
        kwargs = dict(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"] or None,
            num_inference_steps=c["steps"],
            guidance_scale=c["cfg_scale"],
            num_images_per_prompt=c["batch_size"],
            eta=c["eta"],
            generator=generator,
        )
        if c.get("init_image"):
            kwargs["image"] = Image.open(out / c["init_image"]).convert("RGB")
            kwargs["strength"] = c["strength"]
        else:
            kwargs["width"] = c["width"]
            kwargs["height"] = c["height"]
        latents = pipe(output_type="latent", **kwargs).images
        generator = torch.Generator("cpu").manual_seed(c["seed"])
        kwargs["generator"] = generator
        images = pipe(output_type="pil", **kwargs).images
        names = []
        for i, image in enumerate(images):
            name = f"{c['name']}.png" if len(images) == 1 else f"{c['name']}-{i}.png"
            image.save(out / name)
            names.append(name)
        common.save_tensors(out / f"{c['name']}.latents.safetensors", {"latents": latents})
        pixels = np.stack([np.asarray(im) for im in images]).astype(np.float32)
        saturated = float(((pixels == 0) | (pixels == 255)).mean())
        print(f"  {c['name']}: {len(images)} image(s), saturated fraction {saturated:.3f}")
        cases.append(dict(c, args=args_for(c), images=names))
    common.save_json(out / "cases.json", cases)
