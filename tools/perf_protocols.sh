#!/usr/bin/env bash
# KServe over HTTP against KServe over gRPC on one running gsinfer: runs
# tools/perf_analyzer.sh at one concurrency over each protocol in turn
# (HTTP, gRPC, HTTP, gRPC, ... for --rounds rounds) and prints, per run,
# perf_analyzer's throughput and latency beside gsinfer's own CPU time per
# inference (utime + stime of --pid from /proc, divided by the inference
# count of the model's statistics over the run), which leaves out the
# client's share of the machine. BENCHMARKS.md, "KServe v2 over HTTP and
# over gRPC".
#
#   gsinfer run --config <config with status.listen and grpc.listen> &
#   tools/perf_protocols.sh --pid $! [--http 127.0.0.1:8080] [--grpc 127.0.0.1:8001] \
#       [--model smap_lstm] [--concurrency 16] [--rounds 2]
set -euo pipefail

PID= HTTP=127.0.0.1:8080 GRPC=127.0.0.1:8001 MODEL=smap_lstm CONCURRENCY=16 ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --pid) PID=$2; shift 2 ;;
    --http) HTTP=$2; shift 2 ;;
    --grpc) GRPC=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument $1; see the header of $0" >&2; exit 2 ;;
  esac
done
[ -r "/proc/$PID/stat" ] || { echo "--pid: no running process $PID (gsinfer's pid)" >&2; exit 2; }
here=$(dirname "$0")
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
count() {
  curl -sf "http://$HTTP/v2/models/$MODEL/stats" |
    python3 -c "import json, sys; print(json.load(sys.stdin)['model_stats'][0]['inference_count'])"
}
echo "| run | inferences/s | p50 / p99 ms | gsinfer CPU per inference |"
echo "| --- | ---: | ---: | ---: |"
for _ in $(seq "$ROUNDS"); do
  for proto in http grpc; do
    url=$HTTP; [ "$proto" = grpc ] && url=$GRPC
    t0=$(ticks) c0=$(count)
    row=$(OUT_DIR=${OUT_DIR:-target/perf_protocols}/$proto "$here/perf_analyzer.sh" --protocol "$proto" \
            --url "$url" --model "$MODEL" --concurrency "$CONCURRENCY" 2>/dev/null | tail -1) || row=
    t1=$(ticks) c1=$(count)
    cpu=$(python3 -c "print(f'{($t1 - $t0) * 1e6 / $hz / max(1, $c1 - $c0):.0f} µs')")
    if [ -n "$row" ]; then
      IFS='|' read -r _ _ rate p50 p99 _ <<<"$row"
      echo "| $proto | ${rate// /} | ${p50// /} / ${p99// /} | $cpu |"
    else
      echo "| $proto | (perf_analyzer failed or did not stabilise) | – | $cpu |"
    fi
  done
done
