#!/usr/bin/env bash
# Every CPU figure of BENCHMARKS.md in one command: builds the release binary
# and the load generator, then measures
#   1. engine parity: gsinfer's engines beside onnxruntime's Python API,
#      interleaved, every family and bucket (tools/bench_engines.py);
#   2. batcher overhead per window (criterion, benches/batcher.rs);
#   3. end-to-end latency under Poisson and bursty load against a Mosquitto
#      it starts itself, beside the broker's floor, gsinfer's policy and the
#      Triton-style one, RSS (tools/e2e_bench.py, examples/loadgen.rs);
# and draws the plots into docs/benchmarks/ and the tables into
# bench-results/tables.md (tools/plot_bench.py). Raw results go to
# bench-results/ (git-ignored). About 35 minutes on 2 cores.
#
# The GPU reference is measured on a GPU machine with
#   python3 tools/gpu_reference.py --onnx lstm=... tfm=... vae=... --out docs/benchmarks/gpu_reference.json
# and only plotted here.
#
# Needs: cargo, mosquitto, python3 with numpy, onnxruntime, matplotlib (installed
# here when missing), the telemanom data set (GSINFER_DATA_DIR, default
# ../shared/data/telemanom). QUICK=1 runs a shorter version (for a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${GSINFER_DATA_DIR:-../shared/data/telemanom}"
for pkg in numpy onnxruntime matplotlib; do
  python3 -c "import $pkg" 2>/dev/null || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet "$pkg"
done
ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(python3 -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])')}"
export ORT_DYLIB_PATH GSINFER_DATA_DIR="$DATA"
echo "onnxruntime library: $ORT_DYLIB_PATH"

cargo build --release --bin gsinfer --example loadgen
mkdir -p bench-results docs/benchmarks

if [ "${QUICK:-0}" = 1 ]; then
  ENGINE_ARGS=(--rounds 1 --seconds 0.3 --batch 1 64)
  E2E_ARGS=(--seconds 5 --loads 0.8 1.2)
  CRITERION=(--warm-up-time 1 --measurement-time 2)
else
  ENGINE_ARGS=(--rounds 5 --seconds 1.0)
  E2E_ARGS=(--seconds 20)
  CRITERION=()
fi

# On a box with 10 or more cores, pin: the parity run to one core, and gsinfer,
# the broker and the load generator to cores of their own (BENCHMARKS.md says why).
PIN_ENGINES=() PIN_E2E=()
if [ "$(nproc)" -ge 10 ]; then
  PIN_ENGINES=(--cpu 3)
  PIN_E2E=(--pin gsinfer=2-5,broker=6,loadgen=7-9)
fi

python3 tools/bench_engines.py "${ENGINE_ARGS[@]}" "${PIN_ENGINES[@]}" --out bench-results/engines.json

cargo bench --bench batcher -- "${CRITERION[@]}"
# The engines' criterion bench (in-process, buckets 1 and 64) only on request:
# the parity table above already has the same engines side by side.
if [ "${ENGINES_CRITERION:-0}" = 1 ]; then
  GSINFER_BENCH_BUCKETS=1,64 cargo bench --bench engines -- "${CRITERION[@]}"
fi
python3 - <<'EOF'
import glob, json, os, time
out = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "per_window_ns": {}}
for est in glob.glob("target/criterion/batcher/**/new/estimates.json", recursive=True):
    bench = json.load(open(os.path.join(os.path.dirname(est), "benchmark.json")))
    per = bench["throughput"]["Elements"]
    name = bench["full_id"].removeprefix("batcher/")
    out["per_window_ns"][name] = json.load(open(est))["median"]["point_estimate"] / per
json.dump(out, open("bench-results/batcher.json", "w"), indent=1)
print(json.dumps(out))
EOF

python3 tools/e2e_bench.py --data-dir "$DATA" "${E2E_ARGS[@]}" "${PIN_E2E[@]}" --out bench-results/e2e.json

python3 tools/plot_bench.py
