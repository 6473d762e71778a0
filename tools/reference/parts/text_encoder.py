"""CLIP text encoders: two tiny random models (one per key layout and flavour), their outputs on
real tokenized prompts, and the name/shape manifests of the full-size SD 1.5 / 2.1 / SDXL encoders.

Writes:
- fixtures/models/tiny-sd15/text_encoder/: OpenAI-CLIP flavour (quick_gelu) `CLIPTextModel`,
  saved by transformers 5.x, whose keys have no `text_model.` prefix; f16 storage.
- fixtures/models/tiny-sd15/model_index.json: the pipeline's component list.
- fixtures/text_encoder/tiny-openclip-proj/: OpenCLIP flavour (gelu) `CLIPTextModelWithProjection`,
  whose keys carry the `text_model.` prefix; f16 storage.
- fixtures/text_encoder/<model>_io.safetensors: input ids (int64), every hidden state,
  last_hidden_state, clip-skip outputs, pooler_output (and text_embeds) for each tiny model,
  and the pooled output for a crafted row without an end-of-text token.
- fixtures/manifests/text_encoder_{sd15,sd21,sdxl_1,sdxl_2}.json.
"""

import gzip
import tempfile
from pathlib import Path

import torch

import common

MAX_LEN = 77
VOCAB_SIZE = 49408
# CLIP keeps the first 49152 - 256 - 2 merges of the BPE file (after its header line).
N_MERGES = 49152 - 256 - 2

PROMPTS = [
    "a photograph of an astronaut riding a horse on mars",
    "A watercolor painting of a lighthouse at dusk, highly detailed, trending on artstation!",
    "",
]


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2 style byte-level BPE uses for raw bytes, in id order."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in printable] + [table[b] for b in range(256) if b not in printable]


def _tokenizers():
    """transformers' CLIPTokenizer built offline from open_clip's BPE file, once padding with
    `<|endoftext|>` (SD 1.x) and once with `!` (SD 2.x / SDXL's second encoder)."""
    from transformers import CLIPTokenizer

    lines = gzip.open(common.clip_vocab_gz()).read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + N_MERGES]
    alphabet = _byte_alphabet()
    tokens = alphabet + [t + "</w>" for t in alphabet]
    tokens += ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE
    with tempfile.TemporaryDirectory() as tmp:
        import json

        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
        )
        eos_padded = CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_LEN)
        bang_padded = CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_LEN, pad_token="!")
    return eos_padded, bang_padded


def _ids(tokenizer) -> torch.Tensor:
    """(len(PROMPTS), 77) int64 ids, padded to 77 and truncated as the SD pipelines do."""
    ids = tokenizer(
        PROMPTS, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt"
    ).input_ids
    assert ids.shape == (len(PROMPTS), MAX_LEN)
    return ids.to(torch.int64)


def _tiny_config(flavour: str):
    from transformers import CLIPTextConfig

    common_args = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=common.TINY_TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        projection_dim=32,
        layer_norm_eps=1e-5,
        pad_token_id=1,
    )
    if flavour == "openai":
        # As SD 1.5's text_encoder/config.json: bos 0 / eos 2, the legacy values with which
        # transformers pools at the argmax of the ids (the end-of-text token has the highest id).
        return CLIPTextConfig(hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, **common_args)
    # The corrected ids, with which transformers pools at the first end-of-text token.
    return CLIPTextConfig(hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, **common_args)


def _no_eos_ids(ids: torch.Tensor) -> torch.Tensor:
    """A crafted row without any end-of-text token: the two pooling rules disagree on it
    (argmax of ids vs first eos, which falls back to position 0)."""
    row = ids[0].clone()
    row[row >= 49406] = 320  # "a</w>" in place of every start- and end-of-text token
    row[40] = 49406  # one stray start-of-text token, now the highest id
    return row.unsqueeze(0)


def _record(model, ids: torch.Tensor, projected: bool) -> dict:
    with torch.no_grad():
        text_model = model.text_model if projected else model
        out = text_model(input_ids=ids, output_hidden_states=True)
        record = {"input_ids": ids}
        for i, h in enumerate(out.hidden_states):
            record[f"hidden_states.{i}"] = h
        record["last_hidden_state"] = out.last_hidden_state
        # diffusers' clip_skip for SD 1.x/2.x: hidden_states[-(k + 1)] through final_layer_norm.
        for k in (1, 2):
            record[f"clip_skip.{k}"] = text_model.final_layer_norm(out.hidden_states[-(k + 1)])
        record["pooler_output"] = out.pooler_output
        if projected:
            full = model(input_ids=ids)
            record["text_embeds"] = full.text_embeds
            assert torch.equal(full.last_hidden_state, out.last_hidden_state)
        no_eos = _no_eos_ids(ids)
        record["no_eos.input_ids"] = no_eos
        record["no_eos.pooler_output"] = text_model(input_ids=no_eos).pooler_output
    return record


def _make_tiny(flavour: str, cls, folder: Path, seed: int, ids: torch.Tensor, io_path: Path):
    common.seed_everything(seed)
    model = cls(_tiny_config(flavour)).eval()
    common.randomize_(model)
    common.round_params_to_f16(model)
    record = _record(model, ids, projected=cls.__name__.endswith("WithProjection"))
    model.to(torch.float16).save_pretrained(folder)
    common.save_tensors(io_path, record, metadata={"flavour": flavour, "class": cls.__name__})
    return model


def _write_model_index(root: Path) -> None:
    common.save_json(
        root / "models" / "tiny-sd15" / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )


def _full_size_manifests() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vit_l = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768)
    presets = {
        "text_encoder_sd15": (CLIPTextModel, vit_l),
        "text_encoder_sd21": (CLIPTextModel, dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, hidden_act="gelu", projection_dim=512)),
        "text_encoder_sdxl_1": (CLIPTextModel, vit_l),
        "text_encoder_sdxl_2": (CLIPTextModelWithProjection, dict(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, hidden_act="gelu", projection_dim=1280)),
    }
    for name, (cls, args) in presets.items():
        config = CLIPTextConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_LEN,
                                bos_token_id=0, eos_token_id=2, pad_token_id=1, **args)
        with torch.device("meta"):
            model = cls(config)
        common.write_manifest(name, model)


def make(root: Path) -> None:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    eos_padded, bang_padded = _tokenizers()
    ids_sd15 = _ids(eos_padded)
    ids_openclip = _ids(bang_padded)
    assert (ids_sd15[:, -1] == 49407).all() and (ids_openclip[:, -1] == 0).all()

    out = root / "text_encoder"
    _make_tiny("openai", CLIPTextModel, root / "models" / "tiny-sd15" / "text_encoder", 1001,
               ids_sd15, out / "tiny_sd15_io.safetensors")
    _make_tiny("openclip", CLIPTextModelWithProjection, out / "tiny-openclip-proj", 1002,
               ids_openclip, out / "tiny_openclip_proj_io.safetensors")
    _write_model_index(root)
    _full_size_manifests()
    print("text_encoder: tiny-sd15/text_encoder, text_encoder/tiny-openclip-proj, 4 manifests")
