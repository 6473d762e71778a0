"""End-to-end parity of the k-diffusion (A1111) samplers through `sd generate`.

The reference is AUTOMATIC1111's txt2img/img2img sampling rebuilt from its parts on the tiny
SD 1.5-shaped model: diffusers' text encoder and VAE, the diffusers UNet wrapped as k-diffusion's
CompVisDenoiser (DiscreteEpsDDPMDenoiser on the scheduler's alphas_cumprod), CFG on the denoised
outputs as A1111's CFGDenoiser does, A1111's sigma schedules (parts/kdiffusion.py) and
k-diffusion's sample_* functions. Noise comes from the global torch generator seeded with the
seed, drawn in the order `sd` draws it (img2img: the VAE posterior sample, then the noise):
initial latents torch.randn * sigmas[0]; img2img as A1111: t_enc = int(min(strength, 0.999) *
steps), sigmas[steps - t_enc - 1:], x = init + noise * sigma. Brownian-tree samplers get a randn
noise sampler (see parts/kdiffusion.py).

A1111's own timestep samplers ("DDIM", "PLMS", "UniPC") run the loops of
parts/a1111_timesteps.py on the same UNet (called at A1111's fractional timesteps, CFG on eps):
initial latents torch.randn unscaled; img2img noised to the cumulative alpha of
timesteps[t_enc].

Every case is one `sd generate` command line, using A1111's sampler names so that `sd` picks the
k-diffusion flavor.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import common
from parts import a1111_timesteps as timesteps_samplers
from parts.kdiffusion import a1111_sigmas, external, sampler_fn
from parts.pipeline import init_image

MODEL = common.MODELS / "tiny-sd15"

A1111 = {
    "euler": "Euler", "euler_a": "Euler a", "heun": "Heun", "dpm2": "DPM2", "dpm2_a": "DPM2 a",
    "lms": "LMS", "dpmpp_2m": "DPM++ 2M", "dpmpp_2s_a": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
    "dpmpp_3m_sde": "DPM++ 3M SDE", "ipndm": "iPNDM", "lcm": "LCM",
    "ddim": "DDIM", "pndm": "PLMS", "unipc": "UniPC",
}
# A1111's own samplers on integer timesteps (no sigma schedule).
TIMESTEP_SAMPLERS = {"ddim", "pndm", "unipc"}

BASE = dict(
    common.BASE_REQUEST,
    schedule="default",
    options={},
)


def case(name, **overrides):
    c = dict(BASE)
    c.update(overrides)
    c["name"] = name
    return c


CASES = (
    [
        case(f"{s}_karras", sampler=s, schedule="karras", seed=1000 + i)
        for i, s in enumerate(A1111)
        if s != "lcm" and s not in TIMESTEP_SAMPLERS
    ]
    + [
        case("dpmpp_2m_automatic", sampler="dpmpp_2m"),
        case("euler_a_automatic", sampler="euler_a", seed=7),
        case("dpmpp_2m_sde_automatic", sampler="dpmpp_2m_sde", seed=8),
        case("dpm2_automatic", sampler="dpm2", seed=9),
        case("euler_exponential", sampler="euler", schedule="exponential"),
        case("euler_sgm_uniform", sampler="euler", schedule="sgm_uniform"),
        case("dpmpp_2m_align_your_steps", sampler="dpmpp_2m", schedule="align_your_steps"),
        case("euler_churn", sampler="euler", schedule="karras", options={"s_churn": 1.0}, seed=11),
        case("euler_a_cfg1", sampler="euler_a", cfg_scale=1.0, negative_prompt="", seed=12),
        # A1111's own LCM (its LCMCompVisDenoiser), at LCM's usual few steps and low CFG.
        case("lcm_automatic", sampler="lcm", steps=4, cfg_scale=1.5, seed=13),
        case("lcm_karras", sampler="lcm", schedule="karras", steps=4, cfg_scale=1.5, seed=14),
        case("lcm_cfg1", sampler="lcm", steps=4, cfg_scale=1.0, negative_prompt="", seed=15),
        case("img2img_lcm", sampler="lcm", init_image="init.png", strength=0.6, steps=6,
             cfg_scale=1.5, seed=16),
    ]
    + [
        # A1111's DDIM, PLMS and UniPC: 7 steps plan 8 timesteps.
        case("a1111_ddim", sampler="ddim", steps=7, seed=3001),
        case("a1111_plms", sampler="pndm", steps=7, seed=3002),
        case("a1111_unipc", sampler="unipc", steps=7, seed=3003),
        case("a1111_unipc_cfg1", sampler="unipc", steps=10, cfg_scale=1.0, negative_prompt="",
             seed=3004),
        case("a1111_ddim_eta", sampler="ddim", steps=8, options={"eta": 0.7}, seed=3005),
    ]
    + [
        case(f"img2img_a1111_{s}", sampler=s, init_image="init.png", strength=0.6, steps=10,
             seed=3100 + i)
        for i, s in enumerate(["ddim", "pndm", "unipc"])
    ]
    + [
        case(f"img2img_{s}", sampler=s, init_image="init.png", strength=0.6, steps=8, seed=2000 + i)
        for i, s in enumerate(["heun", "dpm2", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde", "euler_a", "lms"])
    ]
)


class UNetDenoiser(external.DiscreteEpsDDPMDenoiser):
    """The diffusers UNet as A1111's CompVisDenoiser sees it."""

    def __init__(self, unet, alphas_cumprod):
        super().__init__(unet, alphas_cumprod, quantize=False)

    def get_eps(self, x, t, cond=None):
        return self.inner_model(x, t, encoder_hidden_states=cond).sample


