"""The VAE (AutoencoderKL) and the image layer (pre/post-processing, PNG text chunks).

Writes:
  fixtures/models/tiny-sd15/vae/            a tiny random AutoencoderKL (diffusers folder)
  fixtures/vae/tiny_sd15.safetensors        inputs and outputs of encode / sample / decode
  fixtures/image/*                          VaeImageProcessor pre/post-processing and PNGs
                                            carrying A1111 `parameters` text chunks written by PIL
  fixtures/manifests/vae_sd15.json, vae_sdxl.json   full-size name -> shape manifests
"""

import json
import re

import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor

import common

TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
    scaling_factor=0.18215,
)

# The published configs (stable-diffusion-v1-5 / stable-diffusion-2-1 vae, sdxl-vae).
FULL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
)


def make_vae(root):
    common.seed_everything(1234)
    vae = AutoencoderKL(**TINY_VAE)
    common.randomize_(vae, std=0.2)
    with torch.no_grad():
        # Drive logvar channel 3 far below -30 so the clamp in DiagonalGaussian matters.
        vae.quant_conv.bias[4 + 3] = -45.0
    common.round_params_to_f16(vae)
    vae.eval()
    vae.save_pretrained(str(common.MODELS / "tiny-sd15" / "vae"), safe_serialization=True)

    g = torch.Generator().manual_seed(99)
    images = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    images_odd = torch.rand(1, 3, 48, 80, generator=g) * 2 - 1
    latents = torch.randn(2, 4, 4, 4, generator=g)
    latents_odd = torch.randn(1, 4, 6, 10, generator=g)

    out = {"images": images, "images_odd": images_odd, "latents": latents, "latents_odd": latents_odd}
    with torch.no_grad():
        for name, x in (("", images), ("_odd", images_odd)):
            dist = vae.encode(x).latent_dist
            noise = torch.randn(dist.mean.shape, generator=g)
            out[f"mean{name}"] = dist.mean
            out[f"logvar{name}"] = dist.logvar
            out[f"std{name}"] = dist.std
            out[f"noise{name}"] = noise
            out[f"sample{name}"] = dist.mean + dist.std * noise
        out["decoded"] = vae.decode(latents).sample
        out["decoded_odd"] = vae.decode(latents_odd).sample
    common.save_tensors(root / "vae" / "tiny_sd15.safetensors", out)


def make_manifests():
    with torch.device("meta"):
        sd15 = AutoencoderKL(**FULL_VAE, sample_size=512, scaling_factor=0.18215)
        sdxl = AutoencoderKL(**FULL_VAE, sample_size=1024, scaling_factor=0.13025)
    common.write_manifest("vae_sd15", sd15)
    common.write_manifest("vae_sdxl", sdxl)


def exact_tie(k):
    """A float32 x near 2 (k + 0.5) / 255 - 1 for which postprocessing computes exactly k + 0.5."""
    f32 = np.float32
    up = down = f32(2 * (k + 0.5) / 255 - 1)
    for _ in range(200):
        for x in (up, down):
            if f32(f32(f32(x * f32(0.5)) + f32(0.5)) * f32(255)) == f32(k + 0.5):
                return float(x)
        up, down = np.nextafter(up, f32(2)), np.nextafter(down, f32(-2))
    raise ValueError(f"no exact tie for {k}")


def make_image(root):
    out_dir = root / "image"
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = VaeImageProcessor(vae_scale_factor=8)
    g = torch.Generator().manual_seed(7)

    # Post-processing: decoded (B,3,H,W) -> uint8 HWC as the PIL images hold them.
    decoded = torch.randn(2, 3, 8, 12, generator=g) * 0.8
    # Values whose float32 (x * 0.5 + 0.5) * 255 is exactly k + 0.5: numpy rounds them half to
    # even. Plus values on and past the clamp edges.
    ties = torch.tensor([exact_tie(k) for k in range(64, 76)], dtype=torch.float32)
    decoded[0, 0, 0, :] = ties
    decoded[0, 1, 0, :4] = torch.tensor([-1.0, 1.0, -1.5, 1.5])
    pils = processor.postprocess(decoded, output_type="pil")
    pixels = torch.from_numpy(np.stack([np.array(p) for p in pils]))  # (B,H,W,3) uint8

    # Pre-processing: an RGB PNG of the requested size -> (1,3,H,W) in [-1,1].
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    rgb[0, :3] = [[0, 0, 0], [255, 255, 255], [128, 127, 1]]
    PIL.Image.fromarray(rgb).save(out_dir / "rgb_24x16.png")
    pre = processor.preprocess(PIL.Image.open(out_dir / "rgb_24x16.png"), height=16, width=24)

    common.save_tensors(
        out_dir / "processing.safetensors",
        {"decoded": decoded, "pixels": pixels, "preprocessed": pre},
    )

    # PNGs written by PIL the way A1111 writes them (add_text, no compression), plus a zTXt one.
    small = PIL.Image.fromarray(rgb[:4, :4])
    latin1 = (
        "a café, \"quoted\"\nNegative prompt: ugly\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512"
    )
    unicode = "猫 with a hat ✨\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 64x64"
    for name, value, zip_ in (
        ("text_latin1.png", latin1, False),
        ("text_unicode.png", unicode, False),
        ("text_zip.png", latin1, True),
    ):
        info = PIL.PngImagePlugin.PngInfo()
        info.add_text("parameters", value, zip=zip_)
        small.save(out_dir / name, pnginfo=info)
    common.save_json(
        out_dir / "text_chunks.json",
        {"text_latin1.png": latin1, "text_unicode.png": unicode, "text_zip.png": latin1},
    )




