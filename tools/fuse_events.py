#!/usr/bin/env python3
"""Measure event-level fusion of detector families offline, from `gsinfer eval --json --metrics`.

Each input is the JSON-lines output of one `gsinfer eval --all --metrics --json`
run (one family, one or more thresholds). For every channel present in all
inputs (same threshold variant, chosen with --variant, default the first of
each file) this fuses the families' predicted anomalies and counts them as
gsinfer and telemanom do (a label overlapped by a prediction is one true
positive, a prediction overlapping no label a false positive):

  any   union: an anomaly of any family is an anomaly (overlapping ones merged)
  k-of-n a merged anomaly is kept when at least k families predicted part of it
         (2-of-2 = all, 2-of-3 = majority)

and prints per spacecraft (labeled_anomalies.csv) and overall: tp, fp, fn,
precision, recall, F1, F0.5. It is a measuring tool for EVALUATION.md, not
part of gsinfer's serving path.

With --search SPACECRAFT it instead ranks every candidate rule: each family
alone and k-of-n for every subset of two or more families and every k, by
F1 on SPACECRAFT's channels (the development set), ties by F0.5, then fewer
members, then larger k, and prints the --top best with every other
spacecraft's counts beside them (those are reported, never used to rank).
With --trust NOMINAL... (one `gsinfer eval --all --metrics --json` file per
input, in the same order, run on a data set whose labels mark no anomaly,
e.g. each channel's train split replayed as its test split) the k-of-n rules
are also counted as *trusted votes*: on each channel only the families that
raised no alarm on its nominal data vote; when fewer than k are trusted, the
plain k-of-n over every family applies.

With --skill SKILL_JSON (tools/validation_skill.py) the trusted votes also
apply the skill gate of EVALUATION.md, 8.: an input named lstm or tfm (by its
file name) does not vote on a channel where its validation skill against
persistence is <= 0 or undefined.

With --cv K it also estimates how the search itself generalises across
channels (nested leave-channels-out): SPACECRAFT's channels are shuffled
(--seeds) into K folds; for each fold the search runs on the other K-1 and
its winner is counted on the held-out fold; the held-out counts are summed.

--search both ranks by F1 over the pooled counts of every spacecraft's
channels (EVALUATION.md, 9.). With --cv, each spacecraft's channels are
shuffled and dealt to the K folds separately, and on the same folds the
search is run twice: on the training channels of every spacecraft
("both") and on those of SMAP only ("SMAP", the procedure before); the
held-out counts of each are summed per spacecraft.

Usage:
    python3 tools/fuse_events.py --data-dir ../shared/data/telemanom \\
        lstm.jsonl vae.jsonl [tfm.jsonl] [--variant 0] [--rules any,2]
    python3 tools/fuse_events.py --data-dir ../shared/data/telemanom \\
        lstm.jsonl vae.jsonl tfm.jsonl persist.jsonl --search SMAP [--top 10]
"""
import argparse
import csv
import itertools
import json
import os
import random


def merge(spans):
    out = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [tuple(s) for s in out]


def overlaps(x, y):
    return x[0] <= y[1] and y[0] <= x[1]


def fuse(per_family, k):
    """Merged anomalies kept when at least k families predicted part of them."""
    merged = merge([s for spans in per_family for s in spans])
    return [m for m in merged if sum(any(overlaps(m, s) for s in spans) for spans in per_family) >= k]


def trusted(per_family, nominal_alarms, k):
    """k-of-n over the families with no alarm on nominal data; the plain k-of-n if fewer than k are."""
    keep = [spans for spans, alarms in zip(per_family, nominal_alarms) if alarms == 0]
    return fuse(keep if len(keep) >= k else per_family, k)


def count(pred, labels):
    tp = sum(1 for l in labels if any(overlaps(p, l) for p in pred))
    fp = sum(1 for p in pred if not any(overlaps(p, l) for l in labels))
    return tp, fp, len(labels) - tp


