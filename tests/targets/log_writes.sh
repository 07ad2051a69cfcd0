#!/bin/bash
# log_writes.sh - log-writes + `dmnbd replay-log` end to end, the way
# crash-consistency tests use them:
# 1. writes, FUA writes, trims, write-zeroes, flushes and marks from a real
#    client; the status line; the log after teardown (reload to linear);
#    replay-log's answers (--num-entries, --find, the info line), and replays
#    to each mark onto a zeroed image equal the device as it was at the mark;
#    the full replay equals the device.
# 2. (root, /dev/fuse, loop) ext4 on log-writes: files synced between marks;
#    each mark's replay mounts (journal recovery) with exactly the files synced
#    before it, and e2fsck finds it clean.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
files:
  - { path: disk.img, size: 32MiB }
  - { path: log.img, size: 64MiB }
  - { path: disk2.img, size: 64MiB }
  - { path: log2.img, size: 256MiB }
devices:
  - name: lw
    table: "0 65536 log-writes disk.img log.img"
  - name: lw2
    table: "0 131072 log-writes disk2.img log2.img"
YAML
_targets_write_io_py
dmnbd_start "$WORK/cfg.yaml"
EXPORT=lw
replay_log() { timeout 120 "$DMNBD" replay-log "$@"; }
# zeroed IMG SIZE: a fresh zero-filled image
zeroed() { rm -f "$WORK/$1"; truncate -s "$2" "$WORK/$1"; }
# expect_img NAME SPEC...: build the expected image from "OFF:LEN:BYTE" runs over zeroes
expect_img() {
  local name=$1; shift
  "$PY" - "$WORK/$name" "$@" <<'PYEOF'
import sys
path, runs = sys.argv[1], sys.argv[2:]
img = bytearray(32 << 20)
for r in runs:
    off, n, b = (int(x, 0) for x in r.split(":"))
    img[off:off + n] = bytes([b]) * n
open(path, "wb").write(img)
PYEOF
}

# ---- 1. a write sequence with marks
check "status: empty log" is "$(dm status lw)" "0 65536 log-writes 0 0"
check "table" is "$(dm table lw)" "0 65536 log-writes disk.img log.img"
check "A + flush" is "$(nbdio write:0:65536:0x11 flush | tr '\n' ' ')" "ok ok "
dm message lw 0 mark m1 || fail "mark m1 failed"
check "B (FUA)" is "$(nbdio write:1048576:65536:0x22:fua)" ok
check "C (no flush yet)" is "$(nbdio write:2097152:65536:0x33)" ok
dm message lw 0 mark m2 || fail "mark m2 failed"
check "trim + flush" is "$(nbdio trim:0:32768 flush | tr '\n' ' ')" "ok ok "
dm message lw 0 mark m3 || fail "mark m3 failed"
check "zero + D (never flushed)" is "$(nbdio zero:3145728:65536 write:4194304:4096:0x44 | tr '\n' ' ')" "ok ok "
# A(1+128) FLUSH m1 B(1+128) m2 C(1+128) TRIM FLUSH m3 = 9 entries, sectors 1-393
check "status: 9 entries, last log sector 393" is "$(dm status lw)" "0 65536 log-writes 9 393"
dm message lw 0 note x >/dev/null 2>"$WORK/err"
check "unknown message refused" grep -qF "Unrecognised log writes target message received: note" "$WORK/err"
# Teardown logs the unflushed zero + D and the end mark.
dm reload lw --table "0 65536 linear disk.img 0" || fail "reload to linear failed"

check "replay-log: info line" is "$(replay_log --log "$WORK/log.img")" "Log version=1, sectorsize=512, entries=12"
check "replay-log --num-entries" is "$(replay_log --log "$WORK/log.img" --num-entries)" 12
check "replay-log --find --end-mark m2" is "$(replay_log --log "$WORK/log.img" --find --end-mark m2)" "4@262"
check "replay-log --find --next-fua" is "$(replay_log --log "$WORK/log.img" --find --next-fua)" "3@261"
check "replay-log --list: the end mark last" \
  is "$(replay_log --log "$WORK/log.img" --list | tail -1)" "11@532: sector 0, sectors 0, flags 0x8(MARK), mark dm-log-writes-end"
replay_log --log "$WORK/log.img" --find --end-mark nope 2>/dev/null
check "replay-log --find of a missing mark fails" is "$?" 1

