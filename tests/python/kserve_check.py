"""Checks gsinfer's KServe v2 endpoints with Triton's own Python client.

Run by tests/kserve_clients.rs, which starts gsinfer and computes the
reference output with tract on the same input. Usage:

    kserve_check.py --url 127.0.0.1:PORT --model smap_lstm --token TOKEN \
        --input input.f32 --expected expected.f32 --batch N

Prints one JSON object with what it saw; exits non-zero on any mismatch.
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def infer(client, model, name, x, binary, headers):
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("forecast", binary_data=binary)
    # A copy: tritonclient adds Inference-Header-Content-Length to the dict it is given.
    result = client.infer(model, [inp], outputs=[out], headers=dict(headers), request_id="check-1")
    check(result.get_response()["model_name"] == model, "model_name in the response")
    check(result.get_response().get("id") == "check-1", "the request id is echoed")
    return result.as_numpy("forecast")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--batch", type=int, required=True)
    a = ap.parse_args()
    auth = {"Authorization": f"Bearer {a.token}"}
    client = httpclient.InferenceServerClient(url=a.url)

    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    check(client.is_model_ready(a.model), "model ready")
    server = client.get_server_metadata()
    check(server["name"] == "gsinfer" and "binary_tensor_data" in server["extensions"], f"server metadata {server}")
    meta = client.get_model_metadata(a.model)
    check(meta["inputs"][0]["name"] == "window", f"metadata {meta}")
    check(meta["inputs"][0]["shape"] == [-1, 250, 25], f"input shape {meta}")
    check(meta["outputs"][0]["shape"] == [-1, 10], f"output shape {meta}")
    version = meta["versions"][0]
    check(client.is_model_ready(a.model, model_version=version), "model version ready")
    config = client.get_model_config(a.model)
    check(config["max_batch_size"] == 64 and config["input"][0]["data_type"] == "TYPE_FP32", f"config {config}")

    x = np.fromfile(a.input, dtype="<f4").reshape(a.batch, 250, 25)
    want = np.fromfile(a.expected, dtype="<f4").reshape(a.batch, 10)

    # The token is required for inference.
    try:
        infer(client, a.model, "window", x, False, {})
        check(False, "inference without the token was accepted")
    except InferenceServerException as e:
        check("Bearer" in str(e), f"401 names the bearer token: {e}")

    # One warm-up inference: tract's first run of a batch size differs from
    # its later runs by up to ~1.3e-4 on this model (the reference is a second run too).
    infer(client, a.model, "window", x, True, auth)
    got_json = infer(client, a.model, "window", x, False, auth)
    got_binary = infer(client, a.model, "window", x, True, auth)
    for label, got in (("json", got_json), ("binary", got_binary)):
        check(got.shape == want.shape, f"{label} output shape {got.shape}")
        diff = float(np.max(np.abs(got - want)))
        check(diff <= 1e-4, f"{label} output differs from tract by {diff}")

    # Bad requests answer with the KServe error body, not a crash.
    try:
        infer(client, a.model, "nope", x, False, auth)
        check(False, "an unknown input was accepted")
    except InferenceServerException as e:
        check("unknown input" in str(e), f"unknown input error: {e}")

    stats = client.get_inference_statistics(a.model)["model_stats"][0]
    check(stats["name"] == a.model, f"stats {stats}")
    check(int(stats["inference_count"]) >= 2 * a.batch, f"inference_count {stats}")
    check(int(stats["execution_count"]) >= 1, f"execution_count {stats}")
    check(int(stats["inference_stats"]["success"]["count"]) >= 2, f"success count {stats}")
    check(int(stats["inference_stats"]["compute_infer"]["ns"]) > 0, f"compute_infer {stats}")
    check(len(stats["batch_stats"]) >= 1, f"batch_stats {stats}")
    all_stats = client.get_inference_statistics()
    check(any(s["name"] == a.model for s in all_stats["model_stats"]), "all-model stats")
    index = client.get_model_repository_index(headers=auth)
    check(any(m["name"] == a.model and m["state"] == "READY" for m in index), f"repository index {index}")

    print(json.dumps({
        "max_abs_diff_json": float(np.max(np.abs(got_json - want))),
        "max_abs_diff_binary": float(np.max(np.abs(got_binary - want))),
        "inference_count": int(stats["inference_count"]),
        "execution_count": int(stats["execution_count"]),
        "batch_stats": [s["batch_size"] for s in stats["batch_stats"]],
    }))


if __name__ == "__main__":
    main()
