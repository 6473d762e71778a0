"""End-to-end parity of the diffusers-flavor samplers through `sd generate`.

diffusers' StableDiffusionPipeline / StableDiffusionImg2ImgPipeline on the tiny SD 1.5-shaped
model with its scheduler swapped the way users swap it (`Cls.from_config(pipe.scheduler.config,
**overrides)`), seeded with torch.Generator("cpu").manual_seed(seed) and that generator passed
to the pipeline (so the step noise of the stochastic schedulers comes from it too). Each case is
one `sd generate` command line with `--sampler NAME --sampler-flavor diffusers`; the images go to
fixtures/pipeline_samplers/diffusers_*.png, the cases to diffusers_cases.json.
"""

from pathlib import Path

import torch
from PIL import Image
from diffusers import (
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

import common
from parts.pipeline import init_image

MODEL = common.MODELS / "tiny-sd15"

BASE = dict(
    common.BASE_REQUEST,
    seed=4321,
    schedule="default",
    step_kwargs={},
)

# sampler -> (class, from_config overrides)
CLASSES = {
    "heun": (HeunDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "dpm2_a": (KDPM2AncestralDiscreteScheduler, {}),
    "dpmpp_2m_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "deis": (DEISMultistepScheduler, {}),
    "dpmpp_2s": (DPMSolverSinglestepScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
}


def case(name, **overrides):
    c = dict(BASE)
    c.update(overrides)
    c["name"] = f"diffusers_{name}"
    return c


CASES = [
    case("heun_karras", sampler="heun", schedule="karras", seed=11),
    case("dpm2_a", sampler="dpm2_a", seed=12),
    case("dpmpp_2m_sde_karras", sampler="dpmpp_2m_sde", schedule="karras", seed=13),
    case("unipc", sampler="unipc", seed=14),
    case("deis", sampler="deis", seed=15),
    case("dpmpp_2s", sampler="dpmpp_2s", seed=16),
    case("ddpm", sampler="ddpm", steps=10, seed=17),
    case("lcm", sampler="lcm", steps=4, cfg_scale=1.5, seed=18),
    case("tcd", sampler="tcd", steps=4, cfg_scale=1.5, seed=19, step_kwargs={"eta": 0.3}),
    case("img2img_lms", sampler="lms", init_image="init.png", strength=0.6, steps=8, seed=20),
    case("img2img_heun", sampler="heun", init_image="init.png", strength=0.6, steps=8, seed=21),
    case("img2img_unipc", sampler="unipc", init_image="init.png", strength=0.6, steps=8, seed=22),
]


def args_for(c) -> list:
    args = [
        "--prompt", c["prompt"],
        "--negative-prompt", c["negative_prompt"],
        "--width", str(c["width"]),
        "--height", str(c["height"]),
        "--steps", str(c["steps"]),
        "--cfg-scale", str(c["cfg_scale"]),
        "--sampler", c["sampler"],
        "--sampler-flavor", "diffusers",
        "--schedule", c["schedule"],
        "--seed", str(c["seed"]),
    ]
    for key, value in c["step_kwargs"].items():
        args += ["--" + key.replace("_", "-"), str(value)]
    if c.get("init_image"):
        args += ["--init-image", c["init_image"], "--strength", str(c["strength"])]
    return args


@torch.no_grad()
def make(root: Path) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    out = root / "pipeline_samplers"
    out.mkdir(parents=True, exist_ok=True)
    init_image(out / "init.png")
    txt2img = StableDiffusionPipeline.from_pretrained(
        str(MODEL), safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
    )
    img2img = StableDiffusionImg2ImgPipeline(**txt2img.components)
    base_config = txt2img.scheduler.config
    cases = []
    for c in CASES:
        cls, overrides = CLASSES[c["sampler"]]
        overrides = dict(overrides)
        if c["schedule"] == "karras":
            overrides["use_karras_sigmas"] = True
        scheduler = cls.from_config(base_config, **overrides)
        generator = torch.Generator("cpu").manual_seed(c["seed"])
        kwargs = dict(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"],
            num_inference_steps=c["steps"],
            guidance_scale=c["cfg_scale"],
            generator=generator,
            **c["step_kwargs"],
        )
        if c.get("init_image"):
            img2img.scheduler = scheduler
            image = Image.open(out / c["init_image"]).convert("RGB")
            result = img2img(image=image, strength=c["strength"], **kwargs)
        else:
            txt2img.scheduler = scheduler
            result = txt2img(width=c["width"], height=c["height"], **kwargs)
        name = f"{c['name']}.png"
        result.images[0].save(out / name)
        print(f"  {c['name']}")
        cases.append(dict(c, args=args_for(c), images=[name]))
    common.save_json(out / "diffusers_cases.json", cases)
