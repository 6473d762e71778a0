"""torch's CUDA `randn` (Philox4x32-10 + curand's Box-Muller), transcribed independently in numpy.

The reference venv has no GPU, so the expected values come from this transcription; the
`cuda_randn.safetensors` fixture beside them was made by real torch on an H100 (see
tools/reference/parts/philox_gpu.py) and the Rust test checks both.

Layout of torch's CUDA normal kernel for a tensor of n float values: blocks of 256 threads,
grid = min(ceil(n / 256), SMs * maxThreadsPerSM / 256); stride S = 256 * grid; thread t runs
curand_init(seed, subsequence=t, offset) and every curand_normal4 call gives elements t, t+S,
t+2S, t+3S the values (r0.sin, r0.cos, r1.sin, r1.cos) of Box-Muller on words (0,1), (2,3).
"""

from pathlib import Path

import numpy as np
import torch

import common

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
H100_THREADS = 132 * 2048

CASES = [
    (0, [4, 8, 8]),
    (1234, [1, 4, 16, 16]),
    (2**32 + 7, [2, 4, 8, 8]),
    (2**64 - 1, [3, 5]),
    (987654321, [1, 4, 64, 64]),
    (42, [300000]),  # more than an H100's resident threads: several rounds per thread
]


def philox(counter, key):
    """counter: 4 x n uint64 arrays (32-bit values), key: 2 x n."""
    c = [x.astype(np.uint64) for x in counter]
    k = [x.astype(np.uint64) for x in key]
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(M0) * c[0]
        p1 = np.uint64(M1) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k[0], p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k[1], p0 & mask]
        k = [(k[0] + np.uint64(W0)) & mask, (k[1] + np.uint64(W1)) & mask]
    return c


def box_muller(x, y):
    inv = np.float32(2.3283064e-10)
    inv_2pi = np.float32(inv * np.float32(6.2831855))
    # nvcc fuses the multiply-add; emulate with a float64 product of float32 operands.
    u = (x.astype(np.float32).astype(np.float64) * np.float64(inv) + np.float64(inv / np.float32(2))).astype(np.float32)
    v = (y.astype(np.float32).astype(np.float64) * np.float64(inv_2pi) + np.float64(inv_2pi / np.float32(2))).astype(np.float32)
    s = np.sqrt(np.float32(-2.0) * np.log(u.astype(np.float64)).astype(np.float32))
    return s * np.sin(v.astype(np.float64)).astype(np.float32), s * np.cos(v.astype(np.float64)).astype(np.float32)


def randn(seed, n, offset=0, max_threads=H100_THREADS):
    stride = min((n + 255) // 256 * 256, max_threads)
    i = np.arange(n, dtype=np.uint64)
    thread = i % np.uint64(stride)
    k = i // np.uint64(stride)
    counter = np.uint64(offset) + k // np.uint64(4)
    mask = np.uint64(0xFFFFFFFF)
    words = philox(
        [counter & mask, counter >> np.uint64(32), thread & mask, thread >> np.uint64(32)],
        [np.full(n, seed & 0xFFFFFFFF, np.uint64), np.full(n, seed >> 32, np.uint64)],
    )
    s01, c01 = box_muller(words[0], words[1])
    s23, c23 = box_muller(words[2], words[3])
    pick = (k % np.uint64(4)).astype(np.int64)
    out = np.choose(pick, [s01, c01, s23, c23]).astype(np.float32)
    rounds = (n - 1) // (stride * 4) + 1
    return out, offset + rounds


def make(root: Path) -> None:
    out = root / "philox"
    out.mkdir(parents=True, exist_ok=True)
    tensors, cases = {}, []
    for i, (seed, shape) in enumerate(CASES):
        n = int(np.prod(shape))
        first, offset = randn(seed, n)
        second, _ = randn(seed, 7, offset)  # a second draw continues the stream
        if n <= 20000:
            tensors[f"case{i}.first"] = torch.from_numpy(first.reshape(shape))
        else:  # keep the fixture small: a hash-like sample of the big ones
            tensors[f"case{i}.first_head"] = torch.from_numpy(first[:4096].copy())
            tensors[f"case{i}.first_tail"] = torch.from_numpy(first[-4096:].copy())
        tensors[f"case{i}.second"] = torch.from_numpy(second)
        cases.append(dict(seed=str(seed), shape=shape))
    common.save_tensors(out / "transcription.safetensors", tensors)
    common.save_json(out / "cases.json", cases)
    # The Random123 known answers hold for this transcription too.
    z = philox([np.zeros(1, np.uint64)] * 4, [np.zeros(1, np.uint64)] * 2)
    assert [int(w[0]) for w in z] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
