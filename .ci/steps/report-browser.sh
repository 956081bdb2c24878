#!/usr/bin/env bash
# The HTML report in a real browser (issue 11): renders the report of a suite run with one
# failure in headless Chromium at 1400x900 and asserts that the page loaded without script
# errors, that the summary and the failure are in the DOM, and that the first failure's
# message ends above the fold. Also screenshots the plots of a COW scenario and of a
# storage-events scenario (opened through their #scn-N links).
#
# Needs: chromium (Debian: `apt-get install -y chromium`, about 2 minutes). Set CHROMIUM to
# another binary if needed. Writes PNGs and DOM dumps to ${REPORT_BROWSER_OUT:-out/browser}.
set -euo pipefail
cd "$(dirname "$0")/../.."

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
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
cargo build --release -p blksnap-sim
BIN=$PWD/target/release/blksnap-sim
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

# One headless Chromium run: $1 = URL fragment ('' for the top), $2 = output name.
render() {
    local fragment=$1 name=$2 profile
    profile=$(mktemp -d)
    local flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
        --disable-background-networking --disable-component-update --disable-sync
        --user-data-dir="$profile" --window-size=1400,900)
    "$CHROMIUM" "${flags[@]}" --dump-dom "file://$OUT/report.html$fragment" \
        >"$OUT/$name.dom.html" 2>"$OUT/$name.dump.log"
    "$CHROMIUM" "${flags[@]}" --screenshot="$OUT/$name.png" "file://$OUT/report.html$fragment" \
        >"$OUT/$name.shot.log" 2>&1
    rm -rf "$profile"
    [ -s "$OUT/$name.png" ] || fail "$name: no screenshot"
    grep -q 'data-rendered="ok [1-9][0-9]* svg"' "$OUT/$name.dom.html" ||
        fail "$name: the page did not finish rendering (no data-rendered marker)"
    if grep -q 'data-script-error' "$OUT/$name.dom.html"; then
        fail "$name: a script error happened"
    fi
    if grep -Eq 'Uncaught|SyntaxError' "$OUT/$name.dump.log"; then
        fail "$name: console errors: $(grep -E 'Uncaught|SyntaxError' "$OUT/$name.dump.log")"
    fi
}

# The details element of a scenario, by its name in the summary line.
scenario_anchor() {
    grep -o "<details id=\"scn-[0-9]*\"><summary>$1 " "$OUT/report.html" |
        grep -o 'scn-[0-9]*' | head -1
}

echo "== report-browser: top of the report"
render "" top
grep -q 'id="summary"' "$OUT/top.dom.html" || fail "no summary"
grep -q '<h2>Failures</h2>' "$OUT/top.dom.html" || fail "no failures section"
grep -q 'B-IMG-1-unexpected' "$OUT/top.dom.html" || fail "the failing run is not shown"
bottom=$(grep -o 'data-failure-bottom="[0-9]*"' "$OUT/top.dom.html" | grep -o '[0-9]*' || true)
[ -n "$bottom" ] || fail "no data-failure-bottom marker"
[ "$bottom" -le 900 ] || fail "the first failure's message ends at ${bottom}px, below the fold (900px)"
echo "first failure's message ends at ${bottom}px of 900"

for scenario in spec-5.9-cow-caches spec-6.7-storage-events; do
    anchor=$(scenario_anchor "$scenario")
    [ -n "$anchor" ] || fail "no details for $scenario"
    echo "== report-browser: $scenario (#$anchor)"
    render "#$anchor" "$scenario"
    grep -q "<details id=\"$anchor\" open" "$OUT/$scenario.dom.html" ||
        fail "$scenario: the #$anchor link did not open its plots"
done
echo "report-browser: ok ($OUT)"
