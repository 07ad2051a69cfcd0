#!/bin/bash
# flakey_ext4.sh - xfstests' dmflakey flow on dmnbd: ext4 on a flakey table
# (nbdfuse + loop), a file written and synced, then the table switched to
# drop_writes the way common/dmflakey does it (suspend --nolockfs, load,
# resume) under the mounted filesystem; more writes, a delete and a sync that
# all "succeed" but never reach the disk; unmount; the allow-writes table back;
# mount (journal recovery) and the filesystem is exactly as it was at the
# sync, and e2fsck finds it clean. Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
for dev in /dev/fuse /dev/loop-control; do
  [ -e "$dev" ] || { echo "SKIP flakey_ext4: $dev missing (needs root, fuse and loop devices)"; exit 77; }
done
T="0 524288 flakey disk.img 0"
ALLOW="$T 180 0"
DROP="$T 0 180 1 drop_writes"
targets_start fl "$ALLOW" 256MiB
U="nbd+unix:///fl?socket=$WORK/nbd.sock"
mkdir -p "$WORK/fuse" "$WORK/mnt"

on_cleanup fuse_teardown

attach() {
  local i
  rm -f "$WORK/nbdfuse.pid"
  nbdfuse -P "$WORK/nbdfuse.pid" "$WORK/fuse" "$U" > "$WORK/nbdfuse.log" 2>&1 &
  for i in $(seq 100); do [ -s "$WORK/nbdfuse.pid" ] && break; sleep 0.1; done
  FUSE_PID=$(cat "$WORK/nbdfuse.pid" 2>/dev/null)
  [ -e "$WORK/fuse/nbd" ] || fail "nbdfuse did not come up: $(cat "$WORK/nbdfuse.log")"
  FUSE_MOUNTED=1
  LOOP=$(timeout 30 losetup -f --show "$WORK/fuse/nbd") || fail "losetup failed"
}
detach() {
  timeout 30 losetup -d "$LOOP" && LOOP=""
  timeout 30 umount "$WORK/fuse" && FUSE_MOUNTED=0
  fuse_teardown
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
}
# common/dmflakey's _load_flakey_table: suspend without freezing, load, resume.
load_flakey_table() {
  dm suspend fl --nolockfs && dm load fl --table "$1" && dm resume fl
}

attach
timeout 120 mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 failed"
timeout 30 mount -t ext4 "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "mount failed"
dd if=/dev/urandom of="$WORK/ref1.bin" bs=1M count=8 status=none
dd if=/dev/urandom of="$WORK/ref2.bin" bs=1M count=4 status=none
timeout 60 cp "$WORK/ref1.bin" "$WORK/mnt/f1.bin"
timeout 60 sh -c "echo kept > '$WORK/mnt/small.txt'"
timeout 60 sync || fail "sync failed"

# The crash: writes vanish from here on, while the filesystem carries on.
load_flakey_table "$DROP" || fail "loading the drop_writes table failed"
check "table is drop_writes" is "$(dm table fl)" "$DROP"
timeout 60 cp "$WORK/ref2.bin" "$WORK/mnt/f2.bin"
timeout 60 rm "$WORK/mnt/f1.bin"
timeout 60 sh -c "echo changed > '$WORK/mnt/small.txt'"
check "sync under drop_writes succeeds" timeout 60 sync
check "the filesystem sees its own writes" test -e "$WORK/mnt/f2.bin" -a ! -e "$WORK/mnt/f1.bin"
timeout 30 umount "$WORK/mnt" && MOUNTED=0 || fail "umount under drop_writes failed"
detach
load_flakey_table "$ALLOW" || fail "loading the allow-writes table back failed"
check "table allows writes again" is "$(dm table fl)" "$ALLOW 2 error_reads error_writes"

# After the "power cut": the state of the last sync.
attach
timeout 30 mount -t ext4 "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "mount after the drop failed"
check "f1 (synced before) is there" test "$(sha256sum < "$WORK/mnt/f1.bin")" = "$(sha256sum < "$WORK/ref1.bin")"
check "f2 (written after) is not" test ! -e "$WORK/mnt/f2.bin"
check "small.txt has its synced content" is "$(cat "$WORK/mnt/small.txt")" kept
timeout 30 umount "$WORK/mnt" && MOUNTED=0 || fail "umount failed"
check "e2fsck -fn clean" quiet timeout 120 e2fsck -fn "$LOOP"
detach
pass
