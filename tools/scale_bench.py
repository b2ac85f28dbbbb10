#!/usr/bin/env python3
"""N per-channel models on one gsinfer: time to ready, RSS, threads, and
end-to-end latency at one sample per channel per second.

Builds a throwaway model repository of N copies of one shipped model
(`model.onnx` symlinked, `config.pbtxt` renamed), a configuration with one
`[[pipeline]]` per copy (its own topic and channel), starts its own
Mosquitto and `gsinfer run`, and measures:

- ready: seconds from the process start to `/readyz` answering 200 (every
  model loaded), and the RSS and thread count at that moment (/proc);
- with --seconds S: each channel's first window-1 samples (fewer by i % SPREAD with
  --spread) in one payload,
  then one sample per channel per second for S seconds, each channel's
  sample stamped and timed from its publish to its score's arrival on
  `gsinfer/<model>/<channel>/score` (two broker hops included; for a
  forecaster the score of sample k pairs it with the forecast made from
  the window before it, so this is the scoring path, not inference);
  beside it gsinfer's own per-window latency (`window_latency`: a window's
  last sample received to its result, from the end-to-end histogram of
  /metrics, summed over the models); scores expected and received, and RSS
  and threads at the end. The copies use a static threshold: NDT decides
  in batches of up to 70 errors, which would time the threshold.

    python3 tools/scale_bench.py --binary target/release/gsinfer --n 1000 \
        --model lstm_A-2 --seconds 60 [--engine tract|onnxruntime|auto] [--workers W] [--repo R]

Prints one JSON line. Needs mosquitto and paho-mqtt (`pip install paho-mqtt`).
Uses the real telemetry when --data-dir is given (the model's test split,
cycled), else random values.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import queue
import tempfile
import threading
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_NS = 1_514_764_800_000_000_000
STEP_NS = 1_000_000_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024.0  # MiB
            elif k == "Threads":
                out[k] = int(v)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime + stime (fields 14 and 15 of proc(5)), in clock ticks
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    written = 0
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                written = int(line.split()[1])  # bytes sent to the storage layer
    return {"rss_mib": round(out["VmRSS"], 1), "peak_rss_mib": round(out["VmHWM"], 1), "threads": out["Threads"],
            "cpu_s": round(cpu_s, 1), "written_mib": round(written / 2**20, 1)}


def pipeline_template(config_path, model):
    """The shipped configuration's pipeline for `model`, as text lines."""
    text = open(config_path).read()
    blocks = text.split("[[pipeline]]")
    for b in blocks[1:]:
        if re.search(rf'^model = "{re.escape(model)}"$', b, re.M):
            return b.strip()
    sys.exit(f"{config_path} has no pipeline for model {model}")


