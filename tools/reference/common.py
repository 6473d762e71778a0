"""Shared helpers and tiny configs for the parity fixtures."""

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
MODELS = FIXTURES / "models"

# The width of the tiny text encoders; the tiny UNets cross-attend to it.
TINY_TEXT_HIDDEN = 32

# The request every end-to-end case starts from (a part adds its own keys and overrides).
BASE_REQUEST = dict(
    prompt="a red circle on a blue background",
    negative_prompt="blurry, low quality",
    width=64,
    height=64,
    steps=6,
    cfg_scale=7.5,
    seed=1234,
)


def seed_everything(seed: int) -> None:
    """Seeds every random source the reference uses."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def round_params_to_f16(model: torch.nn.Module) -> torch.nn.Module:
    """Rounds every parameter and buffer to float16 values (kept as float32), so that the same
    weights stored in f16 or f32 are exactly equal and the reference outputs hold for both."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(b.half().float())
    return model


def randomize_(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Gives every parameter random values (normal, `std`), including norms' weights and biases
    that would otherwise be 1 and 0, so that every tensor in the file matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 1:
                p.copy_(1.0 + std * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def save_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """Writes `tensors` (contiguous f32 unless integer) to a safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, v in tensors.items():
        v = torch.as_tensor(v).detach().cpu()
        if v.is_floating_point():
            v = v.float()
        out[k] = v.contiguous()
    save_file(out, str(path), metadata=metadata)


def save_json(path: Path, value) -> None:
    """Writes `value` as pretty JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def manifest(model: torch.nn.Module) -> dict:
    """The name → shape map of a model's state dict (what a real checkpoint file holds)."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def write_manifest(name: str, model: torch.nn.Module) -> None:
    """Writes `fixtures/manifests/<name>.json`."""
    save_json(FIXTURES / "manifests" / f"{name}.json", manifest(model))


def clip_vocab_gz() -> Path:
    """The real CLIP BPE vocabulary, as shipped inside the open_clip_torch wheel."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("open_clip_torch is not installed: see tools/reference/README.md")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
