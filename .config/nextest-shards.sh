#!/usr/bin/env bash
# Run the scenario-file tests in 3 nextest shards (hash:k/3) and check that
# together they ran every file under scenarios/ exactly once.
# Usage: .config/nextest-shards.sh [N]   (default 3 shards)
set -euo pipefail
cd "$(dirname "$0")/.."
shards=${1:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for k in $(seq 1 "$shards"); do
    cargo nextest run -p blksnap-sim --test scenario_files --no-fail-fast \
        --partition "hash:$k/$shards" --status-level pass --final-status-level none \
        2>&1 | sed -n 's/.* PASS \[[^]]*\] *(\?[0-9/]*)\? *blksnap-sim::scenario_files //p' \
        | sed 's/[[:space:]]*$//' >"$out/shard$k"
    echo "shard $k/$shards: $(wc -l <"$out/shard$k") scenario files passed"
done
find scenarios -name '*.ron' | sed 's|^scenarios/||' | sort >"$out/all"
sort "$out"/shard* >"$out/ran"
total=$(wc -l <"$out/all")
ran=$(wc -l <"$out/ran")
once=$(sort -u "$out/ran" | wc -l)
echo "scenario files: $total; runs over all shards: $ran; distinct: $once"
if ! diff -u "$out/all" "$out/ran"; then
    echo "FAIL: the shards did not run every scenario file exactly once" >&2
    exit 1
fi
echo "OK: every scenario file ran exactly once"
