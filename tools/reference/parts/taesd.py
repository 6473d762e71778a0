"""The tiny autoencoder (TAESD, diffusers' AutoencoderTiny) that live previews decode with.

Writes:
  fixtures/models/tiny-taesd/               a tiny random AutoencoderTiny (diffusers folder)
  fixtures/taesd/taesd_decoder.safetensors  its decoder under TAESD's own names (the
  fixtures/taesd/taesd_encoder.safetensors  `nn.Sequential` indices that A1111 and ComfyUI
                                            load; the decoder's are shifted by one, behind
                                            its leading clamp)
  fixtures/taesd/tiny.safetensors           inputs and outputs of encode / decode
  fixtures/manifests/taesd.json             the full-size (published) name -> shape manifest
"""

import torch
from diffusers import AutoencoderTiny

import common

# The published madebyollin/taesd layout (64 channels, 1-3-3-3 / 3-3-3-1 blocks) at 8 channels.
TINY_TAESD = dict(
    encoder_block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    latent_channels=4,
)


def taesd_names(state, part, shift):
    """`part.layers.N.rest` -> `(N + shift).rest`: TAESD's own file for one part."""
    prefix = f"{part}.layers."
    out = {}
    for name, value in state.items():
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            out[f"{int(index) + shift}.{rest}"] = value
    return out


def make(root):
    common.seed_everything(4321)
    vae = AutoencoderTiny(**TINY_TAESD)
    common.randomize_(vae, std=0.1)
    common.round_params_to_f16(vae)
    vae.eval()
    vae.save_pretrained(str(common.MODELS / "tiny-taesd"), safe_serialization=True)

    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    common.save_tensors(root / "taesd" / "taesd_decoder.safetensors", taesd_names(state, "decoder", 1))
    common.save_tensors(root / "taesd" / "taesd_encoder.safetensors", taesd_names(state, "encoder", 0))

    g = torch.Generator().manual_seed(17)
    # Latents in the UNet's scale (what a sampler's estimate holds), some past tanh's knee.
    latents = torch.randn(2, 4, 4, 6, generator=g) * 2.5
    latents_odd = torch.randn(1, 4, 3, 5, generator=g)
    images = torch.rand(2, 3, 32, 48, generator=g) * 2 - 1
    images_odd = torch.rand(1, 3, 40, 24, generator=g) * 2 - 1
    with torch.no_grad():
        out = {
            "latents": latents,
            "latents_odd": latents_odd,
            "decoded": vae.decode(latents).sample,
            "decoded_odd": vae.decode(latents_odd).sample,
            "images": images,
            "images_odd": images_odd,
            "encoded": vae.encode(images).latents,
            "encoded_odd": vae.encode(images_odd).latents,
        }
    common.save_tensors(root / "taesd" / "tiny.safetensors", out)

    with torch.device("meta"):
        full = AutoencoderTiny()
    common.write_manifest("taesd", full)
