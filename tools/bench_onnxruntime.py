#!/usr/bin/env python3
"""The anchor for `gsinfer bench`: onnxruntime on the same ONNX file, one
thread, same batch sizes, seeded random inputs, 3 warm-up runs, median of at
least 10 runs and at least --seconds. Prints one JSON line per batch size.

    python3 tools/bench_onnxruntime.py model_repository/smap_lstm/1/model.onnx --batch 1 16 64
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dims = [d for d in inp.shape[1:]]
    rng = np.random.default_rng(42)
    for b in args.batch:
        x = rng.uniform(-1, 1, size=[b] + dims).astype(np.float32)
        for _ in range(3):
            sess.run(None, {inp.name: x})
        times, start = [], time.perf_counter()
        while len(times) < 10 or time.perf_counter() - start < args.seconds:
            t = time.perf_counter()
            sess.run(None, {inp.name: x})
            times.append(time.perf_counter() - t)
        med = float(np.median(times))
        print(json.dumps({"engine": f"onnxruntime {ort.__version__}", "batch": b, "threads": args.threads,
                          "iterations": len(times), "ms_per_batch": med * 1e3, "windows_per_s": b / med}))


if __name__ == "__main__":
    main()
