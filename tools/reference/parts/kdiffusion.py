"""Fixtures for the k-diffusion flavor of the samplers (src/scheduler/kdiff.rs, k_*.rs, sigmas.rs).

k-diffusion's own `sample_*` functions (k-diffusion==0.1.1.post1; `sample_ipndm`, which that
release lacks, is written out below as ComfyUI's k-diffusion copy has it) run a whole denoising
loop on a (1, 4, 8, 8) sample with a deterministic stand-in for the UNet, wrapped the way
AUTOMATIC1111's CompVisDenoiser wraps a model:

    eps = 0.9 * tanh(x * c_in) + 0.05 * t / 1000,   c_in = 1 / sqrt(sigma^2 + 1),
    t = sigma_to_t(sigma) (log-sigma interpolation of the training sigmas)

The sigma schedules are A1111's (modules/sd_schedulers.py), written out here. Noise: the global
torch generator is seeded with the case's seed (torch.manual_seed(seed) equals
torch.Generator().manual_seed(seed)); the initial noise is torch.randn, and every sampler draws
its step noise with torch.randn_like from the same generator, in k-diffusion's order. That is
what A1111 does with RNG=CPU, batch size 1 and ENSD 0, except for the Brownian-tree samplers
(DPM++ SDE, 2M SDE, 3M SDE): there the reference is given a randn noise sampler instead of the
Brownian tree (bit parity with torchsde's tree is out of reach; the statistics are the same).

Each case records the sigma list, the model timesteps, the sample the model sees at the start of
every step (k-diffusion's callback x) and the final sample.
"""

import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler
from scipy import stats

from common import save_json, save_tensors

SHAPE = (1, 4, 8, 8)

SD15 = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}
SD15_V = {**SD15, "prediction_type": "v_prediction"}



def _load():
    spec = importlib.util.find_spec("k_diffusion")
    root = Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType("kd")
    pkg.__path__ = [str(root)]
    sys.modules["kd"] = pkg
    utils = types.ModuleType("kd.utils")

    def append_dims(x, target_dims):
        dims_to_append = target_dims - x.ndim
        return x[(...,) + (None,) * dims_to_append]

    utils.append_dims = append_dims
    sys.modules["kd.utils"] = utils
    pkg.utils = utils
    mods = {}
    for name in ["sampling", "external"]:
        s = importlib.util.spec_from_file_location(f"kd.{name}", root / f"{name}.py")
        m = importlib.util.module_from_spec(s)
        sys.modules[f"kd.{name}"] = m
        setattr(pkg, name, m)
        s.loader.exec_module(m)
        mods[name] = m
    return mods["sampling"], mods["external"]


sampling, external = _load()


def fake_eps(x, t):
    return 0.9 * torch.tanh(x) + 0.05 * (t.float() / 1000.0)


class FakeEps(external.DiscreteEpsDDPMDenoiser):
    def get_eps(self, x, t, **kwargs):
        return fake_eps(x, t)


class FakeV(external.DiscreteVDDPMDenoiser):
    def get_v(self, x, t, **kwargs):
        return fake_eps(x, t)


def model_for(config):
    ac = EulerDiscreteScheduler.from_config(config).alphas_cumprod
    cls = FakeV if config.get("prediction_type") == "v_prediction" else FakeEps
    return cls(None, ac, quantize=False)


# --- A1111's schedules (modules/sd_schedulers.py), restated ---------------------------------

def sched_discrete(m, n):
    return m.get_sigmas(n)


def sched_karras(m, n):
    return sampling.get_sigmas_karras(n, m.sigmas[0].item(), m.sigmas[-1].item())


def sched_exponential(m, n):
    return sampling.get_sigmas_exponential(n, m.sigmas[0].item(), m.sigmas[-1].item())


def sched_sgm_uniform(m, n):
    start = m.sigma_to_t(torch.tensor(m.sigmas[-1].item()))
    end = m.sigma_to_t(torch.tensor(m.sigmas[0].item()))
    sigs = [m.t_to_sigma(ts) for ts in torch.linspace(start, end, n + 1)[:-1]]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def sched_normal(m, n):
    start = m.sigma_to_t(torch.tensor(m.sigmas[-1].item()))
    end = m.sigma_to_t(torch.tensor(m.sigmas[0].item()))
    sigs = [m.t_to_sigma(ts) for ts in torch.linspace(start, end, n)]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def sched_polyexponential(m, n):
    return sampling.get_sigmas_polyexponential(n, m.sigmas[0].item(), m.sigmas[-1].item(), rho=1.0)


