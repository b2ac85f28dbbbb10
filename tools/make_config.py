#!/usr/bin/env python3
"""Write a gsinfer configuration serving every per-channel model of one family.

Scans a model repository for `<family>_<chan>/config.pbtxt` folders that hold a
version folder with `model.onnx` (as written by tools/train_models.py) and
writes one `[[pipeline]]` per channel model: model `<family>_<chan>`, topic
`telemetry/SMAP/<chan>`, channels [<chan>], 25 features, the family's window
(lstm 250, vae 50, tfm 64, stride 1), the scoring kind (forecast for lstm and
tfm, reconstruction for vae) and the threshold method.

Usage:
    python3 tools/make_config.py --repo model_repository --family lstm \\
        --threshold ndt --out config/smap_lstm.toml [--broker-port 1883] \\
        [--repository-path ../model_repository] [--spacecraft SMAP] [--static-value 0.5]

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
    "vae": {"window": 50, "kind": "reconstruction", "extra": "reconstruction_features = [0], "},
    "tfm": {"window": 64, "kind": "forecast"},
}
FEATURES = 25


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
    ap.add_argument("--family", required=True, choices=sorted(FAMILIES))
    ap.add_argument("--threshold", required=True, choices=["ndt", "pot", "static"])
    ap.add_argument("--static-value", type=float, default=0.5, help="value of the static threshold")
    ap.add_argument("--out", required=True, help="TOML file to write")
    ap.add_argument("--broker-port", type=int, default=1883)
    ap.add_argument("--repository-path", default="../model_repository",
                    help="[repository] path, relative to the configuration file's folder")
    ap.add_argument("--spacecraft", default="SMAP", help="topic level: telemetry/<spacecraft>/<chan>")
    ap.add_argument("--latency-budget-us", type=int, default=20000)
    args = ap.parse_args()

    fam = FAMILIES[args.family]
    models = find_models(args.repo, args.family)
    if not models:
        raise SystemExit(f"no {args.family}_<chan>/config.pbtxt with a <version>/model.onnx under {args.repo}")
    for chan, name, dims in models:
        if dims is not None and dims != [fam["window"], FEATURES]:
            raise SystemExit(f"{name}: input dims {dims} in config.pbtxt, expected [{fam['window']}, {FEATURES}]")

    out_dir = os.path.dirname(os.path.abspath(args.out))
    resolved = os.path.normpath(os.path.join(out_dir, args.repository_path))
    if resolved != os.path.normpath(os.path.abspath(args.repo)):
        print(f"warning: [repository] path {args.repository_path!r} resolves to {resolved}, "
              f"not to --repo {os.path.abspath(args.repo)}", file=sys.stderr)

    if args.threshold == "static":
        threshold = f'{{ method = "static", value = {args.static_value} }}'
    else:
        threshold = f'{{ method = "{args.threshold}" }}'

    lines = [
        f"# gsinfer configuration: one {args.family} model per SMAP channel ({len(models)} channels),",
        f"# {fam['kind']} scoring, {args.threshold} threshold. Written by tools/make_config.py:",
        "#   " + " ".join(["python3", "tools/make_config.py"] + sys.argv[1:]),
        "#",
        "# Every key can be overridden from the environment as GSINFER__<SECTION>__<KEY>;",
        "# relative paths are taken from this file's folder.",
        "",
        "[broker]",
        'host = "127.0.0.1"',
        f"port = {args.broker_port}",
        f'client_id = "gsinfer-{args.family}"   # stable and unique per service: the persistent session is keyed by it',
        "",
        "[status]",
        'listen = "127.0.0.1:8080"',
        "",
        "[repository]",
        f"path = {toml_str(args.repository_path)}",
    ]
    for chan, name, _ in models:
        lines += [
            "",
            "[[pipeline]]",
            f"model = {toml_str(name)}",
            f"topics = [{toml_str(f'telemetry/{args.spacecraft}/{chan}')}]",
            f"channels = [{toml_str(chan)}]",
            'format = "json"',
            f"features = {FEATURES}",
            f"window = {{ length = {fam['window']}, stride = 1 }}",
            f"batch = {{ latency_budget_us = {args.latency_budget_us}, queue_capacity = 4096 }}",
            f'scoring = {{ kind = "{fam["kind"]}", target_feature = 0, smoothing_span = 105.0, '
            f"{fam.get('extra', '')}event_hold = 1, threshold = {threshold} }}",
        ]
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {len(models)} {args.family} pipelines, threshold {args.threshold}")


if __name__ == "__main__":
    main()
