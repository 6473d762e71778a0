#!/usr/bin/env bash
# Runs every fuzz target, one after the other, one worker, with the issue's limits; then prints
# each target's last libFuzzer status line and the time it took.
# Usage: fuzz/run-all.sh [SECONDS] [TARGET...]       each target for SECONDS (default 60)
#        fuzz/run-all.sh --runs N [TARGET...]         each target for N executions
# The targets are built once (`cargo +nightly fuzz build -a`; FUZZ_NO_BUILD=1 skips that and
# runs what was built last), then each binary runs on its own. New inputs go to grown/TARGET
# (ignored by git); corpus/TARGET is read as the seed corpus; crashes land in artifacts/TARGET/.
# An input over 1 s is a timeout (FUZZ_TIMEOUT=S raises that wall-clock limit on a machine
# busy with other work; inputs over 1 s are still saved as artifacts/TARGET/slow-unit-*).
set -u
cd "$(dirname "$0")"
if [ "${1:-}" = "--runs" ]; then
    [ $# -ge 2 ] || { echo "usage: $0 --runs N [TARGET...]" >&2; exit 2; }
    limit=(-runs="$2")
    shift 2
else
    limit=(-max_total_time="${1:-60}")
    shift || true
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
    cargo +nightly fuzz build -a || exit 1
fi
bin="target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "grown/$t" "artifacts/$t"
    start=$(date +%s)
    if "$bin/$t" -artifact_prefix="artifacts/$t/" "${limit[@]}" -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 -timeout="${FUZZ_TIMEOUT:-1}" -report_slow_units=1 \
        -max_len=65536 -print_final_stats=1 \
        "grown/$t" "corpus/$t" >"logs/$t.log" 2>&1; then
        echo "$t: clean in $(($(date +%s) - start)) s: $(grep -E '^#[0-9]+' "logs/$t.log" | tail -1)"
    else
        status=1
        echo "$t: FAILED after $(($(date +%s) - start)) s (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
    fi
done
exit $status