zeroed r1.img 32M; zeroed r2.img 32M; zeroed r3.img 32M; zeroed rall.img 32M
replay_log --log "$WORK/log.img" --replay "$WORK/r1.img" --end-mark m1 || fail "replay to m1 failed"
replay_log --log "$WORK/log.img" --replay "$WORK/r2.img" --end-mark m2 || fail "replay to m2 failed"
replay_log --log "$WORK/log.img" --replay "$WORK/r3.img" --end-mark m3 -v > "$WORK/replay3.txt" || fail "replay to m3 failed"
replay_log --log "$WORK/log.img" --replay "$WORK/rall.img" || fail "full replay failed"
expect_img e1.img 0:65536:0x11
expect_img e2.img 0:65536:0x11 1048576:65536:0x22
expect_img e3.img 32768:32768:0x11 1048576:65536:0x22 2097152:65536:0x33
check "replay to m1: A" cmp "$WORK/r1.img" "$WORK/e1.img"
check "replay to m2: A, B (C not flushed yet)" cmp "$WORK/r2.img" "$WORK/e2.img"
check "replay to m3: trimmed A, B, C" cmp "$WORK/r3.img" "$WORK/e3.img"
check "replay -v lists what it replays" grep -q "^replaying 6@392: sector 0, size 32768, flags 0x4(DISCARD)$" "$WORK/replay3.txt"
check "full replay = the device" cmp "$WORK/rall.img" "$WORK/disk.img"

# ---- 2. ext4 on log-writes: each mark's replay is a consistent filesystem
for dev in /dev/fuse /dev/loop-control; do
  [ -e "$dev" ] || { echo "# skipping the ext4 part: $dev missing"; pass; }
done
U="nbd+unix:///lw2?socket=$WORK/nbd.sock"
mkdir -p "$WORK/fuse" "$WORK/mnt"
on_cleanup fuse_teardown
rm -f "$WORK/nbdfuse.pid"
nbdfuse -P "$WORK/nbdfuse.pid" "$WORK/fuse" "$U" > "$WORK/nbdfuse.log" 2>&1 &
for i in $(seq 100); do [ -s "$WORK/nbdfuse.pid" ] && break; sleep 0.1; done
FUSE_PID=$(cat "$WORK/nbdfuse.pid" 2>/dev/null)
[ -e "$WORK/fuse/nbd" ] || fail "nbdfuse did not come up: $(cat "$WORK/nbdfuse.log")"
FUSE_MOUNTED=1
LOOP=$(timeout 30 losetup -f --show "$WORK/fuse/nbd") || fail "losetup failed"
timeout 120 mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 failed"
timeout 30 mount -t ext4 "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "mount failed"
dd if=/dev/urandom of="$WORK/ref1.bin" bs=1M count=4 status=none
dd if=/dev/urandom of="$WORK/ref2.bin" bs=1M count=4 status=none
timeout 60 cp "$WORK/ref1.bin" "$WORK/mnt/f1.bin" && timeout 60 sync || fail "writing f1 failed"
dm message lw2 0 mark s1 || fail "mark s1 failed"
timeout 60 cp "$WORK/ref2.bin" "$WORK/mnt/f2.bin" && timeout 60 rm "$WORK/mnt/f1.bin" && timeout 60 sync || fail "writing f2 failed"
dm message lw2 0 mark s2 || fail "mark s2 failed"
timeout 30 umount "$WORK/mnt" && MOUNTED=0 || fail "umount failed"
fuse_teardown
dm reload lw2 --table "0 131072 linear disk2.img 0" || fail "reload to linear failed"

# replayed IMG MARK: replay log2.img onto a zeroed IMG up to MARK, mount it
# (journal recovery), run CHECKS on it, unmount, e2fsck -fn.
replay_and_check() {
  local img=$1 mark=$2; shift 2
  zeroed "$img" 64M
  replay_log --log "$WORK/log2.img" --replay "$WORK/$img" --end-mark "$mark" || { echo "#   replay failed"; return 1; }
  LOOP=$(timeout 30 losetup -f --show "$WORK/$img") || return 1
  timeout 30 mount -t ext4 "$LOOP" "$WORK/mnt" && MOUNTED=1 || { echo "#   mount failed"; return 1; }
  local rc=0
  "$@" || rc=1
  timeout 30 umount "$WORK/mnt" && MOUNTED=0
  quiet timeout 120 e2fsck -fn "$LOOP" || { echo "#   e2fsck found errors"; rc=1; }
  timeout 30 losetup -d "$LOOP" && LOOP=""
  return $rc
}
at_s1() {
  [ "$(sha256sum < "$WORK/mnt/f1.bin")" = "$(sha256sum < "$WORK/ref1.bin")" ] && [ ! -e "$WORK/mnt/f2.bin" ]
}
at_s2() {
  [ "$(sha256sum < "$WORK/mnt/f2.bin")" = "$(sha256sum < "$WORK/ref2.bin")" ] && [ ! -e "$WORK/mnt/f1.bin" ]
}
check "ext4 replayed to s1: f1 only, fsck clean" replay_and_check s1.img s1 at_s1
check "ext4 replayed to s2: f2 only, fsck clean" replay_and_check s2.img s2 at_s2
check "ext4 full replay = the device" bash -c 'zeroed() { rm -f "$1"; truncate -s 64M "$1"; }; zeroed "$1" && "$2" replay-log --log "$3" --replay "$1" && cmp "$1" "$4"' \
  _ "$WORK/sall.img" "$DMNBD" "$WORK/log2.img" "$WORK/disk2.img"
pass
