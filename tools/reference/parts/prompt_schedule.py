"""A1111 prompt editing and alternation end to end: diffusers with the conditioning swapped
between steps by hand.

For each case the per-step texts are WRITTEN BY HAND below from A1111's rules (the comment
says how), not computed by a schedule parser. Each text is encoded as A1111 encodes a
plain-weight prompt (parts.prompts.encode_a1111: 75-token chunk, start/end, padded with the
end token); diffusers' StableDiffusionPipeline gets the first step's embeddings and a
`callback_on_step_end` that hands it the next step's (`prompt_embeds`, which under CFG is
[negative; positive]). The final latents (output_type="latent") are the fixture:
fixtures/prompt_schedule/<name>.latents.safetensors and cases.json.
"""

from pathlib import Path

import torch

import common
from parts.pipeline import MODEL, make_scheduler
from parts.prompts import encode_a1111

CASES = [
    dict(
        name="edit",
        # [from:to:2] with 6 steps: counters 0, 1, 2 are <= 2 (from), 3, 4, 5 are past it (to).
        prompt="[a red circle:a blue square:2] on grass",
        negative_prompt="blurry, low quality",
        texts=["a red circle on grass"] * 3 + ["a blue square on grass"] * 3,
        negatives=["blurry, low quality"] * 6,
        sampler="euler_a",
    ),
    dict(
        name="alternate",
        # [a|b] with 6 steps: every step 1..6 is a boundary, entry t shows option (t-1) % 2;
        # counter c uses the first entry t >= c, so counters 0..5 use t = 1, 1, 2, 3, 4, 5:
        # red, red, blue, red, blue, red. The negative [blurry:low quality:0.5]: 0.5*6 = 3,
        # counters 0..3 "blurry", 4 and 5 "low quality".
        prompt="[a red circle|a blue square] on grass",
        negative_prompt="[blurry:low quality:0.5]",
        texts=[f"{t} on grass" for t in ["a red circle", "a red circle", "a blue square",
                                          "a red circle", "a blue square", "a red circle"]],
        negatives=["blurry"] * 4 + ["low quality"] * 2,
        sampler="euler",
    ),
]

BASE = dict(width=64, height=64, steps=6, cfg_scale=7.5, seed=4321)


def make(root: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = root / "prompt_schedule"
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for c in CASES:
        c = dict(BASE, **c)
        pipe = StableDiffusionPipeline.from_pretrained(
            str(MODEL), safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = make_scheduler(pipe, c["sampler"], "default")
        with torch.no_grad():
            embed = lambda text: encode_a1111([[text, 1.0]], pipe.tokenizer, pipe.text_encoder)
            positives = [embed(t) for t in c["texts"]]
            negatives = [embed(t) for t in c["negatives"]]

        def swap(pipeline, i, t, kwargs):
            nxt = min(i + 1, c["steps"] - 1)
            return {"prompt_embeds": torch.cat([negatives[nxt], positives[nxt]])}

        latents = pipe(
            prompt_embeds=positives[0],
            negative_prompt_embeds=negatives[0],
            num_inference_steps=c["steps"],
            guidance_scale=c["cfg_scale"],
            width=c["width"],
            height=c["height"],
            generator=torch.Generator("cpu").manual_seed(c["seed"]),
            output_type="latent",
            callback_on_step_end=swap,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        ).images
        common.save_tensors(out / f"{c['name']}.latents.safetensors", {"latents": latents})
        cases.append({k: v for k, v in c.items() if k not in ("texts", "negatives")})
        print(f"  {c['name']}: {tuple(latents.shape)}")
    common.save_json(out / "cases.json", cases)
