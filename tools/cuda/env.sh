# Source this to build `--features cuda` against a CUDA toolkit assembled from PyPI wheels
# by tools/cuda/setup-sdk.sh (no system CUDA install needed), then build:
#   CUDA_SDK=/work/cuda-sdk . tools/cuda/env.sh
#   cargo build --release -p sd-cli --features cuda
# CUDA_COMPUTE_CAP picks the GPU generation the kernels are compiled for (90 = Hopper).
: "${CUDA_SDK:=$HOME/.cache/stable-diffusion-rs/cuda-sdk}"
_root="$CUDA_SDK/site/nvidia/cu13"
export CUDA_ROOT="$_root" CUDA_PATH="$_root" CUDA_HOME="$_root"
export PATH="$_root/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# Match the toolkit version (13.0) so the PTX and driver-API symbols load on a 13.0 driver.
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
# Link against the stub libcuda (the real one comes with the GPU driver at run time).
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$_root/lib64 -L native=$_root/lib64/stubs"
export LIBRARY_PATH="$_root/lib64:$_root/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
unset _root
