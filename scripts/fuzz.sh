#!/usr/bin/env bash
# Builds the fuzz targets under fuzz/ (cargo-fuzz, libFuzzer; release
# with debug assertions) and runs every one for a fixed time. Needs a
# nightly toolchain and cargo-fuzz (installed here if missing).
#
#   bash scripts/fuzz.sh                    # build, then every target FUZZ_SECONDS (600) each
#   FUZZ_SECONDS=60 FUZZ_JOBS=2 bash scripts/fuzz.sh kiss cobs
#   bash scripts/fuzz.sh build <dir>        # build, and put binaries + seeds + fuzz_run.sh in <dir>
#   bash scripts/fuzz.sh list               # the targets
#
# A run goes through scripts/fuzz_run.sh (see there for FUZZ_JOBS and fork
# mode): crashes land in fuzz/artifacts/<target>/, new corpus entries in
# fuzz/grown/<target>/, libFuzzer's output in fuzz/logs/, and the summary
# table in fuzz/summary.txt. Only the seeds in fuzz/corpus/<target>/ are
# committed. Turn each crash into a regression test next to the decoder
# it broke.
#
# `build <dir>` is for fuzzing on another x86_64 Linux machine without
# Rust: copy <dir> there and run `bash <dir>/fuzz_run.sh <dir> 3600 16`.
# Binaries are copied with their debug info stripped (symbols kept, so
# crash stacks still name functions); FUZZ_STRIP=0 keeps it.
#
# The decoders hold no unsafe code, so the default sanitizer is none
# (faster to build and run); SANITIZER=address turns AddressSanitizer on.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-600}
FUZZ_JOBS=${FUZZ_JOBS:-1}
SANITIZER=${SANITIZER:-none}
TOOLCHAIN=${TOOLCHAIN:-nightly}
TRIPLE=x86_64-unknown-linux-gnu

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "no $TOOLCHAIN toolchain: rustup toolchain install $TOOLCHAIN --profile minimal" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

build() {
  echo "== building fuzz targets (release, debug assertions, sanitizer $SANITIZER)"
  cargo +"$TOOLCHAIN" fuzz build -O --debug-assertions --sanitizer "$SANITIZER" "$@"
}

mode=${1:-run}
case "$mode" in
list)
  cargo +"$TOOLCHAIN" fuzz list
  ;;
build)
  out=${2:?usage: scripts/fuzz.sh build <dir>}
  build
  mkdir -p "$out/bin" "$out/corpus"
  for t in $(cargo +"$TOOLCHAIN" fuzz list); do
    bin=fuzz/target/$TRIPLE/release/$t
    if [ "${FUZZ_STRIP:-1}" = 1 ]; then
      objcopy --strip-debug "$bin" "$out/bin/$t"
    else
      cp "$bin" "$out/bin/$t"
    fi
    rm -rf "$out/corpus/$t"
    cp -r "fuzz/corpus/$t" "$out/corpus/$t"
  done
  [ -d fuzz/dict ] && cp -r fuzz/dict "$out/"
  cp scripts/fuzz_run.sh "$out/"
  du -sh "$out/bin"/* | sort -k2
  echo "== $out: run it with bash $out/fuzz_run.sh $out <seconds per target> <jobs>"
  ;;
*)
  [ "$mode" = run ] && shift || true
  build
  rm -rf fuzz/run && mkdir -p fuzz/run
  ln -s "../target/$TRIPLE/release" fuzz/run/bin
  ln -s ../corpus fuzz/run/corpus
  [ -d fuzz/dict ] && ln -s ../dict fuzz/run/dict
  targets=("$@")
  [ ${#targets[@]} -eq 0 ] && mapfile -t targets < <(cargo +"$TOOLCHAIN" fuzz list)
  bash scripts/fuzz_run.sh fuzz/run "$FUZZ_SECONDS" "$FUZZ_JOBS" fuzz "${targets[@]}"
  ;;
esac
