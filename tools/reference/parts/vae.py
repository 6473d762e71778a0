"""The VAE (AutoencoderKL) and the image layer (pre/post-processing, PNG text chunks).

Writes:
  fixtures/models/tiny-sd15/vae/            a tiny random AutoencoderKL (diffusers folder)
  fixtures/vae/tiny_sd15.safetensors        inputs and outputs of encode / sample / decode
  fixtures/image/*                          VaeImageProcessor pre/post-processing and PNGs
                                            carrying A1111 `parameters` text chunks written by PIL
  fixtures/manifests/vae_sd15.json, vae_sdxl.json   full-size name -> shape manifests
"""

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


def make(root):
    make_vae(root)
    make_manifests()
    make_image(root)
