#!/bin/bash
# nbdcopy.sh - nbdcopy (multi-conn, BLOCK_STATUS, large WRITE_ZEROES for holes)
# file -> nbd -> file over a table spanning two backing files.
source "$(dirname "$0")/../protocol/lib.sh"
make_work
# Backing files pre-filled with non-zero bytes, so holes in the source are only
# right on the device if nbdcopy's zero requests really zero.
for f in a b; do
  head -c 32M /dev/zero | tr '\0' '\377' > "$WORK/$f.img"
done
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
files:
  - { path: a.img, size: 32MiB }
  - { path: b.img, size: 32MiB }
devices:
  - name: disk
    description: two files back to back
    table: |
      0 65536 linear a.img 0
      65536 65536 linear b.img 0
YAML
dmnbd_start "$WORK/cfg.yaml"
U="nbd+unix:///disk?socket=$WORK/nbd.sock"

# Sparse 64 MiB source: random data islands (one across the a/b boundary), holes between.
truncate -s 64M "$WORK/src.img"
for spec in 0:1 5:3 20:2 31:2 47:1 63:1; do
  dd if=/dev/urandom of="$WORK/src.img" bs=1M seek="${spec%:*}" count="${spec#*:}" conv=notrunc status=none
done
sum() { sha256sum < "$1" | cut -d' ' -f1; }
S=$(sum "$WORK/src.img")

check "nbdcopy file -> nbd (-C 4)" timeout 120 nbdcopy -C 4 --flush "$WORK/src.img" "$U"
check "nbdcopy nbd -> file (-C 4)" timeout 120 nbdcopy -C 4 "$U" "$WORK/out1.img"
check "checksum after round trip" test "$(sum "$WORK/out1.img")" = "$S"
check "nbdcopy nbd -> file, 32 MiB requests, synchronous" \
  timeout 120 nbdcopy --synchronous --request-size=33554432 "$U" "$WORK/out2.img"
check "checksum (32 MiB requests)" test "$(sum "$WORK/out2.img")" = "$S"
check "nbdcopy nbd -> null:" timeout 120 nbdcopy -C 4 "$U" null:
check "nbdcopy nbd -> file --no-extents" timeout 120 nbdcopy --no-extents "$U" "$WORK/out3.img"
check "checksum (--no-extents)" test "$(sum "$WORK/out3.img")" = "$S"
# Second pass over the now-written device: a different source, copied with one connection.
dd if=/dev/urandom of="$WORK/src2.img" bs=1M count=64 status=none
check "nbdcopy overwrite (-C 1, --request-size=1048576)" \
  timeout 120 nbdcopy -C 1 --request-size=1048576 "$WORK/src2.img" "$U"
check "nbdcopy nbd -> stdout equals the new source" bash -c 'timeout 120 nbdcopy "$1" - | cmp - "$2"' _ "$U" "$WORK/src2.img"

# The backing files themselves must hold the two halves once the server is gone.
dmnbd_stop || fail "$STOP_REASON"
check "a.img = first 32 MiB" cmp <(head -c 32M "$WORK/src2.img") "$WORK/a.img"
check "b.img = last 32 MiB" cmp <(tail -c 32M "$WORK/src2.img") "$WORK/b.img"
pass
