"""LoRA parity: diffusers' load_lora_weights + fuse_lora on the tiny SD 1.5 model, and the LyCORIS
LoHa / LoKr merge formulas on a hand-made file.

Writes fixtures/lora/:
- kohya.safetensors (kohya/A1111 names, alpha, linear + 1x1 + 3x3 conv LoRA, text encoder) and
  peft.safetensors (diffusers/PEFT `unet.` / `text_encoder.` names with lora_A/lora_B), random;
- cases.json + <case>.png: `sd generate` arguments with `--lora PATH:WEIGHT` and diffusers' image
  for them (the LoRAs fused into the weights with fuse_lora);
- lycoris_base.safetensors, loha.safetensors, lokr.safetensors, lycoris_expected.safetensors:
  base weights, LyCORIS networks and the merged weights computed here with torch.
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import common
from parts.pipeline import MODEL

BASE = dict(common.BASE_REQUEST, negative_prompt="blurry", steps=4, seed=4321)

UNET_MODULES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
    "down_blocks.0.attentions.0.proj_in",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_q",
    "mid_block.attentions.0.proj_out",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_v",
]
CONV_MODULES = [
    "down_blocks.0.resnets.0.conv1",
    "up_blocks.0.resnets.0.conv_shortcut",
]
TE_MODULES = [
    "text_model.encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.0.self_attn.v_proj",
    "text_model.encoder.layers.1.mlp.fc1",
    "text_model.encoder.layers.1.self_attn.out_proj",
]


def module(root, path):
    path = path.removeprefix("text_model.")  # transformers 5 has no `text_model` attribute
    for part in path.split("."):
        root = getattr(root, part) if not part.isdigit() else root[int(part)]
    return root


def lora_factors(weight, rank, gen, std=0.3):
    out_dim, in_dim = weight.shape[:2]
    if weight.dim() == 4:
        kh, kw = weight.shape[2:]
        down = torch.randn(rank, in_dim, kh, kw, generator=gen) * std
        up = torch.randn(out_dim, rank, 1, 1, generator=gen) * std
    else:
        down = torch.randn(rank, in_dim, generator=gen) * std
        up = torch.randn(out_dim, rank, generator=gen) * std
    return down.half().float(), up.half().float()


def delta(down, up, shape):
    return (up.flatten(1) @ down.flatten(1)).reshape(shape)


def make_kohya(pipe, path, gen):
    tensors, deltas = {}, {}
    targets = [("lora_unet_", "unet", m) for m in UNET_MODULES + CONV_MODULES]
    targets += [("lora_te_", "text_encoder", m) for m in TE_MODULES]
    for prefix, comp, m in targets:
        w = module(getattr(pipe, comp), m).weight
        rank = 4
        down, up = lora_factors(w, rank, gen)
        key = prefix + m.replace(".", "_")
        alpha = 2.0
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
        deltas[(comp, m)] = delta(down, up, w.shape) * (alpha / rank)
    save_file(tensors, str(path))
    return deltas


def make_peft(pipe, path, gen):
    tensors, deltas = {}, {}
    linear = [m for m in UNET_MODULES if "proj_in" not in m and "proj_out" not in m]
    targets = [("unet", m) for m in linear[::2]] + [("text_encoder", m) for m in TE_MODULES[1:]]
    for comp, m in targets:
        w = module(getattr(pipe, comp), m).weight
        down, up = lora_factors(w, 2, gen)
        tensors[f"{comp}.{m}.lora_A.weight"] = down
        tensors[f"{comp}.{m}.lora_B.weight"] = up
        deltas[(comp, m)] = delta(down, up, w.shape)
    save_file(tensors, str(path))
    return deltas


def diffusers_module(key):
    """The module a key of diffusers' `lora_state_dict` output patches, and its part."""
    comp, rest = key.split(".", 1)
    for suffix, part in [(".lora_A.weight", "down"), (".lora_B.weight", "up"),
                         (".lora.down.weight", "down"), (".lora.up.weight", "up"),
                         ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
                         (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up")]:
        if rest.endswith(suffix):
            mod = rest[: -len(suffix)]
            break
    else:
        raise ValueError(key)
    mod = mod.replace(".processor.", ".")
    if comp == "text_encoder":
        mod = (mod.replace("self_attn.to_q", "self_attn.q_proj").replace("self_attn.to_k", "self_attn.k_proj")
               .replace("self_attn.to_v", "self_attn.v_proj").replace("self_attn.to_out", "self_attn.out_proj"))
    elif mod.endswith(".to_out"):
        mod += ".0"
    return comp, mod, part


def fuse(pipe, path, weight):
    """diffusers' own key conversion (`lora_state_dict`: kohya names, alphas) and the fuse_lora
    formula W += weight · alpha / rank · up @ down (PEFT, which fuse_lora needs, is not installed)."""
    sd, alphas = pipe.lora_state_dict(str(path))
    alphas = alphas or {}
    modules = {}
    for key, t in sd.items():
        comp, mod, part = diffusers_module(key)
        modules.setdefault((comp, mod), {})[part] = t
        alpha = alphas.get(key + ".alpha") or alphas.get(f"{comp}.{mod}.alpha")
        if part == "down" and alpha is None:
            for a_key, a in alphas.items():
                if a_key.startswith(key.rsplit(".lora", 1)[0].rsplit("_lora", 1)[0] + "."):
                    alpha = a
        if alpha is not None:
            modules[(comp, mod)]["alpha"] = alpha
    with torch.no_grad():
        for (comp, mod), parts in modules.items():
            w = module(getattr(pipe, comp), mod).weight
            rank = parts["down"].shape[0]
            scale = parts.get("alpha", rank) / rank
            w += weight * scale * delta(parts["down"].float(), parts["up"].float(), w.shape)


def state(pipe):
    return {
        comp: {k: v.detach().clone() for k, v in getattr(pipe, comp).state_dict().items()}
        for comp in ("unet", "text_encoder")
    }


def check_fused(pipe, base, expected):
    """diffusers' fused weights must equal base + Σ weight·delta for every module."""
    worst = 0.0
    for comp in ("unet", "text_encoder"):
        now = getattr(pipe, comp).state_dict()
        for k, v in now.items():
            if "lora" in k:
                continue
            want = base[comp][k].clone()
            mod = k[: -len(".weight")] if k.endswith(".weight") else None
            if comp == "text_encoder" and mod is not None and not mod.startswith("text_model."):
                mod = "text_model." + mod
            for (c, m), d in expected:
                if c == comp and m == mod:
                    want = want + d
            worst = max(worst, (v - want).abs().max().item())
    assert worst < 1e-5, f"diffusers fused weights differ from the formula by {worst}"
    return worst


def lycoris(out: Path, gen):
    base = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.randn(12, 8, generator=gen),
        "down_blocks.0.resnets.0.conv1.weight": torch.randn(6, 4, 3, 3, generator=gen),
        "mid_block.attentions.0.proj_out.weight": torch.randn(12, 8, 1, 1, generator=gen),
        "text_model.encoder.layers.0.mlp.fc1.weight": torch.randn(16, 8, generator=gen),
        "untouched.weight": torch.randn(3, 3, generator=gen),
    }
    base = {k: v.half().float() for k, v in base.items()}
    r = lambda *s: (torch.randn(*s, generator=gen) * 0.5).half().float()  # noqa: E731
    loha, lokr, expected = {}, {}, {k: v.clone() for k, v in base.items()}
    m = 0.7  # the multiplier the test applies to both networks

    # LoHa, linear: (w1a @ w1b) * (w2a @ w2b) * alpha / rank.
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    t = dict(hada_w1_a=r(12, 3), hada_w1_b=r(3, 8), hada_w2_a=r(12, 3), hada_w2_b=r(3, 8))
    loha.update({f"{k}.{n}": v for n, v in t.items()})
    loha[f"{k}.alpha"] = torch.tensor(1.5)
    d = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * (1.5 / 3)
    expected["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"] += m * d
    # LoHa, 3x3 conv, Tucker (hada_t1/t2): einsum rebuild, no alpha (scale 1).
    k = "lora_unet_down_blocks_0_resnets_0_conv1"
    t = dict(hada_w1_a=r(2, 6), hada_w1_b=r(2, 4), hada_t1=r(2, 2, 3, 3),
             hada_w2_a=r(2, 6), hada_w2_b=r(2, 4), hada_t2=r(2, 2, 3, 3))
    loha.update({f"{k}.{n}": v for n, v in t.items()})
    w1 = torch.einsum("i j k l, j r, i p -> p r k l", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
    w2 = torch.einsum("i j k l, j r, i p -> p r k l", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
    expected["down_blocks.0.resnets.0.conv1.weight"] += m * w1 * w2
    # LoKr, linear, w1 whole and w2 factorized: kron(w1, w2a @ w2b) * alpha / rank(w2b).
    k = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    t = dict(lokr_w1=r(4, 2), lokr_w2_a=r(4, 2), lokr_w2_b=r(2, 4))
    lokr.update({f"{k}.{n}": v for n, v in t.items()})
    lokr[f"{k}.alpha"] = torch.tensor(1.0)
    d = torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]) * (1.0 / 2)
    expected["text_model.encoder.layers.0.mlp.fc1.weight"] += m * d
    # LoKr, 1x1 conv, w1 factorized and w2 whole (4-D, A1111's unsqueezed kron).
    k = "lora_unet_mid_block_attentions_0_proj_out"
    t = dict(lokr_w1_a=r(3, 1), lokr_w1_b=r(1, 2), lokr_w2=r(4, 4, 1, 1))
    lokr.update({f"{k}.{n}": v for n, v in t.items()})
    lokr[f"{k}.alpha"] = torch.tensor(3.0)
    w1 = (t["lokr_w1_a"] @ t["lokr_w1_b"]).unsqueeze(2).unsqueeze(2)
    d = torch.kron(w1, t["lokr_w2"]) * 3.0
    expected["mid_block.attentions.0.proj_out.weight"] += m * d
    # LoHa on the same weight as a LoKr module: both add up.
    k = "lora_unet_mid_block_attentions_0_proj_out"
    t = dict(hada_w1_a=r(12, 2), hada_w1_b=r(2, 8, 1, 1), hada_w2_a=r(12, 2), hada_w2_b=r(2, 8, 1, 1))
    loha.update({f"{k}.{n}": v for n, v in t.items()})
    d = ((t["hada_w1_a"] @ t["hada_w1_b"].flatten(1)) * (t["hada_w2_a"] @ t["hada_w2_b"].flatten(1)))
    expected["mid_block.attentions.0.proj_out.weight"] += m * d.reshape(12, 8, 1, 1)

    save_file(base, str(out / "lycoris_base.safetensors"))
    save_file(loha, str(out / "loha.safetensors"))
    save_file(lokr, str(out / "lokr.safetensors"))
    save_file(expected, str(out / "lycoris_expected.safetensors"))


def make(root: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = root / "lora"
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20261126)
    lycoris(out, gen)

    pipe = StableDiffusionPipeline.from_pretrained(
        str(MODEL), safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    kohya = make_kohya(pipe, out / "kohya.safetensors", gen)
    peft = make_peft(pipe, out / "peft.safetensors", gen)
    base = state(pipe)

    def run(c):
        generator = torch.Generator("cpu").manual_seed(c["seed"])
        return pipe(
            prompt=c["prompt"], negative_prompt=c["negative_prompt"], width=c["width"],
            height=c["height"], num_inference_steps=c["steps"], guidance_scale=c["cfg_scale"],
            generator=generator,
        ).images[0]

    cases = []
    plain = np.asarray(run(BASE)).astype(np.float32)
    for name, loras in [
        ("kohya_1", [("kohya", 1.0)]),
        ("kohya_05", [("kohya", 0.5)]),
        ("peft_1", [("peft", 1.0)]),
        ("peft_05_kohya_1", [("peft", 0.5), ("kohya", 1.0)]),
    ]:
        expected = []
        for file, weight in loras:
            fuse(pipe, out / f"{file}.safetensors", weight)
            deltas = kohya if file == "kohya" else peft
            expected += [(key, weight * d) for key, d in deltas.items()]
        worst = check_fused(pipe, base, expected)
        image = run(BASE)
        image.save(out / f"{name}.png")
        change = np.abs(np.asarray(image).astype(np.float32) - plain).mean()
        print(f"  {name}: fused weights match the formula within {worst:.2e}; mean change {change:.1f}/255")
        args = [
            "--prompt", BASE["prompt"], "--negative-prompt", BASE["negative_prompt"],
            "--width", str(BASE["width"]), "--height", str(BASE["height"]),
            "--steps", str(BASE["steps"]), "--cfg-scale", str(BASE["cfg_scale"]),
            "--sampler", "euler", "--seed", str(BASE["seed"]), "--rng", "cpu",
        ]
        for file, weight in loras:
            args += ["--lora", f"{file}.safetensors:{weight}"]
        cases.append(dict(name=name, args=args, image=f"{name}.png"))
        # Back to the base weights for the next case.
        for comp in ("unet", "text_encoder"):
            getattr(pipe, comp).load_state_dict(base[comp])
    common.save_json(out / "cases.json", cases)
