#!/usr/bin/env bash
# fuzz/cargo-fuzz has its own Cargo.lock (it is its own workspace, and
# ClusterFuzzLite builds from it). It must pin what the workspace pins: a
# crate in both locks at different versions means the fuzz build runs
# other code than the tests (it once kept ron 0.8 after the workspace
# moved to ron 0.12). Regenerate it with:
#   cp Cargo.lock fuzz/cargo-fuzz/Cargo.lock && (cd fuzz/cargo-fuzz && cargo fetch)
set -euo pipefail
versions() {
    awk '/^name = / { n = $3 } /^version = / { print n, $3 }' "$1" | tr -d '"' | sort -u
}
ws=$(versions Cargo.lock)
fz=$(versions fuzz/cargo-fuzz/Cargo.lock)
# Crates in both files, and the versions each file has of them.
common=$(comm -12 <(echo "$ws" | cut -d' ' -f1 | sort -u) <(echo "$fz" | cut -d' ' -f1 | sort -u))
checked=0
stale=0
for name in $common; do
    a=$(echo "$ws" | awk -v n="$name" '$1 == n { print $2 }' | tr '\n' ' ')
    b=$(echo "$fz" | awk -v n="$name" '$1 == n { print $2 }' | tr '\n' ' ')
    checked=$((checked + 1))
    if [ "$a" != "$b" ]; then
        echo "fuzz/cargo-fuzz/Cargo.lock: $name $b; Cargo.lock: $name $a" >&2
        stale=1
    fi
done
if [ "$checked" -lt 10 ]; then
    echo "fuzz lock check: only $checked crates in common; is the lock file there?" >&2
    exit 1
fi
if [ "$stale" -ne 0 ]; then
    echo "FAIL: fuzz/cargo-fuzz/Cargo.lock is stale (command above)" >&2
    exit 1
fi
# Equal versions are not enough: a dependency the workspace gained (sim's
# libmimalloc-sys, session 7) is missing from the fuzz lock until it is
# regenerated, and ClusterFuzzLite's build would resolve it afresh. cargo
# refuses a lock that needs an update under --locked.
if ! cargo metadata --locked --format-version 1 \
    --manifest-path fuzz/cargo-fuzz/Cargo.toml >/dev/null 2>/tmp/fuzz-lock-metadata.err; then
    cat /tmp/fuzz-lock-metadata.err >&2
    echo "FAIL: fuzz/cargo-fuzz/Cargo.lock does not resolve the fuzz workspace as it stands (command above)" >&2
    exit 1
fi
echo "fuzz/cargo-fuzz/Cargo.lock: $checked crates pinned as in Cargo.lock; it resolves --locked"
