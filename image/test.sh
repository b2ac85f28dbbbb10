#!/usr/bin/env bash
# Boot test of the appliance image (not part of `cargo test`; about 2
# minutes under software emulation, see README): boots
# image/out/gsinfer-appliance.img under QEMU and checks from the host,
# through SSH on a loopback-forwarded port, that
#   - `systemctl is-active gsinfer` says active (READY=1 was sent: models
#     loaded, local Mosquitto connected), with the watchdog armed,
#   - /healthz and /readyz answer 200 through a tunnel over that port
#     (gsinfer's status server listens on the guest's loopback only),
#   - gsinfer logs to the journal with structured fields,
#   - a frozen gsinfer (SIGSTOP: no watchdog pings) is killed by systemd's
#     watchdog and restarted by Restart=on-failure.
# Builds the .deb and the image first when they are missing (BUILD=1
# rebuilds the image). Needs root to build the image, not to boot it.
set -euo pipefail
cd "$(dirname "$0")/.."
. image/vm.sh

started=$SECONDS
OUT=image/out
mkdir -p "$OUT"
[ -f "$OUT/test_key" ] || ssh-keygen -q -t ed25519 -N '' -C gsinfer-image-test -f "$OUT/test_key"
if [ "${BUILD:-0}" = 1 ] || [ ! -f "$OUT/gsinfer-appliance.img" ]; then
  ls target/debian/gsinfer_*_amd64.deb >/dev/null 2>&1 || bash scripts/deb.sh
  VARIANT=appliance SSH_AUTHORIZED_KEYS="$OUT/test_key.pub" bash image/build.sh
fi

boot=$SECONDS
vm_start appliance
vm_wait_ssh
echo "SSH up after $((SECONDS - boot)) s"

state=
for _ in $(seq 150); do
  state=$(vm_ssh systemctl is-active gsinfer || true)
  [ "$state" = activating ] || break
  sleep 2
done
vm_ssh systemctl status --no-pager gsinfer | head -n 12 || true
[ "$state" = active ] || { echo "gsinfer is $state, not active" >&2; vm_ssh journalctl -u gsinfer --no-pager -n 50 >&2 || true; exit 1; }
echo "systemctl is-active gsinfer: $state ($((SECONDS - boot)) s after boot)"
[ "$(vm_ssh systemctl show -P WatchdogUSec gsinfer)" != 0 ] || { echo "watchdog not armed" >&2; exit 1; }

http_port=$(free_port)
ssh -i "$VM_KEY" -p "$VM_SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ExitOnForwardFailure=yes \
  -N -L "127.0.0.1:$http_port:127.0.0.1:8080" root@127.0.0.1 &
tunnel=$!
trap 'kill $tunnel 2>/dev/null || true; vm_stop' EXIT
for path in /healthz /readyz; do
  code=000
  for _ in $(seq 30); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port$path" || true)
    [ "$code" = 200 ] && break
    sleep 1
  done
  [ "$code" = 200 ] || { echo "$path answered $code" >&2; exit 1; }
  echo "GET $path through 127.0.0.1:$http_port: $code"
done

fields=$(vm_ssh journalctl -u gsinfer -o verbose --no-pager -n 20)
grep -q 'TARGET=gsinfer' <<<"$fields" || { echo "no structured TARGET= field in the journal" >&2; exit 1; }
echo "journal: structured fields present ($(grep -c 'TARGET=' <<<"$fields") entries with TARGET=)"

# The watchdog under the real systemd: a frozen gsinfer sends no pings, so
# after WatchdogSec systemd kills it and Restart=on-failure brings it back.
pid=$(vm_ssh systemctl show -P MainPID gsinfer)
vm_ssh kill -STOP "$pid"
t=$SECONDS
restarted=
for _ in $(seq 90); do
  sleep 2
  now=$(vm_ssh systemctl show -P MainPID gsinfer || true)
  if [ "$now" != "$pid" ] && [ "$now" != 0 ] && [ "$(vm_ssh systemctl is-active gsinfer || true)" = active ]; then
    restarted=yes
    break
  fi
done
[ -n "$restarted" ] || { echo "gsinfer was not restarted by the watchdog" >&2; vm_ssh journalctl -u gsinfer --no-pager -n 30 >&2 || true; exit 1; }
vm_ssh journalctl -u gsinfer --no-pager -n 40 | grep -m1 "Watchdog timeout" || true
echo "frozen gsinfer (pid $pid) restarted by the watchdog as pid $now after $((SECONDS - t)) s, active again"

vm_ssh systemctl poweroff >/dev/null 2>&1 || true
echo "image boot test passed in $((SECONDS - boot)) s (total $((SECONDS - started)) s, ACCEL=${ACCEL:-tcg})"
