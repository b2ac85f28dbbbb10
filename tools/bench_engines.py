#!/usr/bin/env python3
"""Engine parity: gsinfer's engines beside onnxruntime's own Python API, in one
run, interleaved so that every side sees the same machine load.

For every model family (smap_lstm for the LSTM forecasters, tfm_A-1, vae_A-1),
batch size and round, in that order: `gsinfer bench` on tract, `gsinfer bench`
on onnxruntime, then onnxruntime in this process (the anchor, as
tools/bench_onnxruntime.py measures it). One intra-op thread each, the same
ONNX file, seeded random windows, 3 warm-up batches, median batch time over at
least 10 batches and --seconds. The figure kept per (model, batch, engine) is
the median over the rounds; the spread over rounds is kept too.

    ORT_DYLIB_PATH=... python3 tools/bench_engines.py --out bench-results/engines.json

Needs a release build (target/release/gsinfer) and the onnxruntime wheel.
"""
import argparse
import glob
import json
import os
import platform
import subprocess
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [("smap_lstm", "config/gsinfer.example.toml"), ("tfm_A-1", "config/smap_tfm.toml"),
          ("vae_A-1", "config/smap_vae.toml")]


def ort_library():
    lib = os.environ.get("ORT_DYLIB_PATH")
    if lib:
        return lib
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    return sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))[0]


def gsinfer_bench(binary, config, model, batch, engine, seconds, lib):
    env = dict(os.environ, ORT_DYLIB_PATH=lib)
    out = subprocess.run([binary, "bench", "--config", config, "--model", model, "--batch", str(batch),
                          "--engine", engine, "--threads", "1", "--seconds", str(seconds), "--json"],
                         check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def python_ort(sess, batch, seconds):
    inp = sess.get_inputs()[0]
    dims = list(inp.shape[1:])
    x = np.random.default_rng(42).uniform(-1, 1, size=[batch] + dims).astype(np.float32)
    for _ in range(3):
        sess.run(None, {inp.name: x})
    times, start = [], time.perf_counter()
    while len(times) < 10 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {"engine": "onnxruntime-python", "engine_detail": f"onnxruntime {ort.__version__} (Python)",
            "batch": batch, "iterations": len(times), "ms_per_batch": med * 1e3, "windows_per_s": batch / med}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/gsinfer"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--models", nargs="+", default=[m for m, _ in MODELS])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results/engines.json"))
    ap.add_argument("--cpu", type=int, default=None,
                    help="pin this process and every gsinfer bench it starts to this one CPU, so that all three "
                         "engines run on the same core (a virtual machine's cores differ in speed and neighbours)")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    lib = ort_library()
    configs = dict(MODELS)
    runs = []
    for model in args.models:
        config = configs[model]
        path = os.path.join(ROOT, "model_repository", model, "1", "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        for batch in args.batch:
            for rnd in range(args.rounds):
                for engine in ("tract", "onnxruntime", "onnxruntime-python"):
                    if engine == "onnxruntime-python":
                        r = python_ort(sess, batch, args.seconds)
                    else:
                        r = gsinfer_bench(args.binary, config, model, batch, engine, args.seconds, lib)
                    r.update(model=model, round=rnd)
                    runs.append(r)
                    print(json.dumps({k: r[k] for k in ("model", "batch", "round", "engine", "windows_per_s")}),
                          flush=True)
    summary = {}
    for r in runs:
        key = f"{r['model']}|{r['batch']}|{r['engine']}"
        summary.setdefault(key, []).append(r["windows_per_s"])
    table = []
    for key, xs in summary.items():
        model, batch, engine = key.split("|")
        table.append({"model": model, "batch": int(batch), "engine": engine,
                      "windows_per_s": float(np.median(xs)), "min": min(xs), "max": max(xs), "rounds": len(xs)})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "host": platform.node(),
            "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
            "cores": os.cpu_count(), "pinned_cpu": args.cpu, "onnxruntime_python": ort.__version__, "library": lib,
            "loadavg_end": os.getloadavg()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "table": table, "runs": runs}, f, indent=1)
    print(f"{'model':10} {'batch':>5} {'tract':>9} {'ort(gsinfer)':>12} {'ort(python)':>11} {'best/python':>11}")
    by = {(t["model"], t["batch"], t["engine"]): t["windows_per_s"] for t in table}
    for model in args.models:
        for b in args.batch:
            tr, og, op = (by[(model, b, e)] for e in ("tract", "onnxruntime", "onnxruntime-python"))
            print(f"{model:10} {b:>5} {tr:9.0f} {og:12.0f} {op:11.0f} {max(tr, og) / op:10.2f}x")


if __name__ == "__main__":
    main()
