"""Fixtures for AUTOMATIC1111's own timestep samplers "DDIM", "DDIM CFG++", "PLMS" and "UniPC"
(src/scheduler/a1111_*.rs).

A1111 does not run these through k-diffusion: modules/sd_samplers_timesteps.py walks the integer
timesteps `clip(range(0, 1000, 1000 // steps) + 1, 0, 999)` (so 7 steps plan 8 timesteps) with
the model wrapped to return eps (a v-prediction output is turned into eps with the cumulative
alphas at int(t)), and modules/sd_samplers_timesteps_impl.py holds the three loops. The loops
are restated below, in our words, from A1111 v1.10:

- DDIM visits timesteps[len-1] ... timesteps[1] (one model call fewer than planned) and ends at
  the cumulative alpha of timesteps[0]; it draws a noise tensor every step, scaled by
  eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)).
- DDIM CFG++ (ddim_cfgpp, new in v1.10) is DDIM with two changes: it sets the CFG denoiser's
  scale multiplier to 1/12.5 (the guidance scale times it mixes the prompt's and the negative
  prompt's eps), and the direction term uses the unconditional eps of the same call (the CFG
  denoiser keeps it when asked), the clean-sample estimate the guided one. It takes DDIM's eta.
- PLMS visits the same timesteps; its first step is a pseudo improved Euler step (a second model
  call at the next timestep), the next ones Adams-Bashforth of order 2, 3, 4 on eps.
- UniPC is A1111's port of the UniPC reference code (modules/models/diffusion/uni_pc) with
  A1111's defaults: variant bh1, order 3, skip type time_uniform, lower_order_final on,
  predict_x0, multistep. Continuous time t in [1/N, 1] (N = 1000) maps to the model's
  (t - 1/N) * 1000 (fractional); log alpha is linearly interpolated over t_i = (i + 1) / N. It
  runs as many steps as there are planned timesteps, from t = 1 (txt2img) or
  timesteps[-1] / 1000 + 1 / 1000 (img2img) down to 1/N, with no model call at the end.

img2img (A1111's default, img2img_fix_steps off): t_enc = int(min(strength, 0.999) * steps), the
sample is noised to the cumulative alpha of timesteps[t_enc] and the sampler runs on
timesteps[:t_enc].

Step-level cases use the k-diffusion fixtures' stand-in model (eps or v =
0.9 * tanh(x) + 0.05 * t / 1000, t the model's fractional timestep) and record the model
timesteps, the sample at every model call and the final sample. DDIM CFG++ cases
(scheduler_a1111/cfgpp.*) add a stand-in negative-prompt output, 0.5 * tanh(x) + 0.2 * x -
0.03 * t / 1000, mixed with the first by CFG at the case's scale, each turned into eps first as
A1111's CFG denoiser sees them. Noise: torch's global generator
seeded with the case's seed (initial noise torch.randn, then DDIM's per-step randn_like).
End-to-end cases (through `sd generate` with the A1111 names) are in pipeline_samplers.py.
"""

import torch
from diffusers import EulerDiscreteScheduler

from common import save_json, save_tensors

SHAPE = (1, 4, 8, 8)
SD15 = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "num_train_timesteps": 1000, "steps_offset": 1}
SD15_V = {**SD15, "prediction_type": "v_prediction"}


def a1111_timesteps(steps):
    """The integer timesteps A1111 plans for `steps` steps (ascending)."""
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


class EpsModel:
    """A model wrapped as A1111's CompVisTimestepsDenoiser / CompVisTimestepsVDenoiser: called
    with the fractional timestep, returns eps."""

    def __init__(self, output_fn, alphas_cumprod, v_prediction):
        self.output_fn, self.ac, self.v = output_fn, alphas_cumprod, v_prediction
        self.calls = []
        self.inputs = []

    def __call__(self, x, t):
        t = t.reshape(-1).expand(x.shape[0])
        self.calls.append(float(t[0]))
        self.inputs.append(x.clone())
        out = self.output_fn(x, t)
        if not self.v:
            return out
        i = t.to(torch.int)
        return self.ac[i].sqrt()[:, None, None, None] * out + (1 - self.ac[i]).sqrt()[:, None, None, None] * x


