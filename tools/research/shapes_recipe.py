"""Torch prototype of `sd train`'s diffusion stage, for trying recipes on the shapes model fast.

Not part of the project's build or tests. It re-implements the stage in torch (diffusers' UNet
and transformers' CLIP from the shipped model's configs, randomly initialised; the same loss,
loss weights, offset noise and caption variety; latents from the shipped VAE, encoded once)
and prints a small pixel evaluation (background, shape colour, position on 36 captions) every
1000 steps. Torch trains this model about 7x faster than candle on the CPU (0.13 s/step), so a
recipe can be screened in minutes before the Rust trainer spends an hour on it.

usage: shapes_recipe.py VARIANT STEPS     (in the reference venv, see tools/reference/README.md)
VARIANT is a name containing any of: allattn (cross-attention at every UNet level), wide
(128 channels at the lowest level), l2 (two layers per block), lr2 (peak lr 2e-3), telr (the
text encoder's lr 10x the UNet's), pyr /
pyrstrong (pyramid noise 0.7 / 1.0 per level), hight (half the timesteps from t >= 850),
ztsnr (zero terminal SNR with v-prediction), posonly (captions name only the position; the
evaluation still reads the full captions), posclass (the position also enters as a class label
through the time embedding, a probe of whether the UNet can place shapes from a global signal),
addtext (diffusers' addition_embed_type "text": attention-pooled text added to the time
embedding), sdxl (SDXL's conditioning: pooled projected text + size ids into the time
embedding, addition_embed_type "text_time"), fgw (the loss weighs the shape's latent pixels FG_WEIGHT (10) times more), tinit (the text
encoder initialised TINIT (10) times larger), tefrozen / teslow (the text encoder's lr 0 / 0.1x);
"base" is the shipped recipe without pyramid noise.
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

torch.set_num_threads(2)
CTX = 77  # the text window (the short variant: 16)
CFG = 7.5  # the evaluation's guidance scale
FG_WEIGHT = float(__import__("os").environ.get("FG_WEIGHT", 10))
ROOT = Path(__file__).resolve().parents[2]
MODEL = str(ROOT / "models" / "shapes")
TOK = str(ROOT / "fixtures" / "models" / "tiny-sd15" / "tokenizer")
PALETTE = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (245, 225, 40),
    "orange": (250, 140, 20), "purple": (140, 40, 180), "white": (245, 245, 245), "black": (15, 15, 15),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]
POS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
PHRASE = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
          "left": "on the left", "center": "in the center", "right": "on the right",
          "bottom left": "in the bottom left corner", "bottom": "at the bottom",
          "bottom right": "in the bottom right corner"}


def render(colour, bg, shape, size, pos, jx, jy, scale, coverage=False):
    r = (7.0 if size == "small" else 14.0) * scale
    off = 20.0 if size == "small" else 15.0
    row, col = divmod(POS.index(pos), 3)
    cx, cy = 32 + (col - 1) * off + jx, 32 + (row - 1) * off + jy
    ys, xs = np.mgrid[0:64, 0:64]
    sub = (np.arange(4) + 0.5) / 4
    px = (xs[..., None, None] + sub[None, None, None, :]) - cx
    py = (ys[..., None, None] + sub[None, None, :, None]) - cy
    if shape == "circle":
        inside = px**2 + py**2 <= r * r
    elif shape == "square":
        inside = (np.abs(px) <= 0.9 * r) & (np.abs(py) <= 0.9 * r)
    else:
        inside = (py >= -r) & (py <= r / 2) & (np.abs(px) <= (py + r) / 1.5)
    a = inside.mean(axis=(2, 3))[..., None]
    if coverage:
        return a[..., 0]
    img = np.array(PALETTE[bg]) * (1 - a) + np.array(PALETTE[colour]) * a
    return img


def scene(rng):
    colour = COLOURS[rng.integers(8)]
    bg = colour
    while bg == colour:
        bg = COLOURS[rng.integers(8)]
    return (colour, bg, SHAPES[rng.integers(3)], ["small", "large"][rng.integers(2)],
            POS[rng.integers(9)], 4 * rng.random() - 2, 4 * rng.random() - 2, 0.85 + 0.3 * rng.random())


def caption(s, rng):
    colour, bg, shape, size, pos = s[:5]
    p = PHRASE[pos]
    k = rng.integers(10)
    if k <= 2:
        return f"a {size} {colour} {shape} {p} on a {bg} background"
    if k == 3:
        return f"{size} {colour} {shape} {p}, {bg} background"
    if k == 4:
        return f"{colour} {shape}, {bg} background"
    if k == 5:
        return f"a {colour} {shape} {p} on a {bg} background"
    if k == 6:
        return f"{bg} background with a {size} {colour} {shape} {p}"
    if k == 7:
        return f"a {size} {colour} {shape} {p}"
    if k == 8:
        return f"a {colour} {shape} on a {bg} background"
    return f"{p}: a {size} {colour} {shape} on {bg}"


def unet_config(variant):
    cfg = json.load(open(f"{MODEL}/unet/config.json"))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    if "allattn" in variant:
        cfg["down_block_types"] = ["CrossAttnDownBlock2D"] * 3
        cfg["up_block_types"] = ["CrossAttnUpBlock2D"] * 3
    if "wide" in variant:
        cfg["block_out_channels"] = [32, 64, 128]
    if "l2" in variant:
        cfg["layers_per_block"] = 2
    if "posclass" in variant:
        cfg["num_class_embeds"] = len(POS)
    if "sdxl" in variant:
        # SDXL's conditioning: the pooled, projected text and the size/crop ids join the time
        # embedding (addition_embed_type "text_time").
        cfg["addition_embed_type"] = "text_time"
        cfg["addition_time_embed_dim"] = 8
        cfg["projection_class_embeddings_input_dim"] = 32 + 6 * 8
    if "addtext" in variant:
        cfg["addition_embed_type"] = "text"
        cfg["addition_embed_type_num_heads"] = 2
    return cfg


def main():
    variant, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vae = AutoencoderKL.from_pretrained(f"{MODEL}/vae").eval()
    sf = vae.config.scaling_factor
    tok = CLIPTokenizer.from_pretrained(TOK)
    N = int(__import__("os").environ.get("PROTO_N", 8192))
    scenes = [scene(rng) for _ in range(N)]
    t0 = time.time()
    with torch.no_grad():
        lat = []
        for i in range(0, N, 256):
            imgs = np.stack([render(*s) for s in scenes[i:i + 256]]) / 127.5 - 1
            x = torch.tensor(imgs, dtype=torch.float32).permute(0, 3, 1, 2)
            lat.append(vae.encode(x).latent_dist.mean * sf)
        lat = torch.cat(lat)
        # The shape's coverage of each latent pixel (for the fgw variant's loss weights).
        cover = torch.tensor(np.stack([render(*s, coverage=True) for s in scenes]), dtype=torch.float32)
        cover = F.avg_pool2d(cover[:, None], 64 // lat.shape[-1])
    print(f"encoded {N} in {time.time() - t0:.0f}s, latent std {lat.std():.3f}", flush=True)
    tcfg = CLIPTextConfig.from_pretrained(f"{MODEL}/text_encoder")
    if "tinit" in variant:
        # A larger initialisation of the text encoder (token/position tables, projections), so
        # that different captions start far apart.
        tcfg.initializer_factor = float(__import__("os").environ.get("TINIT", 10))
    global CTX
    if "short" in variant:
        CTX = 16
        tcfg.max_position_embeddings = CTX
    te = (CLIPTextModelWithProjection(tcfg) if "sdxl" in variant else CLIPTextModel(tcfg)).float()
    if "bag" in variant:
        te = Bag(tcfg)
    heads = None
    if "tepre" in variant:
        heads = pretrain_text(te, tok, rng)
    unet = UNet2DConditionModel(**unet_config(variant))
    global POSCTX
    POSCTX = torch.nn.Parameter(torch.randn(10, tcfg.hidden_size))
    if "posctx" in variant:
        te.extra = torch.nn.ParameterList([POSCTX])
    params = list(te.parameters()) + list(unet.parameters())
    print("unet params", sum(p.numel() for p in unet.parameters()), flush=True)
    lr = 2e-3 if "lr2" in variant else 1e-3
    te_scale = 10.0 if "telr" in variant else 1.0
    if "tefrozen" in variant:
        te_scale = 0.0
    if "teslow" in variant:
        te_scale = 0.1
    te_params = list(te.parameters()) + (list(heads.parameters()) if heads is not None else [])
    opt = torch.optim.AdamW([{"params": te_params, "scale": te_scale},
                             {"params": list(unet.parameters()), "scale": 1.0}],
                            lr=lr, weight_decay=0.01)
    zt = "ztsnr" in variant
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          rescale_betas_zero_snr=zt, prediction_type="v_prediction" if zt else "epsilon",
                          timestep_spacing="trailing" if zt else "leading")
    ac = sched.alphas_cumprod
    w_all = torch.ones_like(ac) if zt else torch.clamp(1 / ac, max=5.0)
    w_mean = w_all.mean()
    B = 16
    t0 = time.time()
    for step in range(steps):
        warm = min(1.0, (step + 1) / 200)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"] * warm * (0.1 + 0.9 * cos)
        idx = rng.integers(N, size=B)
        x0 = lat[idx]
        if "posonly" in variant:
            caps = [("" if rng.random() < 0.1 else PHRASE[scenes[i][4]]) for i in idx]
        else:
            caps = [("" if rng.random() < 0.1 else caption(scenes[i], rng)) for i in idx]
        ids = tok(caps, padding="max_length", max_length=CTX, truncation=True, return_tensors="pt").input_ids
        t = torch.randint(0, 1000, (B,))
        if "hight" in variant:
            t = torch.where(torch.rand(B) < 0.5, torch.randint(850, 1000, (B,)), t)
        noise = torch.randn_like(x0) + 0.2 * torch.randn(B, 4, 1, 1)
        if "pyr" in variant:
            f = 1.0 if "pyrstrong" in variant else 0.7
            for lvl, s in enumerate([8, 4, 2], 1):
                noise = noise + F.interpolate(torch.randn(B, 4, s, s), size=16, mode="bilinear") * f**lvl
        a = ac[t].view(B, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        out = te(ids)
        ctx = out.last_hidden_state
        if "posctx" in variant:
            # Diagnostic: the context is a free table row for the position, on every token.
            lab = torch.tensor([9 if c == "" else POS.index(scenes[i][4]) for i, c in zip(idx, caps)])
            ctx = POSCTX[lab][:, None, :].expand(-1, CTX, -1)
        added = sdxl_added(out, B) if "sdxl" in variant else None
        labels = torch.tensor([POS.index(scenes[i][4]) for i in idx]) if "posclass" in variant else None
        pred = unet(noisy, t, encoder_hidden_states=ctx, class_labels=labels,
                    added_cond_kwargs=added).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if zt else noise
        if "fgw" in variant:
            # Shape pixels weigh FG_WEIGHT times more (normalised so each image's weights average 1).
            w = 1 + FG_WEIGHT * cover[idx]
            w = w / w.mean(dim=(2, 3), keepdim=True)
            per = (w * (pred - target) ** 2).flatten(1).mean(1)
        else:
            per = ((pred - target) ** 2).flatten(1).mean(1)
        loss = (per * w_all[t] / w_mean).mean()
        if "aux" in variant:
            aux = attribute_loss(heads, ctx, [scenes[i] for i in idx], caps)
            loss = loss + 0.1 * aux
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} {(time.time() - t0) / (step + 1):.3f}s/step", flush=True)
        if (step + 1) % 1000 == 0 or step + 1 == steps:
            evaluate(te, unet, vae, tok, sched, sf, "posonly" in variant, "posclass" in variant)
    out = __import__("os").environ.get("PROTO_SAVE")
    if out:
        torch.save({"te": te.state_dict(), "unet": unet.state_dict(), "variant": variant}, out)


def attribute_labels(s, cap):
    """What a caption names: colour, background, shape, size, position (the last index: not named)."""
    words = cap.replace(",", " ").replace(":", " ").split()
    colour, bg, shape, size, pos = s[:5]
    named_bg = "background" in words or " on " + bg in cap
    return [COLOURS.index(colour) if colour in words else 8,
            COLOURS.index(bg) if named_bg else 8,
            SHAPES.index(shape) if shape in words else 3,
            ["small", "large"].index(size) if size in words else 2,
            POS.index(pos) if PHRASE[pos] in cap else 9]


def pretrain_text(te, tok, rng, steps=int(__import__("os").environ.get("TEPRE_STEPS", 1500))):
    """A CLIP-like stage before the diffusion: the text encoder learns to keep every attribute
    of the caption readable (linear heads on the mean of all its output tokens, pads included)."""
    sizes = [9, 9, 4, 3, 10]
    heads = torch.nn.Linear(te.config.hidden_size, sum(sizes))
    opt = torch.optim.AdamW(list(te.parameters()) + list(heads.parameters()), lr=1e-3, weight_decay=0.01)
    t0 = time.time()
    for step in range(steps):
        ss = [scene(rng) for _ in range(64)]
        caps = [caption(x, rng) for x in ss]
        ids = tok(caps, padding="max_length", max_length=CTX, truncation=True, return_tensors="pt").input_ids
        h = te(ids).last_hidden_state
        logits = heads(h.mean(1)).split(sizes, dim=1)
        y = torch.tensor([attribute_labels(x, c) for x, c in zip(ss, caps)])
        loss = sum(F.cross_entropy(l, y[:, k]) for k, l in enumerate(logits))
        acc = [(l.argmax(1) == y[:, k]).float().mean().item() for k, l in enumerate(logits)]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0:
            print(f"text pretrain {step + 1} loss {loss.item():.3f} acc {[round(a, 2) for a in acc]} "
                  f"{time.time() - t0:.0f}s", flush=True)
    context_spread(te, tok)
    return heads


@torch.no_grad()
def context_spread(te, tok):
    """How far the context moves (relative, over all tokens) when one attribute of a caption changes."""
    base = "a large red square in the center on a blue background"
    swaps = {"position": ("in the center", "on the left"), "colour": ("red", "green"),
             "background": ("blue", "yellow"), "shape": ("square", "circle")}
    ids = lambda c: tok([c], padding="max_length", max_length=CTX, return_tensors="pt").input_ids
    h0 = te(ids(base)).last_hidden_state
    out = {k: round(((te(ids(base.replace(a, b))).last_hidden_state - h0).norm() / h0.norm()).item(), 3)
           for k, (a, b) in swaps.items()}
    print("context spread", out, flush=True)


def attribute_loss(heads, h, ss, caps):
    """Cross-entropy of the attribute heads on the mean of the text encoder's output tokens."""
    sizes = [9, 9, 4, 3, 10]
    logits = heads(h.mean(1)).split(sizes, dim=1)
    y = torch.tensor([attribute_labels(x, c) for x, c in zip(ss, caps)])
    return sum(F.cross_entropy(l, y[:, k]) for k, l in enumerate(logits))


