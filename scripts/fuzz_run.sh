#!/usr/bin/env bash
# Runs built fuzz targets for a fixed time each, with no Rust toolchain:
# plain bash and the libFuzzer binaries that `scripts/fuzz.sh build <dir>`
# put in <dir>. Copy that folder to an x86_64 Linux machine (glibc 2.34
# or newer and libstdc++6, as on Debian 12 or Ubuntu 22.04; the binaries
# are about 50 MB each, `tar czf` shrinks the folder about fourfold) and run
#
#   bash fuzz_run.sh <dir> <seconds> <jobs> [<out>] [target...]
#
# <seconds> is per target; <jobs> processes run at once. With fewer jobs
# than targets, targets run <jobs> at a time, one process each, and a
# target stops at its first crash (libFuzzer's default). With at least as
# many jobs as targets, every target runs at once, and each gets
# jobs/targets workers in libFuzzer's fork mode (-fork), which keeps going
# after crashes. <out> (default <dir>/out) receives:
#
#   artifacts/<target>/   crash-*, timeout-*, oom-* inputs (-artifact_prefix)
#   grown/<target>/       corpus entries found by this run (seeds stay as they are)
#   logs/<target>.log     libFuzzer's output
#   summary.txt, summary.tsv   target, runs, seconds, execs/s, corpus, crashes
#
# Exits 1 when any target crashed, timed out or ran out of memory, else 0.
# Each crash input becomes a regression test next to the decoder it broke;
# reproduce one with `<dir>/bin/<target> <crash file>`.
set -uo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,/^set /p' "$0" | sed 's/^# \{0,1\}//; /^set /d' >&2
  exit 2
fi
dir=$(cd "$1" && pwd)
seconds=$2
jobs=$3
shift 3
out=${1:-$dir/out}
[ $# -gt 0 ] && shift
mkdir -p "$out"
out=$(cd "$out" && pwd)

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for d in "$dir"/corpus/*/; do
    t=$(basename "$d")
    [ -x "$dir/bin/$t" ] && targets+=("$t")
  done
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "no targets in $dir (expected bin/<target> and corpus/<target>/)" >&2
  exit 2
fi
for t in "${targets[@]}"; do
  [ -x "$dir/bin/$t" ] || { echo "no fuzz target $dir/bin/$t" >&2; exit 2; }
done

fork=0
if [ "$jobs" -ge "${#targets[@]}" ]; then
  fork=$((jobs / ${#targets[@]}))
  [ "$fork" -lt 2 ] && fork=0
  parallel=${#targets[@]}
else
  parallel=$jobs
fi
# The config target writes its input to a file: keep that in memory.
tmp_base=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && tmp_base=/dev/shm
tmp=$(mktemp -d "$tmp_base/gsinfer-fuzz.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

run_one() {
  local t=$1
  mkdir -p "$out/artifacts/$t" "$out/grown/$t" "$out/logs" "$tmp/$t"
  local flags=(
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048
    -artifact_prefix="$out/artifacts/$t/" -print_final_stats=1
  )
  [ -f "$dir/dict/$t.dict" ] && flags+=(-dict="$dir/dict/$t.dict")
  if [ "$fork" -gt 0 ]; then
    flags+=(-fork="$fork" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  fi
  local start end
  start=$(date +%s)
  TMPDIR="$tmp/$t" "$dir/bin/$t" "${flags[@]}" "$out/grown/$t" "$dir/corpus/$t" \
    >"$out/logs/$t.log" 2>&1
  local rc=$?
  end=$(date +%s)
  echo "$rc $((end - start))" >"$out/logs/$t.status"
}

echo "fuzzing ${#targets[@]} targets for ${seconds}s each, $parallel at a time$([ "$fork" -gt 0 ] && echo ", $fork fork workers each") -> $out"
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$parallel" ]; then
    wait -n
    running=$((running - 1))
  fi
  echo "  start $t"
  run_one "$t" &
  running=$((running + 1))
done
wait

# runs: libFuzzer's final stat, or the last "#N" status line (fork mode).
stat() { grep -o "$2: *[0-9.]*" "$1" | tail -1 | grep -o '[0-9.]*$'; }
failed=0
{
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' target runs seconds execs/s corpus crashes exit
  for t in "${targets[@]}"; do
    log=$out/logs/$t.log
    read -r rc secs <"$out/logs/$t.status"
    runs=$(stat "$log" stat::number_of_executed_units)
    [ -z "$runs" ] && runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    runs=${runs:-0}
    corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    crashes=$(find "$out/artifacts/$t" -type f | wc -l)
    { [ "$crashes" -gt 0 ] || [ "$rc" -ne 0 ]; } && failed=1
    rate=$((secs > 0 ? runs / secs : runs))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$runs" "$secs" "$rate" "${corpus:-?}" "$crashes" "$rc"
  done
} >"$out/summary.tsv"
if command -v column >/dev/null; then
  column -t -s $'\t' "$out/summary.tsv" >"$out/summary.txt"
else
  tr '\t' ' ' <"$out/summary.tsv" >"$out/summary.txt"
fi
cat "$out/summary.txt"
if [ "$failed" -ne 0 ]; then
  echo "crashes or failures: see $out/artifacts/ and $out/logs/" >&2
  exit 1
fi
