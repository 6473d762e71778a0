#!/usr/bin/env python3
"""Byte-identity check of `sd generate` over every fixture case.

Runs each case of the fixtures' `cases.json` files that has CLI `args` (samplers, families,
prompts, textual inversion, LoRA, img2img, inpainting, refiner, external VAE), plus the extra
cases below (hires fix, variation seeds, seed resize, ENSD, the CUDA stream, A1111 prompt
syntax with <lora:> tags and embedding folders, --from-png), and records the SHA-256 of every
PNG it writes (pixels and infotext). Run it before a refactor, keep the manifest, run it after
and compare:

    python3 tools/check/png_identity.py --sd target/release/sd --out /tmp/before.txt
    # ... change the code, rebuild ...
    python3 tools/check/png_identity.py --sd target/release/sd --out /tmp/after.txt \
        --compare /tmp/before.txt

Each manifest line is `file sha256-of-the-file sha256-of-the-pixels` (the inflated image
data); `--pixels-only` compares only the pixels, for changes that add or change infotext keys
on purpose. Only the standard library is needed. Exit status: 0 when every case ran (and, with --compare,
every hash is unchanged), 1 otherwise.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
TINY = FIXTURES / "models" / "tiny-sd15"

BASE = ["--prompt", "a red circle on a blue background", "--negative-prompt", "blurry",
        "--width", "64", "--height", "64", "--steps", "4", "--seed", "77"]

# Cases beyond the fixtures' own: (name, folder the paths resolve in, model, args).
EXTRA = [
    ("hires_lanczos", "pipeline", "tiny-sd15",
     BASE + ["--hires-scale", "1.5", "--hires-strength", "0.6"]),
    ("hires_latent", "pipeline", "tiny-sd15",
     BASE + ["--hires-scale", "2", "--hires-upscaler", "latent", "--hires-steps", "3"]),
    ("variation", "pipeline", "tiny-sd15",
     BASE + ["--variation-seed", "5", "--variation-strength", "0.3", "--batch-size", "2"]),
    ("seed_resize", "pipeline", "tiny-sd15",
     BASE + ["--seed-resize-from-w", "48", "--seed-resize-from-h", "80"]),
    ("ensd_cuda", "pipeline", "tiny-sd15",
     BASE + ["--sampler", "Euler a", "--ensd", "31337", "--rng", "cuda"]),
    ("a1111_dpmpp_sde", "pipeline", "tiny-sd15",
     BASE + ["--sampler", "DPM++ SDE", "--schedule", "karras", "--rng", "cuda", "--batch-size", "2"]),
    ("a1111_syntax_tags", "lora", "tiny-sd15",
     ["--prompt", "(a red:1.3) circle [on] a blue background <lora:kohya:0.7> BREAK grass",
      "--prompt-syntax", "a1111", "--lora-dir", ".", "--width", "64", "--height", "64",
      "--steps", "4", "--seed", "9", "--clip-skip", "2"]),
    ("prompt_edit", "pipeline", "tiny-sd15",
     ["--prompt", "[a red circle:a blue square:2] on grass", "--prompt-syntax", "a1111",
      "--width", "64", "--height", "64", "--steps", "5", "--seed", "3"]),
    ("embeddings_dir", "prompts", "tiny-sd15",
     ["--prompt", "a tivec circle", "--negative-prompt", "tisingle", "--embeddings-dir", ".",
      "--width", "64", "--height", "64", "--steps", "4", "--seed", "11"]),
    ("schedule_poly", "pipeline", "tiny-sd15",
     BASE + ["--sampler", "DPM++ 2M", "--schedule", "polyexponential"]),
    ("sdxl_hires", "pipeline", "tiny-sdxl",
     BASE + ["--hires-scale", "1.25", "--sampler", "dpmpp_2m"]),
]


def fixture_cases():
    """Every (name, folder, model, args) of the fixtures' cases.json files with `args`."""
    cases = []
    for path in sorted(FIXTURES.glob("*/cases.json")):
        for case in json.loads(path.read_text()):
            if isinstance(case, dict) and "args" in case:
                name = f"{path.parent.name}/{case['name']}"
                cases.append((name, path.parent.name, case.get("model", "tiny-sd15"),
                              case["args"]))
    return cases


def pixel_digest(data):
    """SHA-256 of a PNG's inflated image data (its IDAT chunks), the pixels without the text."""
    pos, idat = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return hashlib.sha256(zlib.decompress(b"".join(idat))).hexdigest()


def run_case(sd, name, folder, model, args, out_dir):
    """Runs one case; returns {png file name: sha256} or raises on failure."""
    stem = name.replace("/", "__")
    output = out_dir / f"{stem}.png"
    cmd = [str(sd), "generate", "--model", str(FIXTURES / "models" / model),
           "--output", str(output)] + list(args)
    done = subprocess.run(cmd, cwd=FIXTURES / folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
    files = sorted(out_dir.glob(f"{stem}.png")) + sorted(out_dir.glob(f"{stem}-*.png"))
    if not files:
        raise RuntimeError(f"{name}: no PNG written")
    return {f.name: f"{hashlib.sha256(f.read_bytes()).hexdigest()} {pixel_digest(f.read_bytes())}"
            for f in files}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd", default=str(ROOT / "target" / "release" / "sd"))
    parser.add_argument("--out", required=True, help="manifest to write: `file sha256` lines")
    parser.add_argument("--compare", help="an earlier manifest that every hash must equal")
    parser.add_argument("--pixels-only", action="store_true",
                        help="with --compare: compare the pixels only, not the infotext")
    args = parser.parse_args()
    args.sd = str(Path(args.sd).resolve())

    cases = fixture_cases() + EXTRA
    lines, failures = [], []
    with tempfile.TemporaryDirectory(prefix="sd-png-identity-") as tmp:
        out_dir = Path(tmp)
        # A --from-png round trip: re-make the first pipeline case from its own PNG.
        for name, folder, model, case_args in cases:
            try:
                hashes = run_case(args.sd, name, folder, model, case_args, out_dir)
            except RuntimeError as e:
                failures.append(str(e))
                continue
            lines += [f"{file} {digest}" for file, digest in hashes.items()]
        first = out_dir / "pipeline__ddim.png"
        if first.exists():
            try:
                hashes = run_case(args.sd, "from_png", "pipeline", "tiny-sd15",
                                  ["--from-png", str(first)], out_dir)
                lines += [f"{file} {digest}" for file, digest in hashes.items()]
            except RuntimeError as e:
                failures.append(str(e))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{len(cases) + 1} cases, {len(lines)} images -> {args.out}")
    for failure in failures:
        print("FAILED", failure)

    changed = []
    if args.compare:
        column = 2 if args.pixels_only else 1

        def table(text_lines):
            rows = [line.split() for line in text_lines if line.strip()]
            return {row[0]: row[column] for row in rows}

        before = table(Path(args.compare).read_text().splitlines())
        after = table(lines)
        for file in sorted(set(before) | set(after)):
            if before.get(file) != after.get(file):
                changed.append(file)
        for file in changed:
            print("CHANGED", file, before.get(file, "-"), "->", after.get(file, "-"))
        print(f"compared with {args.compare}: {len(changed)} of {len(before)} images differ")
    sys.exit(1 if failures or changed else 0)


if __name__ == "__main__":
    main()
