#!/usr/bin/env python3
"""End-to-end latency of the service under load, beside the broker's floor.

Starts its own Mosquitto on a free loopback port, then for each experiment
starts `gsinfer run` (release build) with a generated configuration, drives
it with the load generator (examples/loadgen.rs: real SMAP telemetry on a
seeded arrival trace) and records the latency of every result, gsinfer's
drop counters (/metrics) and its memory (VmRSS, VmHWM). The floors are the
same generator on the same traces without gsinfer: `echo` (publish →
subscribe, one broker hop) and `relay` (a no-op client republishing every
message: the two hops any MQTT service pays).

Experiments:
  lstm    smap_lstm on the onnxruntime engine, 2 channels, latency budget
          20 ms, queue_capacity 256 windows (so that under overload the
          queue, not the length of the run, bounds the wait): capacity
          measured under overload, then Poisson and bursty
          arrivals at 50/80/95/120 % of it, with gsinfer's deadline policy
          and the Triton-style policy (batch.policy = "max_queue_delay") on
          the same traces.
  tfm     the same for tfm_A-1 (the attention forecaster, window 64), an
          engine that does get cheaper per window in larger batches.
  vae10k  vae_A-1 serving 40 channels at 10 000 samples/s (Poisson), budget
          --vae-budget-us, on onnxruntime and on tract.

    python3 tools/e2e_bench.py --data-dir ../shared/data/telemanom --out bench-results/e2e.json

Needs target/release/gsinfer and target/release/examples/loadgen.
"""
import argparse
import glob
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSINFER = os.path.join(ROOT, "target/release/gsinfer")
LOADGEN = os.path.join(ROOT, "target/release/examples/loadgen")


PIN = {}  # role ("gsinfer", "broker", "loadgen") -> set of CPUs, from --pin


def pinned(role):
    """preexec_fn that pins a child process to the CPUs given for `role`, if any."""
    cpus = PIN.get(role)
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def parse_pin(text):
    """'gsinfer=0-3,broker=4,loadgen=5-7' -> {role: {cpus}}."""
    out = {}
    for part in filter(None, text.split(",")):
        role, _, spec = part.partition("=")
        cpus = set()
        for r in spec.split("+"):
            lo, _, hi = r.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        out[role] = cpus
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ort_library():
    lib = os.environ.get("ORT_DYLIB_PATH")
    if lib:
        return lib
    import onnxruntime
    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    return sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))[0]


class Mosquitto:
    def __init__(self, workdir, nodelay=True):
        self.port = free_port()
        conf = os.path.join(workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    f"persistence false\nlog_dest none\n" + ("set_tcp_nodelay true\n" if nodelay else "") + ("user root\n" if os.geteuid() == 0 else ""))
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=pinned("broker"))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read().decode()


def metric_sum(text, name):
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def proc_memory(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) // 1024
    return out


def config_text(broker_port, status_port, pipeline):
    return f"""
[broker]
host = "127.0.0.1"
port = {broker_port}
client_id = "gsinfer-bench-{status_port}"
clean_session = true
qos = 0

[status]
listen = "127.0.0.1:{status_port}"

[repository]
path = "{ROOT}/model_repository"

[ingest]
queue_capacity = 8192

[publish]
topic_prefix = "gsinfer"
scores = true
score_qos = 0
score_max_rate_hz = 0.0
events_qos = 1

[engine]
onnxruntime_library = "{ort_library()}"
threads = 1

[[pipeline]]
{pipeline}
"""


# Forecaster experiments: key -> (model, the configuration `gsinfer bench` reads it with, window length,
# queue capacity: about 150 ms of the engine's work, so that the queue, not the run's length, bounds the wait).
FORECASTERS = {"lstm": ("smap_lstm", "config/gsinfer.example.toml", 250, 256),
               "tfm": ("tfm_A-1", "config/smap_tfm.toml", 64, 1024)}


def lstm_pipeline(policy, engine="onnxruntime", budget_us=20000, capacity=None, key="lstm"):
    model, _, window, default_capacity = FORECASTERS[key]
    capacity = capacity or default_capacity
    return f"""model = "{model}"
engine = "{engine}"
topics = ["telemetry/SMAP/+"]
features = 25
window = {{ length = {window}, stride = 1 }}
batch = {{ latency_budget_us = {budget_us}, queue_capacity = {capacity}, policy = "{policy}" }}
scoring = {{ kind = "forecast", target_feature = 0, smoothing_span = 30.0, event_hold = 30, threshold = {{ method = "static", value = 0.5 }} }}
"""


