"""Parses gsinfer's /metrics with the Prometheus project's own Python parsers.

Run by tests/kserve_clients.rs after some inference. Fetches the endpoint
twice: as a plain client (Prometheus text format 0.0.4, parsed with
prometheus_client.parser) and with an OpenMetrics Accept header (parsed by
the strict prometheus_client.openmetrics.parser). Exits non-zero on a
problem; prints what it found as JSON.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text


def fetch(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers.get("Content-Type"), r.read().decode()


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def families(parsed):
    return {f.name: f for f in parsed}


def main():
    url = sys.argv[1]
    ctype, text = fetch(url)
    check(ctype.startswith("text/plain; version=0.0.4"), f"content type {ctype}")
    plain = families(parse_text(text))
    ctype, om_text = fetch(url, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    check(ctype.startswith("application/openmetrics-text; version=1.0.0"), f"content type {ctype}")
    om = families(parse_openmetrics(om_text))

    for name, kind in [
        ("gsinfer_samples_rejected", "counter"),
        ("gsinfer_inputs", "counter"),
        ("gsinfer_queue_depth", "gauge"),
        ("gsinfer_engine_state", "gauge"),
        ("gsinfer_queue_duration_seconds", "histogram"),
        ("gsinfer_compute_duration_seconds", "histogram"),
        ("gsinfer_end_to_end_duration_seconds", "histogram"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("gsinfer_heap_allocated_bytes", "gauge"),
    ]:
        check(name in plain and plain[name].type == kind, f"{name} is a {kind} in the text format: {plain.get(name)}")
        check(name in om and om[name].type == kind, f"{name} is a {kind} in OpenMetrics: {om.get(name)}")
    # gsinfer's own families carry its prefix; the process collector's use
    # the names every Prometheus client library gives them.
    for f in plain.values():
        check(f.name.startswith(("gsinfer_", "process_")), f"{f.name} has the gsinfer_ or process_ prefix")
    rss = plain["process_resident_memory_bytes"].samples[0].value
    heap = plain["gsinfer_heap_allocated_bytes"].samples[0].value
    check(0 < heap < rss, f"allocated heap {heap} below resident memory {rss}")

    http_inputs = [s.value for s in plain["gsinfer_inputs"].samples
                   if s.name == "gsinfer_inputs_total" and s.labels.get("source") == "http"]
    check(http_inputs and http_inputs[0] >= 2, f"HTTP inputs counted: {http_inputs}")
    ready = [s.value for s in plain["gsinfer_engine_state"].samples if s.labels.get("state") == "ready"]
    check(ready == [1.0], f"engine state ready: {ready}")
    computed = [s.value for s in plain["gsinfer_compute_duration_seconds"].samples
                if s.name.endswith("_count")]
    check(sum(computed) >= 1, f"compute histogram has observations: {computed}")
    reasons = sorted(s.labels["reason"] for s in plain["gsinfer_samples_rejected"].samples)
    print(json.dumps({"families": len(plain), "openmetrics_families": len(om), "reject_reasons": reasons}))


if __name__ == "__main__":
    main()
