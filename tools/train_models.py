#!/usr/bin/env python3
"""Train per-channel anomaly-detection models (LSTM, VAE, Transformer) and export them to ONNX.

One model per channel and family, as in Hundman et al., "Detecting Spacecraft
Anomalies Using LSTMs and Nonparametric Dynamic Thresholding", KDD 2018, trained
on `<data-dir>/train/<chan>.npy` (telemanom layout: float64 [T, F], column 0 the
scaled telemetry value, the rest command one-hots: F = 25 on SMAP, 55 on MSL;
F is read from each channel's data, so one run mixes spacecraft) and written
into a model repository in Triton's layout:

    <out>/<family>_<chan>/config.pbtxt
    <out>/<family>_<chan>/1/model.onnx

Families (all float32, ONNX opset 17, TorchScript exporter, batch axis "batch";
F below is the channel's feature count):

  lstm  telemanom LSTM forecaster, the reference configuration: `Forecaster`
        of tools/train_forecaster.py (2 LSTM layers of 80 units, dropout 0.3,
        dense 10). "window" [B, 250, F] -> "forecast" [B, 10] (next 10 values
        of feature 0).
  vae   MLP variational autoencoder over windows of 50: flatten(50 F) -> 64
        -> (mu, logvar) of 16 -> 64 -> 50 F -> [50, F]. Loss: per-element
        reconstruction MSE + beta * KL / (50 F) (the KL summed over the 16
        latent dimensions, averaged over the batch, and spread over the input
        elements so that both terms are per element), beta = 0.1 (--beta).
        Exported deterministically as decoder(mu): "window" [B, 50, F] ->
        "reconstruction" [B, 50, F].
  tfm   small Transformer forecaster: "window" [B, 64, F] -> linear to
        d_model 32 + learned positional embedding -> 2 TransformerEncoder
        layers (4 heads, FF 64, dropout 0.1, ReLU, post-norm, batch_first)
        -> last token -> linear -> "forecast" [B, 10].

Training protocol, every family (telemanom's reference config): Adam (lr 1e-3),
batch 70, at most 35 epochs for lstm and tfm and 100 for vae (the shipped
models; --epochs overrides all three), validation = the last 20 % of the
channel's windows in time order (Keras `validation_split=0.2` semantics),
early stopping on the validation loss with patience 10 and min_delta 0.0003,
best weights restored. The VAE's early stopping watches the validation MSE of
the exported deterministic reconstruction decoder(mu). Windows are cut with
`windows` of tools/train_forecaster.py (window length set per family), at
stride 1. Every (family, channel) task is seeded with --seed before its model
is built, so a model does not depend on which worker trained it or in what
order; cuDNN/cuBLAS run in deterministic mode with TF32 off (warn_only: on CUDA the
Transformer's attention backward still uses PyTorch's non-deterministic
memory-efficient kernel, so tfm reruns can differ in the last bits).

After export each ONNX file is run in onnxruntime on a batch of 3 and compared
with PyTorch (max abs difference recorded in the report).

Usage:
    python3 tools/train_models.py --data-dir ../shared/data/telemanom \\
        --out model_repository --families lstm,vae,tfm --report tools/training_report.json

    --channels A-1,E-7   only these channels (default: every train/*.npy)
    --epochs N           at most N epochs for every family (default: lstm 35, tfm 35, vae 100)
    --jobs N             worker processes sharing the GPU (default: min(8, CPUs))
    --skip-existing      keep models whose 1/model.onnx already exists
    --deadline-s S       start no new task S seconds after launch (the report
                         lists what was left); rerun with --skip-existing

Needs torch, numpy, onnx, onnxruntime. Uses the GPU when there is one; CPU works
(slower: the LSTM family is the long one).
"""
import argparse
import glob
import json
import math
import os
import random
import sys
import time
import traceback

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

HORIZON = 10
FAMILIES = {
    # window length, output name, output dims (without batch; "F" is the channel's
    # feature count), most epochs, description
    "lstm": dict(window=250, output="forecast", out_dims=[HORIZON], epochs=35,
                 desc="telemanom LSTM forecaster (2x LSTM 80, dropout 0.3, dense 10)"),
    "vae": dict(window=50, output="reconstruction", out_dims=[50, "F"], epochs=100,
                desc="MLP VAE (50 F -> 64 -> latent 16 -> 64 -> 50 F), exported as decoder(mu)"),
    "tfm": dict(window=64, output="forecast", out_dims=[HORIZON], epochs=35,
                desc="Transformer forecaster (d_model 32, 2 encoder layers, 4 heads, FF 64, dense 10)"),
}


