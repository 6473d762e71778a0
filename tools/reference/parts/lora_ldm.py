"""A kohya LoRA whose UNet keys use the original LDM module names, as some SD 1.x trainers
write them (`lora_unet_input_blocks_1_1_proj_in` for diffusers'
`lora_unet_down_blocks_0_attentions_0_proj_in`).

fixtures/lora/kohya_ldm.safetensors is fixtures/lora/kohya.safetensors (parts/lora.py) with
every `lora_unet_` module renamed by the hand-written table below (SD 1.x layout, 2 ResNets per
block: down block b layer l -> input_blocks_{1 + 3b + l}, up block b layer l ->
output_blocks_{3b + l}, mid attention -> middle_block_1; ResNet conv1 -> in_layers_2,
conv_shortcut -> skip_connection). The text-encoder keys are unchanged. The Rust test checks
that both files patch the model identically.
"""

from pathlib import Path

from safetensors.torch import load_file, save_file

RENAMES = {
    "down_blocks_0_attentions_0_": "input_blocks_1_1_",
    "down_blocks_0_resnets_0_conv1": "input_blocks_1_0_in_layers_2",
    "mid_block_attentions_0_": "middle_block_1_",
    "up_blocks_0_resnets_0_conv_shortcut": "output_blocks_0_0_skip_connection",
    "up_blocks_1_attentions_2_": "output_blocks_5_1_",
}


def make(root: Path) -> None:
    out = root / "lora"
    tensors = load_file(str(out / "kohya.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        new = key
        if key.startswith("lora_unet_"):
            rest = key[len("lora_unet_"):]
            matches = [(a, b) for a, b in RENAMES.items() if rest.startswith(a)]
            assert len(matches) == 1, key
            a, b = matches[0]
            new = "lora_unet_" + b + rest[len(a):]
        renamed[new] = value.contiguous()
    save_file(renamed, str(out / "kohya_ldm.safetensors"))
    print(f"  {sum(k.startswith('lora_unet_') for k in renamed)} UNet keys renamed")