# --- AUTOMATIC1111 infotext, restated from A1111's modules/infotext_utils.py and
# processing.create_infotext (A1111 itself is not a dependency). Python's re and json give the
# exact semantics (regex classes, JSON escaping) that the Rust port must reproduce.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_quote(value):
    text = str(value)
    if "," in text or "\n" in text or ":" in text:
        return json.dumps(value, ensure_ascii=False)
    return value


def a1111_unquote(text):
    if not text or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def a1111_create(prompt, negative_prompt, params):
    line = ", ".join(k if k == v else f"{k}: {a1111_quote(v)}" for k, v in params)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def a1111_parse(text):
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    params = []
    for k, v in A1111_PARAM.findall(last):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = a1111_unquote(v)
            params.append([k, v])
        except IndexError:  # an empty value: A1111 reports it and skips the pair
            pass
    return {"prompt": prompt, "negative_prompt": negative, "params": params}


INFOTEXT_CASES = [
    ("a cat", "", [("Steps", "20"), ("Sampler", "Euler a"), ("CFG scale", "7"), ("Seed", "1234")]),
    (
        "a red fox, autumn forest\n(detailed fur:1.2), [blurry]",
        "ugly, lowres\nbad hands",
        [
            ("Steps", "30"),
            ("Sampler", "DPM++ 2M"),
            ("Schedule type", "Karras"),
            ("CFG scale", "7.5"),
            ("Seed", "965400086"),
            ("Size", "512x768"),
            ("Model hash", "6ce0161689"),
            ("Model", "v1-5-pruned-emaonly"),
            ("Lora hashes", "detail: 1a2b3c4d5e6f, style: 0f9e8d7c6b5a"),
            ("Note", 'say "hi"\tthen\\leave\nnext line, \x01 and é 猫'),
            ("Denoising strength", "0.75"),
            ("Version", "v1.10.1"),
        ],
    ),
    ("  spaced prompt  ", "", [("Steps", "5"), ("Hires upscale", "2"), ("RNG", "CPU"), ("NGMS", "NGMS")]),
    ("only a prompt, no: parameters", "", []),
    ("", "neg only", [("Steps", "1"), ("Seed", "2"), ("Size", "64x64")]),
    ("emoji ✨ prompt", "", [("Steps", "20"), ("Empty", ""), ("Sampler", "Euler"), ("Seed", "3")]),
]

INFOTEXT_PARSE_ONLY = [
    "a prompt\nSteps: 20, Sampler: Euler a",
    "line one\n\nline three\nNegative prompt: n1\nn2\nSteps: 1, Seed: 2, Size: 8x8",
    'p\nSteps: 20, Lora hashes: "a: 1, b: 2", Broken: "unterminated, Seed: 4, Size: 8x8',
    "p\r\nNegative prompt:   spaced neg  \r\nSteps: 2,  CFG scale:7, Seed : 9, x-y/z key: v",
    'p\nSteps: 20, Bad: "not \\q json", Seed: 5, Size: 16x16',
]


def make_infotext(root):
    cases = []
    for prompt, negative, params in INFOTEXT_CASES:
        text = a1111_create(prompt, negative, params)
        cases.append(
            {
                "prompt": prompt,
                "negative_prompt": negative,
                "params": [list(p) for p in params],
                "text": text,
                "parsed": a1111_parse(text),
            }
        )
    parse_only = [{"text": t, "parsed": a1111_parse(t)} for t in INFOTEXT_PARSE_ONLY]
    quotes = {v: a1111_quote(v) for v in ["plain", "a, b", "k: v", "x\ny", 'say "hi"', "tab\there", "\x1f:"]}
    common.save_json(
        root / "image" / "infotext.json",
        {"create": cases, "parse": parse_only, "quote": quotes},
    )


def make(root):
    make_vae(root)
    make_manifests()
    make_image(root)
    make_infotext(root)
