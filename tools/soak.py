#!/usr/bin/env python3
"""Soak test: gsinfer at a steady load for an hour, its memory, descriptors and latency over time.

Not part of CI. Starts its own Mosquitto and `gsinfer run` (release build),
then drives it with the load generator (examples/loadgen.rs: real SMAP
telemetry, Poisson arrivals) in back-to-back segments of --segment seconds.
After every segment it records the service's VmRSS (the last reading, and
the mean, min and max of readings once a second), the allocator's figures
and the process's open file descriptors and threads (/proc, /metrics), its
drop and reject counters, and the segment's end-to-end latency percentiles
(sample published -> score received). At the end it fits a line to the
segments' mean RSS after the warm-up and reports the growth per hour
relative to the post-warm-up RSS, and the same fit of the allocator's
allocated bytes (a leak grows there; allocator caching does not).

--heaptrack FILE runs gsinfer under heaptrack (glibc builds); a build with
--features heap-profiling takes _RJEM_MALLOC_CONF=prof:true,... from the
environment instead (RELIABILITY.md, Soak).

    cargo build --release --bin gsinfer --example loadgen
    python3 tools/soak.py --data-dir ../shared/data/telemanom --seconds 3600 \
        --out bench-results/soak.json

Default load: vae_A-1 on tract serving 40 channels at 5 000 samples/s
(the rate this appliance is rated for on a 2-core box); --model smap_lstm
soaks the forecaster instead.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_bench as e2e  # noqa: E402  (the same broker/service/loadgen helpers)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    """Reads the service's RSS once a second, so each segment reports its mean.

    A single reading per minute is noisy under jemalloc: it returns freed
    pages in bursts (10 s decay), which swings RSS by about 1 MiB from one
    reading to the next; the mean of 60 readings does not.
    """

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.readings, self.lock = pid, [], threading.Lock()
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(1.0):
            try:
                kib = rss_kib(self.pid)
            except OSError:
                return
            with self.lock:
                self.readings.append(kib)

    def take(self):
        """(mean, min, max) MiB of the readings since the last call."""
        with self.lock:
            r, self.readings = self.readings, []
        if not r:
            return None, None, None
        return round(sum(r) / len(r) / 1024, 3), round(min(r) / 1024, 2), round(max(r) / 1024, 2)


def slope_per_hour(points):
    """Least-squares slope of (t_s, y) in y units per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 3600.0 * sum((t - mt) * (y - my) for t, y in points) / var


