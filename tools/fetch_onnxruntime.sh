#!/usr/bin/env bash
# Puts ONNX Runtime's CPU library where gsinfer looks for a bundled one:
# DEST (default: <repo>/target/lib/gsinfer, i.e. <target/release/gsinfer>/../lib/gsinfer)
# gets libonnxruntime.so.<version> from the onnxruntime wheel on PyPI, with
# the wheel's LICENSE (MIT) and ThirdPartyNotices beside it. Nothing is
# installed into Python: the wheel is downloaded (pip download, allowed on
# Debian's externally managed Python) and only the library is unpacked.
#
#   tools/fetch_onnxruntime.sh [DEST] [VERSION]     # VERSION default: 1.22.1
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-target/lib/gsinfer}
VERSION=${2:-${ORT_VERSION:-1.22.1}}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/gsinfer/onnxruntime-$VERSION

if ls "$DEST"/libonnxruntime.so.* >/dev/null 2>&1; then
  echo "onnxruntime: $(ls "$DEST"/libonnxruntime.so.* | head -1) is there already"
  exit 0
fi
mkdir -p "$CACHE" "$DEST"
if ! ls "$CACHE"/onnxruntime-*.whl >/dev/null 2>&1; then
  echo "onnxruntime: downloading the $VERSION wheel (CPU) from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE" "onnxruntime==$VERSION"
fi
python3 - "$CACHE" "$DEST" <<'PY'
import glob, os, shutil, sys, zipfile
cache, dest = sys.argv[1], sys.argv[2]
wheel = sorted(glob.glob(os.path.join(cache, "onnxruntime-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    libs = [n for n in names if os.path.basename(n).startswith("libonnxruntime.so")
            and "/capi/" in n and "providers" not in n]
    notices = [n for n in names if os.path.basename(n) in ("LICENSE", "ThirdPartyNotices.txt")]
    if not libs:
        sys.exit(f"no libonnxruntime.so in {wheel}")
    for n in libs + notices:
        target = os.path.join(dest, os.path.basename(n))
        with z.open(n) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        print("onnxruntime:", target)
PY
