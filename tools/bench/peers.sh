#!/usr/bin/env bash
# The peer benchmark in one command: sd vs diffusers/PyTorch on this CPU (tools/bench/README.md).
#
#   tools/bench/peers.sh [--models sd15,sdxl] [--steps 20] [--size N] [--repeats 1]
#                        [--dtypes f32,bf16] [--threads 2] [--only ours|torch]
#                        [--peak-gflops f32=400,bf16=5600 | --peak-file cpu-peak.txt]
#                        [--out results.md]
#
# Prepares a venv outside the repository (SD_BENCH_VENV, default ~/sd-ref-venv) with the pinned
# tools/reference/requirements.txt, builds target/release/sd, then runs tools/bench/peers.py,
# which builds the random-weight model folders (SD_BENCH_CACHE, default ~/.cache/sd-bench) on
# first use and measures both engines, interleaved.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${SD_BENCH_VENV:-$HOME/sd-ref-venv}"
requirements="$root/tools/reference/requirements.txt"

# Whether the venv holds exactly the pinned versions (name==version lines of the file).
pinned_ok() {
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "$requirements" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, wanted = line.partition("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
}

if ! pinned_ok; then
  echo "peers.sh: installing the pinned diffusers/PyTorch into $venv (a few GB, once) ..." >&2
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r "$requirements"
  pinned_ok || { echo "peers.sh: $venv still lacks the pinned versions of $requirements" >&2; exit 1; }
fi

only=""
prev=""
for arg in "$@"; do
  case "$prev" in --only) only="$arg" ;; esac
  case "$arg" in --only=*) only="${arg#--only=}" ;; esac
  prev="$arg"
done
if [ "$only" != "torch" ]; then
  echo "peers.sh: cargo build --release -p sd-cli" >&2
  (cd "$root" && cargo build --release -p sd-cli)
fi

exec "$venv/bin/python" "$root/tools/bench/peers.py" --python "$venv/bin/python" \
  --sd "$root/target/release/sd" "$@"
