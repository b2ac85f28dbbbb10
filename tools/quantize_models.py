#!/usr/bin/env python3
"""Write an int8 copy of a model repository's ONNX models, for onnxruntime.

    python3 tools/quantize_models.py --repo model_repository --family lstm --out /var/lib/gsinfer/repo_int8

For every `<family>_<channel>` model of --repo, writes `--out/<same name>/`
with `1/model.onnx` quantized by onnxruntime's dynamic quantization
(`onnxruntime.quantization.quantize_dynamic`, int8 weights, one scale per
tensor; activations quantized per call from their observed range, so no
calibration data is needed) and the same `config.pbtxt`, with a note and a
`quantization` parameter saying what was done. Names, inputs and outputs are
unchanged: point `[repository] path` at --out and the same configuration
serves the int8 models.

Why: per-channel forecasters cannot be batched across channels (each has its
own weights), so at scale every window runs at batch 1, and on a small CPU
the LSTMs' recurrences are the whole cost (BENCHMARKS.md, "N per-channel
models"). Dynamic int8 runs the shipped LSTM 1.4-1.7x faster at batch 1 on
one core (gsinfer pre-packs the int8 weights, which the quantized kernels
need); its detection on the telemanom channels is measured in EVALUATION.md
(6.: the trusted vote is unchanged).

The quantized graphs use onnxruntime's contrib operators
(`com.microsoft.DynamicQuantizeLSTM`, `MatMulInteger`), so they need
`engine = "onnxruntime"` (or `auto` where onnxruntime's library is found);
tract cannot load them, and a model no engine loads is marked unavailable
while the others are served.
Needs `pip install onnxruntime onnx`.
"""
import argparse
import logging
import hashlib
import os
import re
import shutil
import sys
import tempfile

PER_TENSOR_NOTE = """
# Quantized by tools/quantize_models.py from the fp32 model {source}
# (sha256 {sha}):
# int8 weights, one scale per tensor, activations quantized per call
# (onnxruntime dynamic quantization). Needs engine = "onnxruntime".
parameters {{ key: "quantization" value {{ string_value: "int8 dynamic, per tensor" }} }}
"""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def newest_version(model_dir):
    versions = [int(v) for v in os.listdir(model_dir) if v.isdigit()]
    if not versions:
        return None
    return str(max(versions))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True, help="model repository to read")
    ap.add_argument("--family", required=True,
                    help="comma-separated families to quantize (the name before the first '_')")
    ap.add_argument("--out", required=True, help="repository to write (created; existing models replaced)")
    ap.add_argument("--copy-others", action="store_true",
                    help="also copy the repository's other models unchanged, so --out serves everything")
    args = ap.parse_args()
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        sys.exit("quantize_models.py: needs onnxruntime (pip install onnxruntime onnx)")

    # quantize_dynamic logs a pre-processing hint per model; the shipped
    # graphs are already optimised by the exporter.
    logging.getLogger().setLevel(logging.ERROR)
    families = {f.strip() for f in args.family.split(",") if f.strip()}
    names = sorted(n for n in os.listdir(args.repo) if os.path.isfile(os.path.join(args.repo, n, "config.pbtxt")))
    chosen = [n for n in names if n.split("_", 1)[0] in families]
    if not chosen:
        sys.exit(f"quantize_models.py: no model of family {sorted(families)} in {args.repo}")
    os.makedirs(args.out, exist_ok=True)
    for name in names:
        src = os.path.join(args.repo, name)
        dst = os.path.join(args.out, name)
        if name not in chosen:
            if args.copy_others:
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
            continue
        version = newest_version(src)
        model = os.path.join(src, version or "", "model.onnx")
        if version is None or not os.path.isfile(model):
            print(f"{name}: no <version>/model.onnx, skipped", file=sys.stderr)
            continue
        pbtxt = open(os.path.join(src, "config.pbtxt")).read()
        pbtxt = re.sub(r'(?m)^parameters \{ key: "quantization".*\n', "", pbtxt)
        pbtxt = pbtxt.rstrip("\n") + "\n" + PER_TENSOR_NOTE.format(source=f"{name}/{version}/model.onnx",
                                                                    sha=sha256(model))
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(os.path.join(dst, version))
        # quantize_dynamic writes next to its output; do it in a scratch
        # folder and move the one file, so --out never holds a partial model.
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            out = os.path.join(tmp, "model.onnx")
            quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=False)
            os.replace(out, os.path.join(dst, version, "model.onnx"))
        with open(os.path.join(dst, "config.pbtxt"), "w") as f:
            f.write(pbtxt)
        print(f"{name}: {os.path.getsize(model)} -> {os.path.getsize(os.path.join(dst, version, 'model.onnx'))} bytes")
    print(f"quantized {len(chosen)} model(s) into {args.out}")


if __name__ == "__main__":
    main()
