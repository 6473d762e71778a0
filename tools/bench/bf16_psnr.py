"""How close bf16 comes to f32, for sd and for diffusers/PyTorch, on one model folder.

Each engine makes the same image (prompt, seed, Euler, 10 steps) in f32 and in bf16; the PSNR of
its bf16 image against its own f32 image is printed for both engines (the issue's quality bar:
ours no worse than PyTorch's minus 1 dB).

Run (the venv of tools/reference, sd built with `cargo build --release -p sd-cli`):
    ~/sd-ref-venv/bin/python tools/bench/bf16_psnr.py fixtures/models/tiny-sd15 [--size 64] [--steps 10]
"""

import argparse
import os
import subprocess
import tempfile

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * np.log10(255**2 / mse) if mse > 0 else float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sd = os.path.join(ROOT, "target", "release", "sd")
    ours = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("f32", "bf16"):
            out = os.path.join(tmp, f"{dtype}.png")
            cmd = [sd, "generate", "--model", args.model, "--prompt", args.prompt,
                   "--steps", str(args.steps), "--seed", str(args.seed), "--sampler", "euler",
                   "--dtype", dtype, "--output", out]
            if args.size:
                cmd += ["--width", str(args.size), "--height", str(args.size)]
            subprocess.run(cmd, check=True, capture_output=True)
            ours[dtype] = np.asarray(Image.open(out).convert("RGB"))
    theirs = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = StableDiffusionPipeline.from_pretrained(
            args.model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        size = {"width": args.size, "height": args.size} if args.size else {}
        image = pipe(args.prompt, num_inference_steps=args.steps,
                     generator=torch.Generator().manual_seed(args.seed), **size).images[0]
        theirs[dtype] = np.asarray(image.convert("RGB"))
    print(f"sd bf16 vs sd f32: {psnr(ours['f32'], ours['bf16']):.2f} dB")
    print(f"PyTorch bf16 vs PyTorch f32: "
          f"{psnr(theirs[torch.float32], theirs[torch.bfloat16]):.2f} dB")


if __name__ == "__main__":
    main()