def sched_simple(m, n):
    sigs = []
    ss = len(m.sigmas) / n
    for x in range(n):
        sigs += [float(m.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def sched_ddim_uniform(m, n):
    sigs = []
    ss = max(len(m.sigmas) // n, 1)
    x = 1
    while x < len(m.sigmas):
        sigs += [float(m.sigmas[x])]
        x += ss
    sigs = sigs[::-1]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def sched_beta(m, n, alpha=0.6, beta=0.6):
    sigma_min, sigma_max = m.sigmas[0].item(), m.sigmas[-1].item()
    timesteps = 1 - np.linspace(0, 1, n)
    timesteps = [stats.beta.ppf(x, alpha, beta) for x in timesteps]
    sigmas = [sigma_min + (x * (sigma_max - sigma_min)) for x in timesteps]
    sigmas += [0.0]
    return torch.FloatTensor(sigmas)


def sched_kl_optimal(m, n):
    alpha_min = torch.arctan(torch.tensor(m.sigmas[0].item()))
    alpha_max = torch.arctan(torch.tensor(m.sigmas[-1].item()))
    step_indices = torch.arange(n + 1)
    return torch.tan(step_indices / n * alpha_min + (1.0 - step_indices / n) * alpha_max)


AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def sched_ays(m, n, table=AYS_SD15):
    def loglinear_interp(t_steps, num_steps):
        xs = np.linspace(0, 1, len(t_steps))
        ys = np.log(t_steps[::-1])
        new_xs = np.linspace(0, 1, num_steps)
        new_ys = np.interp(new_xs, xs, ys)
        return np.exp(new_ys)[::-1].copy()

    sigmas = list(table)
    if n != len(sigmas):
        sigmas = np.append(loglinear_interp(sigmas, n), [0.0])
    else:
        sigmas.append(0.0)
    return torch.FloatTensor(sigmas)


SCHEDULES = {
    "discrete": sched_discrete,
    "karras": sched_karras,
    "exponential": sched_exponential,
    "sgm_uniform": sched_sgm_uniform,
    "simple": sched_simple,
    "ddim_uniform": sched_ddim_uniform,
    "beta": sched_beta,
    "kl_optimal": sched_kl_optimal,
    "align_your_steps": sched_ays,
    "normal": sched_normal,
    "polyexponential": sched_polyexponential,
}

# A1111's samplers_k_diffusion options: the "Automatic" schedule and discard_next_to_last_sigma.
A1111_DEFAULT = {
    "dpmpp_2m": "karras", "dpmpp_sde": "karras", "dpmpp_2s_a": "karras", "dpm2": "karras",
    "dpm2_a": "karras", "dpmpp_2m_sde": "exponential", "dpmpp_2m_sde_heun": "exponential",
    "dpmpp_3m_sde": "exponential", "restart": "karras",
}
DISCARD = {"dpm2", "dpm2_a", "dpmpp_3m_sde"}


def a1111_sigmas(m, sampler, schedule, steps, sdxl=False):
    if schedule == "default":
        schedule = A1111_DEFAULT.get(sampler, "discrete")
    discard = sampler in DISCARD
    n = steps + (1 if discard else 0)
    if schedule == "align_your_steps":
        sigmas = sched_ays(m, n, AYS_SDXL if sdxl else AYS_SD15)
    else:
        sigmas = SCHEDULES[schedule](m, n)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM as ComfyUI's k-diffusion copy has it (k-diffusion 0.1.1 lacks it)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    x_next = x
    buffer_model = []
    for i in range(len(sigmas) - 1):
        t_cur = sigmas[i]
        t_next = sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur * s_in, **extra_args)
        if callback is not None:
            callback({"x": x_cur, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:
            x_next = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
        elif order == 4:
            x_next = x_cur + (t_next - t_cur) * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2] - 9 * buffer_model[-3]) / 24
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return x_next


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A1111's LCM sampler: take the model's denoised estimate, then noise it to the next
    sigma with fresh noise (none after the last step)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x})
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * torch.randn_like(x)
    return x


