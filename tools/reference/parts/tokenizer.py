"""The CLIP BPE tokenizer: a prompt corpus and the ids transformers' CLIPTokenizer gives for it.

Writes
- fixtures/tokenizer/prompts.json: the corpus (hand-written cases plus seeded random mixtures);
- fixtures/tokenizer/ids.json: per prompt, the untruncated ids and the ids truncated and padded to
  77 with both padding styles (`<|endoftext|>` as in SD 1.x / SDXL's first encoder, `!` = id 0 as
  in SD 2.x / SDXL's second encoder), the untruncated ids of the `!`-padding tokenizer (which
  reads a `!` in the prompt as its special pad token), and transformers' decode;
- fixtures/models/tiny-sd15/tokenizer/: the tokenizer folder of a diffusers pipeline (vocab.json,
  merges.txt, tokenizer_config.json, special_tokens_map.json), built offline from the BPE file
  that ships in the open_clip_torch wheel.
"""

import gzip
import json
import random
import tempfile
from pathlib import Path

import common

MAX_LEN = 77
# The BPE file holds a header line, then far more merges than CLIP uses: CLIP keeps the first
# 49152 - 256 - 2 of them, so that 256 bytes + 256 `</w>` forms + merges + 2 specials = 49408.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, in the order CLIP lists the byte tokens."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    bs, cs = printable[:], printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The vocabulary and merges exactly as CLIP builds them from the .gz file."""
    lines = gzip.open(common.clip_vocab_gz()).read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + N_MERGES]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return vocab, merges


