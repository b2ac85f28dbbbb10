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

# The suite runs on the appliance's build, with the TensorRT engine compiled
# in (on a machine without a GPU it exercises the fallback to tract). The
# default build (tract only) is `cargo check --lib --bins`: quick locally,
# left out here to keep CI short.
# Formatting first (seconds), then lint: the TensorRT code is compiled
# (never run) here, so clippy is part of what CI checks of it.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "rustfmt is not installed: format check skipped (rustup component add rustfmt)" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --all-targets --features tensorrt -- -D warnings
else
  echo "cargo clippy is not installed: lint skipped (rustup component add clippy)" >&2
fi
exec cargo test --all-targets --features tensorrt "$@"
