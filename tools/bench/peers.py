#!/usr/bin/env python3
"""The peer benchmark: `sd generate` against diffusers / PyTorch on the same CPU, the same
full-size random-weight model folders, the same request, in one interleaved run.

Normally started through tools/bench/peers.sh (which prepares the venv and builds `sd`); see
tools/bench/README.md. Subcommands used internally, each in its own process:

    peers.py build  --family sd15|sdxl --out DIR    write a full-size random-weight folder
    peers.py flops  --family sd15|sdxl --size N     FLOPs of one UNet call (batch 2) and one
                                                    VAE decode, counted on torch's meta device
    peers.py torch  --model DIR ... --json FILE     one diffusers generation, timed by parts

The orchestrator (no subcommand) needs only the standard library; the others need the venv.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REFERENCE = ROOT / "tools" / "reference"
FIXTURES = ROOT / "fixtures"

# Bump when the folders' contents change, so that cached folders are rebuilt.
RECIPE = 1
WEIGHTS_SEED = 20240611

PROMPT = "a lighthouse on a cliff at dusk, oil painting, dramatic clouds"
NEGATIVE = "blurry, low quality"
SEED = 1234
CFG = 7.5
FAMILIES = {"sd15": {"size": 512}, "sdxl": {"size": 1024}}

# The summary line of `sd generate` (crates/sd-cli/src/generate.rs); peak RSS is optional.
SUMMARY = re.compile(
    r"text encoding (?P<text>[\d.]+) s, sampling (?P<steps>\d+) steps in (?P<sampling>[\d.]+) s "
    r"\((?P<per_step>[\d.]+) s/step\), VAE decoding (?P<decode>[\d.]+) s"
    r"(?:, peak RSS (?P<rss>[\d.]+) GB)?"
    r"(?:.*?CPU kernels: (?P<kernels>[\w.+-]+))?"
)


# ---------------------------------------------------------------------------------------------
# Model folders (venv side)
# ---------------------------------------------------------------------------------------------

# CLIP ViT-L/14's text tower (SD 1.x, SDXL's first encoder) and OpenCLIP ViT-bigG/14's (SDXL's
# second), with the token ids of the published configs.
CLIP_COMMON = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                   pad_token_id=1, layer_norm_eps=1e-5)
CLIP_VIT_L = dict(CLIP_COMMON, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768)
CLIP_VIT_BIGG = dict(CLIP_COMMON, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, hidden_act="gelu", projection_dim=1280)

# What diffusers' SD 1.5 / SDXL base folders ship (EulerDiscreteScheduler is SDXL's own class;
# SD 1.5 ships PNDM with the same betas and spacing, Euler is what both sides run here).
SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "use_karras_sigmas": False,
    "clip_sample": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "trained_betas": None,
}


def reference_configs():
    """The full-size UNet and VAE configs that tools/reference/parts hold (diffusers' published
    config.json values), so that the benchmark and the manifests agree by construction."""
    sys.path.insert(0, str(REFERENCE))
    from parts.unet import FULL_SD15, FULL_SDXL_BASE  # noqa: E402
    from parts.vae import FULL_VAE  # noqa: E402

    return {
        "sd15": dict(unet=FULL_SD15, vae=dict(FULL_VAE, sample_size=512, scaling_factor=0.18215),
                     encoders=[("text_encoder", "CLIPTextModel", CLIP_VIT_L, "tokenizer", None)],
                     pipeline="StableDiffusionPipeline", manifests=["unet_sd15", "vae_sd15",
                                                                   "text_encoder_sd15"]),
        "sdxl": dict(unet=FULL_SDXL_BASE,
                     vae=dict(FULL_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                     encoders=[("text_encoder", "CLIPTextModel", CLIP_VIT_L, "tokenizer", None),
                               ("text_encoder_2", "CLIPTextModelWithProjection", CLIP_VIT_BIGG,
                                "tokenizer_2", "!")],
                     pipeline="StableDiffusionXLPipeline",
                     manifests=["unet_sdxl_base", "vae_sdxl", "text_encoder_sdxl_1",
                                "text_encoder_sdxl_2"]),
    }


def random_tensor(name: str, shape: list[int]):
    """Seeded random values for one tensor, from its name alone (so a tensor's values do not
    depend on the order of writing): weights ~ N(0, 1/fan_in) (unit gain, as trained layers
    roughly are), embeddings N(0, 0.02²), norm scales 1 + N(0, 0.02²), biases N(0, 0.02²)."""
    import torch

    g = torch.Generator().manual_seed(WEIGHTS_SEED ^ zlib.crc32(name.encode()))
    values = torch.randn(shape, generator=g, dtype=torch.float32)
    if "embedding" in name and len(shape) == 2:
        return values.mul_(0.02)
    if len(shape) >= 2:
        return values.mul_(1.0 / math.sqrt(math.prod(shape[1:])))
    if name.endswith("weight"):
        return values.mul_(0.02).add_(1.0)
    return values.mul_(0.02)


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """Writes a f32 safetensors file tensor by tensor (never more than one tensor in memory:
    the SDXL UNet alone is 10 GB), through a temporary name."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in shapes.items():
            f.write(random_tensor(name, shape).numpy().tobytes())
    tmp.rename(path)