def vae_pipeline(engine, budget_us):
    # A static threshold: NDT decides (and publishes) scores once per 70, after 2100.
    return f"""model = "vae_A-1"
engine = "{engine}"
topics = ["telemetry/SMAP/+"]
features = 25
window = {{ length = 50, stride = 1 }}
batch = {{ latency_budget_us = {budget_us}, queue_capacity = 4096 }}
scoring = {{ kind = "reconstruction", target_feature = 0, smoothing_span = 105.0, reconstruction_features = [0], event_hold = 1, threshold = {{ method = "static", value = 0.5 }} }}
"""


def service_pid(pid):
    """The gsinfer process itself: `pid`, or its descendant when a wrapper (heaptrack) started it."""
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == "gsinfer":
                    return p
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pid


class Service:
    def __init__(self, workdir, broker_port, pipeline, wrap=()):
        self.status_port = free_port()
        self.config = os.path.join(workdir, f"gsinfer-{self.status_port}.toml")
        with open(self.config, "w") as f:
            f.write(config_text(broker_port, self.status_port, pipeline))
        self.log = open(os.path.join(workdir, f"gsinfer-{self.status_port}.log"), "w")
        # `wrap` runs gsinfer under another program (the soak's heap profiler), e.g. ["heaptrack", "-o", path].
        self.proc = subprocess.Popen(list(wrap) + [GSINFER, "run", "--config", self.config], stdout=self.log, stderr=self.log,
                                     env=dict(os.environ, RUST_LOG="warn"), preexec_fn=pinned("gsinfer"))
        self.pid = self.proc.pid
        for _ in range(600):
            try:
                if http_get(self.status_port, "/readyz")[0] == 200:
                    self.pid = service_pid(self.proc.pid)
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"gsinfer exited; see {self.log.name}")
            time.sleep(0.05)
        raise RuntimeError("gsinfer never became ready")

    def counters(self):
        _, text = http_get(self.status_port, "/metrics")
        out = {"dropped": metric_sum(text, "gsinfer_windows_dropped_total"),
               "ingest_overflow": metric_sum(text, "gsinfer_ingest_overflow_total"),
               "rejected": metric_sum(text, "gsinfer_samples_rejected_total"),
               # The allocator's view (jemalloc): bytes allocated (its thread caches included) and kept resident.
               "heap_allocated": metric_sum(text, "gsinfer_heap_allocated_bytes"),
               "heap_resident": metric_sum(text, "gsinfer_heap_resident_bytes")}
        # Engine time per bucket in this run (mean ms, batches), from the compute histogram.
        sums = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^gsinfer_compute_duration_seconds_sum{[^}]*bucket="(\d+)"[^}]*} ([0-9.e+-]+)$', text, re.M)}
        counts = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^gsinfer_compute_duration_seconds_count{[^}]*bucket="(\d+)"[^}]*} ([0-9.e+-]+)$', text, re.M)}
        out["engine_ms_by_bucket"] = {b: [1e3 * sums[b] / counts[b], int(counts[b])]
                                      for b in sorted(counts, key=int) if counts[b] > 0}
        # The service's own view: window received -> result, queue wait, engine time (µs percentiles).
        _, status = http_get(self.status_port, "/api/status")
        model = json.loads(status)["models"][0]
        out["server_us"] = {k: model.get(k) for k in ("latency_us", "queue_us", "inference_us")}
        out.update(proc_memory(self.pid))
        return out

    def stop(self):
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(120 if self.pid != self.proc.pid else 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def loadgen(args, broker_port, name, extra):
    csv = os.path.join(args.raw, f"{name}.csv")
    cmd = [LOADGEN, "--port", str(broker_port), "--data-dir", args.data_dir, "--out", csv, "--label", name] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=pinned("loadgen"))
    line = json.loads(out.stdout.strip().splitlines()[-1])
    line["csv"] = os.path.relpath(csv, ROOT)
    return line


def run(args, broker, name, pipeline, gen, results):
    if pipeline is None:
        r = loadgen(args, broker.port, name, gen)
    else:
        with tempfile.TemporaryDirectory(prefix="gsinfer-e2e-") as tmp:
            svc = Service(tmp, broker.port, pipeline)
            try:
                r = loadgen(args, broker.port, name, gen)
                r["gsinfer"] = svc.counters()
            finally:
                svc.stop()
    r["name"] = name
    r["loadavg"] = os.getloadavg()
    g = r.get("gsinfer")
    if g and r.get("achieved_rate"):
        # Engine busy time over the timed trace: the utilisation the load really put on the engine.
        busy_s = sum(ms * n for ms, n in g["engine_ms_by_bucket"].values()) / 1e3
        r["engine_busy"] = busy_s / (r["sent"] / r["achieved_rate"])
    results.append(r)
    ms = {k: (v if v is not None else float("nan")) for k, v in r["ms"].items()}
    print(f"{name:40} sent {r['sent']:6} results {r['results']:6} p50 {ms['p50']:8.2f} p99 {ms['p99']:8.2f} "
          f"p99.9 {ms['p999']:8.2f} max {ms['max']:8.2f} ms {json.dumps(r.get('gsinfer', ''))}", flush=True)
    return r


