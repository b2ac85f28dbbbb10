#!/usr/bin/env python3
"""GPU reference for the shipped model families: PyTorch eager and CUDA-graph
runs at the batch buckets 1..64, the figures a TensorRT engine must beat.

The PyTorch modules are rebuilt from tools/train_models.py's definitions and
loaded with the weights of the shipped ONNX files (so the numbers are for
the models gsinfer serves, not look-alikes); each family's output is checked
against onnxruntime on the CPU before it is timed. FP32 throughout, TF32 off
(the precision tract and onnxruntime run at). Three timings per bucket, each
the median of --iters runs after --warmup:

  eager        one forward pass, device only (CUDA events around it)
  graph        one replay of a CUDA graph captured for the bucket, device only
  graph_copy   pinned host -> device copy, replay, device -> host copy,
               synchronize: what an engine thread would wait (host clock)

    python3 tools/gpu_reference.py --onnx lstm=model_repository/smap_lstm/1/model.onnx \\
        tfm=model_repository/tfm_A-1/1/model.onnx vae=model_repository/vae_A-1/1/model.onnx

Prints a table and one JSON line per (family, bucket); --out writes them all.
"""
import argparse
import json
import os
import platform
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WINDOW = {"lstm": 250, "tfm": 64, "vae": 50}
FEATURES = 25


def onnx_initializers(path):
    import onnx
    from onnx import numpy_helper
    g = onnx.load(path).graph
    return {i.name: numpy_helper.to_array(i) for i in g.initializer}, g


def lstm_gates_to_torch(a):
    """ONNX LSTM gate blocks (i, o, f, c) along axis 0 -> PyTorch's (i, f, g, o)."""
    i, o, f, c = np.split(a, 4, axis=0)
    return np.concatenate([i, f, c, o], axis=0)


def state_dict_from_onnx(family, path):
    """The shipped ONNX file's weights under the PyTorch module's names."""
    w, g = onnx_initializers(path)
    sd = {}
    if family == "vae":
        for k, v in w.items():
            if k.startswith("vae."):
                sd[k[len("vae."):]] = v
        return sd
    if family == "lstm":
        lstm_nodes = [n for n in g.node if n.op_type == "LSTM"]
        assert len(lstm_nodes) == 2, "expected two LSTM layers"
        for layer, node in zip(("lstm1", "lstm2"), lstm_nodes):
            W, R, B = (w[name] for name in node.input[1:4])
            hidden = R.shape[-1]
            sd[f"{layer}.weight_ih_l0"] = lstm_gates_to_torch(W[0])
            sd[f"{layer}.weight_hh_l0"] = lstm_gates_to_torch(R[0])
            sd[f"{layer}.bias_ih_l0"] = lstm_gates_to_torch(B[0][: 4 * hidden])
            sd[f"{layer}.bias_hh_l0"] = lstm_gates_to_torch(B[0][4 * hidden:])
        sd["head.weight"], sd["head.bias"] = w["head.weight"], w["head.bias"]
        return sd
    if family == "tfm":
        sd.update({k: v for k, v in w.items() if not k.startswith("onnx::")})
        # Weights the exporter moved into MatMul initializers (transposed), in graph order.
        matmuls = []
        for n in g.node:
            if n.op_type == "MatMul":
                for name in n.input:
                    if name in w and name.startswith("onnx::") and name not in matmuls:
                        matmuls.append(name)
        targets = ["inp.weight"]
        for layer in range(2):
            p = f"encoder.layers.{layer}."
            targets += [p + "self_attn.in_proj_weight", p + "linear1.weight", p + "linear2.weight"]
        assert len(matmuls) == len(targets), (matmuls, targets)
        for name, target in zip(matmuls, targets):
            sd[target] = w[name].T
        return sd
    raise ValueError(family)


def build(family):
    import torch
    from train_models import build_model
    model = build_model(family, types.SimpleNamespace(vae_hidden=64, vae_latent=16))
    if family == "vae":
        class Reconstruct(torch.nn.Module):
            def __init__(self, vae):
                super().__init__()
                self.vae = vae

            def forward(self, window):
                return self.vae.reconstruct(window)
        return model, Reconstruct(model)
    return model, model


