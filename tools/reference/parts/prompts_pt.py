"""Textual inversion as `.pt` pickles, made with torch.save from the vectors of the
`.safetensors` embeddings that parts/prompts.py writes (fixtures/prompts/tivec.safetensors,
3 vectors): the Rust test checks that each gives exactly the conditioning of the
`.safetensors` file.

- tivecpt.pt: A1111's own layout, `{"string_to_token": {"*": 265}, "string_to_param":
  {"*": vectors}, "name", "step", "sd_checkpoint", "sd_checkpoint_name"}`, the vectors a
  tensor that requires grad (as A1111's trainer saves them);
- tivecparam.pt: `{"emb_params": Parameter(vectors)}`;
- learned_embeds.bin: diffusers' `{token: vector}` for one vector (token "tibin").

Named `prompts_pt` so that a full run makes it after parts/prompts.py, whose files it reads.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file


def make(root: Path) -> None:
    out = root / "prompts"
    vectors = load_file(str(out / "tivec.safetensors"))["emb_params"]
    single = load_file(str(out / "tisingle.safetensors"))["tisingle"]
    a1111 = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors.clone().requires_grad_(True)},
        "name": "tivecpt",
        "step": 500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "tiny",
    }
    torch.save(a1111, out / "tivecpt.pt")
    torch.save({"emb_params": torch.nn.Parameter(vectors.clone())}, out / "tivecparam.pt")
    bins = out / "bin"
    bins.mkdir(exist_ok=True)
    torch.save({"tibin": single.clone()}, bins / "learned_embeds.bin")
    for p in [out / "tivecpt.pt", out / "tivecparam.pt", bins / "learned_embeds.bin"]:
        print(f"  {p.name}: {p.stat().st_size} bytes")
