"""AUTOMATIC1111's v-prediction test for SD 2.x single files, on the tiny UNets.

A1111 (modules/sd_models_config.py, is_using_v_parameterization_for_sd2) runs the UNet once in
float32 on a constant input: x = 0.5 everywhere, shape (1, 4, 8, 8), timestep 999, context 0.5
everywhere, shape (1, 2, context width), and calls the model v-prediction when
mean(unet(x) - x) < -1. diffusers' UNet2DConditionModel computes what LDM's UNetModel does on
the same weights, so the statistic is recorded here for the Rust side to reproduce.

Writes fixtures/unet/a1111_v_probe.json: {model: statistic}.
"""

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from common import save_json

MODELS = ["tiny-sd2", "tiny-sd15"]


def statistic(unet: UNet2DConditionModel) -> float:
    width = unet.config.cross_attention_dim
    x = torch.full((1, 4, 8, 8), 0.5)
    context = torch.full((1, 2, width), 0.5)
    with torch.no_grad():
        out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return (out - x).mean().item()


def make(root: Path) -> None:
    values = {}
    for name in MODELS:
        unet = UNet2DConditionModel.from_pretrained(root / "models" / name / "unet").float().eval()
        values[name] = statistic(unet)
    save_json(root / "unet" / "a1111_v_probe.json", values)