def median_ms(xs):
    return float(np.median(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", nargs="+", required=True, help="family=path, family in lstm, tfm, vae")
    ap.add_argument("--buckets", default="1,2,4,8,16,32,64")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch
    import onnxruntime as ort
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "onnxruntime": ort.__version__,
            "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(json.dumps({"info": info}), flush=True)
    buckets = [int(b) for b in args.buckets.split(",")]
    rows = []
    for spec in args.onnx:
        family, path = spec.split("=", 1)
        holder, model = build(family)
        missing, unexpected = holder.load_state_dict(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict_from_onnx(family, path).items()},
            strict=False)
        missing = [m for m in missing if not m.startswith("logvar")]
        model = model.eval().to(dev)
        # Correctness first: the same windows through onnxruntime (CPU) and PyTorch (GPU).
        rng = np.random.default_rng(7)
        x = rng.uniform(-1, 1, size=(8, WINDOW[family], FEATURES)).astype(np.float32)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        with torch.inference_mode():
            got = model(torch.from_numpy(x).to(dev)).float().cpu().numpy()
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        print(json.dumps({"family": family, "onnx": path, "missing": missing, "unexpected": unexpected,
                          "rel_err_vs_onnxruntime": rel}), flush=True)
        for b in buckets:
            row = {"family": family, "bucket": b, "rel_err_vs_onnxruntime": rel}
            xs = torch.randn(b, WINDOW[family], FEATURES, device=dev)
            host_in = torch.randn(b, WINDOW[family], FEATURES).pin_memory()
            with torch.inference_mode():
                for _ in range(args.warmup):
                    model(xs)
                torch.cuda.synchronize()
                times = []
                for _ in range(args.iters):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    model(xs)
                    e.record()
                    e.synchronize()
                    times.append(s.elapsed_time(e))
                row["eager_ms"] = median_ms(times)
            try:
                static_in = torch.randn(b, WINDOW[family], FEATURES, device=dev)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.inference_mode(), torch.cuda.stream(side):
                    for _ in range(3):
                        model(static_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(graph):
                    static_out = model(static_in)
                host_out = torch.empty(static_out.shape, dtype=static_out.dtype).pin_memory()
                for _ in range(args.warmup):
                    graph.replay()
                torch.cuda.synchronize()
                times = []
                for _ in range(args.iters):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    graph.replay()
                    e.record()
                    e.synchronize()
                    times.append(s.elapsed_time(e))
                row["graph_ms"] = median_ms(times)
                times = []
                for _ in range(args.iters):
                    t = time.perf_counter()
                    static_in.copy_(host_in, non_blocking=True)
                    graph.replay()
                    host_out.copy_(static_out, non_blocking=True)
                    torch.cuda.current_stream().synchronize()
                    times.append((time.perf_counter() - t) * 1e3)
                row["graph_copy_ms"] = median_ms(times)
                with torch.inference_mode():
                    check = model(static_in)
                graph.replay()
                torch.cuda.synchronize()
                row["graph_matches_eager"] = bool(torch.allclose(static_out, check, atol=1e-5, rtol=1e-4))
            except Exception as e:  # report, keep timing the rest
                row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
            for k in ("eager", "graph", "graph_copy"):
                if f"{k}_ms" in row:
                    row[f"{k}_windows_per_s"] = b / (row[f"{k}_ms"] / 1e3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del model, holder
        torch.cuda.empty_cache()
    print(f"\n{info['gpu']}, torch {info['torch']}, CUDA {info['cuda']}, {info['date']}")
    print(f"{'family':6} {'b':>3} {'eager ms':>9} {'graph ms':>9} {'graph+copy ms':>13} {'graph win/s':>12}")
    for r in rows:
        print(f"{r['family']:6} {r['bucket']:>3} {r.get('eager_ms', float('nan')):9.3f} "
              f"{r.get('graph_ms', float('nan')):9.3f} {r.get('graph_copy_ms', float('nan')):13.3f} "
              f"{r.get('graph_windows_per_s', float('nan')):12.0f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