def forecaster_experiment(args, broker, key, secs, meta, results):
    """Capacity under overload, then Poisson and bursty arrivals at --loads of it, for gsinfer's deadline
    policy and the Triton-style policy on the same traces, beside the broker and relay floors."""
    model, config, window, _ = FORECASTERS[key]
    gen = ["--model", model, "--forecast", "--channels", "2", "--prefill", str(window)]
    # Capacity: the rate of results the service sustains under overload (Poisson at 1.6x the
    # engine's batch-64 rate), with gsinfer's own policy, over the second half of the trace.
    bench = json.loads(subprocess.run(
        [GSINFER, "bench", "--config", os.path.join(ROOT, config), "--model", model,
         "--engine", "onnxruntime", "--batch", "64", "--seconds", "3", "--json"],
        check=True, capture_output=True, text=True, env=dict(os.environ, ORT_DYLIB_PATH=ort_library()),
        preexec_fn=pinned("gsinfer")).stdout)
    over = run(args, broker, f"{key}-capacity", lstm_pipeline("deadline", key=key),
               gen + secs + ["--rate", str(1.6 * bench["windows_per_s"]), "--arrivals", "poisson"], results)
    capacity = over["results_per_s_second_half"]
    meta[key] = {"model": model, "engine_b64_windows_per_s": bench["windows_per_s"],
                 "engine_b64_ms": bench["ms_per_batch"], "capacity_windows_per_s": capacity}
    print(f"{key} capacity: {capacity:.0f} windows/s (engine alone at batch 64: {bench['windows_per_s']:.0f})")
    for arrivals in ("poisson", "bursty"):
        for load in args.loads:
            rate = ["--rate", f"{load * capacity:.1f}", "--arrivals", arrivals]
            tag = f"{arrivals}-{int(round(load * 100))}"
            run(args, broker, f"{key}-echo-{tag}", None, ["--mode", "echo", "--channels", "2"] + secs + rate, results)
            run(args, broker, f"{key}-relay-{tag}", None, ["--mode", "relay", "--channels", "2"] + secs + rate,
                results)
            for policy in ("deadline", "max_queue_delay"):
                run(args, broker, f"{key}-{policy}-{tag}", lstm_pipeline(policy, key=key), gen + secs + rate, results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("GSINFER_DATA_DIR", os.path.join(ROOT, "../shared/data/telemanom")))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results/e2e.json"))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--experiments", nargs="+", default=["lstm", "tfm", "vae10k"])
    ap.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8, 0.95, 1.2])
    ap.add_argument("--vae-rate", type=float, default=10000.0)
    ap.add_argument("--vae-budget-us", type=int, default=500)
    ap.add_argument("--pin", default="",
                    help="CPUs per process, e.g. gsinfer=0-3,broker=4,loadgen=5-7 ('+' joins ranges: 0+8)")
    ap.add_argument("--broker-nagle", action="store_true",
                    help="leave Nagle's algorithm on in Mosquitto (its default; the Ansible role turns it off)")
    args = ap.parse_args()
    PIN.update(parse_pin(args.pin))
    args.raw = os.path.join(os.path.dirname(args.out), "e2e")
    os.makedirs(args.raw, exist_ok=True)
    results, meta = [], {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "host": platform.node(),
                         "cores": os.cpu_count(), "seconds": args.seconds}
    workdir = tempfile.mkdtemp(prefix="gsinfer-broker-")
    broker = Mosquitto(workdir, nodelay=not args.broker_nagle)
    meta["broker_tcp_nodelay"] = not args.broker_nagle
    meta["pin"] = {k: sorted(v) for k, v in PIN.items()}
    secs = ["--seconds", str(args.seconds)]
    try:
        for key in ("lstm", "tfm"):
            if key in args.experiments:
                forecaster_experiment(args, broker, key, secs, meta, results)
        if "vae10k" in args.experiments:
            vae = ["--model", "vae_A-1", "--channels", "40", "--prefill", "50"]
            rate = ["--rate", str(args.vae_rate), "--arrivals", "poisson"]
            run(args, broker, "vae-echo-10k", None, ["--mode", "echo", "--channels", "40"] + secs + rate, results)
            run(args, broker, "vae-relay-10k", None, ["--mode", "relay", "--channels", "40"] + secs + rate, results)
            for engine in ("onnxruntime", "tract"):
                run(args, broker, f"vae-{engine}-10k", vae_pipeline(engine, args.vae_budget_us), vae + secs + rate,
                    results)
            meta["vae"] = {"budget_us": args.vae_budget_us, "rate": args.vae_rate}
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
