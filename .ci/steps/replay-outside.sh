#!/usr/bin/env bash
# Replay where the user is: an installed blksnap-sim, a scenario outside the
# repository, and the replay command the failing run prints, run from that
# directory, must reproduce the same failure with the same digest.
#
# The binary goes into a temporary prefix's bin/, on PATH, as `cargo install
# --locked --path sim --root $TMP` (README's command) would put it. By
# default the step copies the binary .ci/run's build phase made: `cargo
# install` builds blksnap-sim alone, whose feature set differs from the
# workspace build, so it compiled the crate and ron again (75 s wall, 134 s
# CPU in CI). REPLAY_INSTALL=cargo runs the real `cargo install` instead.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== install into $tmp/prefix"
built="${CARGO_TARGET_DIR:-$repo/target}/ci/blksnap-sim"
if [ "${REPLAY_INSTALL:-copy}" = cargo ] || [ ! -x "$built" ]; then
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}" \
        cargo install --locked --quiet --profile ci --path "$repo/sim" --root "$tmp/prefix"
else
    mkdir -p "$tmp/prefix/bin"
    cp "$built" "$tmp/prefix/bin/blksnap-sim"
fi
export PATH="$tmp/prefix/bin:$PATH"
[ "$(command -v blksnap-sim)" = "$tmp/prefix/bin/blksnap-sim" ] || {
    echo "error: PATH does not find the installed blksnap-sim" >&2
    exit 1
}

# B-IMG-1 with its quirk on but without `expect_failure`: the bug is then a
# failure, and the run prints its replay command.
work="$tmp/elsewhere"
mkdir -p "$work/my scenarios"
grep -v 'expect_failure' "$repo/scenarios/bugs/img-1.ron" >"$work/my scenarios/img-1.ron"
if cmp -s "$repo/scenarios/bugs/img-1.ron" "$work/my scenarios/img-1.ron"; then
    echo "error: scenarios/bugs/img-1.ron has no expect_failure line to drop" >&2
    exit 1
fi
cd "$work"

# One run: its exit code, its FAIL line (name, seed, digest; the wall time
# at the end is cut) and its replay command.
out="$tmp/out.txt"
run() {
    set +e
    "$@" >"$out" 2>&1
    code=$?
    set -e
    fail_line="$(grep '^FAIL ' "$out" | sed 's/digest=\([0-9a-f]*\).*/digest=\1/' || true)"
    replay="$(sed -n 's/^ *seed [0-9]*; replay: //p' "$out")"
}

echo "== first run, from $work"
run blksnap-sim run "my scenarios/img-1.ron"
cat "$out"
[ "$code" = 1 ] || { echo "error: expected exit 1, got $code" >&2; exit 1; }
[ -n "$fail_line" ] && [ -n "$replay" ] || { echo "error: no FAIL line or replay command" >&2; exit 1; }
grep -q '\[point_in_time' "$out" || { echo "error: point_in_time did not catch B-IMG-1" >&2; exit 1; }
first_fail="$fail_line"
first_out="$(grep -v '^FAIL \|^PASS ' "$out")"
case "$replay" in
    "blksnap-sim run 'my scenarios/img-1.ron' --seed "*) ;;
    *) echo "error: replay command does not name the installed binary and the path as given: $replay" >&2; exit 1 ;;
esac

echo "== replay: $replay"
run eval "$replay"
cat "$out"
[ "$code" = 1 ] || { echo "error: replay exited $code, expected 1" >&2; exit 1; }
[ "$fail_line" = "$first_fail" ] || {
    echo "error: replay differs: '$fail_line' vs '$first_fail'" >&2
    exit 1
}
[ "$(grep -v '^FAIL \|^PASS ' "$out")" = "$first_out" ] || {
    echo "error: replay printed other failures" >&2
    exit 1
}
echo "replay from outside the repository: same failure, same digest (${fail_line##*digest=})"
