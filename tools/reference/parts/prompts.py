"""Prompt control: A1111 prompt syntax, chunked long prompts with emphasis, clip skip, textual
inversion.

- parse_cases.json: prompts and the pieces AUTOMATIC1111's `parse_prompt_attention` gives for
  them. The expected pieces are WRITTEN BY HAND below from A1111's rules (each case's comment
  says why); Python only evaluates the weight products (so 1.1*1.1 is Python's float, as in
  A1111) and writes them out. No parser runs here.
- emphasis.safetensors: the tiny SD 1.5 text encoder's output for A1111-syntax prompts, chunked
  and weighted as A1111 does (own code below, from the rules: 75-token chunks, a comma within
  the last 20 tokens moves the break, BREAK, each chunk wrapped in start/end and padded; output
  multiplied by the weights, then scaled back to the original mean).
- pipeline cases (clip skip, textual inversion): `sd generate` arguments and diffusers' images.
"""

from pathlib import Path

import numpy as np
import torch

import common
from parts.pipeline import MODEL, make_scheduler

R = 1.1  # (text)
S = 1 / 1.1  # [text]
B = ["BREAK", -1.0]

# (prompt, expected pieces [[text, weight], ...])
PARSE_CASES = [
    ("", [["", 1.0]]),  # nothing: one empty piece
    ("a cat", [["a cat", 1.0]]),
    ("(a cat)", [["a cat", R]]),
    ("((a cat))", [["a cat", 1.0 * R * R]]),
    ("(((a)))", [["a", 1.0 * R * R * R]]),
    ("[a cat]", [["a cat", 1.0 * S]]),
    ("[[a cat]]", [["a cat", 1.0 * S * S]]),
    ("(a cat:1.3)", [["a cat", 1.3]]),
    ("(a cat: 1.3 )", [["a cat", 1.3]]),  # spaces around the number
    ("(a:0.5) b", [["a", 0.5], [" b", 1.0]]),
    ("a (b:1.5) c", [["a ", 1.0], ["b", 1.5], [" c", 1.0]]),
    ("((a:1.2))", [["a", 1.2 * R]]),  # inner weight first, then the outer ()
    ("([a])", [["a", 1.0 * S * R]]),  # ] closes first; S*R is exactly 1.0 in floats
    ("x ([a]) y", [["x a y", 1.0]]),  # ... so the pieces merge back into one
    ("a (b) [c] d", [["a ", 1.0], ["b", R], [" ", 1.0], ["c", S], [" d", 1.0]]),
    ("\\(a\\)", [["(a)", 1.0]]),  # escaped round brackets are text
    ("\\[a\\]", [["[a]", 1.0]]),
    ("a \\\\ b", [["a \\ b", 1.0]]),  # escaped backslash
    ("a\\b", [["ab", 1.0]]),  # a lone backslash is dropped
    ("(a", [["a", R]]),  # unclosed ( applies to the end
    ("a)", [["a)", 1.0]]),  # unmatched ) is text
    ("a]", [["a]", 1.0]]),
    ("[a", [["a", S]]),
    ("(a [b", [["a ", R], ["b", 1.0 * R * S]]),  # open ( applied before open [
    ("a:b", [["a:b", 1.0]]),  # lone colons are text
    ("a:1.2)", [["a:1.2)", 1.0]]),  # :w) with no open ( is text
    ("(a:1.2", [["a:1.2", R]]),  # no ) after the number: text, and the ( stays open
    ("(a:-0.5)", [["a", -0.5]]),
    ("(a:+2)", [["a", 2.0]]),
    ("(a:.5)", [["a", 0.5]]),
    ("x (a:1.) y", [["x a y", 1.0]]),  # weight 1.0 merges with the neighbours
    ("a BREAK b", [["a", 1.0], B, ["b", 1.0]]),  # spaces around BREAK go with it
    ("a BREAKb", [["a BREAKb", 1.0]]),  # not a whole word
    ("a break b", [["a break b", 1.0]]),  # upper case only
    ("BREAK", [["", 1.0], B, ["", 1.0]]),
    ("a,BREAK,b", [["a,", 1.0], B, [",b", 1.0]]),
    ("(a BREAK b)", [["a", R], ["BREAK", -1.0 * R], ["b", R]]),  # brackets scale BREAK's -1 too
    ("a  BREAK  \n b", [["a", 1.0], B, ["b", 1.0]]),
    ("a BREAK BREAK b", [["a", 1.0], B, ["", 1.0], B, ["b", 1.0]]),
    ("a BREAK", [["a", 1.0], B, ["", 1.0]]),
    ("(a) (b)", [["a", R], [" ", 1.0], ["b", R]]),
    ("(a)(b)", [["ab", R]]),
    ("[a:b:0.5]", [["a:b:0.5", S]]),  # prompt editing is not this parser's business
    (
        "(masterpiece:1.2), best quality, (detailed eyes:0.8)",
        [["masterpiece", 1.2], [", best quality, ", 1.0], ["detailed eyes", 0.8]],
    ),
    ("((a) b)", [["a", 1.0 * R * R], [" b", R]]),
    ("(a:1.5)(b:1.5)", [["ab", 1.5]]),
    ("\\\\(a)", [["\\", 1.0], ["a", R]]),
    ("\\(a:1.3)", [["(a:1.3)", 1.0]]),  # \( is text, so :1.3) has no open (
    ("(a\\)b)", [["a)b", R]]),
    ("()", [["", 1.0]]),
    ("(a:0)", [["a", 0.0]]),
    ("x (y:1.1) (z)", [["x ", 1.0], ["y", 1.1], [" ", 1.0], ["z", 1.1]]),
    ("(y:1.1)(z)", [["yz", 1.1]]),  # 1.1 written and 1.0*1.1 are the same float
    ("a [b (c:1.4)] d", [["a ", 1.0], ["b ", S], ["c", 1.4 * S], [" d", 1.0]]),
    ("(猫:1.2) café", [["猫", 1.2], [" café", 1.0]]),
    ("[a] [b]", [["a", S], [" ", 1.0], ["b", S]]),
    (
        "(a:1.3) BREAK (b:0.7)",
        [["a", 1.3], ["", 1.0], B, ["", 1.0], ["b", 0.7]],
    ),
    ("((a:1.2) b:0.5)", [["a", 1.2 * 0.5], [" b", 0.5]]),
    ("(a:1.5 )", [["a", 1.5]]),
    ("a : b", [["a : b", 1.0]]),
    ("(a :1.3)", [["a ", 1.3]]),
    ("[a|b]", [["a|b", S]]),
    ("<lora:x:1>", [["<lora:x:1>", 1.0]]),  # tags are cut out before this parser
    ("((a)", [["a", 1.0 * R * R]]),  # one closed, one left open
    ("a))", [["a))", 1.0]]),
    ("[(a:2)]", [["a", 2.0 * S]]),
    (
        "a (red:1.5) circle on a [blue] background",
        [["a ", 1.0], ["red", 1.5], [" circle on a ", 1.0], ["blue", S], [" background", 1.0]],
    ),
    ("((a red circle)) on a blue (background:0.6)", [["a red circle", 1.0 * R * R], [" on a blue ", 1.0], ["background", 0.6]]),
    ("a red circle BREAK on a blue background", [["a red circle", 1.0], B, ["on a blue background", 1.0]]),
]

