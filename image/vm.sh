# Shared by image/test.sh and ansible/test.sh (sourced, not run): boots an
# image built by image/build.sh under QEMU with its own kernel, SSH on a
# free loopback port of the host, and the guest's writes going to a
# throwaway qcow2 overlay, so the image itself stays as built.
#
#   vm_start <variant>     boot image/out/gsinfer-<variant>.img; sets VM_SSH_PORT
#   vm_wait_ssh            wait until root can log in with image/out/test_key
#   vm_ssh <command...>    run a command in the guest
#   vm_stop                power off (also done on exit)
#
# ACCEL=tcg (default) is software emulation, which works everywhere;
# ACCEL=kvm uses the host's KVM where it works (nested KVM may not).
# VM_BOOT_GUARD is the longest wait for SSH, in seconds (default 900).

VM_DIR=${VM_DIR:-image/out}
VM_KEY=$VM_DIR/test_key
VM_PID=
VM_SSH_PORT=

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

vm_ssh() {
  ssh -i "$VM_KEY" -p "$VM_SSH_PORT" -o BatchMode=yes -o ConnectTimeout=5 \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    root@127.0.0.1 "$@"
}

vm_start() {
  local variant=$1 accel cpu
  command -v qemu-system-x86_64 >/dev/null || { echo "missing qemu-system-x86_64: apt-get install qemu-system-x86 qemu-utils" >&2; return 1; }
  [ -f "$VM_DIR/gsinfer-$variant.img" ] || { echo "no $VM_DIR/gsinfer-$variant.img: run image/build.sh" >&2; return 1; }
  case "${ACCEL:-tcg}" in
    tcg) accel=(-accel tcg) cpu=(-cpu max) ;;
    kvm) accel=(-accel kvm) cpu=(-cpu host) ;;
    *) echo "ACCEL must be tcg or kvm" >&2; return 1 ;;
  esac
  rm -f "$VM_DIR/overlay-$variant.qcow2"
  qemu-img create -q -f qcow2 -F raw -b "gsinfer-$variant.img" "$VM_DIR/overlay-$variant.qcow2"
  VM_SSH_PORT=$(free_port)
  qemu-system-x86_64 -machine q35 "${accel[@]}" "${cpu[@]}" -smp 2 -m 2048 \
    -kernel "$VM_DIR/vmlinuz-$variant" -initrd "$VM_DIR/initrd-$variant.img" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=1" \
    -drive "file=$VM_DIR/overlay-$variant.qcow2,if=virtio,format=qcow2" \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$VM_SSH_PORT-:22" \
    -device virtio-net-pci,netdev=net0 \
    -display none -monitor none -serial "file:$VM_DIR/console-$variant.log" \
    -pidfile "$VM_DIR/qemu-$variant.pid" -daemonize
  VM_PID=$(cat "$VM_DIR/qemu-$variant.pid")
  trap vm_stop EXIT
  echo "booting $variant (qemu pid $VM_PID, ssh on 127.0.0.1:$VM_SSH_PORT, console $VM_DIR/console-$variant.log)"
}

vm_wait_ssh() {
  local deadline=$((SECONDS + ${VM_BOOT_GUARD:-900}))
  until vm_ssh true 2>/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$VM_PID" 2>/dev/null; then
      echo "no SSH into the guest; last console lines:" >&2
      tail -n 30 "$VM_DIR"/console-*.log >&2 || true
      return 1
    fi
    sleep 2
  done
}

vm_stop() {
  if [ -n "$VM_PID" ] && kill -0 "$VM_PID" 2>/dev/null; then
    kill "$VM_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$VM_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  VM_PID=
}