def write_vocab_folder(folder: Path, vocab: dict[str, int], merges: list[str]) -> None:
    """vocab.json + merges.txt in the layout of a diffusers `tokenizer/` folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def hand_written_prompts() -> list[str]:
    """Cases chosen to exercise every step: normalization, the split regex, bytes, BPE, specials."""
    long_words = " ".join(
        ["a highly detailed matte painting of a castle on a hill at sunset"] * 12
    )
    return [
        "",
        " ",
        "   \t\n  ",
        "\n",
        "a photo of an astronaut riding a horse on mars",
        "A Photo Of An Astronaut Riding A Horse On Mars",
        "A PHOTO OF AN ASTRONAUT RIDING A HORSE ON MARS",
        "a   photo    of\tan\t\tastronaut\n\nriding a horse",
        "  leading and trailing spaces  ",
        "line one\nline two\r\nline three\rline four",
        "tab\tseparated\tvalues\t1\t2\t3",
        "cat",
        "cats",
        "a",
        "I",
        "it's a dog's life, isn't it? they're here, we've gone, I'm ok, you'll see, he'd go",
        "IT'S A DOG'S LIFE, ISN'T IT? THEY'RE HERE",
        "'s 't 're 've 'm 'll 'd",
        "''s '''t quote's end'",
        "rock 'n' roll",
        "the year 1984 and 2001: a space odyssey",
        "12345678901234567890",
        "3.14159 2,718 1e-5 -42 +7 50% $100 #1",
        "0x1F 0b1010 v1.5 sd2.1 xl-1.0",
        "hello, world! how are you? fine... thanks!!!",
        "!!!???...,,,;;;:::",
        "(masterpiece:1.2), (best quality), [blurry], ((ultra detailed)), {{extra}}",
        "(masterpiece:1.2), best quality, 1girl, solo, [lowres:0.5], (worst quality:1.4)",
        "a cat BREAK a dog BREAK a bird",
        "a [cat:dog:0.5] in a [red|blue] room, <lora:myLora:0.8>, embedding:foo",
        "a (((very))) [[[small]]] house",
        "\\(escaped parens\\) and \\[brackets\\]",
        "&amp; &lt; &gt; &quot; &#39; &nbsp; &copy;",
        "Tom &amp; Jerry &lt;3",
        "<b>bold</b> <i>italic</i> <br/>",
        "café naïve résumé jalapeño façade Zürich",
        "CAFÉ NAÏVE RÉSUMÉ",
        "cafe\u0301 decomposed e\u0301 vs composed é",
        "A\u030a \u212b angstrom and \u00c5",
        "\uff21\uff22\uff23 fullwidth \uff11\uff12\uff13",
        "ﬁne ligature ﬂow",
        "straße STRASSE ß ẞ",
        "ΑΒΓ αβγ ΟΔΥΣΣΕΥΣ Σ σ ς",
        "İstanbul ı I i",
        "Привет, мир! Москва",
        "日本語のテキスト、東京タワー",
        "一只可爱的猫在花园里",
        "한국어 프롬프트 고양이",
        "ภาษาไทย",
        "हिन्दी पाठ नमस्ते",
        "العربية مرحبا",
        "עברית שלום",
        "emoji 😀 🐱 🚀 ❤️ 👍🏽 🇫🇷",
        "👨‍👩‍👧‍👦 family zwj sequence",
        "a cat🐱with emoji glued",
        "😀😀😀😀😀",
        "★☆♥♦ ✓✗ →← ©®™ °C ±",
        "math: x² + y³ = z½ ∑∫√∞",
        "superscripts ¹²³ and fractions ¼½¾",
        "roman numerals Ⅻ ⅷ",
        "arabic digits ٠١٢٣ and devanagari ०१२",
        "nbsp\u00a0between\u00a0words",
        "ideographic\u3000space",
        "em\u2003space en\u2002space thin\u2009space",
        "line\u2028separator paragraph\u2029separator",
        "next\u0085line",
        "zero\u200bwidth\u200cjoiners\u200d",
        "soft\u00adhyphen",
        "control\u0001chars\u007f",
        "bom\ufeffinside",
        "tab\u000bvertical\u000cformfeed",
        "<|startoftext|>",
        "<|endoftext|>",
        "<|startoftext|>a cat<|endoftext|>",
        "a cat <|endoftext|> a dog <|startoftext|> a bird",
        "<|endoftext|><|endoftext|><|endoftext|>",
        "<|ENDOFTEXT|> upper special",
        "<|startoftext|",
        "<|endoftext",
        "|endoftext|>",
        "<|start of text|>",
        "</w> end of word marker",
        "a</w>b",
        "__underscores__ and --dashes-- and ~~tildes~~",
        "snake_case_name camelCaseName PascalCase kebab-case",
        "https://example.com/path?query=1&b=2#frag",
        "user@example.com",
        "C:\\Users\\name\\file.png",
        "/usr/local/bin",
        "file_name.safetensors model.ckpt",
        "8k uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3",
        "portrait of a woman, 85mm, f/1.8, bokeh",
        "trending on artstation, by greg rutkowski and alphonse mucha",
        "photorealistic, hyperrealistic, unreal engine 5, octane render, 4k",
        "supercalifragilisticexpialidocious",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "abababababababababababababab",
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        "xqzjvk wrdplm",
        "lol omg wtf brb",
        "Mr. Smith went to Washington D.C. at 5 p.m.",
        "\"double quotes\" and 'single quotes' and `backticks`",
        "“curly quotes” and ‘single curly’ and «guillemets»",
        "em—dash en–dash hyphen-minus",
        "ellipsis… and middle·dot",
        "a, b; c: d. e! f? g",
        "word,word.word!word?word",
        "1girl, 2boys, 3d render, 4k",
        "x1.5 1.5x 1,000,000",
        "red-haired girl with blue-green eyes",
        "the quick brown fox jumps over the lazy dog",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
        "The Quick Brown Fox Jumps Over The Lazy Dog",
        "Sphinx of black quartz, judge my vow.",
        long_words,
        " ".join(str(i) for i in range(200)),
        ", ".join(["masterpiece", "best quality", "highres"] * 30),
        "😀" * 60,
        "日本" * 80,
        "a" * 400,
        " ".join(["supercalifragilisticexpialidocious"] * 20),
    ]


WORDS = (
    "a an the of in on at with by and or cat dog castle forest river mountain city night "
    "sunset sunrise portrait landscape painting photo render sketch watercolor oil digital "
    "cyberpunk steampunk fantasy sci-fi futuristic ancient medieval baroque gothic "
    "detailed intricate sharp focus bokeh cinematic lighting volumetric fog rain snow "
    "golden hour blue hour neon glowing dark moody vibrant pastel colorful monochrome "
    "Rutkowski Mucha Monet Van-Gogh Picasso Ghibli Pixar Disney ArtStation DeviantArt "
    "dragon knight wizard elf robot astronaut samurai ninja pirate mermaid "
    "café über naïve Æther Ørsted Łódź Ñandú"
).split()
EXTRAS = [
    ",", ".", "!", "?", ":", ";", "(", ")", "[", "]", "{", "}", "'s", "'", "\"", "-", "_",
    "&amp;", "&gt;", "&#39;", "BREAK", "(masterpiece:1.3)", "[low quality]", "8k", "4K",
    "1.2", "42", "😀", "🔥", "✨", "猫", "ネコ", "고양이", "кот", "  ", "\t", "\n", "...",
    "<|endoftext|>", "<lora:x:1>", "#tag", "@user", "100%", "$5",
]


def random_prompts(n: int, seed: int) -> list[str]:
    """Seeded mixtures of words, punctuation, numbers, emoji and scripts, short and very long."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        length = rng.choice([3, 8, 15, 30, 60, 120, 300])
        parts = []
        for _ in range(length):
            token = rng.choice(EXTRAS) if rng.random() < 0.25 else rng.choice(WORDS)
            if rng.random() < 0.15:
                token = token.upper()
            elif rng.random() < 0.15:
                token = token.capitalize()
            parts.append(token)
            parts.append(rng.choice([" ", " ", " ", ", ", "", "  "]))
        prompts.append("".join(parts))
    return prompts


