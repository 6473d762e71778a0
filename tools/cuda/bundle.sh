#!/usr/bin/env bash
# Builds the `sd` binary and the test binaries with `--features cuda` (release) and copies them,
# stripped, into BUNDLE_DIR for tools/cuda/gpu-check.sh on a GPU machine that has no Rust.
# Source tools/cuda/env.sh first.   tools/cuda/bundle.sh BUNDLE_DIR
set -euo pipefail
bundle="${1:?usage: bundle.sh BUNDLE_DIR}"
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p "$bundle"
cargo build --release -p sd-cli --features cuda
cp target/release/sd "$bundle/sd"
# Test executables, by target name: the device parity tests, the library's unit tests, the CLI's.
cargo test --release -p stable-diffusion -p sd-cli --features cuda --no-run --message-format=json \
  > "$bundle/.tests.json"
python3 - "$bundle" <<'PY'
import json, shutil, sys
bundle = sys.argv[1]
wanted = {"device": "device", "stable_diffusion": "unit", "generate": "cli"}
for line in open(f"{bundle}/.tests.json"):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    key = msg["target"]["name"]
    if msg["profile"]["test"] and key in wanted:
        shutil.copy(msg["executable"], f"{bundle}/{wanted[key]}")
        print(wanted[key], "<-", msg["executable"])
PY
rm "$bundle/.tests.json"
strip "$bundle"/sd "$bundle"/device "$bundle"/unit "$bundle"/cli
# The test binaries look for fixtures under the workspace they were built in.
echo "$root" > "$bundle/build_root"
ls -la "$bundle"
