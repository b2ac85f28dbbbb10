#!/usr/bin/env python3
"""Unit tests of the offline fusion tools EVALUATION.md's figures come from
(tools/fuse_events.py, tools/fuse_scores.py). Run by tests/fusion_tools.rs."""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import fuse_events  # noqa: E402
import fuse_scores  # noqa: E402


class EventFusion(unittest.TestCase):
    def test_merge_joins_overlapping_and_touching_spans(self):
        self.assertEqual(fuse_events.merge([(10, 20), (0, 5), (6, 8), (19, 30)]), [(0, 8), (10, 30)])

    def test_k_of_n_keeps_a_merged_anomaly_seen_by_k_families(self):
        a, b, c = [(0, 10), (100, 110)], [(5, 20)], [(200, 210)]
        self.assertEqual(fuse_events.fuse([a, b, c], 1), [(0, 20), (100, 110), (200, 210)])
        self.assertEqual(fuse_events.fuse([a, b, c], 2), [(0, 20)])
        self.assertEqual(fuse_events.fuse([a, b, c], 3), [])

    def test_counting_is_telemanoms(self):
        # One label overlapped twice is one true positive; a prediction
        # overlapping no label is a false positive.
        labels = [(10, 20), (50, 60)]
        self.assertEqual(fuse_events.count([(0, 12), (15, 18), (30, 40)], labels), (1, 1, 1))
        self.assertEqual(fuse_events.rates(1, 1, 1)[2], 0.5)

    def test_a_trusted_vote_falls_back_to_every_family(self):
        fams = [[(0, 10)], [(5, 15)], [(100, 110)]]
        # Only the third is trusted: fewer than k = 2, so the plain vote.
        self.assertEqual(fuse_events.trusted(fams, [3, 1, 0], 2), [(0, 15)])
        # The first and third trusted: they never agree.
        self.assertEqual(fuse_events.trusted(fams, [0, 1, 0], 2), [])


class MarginFusion(unittest.TestCase):
    def write(self, d, name, rows):
        path = os.path.join(d, name)
        with open(path, "w") as f:
            for ch, i, s, eps in rows:
                f.write(json.dumps({"type": "score", "channel": ch, "index": i, "score": s, "threshold": eps}) + "\n")
            f.write(json.dumps({"type": "event", "channel": ch}) + "\n")
        return path

    def test_the_mean_margin_over_the_members_scoring_a_sample(self):
        with tempfile.TemporaryDirectory() as d:
            a = fuse_scores.margins(self.write(d, "a.jsonl", [("X", 1, 3.0, 1.0), ("X", 2, 0.5, 1.0), ("X", 3, 0.0, 0.0)]))
            b = fuse_scores.margins(self.write(d, "b.jsonl", [("X", 2, 1.8, 1.0), ("X", 3, 0.2, 1.0)]))
        self.assertEqual(a["X"], {1: 3.0, 2: 0.5, 3: 0.0})
        # 1: a alone at 3 (>= 1); 2: (0.5 + 1.8) / 2 = 1.15; 3: (0 + 0.2) / 2.
        self.assertEqual(fuse_scores.fused_anomalies([a["X"], b["X"]], 0), [(1, 2)])
        # Widened by the buffer on each side, never below sample 0.
        self.assertEqual(fuse_scores.fused_anomalies([a["X"], b["X"]], 5), [(0, 7)])


if __name__ == "__main__":
    unittest.main()
