"""AUTOMATIC1111's variation seeds ("subseed") and seed resize: the initial noise of one image.

A1111 (modules/rng.py, ImageRNG.first), as read from its rules and written here in our own
code: for an image of latent shape (C, H, W) with seed s, variation seed v and strength t,
and optionally "seed resize from" (W0, H0):
  - shape0 = (C, H0 // 8, W0 // 8) when resizing, else (C, H, W);
  - variation noise = randn(v, shape0) from a fresh generator (only when t != 0);
  - noise = randn(s, shape0) (fresh generator when resizing, else the image's own generator);
  - noise = slerp(t, noise, variation noise): per channel and column, along dim 1 (rows),
    falling back to noise*t + variation*(1 - t) when the mean cosine is above 0.9995;
  - when resizing: x = randn(s, (C, H, W)) from the image's generator, and the centre of
    the noise pasted into it: dx = (W - W0/8) // 2 (floor), dy likewise; a negative offset
    crops the noise instead.
randn is torch.randn on the CPU after manual_seed (A1111's "CPU" RNG), or torch's CUDA Philox
stream (its "GPU"/"NV" RNG; here parts.philox's numpy transcription).
Output: fixtures/variation/noise.safetensors (one (1, C, H, W) tensor per case) and cases.json.
"""

from pathlib import Path

import numpy as np
import torch

import common
from parts import philox

SHAPE = (4, 8, 8)  # a 64x64 image
CASES = [
    dict(name="variation", seed=1234, variation_seed=77, strength=0.3),
    dict(name="variation_full", seed=1234, variation_seed=77, strength=1.0),
    dict(name="variation_resized", seed=42, variation_seed=43, strength=0.5, resize=(48, 80)),
    dict(name="resized_only", seed=5, resize=(40, 40)),
    dict(name="resized_larger", seed=6, resize=(88, 72)),
    dict(name="variation_cuda", seed=2024, variation_seed=9, strength=0.6, rng="cuda"),
]


def randn(seed, shape, rng):
    if rng == "cuda":
        values, _ = philox.randn(seed, int(np.prod(shape)))
        return torch.from_numpy(values).reshape(shape)
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator)


def slerp(t, low, high):
    low_dir = low / low.norm(dim=1, keepdim=True)
    high_dir = high / high.norm(dim=1, keepdim=True)
    cos = (low_dir * high_dir).sum(1)
    if cos.mean() > 0.9995:
        return low * t + high * (1 - t)
    angle = torch.acos(cos)
    return (torch.sin((1.0 - t) * angle) / torch.sin(angle)).unsqueeze(1) * low + (
        torch.sin(t * angle) / torch.sin(angle)
    ).unsqueeze(1) * high


def noise_of(c):
    rng = c.get("rng", "cpu")
    resize = c.get("resize")
    c_, h, w = SHAPE
    shape0 = (c_, resize[1] // 8, resize[0] // 8) if resize else SHAPE
    variation = randn(c["variation_seed"], shape0, rng) if c.get("strength") else None
    noise = randn(c["seed"], shape0, rng)
    if variation is not None:
        noise = slerp(c["strength"], noise, variation)
    if resize:
        x = randn(c["seed"], SHAPE, rng)
        dx = (w - shape0[2]) // 2
        dy = (h - shape0[1]) // 2
        cw = shape0[2] if dx >= 0 else shape0[2] + 2 * dx
        ch = shape0[1] if dy >= 0 else shape0[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        x[:, ty:ty + ch, tx:tx + cw] = noise[:, sy:sy + ch, sx:sx + cw]
        noise = x
    return noise.unsqueeze(0)


def make(root: Path) -> None:
    out = root / "variation"
    out.mkdir(parents=True, exist_ok=True)
    tensors = {c["name"]: noise_of(c) for c in CASES}
    plain = randn(1234, SHAPE, "cpu").unsqueeze(0)
    for name, t in tensors.items():
        print(f"  {name}: {tuple(t.shape)}, max |diff| from seed 1234's plain noise {float((t - plain).abs().max()):.3f}")
    common.save_tensors(out / "noise.safetensors", tensors)
    common.save_json(out / "cases.json", CASES)
