#!/usr/bin/env python3
"""Measure score-level fusion of detector families offline (EVALUATION.md, 10.).

Each input is the JSON-lines output (plain or .gz) of one
`gsinfer eval --all --json` run *without* --metrics: one `score` line per
scored sample, with the member's smoothed error (`score`) and the NDT
threshold it decided that sample with (`threshold`).

Margin fusion: per channel and sample index t, every member that scored t
gives its margin r = score / threshold; the fused score F(t) is the mean
margin over those members; t is anomalous when F(t) >= 1, and each anomalous
sample is widened by NDT's error buffer (--buffer, 100 samples) on each side,
overlapping spans merged, as NDT widens its own flags (Hundman et al., KDD
2018, section 3.2). Counted against labeled_anomalies.csv as gsinfer and
telemanom count (tools/fuse_events.py), per spacecraft and overall.

It is a measuring tool, not part of gsinfer's serving path.

Usage:
    python3 tools/fuse_scores.py --data-dir ../shared/data/telemanom \\
        lstm.jsonl.gz vae.jsonl.gz tfm.jsonl.gz persist.jsonl.gz
"""
import argparse
import ast
import csv
import gzip
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuse_events import count, merge, rates  # noqa: E402


def margins(path):
    """{channel: {index: margin}} of one member's score lines."""
    opener = gzip.open if path.endswith(".gz") else open
    out = defaultdict(dict)
    with opener(path, "rt") as fh:
        for line in fh:
            o = json.loads(line)
            if o.get("type") != "score":
                continue
            s, eps = o["score"], o["threshold"]
            if eps is None or s is None:
                continue
            if eps > 0:
                r = s / eps
            else:
                r = 0.0 if s <= 0 else float("inf")
            out[o["channel"]][o["index"]] = r
    return out


def fused_anomalies(members, buffer):
    """Widened, merged spans where the mean margin over the members scoring a sample is >= 1."""
    indices = sorted(set().union(*(m.keys() for m in members)))
    spans = []
    for t in indices:
        rs = [m[t] for m in members if t in m]
        if sum(rs) >= len(rs):
            spans.append((max(0, t - buffer), t + buffer))
    return merge(spans)


def labels(data_dir):
    lab, craft = defaultdict(list), {}
    with open(os.path.join(data_dir, "labeled_anomalies.csv"), newline="") as fh:
        for r in csv.DictReader(fh):
            ch = r["chan_id"].strip()
            craft[ch] = r["spacecraft"].strip()
            lab[ch] += [tuple(s) for s in ast.literal_eval(r["anomaly_sequences"])]
    return dict(lab), craft


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--buffer", type=int, default=100, help="samples widened on each side (NDT's error_buffer)")
    ap.add_argument("--per-channel", action="store_true")
    args = ap.parse_args()
    runs = [margins(p) for p in args.inputs]
    lab, craft = labels(args.data_dir)
    chans = sorted(set.intersection(*(set(r) for r in runs)))
    totals = defaultdict(lambda: [0, 0, 0])
    for ch in chans:
        pred = fused_anomalies([r[ch] for r in runs], args.buffer)
        tp, fp, fn = count(pred, lab.get(ch, []))
        for key in (craft.get(ch, "?"), "all"):
            for i, v in enumerate((tp, fp, fn)):
                totals[key][i] += v
        if args.per_channel:
            print(f"{ch:6} tp {tp} fp {fp} fn {fn}  pred {pred}")
    print(f"{len(chans)} channels; margin fusion of {', '.join(os.path.basename(p) for p in args.inputs)}")
    print("| spacecraft | TP | FP | FN | precision | recall | F1 | F0.5 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in sorted(totals, key=lambda k: (k == "all", k)):
        tp, fp, fn = totals[key]
        p, r, f1, f05 = rates(tp, fp, fn)
        print(f"| {key} | {tp} | {fp} | {fn} | {p:.3f} | {r:.3f} | {f1:.3f} | {f05:.3f} |")


if __name__ == "__main__":
    main()
