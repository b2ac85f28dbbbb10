#!/usr/bin/env bash
# Static checks of the units, runnable anywhere systemd's tools are
# installed (no running systemd needed, so containers and CI work):
#
# - systemd-analyze verify, in a scratch root holding the distribution's
#   units, ours, and a stand-in for /usr/bin/gsinfer (verify checks that
#   ExecStart= is executable); clean means it prints nothing.
# - systemd-sysusers and systemd-tmpfiles apply our sysusers.d and
#   tmpfiles.d files to that root (as root only: tmpfiles chowns).
# - systemd-analyze security --offline=true: gsinfer.service's exposure
#   must be 2.0 or lower (the figure is printed), the rebuild units' too.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
units=(gsinfer.service gsinfer-engine-rebuild.service gsinfer-engine-rebuild@.service)

mkdir -p "$root/usr/lib/systemd" "$root/usr/bin" "$root/etc"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
for u in "${units[@]}"; do cp "systemd/$u" "$root/usr/lib/systemd/system/"; done
printf '#!/bin/sh\nexit 0\n' > "$root/usr/bin/gsinfer"
chmod 755 "$root/usr/bin/gsinfer"

# Templates are verified through an instance.
out=$(systemd-analyze verify --root="$root" --man=no \
  "$root/usr/lib/systemd/system/gsinfer.service" \
  "$root/usr/lib/systemd/system/gsinfer-engine-rebuild.service" \
  "$root/usr/lib/systemd/system/gsinfer-engine-rebuild@force.service" 2>&1) || true
if [ -n "$out" ]; then
  echo "systemd-analyze verify is not clean:" >&2
  echo "$out" >&2
  exit 1
fi
echo "systemd-analyze verify: clean (${units[*]})"

if [ "$(id -u)" -eq 0 ]; then
  : > "$root/etc/passwd"; : > "$root/etc/group"
  install -D -m 644 systemd/gsinfer.sysusers "$root/usr/lib/sysusers.d/gsinfer.conf"
  install -D -m 644 systemd/gsinfer.tmpfile "$root/usr/lib/tmpfiles.d/gsinfer.conf"
  systemd-sysusers --root="$root" gsinfer.conf >/dev/null
  grep -q '^gsinfer:' "$root/etc/passwd" || { echo "sysusers made no user gsinfer" >&2; exit 1; }
  systemd-tmpfiles --root="$root" --create gsinfer.conf
  uid=$(awk -F: '$1 == "gsinfer" { print $3 }' "$root/etc/passwd")
  [ "$(stat -c %u:%a "$root/var/lib/gsinfer/engines")" = "$uid:750" ] \
    || { echo "tmpfiles did not make /var/lib/gsinfer/engines gsinfer's, mode 750" >&2; exit 1; }
  echo "sysusers.d, tmpfiles.d: user gsinfer, /var/lib/gsinfer/engines"
fi

threshold=$(awk -v m="$MAX_EXPOSURE" 'BEGIN { printf "%d", m * 10 }')
for u in gsinfer.service gsinfer-engine-rebuild.service gsinfer-engine-rebuild@.service; do
  report=$(systemd-analyze security --offline=true --threshold="$threshold" "systemd/$u" 2>&1) || {
    echo "$report" >&2
    echo "$u: exposure above $MAX_EXPOSURE" >&2
    exit 1
  }
  echo "$report" | grep 'Overall exposure level'
done
