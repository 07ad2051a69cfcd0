#!/bin/bash
# thin_ext4.sh - ext4 on a thin volume through the kernel's block layer
# (nbdfuse + loop), the way LVM thin users work: a file written and synced;
# a thin snapshot taken with the filesystem frozen (dmnbd thin snapshot);
# the file deleted and another written on the origin; the snapshot mounts
# with the first file as it was (e2fsck clean); with the snapshot removed,
# fstrim gives the deleted file's blocks back to the pool; then thin_check
# and dmnbd thin check of the metadata. Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/../../.ci/packages.sh"
for dev in /dev/fuse /dev/loop-control; do
  [ -e "$dev" ] || { echo "SKIP thin_ext4: $dev missing (needs root, fuse and loop devices)"; exit 77; }
done
command -v thin_check > /dev/null || {
  echo "# thin-provisioning-tools not installed"
  exit "$(packages_skip_status)"
}
make_work
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
devices:
  - { name: z, table: "0 8 zero" }
YAML
_targets_write_io_py
dmnbd_start "$WORK/cfg.yaml"
data_used() { dm status pool | awk '{split($6, a, "/"); print a[1]}'; }

check "the pool" quiet dm thin create-pool pool --meta meta.img --data data.img \
  --meta-size 16M --data-size 256M
check "a 1 GiB thin volume on 256 MiB of data" quiet dm thin create vol --pool pool --size 1G
mkdir -p "$WORK/fuse" "$WORK/fuse2" "$WORK/mnt" "$WORK/mnt2"
on_cleanup fuse_teardown
on_cleanup snap_teardown
fuse_attach vol "$WORK/fuse"; FUSE_PID=$(cat "$WORK/nbdfuse-vol.pid"); FUSE_MOUNTED=1
LOOP=$(timeout 30 losetup -f --show "$WORK/fuse/nbd") || fail "losetup failed"
check "mkfs.ext4 (discarding the whole volume first)" quiet timeout 120 mkfs.ext4 -q -F "$LOOP"
timeout 30 mount -t ext4 "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "mount failed"
dd if=/dev/urandom of="$WORK/mnt/a.bin" bs=1M count=24 status=none
sync
ref=$(sha256sum < "$WORK/mnt/a.bin")
used_with_a=$(data_used)
check "the file took data blocks (24 MiB: 384 of 64 KiB, and ext4's own)" test "$used_with_a" -ge 384

# lvcreate -s of a mounted thin volume: the filesystem frozen for the moment.
timeout 30 fsfreeze -f "$WORK/mnt" || fail "fsfreeze failed"
dm thin snapshot snap --of vol > /dev/null
rc=$?
timeout 30 fsfreeze -u "$WORK/mnt"
check "thin snapshot of the mounted volume" test "$rc" -eq 0
rm -f "$WORK/mnt/a.bin"
dd if=/dev/urandom of="$WORK/mnt/b.bin" bs=1M count=4 status=none
sync

fuse_attach snap "$WORK/fuse2"; SNAP_FUSE_PID=$(cat "$WORK/nbdfuse-snap.pid"); SNAP_FUSE_MOUNTED=1
SNAP_LOOP=$(timeout 30 losetup -f --show "$WORK/fuse2/nbd") || fail "losetup of the snapshot failed"
check "e2fsck -fn of the snapshot: clean" quiet timeout 120 e2fsck -fn "$SNAP_LOOP"
timeout 30 mount -t ext4 -o ro "$SNAP_LOOP" "$WORK/mnt2" && SNAP_MOUNTED=1 || fail "mounting the snapshot failed"
check "the snapshot has the file as it was" is "$(sha256sum < "$WORK/mnt2/a.bin")" "$ref"
check "  and not the one written after" test ! -e "$WORK/mnt2/b.bin"
check "the origin has the change" test ! -e "$WORK/mnt/a.bin" -a -e "$WORK/mnt/b.bin"

# The deleted file's blocks are the snapshot's too: fstrim unmaps them from
# the origin, the pool keeps them until the snapshot goes.
before=$(data_used)
check "fstrim with the snapshot there" quiet timeout 60 fstrim "$WORK/mnt"
echo 3 > /proc/sys/vm/drop_caches  # the snapshot is read from the pool again
check "  the snapshot still reads the file" is "$(sha256sum < "$WORK/mnt2/a.bin")" "$ref"
snap_teardown
check "thin remove of the snapshot" quiet dm thin remove snap
after=$(data_used)
check "  gives the deleted file's blocks back (used $before -> $after)" test "$after" -le $((before - 256))
# Blocks only the origin maps go back at fstrim.
rm -f "$WORK/mnt/b.bin"
sync
before=$(data_used)
check "fstrim after another delete" quiet timeout 60 fstrim "$WORK/mnt"
after=$(data_used)
# 4 MiB is 64 blocks, less the ones ext4 shares with its other data (57 seen).
check "  gives those blocks back (4 MiB: up to 64; used $before -> $after)" test "$after" -le $((before - 32))
timeout 30 umount "$WORK/mnt" && MOUNTED=0
check "e2fsck -fn of the origin: clean" quiet timeout 120 e2fsck -fn "$LOOP"
fuse_teardown
dmnbd_stop || fail "$STOP_REASON"
check "thin_check of the pool" quiet thin_check "$WORK/meta.img"
check "dmnbd thin check of the pool" quiet "$DMNBD" thin check "$WORK/meta.img"
pass
