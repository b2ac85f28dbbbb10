#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ (cargo-fuzz, libFuzzer) for a fixed
# time each: SECONDS_EACH (default 60). Needs a nightly toolchain and
# cargo-fuzz (installed here if missing). Crashes land in
# fuzz/artifacts/<target>/; turn each into a regression test next to the
# code it broke. The corpus grows in fuzz/corpus/<target>/ (not committed).
#
#   bash scripts/fuzz.sh                 # every target, 60 s each
#   SECONDS_EACH=10 bash scripts/fuzz.sh kiss cobs
#
# The decoders hold no unsafe code, so the default sanitizer is none (much
# faster to build and run); SANITIZER=address turns AddressSanitizer on.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${SECONDS_EACH:-60}
SANITIZER=${SANITIZER:-none}
TOOLCHAIN=${TOOLCHAIN:-nightly}

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "no $TOOLCHAIN toolchain: rustup toolchain install $TOOLCHAIN --profile minimal" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +"$TOOLCHAIN" fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== fuzz target $t for ${SECONDS_EACH}s"
  cargo +"$TOOLCHAIN" fuzz run --sanitizer "$SANITIZER" "$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -print_final_stats=1
done
