#!/usr/bin/env bash
# Runs a cuda build on a machine with an NVIDIA GPU and driver but no Rust toolchain:
# the binaries from tools/cuda/bundle.sh, against this repository's fixtures.
#   tools/cuda/gpu-check.sh BUNDLE_DIR [OUT_DIR]
# Needs python3 with numpy and Pillow, and the CUDA 13 runtime libraries (cuBLAS, cuRAND,
# NVRTC): from CUDA_LIBS, else from the nvidia-* wheels in python3's site-packages (PyTorch's).
set -uo pipefail
gpu=${SD_GPU:-cuda}   # SD_GPU=cpu: a dry run of this script on a machine without a GPU
size=${SD_TIMING_SIZE:-512}   # the timed image size
bundle=$(cd "${1:?usage: gpu-check.sh BUNDLE_DIR [OUT_DIR]}" && pwd)
out=${2:-/tmp/sd-gpu-check}
repo=$(pwd)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
fail=0
step() { echo; echo "=== $* ($(date +%T))"; }
since() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$1" "$EPOCHREALTIME"; }

if [ -z "${CUDA_LIBS:-}" ]; then
  CUDA_LIBS=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)
fi
if [ ! -e "$CUDA_LIBS/libcublas.so.13" ]; then
  CUDA_LIBS=$(dirname "$(find / -name libcublas.so.13 -not -path '/proc/*' 2>/dev/null | head -1)")
fi
export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
  [ -e "$d/libcuda.so.1" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
echo "CUDA_LIBS=$CUDA_LIBS"
ldd "$bundle/sd" | grep -E 'cuda|cublas|curand|nvrtc'
ldd "$bundle/sd" | grep -q 'not found' && { echo "missing libraries"; exit 1; }

# The test binaries read fixtures (and the sd-cli test runs sd) at the paths they were built with.
built=$(cat "$bundle/build_root")
if [ "$built" != "$repo" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$repo" "$built"
fi
mkdir -p "$built/target/release" && cp "$bundle/sd" "$built/target/release/sd"
sd="$bundle/sd"
model="$repo/fixtures/models/tiny-sd15"

step "library unit tests (cuda build; device parsing opens the GPU)"
"$bundle/unit" --test-threads=8 2>&1 | tail -3 || fail=1
"$bundle/unit" device:: --nocapture 2>&1 | grep -E 'test |result' || fail=1

for dev in $gpu cpu; do
  step "parity tests on $dev: UNet, VAE, text encoder, whole pipeline vs diffusers"
  SD_TEST_DEVICE=$dev "$bundle/device" --nocapture --test-threads=1 2>&1 | tee "$out/device-$dev.log" |
    grep -E 'max abs diff|worst|test result|panicked|FAILED' || fail=1
  grep -q 'test result: ok' "$out/device-$dev.log" || fail=1
done

step "sd CLI end-to-end tests (cuda build, default device cpu)"
"$bundle/cli" --test-threads=1 2>&1 | grep -E 'test |result' || fail=1

step "sd generate --device cuda|cpu for every reference case"
python3 - "$repo/fixtures/pipeline/cases.json" > "$out/cases.txt" <<'PY'
import json, sys
for case in json.load(open(sys.argv[1])):
    args = case["args"] + (["--init-image", case["init_image"], "--strength", str(case["strength"])]
                           if case.get("init_image") and "--init-image" not in case["args"] else [])
    print(case["name"] + "\t" + "\x1f".join(args))
PY
for dev in $gpu cpu; do
  mkdir -p "$out/png-$dev"
  start=$EPOCHREALTIME
  while IFS=$'\t' read -r name args; do
    IFS=$'\x1f' read -r -a argv <<< "$args"
    (cd "$repo/fixtures/pipeline" &&
      "$sd" generate --model "$model" --device "$dev" --output "$out/png-$dev/$name.png" "${argv[@]}" \
        > /dev/null 2> "$out/png-$dev/$name.err") || { echo "$dev $name failed:"; cat "$out/png-$dev/$name.err"; fail=1; }
  done < "$out/cases.txt"
  echo "$dev: $(wc -l < "$out/cases.txt") cases in $(since "$start") s (one process each)"
done
mkdir -p "$out/png-ref" && cp "$repo"/fixtures/pipeline/*.png "$out/png-ref/" && rm -f "$out/png-ref/init.png"
python3 "$here/compare_png.py" cuda-vs-diffusers "$out/png-$gpu" "$out/png-ref" | tail -4 || fail=1
python3 "$here/compare_png.py" cpu-vs-diffusers "$out/png-cpu" "$out/png-ref" | tail -1 || fail=1
python3 "$here/compare_png.py" cuda-vs-cpu "$out/png-$gpu" "$out/png-cpu" | tail -1

step "half precision on $gpu (euler case)"
for dt in f16 bf16; do
  mkdir -p "$out/png-$dt"
  (cd "$repo/fixtures/pipeline" && "$sd" generate --model "$model" --device $gpu --dtype "$dt" \
    --output "$out/png-$dt/euler.png" --prompt "a red circle on a blue background" \
    --negative-prompt "blurry, low quality" -W 64 -H 64 --steps 6 --sampler euler --seed 1234) \
    2>&1 | tail -1
  python3 "$here/compare_png.py" "$dt-vs-diffusers" "$out/png-$dt" "$out/png-ref" | grep -v "images, worst"
done

step "timing: tiny model, ${size}x${size}, 10 steps, euler_a, CFG 7.5 (wall time; the GPU's 1st run includes start-up)"
for dev in $gpu cpu; do
  runs=2; [ "$dev" = cpu ] && runs=1
  for run in $(seq $runs); do
    start=$EPOCHREALTIME
    "$sd" generate --model "$model" --device "$dev" --output "$out/time-$dev.png" -W "$size" -H "$size" \
      --steps 10 --seed 7 -p "a red circle on a blue background" 2> "$out/time-$dev.err" > /dev/null || fail=1
    echo "$dev run $run: $(since "$start") s wall; $(tail -1 "$out/time-$dev.err")"
  done
done
python3 - "$out/time-$gpu.png" "$out/time-cpu.png" <<'PY'
import sys, numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sys.argv[1:])
d = np.abs(a - b)
print(f"timed image, gpu vs cpu: max {d.max():.0f} mean {d.mean():.5f}")
PY

echo; [ $fail = 0 ] && echo "GPU CHECK: ALL PASSED" || echo "GPU CHECK: SOME STEPS FAILED"
exit $fail
