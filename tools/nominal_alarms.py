#!/usr/bin/env python3
"""Count each per-channel model's alarms on its own channel's nominal data and
record them in its config.pbtxt (`nominal_alarms`), for trusted-vote ensembles.

Nominal data: every channel's *train* split (the data the model was trained
and validated on, which the telemanom data set labels as free of anomalies),
replayed cold as if it were a test split, through the same pipeline the
configuration serves (window, warm-up, smoothing, NDT): `gsinfer eval --all
--metrics --json` on a temporary data set whose test/<chan>.npy is the train
split and whose labels list no anomaly. Every anomaly predicted there is an
alarm on nominal data. The count is written into the model's config.pbtxt as

    parameters { key: "nominal_alarms" value { string_value: "N" } }

(replacing an earlier one), where gsinfer reads it at load: it shows it on the
status page and in the journal, and an `[[ensemble]]` with `trusted_only =
true` does not count the vote of a model whose count is above 0 on that
channel (EVALUATION.md, "5. Members that alarm on their own channel's nominal
data"). No test split and no label is read.

Usage:
    python3 tools/nominal_alarms.py --config config/reference.toml --ensemble vote \\
        --data-dir ../shared/data/telemanom [--repo model_repository] [--gsinfer target/release/gsinfer]
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib


def nominal_dataset(data_dir, out):
    """Writes out/{train,test}/<chan>.npy (both the train split) and labels with no anomaly."""
    train = os.path.join(data_dir, "train")
    crafts = {}
    labels = os.path.join(data_dir, "labeled_anomalies.csv")
    if os.path.exists(labels):
        with open(labels, newline="") as fh:
            crafts = {r["chan_id"].strip(): r["spacecraft"].strip() for r in csv.DictReader(fh)}
    os.makedirs(os.path.join(out, "train"))
    os.makedirs(os.path.join(out, "test"))
    chans = sorted(f[:-4] for f in os.listdir(train) if f.endswith(".npy"))
    for ch in chans:
        src = os.path.abspath(os.path.join(train, ch + ".npy"))
        for split in ("train", "test"):
            os.symlink(src, os.path.join(out, split, ch + ".npy"))
    with open(os.path.join(out, "labeled_anomalies.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["chan_id", "spacecraft", "anomaly_sequences", "class", "num_values"])
        for ch in chans:
            w.writerow([ch, crafts.get(ch, "?"), "[]", "[]", ""])
    return chans


def count_alarms(gsinfer, config, data, model):
    """{model name: alarms} over every channel `model` (a `{channel}` template) serves."""
    cmd = [gsinfer, "eval", "-c", config, "--data-dir", data, "--all", "--metrics", "--json",
           "--model", model]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{run.stderr.strip()}")
    out = {}
    for line in run.stdout.splitlines():
        o = json.loads(line)
        if o.get("type") == "metrics":
            out[o["model"]] = len(o["anomalies"])
    return out


PARAM = re.compile(r'^parameters\s*\{\s*key:\s*"nominal_alarms".*\n?', re.M)
COMMENT = ("# Alarms this model raised on its channel's train split replayed as nominal\n"
           "# data (tools/nominal_alarms.py); above 0, an [[ensemble]] with\n"
           "# trusted_only = true does not count its vote on this channel.\n")


def record(repo, model, alarms):
    """Writes (or replaces) the nominal_alarms parameter of repo/model/config.pbtxt, atomically."""
    path = os.path.join(repo, model, "config.pbtxt")
    with open(path) as fh:
        text = PARAM.sub("", fh.read()).replace(COMMENT, "")
    if not text.endswith("\n"):
        text += "\n"
    text += COMMENT + f'parameters {{ key: "nominal_alarms" value {{ string_value: "{alarms}" }} }}\n'
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="gsinfer configuration serving the models")
    ap.add_argument("--ensemble", required=True, help="[[ensemble]] whose members are counted")
    ap.add_argument("--data-dir", required=True, help="data set in the telemanom layout (train/ is read)")
    ap.add_argument("--repo", default=None, help="model repository to write (default: the config's)")
    ap.add_argument("--gsinfer", default="target/release/gsinfer")
    args = ap.parse_args()
    with open(args.config, "rb") as fh:
        config = tomllib.load(fh)
    ensembles = [e for e in config.get("ensemble", []) if e.get("name") == args.ensemble]
    if not ensembles:
        sys.exit(f"error: {args.config}: no [[ensemble]] is named {args.ensemble}")
    repo = args.repo or os.path.normpath(os.path.join(os.path.dirname(args.config),
                                                      config["repository"]["path"]))
    with tempfile.TemporaryDirectory() as tmp:
        chans = nominal_dataset(args.data_dir, tmp)
        total = {}
        for member in ensembles[0]["models"]:
            counts = count_alarms(args.gsinfer, args.config, tmp, member)
            for model, alarms in sorted(counts.items()):
                record(repo, model, alarms)
            total[member] = (sum(1 for a in counts.values() if a), len(counts))
            print(f"{member}: {total[member][0]} of {total[member][1]} channels alarmed on nominal data "
                  f"({sum(counts.values())} alarms)")
    print(f"{len(chans)} channels; nominal_alarms written under {repo}")


if __name__ == "__main__":
    main()
