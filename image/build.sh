#!/usr/bin/env bash
# Builds a Debian bookworm x86-64 disk image for the gsinfer appliance:
#
#   image/out/gsinfer-<variant>.img   raw ext4 root file system (the disk)
#   image/out/vmlinuz-<variant>, image/out/initrd-<variant>.img
#                                     the image's own kernel and initramfs,
#                                     for QEMU's direct kernel boot
#
# Variants (VARIANT=):
#   appliance (default)  gsinfer from the local .deb, installed and enabled,
#                        Mosquitto listening on 127.0.0.1:1883
#   base                 Debian with SSH only: the target of ansible/test.sh
#
# Everything comes from the Debian mirror (MIRROR=) except the .deb, which
# is this repository's own build (DEB=, default the newest
# target/debian/gsinfer_*_amd64.deb; scripts/deb.sh makes it).
# SSH_AUTHORIZED_KEYS= names a file of public keys for root; without it the
# image has no way in. Root's password stays locked.
#
# How: debootstrap (minbase) into a folder, configure it in a chroot, then
# mkfs.ext4 -d turns the folder into the disk image: no loop devices, no
# bootloader (QEMU boots the kernel directly, see image/test.sh). The
# debootstrap result is cached as image/out/bookworm-base.tar; delete it to
# start from the mirror again. Runs as root (chroot, file ownership).
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-appliance}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
OUT=image/out
SIZE=${SIZE:-2G}
# Fixed file system identity and time stamps, so two builds from the same
# packages differ only where the packages do.
FS_UUID=6b5d0a3e-6d1a-4b7e-9a57-3f0c1a6e6a11
HASH_SEED=1b4e28ba-2fa1-11d2-883f-0016d3cca427
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}

case "$VARIANT" in appliance | base) ;; *) echo "VARIANT must be appliance or base" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "image/build.sh: run as root (debootstrap, chroot)" >&2; exit 1; }
for tool in debootstrap mkfs.ext4; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install debootstrap e2fsprogs" >&2; exit 1; }
done
if [ "$VARIANT" = appliance ]; then
  DEB=${DEB:-$(ls target/debian/gsinfer_*_amd64.deb 2>/dev/null | sort -V | tail -n1)}
  [ -n "$DEB" ] && [ -f "$DEB" ] || { echo "no gsinfer .deb: run scripts/deb.sh first, or set DEB=" >&2; exit 1; }
fi
mkdir -p "$OUT"

# Packages of every variant: boot, SSH, and what Ansible's modules need.
BASE_PACKAGES=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,openssh-server,python3,python3-apt,iproute2,ca-certificates,apt-utils,netbase

ROOT=$OUT/rootfs-$VARIANT
mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
in_root() { chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

if [ ! -f "$OUT/bookworm-base.tar" ]; then
  echo "== debootstrap $SUITE from $MIRROR"
  rm -rf "$OUT/debootstrap"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$OUT/debootstrap" "$MIRROR"
  rm -f "$OUT"/debootstrap/var/cache/apt/archives/*.deb
  tar -C "$OUT/debootstrap" --numeric-owner --xattrs -cf "$OUT/bookworm-base.tar.part" .
  mv "$OUT/bookworm-base.tar.part" "$OUT/bookworm-base.tar"
  rm -rf "$OUT/debootstrap"
fi

echo "== root file system ($VARIANT)"
rm -rf "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" --numeric-owner --xattrs -xf "$OUT/bookworm-base.tar"
for fs in proc sys dev; do
  mount --rbind "/$fs" "$ROOT/$fs"
  mounted+=("$ROOT/$fs")
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

cat > "$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
echo gsinfer > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tgsinfer\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
echo "UUID=$FS_UUID / ext4 defaults,errors=remount-ro 0 1" > "$ROOT/etc/fstab"
install -m 644 image/files/80-dhcp.network "$ROOT/etc/systemd/network/80-dhcp.network"
mkdir -p "$ROOT/etc/systemd/system/ssh.service.d"
install -m 644 image/files/ssh-host-keys.conf "$ROOT/etc/systemd/system/ssh.service.d/host-keys.conf"
in_root systemctl enable systemd-networkd.service ssh.service
# The guest's DNS: QEMU's user network answers on 10.0.2.3; systemd-networkd
# learns it by DHCP, but without systemd-resolved nothing writes it here.
echo "nameserver 10.0.2.3" > "$ROOT/etc/resolv.conf.image"

if [ "$VARIANT" = appliance ]; then
  echo "== gsinfer from $DEB, Mosquitto"
  cp "$DEB" "$ROOT/tmp/gsinfer.deb"
  in_root apt-get update
  in_root apt-get install -y --no-install-recommends /tmp/gsinfer.deb mosquitto
  rm -f "$ROOT/tmp/gsinfer.deb"
  install -m 644 image/files/mosquitto-local.conf "$ROOT/etc/mosquitto/conf.d/local.conf"
  in_root systemctl enable mosquitto.service gsinfer.service
fi

if [ -n "${SSH_AUTHORIZED_KEYS:-}" ]; then
  install -d -m 700 "$ROOT/root/.ssh"
  install -m 600 "$SSH_AUTHORIZED_KEYS" "$ROOT/root/.ssh/authorized_keys"
fi

echo "== clean up"
in_root apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/tmp/* "$ROOT"/var/tmp/*
# Per-machine identity is made on first boot, not baked into the image.
rm -f "$ROOT"/etc/ssh/ssh_host_*
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
cleanup
mounted=()
mv "$ROOT/etc/resolv.conf.image" "$ROOT/etc/resolv.conf"
find "$ROOT/var/log" -type f -exec truncate -s 0 {} +

echo "== disk image"
cp "$ROOT"/boot/vmlinuz-* "$OUT/vmlinuz-$VARIANT"
cp "$ROOT"/boot/initrd.img-* "$OUT/initrd-$VARIANT.img"
rm -f "$OUT/gsinfer-$VARIANT.img"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -d "$ROOT" -L gsinfer-root -U "$FS_UUID" \
  -E hash_seed="$HASH_SEED",root_owner=0:0 "$OUT/gsinfer-$VARIANT.img" "$SIZE"
rm -rf "$ROOT"
used=$(du -h "$OUT/gsinfer-$VARIANT.img" | cut -f1)
echo "built $OUT/gsinfer-$VARIANT.img ($SIZE file system, $used on disk), kernel $OUT/vmlinuz-$VARIANT"
