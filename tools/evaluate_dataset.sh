#!/usr/bin/env bash
# Train per-channel models on a telemanom-layout data set and evaluate them with gsinfer.
#
#   tools/evaluate_dataset.sh DATA_DIR [OUT_DIR]
#
# For every channel under DATA_DIR/train/<chan>.npy (any number of features
# per channel: SMAP's 25 and MSL's 55 mix in one run) this trains one model
# per family (tools/train_models.py: lstm, vae, tfm; FAMILIES=lstm for one)
# into OUT_DIR/model_repository, adds the naive baselines (tools/make_baselines.py:
# persist, zscore), writes one gsinfer configuration per family
# (tools/make_config.py) as OUT_DIR/<family>.toml, and runs
#
#   gsinfer eval --config OUT_DIR/<family>.toml --data-dir DATA_DIR --all --metrics
#
# over DATA_DIR/test/ (labels from DATA_DIR/labeled_anomalies.csv), so channels
# nobody has seen are trained and evaluated exactly like the shared ones. The
# report gives event-level precision, recall, F1 and F0.5 per spacecraft and
# false alarms per day. Results: OUT_DIR/training_report.json,
# OUT_DIR/<family>.eval.txt, and OUT_DIR/<family>.eval.jsonl (the same run as
# JSON lines, the input of tools/fuse_events.py). Then the reference detector:
# OUT_DIR/vote.toml, a trusted 2-of-n vote of the families and the persistence
# baseline (VOTE), each member's alarms on its channel's train split recorded by
# tools/nominal_alarms.py, evaluated with --ensemble vote (OUT_DIR/vote.eval.txt).
#
# NEEDS, where it runs: python3 with torch, numpy, onnx and onnxruntime
# (`pip install torch numpy onnx onnxruntime`); a GPU is used when torch sees one
# (one H200: about 2 minutes for 40 channels x 3 families); on a CPU it works
# but is slow (the LSTM family dominates). gsinfer itself: $GSINFER_BIN, else
# target/release/gsinfer, built with `cargo build --release` when missing.
#
# Environment:
#   FAMILIES=lstm,vae,tfm   families to train and evaluate
#   BASELINES=persist,zscore  baselines to write and evaluate: persist, zscore, nn
#                           (tools/make_baselines.py; empty: none)
#   VOTE=lstm,vae,tfm,persist  members of the reference vote (empty: none)
#   THRESHOLD=ndt           threshold method in the configurations: ndt, pot or static
#   EPOCHS=                 most epochs per model (default: lstm 35, tfm 35, vae 100,
#                           as the shipped models were trained)
#   JOBS=                   training worker processes (default: min(8, CPUs))
#   EVAL_JOBS=              channels gsinfer evaluates in parallel (default: CPUs)
#   SKIP_TRAINING=1         reuse OUT_DIR/model_repository as it is
# Default OUT_DIR: artifacts/eval-<name of DATA_DIR>.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="$(cd "$1" && pwd)"
OUT_DIR="${2:-$ROOT/artifacts/eval-$(basename "$DATA_DIR")}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
FAMILIES="${FAMILIES:-lstm,vae,tfm}"
BASELINES="${BASELINES-persist,zscore}"
THRESHOLD="${THRESHOLD:-ndt}"
VOTE="${VOTE-lstm,vae,tfm,persist}"

[[ -d "$DATA_DIR/train" ]] || { echo "error: no $DATA_DIR/train (telemanom layout: train/<chan>.npy, test/<chan>.npy)" >&2; exit 2; }
[[ -d "$DATA_DIR/test" ]] || { echo "error: no $DATA_DIR/test to evaluate on" >&2; exit 2; }
if [[ "${SKIP_TRAINING:-0}" != 1 ]]; then
  python3 -c 'import torch, numpy, onnx, onnxruntime' 2>/dev/null || {
    echo "error: training needs python3 with torch, numpy, onnx and onnxruntime (pip install torch numpy onnx onnxruntime)" >&2; exit 2; }
fi

cd "$ROOT"
BIN="${GSINFER_BIN:-$ROOT/target/release/gsinfer}"
if [[ ! -x "$BIN" ]]; then
  echo "== building gsinfer (cargo build --release)"
  cargo build --release
  BIN="$ROOT/target/release/gsinfer"
fi

if [[ "${SKIP_TRAINING:-0}" != 1 ]]; then
  echo "== training $FAMILIES on $DATA_DIR/train into $OUT_DIR/model_repository"
  PYTHONUNBUFFERED=1 python3 tools/train_models.py --data-dir "$DATA_DIR" --out "$OUT_DIR/model_repository" \
    --families "$FAMILIES" --report "$OUT_DIR/training_report.json" \
    ${EPOCHS:+--epochs "$EPOCHS"} ${JOBS:+--jobs "$JOBS"} 2>&1 | tee "$OUT_DIR/training.log"
fi

if [[ -n "$BASELINES" ]]; then
  echo "== baselines $BASELINES into $OUT_DIR/model_repository"
  python3 tools/make_baselines.py --data-dir "$DATA_DIR" --out "$OUT_DIR/model_repository" --families "$BASELINES"
fi

status=0
for fam in ${FAMILIES//,/ } ${BASELINES//,/ }; do
  python3 tools/make_config.py --repo "$OUT_DIR/model_repository" --family "$fam" --threshold "$THRESHOLD" \
    --out "$OUT_DIR/$fam.toml" --repository-path model_repository --data-dir "$DATA_DIR"
  echo "== gsinfer eval $fam ($OUT_DIR/$fam.eval.txt)"
  if ! "$BIN" eval --config "$OUT_DIR/$fam.toml" --data-dir "$DATA_DIR" --all --metrics \
      ${EVAL_JOBS:+--jobs "$EVAL_JOBS"} > "$OUT_DIR/$fam.eval.txt"; then
    echo "error: gsinfer eval failed for $fam" >&2
    status=1
  fi
  "$BIN" eval --config "$OUT_DIR/$fam.toml" --data-dir "$DATA_DIR" --all --metrics --json \
      ${EVAL_JOBS:+--jobs "$EVAL_JOBS"} > "$OUT_DIR/$fam.eval.jsonl" || status=1
  grep -E '^(skipped|SMAP|MSL|all):' "$OUT_DIR/$fam.eval.txt" || tail -n 1 "$OUT_DIR/$fam.eval.txt"
done
if [[ -n "$VOTE" ]]; then
  echo "== reference vote of $VOTE ($OUT_DIR/vote.eval.txt)"
  python3 tools/make_config.py --repo "$OUT_DIR/model_repository" --family "$VOTE" --threshold "$THRESHOLD" \
    --ensemble-votes 2 --trusted-only --out "$OUT_DIR/vote.toml" --repository-path model_repository --data-dir "$DATA_DIR"
  python3 tools/nominal_alarms.py --config "$OUT_DIR/vote.toml" --ensemble vote --data-dir "$DATA_DIR" --gsinfer "$BIN"
  if "$BIN" eval --config "$OUT_DIR/vote.toml" --data-dir "$DATA_DIR" --all --metrics --ensemble vote \
      ${EVAL_JOBS:+--jobs "$EVAL_JOBS"} > "$OUT_DIR/vote.eval.txt"; then
    grep -E '^(skipped|SMAP|MSL|all):' "$OUT_DIR/vote.eval.txt" || tail -n 1 "$OUT_DIR/vote.eval.txt"
  else
    echo "error: gsinfer eval failed for the vote" >&2
    status=1
  fi
fi
exit $status
