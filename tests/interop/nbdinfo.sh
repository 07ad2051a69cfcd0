#!/bin/bash
# nbdinfo.sh - nbdinfo (libnbd) against dmnbd: --list, --map, --map --totals,
# --can, --is, --size; one connection over TCP on a free port.
source "$(dirname "$0")/../protocol/lib.sh"
make_work
PORT=$(free_tcp_port)
# data.img: 8 MiB sparse file with 1 MiB of data at 1 MiB (written before the
# server starts; existing files are used as they are).
truncate -s 8M "$WORK/data.img"
dd if=/dev/urandom of="$WORK/data.img" bs=1M seek=1 count=1 conv=notrunc status=none
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock", "tcp://127.0.0.1:$PORT" ]
files:
  - { path: data.img, size: 8MiB }
  - { path: ro.img, size: 1MiB }
devices:
  - name: disk
    description: linear disk with a zero tail
    table: |
      0 16384 linear data.img 0
      16384 16384 zero
  - name: ro
    description: read-only device
    read_only: true
    table: |
      0 2048 linear ro.img 0
YAML
dmnbd_start "$WORK/cfg.yaml"
U="nbd+unix:///disk?socket=$WORK/nbd.sock"
URO="nbd+unix:///ro?socket=$WORK/nbd.sock"
NI() { timeout 30 nbdinfo "$@"; }

NI --list "nbd+unix:///?socket=$WORK/nbd.sock" > "$WORK/list.out" 2>&1
check "--list shows export disk" grep -q '^export="disk":' "$WORK/list.out"
check "--list shows export ro" grep -q '^export="ro":' "$WORK/list.out"
check "--list shows disk description" grep -qF 'description: linear disk with a zero tail' "$WORK/list.out"
check "--list shows ro description" grep -qF 'description: read-only device' "$WORK/list.out"

# nbdinfo coalesces equal neighbours, so the output is exact however the server splits extents.
cat > "$WORK/map.want" <<'M'
         0     1048576    3  hole,zero
   1048576     1048576    0  data
   2097152    14680064    3  hole,zero
M
NI --map "$U" > "$WORK/map.out" 2>&1
check "--map exact (hole, data, file hole + zero target)" diff -u "$WORK/map.want" "$WORK/map.out"
printf '   1048576   6.2%%   0 data\n  15728640  93.8%%   3 hole,zero\n' > "$WORK/totals.want"
NI --map --totals "$U" > "$WORK/totals.out" 2>&1
check "--map --totals exact" diff -u "$WORK/totals.want" "$WORK/totals.out"

check "--size = 16777216" test "$(NI --size "$U")" = 16777216
check "--size over TCP = 16777216" test "$(NI --size "nbd://127.0.0.1:$PORT/disk")" = 16777216
for c in flush fua trim zero fast-zero df multi-conn cache structured-reply read write connect; do
  check "--can $c" NI --can "$c" "$U"
done
rc_is() { local want=$1; shift; NI "$@"; test $? -eq "$want"; }   # nbdinfo: 0 = true, 2 = false
check "--is read-only on disk is false (exit 2)" rc_is 2 --is read-only "$U"
check "--is read-only on ro is true" rc_is 0 --is read-only "$URO"
check "--can write on ro is false (exit 2)" rc_is 2 --can write "$URO"
NI --json "$U" > "$WORK/info.json" 2>&1
check "--json: block sizes 512/4096/32MiB, contexts base:allocation" "$PY" -c '
import json, sys
j = json.load(open(sys.argv[1]))
e = j["exports"][0]
assert (e["block_size_minimum"], e["block_size_preferred"], e["block_size_maximum"]) == (512, 4096, 33554432), e
assert "base:allocation" in e["contexts"], e
assert e["export-size"] == 16777216 and e.get("description") == "linear disk with a zero tail", e
' "$WORK/info.json"
pass