@torch.no_grad()
def sample_restart(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0):
    """A1111's Restart sampler (modules/sd_samplers_extra.py, restart_sampler with its automatic
    restart list), restated: Heun steps down the list; from 20 steps the list becomes Karras
    sigmas with fewer steps, and after the step that reaches the sigma nearest 0.1 the run jumps
    back to the sigma nearest 2 (fresh noise for the difference) and walks Karras steps down
    again, once (9 steps) or from 36 steps twice (steps // 4 each)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    restart = None
    if n >= 20:
        length, times = (n // 4, 2) if n >= 36 else (9, 1)
        sigmas = sampling.get_sigmas_karras(n - length * times, sigmas[-2].item(),
                                            sigmas[0].item())
        restart = (length + 1, times)
    pairs = []
    at = int(torch.argmin(abs(sigmas - 0.1), dim=0)) if restart else None
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if restart and i + 1 == at:
            top = int(torch.argmin(abs(sigmas - 2), dim=0))
            if top < at:
                segment = sampling.get_sigmas_karras(restart[0], sigmas[at].item(),
                                                     sigmas[top].item())[:-1]
                for _ in range(restart[1]):
                    pairs.extend(zip(segment[:-1], segment[1:]))
    last = None
    for step, (hi, lo) in enumerate(pairs):
        if last is not None and last < hi:
            x = x + torch.randn_like(x) * s_noise * (hi ** 2 - last ** 2) ** 0.5
        denoised = model(x, hi * s_in, **extra_args)
        d = sampling.to_d(x, hi, denoised)
        if callback is not None:
            callback({"x": x, "i": step, "sigma": lo, "sigma_hat": hi, "denoised": denoised})
        dt = lo - hi
        if lo == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = sampling.to_d(x_2, lo, model(x_2, lo * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
        last = lo
    return x


def sampler_fn(sampler, x, opts):
    """The k-diffusion call for our sampler name, with a randn noise sampler where needed."""
    randn_noise = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731
    eta = opts.get("eta", 1.0)
    s_noise = opts.get("s_noise", 1.0)
    churn = {k: opts[k] for k in ("s_churn", "s_tmin", "s_tmax", "s_noise") if k in opts}
    table = {
        "euler": lambda m, x, s, cb: sampling.sample_euler(m, x, s, callback=cb, disable=True, **churn),
        "heun": lambda m, x, s, cb: sampling.sample_heun(m, x, s, callback=cb, disable=True, **churn),
        "dpm2": lambda m, x, s, cb: sampling.sample_dpm_2(m, x, s, callback=cb, disable=True, **churn),
        "euler_a": lambda m, x, s, cb: sampling.sample_euler_ancestral(m, x, s, callback=cb, disable=True, eta=eta, s_noise=s_noise),
        "dpm2_a": lambda m, x, s, cb: sampling.sample_dpm_2_ancestral(m, x, s, callback=cb, disable=True, eta=eta, s_noise=s_noise),
        "lms": lambda m, x, s, cb: sampling.sample_lms(m, x, s, callback=cb, disable=True),
        "dpmpp_2m": lambda m, x, s, cb: sampling.sample_dpmpp_2m(m, x, s, callback=cb, disable=True),
        "dpmpp_2s_a": lambda m, x, s, cb: sampling.sample_dpmpp_2s_ancestral(m, x, s, callback=cb, disable=True, eta=eta, s_noise=s_noise),
        "dpmpp_sde": lambda m, x, s, cb: sampling.sample_dpmpp_sde(m, x, s, callback=cb, disable=True, eta=eta, s_noise=s_noise, noise_sampler=randn_noise),
        "dpmpp_2m_sde": lambda m, x, s, cb: sampling.sample_dpmpp_2m_sde(m, x, s, callback=cb, disable=True, eta=eta, s_noise=s_noise, noise_sampler=randn_noise),
        "dpmpp_2m_sde_heun": lambda m, x, s, cb: sampling.sample_dpmpp_2m_sde(m, x, s, callback=cb, disable=True, eta=eta, s_noise=s_noise, noise_sampler=randn_noise, solver_type="heun"),
        "dpmpp_3m_sde": lambda m, x, s, cb: sampling.sample_dpmpp_3m_sde(m, x, s, callback=cb, disable=True, eta=eta, s_noise=s_noise, noise_sampler=randn_noise),
        "ipndm": lambda m, x, s, cb: sample_ipndm(m, x, s, callback=cb, disable=True),
        "lcm": lambda m, x, s, cb: sample_lcm(m, x, s, callback=cb, disable=True),
        "restart": lambda m, x, s, cb: sample_restart(m, x, s, callback=cb, disable=True, s_noise=s_noise),
    }
    return table[sampler]


class Recorder:
    """Wraps the model to list the timesteps it is called at (and the samples it is given)."""

    def __init__(self, model):
        self.model = model
        self.timesteps = []
        self.inputs = []

    def __call__(self, x, sigma, **kwargs):
        self.timesteps.append(float(self.model.sigma_to_t(sigma)[0]))
        self.inputs.append(x.clone())
        return self.model(x, sigma, **kwargs)


def dpm_solver_range(m, run, steps, img2img):
    """sigma_min, sigma_max and n as A1111 hands them to sample_dpm_fast / sample_dpm_adaptive
    (modules/sd_samplers_kdiffusion.py): txt2img passes the ends of the training sigma table and
    n = steps; img2img the first and the last nonzero sigma of its part of the schedule and
    n = its step count."""
    if img2img:
        return run[-2], run[0], len(run) - 1
    return m.sigmas[0].item(), m.sigmas[-1].item(), steps


def run_dpm_solver(sampler, rec, x, run, m, steps, img2img, opts):
    """DPM fast / DPM adaptive at A1111's settings (eta from the options, 1 by default).

    The reported samples are what our loops report as steps: for DPM fast every model
    evaluation (n of them, as k-diffusion's progress bar counts it) with the sample it was
    given; for DPM adaptive, whose step count is not known in advance, the share of the
    -log(sigma) range covered, in len(run) - 1 parts: after each accepted step one report per
    part completed (the last part when the run ends), with k-diffusion's callback sample."""
    sigma_min, sigma_max, n = dpm_solver_range(m, run, steps, img2img)
    eta = opts.get("eta", 1.0)
    s_noise = opts.get("s_noise", 1.0)
    if sampler == "dpm_fast":
        out = sampling.sample_dpm_fast(rec, x, sigma_min, sigma_max, n, disable=True,
                                       eta=eta, s_noise=s_noise)
        return out, list(rec.inputs)
    parts = len(run) - 1
    t_start = float(-torch.as_tensor(sigma_max, dtype=torch.float32).log())
    t_end = float(-torch.as_tensor(sigma_min, dtype=torch.float32).log())
    starts = []
    accepted = [0]

    def callback(d):
        if d["n_accept"] == accepted[0]:
            return
        accepted[0] = d["n_accept"]
        done = (float(d["t"]) - t_start) / (t_end - t_start)
        due = min(math.floor(done * parts), parts - 1)
        while len(starts) < due:
            starts.append(d["x"].clone())

    out = sampling.sample_dpm_adaptive(rec, x, sigma_min, sigma_max, callback=callback,
                                       disable=True, eta=eta, s_noise=s_noise)
    while len(starts) < parts:
        starts.append(out.clone())
    return out, starts


def run_case(name, sampler, schedule, config, steps, seed, opts=None, strength=None, sigmas=None):
    opts = dict(opts or {})
    m = model_for(config)
    if sigmas is not None:
        full = torch.tensor(sigmas, dtype=torch.float32)
    else:
        full = a1111_sigmas(m, sampler, schedule, steps)
    torch.manual_seed(seed)
    tensors = {}
    case = {"name": name, "sampler": sampler, "schedule": schedule, "config": config,
            "steps": steps, "seed": seed, "options": opts,
            "sigmas": [float(s) for s in full]}
    if sigmas is not None:
        case["custom_sigmas"] = sigmas
    if strength is None:
        x = torch.randn(SHAPE)
        tensors[f"{name}.initial"] = x.clone()
        run = full
        x = x * run[0]
        case["offset"] = 0
    else:
        t_enc = int(min(strength, 0.999) * steps)
        offset = steps - t_enc - 1
        run = full[offset:]
        original = torch.randn(SHAPE)
        noise = torch.randn(SHAPE)
        x = original + noise * run[0]
        tensors[f"{name}.original"] = original
        case["offset"] = offset
        case["strength"] = strength
    rec = Recorder(m)
    if sampler in ("dpm_fast", "dpm_adaptive"):
        out, starts = run_dpm_solver(sampler, rec, x, run, m, steps, strength is not None, opts)
    else:
        starts = []
        fn = sampler_fn(sampler, x, opts)
        out = fn(rec, x, run, lambda d: starts.append(d["x"].clone()))
    for i, s in enumerate(starts):
        tensors[f"{name}.start{i}"] = s
    tensors[f"{name}.final"] = out
    case["timesteps"] = rec.timesteps
    case["num_steps"] = len(starts)
    return case, tensors


def make(root):
    out = root / "scheduler_kdiffusion"
    cases, tensors = [], {}
    seed = 500

    def add(name, *args, **kwargs):
        nonlocal seed
        seed += 1
        case, t = run_case(name, *args, seed=seed, **kwargs)
        cases.append(case)
        tensors.update(t)

    samplers = ["euler", "euler_a", "heun", "dpm2", "dpm2_a", "lms", "dpmpp_2m", "dpmpp_2s_a",
                "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "ipndm"]
    for s in samplers:
        add(f"{s}_default_eps_6", s, "default", SD15, 6)
        add(f"{s}_karras_v_5", s, "karras", SD15_V, 5)
        add(f"{s}_discrete_eps_5", s, "discrete", SD15, 5)
        add(f"{s}_img2img_0.6", s, "default", SD15, 8, strength=0.6)
    # Schedules added later run at the end, so that earlier cases keep their seeds.
    later = ["normal", "polyexponential"]
    for sched in SCHEDULES:
        if sched not in later:
            add(f"euler_{sched}_eps_7", "euler", sched, SD15, 7)
    add("dpmpp_2m_align_your_steps_10", "dpmpp_2m", "align_your_steps", SD15, 10)
    add("euler_custom_sigmas", "euler", "default", SD15, 4, sigmas=[14.6, 5.0, 1.5, 0.3, 0.0])
    add("euler_churn", "euler", "karras", SD15, 6, opts={"s_churn": 1.0})
    add("heun_churn_window", "heun", "karras", SD15, 6,
        opts={"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.003})
    add("dpm2_churn", "dpm2", "karras", SD15, 5, opts={"s_churn": 0.5})
    add("euler_a_eta_0.5", "euler_a", "default", SD15, 6, opts={"eta": 0.5, "s_noise": 0.9})
    add("dpmpp_2m_sde_eta_0", "dpmpp_2m_sde", "default", SD15, 6, opts={"eta": 0.0})
    add("dpmpp_3m_sde_eta_0.5", "dpmpp_3m_sde", "karras", SD15_V, 7, opts={"eta": 0.5})
    add("dpmpp_sde_img2img_karras", "dpmpp_sde", "karras", SD15, 8, strength=0.6)
    add("heun_img2img_karras", "heun", "karras", SD15, 10, strength=0.6)
    for sched in later:
        add(f"euler_{sched}_eps_7", "euler", sched, SD15, 7)
    # DPM fast: n = 6, 7, 5 (n mod 3 = 0, 1, 2), v-prediction, img2img, eta 0 and 0.5.
    add("dpm_fast_default_eps_6", "dpm_fast", "default", SD15, 6)
    add("dpm_fast_default_eps_7", "dpm_fast", "default", SD15, 7)
    add("dpm_fast_karras_v_5", "dpm_fast", "karras", SD15_V, 5)
    add("dpm_fast_img2img_0.6", "dpm_fast", "default", SD15, 8, strength=0.6)
    add("dpm_fast_eta_0", "dpm_fast", "default", SD15, 10, opts={"eta": 0.0})
    add("dpm_fast_eta_0.5", "dpm_fast", "default", SD15_V, 9, opts={"eta": 0.5, "s_noise": 0.9})
    # DPM adaptive: its own step count; the steps only set the progress parts (and the ends).
    add("dpm_adaptive_default_eps_10", "dpm_adaptive", "default", SD15, 10)
    add("dpm_adaptive_karras_v_8", "dpm_adaptive", "karras", SD15_V, 8)
    add("dpm_adaptive_img2img_0.6", "dpm_adaptive", "default", SD15, 12, strength=0.6)
    add("dpm_adaptive_eta_0", "dpm_adaptive", "default", SD15, 20, opts={"eta": 0.0})
    # Restart: no restart under 20 steps, one of 9 steps from 20, two of steps // 4 from 36.
    add("restart_default_eps_10", "restart", "default", SD15, 10)
    add("restart_default_eps_20", "restart", "default", SD15, 20)
    add("restart_default_v_40", "restart", "default", SD15_V, 40)
    add("restart_discrete_eps_24", "restart", "discrete", SD15, 24, opts={"s_noise": 0.9})
    add("restart_img2img_0.6", "restart", "default", SD15, 40, strength=0.6)

    # Schedule-only checks (no loop): more step counts, and the SDXL AYS table.
    m = model_for(SD15)
    schedule_lists = {}
    for sched in SCHEDULES:
        for n in [1, 3, 7, 10, 25]:
            schedule_lists[f"{sched}_{n}"] = [float(s) for s in a1111_sigmas(m, "euler", sched, n)]
    schedule_lists["align_your_steps_sdxl_7"] = [float(s) for s in sched_ays(m, 7, AYS_SDXL)]
    schedule_lists["dpm2_default_10"] = [float(s) for s in a1111_sigmas(m, "dpm2", "default", 10)]

    save_tensors(out / "loops.safetensors", tensors)
    save_json(out / "cases.json", {"shape": list(SHAPE), "cases": cases,
                                    "schedules": schedule_lists})
