#!/usr/bin/env bash
# Golden files (insta): every suite scenario's digest and metrics, the JUnit
# and Markdown renderings of a fixed run and every `--help` must match the
# committed files in sim/tests/snapshots, and no committed file may be left
# without its test (--unreferenced=reject). A behaviour change fails here
# with a readable diff; accept an intended one with `cargo insta review`.
#
# Scoped to the golden test: `cargo test --workspace` runs the rest. In the
# `ci` profile, so it reuses the build .ci/run made.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The cargo-insta release that matches the insta in Cargo.lock (1.49.0)
# version; installed once (286 s of CPU to build here), then reused.
if ! cargo insta --version >/dev/null 2>&1; then
    echo "== installing cargo-insta"
    cargo install cargo-insta --locked --version 1.49.0
fi
cargo insta --version

echo "== golden files"
cargo insta test --profile ci --check --unreferenced=reject -p blksnap-sim --test golden
