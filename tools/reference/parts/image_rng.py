"""AUTOMATIC1111's per-image noise for a batch (modules/rng.py, ImageRNG), written here in our
own code from its rules, and the seeds it gives each image (modules/processing.py).

Seeds: image i of a batch gets seed s + i, or s for every image when a variation strength is
set; its variation seed is v + i. Each image owns a generator seeded with its seed.

first() (the initial noise), per image, for latent shape (C, H, W):
  - shape0 = (C, H0 // 8, W0 // 8) with "seed resize from" (W0, H0), else (C, H, W);
  - variation noise = randn(v_i, shape0) from a fresh generator (strength != 0 only);
  - noise = randn from the image's own generator when shape0 is the latent's, else from a
    fresh generator seeded with s_i (the image's generator is then not advanced);
  - noise = slerp(strength, noise, variation noise) (parts.variation.slerp);
  - resized: x = randn(s_i, (C, H, W)) from a fresh generator, the noise's centre pasted in.
  Then, with an eta noise seed delta d != 0, every image's generator restarts at s_i + d.
next() (each later draw): torch.randn((C, H, W)) from each image's generator, stacked.

Output: fixtures/image_rng/cases.json and noise.safetensors with, per case, "<name>.first" and
"<name>.next1", "<name>.next2", each (batch, C, H, W).
"""

from pathlib import Path

import numpy as np
import torch

import common
from parts import philox
from parts.variation import slerp

SHAPE = (4, 8, 8)  # a 64x64 image
CASES = [
    dict(name="plain", seed=1000, batch=3),
    dict(name="variation", seed=1234, variation_seed=77, strength=0.3, batch=2),
    dict(name="resized", seed=42, batch=2, resize=(48, 80)),
    dict(name="variation_resized", seed=5, variation_seed=6, strength=0.5, batch=2, resize=(40, 40)),
    dict(name="ensd", seed=2000, batch=2, ensd=31337),
    dict(name="cuda_ensd", seed=3000, batch=2, ensd=31337, rng="cuda"),
]


class Stream:
    """A generator of `kind` seeded with `seed` whose draws continue one another."""

    def __init__(self, seed, kind):
        self.kind = kind
        if kind == "cuda":
            self.seed, self.offset = seed, 0
        else:
            self.generator = torch.Generator("cpu").manual_seed(seed)

    def randn(self, shape):
        if self.kind == "cuda":
            values, self.offset = philox.randn(self.seed, int(np.prod(shape)), self.offset)
            return torch.from_numpy(values).reshape(shape)
        return torch.randn(shape, generator=self.generator)


def paste(noise, target):
    _, h, w = target.shape
    _, nh, nw = noise.shape
    dx, dy = (w - nw) // 2, (h - nh) // 2
    cw = nw if dx >= 0 else nw + 2 * dx
    ch = nh if dy >= 0 else nh + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    out = target.clone()
    out[:, ty:ty + ch, tx:tx + cw] = noise[:, sy:sy + ch, sx:sx + cw]
    return out


def draws(c):
    kind = c.get("rng", "cpu")
    strength = c.get("strength", 0.0)
    seeds = [c["seed"] + (0 if strength else i) for i in range(c["batch"])]
    subseeds = [c.get("variation_seed", 0) + i for i in range(c["batch"])]
    streams = [Stream(s, kind) for s in seeds]
    resize = c.get("resize")
    shape0 = (SHAPE[0], resize[1] // 8, resize[0] // 8) if resize else SHAPE
    first = []
    for i, seed in enumerate(seeds):
        sub = Stream(subseeds[i], kind).randn(shape0) if strength else None
        noise = Stream(seed, kind).randn(shape0) if shape0 != SHAPE else streams[i].randn(SHAPE)
        if sub is not None:
            noise = slerp(strength, noise, sub)
        if shape0 != SHAPE:
            noise = paste(noise, Stream(seed, kind).randn(SHAPE))
        first.append(noise)
    if c.get("ensd"):
        streams = [Stream(s + c["ensd"], kind) for s in seeds]
    nexts = [torch.stack([s.randn(SHAPE) for s in streams]) for _ in range(2)]
    return torch.stack(first), nexts


def make(root: Path) -> None:
    out = root / "image_rng"
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for c in CASES:
        first, (next1, next2) = draws(c)
        tensors[f"{c['name']}.first"] = first
        tensors[f"{c['name']}.next1"] = next1
        tensors[f"{c['name']}.next2"] = next2
        print(f"  {c['name']}: first {tuple(first.shape)}")
    common.save_tensors(out / "noise.safetensors", tensors)
    common.save_json(out / "cases.json", CASES)
