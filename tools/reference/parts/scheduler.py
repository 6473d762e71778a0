"""Fixtures for the samplers (src/scheduler/).

Each case builds a diffusers scheduler the way a pipeline switches schedulers
(`Cls.from_config(config, **overrides)`), records its timesteps, sigmas and init_noise_sigma,
and runs a full denoising loop with a deterministic stand-in for the UNet on a (1, 4, 8, 8)
sample. The initial latents and every step's noise come from ONE seeded torch CPU generator in
the order the SD pipelines draw them, so the Rust side replays the same stream.

The stand-in model (computed identically by the Rust test):
    model_output = 0.9 * tanh(x) + 0.05 * (t / 1000)
where x is the scaled model input and t the model timestep.
"""

import copy
import inspect

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

from common import MODELS, save_json, save_tensors

# Stable Diffusion 1.5's scheduler/scheduler_config.json.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# Stable Diffusion 2.1 (768-v)'s scheduler config.
SD21_V = {**SD15, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}

CLASSES = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}

SHAPE = (1, 4, 8, 8)


def fake_model(x, t):
    return 0.9 * torch.tanh(x) + 0.05 * (float(t) / 1000.0)


def build(sampler, schedule, config, steps):
    cls = CLASSES[sampler]
    if sampler == "dpmpp_2m":
        sched = cls.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                use_karras_sigmas=schedule == "karras")
    elif sampler == "euler":
        sched = cls.from_config(config, use_karras_sigmas=schedule == "karras")
    else:
        sched = cls.from_config(config)
    sched.set_timesteps(steps)
    if sampler == "euler_a" and schedule == "karras":
        # diffusers' EulerAncestral has no Karras option: walk EulerDiscrete's Karras sigmas.
        karras = EulerDiscreteScheduler.from_config(config, use_karras_sigmas=True)
        karras.set_timesteps(steps)
        sched.sigmas = karras.sigmas.clone()
        sched.timesteps = karras.timesteps.clone()
    return sched


def case_header(name, sampler, schedule, config, steps, seed, sched, **settings):
    """What a case records before its loop runs: how it was made (`settings` are the sampler's
    own, e.g. eta), and the scheduler's timesteps and initial noise sigma."""
    return {
        "name": name,
        "sampler": sampler,
        "schedule": schedule,
        "config": config,
        "steps": steps,
        "seed": seed,
        **settings,
        "timesteps": [float(t) for t in sched.timesteps],
        "init_noise_sigma": float(sched.init_noise_sigma),
    }