@torch.no_grad()
def ddim(model, x, timesteps, alphas_cumprod, eta=0.0):
    a = alphas_cumprod[timesteps]
    a_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    noise_scale = eta * ((1 - a_prev) / (1 - a.double()) * (1 - a.double() / a_prev)).sqrt()
    ones = x.new_ones([x.shape[0]])
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        eps = model(x, timesteps[k].item() * ones)
        a_t = a[k].item() * ones
        a_p = a_prev[k].item() * ones
        s_t = noise_scale[k].item() * ones
        x0 = (x - (1 - a[k]).sqrt().item() * ones * eps) / a_t.sqrt()
        direction = (1.0 - a_p - s_t**2).sqrt() * eps
        x = a_p.sqrt() * x0 + direction + s_t * torch.randn_like(x)
    return x


class CfgEpsModel(EpsModel):
    """Two outputs (the prompt's, the negative prompt's) from `outputs_fn`, each turned into eps,
    mixed by CFG as A1111's CFGDenoiser mixes them: uncond + (cond - uncond) * scale *
    scale_multiplier. Like that denoiser it keeps the last call's unconditional eps."""

    def __init__(self, outputs_fn, scale, alphas_cumprod, v_prediction):
        super().__init__(None, alphas_cumprod, v_prediction)
        self.outputs_fn, self.scale = outputs_fn, scale
        self.scale_multiplier = 1.0
        self.last_uncond = None

    def eps(self, out, x, t):
        if not self.v:
            return out
        i = t.to(torch.int)
        return self.ac[i].sqrt()[:, None, None, None] * out + (1 - self.ac[i]).sqrt()[:, None, None, None] * x

    def __call__(self, x, t):
        t = t.reshape(-1).expand(x.shape[0])
        self.calls.append(float(t[0]))
        self.inputs.append(x.clone())
        cond, uncond = self.outputs_fn(x, t)
        cond, uncond = self.eps(cond, x, t), self.eps(uncond, x, t)
        self.last_uncond = uncond.clone()
        return uncond + (cond - uncond) * (self.scale * self.scale_multiplier)


@torch.no_grad()
def ddim_cfgpp(model, x, timesteps, alphas_cumprod, eta=0.0):
    """DDIM with the CFG scale divided by 12.5 and the direction along the unconditional eps."""
    model.scale_multiplier = 1 / 12.5
    a = alphas_cumprod[timesteps]
    a_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    noise_scale = eta * ((1 - a_prev) / (1 - a.double()) * (1 - a.double() / a_prev)).sqrt()
    ones = x.new_ones([x.shape[0]])
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        guided = model(x, timesteps[k].item() * ones)
        uncond = model.last_uncond
        a_t = a[k].item() * ones
        a_p = a_prev[k].item() * ones
        s_t = noise_scale[k].item() * ones
        x0 = (x - (1 - a[k]).sqrt().item() * ones * guided) / a_t.sqrt()
        direction = (1.0 - a_p - s_t**2).sqrt() * uncond
        x = a_p.sqrt() * x0 + direction + s_t * torch.randn_like(x)
    return x


@torch.no_grad()
def plms(model, x, timesteps, alphas_cumprod):
    a = alphas_cumprod[timesteps]
    a_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    ones = x.new_ones([x.shape[0]])
    history = []

    def jump(x, eps, k):
        a_t, a_p = a[k].item() * ones, a_prev[k].item() * ones
        x0 = (x - (1 - a[k]).sqrt().item() * ones * eps) / a_t.sqrt()
        return a_p.sqrt() * x0 + (1.0 - a_p).sqrt() * eps

    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        eps = model(x, timesteps[k].item() * ones)
        if not history:
            ahead = jump(x, eps, k)
            eps_next = model(ahead, timesteps[max(k - 1, 0)].item() * ones)
            combined = (eps + eps_next) / 2
        elif len(history) == 1:
            combined = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            combined = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            combined = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x_next = jump(x, combined, k)
        history.append(eps)
        if len(history) >= 4:
            history.pop(0)
        x = x_next
    return x