def slope_stderr_per_hour(points):
    """Standard error of slope_per_hour's slope (ordinary least squares), per hour."""
    n = len(points)
    if n < 3:
        return None
    mt = sum(t for t, _ in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    b = slope_per_hour(points) / 3600.0
    a = sum(y for _, y in points) / n - b * mt
    resid = sum((y - a - b * t) ** 2 for t, y in points)
    return 3600.0 * (resid / (n - 2) / var) ** 0.5


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("GSINFER_DATA_DIR", os.path.join(e2e.ROOT, "../shared/data/telemanom")))
    ap.add_argument("--seconds", type=float, default=3600.0, help="total soak time")
    ap.add_argument("--segment", type=float, default=60.0, help="seconds per load-generator run")
    ap.add_argument("--warmup", type=float, default=600.0, help="seconds excluded from the RSS fit")
    ap.add_argument("--rate", type=float, default=5000.0, help="samples/s, all channels together")
    ap.add_argument("--channels", type=int, default=40)
    ap.add_argument("--model", choices=["vae_A-1", "smap_lstm"], default="vae_A-1")
    ap.add_argument("--engine", default="tract")
    ap.add_argument("--heaptrack", metavar="FILE", help="run gsinfer under heaptrack, writing its profile to FILE "
                    "(then: heaptrack_print FILE.zst)")
    ap.add_argument("--out", default=os.path.join(e2e.ROOT, "bench-results/soak.json"))
    args = ap.parse_args()
    args.raw = os.path.join(os.path.dirname(os.path.abspath(args.out)), "soak")
    os.makedirs(args.raw, exist_ok=True)

    if args.model == "vae_A-1":
        pipeline = e2e.vae_pipeline(args.engine, 20000)
        gen = ["--model", "vae_A-1"]
        prefill = 50
    else:
        pipeline = e2e.lstm_pipeline("deadline", engine=args.engine, capacity=4096)
        gen = ["--model", "smap_lstm", "--forecast"]
        prefill = 250

    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="gsinfer-soak-") as tmp:
        broker = e2e.Mosquitto(tmp)
        wrap = ["heaptrack", "-o", args.heaptrack] if args.heaptrack else ()
        svc = e2e.Service(tmp, broker.port, pipeline, wrap)
        sampler = RssSampler(svc.pid)
        sampler.start()
        try:
            seg = 0
            while time.time() - started < args.seconds:
                extra = gen + ["--channels", str(args.channels), "--rate", str(args.rate),
                               "--arrivals", "poisson", "--seconds", str(args.segment),
                               "--seed", str(seg), "--drain", "5",
                               # Each segment continues the channels' time lines.
                               "--start-sample", str(seg * 1_000_000),
                               "--prefill", str(prefill if seg == 0 else 0)]
                r = e2e.loadgen(args, broker.port, f"soak-{seg:04d}", extra)
                c = svc.counters()
                mean, lo, hi = sampler.take()
                row = {
                    "t_s": round(time.time() - started, 1),
                    "rss_mib": round(rss_kib(svc.pid) / 1024, 2), "hwm_mib": c.get("VmHWM"),
                    "rss_mean_mib": mean, "rss_min_mib": lo, "rss_max_mib": hi,
                    "heap_mib": round(c["heap_allocated"] / 2**20, 2),
                    "heap_resident_mib": round(c["heap_resident"] / 2**20, 2),
                    "fds": descriptors(svc.pid), "threads": threads(svc.pid),
                    "sent": r["sent"], "results": r["results"], "ms": r["ms"],
                    "dropped": c["dropped"], "ingest_overflow": c["ingest_overflow"],
                    "rejected": c["rejected"],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                seg += 1
        finally:
            sampler.stopped.set()
            svc.stop()
            broker.stop()

    # The fit uses each segment's mean RSS (1 Hz readings), not its last reading.
    after = [(r["t_s"], r["rss_mean_mib"]) for r in rows if r["t_s"] >= args.warmup and r["rss_mean_mib"]]
    base = after[0][1] if after else None
    growth = slope_per_hour(after)
    stderr = slope_stderr_per_hour(after)
    # jemalloc's stats.allocated: a leak keeps growing here; its thread caches level off.
    heap = [(r["t_s"], r["heap_mib"]) for r in rows if r["t_s"] >= args.warmup and r.get("heap_mib")]
    heap_growth = slope_per_hour(heap)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "model": args.model, "engine": args.engine, "rate": args.rate, "channels": args.channels,
        "seconds": round(time.time() - started), "segments": len(rows),
        "rss_mean_mib_after_warmup": base, "rss_mean_mib_end": rows[-1]["rss_mean_mib"] if rows else None,
        "rss_growth_mib_per_hour": round(growth, 3),
        "rss_growth_pct_per_hour": round(100.0 * growth / base, 3) if base else None,
        "rss_growth_pct_per_hour_stderr": round(100.0 * stderr / base, 3) if base and stderr is not None else None,
        "heap_mib_after_warmup": heap[0][1] if heap else None,
        "heap_mib_end": rows[-1].get("heap_mib") if rows else None,
        "heap_growth_mib_per_hour": round(heap_growth, 3) if heap else None,
        "fds_min_max": [min(r["fds"] for r in rows), max(r["fds"] for r in rows)] if rows else None,
        "threads_min_max": [min(r["threads"] for r in rows), max(r["threads"] for r in rows)] if rows else None,
        "p99_ms_min_max": [min(r["ms"]["p99"] for r in rows), max(r["ms"]["p99"] for r in rows)] if rows else None,
        "dropped_total": rows[-1]["dropped"] if rows else None,
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))


if __name__ == "__main__":
    main()
