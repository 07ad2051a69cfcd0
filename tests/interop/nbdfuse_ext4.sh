#!/bin/bash
# nbdfuse_ext4.sh - the host kernel's block layer and ext4 on top of dmnbd:
# nbdfuse exposes the export as a file (libnbd client, 1 and 4 connections),
# a loop device sits on it, mkfs.ext4 / mount / write / sync / umount /
# e2fsck / read back.  Finally the server is stopped and the backing file
# (table = plain linear at offset 0) is checked directly.  Needs root,
# /dev/fuse and loop devices.
source "$(dirname "$0")/../protocol/lib.sh"
make_work
for dev in /dev/fuse /dev/loop-control; do
  [ -e "$dev" ] || { echo "SKIP nbdfuse_ext4: $dev missing (needs root, fuse and loop devices)"; exit 77; }
done
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
files:
  - { path: disk.img, size: 256MiB }
devices:
  - name: disk
    description: ext4 test disk
    table: |
      0 524288 linear disk.img 0
YAML
dmnbd_start "$WORK/cfg.yaml"
U="nbd+unix:///disk?socket=$WORK/nbd.sock"
mkdir -p "$WORK/fuse" "$WORK/mnt"

on_cleanup fuse_teardown

dd if=/dev/urandom of="$WORK/ref.bin" bs=1M count=32 status=none
REF=$(sha256sum < "$WORK/ref.bin")
SEQ=$(seq 1 200000 | sha256sum)

# cycle N: nbdfuse with N connections, fresh ext4, write, verify.
cycle() {
  local n=$1 i
  rm -f "$WORK/nbdfuse.pid"
  nbdfuse -C "$n" -P "$WORK/nbdfuse.pid" "$WORK/fuse" "$U" > "$WORK/nbdfuse-$n.log" 2>&1 &
  for i in $(seq 100); do [ -s "$WORK/nbdfuse.pid" ] && break; sleep 0.1; done
  FUSE_PID=$(cat "$WORK/nbdfuse.pid" 2>/dev/null)
  [ -e "$WORK/fuse/nbd" ] || fail "nbdfuse -C $n did not come up: $(cat "$WORK/nbdfuse-$n.log")"
  FUSE_MOUNTED=1
  check "C=$n: fuse file is 256 MiB" test "$(timeout 10 stat -c %s "$WORK/fuse/nbd")" = 268435456
  LOOP=$(timeout 30 losetup -f --show "$WORK/fuse/nbd") || fail "losetup failed"
  timeout 120 mkfs.ext4 -q -F -E lazy_itable_init=0 "$LOOP" || fail "C=$n: mkfs.ext4 failed"
  timeout 30 mount -t ext4 -o discard "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "C=$n: mount failed"
  timeout 60 cp "$WORK/ref.bin" "$WORK/mnt/f1.bin"
  timeout 60 sh -c "seq 1 200000 > '$WORK/mnt/f2.txt'"
  timeout 60 dd if=/dev/urandom of="$WORK/mnt/f3.bin" bs=1M count=8 oflag=direct status=none
  timeout 60 fallocate -p -o 1M -l 2M "$WORK/mnt/f3.bin"   # -o discard: punch -> loop discard -> TRIM
  timeout 60 sync || fail "C=$n: sync failed"
  timeout 30 umount "$WORK/mnt" && MOUNTED=0 || fail "C=$n: umount failed"
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  check "C=$n: e2fsck -fn clean" quiet timeout 120 e2fsck -fn "$LOOP"
  timeout 30 mount -t ext4 -o ro "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "C=$n: ro mount failed"
  check "C=$n: 32 MiB file checksum" test "$(timeout 60 sha256sum < "$WORK/mnt/f1.bin")" = "$REF"
  check "C=$n: text file checksum" test "$(timeout 60 sha256sum < "$WORK/mnt/f2.txt")" = "$SEQ"
  check "C=$n: punched range reads zero" timeout 60 cmp -n 2097152 <(timeout 60 dd if="$WORK/mnt/f3.bin" bs=1M skip=1 count=2 status=none) /dev/zero
  timeout 30 umount "$WORK/mnt" && MOUNTED=0
  timeout 30 losetup -d "$LOOP" && LOOP=""
  timeout 30 umount "$WORK/fuse" && FUSE_MOUNTED=0
  fuse_teardown
}
cycle 1
cycle 4

# The server is gone: the backing file alone must hold the filesystem.
dmnbd_stop || fail "$STOP_REASON"
cp --sparse=always "$WORK/disk.img" "$WORK/copy.img"
check "backing file copy: e2fsck -fn clean" quiet timeout 120 e2fsck -fn "$WORK/copy.img"
LOOP=$(timeout 30 losetup -f --show -r "$WORK/copy.img") || fail "losetup of the copy failed"
timeout 30 mount -t ext4 -o ro "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "mount of the copy failed"
check "backing file copy: 32 MiB file checksum" test "$(timeout 60 sha256sum < "$WORK/mnt/f1.bin")" = "$REF"
check "backing file copy: text file checksum" test "$(timeout 60 sha256sum < "$WORK/mnt/f2.txt")" = "$SEQ"
fuse_teardown
pass