def run_loop(name, sched, gen, shape, steps, strength, case, step_kwargs):
    """The sampling loop of a pipeline with `fake_model` as the UNet: txt2img from
    `init_noise_sigma`-scaled noise, or (with `strength`) img2img as
    StableDiffusionImg2ImgPipeline does it: get_timesteps, then the clean latents (a stand-in for
    the VAE posterior draw), then the noise, then add_noise at the first remaining timestep.
    Records the start and every step's latents; adds the loop's facts to `case`."""
    tensors = {}
    timesteps = sched.timesteps
    if strength is None:
        latents = torch.randn(shape, generator=gen, dtype=torch.float32)
        tensors[f"{name}.initial"] = latents
        latents = latents * sched.init_noise_sigma
        start = 0
    else:
        init_timestep = min(int(steps * strength), steps)
        start = max(steps - init_timestep, 0) * sched.order
        timesteps = sched.timesteps[start:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        original = torch.randn(shape, generator=gen, dtype=torch.float32)
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        latents = sched.add_noise(original, noise, timesteps[:1])
        tensors[f"{name}.original"] = original
        tensors[f"{name}.noisy"] = latents
        case["strength"] = strength
    case["start_step"] = start
    for i, t in enumerate(timesteps):
        x_in = sched.scale_model_input(latents, t)
        eps = fake_model(x_in, t)
        latents = sched.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
        tensors[f"{name}.step{i}"] = latents
    case["num_loop_steps"] = len(timesteps)
    return tensors


def run_case(name, sampler, schedule, config, steps, seed, eta=0.0, strength=None):
    sched = build(sampler, schedule, config, steps)
    gen = torch.Generator("cpu").manual_seed(seed)
    case = case_header(name, sampler, schedule, config, steps, seed, sched, eta=eta)
    if hasattr(sched, "sigmas") and sampler in ("euler", "euler_a", "dpmpp_2m"):
        case["sigmas"] = [float(s) for s in sched.sigmas]
    extra = {}
    if sampler == "ddim":
        extra = {"eta": eta, "generator": gen}
    elif sampler in ("euler", "euler_a", "dpmpp_2m"):
        extra = {"generator": gen}
    return case, run_loop(name, sched, gen, SHAPE, steps, strength, case, extra)


def make(root):
    out = root / "scheduler"
    cases = []
    tensors = {}
    seed = 100

    def add(name, *args, **kwargs):
        nonlocal seed
        seed += 1
        case, t = run_case(name, *args, seed=seed, **kwargs)
        cases.append(case)
        tensors.update(t)

    for sampler in ["ddim", "pndm", "euler", "euler_a", "dpmpp_2m"]:
        schedules = ["default", "karras"] if sampler in ("euler", "euler_a", "dpmpp_2m") else ["default"]
        for schedule in schedules:
            for pred, config in [("eps", SD15), ("v", SD21_V)]:
                for steps in [4, 10]:
                    add(f"{sampler}_{schedule}_{pred}_{steps}", sampler, schedule, config, steps)
            add(f"{sampler}_{schedule}_eps_25", sampler, schedule, SD15, 25)
        for spacing in ["leading", "trailing", "linspace"]:
            cfg = {**SD15, "timestep_spacing": spacing}
            add(f"{sampler}_default_eps_10_{spacing}", sampler, "default", cfg, 10)
        if sampler not in ("pndm", "euler_a"):  # diffusers rejects "sample" for these
            cfg = {**SD15, "prediction_type": "sample"}
            add(f"{sampler}_default_sample_10", sampler, "default", cfg, 10)
        add(f"{sampler}_img2img_10", sampler, "default", SD15, 10, strength=0.55)
    add("euler_karras_img2img_10", "euler", "karras", SD15, 10, strength=0.7)
    add("dpmpp_2m_karras_img2img_10", "dpmpp_2m", "karras", SD15, 10, strength=0.7)
    add("ddim_eta_0.5_10", "ddim", "default", SD15, 10, eta=0.5)
    add("ddim_eta_1_img2img_10", "ddim", "default", SD15, 10, eta=1.0, strength=0.6)
    # Other beta schedules and the "sigma_min" final sigma.
    lin = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
    cos = {"beta_schedule": "squaredcos_cap_v2"}
    add("euler_linear_betas_10", "euler", "default", lin, 10)
    add("ddim_cosine_betas_10", "ddim", "default", cos, 10)
    add("dpmpp_2m_cosine_betas_10", "dpmpp_2m", "default", cos, 10)
    add("dpmpp_2m_sigma_min_final_10", "dpmpp_2m", "default",
        {**SD15, "final_sigmas_type": "sigma_min"}, 10)
    add("dpmpp_2m_default_eps_20", "dpmpp_2m", "default", SD15, 20)

    # The training schedules themselves.
    schedules = {}
    for key, cfg in [("scaled_linear", SD15), ("linear", lin), ("squaredcos_cap_v2", cos)]:
        schedules[f"alphas_cumprod.{key}"] = EulerDiscreteScheduler.from_config(cfg).alphas_cumprod

    save_tensors(out / "loops.safetensors", tensors)
    save_tensors(out / "schedules.safetensors", schedules)
    save_json(out / "cases.json", {"shape": list(SHAPE), "cases": cases})
    cfg = copy.deepcopy(SD15)
    save_json(MODELS / "tiny-sd15" / "scheduler" / "scheduler_config.json", cfg)
    make_classes(out)


# The other diffusers classes (`sd --sampler NAME --sampler-flavor diffusers`): the class and
# the keyword arguments `from_config` gets, and whether it reads `use_karras_sigmas`.
MORE_CLASSES = {
    "heun": (HeunDiscreteScheduler, {}, True),
    "lms": (LMSDiscreteScheduler, {}, True),
    "dpm2": (KDPM2DiscreteScheduler, {}, True),
    "dpm2_a": (KDPM2AncestralDiscreteScheduler, {}, True),
    "dpmpp_2m_sde": (DPMSolverMultistepScheduler,
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, True),
    "dpmpp_2m_sde_heun": (DPMSolverMultistepScheduler,
                          {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                           "solver_type": "heun"}, True),
    "ddpm": (DDPMScheduler, {}, False),
    "lcm": (LCMScheduler, {}, False),
    "tcd": (TCDScheduler, {}, False),
    "unipc": (UniPCMultistepScheduler, {"solver_type": "bh2", "solver_order": 2}, True),
    "deis": (DEISMultistepScheduler, {"solver_order": 2}, True),
    "dpmpp_2s": (DPMSolverSinglestepScheduler,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2}, True),
    "dpmpp_sde": (DPMSolverSDEScheduler, {}, True),
}

# The first five classes again, for the zero terminal SNR cases.
ALL_CLASSES = {
    **MORE_CLASSES,
    "ddim": (DDIMScheduler, {}, False),
    "euler": (EulerDiscreteScheduler, {}, True),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, False),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2},
                 True),
}

# Samplers whose timesteps ignore the spacing keys (no spacing cases for them).
OWN_GRID = {"lcm", "tcd"}

# A smaller sample than the loops above: these cases only add classes.
CLASS_SHAPE = (1, 4, 4, 4)