class LCMDenoiser(UNetDenoiser):
    """A1111's LCM model wrapper, in our words: the sigma table holds only LCM's original grid
    (timesteps 19, 39, ..., 999), the UNet is called at the grid timestep nearest in
    log-sigma, and the x0 estimate is blended with the input by LCM's boundary scalings at
    10 * t (sigma_data = 0.5). Its own schedule spaces grid timesteps evenly."""

    SKIP = 20

    def __init__(self, unet, alphas_cumprod):
        super().__init__(unet, alphas_cumprod[self.SKIP - 1::self.SKIP])

    def sigma_to_t(self, sigma, quantize=None):
        nearest = (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        return nearest * self.SKIP + (self.SKIP - 1)

    def t_to_sigma(self, t):
        index = ((t - (self.SKIP - 1)) / self.SKIP).float().clamp(0, len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def get_sigmas(self, n=None):
        start = self.sigma_to_t(self.sigma_max)
        end = self.sigma_to_t(self.sigma_min)
        t = torch.linspace(float(start), float(end), n)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def forward(self, x, sigma, **kwargs):
        c_out, c_in = [v[:, None, None, None] for v in self.get_scalings(sigma)]
        t = self.sigma_to_t(sigma)
        x0 = x + self.get_eps(x * c_in, t, **kwargs) * c_out
        s = (t * 10.0)[:, None, None, None]
        c_skip = 0.25 / (s**2 + 0.25)
        c_out = s / (s**2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * x


class CFGDenoiser:
    """A1111's CFGDenoiser: both halves in one batch, guidance on the denoised outputs."""

    def __init__(self, model, cond, uncond, scale):
        self.model, self.cond, self.uncond, self.scale = model, cond, uncond, scale
        self.sigma_to_t = model.sigma_to_t

    def __call__(self, x, sigma):
        if self.uncond is None:
            return self.model(x, sigma, cond=self.cond)
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        denoised = self.model(x_in, sigma_in, cond=torch.cat([self.cond, self.uncond]))
        cond, uncond = denoised.chunk(2)
        return uncond + (cond - uncond) * self.scale


def args_for(c) -> list:
    args = [
        "--prompt", c["prompt"],
        "--width", str(c["width"]),
        "--height", str(c["height"]),
        "--steps", str(c["steps"]),
        "--cfg-scale", str(c["cfg_scale"]),
        "--sampler", A1111[c["sampler"]],
        "--schedule", c["schedule"],
        "--seed", str(c["seed"]),
    ]
    if c["negative_prompt"]:
        args += ["--negative-prompt", c["negative_prompt"]]
    for key, value in c["options"].items():
        args += ["--" + key.replace("_", "-"), str(value)]
    if c.get("init_image"):
        args += ["--init-image", c["init_image"], "--strength", str(c["strength"])]
    return args


@torch.no_grad()
def make(root: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = root / "pipeline_samplers"
    out.mkdir(parents=True, exist_ok=True)
    init_image(out / "init.png")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(MODEL), safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
    )
    plain = UNetDenoiser(pipe.unet, pipe.scheduler.alphas_cumprod)
    lcm = LCMDenoiser(pipe.unet, pipe.scheduler.alphas_cumprod)
    cases = []
    for c in CASES:
        if c["sampler"] in TIMESTEP_SAMPLERS:
            cases.append(make_timesteps_case(pipe, out, c))
            continue
        denoiser = lcm if c["sampler"] == "lcm" else plain
        cond, uncond = pipe.encode_prompt(
            c["prompt"], "cpu", 1, c["cfg_scale"] > 1.0, c["negative_prompt"] or None
        )
        model = CFGDenoiser(denoiser, cond, uncond if c["cfg_scale"] > 1.0 else None, c["cfg_scale"])
        sigmas = a1111_sigmas(denoiser, c["sampler"], c["schedule"], c["steps"])
        torch.manual_seed(c["seed"])
        shape = (1, 4, c["height"] // 8, c["width"] // 8)
        if c.get("init_image"):
            init, t_enc = encode_init(pipe, out, c)
            sigmas = sigmas[c["steps"] - t_enc - 1:]
            noise = torch.randn(shape)
            # The VAE's output is channels-last here; A1111 draws step noise with torch.randn of
            # the shape (its ImageRNG), which randn_like equals only on a contiguous tensor.
            x = (init + noise * sigmas[0]).contiguous()
        else:
            x = torch.randn(shape) * sigmas[0]
        fn = sampler_fn(c["sampler"], x, c["options"])
        latents = fn(model, x, sigmas, None)
        cases.append(save_case(pipe, out, c, latents, f"{len(sigmas) - 1} steps"))
    common.save_json(out / "cases.json", cases)


def encode_init(pipe, out, c):
    """The case's init image as scaled latents (a posterior sample) and A1111's t_enc."""
    image = pipe.image_processor.preprocess(Image.open(out / c["init_image"]).convert("RGB"))
    init = pipe.vae.encode(image).latent_dist.sample() * pipe.vae.config.scaling_factor
    return init, int(min(c["strength"], 0.999) * c["steps"])


def save_case(pipe, out, c, latents, what):
    """Decodes the case's final latents to its PNG and returns the case's cases.json entry."""
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
    name = f"{c['name']}.png"
    image.save(out / name)
    print(f"  {c['name']}: {what}")
    return dict(c, args=args_for(c), images=[name])


def make_timesteps_case(pipe, out, c):
    """One case of A1111's DDIM, PLMS or UniPC."""
    ac = pipe.scheduler.alphas_cumprod
    use_cfg = c["cfg_scale"] > 1.0
    cond, uncond = pipe.encode_prompt(c["prompt"], "cpu", 1, use_cfg, c["negative_prompt"] or None)

    def guided_eps(x, t):
        if not use_cfg:
            return pipe.unet(x, t, encoder_hidden_states=cond).sample
        both = pipe.unet(torch.cat([x, x]), torch.cat([t, t]),
                         encoder_hidden_states=torch.cat([cond, uncond])).sample
        e_cond, e_uncond = both.chunk(2)
        return e_uncond + (e_cond - e_uncond) * c["cfg_scale"]

    model = timesteps_samplers.EpsModel(guided_eps, ac, False)
    grid = timesteps_samplers.a1111_timesteps(c["steps"])
    torch.manual_seed(c["seed"])
    shape = (1, 4, c["height"] // 8, c["width"] // 8)
    kwargs = {}
    if c["sampler"] == "ddim":
        kwargs["eta"] = c["options"].get("eta", 0.0)
    if c.get("init_image"):
        init, t_enc = encode_init(pipe, out, c)
        noise = torch.randn(shape)
        a = ac[grid[t_enc]]
        x = (init * a.sqrt() + noise * (1 - a).sqrt()).contiguous()
        grid = grid[:t_enc]
        if c["sampler"] == "unipc":
            kwargs["img2img"] = True
    else:
        x = torch.randn(shape)
    latents = timesteps_samplers.SAMPLERS[c["sampler"]](model, x, grid, ac, **kwargs)
    return save_case(pipe, out, c, latents, f"{len(model.calls)} model calls")