class Bag(torch.nn.Module):
    """Diagnostic text encoder: token + position embeddings, layer-normed, no attention."""

    def __init__(self, tcfg):
        super().__init__()
        self.tok = torch.nn.Embedding(tcfg.vocab_size, tcfg.hidden_size)
        self.pos = torch.nn.Embedding(tcfg.max_position_embeddings, tcfg.hidden_size)
        self.norm = torch.nn.LayerNorm(tcfg.hidden_size)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))[None]
        return __import__("types").SimpleNamespace(last_hidden_state=self.norm(h))


def sdxl_added(out, n):
    """SDXL's added conditions: the pooled text and the (64, 64, 0, 0, 64, 64) size ids."""
    ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(n, 1)
    return {"text_embeds": out.text_embeds, "time_ids": ids}


@torch.no_grad()
def evaluate(te, unet, vae, tok, sched, sf, position_only=False, position_class=False):
    if hasattr(te, "config"):
        context_spread(te, tok)
    erng = np.random.default_rng(123)
    ok_pos = ok_col = ok_bg = found = 0
    n = 36
    caps, truth = [], []
    for i in range(n):
        s = scene(erng)
        if position_only:
            caps.append(PHRASE[s[4]])
        else:
            caps.append(f"a {s[3]} {s[0]} {s[2]} {PHRASE[s[4]]} on a {s[1]} background")
        truth.append(s)
    ids = tok(caps, padding="max_length", max_length=CTX, return_tensors="pt").input_ids
    un = tok([""] * n, padding="max_length", max_length=CTX, return_tensors="pt").input_ids
    oc, ou = te(ids), te(un)
    c, u = oc.last_hidden_state, ou.last_hidden_state
    if hasattr(te, "extra"):
        c = POSCTX[torch.tensor([POS.index(s[4]) for s in truth])][:, None, :].expand(-1, CTX, -1)
        u = POSCTX[torch.full((n,), 9)][:, None, :].expand(-1, CTX, -1)
    added = None
    if hasattr(oc, "text_embeds"):
        both = {"text_embeds": torch.cat([oc.text_embeds, ou.text_embeds])}
        added = dict(sdxl_added(oc, 2 * n), **both)
    labels = None
    if position_class:
        labels = torch.tensor([POS.index(s[4]) for s in truth] * 2)
    g = torch.Generator().manual_seed(7)
    x = torch.randn((n, 4, 16, 16), generator=g)
    sched.set_timesteps(20)
    for t in sched.timesteps:
        e = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([c, u]), class_labels=labels,
                 added_cond_kwargs=added).sample
        ec, eu = e.chunk(2)
        x = sched.step(eu + CFG * (ec - eu), t, x).prev_sample
    img = ((vae.decode(x / sf).sample.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    pal = np.array(list(PALETTE.values()), dtype=float)
    for k in range(n):
        im = img[k]
        colour, bg = truth[k][0], truth[k][1]
        border = np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]])
        bmean = border.mean(0)
        bg_guess = COLOURS[int(np.argmin(((pal - bmean) ** 2).sum(1)))]
        ok_bg += bg_guess == bg
        # The shape: pixels far from the border's mean colour (whatever the background came out).
        d = ((im - bmean) ** 2).sum(-1)
        mask = d > 60**2
        if mask.sum() > 5:
            found += 1
            ys, xs = np.nonzero(mask)
            cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
            cell = min(2, int(3 * cy / 64)) * 3 + min(2, int(3 * cx / 64))
            ok_pos += POS[cell] == truth[k][4]
            mean = im[mask].mean(0)
            ok_col += COLOURS[int(np.argmin(((pal - mean) ** 2).sum(1)))] == colour
    print(f"  eval: background {ok_bg}/{n}, shape colour {ok_col}/{n}, position {ok_pos}/{n} "
          f"(a shape found in {found})", flush=True)


if __name__ == "__main__":
    main()
