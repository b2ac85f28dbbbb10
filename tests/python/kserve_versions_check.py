#!/usr/bin/env python3
"""Version selection through Triton's own clients (tritonclient.http and
tritonclient.grpc) against a gsinfer serving two versions of one model.

Checks, on both protocols: the metadata lists both versions; each version is
ready; inference names a version and gets that version's output (they
differ), and a request naming none gets the highest; an unserved version is
refused with a message naming the served ones; the statistics count the
requests per version; the repository index has one entry per version.
Prints one line per protocol; exits non-zero on the first failure.
"""
import argparse
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http-url", required=True)
    ap.add_argument("--grpc-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--window", type=int, required=True)
    ap.add_argument("--features", type=int, required=True)
    args = ap.parse_args()
    x = np.random.default_rng(7).uniform(-1, 1, (2, args.window, args.features)).astype(np.float32)

    for proto, mod, client in [
        ("http", httpclient, httpclient.InferenceServerClient(args.http_url)),
        ("grpc", grpcclient, grpcclient.InferenceServerClient(args.grpc_url)),
    ]:
        meta = client.get_model_metadata(args.model, model_version="1")
        versions = meta["versions"] if proto == "http" else list(meta.versions)
        assert versions == ["1", "2"], f"{proto}: metadata versions {versions}"
        for v in ("1", "2"):
            assert client.is_model_ready(args.model, model_version=v), f"{proto}: version {v} not ready"

        def infer(version):
            inp = mod.InferInput("window", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return client.infer(args.model, [inp], model_version=version).as_numpy("forecast")

        v1, v2, latest = infer("1"), infer("2"), infer("")
        assert v1.shape == (2, 10) and v2.shape == (2, 10), f"{proto}: shapes {v1.shape} {v2.shape}"
        assert not np.allclose(v1, v2), f"{proto}: versions 1 and 2 gave the same output"
        assert np.array_equal(latest, v2), f"{proto}: no version did not get the highest"
        try:
            infer("3")
            raise AssertionError(f"{proto}: version 3 was served")
        except InferenceServerException as e:
            assert "not served" in str(e) and "[1, 2]" in str(e), f"{proto}: {e}"

        stats = client.get_inference_statistics(args.model, model_version="1")
        rows = stats["model_stats"] if proto == "http" else [
            {"version": s.version, "inference_count": s.inference_count} for s in stats.model_stats]
        assert [r["version"] for r in rows] == ["1"], f"{proto}: stats {rows}"
        assert int(rows[0]["inference_count"]) >= 2, f"{proto}: stats {rows}"

        index = client.get_model_repository_index()
        entries = index if proto == "http" else [
            {"name": m.name, "version": m.version, "state": m.state} for m in index.models]
        mine = sorted(e.get("version") for e in entries if e["name"] == args.model)
        assert mine == ["1", "2"], f"{proto}: index {entries}"
        print(f"{proto}: versions {versions} ready; v1 {v1[0, :2]} v2 {v2[0, :2]}; latest = v2; v3 refused; stats and index per version")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