def run_class_case(name, sampler, schedule, config, steps, seed, strength=None, step_kwargs=None):
    """One loop as `run_case`, for the classes of MORE_CLASSES; `step_kwargs` (eta, ...) go to
    every `step` call and are recorded as the sampler options."""
    cls, overrides, karras = ALL_CLASSES[sampler]
    overrides = dict(overrides)
    if karras:
        overrides["use_karras_sigmas"] = schedule == "karras"
    sched = cls.from_config(config, **overrides)
    sched.set_timesteps(steps)
    step_kwargs = dict(step_kwargs or {})
    case = case_header(
        name, sampler, schedule, config, steps, seed, sched, options=dict(step_kwargs)
    )
    gen = torch.Generator("cpu").manual_seed(seed)
    if "generator" in inspect.signature(sched.step).parameters:
        step_kwargs["generator"] = gen
    if hasattr(sched, "noise_sampler"):
        # DPMSolverSDE: i.i.d. noise from the generator instead of torchsde's Brownian tree
        # (what sd does; each increment has the same distribution).
        sched.noise_sampler = lambda sigma, sigma_next: torch.randn(
            CLASS_SHAPE, generator=gen, dtype=torch.float32)
    return case, run_loop(name, sched, gen, CLASS_SHAPE, steps, strength, case, step_kwargs)


def make_classes(out):
    cases = []
    tensors = {}
    seed = 500

    def add(name, *args, **kwargs):
        nonlocal seed
        seed += 1
        case, t = run_class_case(name, *args, seed=seed, **kwargs)
        cases.append(case)
        tensors.update(t)

    for sampler, (_, _, karras) in MORE_CLASSES.items():
        add(f"{sampler}_default_eps_6", sampler, "default", SD15, 6)
        add(f"{sampler}_default_v_6", sampler, "default", SD21_V, 6)
        if sampler not in OWN_GRID:
            add(f"{sampler}_default_eps_5_leading", sampler, "default",
                {**SD15, "timestep_spacing": "leading"}, 5)
            add(f"{sampler}_default_eps_5_trailing", sampler, "default",
                {**SD15, "timestep_spacing": "trailing"}, 5)
        if karras:
            add(f"{sampler}_karras_eps_6", sampler, "karras", SD15, 6)
        add(f"{sampler}_img2img_10", sampler, "default", SD15, 10, strength=0.6)
        if karras:
            add(f"{sampler}_karras_img2img_10", sampler, "karras", SD15, 10, strength=0.6)

    add("ddpm_default_eps_8_clip", "ddpm", "default", {**SD15, "clip_sample": True}, 8)
    add("ddpm_linspace_fixed_large_6", "ddpm", "default",
        {**SD15, "timestep_spacing": "linspace", "variance_type": "fixed_large"}, 6)
    add("tcd_gamma_0_6", "tcd", "default", SD15, 6, step_kwargs={"eta": 0.0})
    add("tcd_gamma_0.7_4", "tcd", "default", SD15, 4, step_kwargs={"eta": 0.7})
    add("lcm_default_eps_4", "lcm", "default", SD15, 4)
    # Zero terminal SNR (rescale_betas_zero_snr) with trailing spacing, as recommended for
    # v-prediction models; epsilon too for the samplers that take it.
    zsnr_v = {**SD21_V, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    zsnr_eps = {**SD15, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    for sampler in ["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "ddpm",
                    "lcm", "tcd"]:
        add(f"{sampler}_zero_snr_v_6", sampler, "default", zsnr_v, 6)
    add("ddim_zero_snr_v_img2img_10", "ddim", "default", zsnr_v, 10, strength=0.6)
    add("euler_zero_snr_v_img2img_10", "euler", "default", zsnr_v, 10, strength=0.6)
    add("euler_zero_snr_eps_6", "euler", "default", zsnr_eps, 6)
    add("euler_zero_snr_v_linspace_6", "euler", "default",
        {**zsnr_v, "timestep_spacing": "linspace"}, 6)
    add("dpmpp_sde_s_noise_0.5_6", "dpmpp_sde", "default", SD15, 6, step_kwargs={"s_noise": 0.5})
    add("unipc_default_eps_20", "unipc", "default", SD15, 20)
    add("deis_default_eps_20", "deis", "default", SD15, 20)
    add("dpmpp_2s_default_eps_7", "dpmpp_2s", "default", SD15, 7)
    add("dpmpp_2s_img2img_9", "dpmpp_2s", "default", SD15, 9, strength=0.6)
    # Euler's churn as diffusers' step() applies it; the window leaves some steps unchurned
    # (and diffusers draws no noise for those).
    add("euler_churn_6", "euler", "default", SD15, 6, step_kwargs={"s_churn": 1.0})
    add("euler_churn_window_karras_6", "euler", "karras", SD15, 6,
        step_kwargs={"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.003})
    add("euler_churn_v_6", "euler", "default", SD21_V, 6, step_kwargs={"s_churn": 0.5})

    save_tensors(out / "classes.safetensors", tensors)
    save_json(out / "classes.json", {"shape": list(CLASS_SHAPE), "cases": cases})
