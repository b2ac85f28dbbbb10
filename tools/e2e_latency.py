#!/usr/bin/env python3
"""End-to-end latency of a running gsinfer: publishes a SMAP test channel at
a fixed rate (one sample per message, QoS 1, the stamps `gsinfer replay`
uses) and times each sample's publish to the arrival of its score on
`gsinfer/<model>/<channel>/score`. Beside it, the broker's own floor: the
same publisher and subscriber timing a plain echo topic on the same broker.

    python3 tools/e2e_latency.py --port 1883 --data-dir ../shared/data/telemanom \
        --channel S-1 --rate 100 --limit 3000

Prints percentiles in ms as one JSON line. The channel must be fresh to the
service (its sample indices start at 0), so run it against a newly started
service or a channel it has not seen.
"""
import argparse
import json
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt

START_NS = 1_514_764_800_000_000_000
STEP_NS = 60_000_000_000


def percentiles(xs):
    xs = np.asarray(xs) * 1e3
    return {"count": int(xs.size), "p50": float(np.percentile(xs, 50)), "p90": float(np.percentile(xs, 90)),
            "p99": float(np.percentile(xs, 99)), "p999": float(np.percentile(xs, 99.9)), "max": float(xs.max())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--channel", default="S-1")
    ap.add_argument("--model", default="smap_lstm")
    ap.add_argument("--topic-prefix", default="telemetry/SMAP")
    ap.add_argument("--rate", type=float, default=100.0, help="samples per second")
    ap.add_argument("--limit", type=int, default=3000)
    args = ap.parse_args()

    rows = np.load(f"{args.data_dir}/test/{args.channel}.npy")[: args.limit].astype(np.float32)
    sent, got, echo_sent, echo_got = {}, {}, {}, {}
    lock = threading.Lock()

    def on_message(_c, _u, msg):
        now = time.perf_counter()
        if msg.topic.endswith("/score"):
            idx = json.loads(msg.payload)["index"]
            with lock:
                got[idx] = now
        else:
            with lock:
                echo_got[int(msg.payload)] = now

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gsinfer-latency-sub")
    sub.on_message = on_message
    sub.connect(args.host, args.port)
    sub.subscribe([(f"gsinfer/{args.model}/{args.channel}/score", 1), ("gsinfer-latency/echo", 1)])
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gsinfer-latency-pub")
    pub.connect(args.host, args.port)
    pub.loop_start()
    time.sleep(1.0)

    period = 1.0 / args.rate
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        due = t0 + i * period
        while (d := due - time.perf_counter()) > 0:
            time.sleep(min(d, 0.001))
        payload = json.dumps({"t": START_NS + i * STEP_NS, "seq": i, "v": row.tolist()})
        sent[i] = time.perf_counter()
        pub.publish(f"{args.topic_prefix}/{args.channel}", payload, qos=1)
        echo_sent[i] = time.perf_counter()
        pub.publish("gsinfer-latency/echo", str(i), qos=1)
    time.sleep(3.0)
    pub.loop_stop()
    sub.loop_stop()
    with lock:
        lat = [got[i] - sent[i] for i in got if i in sent]
        floor = [echo_got[i] - echo_sent[i] for i in echo_got if i in echo_sent]
    print(json.dumps({"rate": args.rate, "samples": len(rows), "scores": len(lat),
                      "gsinfer_ms": percentiles(lat) if lat else None,
                      "broker_floor_ms": percentiles(floor) if floor else None}))


if __name__ == "__main__":
    main()
