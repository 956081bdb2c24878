#!/usr/bin/env bash
# fuzz/cargo-fuzz/engine-coverage decides which crates of the lifecycle
# fuzz build get coverage; cargo never sees its decision, and nothing else
# runs it in CI (cargo-fuzz is not installed here). A fake rustc that
# prints its arguments shows what each crate is built with: the engine
# keeps the sancov pass, the simulator loses it and nothing else, and an
# argument-less call (`rustc -vV`) passes through.
set -euo pipefail
wrapper=fuzz/cargo-fuzz/engine-coverage
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#!/usr/bin/env bash\nprintf "%%s\\n" "$@"\n' >"$tmp/rustc"
chmod +x "$tmp/rustc"
flags=(-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 --cfg fuzzing -Zsanitizer=address)

args_of() { # crate name -> the arguments the wrapper hands rustc
    "$wrapper" "$tmp/rustc" --crate-name "$1" --edition=2021 "${flags[@]}"
}
fail() { echo "FAIL: $wrapper: $*" >&2; exit 1; }

# (Output is kept in a variable before grep reads it: `grep -q` may quit
# before the fake rustc has written everything, and pipefail would then
# fail the pipe.)
for covered in blksnap_core blksnap_fuzz lifecycle lifecycle_everything; do
    out=$(args_of "$covered")
    grep -qx -- -Cpasses=sancov-module <<<"$out" || fail "$covered lost its coverage"
done
for plain in blksnap_sim serde ron blake3 blksnap_core_extra; do
    out=$(args_of "$plain")
    ! grep -qx -- -Cpasses=sancov-module <<<"$out" || fail "$plain kept its coverage"
    [ "$(wc -l <<<"$out")" -eq $((3 + ${#flags[@]} - 1)) ] ||
        fail "$plain lost more than the sancov pass: $out"
    grep -qx -- -Zsanitizer=address <<<"$out" || fail "$plain lost the sanitizer"
done
[ "$("$wrapper" "$tmp/rustc" -vV)" = "-vV" ] || fail "rustc -vV was not passed through"
echo "engine-coverage: the engine, the fuzz crate and the lifecycle targets keep coverage; other crates lose only the sancov pass"
