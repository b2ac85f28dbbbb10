#!/usr/bin/env bash
# A real Ansible run against a real target (not part of `cargo test`; about
# 16 minutes under software emulation): boots the base image (Debian
# bookworm with SSH, no gsinfer; image/build.sh VARIANT=base) under QEMU and
# runs site.yml against it over SSH on a loopback-forwarded port:
#   1. the first run installs the .deb, Mosquitto, the model, the udev rule
#      and the configuration (with a serial link whose adapter is absent),
#      and starts gsinfer: something changed, nothing failed, and gsinfer is
#      active and ready;
#   2. the second run changes nothing (changed=0);
#   3. a changed setting (gsinfer_log_level) rewrites the drop-in and
#      restarts gsinfer (a new invocation id), which comes back active.
# Builds the .deb and the image first when missing (BUILD=1 rebuilds the
# image; needs root). The recap lines are printed and kept in image/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
. image/vm.sh

started=$SECONDS
OUT=image/out
mkdir -p "$OUT"
command -v ansible-playbook >/dev/null || { echo "missing ansible-playbook: pip install ansible-core" >&2; exit 1; }
[ -f "$OUT/test_key" ] || ssh-keygen -q -t ed25519 -N '' -C gsinfer-image-test -f "$OUT/test_key"
ls target/debian/gsinfer_*_amd64.deb >/dev/null 2>&1 || bash scripts/deb.sh
DEB=$(ls target/debian/gsinfer_*_amd64.deb | sort -V | tail -n1)
if [ "${BUILD:-0}" = 1 ] || [ ! -f "$OUT/gsinfer-base.img" ]; then
  VARIANT=base SSH_AUTHORIZED_KEYS="$OUT/test_key.pub" bash image/build.sh
fi

vm_start base
vm_wait_ssh
echo "SSH up after $((SECONDS - started)) s"

inventory=$OUT/ansible-inventory.yml
cat > "$inventory" <<INVENTORY
groundstations:
  hosts:
    qemu-base:
      ansible_host: 127.0.0.1
      ansible_port: $VM_SSH_PORT
      ansible_user: root
      ansible_ssh_private_key_file: $PWD/$OUT/test_key
      ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  vars:
    gsinfer_package_file: $PWD/$DEB
    gsinfer_mosquitto_local: true
    gsinfer_model_repository_src: $PWD/model_repository
    gsinfer_models: [smap_lstm]
    gsinfer_serial_adapter: {vendor_id: "0403", product_id: "6001"}
    gsinfer_serial_toml: |
      [[serial]]
      name = "modem"
      device = "/dev/gsinfer-serial"
      framing = "kiss"
      payload = "ccsds"
      model = "smap_lstm"

      [[serial.packet]]
      apid = 100
      time = { byte_offset = 0, type = "i64", unit = "ns" }
      parameter = [{ byte_offset = 8, type = "f32", count = 25, channel = "S-1", feature = 0 }]
INVENTORY

# play <name> [ansible-playbook args...]: runs site.yml, keeps the log,
# prints and returns the recap line of the target.
play() {
  local name=$1
  shift
  (cd ansible && ANSIBLE_FORCE_COLOR=0 ansible-playbook -i "../$inventory" site.yml "$@") \
    > "$OUT/ansible-$name.log" 2>&1 || { tail -n 40 "$OUT/ansible-$name.log" >&2; return 1; }
  grep -E '^qemu-base +:' "$OUT/ansible-$name.log" | tail -n1
}
field() { sed -E "s/.*$1=([0-9]+).*/\1/" <<<"$2"; }
ready() {
  vm_ssh python3 - <<'PY'
import sys, urllib.request
for path in ("/healthz", "/readyz"):
    with urllib.request.urlopen("http://127.0.0.1:8080" + path, timeout=5) as r:
        assert r.status == 200, (path, r.status)
print("healthz, readyz: 200")
PY
}

t=$SECONDS
first=$(play first)
echo "first run  ($((SECONDS - t)) s): $first"
[ "$(field failed "$first")" = 0 ] && [ "$(field changed "$first")" -gt 0 ] || { echo "first run did not converge" >&2; exit 1; }
[ "$(vm_ssh systemctl is-active gsinfer)" = active ] || { echo "gsinfer not active after the first run" >&2; exit 1; }
ready

t=$SECONDS
second=$(play second)
echo "second run ($((SECONDS - t)) s): $second"
[ "$(field changed "$second")" = 0 ] && [ "$(field failed "$second")" = 0 ] || { echo "second run is not idempotent" >&2; grep -E '^changed:' "$OUT/ansible-second.log" >&2 || true; exit 1; }

before=$(vm_ssh systemctl show -P InvocationID gsinfer)
t=$SECONDS
third=$(play third -e gsinfer_log_level=debug)
echo "third run, gsinfer_log_level=debug ($((SECONDS - t)) s): $third"
after=$(vm_ssh systemctl show -P InvocationID gsinfer)
[ "$before" != "$after" ] || { echo "a changed setting did not restart gsinfer" >&2; exit 1; }
[ "$(vm_ssh systemctl is-active gsinfer)" = active ] || { echo "gsinfer not active after the restart" >&2; exit 1; }
vm_ssh systemctl show -P Environment gsinfer | grep -q RUST_LOG=debug || { echo "drop-in not applied" >&2; exit 1; }
ready

vm_ssh systemctl poweroff >/dev/null 2>&1 || true
echo "ansible test passed in $((SECONDS - started)) s"
