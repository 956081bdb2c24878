#!/bin/bash -eu
# Build every cargo-fuzz target of fuzz/cargo-fuzz into $OUT, each with its
# seed corpus (fuzz/corpus/<target>, zipped as <target>_seed_corpus.zip)
# and its libFuzzer options. The cargo-fuzz crate is its own workspace
# (it stays out of `cargo build --workspace`), so it has its own target
# directory and its own committed Cargo.lock (the versions of the
# workspace's Cargo.lock, plus libfuzzer-sys).
#
# `cargo fuzz build` picks the address sanitizer by default, the one
# ClusterFuzzLite runs for Rust. CARGO_FUZZ_FLAGS adds flags: a try of this
# script outside the builder image, on stable Rust, sets it to `-s none`
# (with SRC and OUT pointing at a checkout's parent and a scratch dir).
cd "$SRC/blksnap-sim"
FUZZ_DIR=fuzz/cargo-fuzz
# shellcheck disable=SC2086 # CARGO_FUZZ_FLAGS is a list of flags
cargo fuzz build -O ${CARGO_FUZZ_FLAGS:-} --fuzz-dir "$FUZZ_DIR"
BIN_DIR="$FUZZ_DIR/target/x86_64-unknown-linux-gnu/release"
# The lifecycle targets (lifecycle, and lifecycle_everything: the same
# with power cuts and storage tails) again, without compare tracing: their
# bytes feed `arbitrary`, which takes every value, so there is nothing for
# compare tracing to solve, and it was 45% of the instructions per run
# (fuzz/README.md, "Build and libFuzzer flags"). The text targets keep it:
# their keywords are what it solves. Also for these only (README, "Session 9"): branch
# folding stays on (fewer edges to collect after every run), and neither
# indirect calls (sanitizer-coverage-level 3, not cargo-fuzz's 4) nor stack
# depth are traced; cargo-fuzz appends RUSTFLAGS to its own, so these win.
# And only the engine's edges are features (fuzz/cargo-fuzz/engine-coverage:
# the harness's own edges made the fuzzer keep inputs for what the checkers
# did, and counting them doubled the cost of a run). Cargo does not see what
# that wrapper decides, so this build has a target directory of its own.
LIFECYCLE_RUSTFLAGS="-Cllvm-args=-sanitizer-coverage-level=3 -Cllvm-args=-sanitizer-coverage-stack-depth=false"
LIFECYCLE_TARGET_DIR="$FUZZ_DIR/target/engine-coverage"
LIFECYCLE_TARGETS="lifecycle lifecycle_everything"
for target in $LIFECYCLE_TARGETS; do
  # shellcheck disable=SC2086
  RUSTC_WRAPPER="$PWD/$FUZZ_DIR/engine-coverage" RUSTFLAGS="${RUSTFLAGS:-} $LIFECYCLE_RUSTFLAGS" \
    cargo fuzz build -O --no-trace-compares --disable-branch-folding=false ${CARGO_FUZZ_FLAGS:-} \
    --fuzz-dir "$FUZZ_DIR" --target-dir "$LIFECYCLE_TARGET_DIR" "$target"
done

# Whether a target is one of those, built and run as lifecycle is.
lifecycle_like() {
  [[ " $LIFECYCLE_TARGETS " == *" $1 "* ]]
}

# Longest input that adds anything, by target (lifecycle and ioctl_args
# decode at most a few hundred bytes; the scenario texts are longer).
max_len() {
  case "$1" in
    lifecycle|lifecycle_everything|ioctl_args) echo 512 ;;
    *) echo 32768 ;;
  esac
}

for target in $(cargo fuzz list --fuzz-dir "$FUZZ_DIR"); do
  if lifecycle_like "$target"; then
    cp "$LIFECYCLE_TARGET_DIR/x86_64-unknown-linux-gnu/release/$target" "$OUT/"
  else
    cp "$BIN_DIR/$target" "$OUT/"
  fi
  corpus="fuzz/corpus/$target"
  if [ -d "$corpus" ]; then
    (cd "$corpus" && zip -q -r "$OUT/${target}_seed_corpus.zip" .)
  fi
  # timeout: a backstop only (the simulator reports a hang itself); under
  # ASan one lifecycle input can take several seconds of CPU (fuzz/README.md,
  # "Speed"), and a timeout counts as a crash.
  printf '[libfuzzer]\nmax_len = %s\ntimeout = 60\n' "$(max_len "$target")" \
    > "$OUT/$target.options"
  # lifecycle's thousands of features make the entropic schedule's
  # bookkeeping most of the loop; without it the same CPU reached more
  # coverage (fuzz/README.md, "Build and libFuzzer flags").
  # Input reduction stays on (libFuzzer's default): a shorter input is a
  # cheaper scenario, so a campaign's corpus gets cheaper to run
  # (fuzz/README.md, "Shorter corpus inputs").
  if lifecycle_like "$target"; then
    printf 'entropic = 0\n' >> "$OUT/$target.options"
  fi
done
