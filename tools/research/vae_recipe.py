"""Torch prototype of `sd train`'s VAE stage, for screening recipes by how well the VAE keeps the
shape's colour (not part of the build or tests).

The shipped VAE (1000 steps, batch 8) is the ceiling of the whole model's shape-colour accuracy:
a plain encode/decode round trip of training-like scenes reads back the shape's colour about as
often as the full model does (79% vs 78%), with the same misses (orange/yellow, green/blue). This
script trains the same AutoencoderKL (config of models/shapes/vae, torch's default init) on the
same data and loss, and prints the round-trip accuracy on 240 scenes every 500 steps, so a recipe
can be screened before the Rust trainer spends its time on it.

usage: vae_recipe.py VARIANT STEPS   (reference venv; see tools/reference/README.md)
VARIANT is a name containing any of: fgw (the reconstruction error of the shape's pixels weighed
FG_WEIGHT (10) times more, normalised per image), lr2 (peak lr 2e-3), b16 (batch 16);
"base" is the shipped recipe. "shipped" only measures the shipped VAE.
"""
import math
import os
import sys
import time

import numpy as np
import torch
from diffusers import AutoencoderKL

sys.path.insert(0, os.path.dirname(__file__))
import shapes_recipe as R  # noqa: E402  (scenes, rendering, palette)

torch.set_num_threads(2)
FG_WEIGHT = float(os.environ.get("FG_WEIGHT", 10))
PAL = np.array(list(R.PALETTE.values()), float)


@torch.no_grad()
def round_trip_colour(vae, n=240):
    """Share of scenes whose shape colour survives encode (mean) + decode, read like `sd eval`
    (the most common nearest palette colour among pixels far from the background)."""
    rng = np.random.default_rng(1)
    scenes = [R.scene(rng) for _ in range(n)]
    x = torch.tensor(np.stack([R.render(*s) for s in scenes]) / 127.5 - 1, dtype=torch.float32)
    rec = vae.decode(vae.encode(x.permute(0, 3, 1, 2)).latent_dist.mean).sample.clamp(-1, 1)
    rec = ((rec + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    ok = 0
    for s, im in zip(scenes, rec):
        bgi = R.COLOURS.index(s[1])
        flat = im.reshape(-1, 3)
        far = flat[((flat - PAL[bgi]) ** 2).sum(-1) > 60**2]
        near = np.argmin(((far[:, None] - PAL[None]) ** 2).sum(-1), 1) if len(far) else []
        near = [c for c in near if c != bgi]
        ok += bool(near) and R.COLOURS[np.bincount(near, minlength=8).argmax()] == s[0]
    return ok / n


def main():
    variant, steps = sys.argv[1], int(sys.argv[2])
    if variant == "shipped":
        vae = AutoencoderKL.from_pretrained(f"{R.MODEL}/vae").eval()
        print(f"shipped VAE: round-trip shape colour {round_trip_colour(vae):.3f}")
        return
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = AutoencoderKL.load_config(f"{R.MODEL}/vae")
    vae = AutoencoderKL.from_config(cfg)
    lr = 2e-3 if "lr2" in variant else 1e-3
    batch = 16 if "b16" in variant else 8
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.01)
    t0 = time.time()
    for step in range(steps):
        warm = min(1.0, (step + 1) / 100)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.1 + 0.9 * cos)
        scenes = [R.scene(rng) for _ in range(batch)]
        x = torch.tensor(np.stack([R.render(*s) for s in scenes]) / 127.5 - 1,
                         dtype=torch.float32).permute(0, 3, 1, 2)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        diff = rec - x
        if "fgw" in variant:
            cover = torch.tensor(np.stack([R.render(*s, coverage=True) for s in scenes]),
                                 dtype=torch.float32)[:, None]
            w = 1 + FG_WEIGHT * cover
            w = w / w.mean(dim=(2, 3), keepdim=True)
        else:
            w = torch.ones_like(diff[:, :1])
        rec_loss = (w * diff.abs()).mean() + (w * diff**2).mean()
        kl = 0.5 * (post.mean**2 + post.var - 1 - post.logvar).mean()
        loss = rec_loss + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (step + 1) % 500 == 0 or step + 1 == steps:
            vae.eval()
            acc = round_trip_colour(vae)
            vae.train()
            print(f"step {step + 1} loss {loss.item():.4f} round-trip shape colour {acc:.3f} "
                  f"{(time.time() - t0) / (step + 1):.3f}s/step", flush=True)


if __name__ == "__main__":
    main()
