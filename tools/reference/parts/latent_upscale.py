"""AUTOMATIC1111's "Latent" hires upscaler: torch.nn.functional.interpolate(latents,
size=(h, w), mode="bilinear", antialias=False) (align_corners left at its default, False).
fixtures/latent_upscale/upscale.safetensors: a seeded (1, 4, 8, 8) input and its bilinear
enlargements to a few sizes (keys "in", "out_HxW").
"""

from pathlib import Path

import torch
import torch.nn.functional as F

import common

SIZES = [(12, 12), (16, 16), (10, 14), (9, 8)]


def make(root: Path) -> None:
    out = root / "latent_upscale"
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator("cpu").manual_seed(2468)
    x = torch.randn((1, 4, 8, 8), generator=generator)
    tensors = {"in": x}
    for h, w in SIZES:
        tensors[f"out_{h}x{w}"] = F.interpolate(x, size=(h, w), mode="bilinear", antialias=False)
    common.save_tensors(out / "upscale.safetensors", tensors)
    print(f"  {len(SIZES)} sizes")