def build(tmp, args):
    repo = os.path.join(tmp, "repo")
    os.makedirs(repo)
    src = os.path.join(args.repo, args.model)
    pbtxt = open(os.path.join(src, "config.pbtxt")).read()
    onnx = os.path.realpath(os.path.join(src, "1", "model.onnx"))
    template = pipeline_template(args.config, args.model)
    features = int(re.search(r"^features = (\d+)$", template, re.M).group(1))
    length = int(re.search(r"window = \{ length = (\d+)", template).group(1))
    pipelines = []
    for i in range(args.n):
        name = f"scale_{i:05d}"
        d = os.path.join(repo, name)
        os.makedirs(os.path.join(d, "1"))
        os.symlink(onnx, os.path.join(d, "1", "model.onnx"))
        with open(os.path.join(d, "config.pbtxt"), "w") as f:
            f.write(re.sub(r'^name: ".*"$', f'name: "{name}"', pbtxt, count=1, flags=re.M))
        p = re.sub(r'^model = ".*"$', f'model = "{name}"', template, flags=re.M)
        p = re.sub(r"^topics = .*$", f'topics = ["scale/c{i}"]', p, flags=re.M)
        p = re.sub(r"^channels = .*$", f'channels = ["c{i}"]', p, flags=re.M)
        # A static threshold decides each score at once; NDT decides in
        # batches of up to 70 errors, which would time the threshold, not
        # the pipeline.
        p = re.sub(r"threshold = \{[^}]*\}", 'threshold = { method = "static", value = 1.0 }', p)
        if args.engine:
            p = re.sub(r'^engine = ".*"\n', "", p, flags=re.M)
            p = f'engine = "{args.engine}"\n' + p
        pipelines.append("[[pipeline]]\n" + p)
    return repo, pipelines, features, length


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/gsinfer"))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--model", default="lstm_A-2")
    ap.add_argument("--repo", default=os.path.join(ROOT, "model_repository"),
                    help="repository holding --model (e.g. the int8 one tools/quantize_models.py writes)")
    ap.add_argument("--config", default=os.path.join(ROOT, "config/smap_lstm.toml"),
                    help="the shipped configuration whose pipeline for --model is copied")
    ap.add_argument("--engine", choices=["auto", "tract", "onnxruntime"], default=None)
    ap.add_argument("--workers", type=int, default=None, help="engine.workers (default: gsinfer's)")
    ap.add_argument("--pipeline-tasks", type=int, default=None,
                    help="ingest.pipeline_tasks (default: gsinfer's, one per two cores)")
    ap.add_argument("--tract-tuning", choices=["background", "at_load"], default=None,
                    help="engine.tract_tuning (default: gsinfer's)")
    ap.add_argument("--qos", type=int, choices=[0, 1], default=1,
                    help="QoS of the telemetry published (1: gsinfer holds acks until a state save)")
    ap.add_argument("--save-interval-ms", type=int, default=None,
                    help="state.save_interval_ms (default: gsinfer's)")
    ap.add_argument("--max-unacked", type=int, default=None,
                    help="state.max_unacked (default: gsinfer's 16); the broker's in-flight window "
                         "(mosquitto max_inflight_messages) is set above it")
    ap.add_argument("--publishers", type=int, default=0,
                    help="load-generator processes publishing (default: one per 2 500 channels, at most 8)")
    ap.add_argument("--subscribers", type=int, default=0,
                    help="processes receiving scores (default: one per 5 000 channels, at most 4)")
    ap.add_argument("--spread", type=int, default=1,
                    help="spread the channels' window phases over this many samples (use the stride)")
    ap.add_argument("--no-state", action="store_true",
                    help="state.enabled = false: no saves, QoS 1 acknowledged as soon as taken")
    ap.add_argument("--journal", action="store_true",
                    help="state.journal = true: QoS 1 acknowledged once journaled, whole saves every save_interval_ms")
    ap.add_argument("--seconds", type=int, default=0, help="seconds of one sample per channel per second")
    ap.add_argument("--steady-after", type=float, default=10.0,
                    help="also report the window latency of the paced part after this many seconds "
                         "(window_latency_steady: every model's first windows and the start's first saves left out)")
    ap.add_argument("--timeline", action="store_true",
                    help="also report, per second of the paced part, the windows scored and how many "
                         "took over 25.6 ms, waited over 12.8 ms in the batch queue, and engine runs over "
                         "12.8 ms (from a scrape of /metrics every second, which at 1 000 models costs gsinfer "
                         "some CPU: compare runs taken with it only with each other)")
    ap.add_argument("--data-dir", default=None, help="telemanom data set (test split of --channel)")
    ap.add_argument("--channel", default="A-2")
    ap.add_argument("--ready-timeout", type=float, default=1800.0)
    ap.add_argument("--keep", action="store_true", help="keep the throwaway folder")
    args = ap.parse_args()
    if args.seconds > 0:
        try:
            import paho.mqtt.client  # noqa: F401  (the publishers' and subscribers' client)
        except ImportError:
            sys.exit("error: --seconds needs paho-mqtt: pip install paho-mqtt")

    tmp = tempfile.mkdtemp(prefix="gsinfer-scale-")
    procs = []
    try:
        repo, pipelines, features, length = build(tmp, args)
        mqtt_port, http_port, grpc_port = free_port(), free_port(), free_port()
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
            if args.max_unacked:
                f.write(f"max_inflight_messages {args.max_unacked + args.max_unacked // 4 + 4}\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        procs.append(subprocess.Popen([mosquitto, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        engine_section = "[engine]\n" + (f"workers = {args.workers}\n" if args.workers else "")
        state = (f"save_interval_ms = {args.save_interval_ms}\n" if args.save_interval_ms else "") + \
            (f"max_unacked = {args.max_unacked}\n" if args.max_unacked else "") + \
            ("enabled = false\n" if args.no_state else "") + \
            ("journal = true\n" if args.journal else "")
        if state:
            engine_section = f"[state]\n{state}\n" + engine_section
        if args.tract_tuning:
            engine_section += f'tract_tuning = "{args.tract_tuning}"\n'
        if args.pipeline_tasks is not None:
            engine_section = f"[ingest]\npipeline_tasks = {args.pipeline_tasks}\n\n" + engine_section
        cfg = os.path.join(tmp, "gsinfer.toml")
        with open(cfg, "w") as f:
            f.write(f'[broker]\nhost = "127.0.0.1"\nport = {mqtt_port}\nclient_id = "gsinfer-scale"\n\n'
                    f'[status]\nlisten = "127.0.0.1:{http_port}"\n\n[grpc]\nlisten = "127.0.0.1:{grpc_port}"\n\n'
                    f'[repository]\npath = "{repo}"\n\n{engine_section}\n' + "\n\n".join(pipelines) + "\n")
        env = dict(os.environ, STATE_DIRECTORY=os.path.join(tmp, "state"), RUST_LOG=os.environ.get("GSINFER_BENCH_LOG", "warn"))
        log = open(os.path.join(tmp, "gsinfer.log"), "w")
        started = time.monotonic()
        g = subprocess.Popen([args.binary, "run", "-c", cfg], env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(g)
        ready = None
        while time.monotonic() - started < args.ready_timeout:
            if g.poll() is not None:
                sys.exit(f"gsinfer exited with {g.returncode}; log in {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        ready = time.monotonic() - started
                        break
            except Exception:
                pass
            time.sleep(0.1)
        if ready is None:
            sys.exit(f"not ready within {args.ready_timeout} s; log in {log.name}")
        result = {"n": args.n, "model": args.model, "repo": args.repo, "engine": args.engine or "config", "qos": args.qos,
                  "max_unacked": args.max_unacked, "state": not args.no_state,
                  "journal": args.journal and not args.no_state,
                  "spread": args.spread,
                  "workers": args.workers, "pipeline_tasks": args.pipeline_tasks,
                  "tract_tuning": args.tract_tuning, "ready_s": round(ready, 2), "at_ready": proc_status(g.pid)}
        if args.seconds > 0:
            early = {}

            def scrape_later(paced_start):
                def scrape():
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=60) as r:
                        early["metrics"] = r.read().decode()
                delay = max(0.0, paced_start + args.steady_after - time.monotonic())
                threading.Timer(delay, scrape).start()
                if args.timeline:
                    # The wall clock of the paced part's start, to match the timeline with gsinfer's log.
                    early["paced_start_utc"] = time.strftime(
                        "%H:%M:%S", time.gmtime(time.time() + paced_start - time.monotonic()))
                    threading.Thread(target=follow, args=(paced_start,), daemon=True).start()

            scrapes = []

            def follow(paced_start):
                # One scrape a second from the paced part's start to a few
                # seconds after its end, each against the same clock.
                for s in range(args.seconds + 5):
                    delay = paced_start + s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
                            scrapes.append((s, r.read().decode()))
                    except Exception:
                        pass

            result.update(feed(args, mqtt_port, features, length, scrape_later))
            result["at_end"] = proc_status(g.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=60) as r:
                metrics = r.read().decode()
            result["window_latency"] = window_latency(metrics)
            if "metrics" in early:
                result["window_latency_steady"] = window_latency(metrics, early["metrics"])
            result["counters"] = counters(metrics)
            if args.timeline:
                result["timeline"] = {"paced_start_utc": early.get("paced_start_utc"), "seconds": timeline(scrapes)}
        print(json.dumps(result))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def counters(metrics):
    """gsinfer's own counts, summed over every model: samples taken in,
    rejected, windows dropped, messages dropped at a full ingest queue,
    failed state saves."""
    out = {}
    for name in ("inputs", "samples_rejected", "windows_dropped", "ingest_overflow", "state_save_errors"):
        total = 0.0
        for line in metrics.splitlines():
            m = re.match(rf"gsinfer_{name}_total(?:{{.*}})? (\S+)$", line)
            if m:
                total += float(m.group(1))
        out[name] = int(total)
    return out


def timeline(scrapes):
    """Per second of the paced part, from consecutive scrapes: [second,
    windows scored in it, of them over 25.6 ms end to end, windows that
    waited over 12.8 ms in the batch queue, engine runs over 12.8 ms]."""
    def counts(a, b, name, bound):
        # (count, count over `bound`) between the two scrapes
        before, after = latency_buckets(a, name), latency_buckets(b, name)
        total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
        within = max((after[k] - before.get(k, 0.0) for k in after if k <= bound), default=0.0)
        return int(total), int(total - within)

    out = []
    for (_, a), (s, b) in zip(scrapes, scrapes[1:]):
        windows, late = counts(a, b, "end_to_end", 0.0256)
        out.append([s, windows, late, counts(a, b, "queue", 0.0128)[1], counts(a, b, "compute", 0.0128)[1]])
    return out


def latency_buckets(metrics, name="end_to_end"):
    """One of gsinfer's latency histograms (`end_to_end`, `queue`: for
    telemetry; `compute`: every run), summed over every model: cumulative
    count by upper bound (s)."""
    buckets = {}
    for line in metrics.splitlines():
        m = re.match(rf'gsinfer_{name}_duration_seconds_bucket\{{(.*)\}} (\S+)$', line)
        if not m or (name != "compute" and 'source="telemetry"' not in m.group(1)):
            continue
        le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
        le = float("inf") if le == "+Inf" else float(le)
        buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    return buckets


def window_latency(metrics, since=None):
    """gsinfer's own end-to-end histogram for telemetry (a window's last
    sample received to its result scored), summed over every model:
    count, share within 25.6 ms (the bucket bound above the 20 ms budget),
    and p50/p99/p99.9 interpolated inside the factor-2 buckets (ms); with
    `since` (an earlier scrape), of the windows scored after it only."""
    buckets = latency_buckets(metrics)
    if since is not None:
        before = latency_buckets(since)
        buckets = {b: c - before.get(b, 0.0) for b, c in buckets.items()}
    if not buckets:
        return {}
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    out = {"windows": int(total)}
    if total == 0:
        return out
    within = max((buckets[b] for b in bounds if b <= 0.0256), default=0.0)
    out["within_25_6ms"] = round(within / total, 5)
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
        want = q * total
        lo, below = 0.0, 0.0
        for b in bounds:
            if buckets[b] >= want:
                if b == float("inf"):
                    out[name] = f"> {lo * 1e3:g}"
                else:
                    frac = (want - below) / max(buckets[b] - below, 1e-9)
                    out[name] = round((lo + frac * (b - lo)) * 1e3, 3)
                break
            lo, below = b, buckets[b]
    return out


def subscriber(port, share, ready, stop, out_q):
    """Records each score's arrival (monotonic clock) by (channel, index)."""
    import paho.mqtt.client as mqtt

    got = {}

    def on_message(_c, _u, msg):
        now = time.monotonic()
        got[(msg.topic.split("/")[2], json.loads(msg.payload)["index"])] = now

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scale-sub-{os.getpid()}")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    # Several subscribers share the scores (mosquitto's shared subscriptions).
    sub.subscribe("$share/scale/gsinfer/+/+/score" if share else "gsinfer/+/+/score", qos=0)
    sub.loop_start()
    time.sleep(0.5)
    ready.set()
    stop.wait()
    sub.loop_stop()
    out_q.put(got)


def publisher(args, port, rows, mine, warm, n, warmed, start, out_q):
    """Publishes channels `mine`: their first samples, then one a second each."""
    import paho.mqtt.client as mqtt

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scale-pub-{os.getpid()}")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()

    def sample(k):
        return {"t": START_NS + k * STEP_NS, "v": rows[k % len(rows)].tolist()}

    for i in mine:
        pub.publish(f"scale/c{i}", json.dumps([sample(k) for k in range(warm[i])]), qos=1)
    warmed.wait()  # every publisher has handed its first samples over
    while start.value == 0.0:
        time.sleep(0.01)
    t0 = start.value
    sent = {}
    for s in range(args.seconds):
        tick = t0 + s
        for i in mine:
            # Spread the channels over the second, as independent sources would.
            at = tick + i / n
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            k = warm[i] + s
            sent[(f"c{i}", k)] = time.monotonic()
            pub.publish(f"scale/c{i}", json.dumps(sample(k)), qos=args.qos)
    paced = time.monotonic() - t0
    time.sleep(2.0)
    pub.loop_stop()
    out_q.put((sent, paced))


def feed(args, port, features, length, at_paced=None):
    """The paced part, from --publishers processes (channels dealt round
    robin) and --subscribers processes: one Python process cannot publish
    and acknowledge 10 000 QoS 1 messages a second (its GIL), which would
    measure the load generator instead of gsinfer."""
    import multiprocessing as mp

    if args.data_dir:
        rows = np.load(os.path.join(args.data_dir, "test", f"{args.channel}.npy")).astype(np.float32)
    else:
        rows = np.random.default_rng(0).standard_normal((4000, features)).astype(np.float32)
    rows = rows[:, :features]
    n = args.n
    ctx = mp.get_context("fork")
    pubs = args.publishers or max(1, min(8, -(-n // 2500)))
    subs = args.subscribers or max(1, min(4, -(-n // 5000)))
    # With --spread S, channel i's first window completes i % S samples
    # later, so that with a stride of S the channels' windows are spread
    # over the seconds, as channels started at different times would be.
    warm = [length - 1 - (i % args.spread if args.spread > 1 else 0) for i in range(n)]
    out_q = ctx.Queue()
    stop = ctx.Event()
    readies = [ctx.Event() for _ in range(subs)]
    # Daemons: a run that ends in an error does not wait for them.
    sub_procs = [ctx.Process(target=subscriber, args=(port, subs > 1, r, stop, out_q), daemon=True)
                 for r in readies]
    for p in sub_procs:
        p.start()
    for r in readies:
        r.wait(30)
    warmed = ctx.Barrier(pubs + 1)
    start = ctx.Value("d", 0.0)
    pub_q = ctx.Queue()
    pub_procs = [ctx.Process(target=publisher,
                             args=(args, port, rows, range(p, n, pubs), warm, n, warmed, start, pub_q),
                             daemon=True)
                 for p in range(pubs)]
    for p in pub_procs:
        p.start()
    # Nothing is scored until the paced part: no window is full yet. A
    # publisher that dies (its traceback is on stderr) breaks the barrier
    # instead of leaving the run waiting for ever.
    try:
        warmed.wait(timeout=300)
    except threading.BrokenBarrierError:
        sys.exit("error: a publisher process did not hand over its first samples (see its error above)")
    time.sleep(5.0)
    start.value = time.monotonic() + 0.5
    if at_paced:
        at_paced(start.value)
    sent, paced = {}, 0.0
    for _ in pub_procs:
        try:
            part, took = pub_q.get(timeout=args.seconds + 300)
        except queue.Empty:
            sys.exit("error: a publisher process did not finish its paced part (see its error above)")
        sent.update(part)
        paced = max(paced, took)
    for p in pub_procs:
        p.join()
    time.sleep(10.0)
    stop.set()
    got = {}
    for _ in sub_procs:
        got.update(out_q.get())
    for p in sub_procs:
        p.join()
    lat = np.asarray([got[key] - t for key, t in sent.items() if key in got]) * 1e3
    # paced_s above seconds: the load generator itself could not keep the pace.
    out = {"seconds": args.seconds, "paced_s": round(paced, 1), "publishers": pubs, "subscribers": subs,
           "scores_expected": len(sent),
           # samples after a channel's first window (its first forecast's target on)
           "scores_scorable": sum(1 for (_, k) in sent if k >= length),
           "scores_received": int(lat.size)}
    if lat.size:
        out.update({"p50_ms": round(float(np.percentile(lat, 50)), 2),
                    "p99_ms": round(float(np.percentile(lat, 99)), 2),
                    "p999_ms": round(float(np.percentile(lat, 99.9)), 2),
                    "max_ms": round(float(lat.max()), 2)})
    return out


if __name__ == "__main__":
    main()
