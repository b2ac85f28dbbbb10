#!/usr/bin/env python3
"""Write a gsinfer configuration serving every per-channel model of one family.

Scans a model repository for `<family>_<chan>/config.pbtxt` folders that hold a
version folder with `model.onnx` (as written by tools/train_models.py and
tools/make_baselines.py) and writes one `[[pipeline]]` per channel model: model
`<family>_<chan>`, topic `telemetry/<spacecraft>/<chan>`, channels [<chan>],
the features its config.pbtxt declares (25 on SMAP, 55 on MSL: one file mixes
spacecraft), the family's window (lstm and lstm3 250, vae 50, tfm 64, persist 2,
nn 50, zscore 1; stride 1 unless --stride), the scoring kind (forecast for lstm, lstm3, tfm and persist,
reconstruction for vae, nn and zscore) and the threshold method (the zscore
baseline is always a static 3: a z-score above 3 is anomalous).

The spacecraft of a channel comes from `--data-dir`'s labeled_anomalies.csv
when given, else from --spacecraft.

Usage:
    python3 tools/make_config.py --repo model_repository --family lstm \\
        --threshold ndt --out config/smap_lstm.toml [--broker-port 1883] \\
        [--repository-path ../model_repository] [--spacecraft SMAP] [--static-value 0.5] \\
        [--data-dir ../shared/data/telemanom] [--channels A-1,C-1]

`--repository-path` is written as `[repository] path`; gsinfer takes it
relative to the configuration file's folder (default "../model_repository",
right for config/*.toml of this repository).

Needs only the Python standard library.
"""
import argparse
import os
import re
import sys

FAMILIES = {
    "lstm": {"window": 250, "kind": "forecast"},
    # the mean of three seeds' LSTMs (tools/mean_ensemble.py; EVALUATION.md 12.)
    "lstm3": {"window": 250, "kind": "forecast"},
    "vae": {"window": 50, "kind": "reconstruction", "extra": "reconstruction_features = [0], "},
    "tfm": {"window": 64, "kind": "forecast"},
    "persist": {"window": 2, "kind": "forecast"},
    "nn": {"window": 50, "kind": "reconstruction", "extra": "reconstruction_features = [0], "},
    "zscore": {"window": 1, "kind": "reconstruction", "extra": "reconstruction_features = [0], ",
               "span": 1.0, "threshold": '{ method = "static", value = 3.0 }'},
}


def chan_key(ch):
    head, _, num = ch.partition("-")
    return (head, int(num) if num.isdigit() else 0, ch)


def find_models(repo, family):
    """[(channel, model name, input dims)] of the family's models in `repo`."""
    found = []
    prefix = family + "_"
    for name in sorted(os.listdir(repo)):
        d = os.path.join(repo, name)
        cfg = os.path.join(d, "config.pbtxt")
        if not name.startswith(prefix) or not os.path.isfile(cfg):
            continue
        versions = [v for v in os.listdir(d) if v.isdigit() and os.path.isfile(os.path.join(d, v, "model.onnx"))]
        if not versions:
            print(f"warning: {name} has no <version>/model.onnx; left out", file=sys.stderr)
            continue
        text = open(cfg).read()
        m = re.search(r'input\s*\[\s*\{[^}]*?dims:\s*\[\s*([0-9,\s]+)\]', text)
        dims = [int(x) for x in m.group(1).replace(",", " ").split()] if m else None
        found.append((name[len(prefix):], name, dims))
    found.sort(key=lambda t: chan_key(t[0]))
    return found