def out_dims(family, features):
    """The family's output dims without the batch axis, for a channel of `features` features."""
    return [features if d == "F" else d for d in FAMILIES[family]["out_dims"]]


def spacecraft_of(data_dir):
    """{channel: spacecraft} from `<data-dir>/labeled_anomalies.csv` when it is there, else {}."""
    import csv
    path = os.path.join(data_dir, "labeled_anomalies.csv")
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as fh:
        return {r["chan_id"].strip(): r["spacecraft"].strip() for r in csv.DictReader(fh)}
# Rough relative cost, used to start the long tasks first.
COST = {"lstm": 10, "tfm": 3, "vae": 1}


def chan_key(ch):
    head, _, num = ch.partition("-")
    return (head, int(num) if num.isdigit() else 0, ch)


def cut_windows(series, length, horizon):
    """`windows` of train_forecaster.py with its window length and horizon set to ours."""
    import train_forecaster as tf
    saved = tf.WINDOW, tf.HORIZON
    tf.WINDOW, tf.HORIZON = length, horizon
    try:
        return tf.windows(series, 1)
    finally:
        tf.WINDOW, tf.HORIZON = saved


# ---------------------------------------------------------------- models

def build_model(family, args, features):
    import torch
    from torch import nn

    if family == "lstm":
        from train_forecaster import Forecaster
        return Forecaster(features=features, hidden=80, horizon=HORIZON, dropout=0.3)

    if family == "vae":
        class VAE(nn.Module):
            def __init__(self, window=50, features=features, hidden=args.vae_hidden, latent=args.vae_latent):
                super().__init__()
                self.window, self.features = window, features
                self.enc = nn.Sequential(nn.Flatten(), nn.Linear(window * features, hidden), nn.ReLU())
                self.mu = nn.Linear(hidden, latent)
                self.logvar = nn.Linear(hidden, latent)
                self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                         nn.Linear(hidden, window * features))

            def forward(self, x):
                h = self.enc(x)
                mu, logvar = self.mu(h), self.logvar(h)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                return self.dec(z).view(-1, self.window, self.features), mu, logvar

            def reconstruct(self, x):
                return self.dec(self.mu(self.enc(x))).view(-1, self.window, self.features)

        return VAE()

    if family == "tfm":
        class TransformerForecaster(nn.Module):
            def __init__(self, window=64, features=features, d_model=32, heads=4, ff=64, layers=2,
                         dropout=0.1, horizon=HORIZON):
                super().__init__()
                self.inp = nn.Linear(features, d_model)
                self.pos = nn.Parameter(torch.randn(1, window, d_model) * 0.02)
                layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=ff, dropout=dropout,
                                                   batch_first=True, norm_first=False)
                self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
                self.head = nn.Linear(d_model, horizon)

            def forward(self, window):
                h = self.encoder(self.inp(window) + self.pos)
                return self.head(h[:, -1, :])

        return TransformerForecaster()
    raise ValueError(family)


class _PlainTfm:
    """Factory of a functionally identical, op-for-op plain re-implementation of the
    Transformer forecaster's eval-mode forward (MatMul/Add/Reshape with constant
    shapes/Transpose/Softmax/LayerNormalization/Relu only). Used for export only when
    tract cannot run the nn.TransformerEncoder export (--tfm-export plain)."""

    @staticmethod
    def wrap(model):
        import torch
        from torch import nn
        import torch.nn.functional as F

        class Plain(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m
                self.T = m.pos.shape[1]
                self.D = m.pos.shape[2]

            def forward(self, window):
                m, T, D = self.m, self.T, self.D
                x = m.inp(window) + m.pos
                for layer in m.encoder.layers:
                    H = layer.self_attn.num_heads
                    dh = D // H
                    qkv = F.linear(x, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)
                    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
                    q = q.reshape(-1, T, H, dh).transpose(1, 2)
                    k = k.reshape(-1, T, H, dh).transpose(1, 2)
                    v = v.reshape(-1, T, H, dh).transpose(1, 2)
                    a = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(dh)), dim=-1)
                    o = torch.matmul(a, v).transpose(1, 2).reshape(-1, T, D)
                    o = layer.self_attn.out_proj(o)
                    x = layer.norm1(x + o)
                    f = layer.linear2(torch.relu(layer.linear1(x)))
                    x = layer.norm2(x + f)
                return m.head(x[:, T - 1, :])

        return Plain(model)


