#!/usr/bin/env python3
"""Drives `sd serve` with PyPI's `webuiapi` 0.9.17, a client written for AUTOMATIC1111, unmodified.

Kept outside `cargo test` (it needs Python and the package):

    python3 -m venv ~/sd-ref-venv && ~/sd-ref-venv/bin/pip install webuiapi==0.9.17
    cargo build -p sd-cli --release
    ~/sd-ref-venv/bin/python tools/serve/webuiapi_check.py [--sd target/release/sd]

It starts `sd serve` on a free port over a scratch models folder holding the tiny SD 1.5 and
SD 2 fixture models, then checks with webuiapi's own calls: util_wait_for_ready; txt2img, whose
image equals `sd generate`'s PNG pixel for pixel (and infotext) for the same parameters; a batch
with n_iter (A1111's seeds); img2img with a mask; get_progress during a run and interrupt (the
partial image comes back); get_sd_models and util_set_model (the next image names the new
model); get_samplers; png_info; and that SIGTERM ends the server with status 0. It prints one
line per check and exits 1 when any fails.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import webuiapi
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures/models/tiny-sd15"
TINY_SD2 = ROOT / "fixtures/models/tiny-sd2"

failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + str(detail) if detail and not ok else ''}")
    if not ok:
        failures.append(name)


def pixels(image):
    return list(image.convert("RGB").getdata())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd", default=str(ROOT / "target/release/sd"), help="the sd binary")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoints = tmp / "models/Stable-diffusion"
        checkpoints.mkdir(parents=True)
        os.symlink(TINY, checkpoints / "tiny-sd15")
        os.symlink(TINY_SD2, checkpoints / "tiny-sd2")
        server = subprocess.Popen(
            [args.sd, "serve", "--models-dir", str(tmp), "--model", "tiny-sd15",
             "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline()
            port = int(line.strip().rsplit(":", 1)[1])
            run_checks(args.sd, port, tmp)
        finally:
            server.terminate()
            try:
                code = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                code = None
            check("SIGTERM ends the server with status 0", code == 0, code)

    print(f"{len(failures)} failed" if failures else "all checks passed")
    sys.exit(1 if failures else 0)


def run_checks(sd, port, tmp):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=4)
    api.util_wait_for_ready(check_interval=0.2)
    check("util_wait_for_ready", True)

    # txt2img equals sd generate for the same parameters.
    result = api.txt2img(prompt="a (red:1.2) circle", negative_prompt="blurry", seed=1234,
                         width=64, height=64, cfg_scale=7)
    out = tmp / "generate.png"
    subprocess.run(
        [sd, "generate", "--model", str(TINY), "--prompt", "a (red:1.2) circle",
         "--negative-prompt", "blurry", "--seed", "1234", "--steps", "4", "--width", "64",
         "--height", "64", "--cfg-scale", "7", "--sampler", "Euler a", "--rng", "cuda",
         "--prompt-syntax", "a1111", "--output", str(out)],
        check=True, capture_output=True)
    made = Image.open(out)
    check("txt2img image equals sd generate's, pixel for pixel",
          pixels(result.image) == pixels(made))
    check("txt2img infotext equals sd generate's",
          result.info["infotexts"][0] == made.info.get("parameters"),
          (result.info["infotexts"][0], made.info.get("parameters")))

    # A batch with n_iter: A1111's seeds.
    batch = api.txt2img(prompt="a cat", seed=50, batch_size=2, n_iter=2, width=64, height=64)
    check("batch_size 2 x n_iter 2 gives 4 images", len(batch.images) == 4, len(batch.images))
    check("all_seeds are seed + i", batch.info["all_seeds"] == [50, 51, 52, 53],
          batch.info["all_seeds"])

    # img2img with a mask.
    mask = Image.new("RGB", (64, 64), "black")
    mask.paste((255, 255, 255), (0, 0, 32, 64))
    inpainted = api.img2img(images=[result.image], mask_image=mask, prompt="a blue square",
                            seed=9, width=64, height=64, denoising_strength=0.6)
    check("img2img with a mask", inpainted.image.size == (64, 64)
          and pixels(inpainted.image) != pixels(result.image))

    # get_progress during a run, then interrupt: the partial image comes back.
    results = []
    worker = threading.Thread(target=lambda: results.append(
        api.txt2img(prompt="a long run", seed=3, steps=1000, width=64, height=64)))
    worker.start()
    seen = None
    for _ in range(3000):
        progress = api.get_progress()
        if progress["state"]["sampling_step"] > 0:
            seen = progress
            break
        time.sleep(0.01)
    check("get_progress during a run", seen is not None and seen["progress"] > 0
          and seen["state"]["sampling_steps"] == 1000, seen)
    api.interrupt()
    worker.join()
    check("interrupt returns the partial image",
          len(results) == 1 and len(results[0].images) == 1)
    api.util_wait_for_ready(check_interval=0.2)

    # Models: list, switch, and the next image names the new one.
    titles = [m["title"] for m in api.get_sd_models()]
    check("get_sd_models lists both models", sorted(titles) == ["tiny-sd15", "tiny-sd2"], titles)
    api.util_set_model("tiny-sd2")
    check("util_set_model switches the model",
          api.util_get_current_model() == "tiny-sd2", api.util_get_current_model())
    switched = api.txt2img(prompt="a dog", seed=4, width=64, height=64)
    check("the next image is made by the new model",
          switched.info["sd_model_name"] == "tiny-sd2", switched.info["sd_model_name"])

    samplers = [s["name"] for s in api.get_samplers()]
    check("get_samplers lists A1111's names", "Euler a" in samplers and "DPM++ 2M" in samplers)

    info = api.png_info(result.image)
    check("png_info reads the infotext back", info.info == result.info["infotexts"][0], info.info)


if __name__ == "__main__":
    main()
