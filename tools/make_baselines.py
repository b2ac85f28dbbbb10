#!/usr/bin/env python3
"""Write the naive baseline models of EVALUATION.md into a model repository.

Two per channel, so a reader sees what the trained models add; both are tiny
ONNX graphs (no training, no torch) that gsinfer serves and `gsinfer eval`
scores exactly like the trained families:

  persist_<chan>  persistence forecaster: "window" [B, 2, F] -> "forecast" [B, 10],
                  every step forecast as the last value of feature 0. Its raw
                  error is |x(t+1) - x(t)|; scored like the LSTM (EWMA span 105,
                  NDT) by tools/make_config.py --family persist.
  zscore_<chan>   z-score of the raw value against the channel's train split:
                  "window" [B, 1, F] -> "reconstruction" [B, 1, F] =
                  x - (x - mu) / sigma on feature 0 (the others copied), so the
                  reconstruction error over feature 0 is |x - mu| / sigma, the
                  z-score; thresholded at a fixed 3 (static, no smoothing) by
                  tools/make_config.py --family zscore. sigma is floored at
                  1e-6 so a constant train split still gives a finite score.

  nn_<chan>       nearest nominal neighbour: "window" [B, 50, F] -> "reconstruction"
                  [B, 50, F] = the window with feature 0 replaced by the nearest
                  (Euclidean) 50-sample subsequence of feature 0 among all the
                  subsequences of the channel's train split, the other features
                  copied. Its reconstruction error over feature 0 is the RMS
                  distance to the nearest nominal subsequence: the AB-join of the
                  matrix profile (Yeh et al., ICDM 2016) with the train split as
                  the reference. Scored like the VAE (EWMA span 105, NDT) by
                  tools/make_config.py --family nn. The subsequences are stored in
                  the graph: 4 x 50 x (train length - 49) bytes (~0.55 MB on SMAP).

F is read from each channel's data (25 on SMAP, 55 on MSL); mu and sigma from
`<data-dir>/train/<chan>.npy`, column 0.

Usage:
    python3 tools/make_baselines.py --data-dir ../shared/data/telemanom --out model_repository \\
        [--channels A-1,C-1] [--families persist,zscore]

Needs numpy and onnx (and onnxruntime to check each file, when installed).
"""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_models import SERVING_PBTXT, chan_key, spacecraft_of  # noqa: E402

HORIZON = 10
# IR version of the graphs written: onnx >= 1.18 writes 11+ by default, which
# onnxruntime before 1.23 (the .deb's 1.22 among them) refuses to load, and
# gsinfer then falls back to tract with a warning. Opset 17 needs IR 8,
# what the trained models' exports carry too.
IR_VERSION = 8
NN_WINDOW = 50
SIGMA_FLOOR = 1e-6


def persist_model(features):
    from onnx import TensorProto, helper
    window = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", 2, features])
    forecast = helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", HORIZON])
    nodes = [
        helper.make_node("Constant", [], ["last"], value=helper.make_tensor("last", TensorProto.INT64, [], [-1])),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["shape"],
                         value=helper.make_tensor("shape", TensorProto.INT64, [2], [1, HORIZON])),
        helper.make_node("Gather", ["window", "last"], ["row"], axis=1),      # [B, F]
        helper.make_node("Gather", ["row", "zero"], ["value"], axis=1),       # [B, 1]
        helper.make_node("Expand", ["value", "shape"], ["forecast"]),         # [B, 10]
    ]
    graph = helper.make_graph(nodes, "persistence", [window], [forecast])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="gsinfer-baselines")


