#!/bin/bash
# qemu.sh - qemu-io / qemu-img (qemu's NBD client: SR, base:allocation,
# BLOCK_SIZE, FUA on every write in writethrough mode) against dmnbd.
source "$(dirname "$0")/../protocol/lib.sh"
make_work
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
files:
  - { path: a.img, size: 32MiB }
  - { path: conv.img, size: 16MiB }
devices:
  - name: disk
    description: 32 MiB linear + 32 MiB zero
    table: |
      0 65536 linear a.img 0
      65536 65536 zero
  - name: conv
    description: convert target
    table: |
      0 32768 linear conv.img 0
YAML
dmnbd_start "$WORK/cfg.yaml"
U="nbd+unix:///disk?socket=$WORK/nbd.sock"
UC="nbd+unix:///conv?socket=$WORK/nbd.sock"

# qemu-io prints "Pattern verification failed" but exits 0, so check the output too.
qio() {
  local out
  out=$(timeout 60 qemu-io -f raw "$@" "$U" 2>&1); local rc=$?
  printf '%s\n' "$ qemu-io $*" "$out" >> "$WORK/qemu-io.log"
  [ $rc -eq 0 ] && ! grep -qiE 'fail|error|Pattern verification' <<<"$out"
}
check "write/read pattern 1M (writethrough = FUA)" qio -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
check "aio_write + aio_flush + read" qio -c 'aio_write -P 0x22 2M 128k' -c 'aio_write -P 0x23 3M 128k' \
  -c aio_flush -c 'read -P 0x22 2M 128k' -c 'read -P 0x23 3M 128k'
check "aio_read of written data" qio -c 'aio_read -P 0xab 0 64k' -c 'aio_read -P 0x22 2M 64k' -c aio_flush
check "write -z (NO_HOLE) reads back zero" qio -c 'write -P 0x11 4M 1M' -c 'write -z 4M 1M' -c 'read -P 0 4M 1M'
check "write -z -u (may unmap) reads back zero" qio -c 'write -P 0x12 5M 1M' -c 'write -z -u 5M 1M' -c 'read -P 0 5M 1M'
check "discard + flush" qio -c 'write -P 0x13 6M 1M' -c 'discard 6M 64k' -c flush -c 'read -P 0x13 6356992 960k'
check "readv/writev" qio -c 'readv -P 0xab 0 512 512 4k' -c 'writev -P 0x5a 8M 4k 4k 8k' -c 'readv -P 0x5a 8M 8k 8k'
check "cache=none (plain writes, then flush)" qio -t none -c 'write -P 0x44 9M 256k' -c flush -c 'read -P 0x44 9M 256k'
check "write to zero target is dropped, reads zero" qio -c 'write -P 0x77 40M 64k' -c 'read -P 0 40M 64k'
check "data persisted across connections" qio -c 'read -P 0xab 0 1M' -c 'read -P 0x44 9M 256k'

# qemu-img map: data where written, zero in file holes and in the zero target.
timeout 60 qemu-img map --output=json -f raw "$U" > "$WORK/map.json" 2>&1
mapcheck() {  # mapcheck OFFSET data|zero
  "$PY" - "$WORK/map.json" "$1" "$2" <<'P'
import json, sys
m, off, want = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
e = next(e for e in m if e["start"] <= off < e["start"] + e["length"])
ok = (e["data"] and not e["zero"]) if want == "data" else (e["zero"] and not e["data"])
sys.exit(0 if ok else print("entry at", off, e) or 1)
P
}
check "qemu-img map: written 1M at 0 is data" mapcheck 0 data
check "qemu-img map: 0x22 at 2M is data" mapcheck $((2*1048576)) data
check "qemu-img map: untouched file region 16M is zero" mapcheck $((16*1048576)) zero
check "qemu-img map: zero target 33M is zero" mapcheck $((33*1048576)) zero
check "qemu-img map: zero target end is zero" mapcheck $((64*1048576-4096)) zero
check "qemu-img map: covers 64 MiB contiguously" "$PY" -c '
import json, sys
m = json.load(open(sys.argv[1])); pos = 0
for e in m:
    assert e["start"] == pos and e["length"] > 0, e; pos += e["length"]
assert pos == 64 << 20, pos' "$WORK/map.json"

# qemu-img convert a random file in, compare, and read it back out.
dd if=/dev/urandom of="$WORK/rand.img" bs=1M count=16 status=none
check "qemu-img convert file -> nbd" timeout 120 qemu-img convert -n -f raw -O raw -W -m 8 "$WORK/rand.img" "$UC"
check "qemu-img compare file vs nbd" timeout 120 qemu-img compare -f raw -F raw "$WORK/rand.img" "$UC"
check "qemu-img convert nbd -> file" timeout 120 qemu-img convert -f raw -O raw "$UC" "$WORK/back.img"
check "round trip identical" cmp "$WORK/rand.img" "$WORK/back.img"

isize() { timeout 30 qemu-img info --output=json "$1" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
check "qemu-img info: disk size 64 MiB" test "$(isize "$U")" = 67108864
check "qemu-img info: conv size 16 MiB" test "$(isize "$UC")" = 16777216
pass
