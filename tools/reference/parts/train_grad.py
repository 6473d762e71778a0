"""Gradients of one training step: what `sd train`'s diffusion stage back-propagates.

On the tiny SD 1.5 model (text encoder and UNet, f32), for a fixed batch of two captions,
latents, noise and timesteps (one low, one high), torch computes the stage's loss as the
trainer does without its extras (no offset or pyramid noise, per-sample weights w):

    noisy = sqrt(abar_t) * latents + sqrt(1 - abar_t) * noise
    eps   = unet(noisy, t, text_encoder(ids).last_hidden_state)
    loss  = mean_over_batch(w * mean_over_pixels((eps - noise)^2))

and back-propagates it to every parameter of both models. Output: fixtures/train_grad/
inputs.safetensors (ids, latents, noise, timesteps, weights, loss) and grads.safetensors
(one gradient per parameter, "text_encoder.<name>" / "unet.<name>", whole tensors; the token
table's gradient as its rows of the tokens used, with their ids: all other rows are zero).
"""

from pathlib import Path

import torch

import common

MODEL = common.MODELS / "tiny-sd15"
CAPTIONS = ["a large red circle in the top left corner on a blue background", "green square"]


def make(root: Path) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out = root / "train_grad"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer.from_pretrained(MODEL / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(MODEL / "text_encoder", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(MODEL / "unet", torch_dtype=torch.float32)
    text_encoder.train()
    unet.train()
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ids = tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 4, 8, 8), generator=generator)
    noise = torch.randn((2, 4, 8, 8), generator=generator)
    timesteps = torch.tensor([120, 930])
    weights = torch.tensor([0.7, 1.3])
    abar = schedule.alphas_cumprod[timesteps].float().view(2, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    context = text_encoder(ids).last_hidden_state
    eps = unet(noisy, timesteps, encoder_hidden_states=context).sample
    per_sample = ((eps - noise) ** 2).flatten(1).mean(1)
    loss = (per_sample * weights).mean()
    loss.backward()
    grads = {}
    for prefix, model in (("text_encoder", text_encoder), ("unet", unet)):
        for name, p in model.named_parameters():
            if p.grad is not None:
                grads[f"{prefix}.{name}"] = p.grad.detach().clone()
    # The token table's gradient is zero outside the rows of the tokens used: keep those rows.
    table = "text_encoder.embeddings.token_embedding.weight"
    rows = torch.unique(ids)
    rest = torch.ones(grads[table].shape[0], dtype=torch.bool)
    rest[rows] = False
    assert grads[table][rest].abs().max() == 0
    grads[table + ".rows"] = grads.pop(table)[rows]
    grads[table + ".row_ids"] = rows.to(torch.int64)
    common.save_tensors(
        out / "inputs.safetensors",
        {
            "ids": ids.to(torch.int64),
            "latents": latents,
            "noise": noise,
            "timesteps": timesteps.to(torch.int64),
            "weights": weights,
            "loss": loss.detach().reshape(1),
        },
    )
    common.save_tensors(out / "grads.safetensors", grads)
    size = sum(g.numel() for g in grads.values())
    print(f"  loss {loss.item():.6f}, {len(grads)} gradients, {size} values")