def make(root: Path) -> None:
    """Writes the corpus, the reference ids and the tiny pipeline's tokenizer folder."""
    from transformers import CLIPTokenizer

    common.seed_everything(0)
    vocab, merges = clip_vocab_and_merges()
    prompts = hand_written_prompts() + random_prompts(60, seed=1234)
    assert len(prompts) >= 150, len(prompts)
    assert len(set(prompts)) == len(prompts), "duplicate prompts"

    folder = common.MODELS / "tiny-sd15" / "tokenizer"
    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_folder(Path(tmp), vocab, merges)
        tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_LEN)
        tok_excl = CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_LEN, pad_token="!")
        # transformers 5 saves only tokenizer.json (3.6 MB); a diffusers pipeline folder as
        # published holds vocab.json + merges.txt + the two small JSON files, so write that.
        tok.save_pretrained(tmp)
        config = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "backend"):
        config.pop(key, None)
    write_vocab_folder(folder, vocab, merges)
    common.save_json(folder / "tokenizer_config.json", config)
    special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    common.save_json(folder / "special_tokens_map.json", special)

    # The committed folder must load back as the same tokenizer.
    reloaded = CLIPTokenizer.from_pretrained(str(folder))
    assert reloaded.model_max_length == MAX_LEN
    assert len(reloaded) == VOCAB_SIZE
    assert tok.pad_token_id == 49407 and tok_excl.pad_token_id == 0

    records = []
    for text in prompts:
        ids = tok(text).input_ids
        assert reloaded(text).input_ids == ids
        pad_eot = tok(text, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids
        pad_excl = tok_excl(text, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids
        assert len(pad_eot) == MAX_LEN and len(pad_excl) == MAX_LEN
        records.append(
            {
                "text": text,
                "ids": ids,
                "padded_eot": pad_eot,
                "padded_excl": pad_excl,
                # With pad_token "!", a "!" in the prompt is read as that special token (id 0).
                "ids_excl": tok_excl(text).input_ids,
                "decoded": tok.decode(ids, skip_special_tokens=True),
            }
        )

    out = root / "tokenizer"
    common.save_json(out / "prompts.json", prompts)
    # One record per line keeps the file small and diffable.
    lines = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    (out / "ids.json").write_text(
        '{"max_len": %d, "vocab_size": %d, "records": [\n%s\n]}\n' % (MAX_LEN, VOCAB_SIZE, lines),
        encoding="utf-8",
    )
    print(f"tokenizer: {len(prompts)} prompts, {len(vocab)} tokens, folder {folder}")
