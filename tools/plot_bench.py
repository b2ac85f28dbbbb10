#!/usr/bin/env python3
"""Plots and tables for BENCHMARKS.md from what tools/bench_all.sh measured.

Reads bench-results/{engines,batcher,e2e}.json and the per-run latency CSVs,
and docs/benchmarks/gpu_reference.json; writes docs/benchmarks/*.png (each
titled with the machine and the date of its measurements) and
bench-results/tables.md (the tables BENCHMARKS.md quotes).

    python3 tools/plot_bench.py
"""
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench-results")
DOCS = os.path.join(ROOT, "docs/benchmarks")
FAMILY = {"smap_lstm": "LSTM forecaster (smap_lstm, lstm_*)", "tfm_A-1": "Transformer forecaster (tfm_*)",
          "vae_A-1": "MLP VAE (vae_*)"}
ENGINE = {"tract": "gsinfer, tract", "onnxruntime": "gsinfer, onnxruntime engine",
          "onnxruntime-python": "onnxruntime, Python API"}


def load(name, folder=RESULTS):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def machine(meta):
    return f"{meta.get('cores', 2)}-core {meta.get('cpu', 'x86-64')} ({meta.get('host', '?')}), {meta.get('date', '?')}"


def engines_plot(eng, lines):
    meta, table = eng["meta"], eng["table"]
    by = {(t["model"], t["batch"], t["engine"]): t for t in table}
    models = [m for m in FAMILY if any(t["model"] == m for t in table)]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for engine, style in (("tract", "o-"), ("onnxruntime", "s-"), ("onnxruntime-python", "^--")):
            pts = sorted((t["batch"], t["windows_per_s"]) for t in table if t["model"] == model and t["engine"] == engine)
            if pts:
                ax.plot(*zip(*pts), style, label=ENGINE[engine])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (windows)")
        ax.set_ylabel("windows/s, one thread")
        ax.set_title(FAMILY[model], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Engine throughput vs batch: {machine(meta)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, "throughput_vs_batch.png"), dpi=90)
    lines += ["### Parity (windows/s, one thread, median of rounds)", "",
              "| family | batch | tract | onnxruntime engine | onnxruntime Python | best gsinfer / Python |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for model in models:
        for b in sorted({t["batch"] for t in table if t["model"] == model}):
            tr, og, op = (by[(model, b, e)]["windows_per_s"] for e in ("tract", "onnxruntime", "onnxruntime-python"))
            lines.append(f"| {model} | {b} | {tr:,.0f} | {og:,.0f} | {op:,.0f} | {max(tr, og) / op:.2f}× |")
    lines += ["", f"Measured {meta['date']} on {meta['host']} ({meta['cpu']}, {meta['cores']} cores), "
              f"onnxruntime {meta['onnxruntime_python']}; load average at the end {meta['loadavg_end']}.", ""]


def read_csv(path):
    if not os.path.exists(os.path.join(ROOT, path)):
        return np.zeros((0, 2))  # a run whose raw file did not come back
    with open(os.path.join(ROOT, path)) as f:
        rows = list(csv.reader(f))[1:]
    return np.array([[float(a), float(b)] for a, b in rows]) if rows else np.zeros((0, 2))


def cdf(ax, data, label, style="-"):
    if len(data) == 0:
        return
    xs = np.sort(data)
    ys = np.arange(1, len(xs) + 1) / len(xs)
    ax.plot(xs, ys, style, label=label, linewidth=1.2)


def forecaster_plots(key, m, runs, lines, title):
    """CDFs, overload timeline and table of one forecaster experiment (`lstm`, `tfm`)."""
    model = m.get("model", "smap_lstm")
    loads = sorted({int(n.rsplit("-", 1)[1]) for n in runs if n.startswith(f"{key}-deadline-")})
    fig, axes = plt.subplots(2, len(loads), figsize=(4.2 * len(loads), 7), squeeze=False)
    for row, arrivals in enumerate(("poisson", "bursty")):
        for col, load in enumerate(loads):
            ax = axes[row][col]
            tag = f"{arrivals}-{load}"
            for name, label, style in ((f"{key}-deadline-{tag}", "gsinfer (deadline policy)", "-"),
                                       (f"{key}-max_queue_delay-{tag}", "Triton-style (max queue delay)", "--"),
                                       (f"{key}-relay-{tag}", "relay floor (2 hops)", ":"),
                                       (f"{key}-echo-{tag}", "broker floor (1 hop)", "-.")):
                if name in runs:
                    cdf(ax, read_csv(runs[name]["csv"])[:, 1], label, style)
            ax.set_xscale("log")
            ax.set_title(f"{arrivals}, {load} % of capacity", fontsize=9)
            ax.set_xlabel("latency ms")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("fraction of windows")
    axes[1][0].set_ylabel("fraction of windows")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{model} on onnxruntime, budget 20 ms, 2 channels; capacity {m['capacity_windows_per_s']:.0f} "
                 f"windows/s: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, "latency_cdf.png" if key == "lstm" else f"latency_cdf_{key}.png"), dpi=80)
    over = [lo for lo in loads if lo > 100]
    if over:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
        for ax, arrivals in zip(axes[0], ("poisson", "bursty")):
            for policy, label in (("deadline", "gsinfer (deadline)"), ("max_queue_delay", "Triton-style")):
                name = f"{key}-{policy}-{arrivals}-{over[0]}"
                if name in runs:
                    d = read_csv(runs[name]["csv"])
                    ax.plot(d[:, 0], d[:, 1], ".", markersize=1.5, label=label)
            ax.set_yscale("log")
            ax.set_xlabel("sample published at (s into the trace)")
            ax.set_ylabel("latency ms")
            ax.set_title(f"{arrivals}, {over[0]} % of capacity", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, markerscale=6)
        fig.suptitle(f"Overload: latency over time, {model}: {title}", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(DOCS, "overload_timeline.png" if key == "lstm" else f"overload_timeline_{key}.png"), dpi=80)
    lines += [f"### End-to-end latency, {model} on onnxruntime (ms; window's last sample published → its result "
              "received)", "",
              f"Capacity {m['capacity_windows_per_s']:.0f} windows/s measured under overload (the engine alone at "
              f"batch 64: {m['engine_b64_windows_per_s']:.0f} windows/s, {m['engine_b64_ms']:.1f} ms per batch).", "",
              "Engine busy: the engine's batch time over the trace's length, the load the run really put on "
              "the engine. Server p99.9: gsinfer's own view, window received to result out.", "",
              "| arrivals | load | run | results | dropped | engine busy | p50 | p99 | p99.9 | max | server p99.9 "
              "| RSS MiB (peak) |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arrivals in ("poisson", "bursty"):
        for load in loads:
            for kind in ("echo", "relay", "deadline", "max_queue_delay"):
                r = runs.get(f"{key}-{kind}-{arrivals}-{load}")
                if not r:
                    continue
                g = r.get("gsinfer", {})
                label = {"echo": "broker floor", "relay": "relay floor", "deadline": "gsinfer",
                         "max_queue_delay": "Triton-style"}[kind]
                ms = r["ms"]
                busy = server = ""
                if g:
                    b = sum(t * n for t, n in g["engine_ms_by_bucket"].values()) / 1e3
                    busy = f"{100 * b * r['achieved_rate'] / r['sent']:.0f} %"
                    lat = (g.get("server_us") or {}).get("latency_us") or {}
                    server = f"{lat['p999'] / 1e3:.1f}" if lat.get("p999") else ""
                lines.append(f"| {arrivals} | {load} % | {label} | {r['results']} | "
                             f"{int(g['dropped']) if g else ''} | {busy} | {ms['p50']:.2f} | {ms['p99']:.2f} | "
                             f"{ms['p999']:.2f} | {ms['max']:.2f} | {server} | "
                             f"{'%d (%d)' % (g['VmRSS'], g['VmHWM']) if g else ''} |")
    lines.append("")


def e2e_plots(e2e, lines):
    meta, runs = e2e["meta"], {r["name"]: r for r in e2e["runs"]}
    title = f"{meta['cores']}-core {meta.get('host', 'machine')}, {meta['date']}"
    for key in ("lstm", "tfm"):
        if key in meta:
            forecaster_plots(key, meta[key], runs, lines, title)
    if "vae" in meta:
        v = meta["vae"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, label, style in (("vae-onnxruntime-10k", "gsinfer, onnxruntime", "-"),
                                   ("vae-tract-10k", "gsinfer, tract", "--"),
                                   ("vae-relay-10k", "relay floor (2 hops)", ":"),
                                   ("vae-echo-10k", "broker floor (1 hop)", "-.")):
            if name in runs:
                cdf(ax, read_csv(runs[name]["csv"])[:, 1], label, style)
        ax.set_xscale("log")
        ax.set_xlabel("latency ms")
        ax.set_ylabel("fraction of samples")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"vae_A-1, 40 channels, {v['rate']:.0f} samples/s Poisson, budget {v['budget_us']} µs\n{title}",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(DOCS, "latency_cdf_10k.png"), dpi=90)
        lines += [f"### {v['rate']:.0f} samples/s, vae_A-1 (40 channels, Poisson, budget {v['budget_us']} µs; ms)", "",
                  "| run | results | dropped | p50 | p99 | p99.9 | max | RSS MiB (peak) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name in ("vae-echo-10k", "vae-relay-10k", "vae-onnxruntime-10k", "vae-tract-10k"):
            r = runs.get(name)
            if r:
                g, ms = r.get("gsinfer", {}), r["ms"]
                lines.append(f"| {name} | {r['results']} | {int(g['dropped']) if g else ''} | {ms['p50']:.3f} | "
                             f"{ms['p99']:.3f} | {ms['p999']:.3f} | {ms['max']:.2f} | "
                             f"{'%d (%d)' % (g['VmRSS'], g['VmHWM']) if g else ''} |")
        lines.append("")


def gpu_plot(gpu, lines):
    info, rows = gpu["info"], gpu["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for family, color in (("lstm", "C0"), ("tfm", "C1"), ("vae", "C2")):
        pts = [(r["bucket"], r.get("eager_windows_per_s"), r.get("graph_windows_per_s")) for r in rows
               if r["family"] == family]
        b = [p[0] for p in pts]
        ax.plot(b, [p[1] for p in pts], "o--", color=color, label=f"{family} eager")
        ax.plot(b, [p[2] for p in pts], "s-", color=color, label=f"{family} CUDA graph")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (windows)")
    ax.set_ylabel("windows/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(f"PyTorch {info['torch']} FP32 on {info['gpu']}, {info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, "gpu_reference.png"), dpi=90)
    lines += [f"### GPU reference: {info['gpu']}, PyTorch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, "
              f"{info['date']} (ms per batch; windows/s of the graph replay)", "",
              "| family | batch | eager ms | CUDA graph ms | graph + H2D/D2H copies ms | graph windows/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['bucket']} | {r['eager_ms']:.3f} | {r['graph_ms']:.3f} | "
                     f"{r['graph_copy_ms']:.3f} | {r['graph_windows_per_s']:,.0f} |")
    lines.append("")


def batcher_table(b, lines):
    lines += ["### Batcher overhead per window (criterion, median)", "", "| bench | ns per window |",
              "| --- | ---: |"]
    for name, ns in sorted(b["per_window_ns"].items()):
        lines.append(f"| {name} | {ns:,.0f} |")
    lines += ["", f"Measured {b['date']}.", ""]


def main():
    os.makedirs(DOCS, exist_ok=True)
    lines = []
    eng = load("engines.json")
    if eng:
        engines_plot(eng, lines)
    b = load("batcher.json")
    if b:
        batcher_table(b, lines)
    e2e = load("e2e.json")
    if e2e:
        e2e_plots(e2e, lines)
    gpu = load("gpu_reference.json", DOCS)
    if gpu:
        gpu_plot(gpu, lines)
    with open(os.path.join(RESULTS, "tables.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