# (prompt, text after removal, [[kind, args...]])
EXTRA_NETWORK_CASES = [
    ("a cat <lora:film:0.8>", "a cat ", [["lora", "film", "0.8"]]),
    ("<lora:a:1><lora:b:0.5:0.2> x", " x", [["lora", "a", "1"], ["lora", "b", "0.5", "0.2"]]),
    ("<hypernet:h:1> x <lora:y>", " x ", [["hypernet", "h", "1"], ["lora", "y"]]),
    ("a <b> <:c> <lora:> d", "a <b> <:c> <lora:> d", []),
    ("x < lora:a:1>", "x < lora:a:1>", []),
]

LONG_WEIGHTED = (
    "(masterpiece:1.3), best quality, a ((lighthouse)) on a [rocky] cliff at dusk, "
    "dramatic clouds, crashing waves, (seagulls:0.7), warm light from the windows, "
    "by an old master, cinematic composition, high contrast, rich colours, intricate brushwork, "
    "golden hour, mist over the sea, tiny boats on the horizon, a winding path with lanterns "
    "leading up to the door, a small red rowing boat pulled up on the shingle BREAK "
    "stars appearing in a (violet sky:1.2), the first beam of the lamp sweeping over the water"
)

EMPHASIS_PROMPTS = {
    "weighted": "a (red:1.5) circle on a [blue] background",
    "nested": "((a red circle)) on a blue (background:0.6)",
    "long": LONG_WEIGHTED,
    "break": "a red circle BREAK on a blue background",
    "empty": "",
}


