#!/usr/bin/env python3
"""Unit tests of tools/mean_ensemble.py (run by tests/fusion_tools.rs):
the merged model's output is the members' mean, in onnxruntime, and members
that do not fit together are refused."""
import os
import sys
import tempfile
import unittest

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import mean_ensemble  # noqa: E402


def member(scale, bias, out_name="forecast"):
    """window [B, 4, 3] -> forecast [B, 3]: scale * (sum over time) + bias."""
    x = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", 4, 3])
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", 3])
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    s = numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")
    b = numpy_helper.from_array(np.array([bias] * 3, dtype=np.float32), "bias")
    nodes = [
        helper.make_node("ReduceSum", ["window", "axes"], ["summed"], keepdims=0),
        helper.make_node("Mul", ["summed", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], [out_name]),
    ]
    graph = helper.make_graph(nodes, "member", [x], [y], initializer=[axes, s, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"window": x})[0]


class MeanEnsemble(unittest.TestCase):
    def test_the_output_is_the_mean_of_the_members(self):
        members = [member(1.0, 0.0), member(2.0, 1.0), member(-0.5, 3.0)]
        merged = mean_ensemble.merge(members)
        x = np.random.default_rng(7).standard_normal((5, 4, 3)).astype(np.float32)
        want = np.mean([run(m, x) for m in members], axis=0)
        np.testing.assert_allclose(run(merged, x), want, rtol=1e-6, atol=1e-6)
        # A drop-in replacement: the same single input and output names.
        self.assertEqual([i.name for i in merged.graph.input], ["window"])
        self.assertEqual([o.name for o in merged.graph.output], ["forecast"])

    def test_members_that_differ_or_stand_alone_are_refused(self):
        with self.assertRaisesRegex(ValueError, "members differ"):
            mean_ensemble.merge([member(1.0, 0.0), member(1.0, 0.0, out_name="reconstruction")])
        with self.assertRaisesRegex(ValueError, "at least two"):
            mean_ensemble.merge([member(1.0, 0.0)])

    def test_a_repository_is_merged_folder_by_folder(self):
        with tempfile.TemporaryDirectory() as tmp:
            repos = []
            for k, scale in enumerate([1.0, 3.0]):
                repo = os.path.join(tmp, f"r{k}")
                for name in ("lstm_A-1", "vae_A-1"):
                    os.makedirs(os.path.join(repo, name, "1"))
                    onnx.save(member(scale, 0.0), os.path.join(repo, name, "1", "model.onnx"))
                    with open(os.path.join(repo, name, "config.pbtxt"), "w") as fh:
                        fh.write(f'name: "{name}"\n')
                repos.append(repo)
            out = os.path.join(tmp, "out")
            sys.argv = ["mean_ensemble.py", "--repo", repos[0], "--member", repos[1],
                        "--family", "lstm", "--out", out]
            self.assertEqual(mean_ensemble.main(), 0)
            self.assertEqual(os.listdir(out), ["lstm_A-1"])
            with open(os.path.join(out, "lstm_A-1", "config.pbtxt")) as fh:
                self.assertEqual(fh.read(), 'name: "lstm_A-1"\n')
            x = np.ones((1, 4, 3), dtype=np.float32)
            merged = onnx.load(os.path.join(out, "lstm_A-1", "1", "model.onnx"))
            np.testing.assert_allclose(run(merged, x), [[8.0, 8.0, 8.0]])
            # --as: a family of its own beside the members, named to match.
            sys.argv = ["mean_ensemble.py", "--repo", repos[0], "--member", repos[1],
                        "--family", "lstm", "--as", "lstm2", "--out", repos[0]]
            self.assertEqual(mean_ensemble.main(), 0)
            self.assertEqual(sorted(os.listdir(repos[0])), ["lstm2_A-1", "lstm_A-1", "vae_A-1"])
            with open(os.path.join(repos[0], "lstm2_A-1", "config.pbtxt")) as fh:
                text = fh.read()
            self.assertIn('\nname: "lstm2_A-1"\n', text)
            self.assertNotIn('name: "lstm_A-1"', text)
            self.assertTrue(text.startswith("# lstm2_A-1: the mean forecast of 2 models"), text)


if __name__ == "__main__":
    unittest.main()