def zscore_model(features, mu, sigma):
    from onnx import TensorProto, helper
    window = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", 1, features])
    rec = helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["batch", 1, features])
    mean = [0.0] * features
    scale = [0.0] * features  # 1/sigma on feature 0, 0 elsewhere: the others are copied
    mean[0], scale[0] = float(mu), 1.0 / float(sigma)
    nodes = [
        helper.make_node("Constant", [], ["mu"], value=helper.make_tensor("mu", TensorProto.FLOAT, [features], mean)),
        helper.make_node("Constant", [], ["inv"], value=helper.make_tensor("inv", TensorProto.FLOAT, [features], scale)),
        helper.make_node("Sub", ["window", "mu"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv"], ["z"]),
        helper.make_node("Sub", ["window", "z"], ["reconstruction"]),
    ]
    graph = helper.make_graph(nodes, "zscore", [window], [rec])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="gsinfer-baselines")


def nn_model(features, train_value, window=NN_WINDOW):
    """Nearest-nominal-neighbour "reconstruction" of feature 0 (see the module doc).

    argmin_j |x - T_j|^2 = argmin_j (|T_j|^2 - 2 x.T_j): |x|^2 is the same for every j.
    """
    from onnx import TensorProto, helper, numpy_helper
    series = np.asarray(train_value, dtype=np.float32)
    if series.shape[0] < window:
        raise SystemExit(f"train split has {series.shape[0]} samples, fewer than the window {window}")
    subs = np.lib.stride_tricks.sliding_window_view(series, window).astype(np.float32)  # [N, m]
    x_in = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", window, features])
    rec = helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["batch", window, features])
    inits = [
        numpy_helper.from_array(subs, "subsequences"),                                     # [N, m]
        numpy_helper.from_array((subs.astype(np.float64) ** 2).sum(1).astype(np.float32), "norms"),  # [N]
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_f"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([features], dtype=np.int64), "end"),
    ]
    nodes = [
        helper.make_node("Gather", ["window", "zero"], ["value"], axis=2),            # [B, m]
        # -2 x.T_j + |T_j|^2 = |x - T_j|^2 - |x|^2, [B, N]
        helper.make_node("Gemm", ["value", "subsequences", "norms"], ["distance"], alpha=-2.0, beta=1.0, transB=1),
        helper.make_node("ArgMin", ["distance"], ["nearest"], axis=1, keepdims=0),    # [B]
        helper.make_node("Gather", ["subsequences", "nearest"], ["neighbour"], axis=0),  # [B, m]
        helper.make_node("Unsqueeze", ["neighbour", "axis_f"], ["neighbour3"]),      # [B, m, 1]
        helper.make_node("Slice", ["window", "one", "end", "axis_f"], ["others"]),   # [B, m, F-1]
        helper.make_node("Concat", ["neighbour3", "others"], ["reconstruction"], axis=2),
    ]
    graph = helper.make_graph(nodes, "nearest_nominal_neighbour", [x_in], [rec], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="gsinfer-baselines")


def config_pbtxt(name, chan, craft, features, window, output, out_dims, what):
    dims = ", ".join(str(d) for d in out_dims)
    return f"""# {name}: naive baseline for channel {chan} ({craft}), written by tools/make_baselines.py.
# {what}

name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64

input [
  {{
    name: "window"
    data_type: TYPE_FP32
    dims: [ {window}, {features} ]  # time steps x features
  }}
]

output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {dims} ]
  }}
]

{SERVING_PBTXT}"""


def write(out, name, model, pbtxt, features, window):
    import onnx
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = os.path.join(out, name, "1", "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)
    with open(os.path.join(out, name, "config.pbtxt"), "w") as fh:
        fh.write(pbtxt)
    try:
        import onnxruntime as ort
    except ImportError:
        return
    x = np.random.default_rng(0).uniform(-1, 1, (3, window, features)).astype(np.float32)
    ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"window": x})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--channels", default=None)
    ap.add_argument("--families", default="persist,zscore", help="comma-separated: persist, zscore, nn")
    args = ap.parse_args()
    fams = [f for f in args.families.split(",") if f]
    for f in fams:
        if f not in ("persist", "zscore", "nn"):
            raise SystemExit(f"unknown baseline {f!r}; choose persist, zscore, nn")
    chans = sorted((os.path.basename(p)[:-4] for p in glob.glob(os.path.join(args.data_dir, "train", "*.npy"))),
                   key=chan_key)
    if args.channels:
        chans = [c for c in args.channels.split(",") if c]
    crafts = spacecraft_of(args.data_dir)
    for chan in chans:
        train = np.load(os.path.join(args.data_dir, "train", f"{chan}.npy"))
        features = int(train.shape[1])
        craft = crafts.get(chan, "unknown spacecraft")
        if "persist" in fams:
            name = f"persist_{chan}"
            write(args.out, name, persist_model(features),
                  config_pbtxt(name, chan, craft, features, 2, "forecast", [HORIZON],
                               "Forecasts every next value as the last one (persistence)."),
                  features, 2)
        if "zscore" in fams:
            mu, sigma = float(train[:, 0].mean()), max(float(train[:, 0].std()), SIGMA_FLOOR)
            name = f"zscore_{chan}"
            write(args.out, name, zscore_model(features, mu, sigma),
                  config_pbtxt(name, chan, craft, features, 1, "reconstruction", [1, features],
                               f"Reconstruction error over feature 0 = |x - mu| / sigma, train mu {mu:.6g}, "
                               f"sigma {sigma:.6g}."),
                  features, 1)
        if "nn" in fams:
            name = f"nn_{chan}"
            write(args.out, name, nn_model(features, train[:, 0]),
                  config_pbtxt(name, chan, craft, features, NN_WINDOW, "reconstruction", [NN_WINDOW, features],
                               f"Feature 0 replaced by its nearest subsequence of the train split "
                               f"({train.shape[0] - NN_WINDOW + 1} subsequences of {NN_WINDOW})."),
                  features, NN_WINDOW)
    print(f"wrote {len(fams)} baseline(s) for {len(chans)} channels into {args.out}")


if __name__ == "__main__":
    main()
