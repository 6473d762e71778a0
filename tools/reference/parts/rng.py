"""Fixtures for the torch-compatible CPU random stream (src/rng.rs).

Each case seeds one `torch.Generator("cpu")` and draws a sequence of `torch.randn` tensors from
it, so the Rust side must reproduce torch's seeding, its two Gaussian code paths (the blockwise
Box-Muller fill for 16 or more values, the scalar path with its cached second value below 16),
and how consecutive draws continue one stream.
"""

import torch

from common import save_json, save_tensors

SEEDS = [0, 1, 42, 2**32 - 1, 2**32, 2**32 + 5, 2**63, 2**64 - 1]

# One stream: odd scalar-path counts leave a cached value behind for the next small draw,
# sizes around 16 exercise the block fill and its tail recomputation.
SEQUENCE = [[1], [7], [15], [16], [17], [31], [33], [1000], [2, 4, 10, 6], [1], [3], [2], [1]]


def make(root):
    out = root / "rng"
    cases = []
    tensors = {}

    def record(name, seed, shapes):
        gen = torch.Generator("cpu").manual_seed(seed)
        for i, shape in enumerate(shapes):
            tensors[f"{name}.{i}"] = torch.randn(shape, generator=gen, dtype=torch.float32)
        cases.append({"name": name, "seed": seed, "shapes": shapes})

    for seed in SEEDS:
        record(f"sequence_seed_{seed}", seed, SEQUENCE)
    # Fresh generators for single shapes (each path from a clean state).
    for shape in [[1], [2], [7], [15], [16], [17], [31], [33], [2, 4, 10, 6]]:
        record(f"single_{'x'.join(map(str, shape))}", 42, [shape])
    # The size of SD latents at 512x512 (the path every generation takes first).
    record("latents_1x4x64x64", 1234, [[1, 4, 64, 64]])

    save_tensors(out / "randn.safetensors", tensors)
    save_json(out / "cases.json", {"torch": torch.__version__, "cases": cases})