# ---------------------------------------------------------------- one task

def _set_seeds(seed):
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _export(model, family, path, args, features):
    """Exports `model` (eval, CPU) to ONNX; returns (max abs diff vs onnxruntime, export variant)."""
    import torch
    import onnxruntime as ort

    spec = FAMILIES[family]
    W = spec["window"]
    variant = "native"
    export_model = model
    if family == "vae":
        class Det(torch.nn.Module):
            def __init__(self, vae):
                super().__init__()
                self.vae = vae

            def forward(self, window):
                return self.vae.reconstruct(window)
        export_model = Det(model)
    elif family == "tfm" and args.tfm_export == "plain":
        export_model = _PlainTfm.wrap(model)
        variant = "plain"
        with torch.no_grad():
            x = torch.randn(3, W, features)
            d = (export_model(x) - model(x)).abs().max().item()
            if d > 1e-4:
                raise RuntimeError(f"plain Transformer differs from nn.TransformerEncoder by {d}")
    export_model.eval()

    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)  # no fused aten::_transformer_encoder_layer_fwd in the graph
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dummy = torch.zeros(2, W, features)
        out = spec["output"]
        torch.onnx.export(export_model, (dummy,), path, input_names=["window"], output_names=[out],
                          dynamic_axes={"window": {0: "batch"}, out: {0: "batch"}},
                          opset_version=17, dynamo=False)
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fast)

    fix_output_dims(path, family, features)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, W, features, generator=g) * 2 - 1
    with torch.no_grad():
        ref = export_model(x).numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"window": x.numpy()})[0]
    if got.shape != ref.shape:
        raise RuntimeError(f"onnxruntime output {got.shape} != torch {ref.shape}")
    return float(np.abs(got - ref).max()), variant


def fix_output_dims(path, family, features):
    """Declares the output's non-batch dims as the constants they are. The TorchScript
    exporter names them symbolically after a Reshape with -1 (the VAE's
    [batch, Reshapereconstruction_dim_1, ...]); only the graph's declared output
    shape changes, no node. Returns True when the file was rewritten."""
    import onnx
    m = onnx.load(path)
    dims = m.graph.output[0].type.tensor_type.shape.dim
    want = out_dims(family, features)
    if len(dims) != len(want) + 1:
        raise RuntimeError(f"{path}: output has rank {len(dims)}, expected {len(want) + 1}")
    if all(d.HasField("dim_value") and d.dim_value == w for d, w in zip(dims[1:], want)):
        return False
    for d, w in zip(dims[1:], want):
        d.Clear()
        d.dim_value = w
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return True


def _onnx_params(path):
    import onnx
    m = onnx.load(path)
    return int(sum(int(np.prod(t.dims)) for t in m.graph.initializer))


# How every per-channel model is served (config.pbtxt's tail), shared with
# tools/make_baselines.py: batch buckets and the longest wait, one CPU
# instance, the highest version only.
SERVING_PBTXT = """# Batch sizes worth dispatching at once (the batch-size buckets), and the
# longest a window waits for its batch to fill: 20 ms.
dynamic_batching {
  preferred_batch_size: [ 1, 2, 4, 8, 16, 32, 64 ]
  max_queue_delay_microseconds: 20000
}

# One instance, on the CPU, so a fresh box without a GPU runs it.
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]

# Serve the highest-numbered version folder only.
version_policy: { latest: { num_versions: 1 } }
"""


