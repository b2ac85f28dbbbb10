#!/usr/bin/env bash
# Builds the Debian package target/debian/gsinfer_<version>-1_amd64.deb with
# cargo-deb (installed with `cargo install cargo-deb` when missing) and runs
# lintian on it when lintian is installed. Extra arguments go to cargo deb.
# The binary has the `tensorrt` feature (libclang-dev and clang to build;
# TensorRT itself is opened at run time, and without it models run on tract).
# The package carries ONNX Runtime's CPU library from the onnxruntime wheel
# (tools/fetch_onnxruntime.sh, needs pip and PyPI) in /usr/lib/gsinfer, with
# its MIT licence in /usr/share/doc/gsinfer/onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
cargo build --release --locked --features tensorrt
# ONNX Runtime's CPU library and its licence, packaged in /usr/lib/gsinfer.
tools/fetch_onnxruntime.sh target/lib/gsinfer
deb=$(cargo deb --no-build --locked "$@" | grep "\.deb$" | tail -n1)
echo "built $deb"
if command -v lintian >/dev/null; then
  lintian --info --display-info --fail-on error,warning "$deb"
fi