def state_shapes(model) -> dict[str, list[int]]:
    out = {}
    for name, value in model.state_dict().items():
        assert value.is_floating_point(), f"{name}: {value.dtype}"
        out[name] = list(value.shape)
    return out


def check_manifest(name: str, shapes: dict[str, list[int]]) -> None:
    """The folder's names and shapes must be those of the committed full-size manifest."""
    path = FIXTURES / "manifests" / f"{name}.json"
    if not path.exists():
        return
    expected = json.loads(path.read_text())
    if expected != shapes:
        missing = sorted(set(expected) - set(shapes))[:5]
        extra = sorted(set(shapes) - set(expected))[:5]
        raise SystemExit(f"{name}: shapes differ from {path} (missing {missing}, extra {extra})")


def cmd_build(args) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    import transformers

    spec = reference_configs()[args.family]
    out = Path(args.out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifests = iter(spec["manifests"])

    def diffusers_part(cls, config, folder):
        with torch.device("meta"):
            model = cls(**config)
        shapes = state_shapes(model)
        check_manifest(next(manifests), shapes)
        (tmp / folder).mkdir()
        model.save_config(str(tmp / folder))
        write_safetensors(tmp / folder / "diffusion_pytorch_model.safetensors", shapes)
        print(f"  {folder}: {sum(math.prod(s) for s in shapes.values()) / 1e6:.0f} M parameters",
              flush=True)

    diffusers_part(UNet2DConditionModel, spec["unet"], "unet")
    diffusers_part(AutoencoderKL, spec["vae"], "vae")

    tokenizer_src = FIXTURES / "models" / "tiny-sd15" / "tokenizer"
    bang_src = FIXTURES / "models" / "tiny-sd2" / "tokenizer"
    for folder, cls_name, config_args, tok_folder, pad in spec["encoders"]:
        config = transformers.CLIPTextConfig(**config_args)
        config.architectures = [cls_name]
        with torch.device("meta"):
            model = getattr(transformers, cls_name)(config)
        shapes = state_shapes(model)
        check_manifest(next(manifests), shapes)
        config.save_pretrained(str(tmp / folder))
        write_safetensors(tmp / folder / "model.safetensors", shapes)
        print(f"  {folder}: {sum(math.prod(s) for s in shapes.values()) / 1e6:.0f} M parameters",
              flush=True)
        # The real CLIP BPE vocabulary, as the reference scripts wrote it (offline); the
        # `!`-padded variant is SDXL's second tokenizer.
        (tmp / tok_folder).mkdir()
        for file in ["vocab.json", "merges.txt"]:
            shutil.copyfile((tokenizer_src / file).resolve(), tmp / tok_folder / file)
        configs = bang_src if pad == "!" else tokenizer_src
        for file in ["tokenizer_config.json", "special_tokens_map.json"]:
            shutil.copyfile((configs / file).resolve(), tmp / tok_folder / file)

    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    import diffusers

    index = {
        "_class_name": spec["pipeline"],
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    for folder, cls_name, _, tok_folder, _ in spec["encoders"]:
        index[folder] = ["transformers", cls_name]
        index[tok_folder] = ["transformers", "CLIPTokenizer"]
    if args.family == "sd15":
        index.update(requires_safety_checker=False, safety_checker=[None, None])
    else:
        index.update(force_zeros_for_empty_prompt=True)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (tmp / "bench-recipe.json").write_text(
        json.dumps({"recipe": RECIPE, "seed": WEIGHTS_SEED, "family": args.family}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def folder_is_current(folder: Path, family: str) -> bool:
    try:
        recipe = json.loads((folder / "bench-recipe.json").read_text())
    except (OSError, ValueError):
        return False
    return recipe == {"recipe": RECIPE, "seed": WEIGHTS_SEED, "family": family}


# ---------------------------------------------------------------------------------------------
# FLOP counting (venv side)
# ---------------------------------------------------------------------------------------------


def count_flops(module, run) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of the convolutions, linear layers and attention products
    (Q·Kᵀ and softmax·V) that `run()` performs on `module`, from shapes alone (meta device).
    Norms, activations, softmax and element-wise work are left out, as FLOP counts usually do."""
    import torch
    from diffusers.models.attention_processor import Attention

    totals = {"conv": 0.0, "linear": 0.0, "attention": 0.0}
    hooks = []

    def conv(m, inputs, output):
        k = m.in_channels // m.groups * math.prod(m.kernel_size)
        totals["conv"] += 2.0 * output.numel() * k

    def linear(m, inputs, output):
        totals["linear"] += 2.0 * output.numel() * m.in_features

    def attention(m, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        batch = hidden.shape[0]
        queries = math.prod(hidden.shape[2:]) if hidden.ndim == 4 else hidden.shape[1]
        keys = queries if context is None else context.shape[1]
        totals["attention"] += 2.0 * 2.0 * batch * queries * keys * m.inner_dim

    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_pre_hook(attention, with_kwargs=True))
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    totals["total"] = sum(totals.values())
    return totals


def cmd_flops(args) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    spec = reference_configs()[args.family]
    latent = args.size // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel(**spec["unet"]).eval()
        vae = AutoencoderKL(**spec["vae"]).eval()
        sample = torch.empty(2, 4, latent, latent)
        context = torch.empty(2, 77, spec["unet"]["cross_attention_dim"])
        timestep = torch.tensor([999.0, 999.0])
        extra = {}
        if args.family == "sdxl":
            extra["added_cond_kwargs"] = {"text_embeds": torch.empty(2, 1280),
                                          "time_ids": torch.empty(2, 6)}
        z = torch.empty(1, 4, latent, latent)
        result = {
            "size": args.size,
            "unet_batch2": count_flops(unet, lambda: unet(sample, timestep, context, **extra)),
            "vae_decode": count_flops(vae, lambda: vae.decode(z)),
        }
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# One diffusers generation (venv side)
# ---------------------------------------------------------------------------------------------


def cmd_torch(args) -> None:
    start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    import diffusers
    import transformers

    # Only errors reach the log: progress bars and deprecation notes would bury them.
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    cls = diffusers.StableDiffusionXLPipeline if args.family == "sdxl" else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(args.model, dtype=dtype)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()

    unet_calls = []

    def before(module, inputs):
        unet_calls.append(time.perf_counter())

    def after(module, inputs, output):
        unet_calls[-1] = time.perf_counter() - unet_calls[-1]

    pipe.unet.register_forward_pre_hook(before)
    pipe.unet.register_forward_hook(after)

    with torch.inference_mode():
        t = time.perf_counter()
        if args.family == "sdxl":
            pe, npe, pooled, npooled = pipe.encode_prompt(
                prompt=args.prompt, device="cpu", num_images_per_prompt=1,
                do_classifier_free_guidance=True, negative_prompt=args.negative_prompt)
            embeds = dict(prompt_embeds=pe, negative_prompt_embeds=npe,
                          pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=npooled)
        else:
            pe, npe = pipe.encode_prompt(args.prompt, "cpu", 1, True, args.negative_prompt)
            embeds = dict(prompt_embeds=pe, negative_prompt_embeds=npe)
        text = time.perf_counter() - t

        t = time.perf_counter()
        latents = pipe(**embeds, height=args.size, width=args.size, num_inference_steps=args.steps,
                       guidance_scale=args.cfg, output_type="latent",
                       generator=torch.Generator("cpu").manual_seed(args.seed)).images
        sampling = time.perf_counter() - t

        t = time.perf_counter()
        decoded = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor,
                                  return_dict=False)[0]
        image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
        decode = time.perf_counter() - t
    finite = bool(torch.isfinite(latents).all()) and bool(torch.isfinite(decoded).all())
    if args.output:
        image.save(args.output)
    result = dict(load=loaded - start, text=text, sampling=sampling, per_step=sampling / args.steps,
                  decode=decode, steps=args.steps, unet_calls=len(unet_calls),
                  unet_median=statistics.median(unet_calls) if unet_calls else None,
                  finite=finite, torch=torch.__version__, diffusers=diffusers.__version__)
    Path(args.json).write_text(json.dumps(result) + "\n")


# ---------------------------------------------------------------------------------------------
# The orchestrator (standard library only)
# ---------------------------------------------------------------------------------------------


def run_measured(command, env, log: Path, timeout: float | None):
    """Runs `command` with stdout and stderr into `log`; returns (exit code, wall seconds, peak
    RSS in bytes) — the peak of that process alone (wait4's ru_maxrss, KiB on Linux). A run
    past `timeout` seconds is killed (exit code -9)."""
    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if timeout and time.perf_counter() - start > timeout:
                    process.kill()
                time.sleep(0.05)
        except BaseException:
            process.kill()
            os.wait4(process.pid, 0)
            raise
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024
    return process.returncode, wall, usage.ru_maxrss * scale


def failure(rc: int, wall: float, log: Path, opts) -> dict:
    """What the table shows for a run that did not finish: the cause and the log's last words
    (the last line that names an error, if one does)."""
    if rc < 0 and opts.timeout and wall > opts.timeout:
        cause = f"over --timeout {opts.timeout:.0f} s"
    elif rc < 0:
        cause = f"killed by signal {-rc}"
    else:
        cause = f"exit {rc}"
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    named = [l for l in lines if re.search(r"error|Error|panicked|unsupported", l)]
    last = (named or lines or [""])[-1][-240:]
    return {"error": f"{cause}: {last}" if last else cause, "log": str(log)}


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for key in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]:
        env[key] = str(threads)
    return env


def measure_ours(opts, family, folder, dtype, size, work: Path, tag: str) -> dict:
    png, log = work / f"{tag}.png", work / f"{tag}.log"
    command = [str(opts.sd), "generate", "--model", str(folder), "--prompt", PROMPT,
               "--negative-prompt", NEGATIVE, "--width", str(size), "--height", str(size),
               "--steps", str(opts.steps), "--cfg-scale", str(CFG), "--sampler", "euler",
               "--seed", str(SEED), "--dtype", dtype, "--output", str(png)]
    rc, wall, rss = run_measured(command, thread_env(opts.threads), log, opts.timeout)
    found = SUMMARY.search(log.read_text(errors="replace"))
    if rc != 0 or not found:
        return failure(rc, wall, log, opts)
    text, sampling, decode = (float(found[k]) for k in ["text", "sampling", "decode"])
    return dict(text=text, sampling=sampling, per_step=float(found["per_step"]), decode=decode,
                steps=int(found["steps"]), image=text + sampling + decode, wall=wall, rss=rss,
                own_rss=float(found["rss"]) * 1e9 if found["rss"] else None,
                kernels=found["kernels"],
                summary=found[0], log=str(log))


def measure_torch(opts, family, folder, dtype, size, work: Path, tag: str) -> dict:
    png, log, out = work / f"{tag}.png", work / f"{tag}.log", work / f"{tag}.json"
    out.unlink(missing_ok=True)
    command = [opts.python, str(Path(__file__).resolve()), "torch", "--family", family,
               "--model", str(folder), "--dtype", dtype, "--size", str(size),
               "--steps", str(opts.steps), "--threads", str(opts.threads), "--seed", str(SEED),
               "--cfg", str(CFG), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
               "--output", str(png), "--json", str(out)]
    rc, wall, rss = run_measured(command, thread_env(opts.threads), log, opts.timeout)
    if rc != 0 or not out.exists():
        return failure(rc, wall, log, opts)
    r = json.loads(out.read_text())
    r.update(image=r["text"] + r["sampling"] + r["decode"], wall=wall, rss=rss, log=str(log))
    return r


def venv_python(opts, args: list[str], what: str) -> str:
    result = subprocess.run([opts.python, str(Path(__file__).resolve()), *args],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def ensure_folder(opts, family: str) -> Path:
    folder = Path(opts.cache).expanduser() / family
    if folder_is_current(folder, family):
        return folder
    print(f"building the full-size random-weight {family} folder in {folder} ...", flush=True)
    start = time.perf_counter()
    sys.stdout.write(venv_python(opts, ["build", "--family", family, "--out", str(folder)],
                                 f"building {folder}"))
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def flops_for(opts, family: str, folder: Path, size: int) -> dict:
    cache = folder / f"bench-flops-{size}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    result = json.loads(venv_python(opts, ["flops", "--family", family, "--size", str(size)],
                                    "counting FLOPs"))
    cache.write_text(json.dumps(result) + "\n")
    return result


def warm_page_cache(folder: Path) -> None:
    """Reads every weight file once, so that the first measured run does not pay for the disk."""
    for path in sorted(folder.rglob("*.safetensors")):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def read_peaks(opts) -> dict[str, float]:
    """GFLOP/s peaks per dtype: from --peak-gflops ("400" or "f32=400,bf16=5600") or from a
    file holding the output of ../shared/tools/cpu-peak (its table rows, so that the figure for
    --threads threads can be taken: all threads if that is the count, else 1 thread x N)."""
    peaks = {}
    if opts.peak_gflops:
        for part in opts.peak_gflops.split(","):
            key, _, value = part.rpartition("=")
            for dtype in ([key] if key else opts.dtypes):
                peaks[dtype] = float(value)
        return peaks
    if not opts.peak_file:
        return peaks
    text = Path(opts.peak_file).read_text()
    head = re.search(r"\| (\d+) threads \|", text)
    all_threads = int(head[1]) if head else None
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 3 and "GFLOP/s" in line:
            one = re.match(r"([\d.]+) GFLOP/s", cells[1])
            many = re.match(r"([\d.]+) GFLOP/s", cells[2])
            if one and many:
                n = opts.threads
                rows[cells[0]] = float(many[1]) if n == all_threads else float(one[1]) * n
    pick = lambda *names: max((v for k, v in rows.items() if any(x in k for x in names)), default=None)
    f32 = pick("AVX-512F f32") or pick("AVX2 FMA")
    bf16 = pick("AMX-BF16", "AVX-512 BF16")
    if f32:
        peaks["f32"] = f32
    if bf16:
        peaks["bf16"] = bf16
    return peaks


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_features() -> str:
    """The CPU features that decide the kernels on both sides (from /proc/cpuinfo): PyTorch bf16
    is slow where neither AMX-BF16 nor AVX-512 BF16 exists (it converts in software)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16",
              "amx_int8"]
    have = [f for f in wanted if f in flags]
    return " ".join(have) + (" (no AVX-512 BF16 / AMX)" if not {"avx512_bf16", "amx_bf16"} & set(have)
                             else "")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except OSError:
        return "?"


def median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if "error" not in r and r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=2, suffix=""):
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def installed_versions(opts) -> dict:
    """torch and diffusers as the venv holds them (for a report without a PyTorch run)."""
    code = ("import json; from importlib.metadata import version as v; "
            "print(json.dumps({'torch': v('torch'), 'diffusers': v('diffusers')}))")
    try:
        out = subprocess.run([opts.python, "-c", code], capture_output=True, text=True)
        return json.loads(out.stdout)
    except (OSError, ValueError):
        return {}


def report(opts, results, flops, peaks) -> str:
    versions = next((r for runs in results.values() for r in runs
                     if "torch" in r and "error" not in r), None) or installed_versions(opts)
    lines = [
        f"# Peer benchmark: `sd` vs diffusers {versions.get('diffusers', '?')} / "
        f"PyTorch {versions.get('torch', '?')}",
        "",
        f"{cpu_name()} ({cpu_features()}), {opts.threads} threads; {datetime.date.today()}; "
        f"sd {git_commit()}; "
        f"{opts.steps} step{'s' if opts.steps != 1 else ''}, Euler, CFG {CFG} (UNet batch 2), "
        f"seed {SEED}; median of {opts.repeats} interleaved run(s); full-size random-weight folders "
        f"(tools/bench/peers.py).",
        "",
        "| model | engine | dtype | s/step | UNet GFLOP/s | % of peak | VAE decode s | "
        "text enc. s | image s | process s | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (family, size, impl, dtype), runs in results.items():
        name = f"{family} {size}²"
        engine = "sd" if impl == "ours" else "PyTorch"
        levels = sorted({r["kernels"] for r in runs if r.get("kernels")})
        if levels:
            engine += f" ({', '.join(levels)})"
        errors = [r["error"] for r in runs if "error" in r]
        if len(errors) == len(runs):
            lines.append(f"| {name} | {engine} | {dtype} | failed: "
                         f"{errors[0].replace('|', '/')[:120]} | | | | | | | |")
            continue
        per_step = median_of(runs, "per_step")
        gflops = flops[family, size]["unet_batch2"]["total"] / 1e9 / per_step if per_step else None
        peak = peaks.get(dtype)
        lines.append(
            f"| {name} | {engine} | {dtype} | {fmt(per_step, 3)} | {fmt(gflops, 0)} | "
            f"{fmt(100 * gflops / peak if gflops and peak else None, 0, '%')} | "
            f"{fmt(median_of(runs, 'decode'))} | {fmt(median_of(runs, 'text'))} | "
            f"{fmt(median_of(runs, 'image'), 1)} | {fmt(median_of(runs, 'wall'), 1)} | "
            f"{fmt(median_of(runs, 'rss') and median_of(runs, 'rss') / 1e9)} |")
    ratio_rows = []
    for family, size in dict.fromkeys((f, s) for f, s, _, _ in results):
        for dtype in opts.dtypes:
            ours, torch_runs = results.get((family, size, "ours", dtype)), results.get(
                (family, size, "torch", dtype))
            if not ours or not torch_runs:
                continue
            cells = [fmt(ratio(median_of(ours, k), median_of(torch_runs, k)))
                     for k in ["per_step", "decode", "text", "image", "rss"]]
            ratio_rows.append(f"| {family} {size}² | {dtype} | " + " | ".join(cells) + " |")
    if ratio_rows:
        lines += ["", "Ratios sd / PyTorch (below 1: sd is faster or smaller):", "",
                  "| model | dtype | s/step | VAE decode | text enc. | image | peak RSS |",
                  "|---|---|---|---|---|---|---|", *ratio_rows]
    lines += ["", "Work counted per call (2 FLOP per multiply-add; conv + linear + attention "
              "products, from shapes on torch's meta device):", ""]
    for (family, size), f in flops.items():
        u, v = f["unet_batch2"], f["vae_decode"]
        lines.append(f"- {family} {size}²: UNet batch 2 {u['total'] / 1e9:.0f} GFLOP (conv "
                     f"{u['conv'] / 1e9:.0f}, linear {u['linear'] / 1e9:.0f}, attention "
                     f"{u['attention'] / 1e9:.0f}); VAE decode {v['total'] / 1e9:.0f} GFLOP")
    if peaks:
        lines.append("- peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
                     + (f" (from {opts.peak_file})" if opts.peak_file and not opts.peak_gflops
                        else " (--peak-gflops)"))
    lines += ["", "s/step = sampling time / steps (the first step's warm-up included on both "
              "sides); image = text encoding + sampling + VAE decode; process = the whole "
              "command, model loading included; peak RSS = the process's maximum resident set "
              "(wait4)."]
    failed = [(k, r) for k, runs in results.items() for r in runs if "error" in r]
    for (family, size, impl, dtype), r in failed[:8]:
        lines.append(f"- failed: {family} {impl} {dtype}: {r['error']} (log {r['log']})")
    return "\n".join(lines) + "\n"


def cmd_bench(opts) -> None:
    opts.dtypes = [d for d in opts.dtypes.split(",") if d]
    models = [m for m in opts.models.split(",") if m]
    for m in models:
        if m not in FAMILIES:
            raise SystemExit(f"unknown model {m!r}: sd15 or sdxl")
    impls = {"ours": ["ours"], "torch": ["torch"], None: ["ours", "torch"]}[opts.only]
    opts.sd = Path(opts.sd).resolve()
    if "ours" in impls and not opts.sd.exists():
        raise SystemExit(f"{opts.sd} not found: cargo build --release -p sd-cli")
    work = Path(opts.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    peaks = read_peaks(opts)
    results, flops = {}, {}
    measure = {"ours": measure_ours, "torch": measure_torch}
    for family in models:
        size = opts.size or FAMILIES[family]["size"]
        folder = ensure_folder(opts, family)
        flops[family, size] = flops_for(opts, family, folder, size)
        warm_page_cache(folder)
        for dtype in opts.dtypes:
            for impl in impls:
                results[family, size, impl, dtype] = []
        for repeat in range(opts.repeats):
            for dtype in opts.dtypes:
                for impl in impls:
                    tag = f"{family}-{size}-{impl}-{dtype}-r{repeat}"
                    print(f"[{time.strftime('%H:%M:%S')}] {tag} ...", end=" ", flush=True)
                    r = measure[impl](opts, family, folder, dtype, size, work, tag)
                    results[family, size, impl, dtype].append(r)
                    if "error" in r:
                        print(f"FAILED ({r['error']})", flush=True)
                    else:
                        print(f"{r['per_step']:.3f} s/step, VAE {r['decode']:.2f} s, text "
                              f"{r['text']:.2f} s, process {r['wall']:.1f} s, peak RSS "
                              f"{r['rss'] / 1e9:.2f} GB", flush=True)
    table = report(opts, results, flops, peaks)
    print()
    print(table)
    if opts.out:
        Path(opts.out).write_text(table)
        raw = {"|".join(map(str, k)): v for k, v in results.items()}
        Path(opts.out).with_suffix(".json").write_text(json.dumps(
            {"results": raw, "flops": {f"{f}|{s}": v for (f, s), v in flops.items()},
             "peaks": peaks}, indent=1) + "\n")
        print(f"written to {opts.out} (raw numbers: {Path(opts.out).with_suffix('.json')})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("build", "flops", "torch"):
        sub = argparse.ArgumentParser(prog=f"peers.py {sys.argv[1]}")
        sub.add_argument("--family", choices=sorted(FAMILIES), required=True)
        if sys.argv[1] == "build":
            sub.add_argument("--out", required=True)
        else:
            sub.add_argument("--size", type=int, required=True)
        if sys.argv[1] == "torch":
            sub.add_argument("--model", required=True)
            sub.add_argument("--dtype", choices=["f32", "bf16"], required=True)
            sub.add_argument("--steps", type=int, required=True)
            sub.add_argument("--threads", type=int, required=True)
            sub.add_argument("--seed", type=int, default=SEED)
            sub.add_argument("--cfg", type=float, default=CFG)
            sub.add_argument("--prompt", default=PROMPT)
            sub.add_argument("--negative-prompt", default=NEGATIVE)
            sub.add_argument("--output")
            sub.add_argument("--json", required=True)
        args = sub.parse_args(sys.argv[2:])
        {"build": cmd_build, "flops": cmd_flops, "torch": cmd_torch}[sys.argv[1]](args)
        return

    p = argparse.ArgumentParser(
        description="sd vs diffusers/PyTorch on this CPU, interleaved (see tools/bench/README.md)")
    p.add_argument("--models", default="sd15,sdxl", help="comma list: sd15, sdxl")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, help="image side in pixels [default: 512 sd15, 1024 sdxl]")
    p.add_argument("--repeats", type=int, default=1, help="runs of each case; the median is shown")
    p.add_argument("--dtypes", default="f32,bf16", help="comma list: f32, bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["ours", "torch"], help="measure one side only")
    p.add_argument("--timeout", type=float, help="seconds after which one run is killed")
    p.add_argument("--peak-gflops", help='"400" or "f32=400,bf16=5600" (GFLOP/s)')
    p.add_argument("--peak-file", help="a file holding the output of ../shared/tools/cpu-peak")
    p.add_argument("--out", help="write the markdown table here (and the raw numbers as .json)")
    p.add_argument("--sd", default=str(ROOT / "target" / "release" / "sd"))
    p.add_argument("--python", default=sys.executable, help="the venv's python (torch side)")
    p.add_argument("--cache", default=os.environ.get("SD_BENCH_CACHE", "~/.cache/sd-bench"),
                   help="where the model folders live [env SD_BENCH_CACHE]")
    p.add_argument("--work", default=os.environ.get("SD_BENCH_WORK", "~/.cache/sd-bench/runs"),
                   help="logs and images of the runs [env SD_BENCH_WORK]")
    opts = p.parse_args()
    if opts.repeats < 1 or opts.steps < 1 or opts.threads < 1:
        p.error("--repeats, --steps and --threads must be at least 1")
    if opts.size is not None and (opts.size % 8 or opts.size < 64):
        p.error("--size must be a multiple of 8, at least 64")
    cmd_bench(opts)


if __name__ == "__main__":
    main()
