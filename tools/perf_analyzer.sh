#!/usr/bin/env bash
# Runs Triton's perf_analyzer against a running gsinfer over the KServe v2
# HTTP protocol (or gRPC, with --protocol grpc and the gRPC address as
# --url), at concurrency 1, 2, 4, 8 and 16 on one model, and prints a
# Markdown table of throughput and p50/p99 latency per concurrency (the
# BENCHMARKS.md table). Raw CSVs are kept in $OUT_DIR.
#
#   gsinfer run --config config/gsinfer.example.toml &
#   tools/perf_analyzer.sh [--url 127.0.0.1:8080] [--model smap_lstm] [--token-file FILE] [--batch 1]
#   tools/perf_analyzer.sh --protocol grpc --url 127.0.0.1:8001 [...]
#
# Where perf_analyzer comes from: $PERF_ANALYZER, else `perf_analyzer` on
# PATH, else PyPI. The `perf-analyzer` package on PyPI is only a placeholder
# (0.1.0) for this machine's Python; the binary itself ships inside
# tritonclient 2.41.0's manylinux wheel (tritonclient-2.41.0.data/data/bin/),
# which this script then downloads into a cache folder and unpacks. That
# binary needs libb64 (Debian: libb64-0d) and libcudart.so.12 (PyPI:
# nvidia-cuda-runtime-cu12; no GPU is used), which it installs when missing.
set -euo pipefail

URL=127.0.0.1:8080
PROTOCOL=http
MODEL=smap_lstm
TOKEN_FILE=
BATCH=1
CONCURRENCY="1 2 4 8 16"
OUT_DIR=${OUT_DIR:-target/perf_analyzer}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/gsinfer/perf_analyzer
while [ $# -gt 0 ]; do
  case "$1" in
    --url) URL=$2; shift 2 ;;
    --protocol) PROTOCOL=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --token-file) TOKEN_FILE=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    *) echo "unknown argument $1; see the header of $0" >&2; exit 2 ;;
  esac
done

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=(sudo); fi

find_perf_analyzer() {
  if [ -n "${PERF_ANALYZER:-}" ]; then echo "$PERF_ANALYZER"; return; fi
  if command -v perf_analyzer >/dev/null; then command -v perf_analyzer; return; fi
  local bin="$CACHE/tritonclient-2.41.0.data/data/bin/perf_analyzer"
  if [ ! -x "$bin" ]; then
    mkdir -p "$CACHE"
    echo "perf_analyzer: fetching tritonclient 2.41.0's wheel, which carries the binary" >&2
    python3 -m pip download --quiet --no-deps -d "$CACHE" 'tritonclient==2.41.0' >&2
    python3 - "$CACHE" <<'EOF'
import glob, os, sys, zipfile
cache = sys.argv[1]
wheel = glob.glob(os.path.join(cache, "tritonclient-2.41.0-*.whl"))[0]
member = "tritonclient-2.41.0.data/data/bin/perf_analyzer"
with zipfile.ZipFile(wheel) as z:
    z.extract(member, cache)
os.chmod(os.path.join(cache, member), 0o755)
EOF
  fi
  echo "$bin"
}

PA=$(find_perf_analyzer)
if ldd "$PA" | grep -q 'libb64.*not found'; then
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >&2
fi
if ldd "$PA" | grep -q 'libcudart.*not found'; then
  python3 -c 'import nvidia.cuda_runtime' 2>/dev/null \
    || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet nvidia-cuda-runtime-cu12 >&2
  CUDART=$(python3 -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')
  export LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

HEADER=()
# Lowercase: gRPC metadata keys must be (perf_analyzer sends -H as metadata
# over gRPC); HTTP header names are case-insensitive.
if [ -n "$TOKEN_FILE" ]; then HEADER=(-H "authorization: Bearer $(head -n1 "$TOKEN_FILE")"); fi

mkdir -p "$OUT_DIR"
for c in $CONCURRENCY; do
  echo "perf_analyzer: concurrency $c" >&2
  # perf_analyzer 2.41 was seen not to exit after "Failed to obtain stable
  # measurement" (HTTP, concurrency 16, on a busy 2-core box): a time limit
  # turns that into a failure with its log rather than a hang.
  timeout --kill-after 10 "${PA_TIMEOUT_S:-180}" \
    "$PA" -m "$MODEL" -u "$URL" -i "$PROTOCOL" -b "$BATCH" \
    --concurrency-range "$c:$c" --measurement-interval 4000 \
    --stability-percentage 25 --max-trials 8 \
    "${HEADER[@]}" -f "$OUT_DIR/concurrency_$c.csv" >"$OUT_DIR/concurrency_$c.log" 2>&1 \
    || { cat "$OUT_DIR/concurrency_$c.log" >&2; echo "perf_analyzer failed or ran past ${PA_TIMEOUT_S:-180} s (PA_TIMEOUT_S)" >&2; exit 1; }
done

python3 - "$OUT_DIR" $CONCURRENCY <<'EOF'
import csv, os, sys
out, levels = sys.argv[1], sys.argv[2:]
print("| concurrency | inferences/s | p50 latency ms | p99 latency ms | server queue ms | server compute ms |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
for c in levels:
    with open(os.path.join(out, f"concurrency_{c}.csv")) as f:
        row = next(csv.DictReader(f))
    us = lambda k: float(row[k]) / 1000.0
    compute = us("Server Compute Input") + us("Server Compute Infer") + us("Server Compute Output")
    print(f"| {row['Concurrency']} | {float(row['Inferences/Second']):.1f} | {us('p50 latency'):.1f} | "
          f"{us('p99 latency'):.1f} | {us('Server Queue'):.1f} | {compute:.1f} |")
EOF