def config_pbtxt(family, chan, n_samples, features, spacecraft, value_std):
    spec = FAMILIES[family]
    name = f"{family}_{chan}"
    dims_out = ", ".join(str(d) for d in out_dims(family, features))
    if family == "vae":
        out_comment = "the reconstructed window: time steps x features"
        purpose = (f"It reads the last 50 samples ({features} features each) of channel {{c}} and reconstructs\n"
                   "# them; the anomaly score is the RMS error between the window's telemetry value\n"
                   "# and its reconstruction.")
    else:
        out_comment = "the next 10 samples of the target feature (0, the telemetry value)"
        purpose = (f"It reads the last {spec['window']} samples ({features} features each) of channel {{c}} and forecasts\n"
                   "# the next 10 values of feature 0; the anomaly score is the error of that\n"
                   "# forecast against what the spacecraft then sends.")
    return f"""# {name}: family {family} ({spec['desc']}), channel {chan},
# trained on the {spacecraft} train split train/{chan}.npy ({n_samples} samples) of the telemanom
# data set by tools/train_models.py (one model per channel, Hundman et al. KDD 2018).
#
# {purpose.format(c=chan)}
# The layout and this file are Triton's, so the same folder also loads in Triton
# Inference Server.

name: "{name}"

# An ONNX file (1/model.onnx): run on tract (CPU).
platform: "onnxruntime_onnx"

# The ONNX graph has a symbolic batch dimension; up to 64 windows run at once.
# The dims below leave it out.
max_batch_size: 64

input [
  {{
    name: "window"
    data_type: TYPE_FP32
    dims: [ {spec['window']}, {features} ]  # time steps x features: the scaled telemetry value + {features - 1} command one-hots
  }}
]

output [
  {{
    name: "{spec['output']}"
    data_type: TYPE_FP32
    dims: [ {dims_out} ]  # {out_comment}
  }}
]

{SERVING_PBTXT}
# The standard deviation of the telemetry value (feature 0) over the train split;
# below 1e-6 the channel was constant in training, and gsinfer says so at load
# (any change of level then scores as anomalous).
parameters {{ key: "train_value_std" value {{ string_value: "{value_std:.6g}" }} }}
"""


def train_one(task):
    """Trains and exports one (family, channel) model; returns its report entry."""
    family, chan, args = task
    name = f"{family}_{chan}"
    t_start = time.time()
    if args.deadline is not None and t_start > args.deadline:
        return {"model": name, "family": family, "channel": chan, "status": "skipped: deadline"}
    try:
        return _train_one(family, chan, args, t_start)
    except Exception as e:  # a failed channel is reported, the others go on
        traceback.print_exc()
        return {"model": name, "family": family, "channel": chan, "status": f"failed: {e!r}"}


