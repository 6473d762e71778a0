#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 60), one after the other, one
# worker, with the issue's limits; then prints each target's last libFuzzer status line.
# Usage: fuzz/run-all.sh [SECONDS] [TARGET...]
set -u
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
cargo +nightly fuzz build -a || exit 1
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if cargo +nightly fuzz run -a "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=1 \
        -max_len=65536 -print_final_stats=1 >"logs/$t.log" 2>&1; then
        echo "$t: clean: $(grep -E '^#[0-9]+' "logs/$t.log" | tail -1)"
    else
        status=1
        echo "$t: FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
    fi
done
exit $status
