#!/usr/bin/env bash
# The main job on a fresh Debian machine, on the CPU: installs what is
# missing, builds gsinfer, puts ONNX Runtime's library beside it
# (tools/fetch_onnxruntime.sh: target/lib/gsinfer/, where gsinfer looks
# first; without it gsinfer runs the same models on tract, 3-4x slower on
# the LSTM, and says so), starts a local Mosquitto if no
# broker listens on 1883, runs gsinfer with the example configuration,
# replays a real SMAP channel over MQTT and shows the anomaly events arriving.
#
#   bash scripts/demo.sh                 # channel S-1 at 400 samples/s
#   CHANNEL=E-7 RATE=300 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CHANNEL=${CHANNEL:-S-1}
RATE=${RATE:-400}
DATA=${GSINFER_DATA_DIR:-../shared/data/telemanom}
CONFIG=config/gsinfer.example.toml
SUDO=()
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=(sudo)

need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
command -v curl >/dev/null || need+=(curl ca-certificates)
command -v cc >/dev/null || need+=(build-essential)
command -v make >/dev/null || need+=(make)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  "${SUDO[@]}" apt-get update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
  # gsinfer needs Rust 1.92 or newer; Debian's own cargo is older.
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
if [ ! -d "$DATA/test" ]; then
  echo "no telemetry at $DATA: set GSINFER_DATA_DIR to the telemanom data set (test/<channel>.npy)" >&2
  exit 1
fi

cargo build --release
BIN=target/release/gsinfer
tools/fetch_onnxruntime.sh target/lib/gsinfer ||
  echo "== could not fetch ONNX Runtime (offline?): the models run on tract" >&2
pids=()
# Stop in reverse order of start, so gsinfer leaves the broker cleanly.
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT

if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  echo "== starting a local Mosquitto on 127.0.0.1:1883"
  MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  "$MOSQ" -p 1883 >/dev/null 2>&1 & pids+=($!)
  sleep 0.5
fi

echo "== gsinfer run --config $CONFIG"
"$BIN" run --config "$CONFIG" & pids+=($!)
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:8080/readyz >/dev/null && break
  sleep 0.2
done
curl -sf http://127.0.0.1:8080/readyz >/dev/null || { echo "gsinfer did not become ready" >&2; exit 1; }

echo "== anomaly events on gsinfer/events:"
mosquitto_sub -h 127.0.0.1 -p 1883 -t gsinfer/events -v & pids+=($!)
sleep 0.3

echo "== replaying $CHANNEL at $RATE samples/s"
"$BIN" replay --config "$CONFIG" --data-dir "$DATA" --channel "$CHANNEL" --rate "$RATE"
sleep 3

echo "== status (http://127.0.0.1:8080/api/status):"
curl -s http://127.0.0.1:8080/api/status | python3 -c '
import json, sys
s = json.load(sys.stdin)
for m in s["models"]:
    print("model %s on %s: %d samples, %d windows, %d scores, %d dropped, latency us %s"
          % (m["name"], m["engine"], m["samples"], m["windows"], m["scores"], m["windows_dropped"], m["latency_us"]))
print("events:", len(s["events"]), " rejected:", {k: v for k, v in s["rejected"].items() if v})'