def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True, help="model repository to scan")
    ap.add_argument("--family", required=True,
                    help=f"one of {', '.join(sorted(FAMILIES))}, or several comma-separated "
                         "(pipelines of each, on the channels that have all of them)")
    ap.add_argument("--threshold", required=True, choices=["ndt", "pot", "static"])
    ap.add_argument("--static-value", type=float, default=0.5, help="value of the static threshold")
    ap.add_argument("--out", required=True, help="TOML file to write")
    ap.add_argument("--broker-port", type=int, default=1883)
    ap.add_argument("--repository-path", default="../model_repository",
                    help="[repository] path, relative to the configuration file's folder")
    ap.add_argument("--spacecraft", default="SMAP", help="topic level: telemetry/<spacecraft>/<chan>")
    ap.add_argument("--latency-budget-us", type=int, default=20000)
    ap.add_argument("--data-dir", default=None,
                    help="data set whose labeled_anomalies.csv names each channel's spacecraft")
    ap.add_argument("--channels", default=None, help="only these channels (comma-separated)")
    ap.add_argument("--stride", default="",
                    help="window strides of forecasting families, e.g. lstm=5: one window in five is run and "
                         "each scores its forecast's first five steps (EVALUATION.md, 11.); default 1")
    ap.add_argument("--ensemble-votes", type=int, default=None,
                    help="with several families: add an [[ensemble]] 'vote' fusing them per "
                         "channel, raising an anomaly when this many agree (e.g. 2 of 4)")
    ap.add_argument("--trusted-only", action="store_true",
                    help="with --ensemble-votes: only members with no alarm on their channel's "
                         "nominal data vote there (run tools/nominal_alarms.py on the repository)")
    args = ap.parse_args()

    families = [f.strip() for f in args.family.split(",") if f.strip()]
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f"unknown family {f!r}; choose from {', '.join(sorted(FAMILIES))}")
    found = {f: {c: (name, dims) for c, name, dims in find_models(args.repo, f)} for f in families}
    chans = sorted(set.intersection(*(set(v) for v in found.values())), key=chan_key)
    if args.channels:
        wanted = [c for c in args.channels.split(",") if c]
        chans = [c for c in chans if c in wanted]
    if not chans:
        raise SystemExit(f"no channel has a model of every family {families} "
                         f"(<family>_<chan>/config.pbtxt with a <version>/model.onnx) under {args.repo}")
    for f in families:
        for c in chans:
            name, dims = found[f][c]
            if dims is None or len(dims) != 2 or dims[0] != FAMILIES[f]["window"]:
                raise SystemExit(f"{name}: input dims {dims} in config.pbtxt, expected [{FAMILIES[f]['window']}, F]")
    crafts = {}
    if args.data_dir:
        import csv
        with open(os.path.join(args.data_dir, "labeled_anomalies.csv"), newline="") as fh:
            crafts = {r["chan_id"].strip(): r["spacecraft"].strip() for r in csv.DictReader(fh)}
    craft_names = sorted({crafts.get(c, args.spacecraft) for c in chans})

    out_dir = os.path.dirname(os.path.abspath(args.out))
    resolved = os.path.normpath(os.path.join(out_dir, args.repository_path))
    if resolved != os.path.normpath(os.path.abspath(args.repo)):
        print(f"warning: [repository] path {args.repository_path!r} resolves to {resolved}, "
              f"not to --repo {os.path.abspath(args.repo)}", file=sys.stderr)

    def threshold_of(fam):
        if "threshold" in fam:
            return fam["threshold"]
        if args.threshold == "static":
            return f'{{ method = "static", value = {args.static_value} }}'
        return f'{{ method = "{args.threshold}" }}'

    what = " + ".join(families)
    lines = [
        f"# gsinfer configuration: one {what} model per {'/'.join(craft_names)} channel ({len(chans)} channels),",
        f"# {args.threshold} threshold" + (f", fused by a {args.ensemble_votes}-of-{len(families)} vote"
                                            if args.ensemble_votes else "") + ". Written by tools/make_config.py:",
        "#   " + " ".join(["python3", "tools/make_config.py"] + sys.argv[1:]),
        "#",
        "# Every key can be overridden from the environment as GSINFER__<SECTION>__<KEY>;",
        "# relative paths are taken from this file's folder.",
        "",
        "[broker]",
        'host = "127.0.0.1"',
        f"port = {args.broker_port}",
        f'client_id = "gsinfer-{families[0] if len(families) == 1 else "ensemble"}"'
        "   # stable and unique per service: the persistent session is keyed by it",
        "",
        "[status]",
        'listen = "127.0.0.1:8080"',
        "",
        "[repository]",
        f"path = {toml_str(args.repository_path)}",
    ]
    strides = {}
    for item in filter(None, (x.strip() for x in args.stride.split(","))):
        f, _, n = item.partition("=")
        if f not in families or FAMILIES[f]["kind"] != "forecast" or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--stride {item!r}: give FAMILY=N for a forecasting family of --family, N >= 1")
        strides[f] = int(n)
    for chan in chans:
        craft = crafts.get(chan, args.spacecraft)
        for f in families:
            fam = FAMILIES[f]
            name, dims = found[f][chan]
            lines += [
                "",
                "[[pipeline]]",
                f"model = {toml_str(name)}",
                f"topics = [{toml_str(f'telemetry/{craft}/{chan}')}]",
                f"channels = [{toml_str(chan)}]",
                'format = "json"',
                f"features = {dims[1]}",
                f"window = {{ length = {fam['window']}, stride = {strides.get(f, 1)} }}",
                f"batch = {{ latency_budget_us = {args.latency_budget_us}, queue_capacity = 4096 }}",
                f'scoring = {{ kind = "{fam["kind"]}", target_feature = 0, smoothing_span = {fam.get("span", 105.0)}, '
                f"{fam.get('extra', '')}event_hold = 1, threshold = {threshold_of(fam)} }}",
            ]
    if args.ensemble_votes:
        if len(families) < 2 or not 1 <= args.ensemble_votes <= len(families):
            raise SystemExit(f"--ensemble-votes needs several families and 1..{len(families)} votes")
        models = ", ".join(toml_str(f + "_{channel}") for f in families)
        lines += [
            "",
            "# The anomalies of the families on each channel, fused: a cluster of overlapping",
            f"# anomalies is raised when {args.ensemble_votes} of the {len(families)} models flag part of it",
            "# (events under model \"vote\"; EVALUATION.md measures it).",
            "[[ensemble]]",
            'name = "vote"',
            f"models = [{models}]",
            f"min_votes = {args.ensemble_votes}",
        ]
        if args.trusted_only:
            lines[-4:-4] = [
                "# trusted_only: on each channel, a member that alarmed on its own train split",
                "# (config.pbtxt nominal_alarms, tools/nominal_alarms.py) does not vote there.",
            ]
            lines.append("trusted_only = true")
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {len(chans)} channels x {what}"
          + (f", ensemble {args.ensemble_votes}-of-{len(families)}" if args.ensemble_votes else ""))


if __name__ == "__main__":
    main()
