#!/usr/bin/env bash
# The HTML report in a real browser (issue 11): renders the report of a suite run with one
# failure in headless Chromium at 1400x900 and asserts that the page loaded without script
# errors, that the summary and the failure are in the DOM, and that the first failure's
# message ends above the fold. Also screenshots the plots of a COW scenario and of a
# storage-events scenario.
#
# Needs: chromium (Debian: `apt-get install -y chromium`, about 2 minutes). Set CHROMIUM to
# another binary if needed. Writes PNGs and DOM dumps to ${REPORT_BROWSER_OUT:-out/browser}.
set -euo pipefail
cd "$(dirname "$0")/../.."

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
# CI starts from a machine without a browser: install Debian's (about 2 minutes).
if [ -z "$CHROMIUM" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== report-browser: installing chromium"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    CHROMIUM=$(command -v chromium || true)
fi
if [ -z "$CHROMIUM" ]; then
    echo "report-browser: chromium not installed (apt-get install -y chromium)" >&2
    exit 1
fi
OUT=${REPORT_BROWSER_OUT:-out/browser}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

fail() {
    echo "report-browser: FAIL: $*" >&2
    exit 1
}

echo "== report-browser: suite run with one failure"
# The binary .ci/run's build phase made (the `ci` profile); built here only when run alone.
BIN=${CARGO_TARGET_DIR:-$PWD/target}/ci/blksnap-sim
[ -x "$BIN" ] || cargo test --workspace --profile ci --no-run
# The bug scenario without its expect_failure line: the quirk is on and nothing expects the
# checker to fire, so exactly this run fails.
grep -v expect_failure scenarios/bugs/img-1.ron |
    sed 's/name: "B-IMG-1"/name: "B-IMG-1-unexpected"/' >"$WORK/img-1-unexpected.ron"
grep -q B-IMG-1-unexpected "$WORK/img-1-unexpected.ron" || fail "could not derive the failing scenario"
set +e
"$BIN" run scenarios "$WORK/img-1-unexpected.ron" --json "$OUT/report.json" \
    --html "$OUT/report.html" >"$OUT/run.log" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || fail "expected exit 1 (one failure), got $rc; see $OUT/run.log"
tail -1 "$OUT/run.log" | grep -Eq '^[0-9]+ passed, 1 failed' || fail "not exactly one failure: $(tail -1 "$OUT/run.log")"

# One headless Chromium run: $1 = page, $2 = URL suffix, $3 = output name, $4 = height.
render() {
    local page=$1 suffix=$2 name=$3 height=$4 profile
    profile=$(mktemp -d)
    local flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
        --disable-background-networking --disable-component-update --disable-sync
        --user-data-dir="$profile" --window-size="1400,$height")
    "$CHROMIUM" "${flags[@]}" --dump-dom "file://$OUT/$page$suffix" \
        >"$OUT/$name.dom.html" 2>"$OUT/$name.dump.log"
    "$CHROMIUM" "${flags[@]}" --screenshot="$OUT/$name.png" "file://$OUT/$page$suffix" \
        >"$OUT/$name.shot.log" 2>&1
    rm -rf "$profile"
    [ -s "$OUT/$name.png" ] || fail "$name: no screenshot"
    grep -q 'data-rendered="ok [1-9][0-9]* svg"' "$OUT/$name.dom.html" ||
        fail "$name: the page did not finish rendering (no data-rendered marker)"
    if grep -q 'data-script-error="1"' "$OUT/$name.dom.html"; then
        fail "$name: a script error happened"
    fi
    if grep -Eq 'Uncaught|SyntaxError' "$OUT/$name.dump.log"; then
        fail "$name: console errors: $(grep -E 'Uncaught|SyntaxError' "$OUT/$name.dump.log")"
    fi
}

echo "== report-browser: top of the report (1400x900)"
render report.html "" top 900
grep -q 'id="summary"' "$OUT/top.dom.html" || fail "no summary"
grep -q '<h2>Failures</h2>' "$OUT/top.dom.html" || fail "no failures section"
grep -q 'B-IMG-1-unexpected' "$OUT/top.dom.html" || fail "the failing run is not shown"
bottom=$(grep -o 'data-failure-bottom="[0-9]*"' "$OUT/top.dom.html" | grep -o '[0-9]*' || true)
[ -n "$bottom" ] || fail "no data-failure-bottom marker"
[ "$bottom" -le 900 ] || fail "the first failure's message ends at ${bottom}px, below the fold (900px)"
echo "first failure's message ends at ${bottom}px of 900"

# The plots of one scenario each, in a report of its own opened with every scenario shown
# (?open): headless screenshots of a scrolled page come out blank, so nothing scrolls.
for scenario in spec/cow-5.9 spec/events-6.7; do
    name=$(basename "$scenario")
    "$BIN" run "scenarios/$scenario.ron" --html "$OUT/$name.html" >"$OUT/$name.log" 2>&1 ||
        fail "$scenario did not pass; see $OUT/$name.log"
    echo "== report-browser: plots of $scenario"
    render "$name.html" "?open" "$name" 1500
    grep -q '<details id="scn-0" open' "$OUT/$name.dom.html" || fail "$name: ?open did not open the plots"
    plots=$(grep -c '<svg ' "$OUT/$name.html")
    [ "$plots" -ge 3 ] || fail "$name: $plots plots"
done
echo "report-browser: ok ($OUT)"
