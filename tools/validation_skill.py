#!/usr/bin/env python3
"""One-step forecast skill of each forecaster against persistence, on its own validation windows.

For every channel under `<data-dir>/train` and every forecasting family
(`lstm_<chan>` window 250, `tfm_<chan>` window 64 in the repository), this cuts
the train split into windows exactly as tools/train_models.py does (stride 1,
horizon 10), takes the last 20 % of them in time order (the validation windows
the model was early-stopped on; no test data, no label), and compares the mean
absolute error of the model's first forecast step with persistence's (the
window's last value of feature 0) on the same windows:

    skill = 1 - MAE(model) / MAE(persistence)

> 0: the model forecasts the next value better than repeating the last one;
<= 0: it does not. `null` where persistence's MAE is 0 (a constant train split).
Writes {channel: {family: {mae, persist_mae, skill, windows}}} as JSON
(EVALUATION.md, 8., reads it through tools/fuse_events.py --skill).

Usage:
    python3 tools/validation_skill.py --repo model_repository --data-dir ../shared/data/telemanom \\
        --out skill.json [--channels A-1,C-1]

Needs numpy and onnxruntime.
"""
import argparse
import glob
import json
import os

import numpy as np

FORECASTERS = {"lstm": 250, "tfm": 64}
HORIZON = 10
VAL_SPLIT = 0.2


def skill_of(session, series, length):
    """The family's validation skill on one train split, or None when it is too short for one window."""
    n = len(series) - length - HORIZON + 1
    if n <= 0:
        return None
    n_val = max(1, int(round(n * VAL_SPLIT)))
    starts = np.arange(n - n_val, n)
    x = np.stack([series[s:s + length] for s in starts]).astype(np.float32)
    y = series[starts + length, 0]
    name = session.get_inputs()[0].name
    forecast = np.concatenate([session.run(None, {name: x[i:i + 64]})[0][:, 0] for i in range(0, len(x), 64)])
    mae = float(np.abs(forecast - y).mean())
    persist = float(np.abs(x[:, -1, 0] - y).mean())
    return {"mae": mae, "persist_mae": persist, "skill": (1 - mae / persist) if persist > 0 else None,
            "windows": int(n_val)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--channels", default=None)
    args = ap.parse_args()
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    chans = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(args.data_dir, "train", "*.npy")))
    if args.channels:
        chans = [c for c in args.channels.split(",") if c]
    out = {}
    for chan in chans:
        series = np.load(os.path.join(args.data_dir, "train", f"{chan}.npy")).astype(np.float32)
        row = {}
        for fam, length in FORECASTERS.items():
            path = os.path.join(args.repo, f"{fam}_{chan}", "1", "model.onnx")
            if not os.path.exists(path):
                continue
            row[fam] = skill_of(ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]), series, length)
        out[chan] = row
        shown = {f: (None if r is None or r["skill"] is None else round(r["skill"], 3)) for f, r in row.items()}
        print(chan, shown, flush=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    for fam in FORECASTERS:
        vals = [r[fam]["skill"] for r in out.values() if r.get(fam) and r[fam]["skill"] is not None]
        undefined = sum(1 for r in out.values() if r.get(fam) and r[fam]["skill"] is None)
        print(f"{fam}: skill > 0 on {sum(v > 0 for v in vals)} of {len(vals) + undefined} channels "
              f"({undefined} with a constant train split)")


if __name__ == "__main__":
    main()
