"""Run on a CUDA machine (not part of make_fixtures): real torch CUDA randn for the philox cases.

    python tools/reference/parts/philox_gpu.py OUT_DIR

Writes OUT_DIR/cuda_randn.safetensors with the same keys as fixtures/philox/transcription.safetensors
and prints the largest difference from the numpy transcription (parts/philox.py).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from parts import philox  # noqa: E402

out = Path(sys.argv[1])
props = torch.cuda.get_device_properties(0)
threads = props.multi_processor_count * props.max_threads_per_multi_processor
print(f"{props.name}: {props.multi_processor_count} SMs x {props.max_threads_per_multi_processor} threads, torch {torch.__version__}")
tensors = {}
worst = 0.0
for i, (seed, shape) in enumerate(philox.CASES):
    g = torch.Generator("cuda").manual_seed(seed)
    first = torch.randn(shape, generator=g, device="cuda").cpu()
    second = torch.randn(7, generator=g, device="cuda").cpu()
    n = first.numel()
    ref_first, offset = philox.randn(seed, n, max_threads=threads)
    ref_second, _ = philox.randn(seed, 7, offset, max_threads=threads)
    d = max(np.abs(first.flatten().numpy() - ref_first).max(), np.abs(second.numpy() - ref_second).max())
    worst = max(worst, float(d))
    print(f"case {i} seed {seed} shape {shape}: max |cuda - transcription| {d:.3g}")
    if n <= 20000:
        tensors[f"case{i}.first"] = first.contiguous()
    else:
        flat = first.flatten()
        tensors[f"case{i}.first_head"] = flat[:4096].clone()
        tensors[f"case{i}.first_tail"] = flat[-4096:].clone()
    tensors[f"case{i}.second"] = second.contiguous()
save_file(tensors, str(out / "cuda_randn.safetensors"), metadata={"device": props.name, "torch": torch.__version__, "threads": str(threads)})
print(json.dumps({"worst": worst}))