class VpSchedule:
    """The discrete VP schedule in continuous time: log alpha(t) linearly interpolated over
    t_i = (i + 1) / N, extended linearly beyond the ends."""

    def __init__(self, alphas_cumprod):
        self.n = len(alphas_cumprod)
        self.t_grid = torch.linspace(0.0, 1.0, self.n + 1)[1:]
        self.log_alpha = 0.5 * torch.log(alphas_cumprod)

    def log_alpha_at(self, t):
        t = t.reshape(-1)
        hi = torch.searchsorted(self.t_grid, t).clamp(1, self.n - 1)
        lo = hi - 1
        x0, x1 = self.t_grid[lo], self.t_grid[hi]
        y0, y1 = self.log_alpha[lo], self.log_alpha[hi]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha(self, t):
        return self.log_alpha_at(t).exp()

    def sigma(self, t):
        return (1.0 - (2.0 * self.log_alpha_at(t)).exp()).sqrt()

    def lam(self, t):
        la = self.log_alpha_at(t)
        return la - 0.5 * torch.log(1.0 - (2.0 * la).exp())


@torch.no_grad()
def unipc(model, x, timesteps, alphas_cumprod, img2img=False, variant="bh1", order=3,
          lower_order_final=True):
    vp = VpSchedule(alphas_cumprod)
    steps = len(timesteps)
    assert steps >= order, "UniPC order must be < sampling steps"
    t_end = 1.0 / vp.n
    t_start = timesteps[-1] / 1000 + 1 / 1000 if img2img else 1.0
    ts = torch.linspace(t_start, t_end, steps + 1)

    def data_pred(x, t):
        eps = model(x, (t - 1.0 / vp.n) * 1000.0)
        return (x - vp.sigma(t)[:, None, None, None] * eps) / vp.alpha(t)[:, None, None, None]

    def update(x, models, times, t, o, corrector):
        lam_t, lam_0 = vp.lam(t), vp.lam(times[-1])
        h = lam_t - lam_0
        m0 = models[-1]
        rks, d1s = [], []
        for i in range(1, o):
            rk = ((vp.lam(times[-(i + 1)]) - lam_0) / h)[0]
            rks.append(rk)
            d1s.append((models[-(i + 1)] - m0) / rk)
        rks = torch.tensor(rks + [1.0])
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if variant == "bh1" else torch.expm1(hh)
        rows, b, fact = [], [], 1
        for i in range(1, o + 1):
            rows.append(rks ** (i - 1))
            b.append(h_phi_k * fact / b_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        r = torch.stack(rows)
        b = torch.tensor(b)
        alpha_t = vp.alpha(t)[:, None, None, None]
        scale = alpha_t * b_h
        base = (vp.sigma(t) / vp.sigma(times[-1]))[:, None, None, None] * x - alpha_t * h_phi_1 * m0
        x_t = base
        if d1s:
            rhos_p = torch.tensor([0.5]) if o == 2 else torch.linalg.solve(r[:-1, :-1], b[:-1])
            x_t = base - scale * sum(rho * d for rho, d in zip(rhos_p, d1s))
        model_t = None
        if corrector:
            rhos_c = torch.tensor([0.5]) if o == 1 else torch.linalg.solve(r, b)
            model_t = data_pred(x_t, t)
            residual = rhos_c[-1] * (model_t - m0)
            if d1s:
                residual = sum(rho * d for rho, d in zip(rhos_c[:-1], d1s)) + residual
            x_t = base - scale * residual
        return x_t, model_t

    t0 = ts[0].expand(x.shape[0])
    models, times = [data_pred(x, t0)], [t0]
    for step in range(1, steps + 1):
        t = ts[step].expand(x.shape[0])
        if step < order:
            o = step
        else:
            o = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = update(x, models, times, t, o, corrector=step < steps)
        models.append(model_x)
        times.append(t)
        models, times = models[-order:], times[-order:]
    return x


def fake_output(x, t):
    return 0.9 * torch.tanh(x) + 0.05 * (t.float() / 1000.0)


def fake_uncond_output(x, t):
    return 0.5 * torch.tanh(x) + 0.2 * x - 0.03 * (t.float() / 1000.0)


SAMPLERS = {"ddim": ddim, "ddim_cfgpp": ddim_cfgpp, "pndm": plms, "unipc": unipc}


def run_case(name, sampler, config, steps, seed, strength=None, eta=None, variant=None,
             cfg_scale=None):
    ac = EulerDiscreteScheduler.from_config(config).alphas_cumprod
    v_prediction = config.get("prediction_type") == "v_prediction"
    if cfg_scale is None:
        model = EpsModel(fake_output, ac, v_prediction)
    else:
        both = lambda x, t: (fake_output(x, t), fake_uncond_output(x, t))  # noqa: E731
        model = CfgEpsModel(both, cfg_scale, ac, v_prediction)
    timesteps = a1111_timesteps(steps)
    torch.manual_seed(seed)
    tensors = {}
    case = {"name": name, "sampler": sampler, "config": config, "steps": steps, "seed": seed}
    if cfg_scale is not None:
        case["cfg_scale"] = cfg_scale
    kwargs = {}
    if eta is not None:
        kwargs["eta"] = eta
        case["eta"] = eta
    if variant is not None:
        kwargs["variant"] = variant
        case["variant"] = variant
    if strength is None:
        x = torch.randn(SHAPE)
        tensors[f"{name}.initial"] = x.clone()
    else:
        t_enc = int(min(strength, 0.999) * steps)
        original = torch.randn(SHAPE)
        noise = torch.randn(SHAPE)
        a = ac[timesteps[t_enc]]
        x = original * a.sqrt() + noise * (1 - a).sqrt()
        tensors[f"{name}.original"] = original
        case["strength"] = strength
        timesteps = timesteps[:t_enc]
        if sampler == "unipc":
            kwargs["img2img"] = True
    out = SAMPLERS[sampler](model, x, timesteps, ac, **kwargs)
    for i, s in enumerate(model.inputs):
        tensors[f"{name}.call{i}"] = s
    tensors[f"{name}.final"] = out
    case["timesteps"] = model.calls
    return case, tensors


def make(root):
    out = root / "scheduler_a1111"
    cases, tensors = [], {}
    seed = 700

    def add(name, *args, **kwargs):
        nonlocal seed
        seed += 1
        case, t = run_case(name, *args, seed=seed, **kwargs)
        cases.append(case)
        tensors.update(t)

    for s in ["ddim", "pndm", "unipc"]:
        add(f"{s}_eps_10", s, SD15, 10)
        add(f"{s}_v_6", s, SD15_V, 6)
        add(f"{s}_eps_7", s, SD15, 7)
        add(f"{s}_img2img_0.6", s, SD15, 10, strength=0.6)
        add(f"{s}_v_img2img_0.75", s, SD15_V, 9, strength=0.75)
    add("ddim_eta_0.5", "ddim", SD15, 8, eta=0.5)
    add("unipc_eps_3", "unipc", SD15, 3)
    add("unipc_eps_20", "unipc", SD15, 20)
    add("pndm_eps_2", "pndm", SD15, 2)
    add("pndm_eps_4", "pndm", SD15, 4)
    save_tensors(out / "loops.safetensors", tensors)
    save_json(out / "cases.json", {"shape": list(SHAPE), "cases": cases})

    # DDIM CFG++ on the two-output stand-in, in a file of its own.
    cases, tensors = [], {}
    seed = 800
    add("ddim_cfgpp_eps_10", "ddim_cfgpp", SD15, 10, cfg_scale=7.5)
    add("ddim_cfgpp_v_6", "ddim_cfgpp", SD15_V, 6, cfg_scale=5.0)
    add("ddim_cfgpp_eps_7_cfg_12.5", "ddim_cfgpp", SD15, 7, cfg_scale=12.5)
    add("ddim_cfgpp_cfg_0", "ddim_cfgpp", SD15, 8, cfg_scale=0.0)
    add("ddim_cfgpp_cfg_1", "ddim_cfgpp", SD15, 8, cfg_scale=1.0)
    add("ddim_cfgpp_eta_0.5", "ddim_cfgpp", SD15, 8, eta=0.5, cfg_scale=9.0)
    add("ddim_cfgpp_img2img_0.6", "ddim_cfgpp", SD15, 10, strength=0.6, cfg_scale=7.5)
    add("ddim_cfgpp_v_img2img_0.75", "ddim_cfgpp", SD15_V, 9, strength=0.75, cfg_scale=6.0)
    save_tensors(out / "cfgpp.safetensors", tensors)
    save_json(out / "cfgpp.json", {"shape": list(SHAPE), "cases": cases})
