#!/usr/bin/env bash
# Assembles a CUDA 13.0 build toolkit (nvcc, headers, link libraries) from NVIDIA's PyPI wheels
# into $CUDA_SDK, outside the repository, for building `--features cuda` on a machine without
# a CUDA install (and without a GPU). See tools/cuda/README.md.
#   CUDA_SDK=/work/cuda-sdk tools/cuda/setup-sdk.sh
set -euo pipefail
: "${CUDA_SDK:=$HOME/.cache/stable-diffusion-rs/cuda-sdk}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CUDA_SDK/whl"
# 13.0 on purpose: the PTX that nvcc writes must not be newer than what the GPU's driver
# understands (driver 580 = CUDA 13.0). Use 12.x wheels (and CUDARC_CUDA_VERSION) for older drivers.
"$PYTHON" -m pip download --no-deps --only-binary=:all: -d "$CUDA_SDK/whl" \
  --python-version 3.11 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
  "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
  "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
  "nvidia-curand>=10.4,<10.5" "nvidia-cublas==13.0.*"
rm -rf "$CUDA_SDK/site"
"$PYTHON" -m pip install -q --no-deps --no-index --target "$CUDA_SDK/site" "$CUDA_SDK"/whl/*.whl
root="$CUDA_SDK/site/nvidia/cu13"
mkdir -p "$root/lib64/stubs"
# The linker wants unversioned names; the programs record the versioned sonames.
for lib in "$root"/lib/lib{cudart.so.13,nvrtc.so.13,curand.so.10,cublas.so.13,cublasLt.so.13}; do
  base=$(basename "$lib")
  ln -sf "$lib" "$root/lib64/$base"
  ln -sf "$lib" "$root/lib64/${base%%.so*}.so"
done
# libcuda comes with the GPU driver, not with any wheel: link against a stub that exports
# every driver-API name in cuda.h (soname libcuda.so.1, as the driver's). At run time the
# driver's real libcuda.so.1 is loaded instead.
grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$root/include/cuda.h" | sort -u |
  awk '{print "void " $1 "(void) {}"}' > "$CUDA_SDK/stub_cuda.c"
"${CC:-cc}" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" "$CUDA_SDK/stub_cuda.c"
"$root/bin/nvcc" --version | tail -1
echo "CUDA toolkit ready in $root; now: CUDA_SDK=$CUDA_SDK . tools/cuda/env.sh"