def _train_one(family, chan, args, t_start):
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"

    spec = FAMILIES[family]
    name = f"{family}_{chan}"
    series = np.load(os.path.join(args.data_dir, "train", f"{chan}.npy"))
    if series.ndim != 2 or series.shape[1] < 1:
        raise ValueError(f"{chan}: train split has shape {series.shape}, expected [T, F] with F >= 1")
    features = int(series.shape[1])
    epochs = args.epochs or spec["epochs"]
    value_std = float(series[:, 0].std())
    if value_std < 1e-6:
        print(f"[{name}] warning: feature 0 is constant over the train split (std {value_std:.1e}); "
              "the model learns a constant and any change of level will score as anomalous", flush=True)
    horizon = 0 if family == "vae" else HORIZON
    X, y = cut_windows(series, spec["window"], horizon)
    if X is None or len(X) < 10:
        n = 0 if X is None else len(X)
        return {"model": name, "family": family, "channel": chan, "samples": int(series.shape[0]),
                "status": f"skipped: {series.shape[0]} samples give {n} windows of {spec['window']}+{horizon}"}
    n_val = max(1, int(round(len(X) * args.val_split)))
    Xtr, Xva = torch.from_numpy(X[:-n_val]).to(device), torch.from_numpy(X[-n_val:]).to(device)
    ytr, yva = torch.from_numpy(y[:-n_val]).to(device), torch.from_numpy(y[-n_val:]).to(device)

    _set_seeds(args.seed)
    model = build_model(family, args, features).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    mse = nn.MSELoss()
    shuffle = torch.Generator().manual_seed(args.seed)
    D = float(spec["window"] * features)

    def loss_of(xb, yb, train):
        if family == "vae":
            if train:
                rec, mu, logvar = model(xb)
                kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
                return mse(rec, xb) + args.beta * kl / D
            return mse(model.reconstruct(xb), xb)
        return mse(model(xb), yb)

    best, best_epoch, best_state, bad, history = float("inf"), 0, None, 0, []
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(Xtr), generator=shuffle).to(device)
        total, n = torch.zeros((), device=device), 0
        for i in range(0, len(Xtr), args.batch):
            idx = order[i:i + args.batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_of(Xtr[idx], ytr[idx], True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            n += len(idx)
        model.eval()
        with torch.no_grad():
            val = sum(loss_of(Xva[i:i + 1024], yva[i:i + 1024], False).item() * len(Xva[i:i + 1024])
                      for i in range(0, len(Xva), 1024)) / len(Xva)
        history.append([round(total.item() / n, 6), round(val, 6)])
        if val < best - args.min_delta:
            best, best_epoch, bad = val, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= args.patience:
                break
    train_s = time.time() - t0
    model.load_state_dict(best_state)
    model = model.cpu().eval()

    t1 = time.time()
    path = os.path.join(args.out, name, "1", "model.onnx")
    ort_diff, variant = _export(model, family, path, args, features)
    craft = spacecraft_of(args.data_dir).get(chan, "")
    with open(os.path.join(args.out, name, "config.pbtxt"), "w") as fh:
        fh.write(config_pbtxt(family, chan, int(series.shape[0]), features, craft or "channel's", value_std))
    entry = {
        "model": name, "family": family, "channel": chan, "status": "ok",
        "samples": int(series.shape[0]), "features": features, "spacecraft": craft or None,
        "train_value_std": value_std,
        "max_epochs": epochs,
        "windows": {"train": int(len(Xtr)), "validation": int(len(Xva))},
        "epochs_run": len(history), "best_epoch": best_epoch,
        "best_val_loss": best,
        "val_loss": "reconstruction MSE of decoder(mu)" if family == "vae" else "forecast MSE",
        "train_seconds": round(train_s, 2), "export_seconds": round(time.time() - t1, 2),
        "seconds": round(time.time() - t_start, 2),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "params": int(n_params), "onnx_params": _onnx_params(path),
        "onnx_bytes": os.path.getsize(path), "onnx_export": variant,
        "onnxruntime_max_abs_diff": ort_diff,
        "history_train_val": history,
    }
    print(f"[{name}] {len(history)} epochs (best {best_epoch}) val {best:.5f} "
          f"{train_s:.1f}s on {entry['device']}, {n_params} params, ort diff {ort_diff:.2e}", flush=True)
    return entry


# ---------------------------------------------------------------- driver

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True, help="model repository to write <family>_<chan>/ into")
    ap.add_argument("--families", default="lstm,vae,tfm")
    ap.add_argument("--channels", default=None, help="comma-separated (default: every train/*.npy)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="most epochs for every family (default: lstm 35, tfm 35, vae 100)")
    ap.add_argument("--batch", type=int, default=70)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-split", type=float, default=0.2)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--min-delta", type=float, default=0.0003)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--beta", type=float, default=0.1, help="VAE KL weight (per element, see above)")
    ap.add_argument("--vae-hidden", type=int, default=64)
    ap.add_argument("--vae-latent", type=int, default=16)
    ap.add_argument("--tfm-export", choices=["native", "plain"], default="native",
                    help="native: torch.onnx.export of nn.TransformerEncoder; plain: an identical "
                         "hand-written forward (for runtimes that lack an op of the native export)")
    ap.add_argument("--report", default=None, help="JSON report (default: <out>/training_report.json)")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    ap.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    ap.add_argument("--skip-existing", action="store_true")
    ap.add_argument("--deadline-s", type=float, default=None)
    args = ap.parse_args()

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f"unknown family {f!r}; choose from {', '.join(FAMILIES)}")
    avail = sorted((os.path.basename(p)[:-4] for p in glob.glob(os.path.join(args.data_dir, "train", "*.npy"))),
                   key=chan_key)
    if args.channels:
        chans = [c.strip() for c in args.channels.split(",") if c.strip()]
        missing = [c for c in chans if c not in avail]
        if missing:
            raise SystemExit(f"no train/<chan>.npy under {args.data_dir} for: {', '.join(missing)}")
    else:
        chans = avail
    if not chans:
        raise SystemExit(f"no train/*.npy under {args.data_dir}")
    os.makedirs(args.out, exist_ok=True)
    report_path = args.report or os.path.join(args.out, "training_report.json")
    launched = time.time()
    args.deadline = launched + args.deadline_s if args.deadline_s else None

    tasks, kept = [], []
    for f in families:
        for c in chans:
            if args.skip_existing and os.path.exists(os.path.join(args.out, f"{f}_{c}", "1", "model.onnx")):
                kept.append(f"{f}_{c}")
                continue
            tasks.append((f, c, args))
    tasks.sort(key=lambda t: -COST[t[0]])  # longest family first; stable within a family
    jobs = max(1, min(args.jobs or min(8, os.cpu_count() or 1), len(tasks) or 1))

    import torch  # noqa: F401  (fail early with a clear message when torch is missing)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else "cpu"
    print(f"{len(tasks)} models to train ({len(kept)} kept) over {len(chans)} channels, "
          f"families {','.join(families)}, {jobs} workers, device {device}, torch {torch.__version__}",
          flush=True)

    old = {}
    if args.skip_existing and os.path.exists(report_path):
        with open(report_path) as fh:
            old = {m["model"]: m for m in json.load(fh).get("models", [])}
    entries = {k: old[k] for k in kept if k in old}

    def write_report():
        models = sorted(entries.values(), key=lambda m: (list(FAMILIES).index(m["family"]), chan_key(m["channel"])))
        per_family = {}
        for f in families:
            ok = [m for m in models if m["family"] == f and m.get("status") == "ok"]
            if not ok:
                continue
            per_family[f] = {
                "description": FAMILIES[f]["desc"],
                "window": FAMILIES[f]["window"],
                "models": len(ok),
                "train_seconds_sum": round(sum(m["train_seconds"] for m in ok), 1),
                "seconds_sum": round(sum(m["seconds"] for m in ok), 1),
                "epochs_run_mean": round(float(np.mean([m["epochs_run"] for m in ok])), 1),
                "best_val_loss_median": float(np.median([m["best_val_loss"] for m in ok])),
                "onnx_bytes_each": sorted({m["onnx_bytes"] for m in ok}),
                "onnx_bytes_total": int(sum(m["onnx_bytes"] for m in ok)),
                "params": sorted({m["params"] for m in ok}),
                "onnx_params": sorted({m["onnx_params"] for m in ok}),
                "onnx_export": sorted({m["onnx_export"] for m in ok}),
                "onnxruntime_max_abs_diff": max(m["onnxruntime_max_abs_diff"] for m in ok),
            }
            if f in spans:
                per_family[f]["wall_seconds"] = round(spans[f][1] - spans[f][0], 1)
        rep = {
            "tool": "tools/train_models.py",
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
            "data": f"{len(chans)} channels, {args.data_dir}/train/<chan>.npy, windows at stride 1",
            "protocol": {
                "optimizer": f"Adam lr {args.lr}", "batch": args.batch,
                "max_epochs": args.epochs or {f: FAMILIES[f]["epochs"] for f in families},
                "validation": f"last {args.val_split:.0%} of each channel's windows in time order",
                "early_stopping": f"patience {args.patience}, min_delta {args.min_delta}, best weights restored",
                "vae_loss": f"MSE + {args.beta} * KL / ({FAMILIES['vae']['window']} F) "
                            f"(KL summed over latent dims, mean over batch); val loss = MSE of decoder(mu)",
                "seed": args.seed, "deterministic": "cudnn.deterministic, use_deterministic_algorithms, TF32 off",
                "onnx": "opset 17, TorchScript exporter (dynamo=False), dynamic axis 'batch', float32",
            },
            "device": device, "torch": torch.__version__, "workers": jobs,
            "wall_seconds": round(time.time() - launched, 1),
            "families": per_family,
            "not_ok": [{"model": m["model"], "status": m["status"]} for m in models if m.get("status") != "ok"],
            "models": models,
        }
        tmp = report_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(rep, fh, indent=1)
        os.replace(tmp, report_path)

    spans = {}
    done = 0
    if tasks:
        if jobs == 1:
            results = map(train_one, tasks)
            pool = None
        else:
            import multiprocessing as mp
            pool = mp.get_context("spawn").Pool(jobs)
            results = pool.imap_unordered(train_one, tasks, chunksize=1)
        for r in results:
            done += 1
            entries[r["model"]] = r
            if r.get("status") == "ok":
                end = time.time()
                s = spans.setdefault(r["family"], [end - r["seconds"], end])
                s[0], s[1] = min(s[0], end - r["seconds"]), max(s[1], end)
            else:
                print(f"[{r['model']}] {r['status']}", flush=True)
            if done % 10 == 0 or done == len(tasks):
                print(f"{done}/{len(tasks)} done, {time.time() - launched:.0f}s", flush=True)
                write_report()
        if pool is not None:
            pool.close()
            pool.join()
    write_report()
    bad = [m for m in entries.values() if m.get("status") != "ok"]
    print(f"wrote {report_path}; {len(entries) - len(bad)} ok, {len(bad)} not ok, "
          f"{time.time() - launched:.0f}s", flush=True)
    sys.exit(1 if any(m["status"].startswith("failed") for m in bad) else 0)


if __name__ == "__main__":
    main()
