#!/usr/bin/env python3
"""Merge several ONNX models of one channel into one model whose output is
the element-wise mean of theirs (a deep ensemble: Lakshminarayanan, Pritzel,
Blundell, "Simple and Scalable Predictive Uncertainty Estimation using Deep
Ensembles", NeurIPS 2017; EVALUATION.md 12.).

Every member must have the same single input and single output (name,
element type and shape), as the models `tools/train_models.py` writes for
one family and channel with different `--seed`s do. The merged graph feeds
the input to each member's nodes (renamed with a prefix `m<k>_`) and joins
their outputs with one ONNX `Mean` node under the original output name, so
the merged model is a drop-in replacement: same input, same output, the
config.pbtxt unchanged. It runs the members one after another (its cost is
the sum of theirs).

Usage, one model:
    python3 tools/mean_ensemble.py --out merged.onnx a.onnx b.onnx c.onnx

or a whole repository: for every `<family>_<chan>` folder of --repo that
every --member repository also holds, write --out/<family>_<chan>/ with the
merged 1/model.onnx and --repo's config.pbtxt (with `--as NAME`, as
--out/NAME_<chan>/, the config.pbtxt's `name:` changed to match and a note
on the members put above it; the shipped `lstm3_<chan>` models):
    python3 tools/mean_ensemble.py --repo model_repository --family lstm \\
        --member /tmp/seeds/s43 --member /tmp/seeds/s44 --as lstm3 --out model_repository
"""
import argparse
import os
import shutil
import sys

import onnx
from onnx import compose, helper


def _signature(model):
    g = model.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise ValueError("each member must have exactly one input and one output")
    return g.input[0], g.output[0]


def merge(models):
    """One ModelProto whose output is the mean of `models`' outputs."""
    if len(models) < 2:
        raise ValueError("a mean ensemble needs at least two members")
    inp, out = _signature(models[0])
    for m in models[1:]:
        i, o = _signature(m)
        if (i.name, i.type, o.name, o.type) != (inp.name, inp.type, out.name, out.type):
            raise ValueError(
                f"members differ: {i.name}/{o.name} against {inp.name}/{out.name} (or their types)"
            )
    nodes, inits, outs = [], [], []
    for k, m in enumerate(models):
        p = compose.add_prefix(m, prefix=f"m{k}_")
        g = p.graph
        # The member's renamed input is fed from the shared one.
        nodes.append(helper.make_node("Identity", [inp.name], [g.input[0].name], name=f"m{k}_in"))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        outs.append(g.output[0].name)
    nodes.append(helper.make_node("Mean", outs, [out.name], name="mean"))
    graph = helper.make_graph(nodes, "mean_ensemble", [inp], [out], initializer=inits)
    merged = helper.make_model(
        graph,
        opset_imports=list(models[0].opset_import),
        producer_name="gsinfer tools/mean_ensemble.py",
    )
    merged.ir_version = models[0].ir_version
    onnx.checker.check_model(merged)
    return merged


def renamed(text, name, out_name, members):
    """`text` (a member's config.pbtxt) for the merged model `out_name`."""
    line = f'name: "{name}"'
    if line not in text:
        raise ValueError(f"{name}/config.pbtxt has no `{line}` line")
    note = (f"# {out_name}: the mean forecast of {members} models of {name}'s family and channel,\n"
            f"# trained alike with different seeds (--seed 42 = {name} itself, 43, 44, ...)\n"
            f"# and merged into one ONNX graph by tools/mean_ensemble.py (a deep ensemble;\n"
            f"# EVALUATION.md 12.). Same input and output as {name}; {members} times its cost.\n"
            f"# What follows is {name}'s own description.\n#\n")
    return note + text.replace(line, f'name: "{out_name}"', 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", help="member ONNX files (single-model form)")
    ap.add_argument("--out", required=True, help="merged ONNX file, or repository to write")
    ap.add_argument("--repo", help="repository of the first member (its config.pbtxt is copied)")
    ap.add_argument("--member", action="append", default=[], help="repository of a further member")
    ap.add_argument("--family", help="only <family>_<chan> folders")
    ap.add_argument("--as", dest="rename", help="write NAME_<chan> folders (needs --family)")
    args = ap.parse_args()
    if not args.repo:
        onnx.save(merge([onnx.load(p) for p in args.inputs]), args.out)
        return 0
    if args.inputs or not args.member:
        ap.error("--repo takes --member repositories and no ONNX files")
    if args.rename and not args.family:
        ap.error("--as needs --family")
    done = 0
    for name in sorted(os.listdir(args.repo)):
        if args.family and not name.startswith(args.family + "_"):
            continue
        paths = [os.path.join(r, name, "1", "model.onnx") for r in [args.repo, *args.member]]
        if not all(os.path.exists(p) for p in paths):
            continue
        out_name = args.rename + name[len(args.family):] if args.rename else name
        dest = os.path.join(args.out, out_name)
        os.makedirs(os.path.join(dest, "1"), exist_ok=True)
        onnx.save(merge([onnx.load(p) for p in paths]), os.path.join(dest, "1", "model.onnx"))
        with open(os.path.join(args.repo, name, "config.pbtxt")) as fh:
            text = fh.read()
        if args.rename:
            text = renamed(text, name, out_name, len(paths))
        with open(os.path.join(dest, "config.pbtxt"), "w") as fh:
            fh.write(text)
        done += 1
    print(f"wrote {done} merged models of {1 + len(args.member)} members into {args.out}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
