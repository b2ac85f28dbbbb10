#!/usr/bin/env bash
# Runs every test target. Tests that need the real telemetry read
# GSINFER_DATA_DIR; default it to ../shared/data/telemanom when that exists.
# Extra arguments go to cargo test (e.g. scripts/test.sh --release).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${GSINFER_DATA_DIR:-}" ] && [ -d ../shared/data/telemanom ]; then
  GSINFER_DATA_DIR="$(cd ../shared/data/telemanom && pwd)"
  export GSINFER_DATA_DIR
fi

# The default build (tract only) must compile on its own; the test suite
# then runs on the appliance's build, with the TensorRT engine compiled in
# (on a machine without a GPU it exercises the fallback to tract).
cargo check --lib --bins
exec cargo test --all-targets --features tensorrt "$@"
