#!/usr/bin/env python3
"""What N per-channel models cost onnxruntime itself, outside gsinfer.

Opens N sessions of one ONNX model (one intra-op thread each, all graph
optimisations), then runs batch-1 windows through them round-robin for
--seconds and prints windows/s and ms per window. Comparing N = 1 (the same
weights hot in cache every run) with N = 1000 (every run a different
session's weights) measures what cycling through a thousand models' weights
costs; running two at once (`& ... ; wait`) measures what two cores give.
Used for BENCHMARKS.md's "N per-channel models" section (issue 19).

    python3 tools/ort_sessions_bench.py --sessions 1000 [--model model_repository/lstm_A-2/1/model.onnx]

Needs numpy and onnxruntime.
"""
import argparse
import os
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "model_repository/lstm_A-2/1/model.onnx"))
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = [ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
                for _ in range(args.sessions)]
    inp = sessions[0].get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for s in sessions:
        s.run(None, {inp.name: x})
    start, k = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        sessions[k % len(sessions)].run(None, {inp.name: x})
        k += 1
    dt = time.perf_counter() - start
    print(f"onnxruntime {ort.__version__}: {args.sessions} session(s) round-robin, batch 1, 1 thread: "
          f"{k / dt:.0f} windows/s, {dt / k * 1e3:.3f} ms per window")


if __name__ == "__main__":
    main()