def rates(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = lambda b2: (1 + b2) * p * r / (b2 * p + r) if p + r else 0.0  # noqa: E731
    return p, r, f(1.0), f(0.25)


def load(path, variant):
    """{channel: (labels, anomalies)} of one threshold variant of an eval --json --metrics file."""
    seen, out = [], {}
    with open(path) as fh:
        for line in fh:
            o = json.loads(line)
            if o.get("type") != "metrics":
                continue
            key = json.dumps(o["threshold"], sort_keys=True)
            if key not in seen:
                seen.append(key)
            if seen.index(key) != variant:
                continue
            big = 2**63
            out[o["channel"]] = ([tuple(l) for l in o["labels"]],
                                 [(a, min(b, big)) for a, b in o["anomalies"]])
    return out


def all_rules(families):
    """Every family alone, and k-of-n for every subset of two or more and every k."""
    return [(sub, k) for n in range(1, families + 1)
            for sub in itertools.combinations(range(families), n)
            for k in (range(1, n + 1) if n > 1 else [1])]


def rule_name(names, sub, k):
    return f"{k}-of-{'+'.join(names[i] for i in sub)}" if len(sub) > 1 else names[sub[0]]


def rank(runs, rules, chans, key_of):
    """`rules` with their per-group counts over `chans`, best first by `key_of(totals)`."""
    ranked = []
    for sub, k in rules:
        totals = {}
        for ch in chans:
            pred = fuse([runs[i][ch][1] for i in sub], k)
            t = totals.setdefault(key_of(ch), [0, 0, 0])
            for j, v in enumerate(count(pred, runs[sub[0]][ch][0])):
                t[j] += v
        ranked.append((sub, k, totals))
    return ranked


def by_f1(develop):
    def key(r):
        _, _, f1, f05 = rates(*r[2].get(develop, [0, 0, 0]))
        return (round(f1, 9), round(f05, 9), -len(r[0]), r[1])
    return key


def cross_validate(runs, names, chans, craft, develop, folds, seeds):
    """Nested leave-channels-out estimate of the search (see the module doc)."""
    rules = all_rules(len(runs))
    dev = sorted(ch for ch in chans if craft.get(ch, "?") == develop)
    for seed in seeds:
        order = dev[:]
        random.Random(seed).shuffle(order)
        held, winners = [0, 0, 0], []
        for f in range(folds):
            test = order[f::folds]
            train = [ch for ch in dev if ch not in test]
            sub, k, _ = max(rank(runs, rules, train, lambda ch: develop), key=by_f1(develop))
            winners.append(rule_name(names, sub, k))
            for j, v in enumerate(rank(runs, [(sub, k)], test, lambda ch: develop)[0][2][develop]):
                held[j] += v
        p, r, f1, f05 = rates(*held)
        print(f"{develop} held out, seed {seed}: tp {held[0]} fp {held[1]} fn {held[2]}  "
              f"P {p:.3f} R {r:.3f} F1 {f1:.3f} F0.5 {f05:.3f}; winners {', '.join(winners)}")


def cross_validate_both(runs, names, chans, craft, folds, seeds):
    """Nested leave-channels-out of the pooled search against the SMAP-only one (see the module doc)."""
    rules = all_rules(len(runs))
    crafts = sorted(set(craft.get(ch, "?") for ch in chans))
    pooled = lambda ch: "both"  # noqa: E731
    for seed in seeds:
        rng = random.Random(seed)
        fold_of = {}
        for c in crafts:
            order = sorted(ch for ch in chans if craft.get(ch, "?") == c)
            rng.shuffle(order)
            for i, ch in enumerate(order):
                fold_of[ch] = i % folds
        held = {p: {c: [0, 0, 0] for c in crafts} for p in ("both", "SMAP")}
        winners = {"both": [], "SMAP": []}
        for f in range(folds):
            test = [ch for ch in chans if fold_of[ch] == f]
            train = [ch for ch in chans if fold_of[ch] != f]
            picks = {
                "both": max(rank(runs, rules, train, pooled), key=by_f1("both")),
                "SMAP": max(rank(runs, rules, [ch for ch in train if craft.get(ch) == "SMAP"],
                                 lambda ch: "SMAP"), key=by_f1("SMAP")),
            }
            for proc, (sub, k, _) in picks.items():
                winners[proc].append(rule_name(names, sub, k))
                counted = rank(runs, [(sub, k)], test, lambda ch: craft.get(ch, "?"))[0][2]
                for c, t in counted.items():
                    for j, v in enumerate(t):
                        held[proc][c][j] += v
        for proc in ("both", "SMAP"):
            cols = []
            for c in crafts:
                tp, fp, fn = held[proc][c]
                _, _, f1, f05 = rates(tp, fp, fn)
                cols.append(f"{c} {tp}/{fp}/{fn} F1 {f1:.3f} F0.5 {f05:.3f}")
            print(f"held out, seed {seed}, chosen on {proc:4s}: " + " | ".join(cols)
                  + f"; winners {', '.join(winners[proc])}")


def search(runs, names, chans, craft, develop, top):
    """Ranks every rule by F1 on the `develop` spacecraft, or pooled over all with "both" (see the module doc)."""
    crafts = sorted(set(craft.get(ch, "?") for ch in chans))
    ranked = rank(runs, all_rules(len(runs)), chans, lambda ch: craft.get(ch, "?"))
    if develop == "both":
        for r in ranked:
            r[2]["both"] = [sum(t[j] for t in list(r[2].values())) for j in range(3)]
    ranked.sort(key=by_f1(develop), reverse=True)
    for sub, k, totals in ranked[:top]:
        rule = rule_name(names, sub, k)
        cols = []
        for g in [develop] + [c for c in crafts if c != develop]:
            tp, fp, fn = totals.get(g, [0, 0, 0])
            _, _, f1, f05 = rates(tp, fp, fn)
            cols.append(f"{g} {tp}/{fp}/{fn} F1 {f1:.3f} F0.5 {f05:.3f}")
        print(f"{rule:40s} " + " | ".join(cols))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--variant", type=int, default=0, help="threshold variant index within each file")
    ap.add_argument("--rules", default="any,2", help="any, and/or k for k-of-n (comma-separated)")
    ap.add_argument("--search", metavar="SPACECRAFT", default=None,
                    help="rank every k-of-n rule over every subset by F1 on this spacecraft's channels "
                         "(both: pooled over every spacecraft)")
    ap.add_argument("--top", type=int, default=10, help="rules printed by --search")
    ap.add_argument("--trust", nargs="+", default=None, metavar="NOMINAL",
                    help="one eval --json --metrics file per input on nominal data: also count trusted votes")
    ap.add_argument("--skill", default=None, metavar="SKILL_JSON",
                    help="with --trust: gate lstm/tfm inputs by tools/validation_skill.py's skill (> 0 votes)")
    ap.add_argument("--cv", type=int, default=0, metavar="K",
                    help="with --search: also a nested K-fold leave-channels-out estimate of the search")
    ap.add_argument("--seeds", default="0,1,2", help="channel shuffles for --cv")
    args = ap.parse_args()
    runs = [load(p, args.variant) for p in args.inputs]
    chans = sorted(set.intersection(*(set(r) for r in runs)))
    with open(os.path.join(args.data_dir, "labeled_anomalies.csv"), newline="") as fh:
        craft = {r["chan_id"].strip(): r["spacecraft"].strip() for r in csv.DictReader(fh)}
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    names = [os.path.basename(p) for p in args.inputs]
    if args.search:
        names = [n.rsplit(".", 1)[0] for n in names]
        search(runs, names, chans, craft, args.search, args.top)
        if args.cv:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            if args.search == "both":
                cross_validate_both(runs, names, chans, craft, args.cv, seeds)
            else:
                cross_validate(runs, names, chans, craft, args.search, args.cv, seeds)
        return
    nominal = None
    if args.trust:
        if len(args.trust) != len(runs):
            ap.error("--trust needs one nominal file per input, in the same order")
        nominal = [load(p, args.variant) for p in args.trust]
        rules += [f"trusted {r}" for r in rules if r != "any"]
    skill = None
    if args.skill:
        if nominal is None:
            ap.error("--skill needs --trust")
        with open(args.skill) as fh:
            skill = json.load(fh)
    family_of = [n.split(".")[0].split("_")[-1] for n in names]

    def unskilled(ch, i):
        if skill is None or family_of[i] not in ("lstm", "tfm"):
            return False
        s = skill.get(ch, {}).get(family_of[i])
        return s is None or s["skill"] is None or s["skill"] <= 0
    for rule in ["each"] + rules:
        for label, fam_ix in ([(n, [i]) for i, n in enumerate(names)] if rule == "each" else [(rule, None)]):
            groups = {}
            for ch in chans:
                labels = runs[0][ch][0]
                fams = [runs[i][ch][1] for i in (fam_ix or range(len(runs)))]
                if rule == "each":
                    pred = fams[0]
                elif rule.startswith("trusted "):
                    alarms = [len(n[ch][1]) if ch in n else 1 for n in nominal]
                    alarms = [1 if unskilled(ch, i) else a for i, a in enumerate(alarms)]
                    pred = trusted(fams, alarms, int(rule.split()[1]))
                else:
                    pred = fuse(fams, 1 if rule == "any" else int(rule))
                for g in (craft.get(ch, "?"), "all"):
                    t = groups.setdefault(g, [0, 0, 0])
                    for j, v in enumerate(count(pred, labels)):
                        t[j] += v
            for g, (tp, fp, fn) in sorted(groups.items()):
                p, r, f1, f05 = rates(tp, fp, fn)
                name = label if rule == "each" else f"fused {rule}" + ("" if rule == "any" else f"-of-{len(runs)}")
                name = name.replace("fused trusted ", "trusted ")
                print(f"{name:24s} {g:5s} tp {tp:3d} fp {fp:3d} fn {fn:3d}  P {p:.3f} R {r:.3f} F1 {f1:.3f} F0.5 {f05:.3f}")


if __name__ == "__main__":
    main()
