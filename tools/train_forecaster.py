#!/usr/bin/env python3
"""Train the example telemanom-style LSTM forecaster and export it to ONNX.

One global model for all SMAP channels of the shared data set (the paper
trains one model per channel; the per-channel reference models are a separate
tool). Architecture after Hundman et al., "Detecting Spacecraft Anomalies
Using LSTMs and Nonparametric Dynamic Thresholding", KDD 2018, and the
telemanom reference configuration: input window l_s = 250 steps x 25
features, two LSTM layers of 80 units, dropout 0.3, a dense layer predicting
the next n_predictions = 10 values of feature 0, MSE loss, Adam, early
stopping on a 20 % validation split (patience 10, min_delta 0.0003).

Usage:
    python3 tools/train_forecaster.py --data-dir ../shared/data/telemanom \
        --out model_repository/smap_lstm/1/model.onnx [--epochs 35] [--seed 42]

Writes the ONNX file (opset 17, dynamic batch dimension "batch", input
"window" [batch, 250, 25] float32, output "forecast" [batch, 10] float32) and
a JSON training report next to it (--report) with data, epochs, wall time,
device and losses.
"""
import argparse
import glob
import json
import os
import random
import time

import numpy as np
import torch
from torch import nn

WINDOW = 250
HORIZON = 10
FEATURES = 25


class Forecaster(nn.Module):
    """Two stacked LSTM layers of 80 units, dropout 0.3, dense head to 10 steps."""

    def __init__(self, features=FEATURES, hidden=80, horizon=HORIZON, dropout=0.3):
        super().__init__()
        self.lstm1 = nn.LSTM(features, hidden, batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.lstm2 = nn.LSTM(hidden, hidden, batch_first=True)
        self.drop2 = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, window):
        h, _ = self.lstm1(window)
        h = self.drop1(h)
        h, _ = self.lstm2(h)
        h = self.drop2(h[:, -1, :])
        return self.head(h)


def windows(series, stride):
    """[T, F] -> X [N, WINDOW, F], y [N, HORIZON] (feature 0 of the next steps)."""
    n = series.shape[0] - WINDOW - HORIZON + 1
    if n <= 0:
        return None, None
    starts = np.arange(0, n, stride)
    X = np.stack([series[s:s + WINDOW] for s in starts]).astype(np.float32)
    y = np.stack([series[s + WINDOW:s + WINDOW + HORIZON, 0] for s in starts]).astype(np.float32)
    return X, y


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", default=None)
    ap.add_argument("--epochs", type=int, default=35)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--stride", type=int, default=1, help="stride between training windows")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--min-delta", type=float, default=0.0003)
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    files = sorted(glob.glob(os.path.join(args.data_dir, "train", "*.npy")))
    if not files:
        raise SystemExit(f"no train/*.npy under {args.data_dir}")
    Xs, ys = [], []
    for f in files:
        X, y = windows(np.load(f), args.stride)
        if X is not None:
            Xs.append(X)
            ys.append(y)
    X = torch.from_numpy(np.concatenate(Xs))
    y = torch.from_numpy(np.concatenate(ys))
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(args.seed))
    n_val = len(X) // 5
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    Xtr, ytr = X[tr_idx].to(device), y[tr_idx].to(device)
    Xva, yva = X[val_idx].to(device), y[val_idx].to(device)

    model = Forecaster().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    best, best_state, bad, history = float("inf"), None, 0, []
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(Xtr), device=device)
        total = 0.0
        for i in range(0, len(Xtr), args.batch):
            idx = order[i:i + args.batch]
            opt.zero_grad()
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = sum(loss_fn(model(Xva[i:i + 4096]), yva[i:i + 4096]).item() * len(Xva[i:i + 4096])
                      for i in range(0, len(Xva), 4096)) / len(Xva)
        history.append({"epoch": epoch + 1, "train_mse": total / len(Xtr), "val_mse": val})
        print(f"epoch {epoch + 1}: train {total / len(Xtr):.5f} val {val:.5f}", flush=True)
        if val < best - args.min_delta:
            best, bad = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= args.patience:
                print("early stop", flush=True)
                break
    train_s = time.time() - t0
    model.load_state_dict(best_state)
    model = model.cpu().eval()

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    dummy = torch.zeros(2, WINDOW, FEATURES)
    torch.onnx.export(model, (dummy,), args.out, input_names=["window"], output_names=["forecast"],
                      dynamic_axes={"window": {0: "batch"}, "forecast": {0: "batch"}},
                      opset_version=17, dynamo=False)

    report = {
        "model": "telemanom-style LSTM forecaster (2x LSTM 80, dropout 0.3, dense 10)",
        "data": f"{len(files)} SMAP channels, train split, stride {args.stride}",
        "windows": {"train": len(Xtr), "validation": len(Xva)},
        "epochs_run": len(history), "best_val_mse": best, "seed": args.seed,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__, "train_seconds": round(train_s, 1), "history": history,
    }
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(report, fh, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "history"}))


if __name__ == "__main__":
    main()
