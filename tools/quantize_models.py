#!/usr/bin/env python3
"""Write an int8 copy of a model repository's ONNX models, for onnxruntime.

    python3 tools/quantize_models.py --repo model_repository --family lstm \\
        --out /var/lib/gsinfer/repo_int8 --data-dir ../shared/data/telemanom --copy-others

For every `<family>_<channel>` model of --repo, writes `--out/<same name>/`
with `<version>/model.onnx` quantized by onnxruntime's dynamic quantization
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

The fidelity guard (--data-dir): int8 adds a forecast noise of about 0.01 in
scaled units, which is more than the whole forecast error of a channel that
is forecast almost perfectly. With --data-dir, each model is run fp32 and
int8, at batch 1 as the service runs it at scale, on up to 128 windows of
the last 20 % of its channel's *train* split (the models' validation
windows; no test data is read), and the model stays fp32 (copied unchanged,
with a note saying why) when int8 moves its outputs by more than
--max-shift (default 0.25) times the fp32 model's own mean absolute error
there: the forecast error of feature 0 for a forecaster (output [H]), the
reconstruction error of feature 0 for an autoencoder (output = input shape).

The quantized graphs use onnxruntime's contrib operators
(`com.microsoft.DynamicQuantizeLSTM`, `MatMulInteger`), so they need
`engine = "onnxruntime"` (or `auto` where onnxruntime's library is found);
tract cannot load them, and a model no engine loads is marked unavailable
while the others are served. Needs `pip install onnxruntime onnx numpy`.
"""
import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile

QUANTIZED_NOTE = """
# Quantized by tools/quantize_models.py from the fp32 model {source}
# (sha256 {sha}):
# int8 weights, one scale per tensor, activations quantized per call
# (onnxruntime dynamic quantization). Needs engine = "onnxruntime".{check}
parameters {{ key: "quantization" value {{ string_value: "int8 dynamic, per tensor" }} }}
"""

KEPT_NOTE = """
# Kept fp32 by tools/quantize_models.py: on the last 20 % of its train split,
# int8 moved its outputs by {shift:.4f} on average, more than {limit} times the
# fp32 model's own error there ({error:.4f}).
parameters {{ key: "quantization" value {{ string_value: "none (int8 shift {shift:.4f} > {limit} x error {error:.4f})" }} }}
"""

WINDOWS = 128


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


def fidelity(fp32_path, int8_path, series):
    """(mean |int8 - fp32| of the outputs, mean |fp32 - truth| of feature 0)
    over up to WINDOWS windows of the last 20 % of `series` ([T, F]), each
    run alone (batch 1); None when the series is too short for one window."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    a = ort.InferenceSession(fp32_path, options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(int8_path, options, providers=["CPUExecutionProvider"])
    inp = a.get_inputs()[0]
    length = inp.shape[1]
    out_shape = a.get_outputs()[0].shape[1:]
    reconstruction = list(out_shape) == list(inp.shape[1:])
    horizon = 0 if reconstruction else int(np.prod(out_shape))
    last = len(series) - length - horizon
    if last < 0:
        return None
    first = min(int(len(series) * 0.8), last)
    starts = np.unique(np.linspace(first, last, WINDOWS).astype(int))
    shifts, errors = [], []
    for s in starts:
        window = series[None, s:s + length].astype(np.float32)
        ya = a.run(None, {inp.name: window})[0][0]
        yb = b.run(None, {inp.name: window})[0][0]
        shifts.append(np.abs(yb - ya).mean())
        if reconstruction:
            errors.append(np.abs(ya[:, 0] - window[0, :, 0]).mean())
        else:
            errors.append(np.abs(ya.reshape(-1) - series[s + length:s + length + horizon, 0]).mean())
    return float(np.mean(shifts)), float(np.mean(errors))


def channel_of(name):
    return name.split("_", 1)[1] if "_" in name else name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True, help="model repository to read")
    ap.add_argument("--family", required=True,
                    help="comma-separated families to quantize (the name before the first '_')")
    ap.add_argument("--out", required=True, help="repository to write (created; existing models replaced)")
    ap.add_argument("--copy-others", action="store_true",
                    help="also copy the repository's other models unchanged, so --out serves everything")
    ap.add_argument("--data-dir", default=None,
                    help="telemanom-layout data set: keep fp32 where int8 moves the outputs too much "
                         "on the channel's train split (recommended)")
    ap.add_argument("--max-shift", type=float, default=0.25,
                    help="with --data-dir: the largest int8 shift accepted, as a fraction of the fp32 error")
    ap.add_argument("--only", default=None, help="only these models (comma-separated names)")
    args = ap.parse_args()
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        sys.exit("quantize_models.py: needs onnxruntime (pip install onnxruntime onnx numpy)")
    # quantize_dynamic logs a pre-processing hint per model; the shipped
    # graphs are already optimised by the exporter.
    logging.getLogger().setLevel(logging.ERROR)

    families = {f.strip() for f in args.family.split(",") if f.strip()}
    only = {m.strip() for m in args.only.split(",")} if args.only else None
    names = sorted(n for n in os.listdir(args.repo) if os.path.isfile(os.path.join(args.repo, n, "config.pbtxt")))
    if only:
        names = [n for n in names if n in only]
    chosen = [n for n in names if n.split("_", 1)[0] in families]
    if not chosen:
        sys.exit(f"quantize_models.py: no model of family {sorted(families)} in {args.repo}")
    if args.data_dir is None:
        print("no --data-dir: every model is quantized without the fidelity check", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    quantized = kept = 0
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
        pbtxt = re.sub(r'(?m)^parameters \{ key: "quantization".*\n', "", pbtxt).rstrip("\n") + "\n"
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(os.path.join(dst, version))
        # quantize_dynamic writes next to its output; do it in a scratch
        # folder and move the one file, so --out never holds a partial model.
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            out = os.path.join(tmp, "model.onnx")
            quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=False)
            check = ""
            if args.data_dir is not None:
                import numpy as np
                train = os.path.join(args.data_dir, "train", channel_of(name) + ".npy")
                measured = fidelity(model, out, np.load(train)) if os.path.isfile(train) else None
                if measured is None:
                    print(f"{name}: no usable {train}: quantized without the fidelity check", file=sys.stderr)
                else:
                    shift, error = measured
                    if shift > args.max_shift * error:
                        shutil.copyfile(model, os.path.join(dst, version, "model.onnx"))
                        with open(os.path.join(dst, "config.pbtxt"), "w") as f:
                            f.write(pbtxt + KEPT_NOTE.format(shift=shift, limit=args.max_shift, error=error))
                        print(f"{name}: kept fp32 (int8 shift {shift:.4f} > {args.max_shift} x error {error:.4f})")
                        kept += 1
                        continue
                    check = (f"\n# On the last 20 % of its train split int8 moved the outputs by"
                             f" {shift:.4f}, the fp32 error there is {error:.4f}.")
            os.replace(out, os.path.join(dst, version, "model.onnx"))
        with open(os.path.join(dst, "config.pbtxt"), "w") as f:
            f.write(pbtxt + QUANTIZED_NOTE.format(source=f"{name}/{version}/model.onnx", sha=sha256(model), check=check))
        size = os.path.getsize(os.path.join(dst, version, "model.onnx"))
        print(f"{name}: int8, {os.path.getsize(model)} -> {size} bytes")
        quantized += 1
    print(f"{quantized} model(s) quantized, {kept} kept fp32, into {args.out}")


if __name__ == "__main__":
    main()