def a1111_chunks(pieces, tokenizer, comma_id, chunk_len=75, backtrack=20):
    """Chunking from A1111's rules (see the module docstring); returns [(ids77, weights77)]."""
    chunks, tokens, weights, last_comma = [], [], [], -1

    def close():
        nonlocal tokens, weights, last_comma
        chunks.append((tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for text, weight in pieces:
        if text == "BREAK" and weight == -1:
            close()
            continue
        for tok in tokenizer(text, add_special_tokens=False)["input_ids"]:
            if tok == comma_id:
                last_comma = len(tokens)
            elif len(tokens) == chunk_len and last_comma != -1 and len(tokens) - last_comma <= backtrack:
                moved = (tokens[last_comma + 1:], weights[last_comma + 1:])
                tokens, weights = tokens[:last_comma + 1], weights[:last_comma + 1]
                close()
                tokens, weights = moved
            if len(tokens) == chunk_len:
                close()
            tokens.append(tok)
            weights.append(weight)
    if tokens or not chunks:
        close()
    out = []
    for toks, ws in chunks:
        pad = chunk_len - len(toks)
        ids = [tokenizer.bos_token_id] + toks + [tokenizer.eos_token_id] * (pad + 1)
        out.append((ids, [1.0] + ws + [1.0] * (pad + 1)))
    return out


def encode_a1111(pieces, tokenizer, text_encoder, clip_skip=1):
    comma_id = tokenizer.get_vocab()[",</w>"]
    zs = []
    for ids, weights in a1111_chunks(pieces, tokenizer, comma_id):
        out = text_encoder(torch.tensor([ids]), output_hidden_states=True)
        if clip_skip > 1:
            z = text_encoder.final_layer_norm(out.hidden_states[-clip_skip])
        else:
            z = out.last_hidden_state
        original_mean = z.mean()
        z = z * torch.tensor(weights, dtype=torch.float32).reshape(1, -1, 1)
        z = z * (original_mean / z.mean())
        zs.append(z)
    return torch.cat(zs, dim=1)


BASE = dict(
    common.BASE_REQUEST,
    sampler="euler_a",
)

PIPELINE_CASES = [
    dict(BASE, name="clip_skip2", clip_skip=2, sampler="ddim"),
    dict(BASE, name="clip_skip3_euler_a_cfg1", clip_skip=3, cfg_scale=1.0, negative_prompt=""),
    dict(BASE, name="ti_single", ti="single", prompt="a red tisingle circle on a blue background"),
    dict(BASE, name="ti_multi", ti="multi", prompt="a tivec circle on a blue background, tivec", sampler="ddim"),
]


def make_embeddings(out: Path) -> dict:
    """Random embeddings: a diffusers `{token: (32,)}` file and an A1111 `emb_params` (3, 32)."""
    torch.manual_seed(7)
    single = (torch.randn(common.TINY_TEXT_HIDDEN) * 0.5).half().float()
    multi = (torch.randn(3, common.TINY_TEXT_HIDDEN) * 0.5).half().float()
    wrong = torch.randn(2, 48)
    common.save_tensors(out / "tisingle.safetensors", {"tisingle": single})
    common.save_tensors(out / "tivec.safetensors", {"emb_params": multi})
    common.save_tensors(out / "wrongwidth.safetensors", {"emb_params": wrong})
    return {"single": ("tisingle", out / "tisingle.safetensors"), "multi": ("tivec", out / "tivec.safetensors")}


def args_for(c) -> list:
    args = [
        "--prompt", c["prompt"],
        "--negative-prompt", c["negative_prompt"],
        "--width", str(c["width"]), "--height", str(c["height"]),
        "--steps", str(c["steps"]), "--cfg-scale", str(c["cfg_scale"]),
        "--sampler", c["sampler"], "--seed", str(c["seed"]),
    ]
    if not c["negative_prompt"]:
        args = args[:2] + args[4:]
    if c.get("clip_skip"):
        args += ["--clip-skip", str(c["clip_skip"])]
    if c.get("ti"):
        name = {"single": "tisingle", "multi": "tivec"}[c["ti"]]
        args += ["--embedding", f"{name}.safetensors"]
    return args


def make(root: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    out = root / "prompts"
    out.mkdir(parents=True, exist_ok=True)

    PARSE_CASES.append((LONG_WEIGHTED, hand_parse_long(LONG_WEIGHTED)))
    common.save_json(
        out / "parse_cases.json",
        # Each weight also as Python's repr, which a correctly rounding parser reads back exactly.
        [{"prompt": p, "expected": [[t, float(w), repr(float(w))] for t, w in e]} for p, e in PARSE_CASES],
    )
    common.save_json(
        out / "extra_network_cases.json",
        [{"prompt": p, "text": t, "tags": tags} for p, t, tags in EXTRA_NETWORK_CASES],
    )

    tokenizer = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(str(MODEL / "text_encoder"), torch_dtype=torch.float32).eval()
    expected = dict(PARSE_CASES)
    tensors = {}
    with torch.no_grad():
        for name, prompt in EMPHASIS_PROMPTS.items():
            pieces = expected[prompt]
            tensors[name] = encode_a1111(pieces, tokenizer, text_encoder)
            tensors[name + "_clip_skip2"] = encode_a1111(pieces, tokenizer, text_encoder, clip_skip=2)
            print(f"  {name}: {tuple(tensors[name].shape)}")
    common.save_tensors(out / "emphasis.safetensors", tensors)
    common.save_json(out / "emphasis_prompts.json", EMPHASIS_PROMPTS)

    embeddings = make_embeddings(out)
    cases = []
    for c in PIPELINE_CASES:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(MODEL), safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32
        )
        pipe.set_progress_bar_config(disable=True)
        # diffusers 0.42.1's clip_skip reads `text_encoder.text_model.final_layer_norm`, which
        # transformers 5 no longer has (CLIPTextModel is flat): alias it, unregistered.
        object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
        pipe.scheduler = make_scheduler(pipe, c["sampler"], "default")
        if c.get("ti"):
            token, path = embeddings[c["ti"]]
            pipe.load_textual_inversion(str(path), token=token)
        kwargs = dict(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"] or None,
            num_inference_steps=c["steps"],
            guidance_scale=c["cfg_scale"],
            width=c["width"],
            height=c["height"],
            generator=torch.Generator("cpu").manual_seed(c["seed"]),
        )
        if c.get("clip_skip") and c["cfg_scale"] <= 1.0:
            kwargs["clip_skip"] = c["clip_skip"] - 1  # diffusers counts layers skipped
        elif c.get("clip_skip"):
            # diffusers applies clip_skip to the prompt only, A1111 (and sd) to the negative
            # prompt too: hand the pipeline both embeddings, each from hidden_states[-N] + LN.
            def embed(text):
                ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt").input_ids
                with torch.no_grad():
                    out = pipe.text_encoder(ids, output_hidden_states=True)
                    return pipe.text_encoder.final_layer_norm(out.hidden_states[-c["clip_skip"]])

            kwargs["prompt_embeds"] = embed(kwargs.pop("prompt"))
            kwargs["negative_prompt_embeds"] = embed(kwargs.pop("negative_prompt"))
        image = pipe(**kwargs).images[0]
        image.save(out / f"{c['name']}.png")
        cases.append(dict(c, args=args_for(c), image=f"{c['name']}.png"))
        print(f"  {c['name']}")
    common.save_json(out / "cases.json", cases)


def hand_parse_long(prompt):
    """The pieces of LONG_WEIGHTED, by hand: (w:1.3), ((x)) = 1.21, [x] = 1/1.1, BREAK."""
    assert prompt == LONG_WEIGHTED
    return [
        ["masterpiece", 1.3],
        [", best quality, a ", 1.0],
        ["lighthouse", 1.0 * R * R],
        [" on a ", 1.0],
        ["rocky", S],
        [" cliff at dusk, dramatic clouds, crashing waves, ", 1.0],
        ["seagulls", 0.7],
        [
            ", warm light from the windows, by an old master, cinematic composition, high contrast, "
            "rich colours, intricate brushwork, golden hour, mist over the sea, tiny boats on the horizon, "
            "a winding path with lanterns leading up to the door, a small red rowing boat pulled up on the shingle",
            1.0,
        ],
        B,
        ["stars appearing in a ", 1.0],
        ["violet sky", 1.2],
        [", the first beam of the lamp sweeping over the water", 1.0],
    ]
