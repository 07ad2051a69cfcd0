#!/bin/bash
# snapshot.sh - snapshots from a real client, the way LVM users make them:
# 1. `dmnbd snapshot create` over a live device: the tables it builds, the
#    snapshot keeps the old bytes while the origin changes, writes to the
#    snapshot leave the origin alone, status numbers; each failing step
#    (missing COW size, a bad chunk size, an existing name) leaves every
#    device as it was; `dmnbd snapshot remove` gives the origin its table back.
# 2. kill -9 of the server under write load on the origin and the snapshot:
#    after a restart the snapshot still reads exactly the origin as it was
#    when the snapshot was made (but for the snapshot's own acknowledged FUA
#    writes), and every acknowledged FUA write is there.
# 3. (root, /dev/fuse, loop) a snapshot of a mounted ext4 under fio load
#    (frozen for the moment of the snapshot, as lvcreate -s does): the
#    snapshot mounts with the files as they were and e2fsck finds it clean.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
targets_start vol "0 131072 linear disk.img 0" 64MiB
# sha_of EXPORT BYTES: sha1 of the export's first BYTES, read 1 MiB at a time
# (one NBD request may carry 32 MiB at most); an error prints the error.
sha_of() {
  timeout 120 "$PY" - "$WORK/nbd.sock" "$1" "$2" <<'PYEOF'
import hashlib, sys
import nbd
h = nbd.NBD(); h.set_export_name(sys.argv[2]); h.connect_unix(sys.argv[1])
d = hashlib.sha1()
try:
    for off in range(0, int(sys.argv[3]), 1 << 20):
        d.update(h.pread(1 << 20, off))
    print(d.hexdigest())
except nbd.Error as e:
    print(f"error reading {sys.argv[2]}: {e}")  # never equal to another export's
PYEOF
}

# ---- 1. the convenience verbs
nbdio write:0:1048576:0x11 > /dev/null
check "snapshot create prints the snapshot table" is \
  "$(dm snapshot create snap vol --cow cow.img --size 16M)" "0 131072 snapshot vol-real cow.img P 8"
check "the COW file was made, 16 MiB" is "$(stat -c %s "$WORK/cow.img")" 16777216
check "tables" is "$(dm table | tr '\n' ';')" \
  "vol: 0 131072 snapshot-origin vol-real;vol-real: 0 131072 linear disk.img 0;snap: 0 131072 snapshot vol-real cow.img P 8;"
check "fresh status" is "$(dm status snap)" "0 131072 snapshot 16/32768 16"
check "origin write" is "$(nbdio write:4096:4096:0x22)" ok
check "the snapshot reads the old bytes" is "$(EXPORT=snap nbdio read:4096:512 | cut -d' ' -f2)" 1111111111111111
check "the origin reads the new ones" is "$(nbdio read:4096:512 | cut -d' ' -f2)" 2222222222222222
check "one exception" is "$(dm status snap)" "0 131072 snapshot 24/32768 16"
check "snapshot write" is "$(EXPORT=snap nbdio write:1048576:512:0x33:fua)" ok
check "the snapshot reads its write" is "$(EXPORT=snap nbdio read:1048576:512 | cut -d' ' -f2)" 3333333333333333
check "the origin is untouched by it" is "$(nbdio read:1048576:512 | cut -d' ' -f2)" 0000000000000000
tables=$(dm table | tr '\n' ';')
check "no size for a new COW: refused" quiet bash -c \
  "! timeout 60 '$DMNBD' --control '$WORK/ctl.sock' snapshot create s2 vol --cow missing.img 2>'$WORK/err'"
check "  with the reason" grep -q "missing.img does not exist: give its size" "$WORK/err"
check "bad chunk size: refused" quiet bash -c \
  "! timeout 60 '$DMNBD' --control '$WORK/ctl.sock' snapshot create s3 vol --cow c3.img --size 1M --chunk 7 2>'$WORK/err'"
check "  in the kernel's words" grep -q "create s3: line 1: snapshot: Couldn't create exception store (Chunk size is not a power of 2)" "$WORK/err"
check "  and the new COW file is gone again" test ! -e "$WORK/c3.img"
check "existing name: refused" quiet bash -c \
  "! timeout 60 '$DMNBD' --control '$WORK/ctl.sock' snapshot create snap vol --cow c4.img --size 1M"
check "every device as it was" is "$(dm table | tr '\n' ';')" "$tables"
check "and the origin is resumed" is "$(dm info vol | grep State: | tr -s ' ')" "State: ACTIVE"
check "the snapshot still holds the old bytes" is "$(EXPORT=snap nbdio read:4096:512 | cut -d' ' -f2)" 1111111111111111
# A device without a snapshot yet, where the step after "create NAME-real" fails:
dm create plain --table "0 2048 linear disk.img 0" || fail "create plain failed"
check "failure after creating plain-real: refused" quiet bash -c \
  "! timeout 60 '$DMNBD' --control '$WORK/ctl.sock' snapshot create ps plain --cow cow.img"
check "  plain-real is gone, plain has its table back" is "$(dm table plain; dm info plain-real 2>&1 | head -1)" \
  "0 2048 linear disk.img 0
dmnbd info: plain-real: No such device or address"
check "  and plain serves I/O" is "$(EXPORT=plain nbdio read:0:512 | cut -d' ' -f2)" 1111111111111111
dm remove plain
check "snapshot remove" quiet dm snapshot remove snap
check "the origin maps its own table again" is "$(dm table | tr '\n' ';')" "vol: 0 131072 linear disk.img 0;"
check "with its new bytes" is "$(nbdio read:4096:512 | cut -d' ' -f2)" 2222222222222222

# ---- 1b. merge back (lvconvert --merge)
dm snapshot create msnap vol --cow mcow.img --size 16M > /dev/null || fail "snapshot create msnap failed"
nbdio write:0:65536:0x44 write:8388608:4096:0x45 > /dev/null
EXPORT=msnap nbdio write:65536:4096:0x46 write:16777216:8192:0x47 > /dev/null
want=$(sha_of msnap 67108864)
check "the snapshot reads other bytes than the origin before the merge" test "$want" != "$(sha_of vol 67108864)"
check "snapshot merge prints the origin's table after" is "$(dm snapshot merge msnap)" "0 131072 linear disk.img 0"
check "the origin now reads as the snapshot did" is "$(sha_of vol 67108864)" "$want"
check "the origin maps its own table, the snapshot is gone" is "$(dm table | tr '\n' ';')" "vol: 0 131072 linear disk.img 0;"
check "merging a device that is not a snapshot: refused" quiet bash -c \
  "! timeout 60 '$DMNBD' --control '$WORK/ctl.sock' snapshot merge vol"
dm snapshot create tsnap vol --cow tcow.img --size 4M --transient > /dev/null || fail "transient snapshot failed"
tables=$(dm table | tr '\n' ';')
check "merging a transient snapshot: refused" quiet bash -c \
  "! timeout 60 '$DMNBD' --control '$WORK/ctl.sock' snapshot merge tsnap 2>'$WORK/err'"
check "  in the kernel's words" grep -q "Snapshot exception store does not support snapshot-merge." "$WORK/err"
check "  and undone: the same tables, both devices resumed" is \
  "$(dm table | tr '\n' ';')$(dm info tsnap | grep State: | tr -s ' ')$(dm info vol | grep State: | tr -s ' ')" \
  "${tables}State: ACTIVEState: ACTIVE"
check "remove the transient snapshot" quiet dm snapshot remove tsnap

# ---- 2. kill -9 under load
dmnbd_stop || fail "$STOP_REASON"
cat > "$WORK/cfg2.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
files:
  - { path: cow2.img, size: 32MiB }
devices:
  - name: vol-real
    table: "0 131072 linear disk.img 0"
  - name: vol
    table: "0 131072 snapshot-origin vol-real"
  - name: snap
    table: "0 131072 snapshot vol-real cow2.img P 8"
YAML
dmnbd_start "$WORK/cfg2.yaml"
check "a new snapshot reads as its origin" is "$(sha_of snap 67108864)" "$(sha_of vol 67108864)"
cp "$WORK/disk.img" "$WORK/frozen.img"
cat > "$WORK/load.py" <<'PYEOF'
# Random 4 KiB writes (one chunk each) to the origin and the snapshot, one at
# a time, some with FUA; each is logged before it is sent ("W") and once it is
# acknowledged ("A"), until the server is killed.
import random, sys
import nbd
sock, log = sys.argv[1], open(sys.argv[2], "w", buffering=1)
hs = {}
for name in ("vol", "snap"):
    h = nbd.NBD(); h.set_export_name(name); h.connect_unix(sock); hs[name] = h
rnd = random.Random(7)
for n in range(1 << 30):
    name = "snap" if n % 3 == 0 else "vol"
    off, val = rnd.randrange(0, 64 << 20, 4096), rnd.randrange(1, 256)
    log.write(f"W {name} {off} {val}\n")
    hs[name].pwrite(bytes([val]) * 4096, off, nbd.CMD_FLAG_FUA if rnd.random() < 0.3 else 0)
    log.write("A\n")
PYEOF
cat > "$WORK/verify.py" <<'PYEOF'
# After kill -9 (the kernel keeps what the server wrote): every acknowledged
# write reads back (the one in flight at the kill may read either way), and
# every block the snapshot never wrote reads as the origin did when the
# snapshot was made.
import sys
import nbd
sock, log, frozen = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
last, inflight = {}, None
for line in open(log):
    f = line.split()
    if f[0] == "W":
        inflight = (f[1], int(f[2]), int(f[3]))
    elif f[0] == "A" and inflight:
        last[inflight[:2]] = inflight[2]
        inflight = None
hs = {}
for name in ("vol", "snap"):
    h = nbd.NBD(); h.set_export_name(name); h.connect_unix(sock); hs[name] = h
bad = []
for (name, off), val in last.items():
    got = hs[name].pread(4096, off)
    ok = [bytes([val]) * 4096]
    if inflight and inflight[:2] == (name, off):
        ok.append(bytes([inflight[2]]) * 4096)
    if got not in ok:
        bad.append(f"{name} {off}: acknowledged {val}, reads {got[0]}")
snap_written = {off for (name, off) in last if name == "snap"}
if inflight and inflight[0] == "snap":
    snap_written.add(inflight[1])
snap = b"".join(hs["snap"].pread(1 << 20, o) for o in range(0, 64 << 20, 1 << 20))
for off in range(0, 64 << 20, 4096):
    if off not in snap_written and snap[off:off + 4096] != frozen[off:off + 4096]:
        bad.append(f"snap {off}: not the origin's bytes at snapshot time")
print(f"{len(last)} acknowledged writes checked, {len(bad)} wrong")
for b in bad[:5]:
    print(b)
sys.exit(1 if bad else 0)
PYEOF
timeout 60 "$PY" "$WORK/load.py" "$WORK/nbd.sock" "$WORK/writes.log" 2>"$WORK/load.err" &
LOAD_PID=$!
sleep 3
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
# Its sockets stay behind: gone, so the restart is only ready once it listens.
rm -f "$WORK/nbd.sock" "$WORK/ctl.sock"
wait "$LOAD_PID" 2>/dev/null
check "the load got writes through" test "$(grep -c '^A' "$WORK/writes.log")" -gt 100
dmnbd_start "$WORK/cfg2.yaml"
check "the snapshot is valid after kill -9" bash -c "! timeout 60 '$DMNBD' --control '$WORK/ctl.sock' status snap | grep -q Invalid"
check "every acknowledged write is there, the snapshot is the origin at snapshot time" \
  timeout 120 "$PY" "$WORK/verify.py" "$WORK/nbd.sock" "$WORK/writes.log" "$WORK/frozen.img"

# ---- 2b. a merge cut short by kill -9 goes on after the restart
dmnbd_stop || fail "$STOP_REASON"
# Writes to the origin are held 30 ms (delay), so the merge takes seconds.
REAL="0 131072 delay disk.img 0 0 disk.img 0 30"
cat > "$WORK/cfg3.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
files:
  - { path: cow3.img, size: 16MiB }
devices:
  - { name: vol-real, table: "$REAL" }
  - { name: vol, table: "0 131072 snapshot-origin vol-real" }
  - { name: snap, table: "0 131072 snapshot vol-real cow3.img P 8" }
YAML
sed -e 's|  - { name: vol, table: .*|  - { name: vol, table: "0 131072 snapshot-merge vol-real cow3.img P 8" }|' \
    -e '/name: snap,/d' "$WORK/cfg3.yaml" > "$WORK/cfg4.yaml"
dmnbd_start "$WORK/cfg3.yaml"
writes=""
for i in $(seq 0 39); do writes="$writes write:$((i * 131072)):4096:0x5$((i % 10))"; done
nbdio $writes > /dev/null
EXPORT=snap nbdio write:8192:4096:0x61 > /dev/null
want=$(sha_of snap 67108864)
check "  (and differs from the origin)" test "$want" != "$(sha_of vol 67108864)"
timeout 60 "$PY" -c "
import nbd, sys
h = nbd.NBD(); h.set_export_name('snap'); h.connect_unix('$WORK/nbd.sock')
open('$WORK/snapview.img', 'wb').write(b''.join(h.pread(1 << 20, o) for o in range(0, 64 << 20, 1 << 20)))
" || fail "reading the snapshot's view failed"
dmnbd_stop || fail "$STOP_REASON"
dmnbd_start "$WORK/cfg4.yaml"
sleep 1
mid=$(dm status vol)
echo "# before kill -9: $mid"
check "the merge is under way" test "$mid" != "0 131072 snapshot-merge 16/32768 16" -a \
  "$mid" != "0 131072 snapshot-merge 344/32768 16"
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
# Its sockets stay behind: gone, so the restart is only ready once it listens.
rm -f "$WORK/nbd.sock" "$WORK/ctl.sock"
dmnbd_start "$WORK/cfg4.yaml"
# Writes while the merge runs: to chunks still in the COW (merged later, or
# held while their batch is merged) and to chunks never copied.
during="write:0:4096:0x71 write:2621440:4096:0x72 write:8192:512:0x73 write:40960000:4096:0x74"
check "writes during the merge" is "$(nbdio $during | sort -u)" ok
for _ in $(seq 200); do dm status vol | grep -q ' 16/32768 16$' && break; sleep 0.1; done
check "the merge finished after the restart" is "$(dm status vol)" "0 131072 snapshot-merge 16/32768 16"
check "the origin reads as the snapshot did, with the writes made during the merge" \
  is "$(sha_of vol 67108864)" "$("$PY" - "$WORK/snapview.img" $during <<'PYEOF'
import hashlib, sys
img = bytearray(open(sys.argv[1], "rb").read())
for w in sys.argv[2:]:
    _, off, n, b = w.split(":")
    img[int(off):int(off) + int(n)] = bytes([int(b, 0)]) * int(n)
print(hashlib.sha1(img).hexdigest())
PYEOF
)"

# ---- 3. a mounted ext4 under fio load
if [ ! -e /dev/fuse ] || [ ! -e /dev/loop-control ]; then
  echo "# skipping the ext4 part: needs /dev/fuse and loop devices"
  pass
fi
dmnbd_stop || fail "$STOP_REASON"
cat > "$WORK/cfg5.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
devices:
  - { name: vol, table: "0 131072 linear disk.img 0" }
YAML
dmnbd_start "$WORK/cfg5.yaml"
mkdir -p "$WORK/fuse" "$WORK/fuse2" "$WORK/mnt" "$WORK/mnt2"
on_cleanup fuse_teardown
on_cleanup snap_teardown
fuse_attach vol "$WORK/fuse"; FUSE_PID=$(cat "$WORK/nbdfuse-vol.pid"); FUSE_MOUNTED=1
LOOP=$(timeout 30 losetup -f --show "$WORK/fuse/nbd") || fail "losetup failed"
timeout 120 mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 failed"
timeout 30 mount -t ext4 "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "mount failed"
dd if=/dev/urandom of="$WORK/mnt/before.bin" bs=1M count=4 status=none
sync
ref=$(sha256sum < "$WORK/mnt/before.bin")
timeout 60 fio --name=load --directory="$WORK/mnt" --rw=randwrite --bs=4k --size=16m \
  --time_based --runtime=8 --ioengine=psync --fsync=32 > "$WORK/fio.log" 2>&1 &
FIO_PID=$!
sleep 2
# lvcreate -s freezes the filesystem for the moment of the snapshot.
timeout 30 fsfreeze -f "$WORK/mnt" || fail "fsfreeze failed"
dm snapshot create esnap vol --cow ecow.img --size 32M > /dev/null
rc=$?
timeout 30 fsfreeze -u "$WORK/mnt"
check "snapshot create under a mounted, loaded ext4" test "$rc" -eq 0
sleep 1
rm -f "$WORK/mnt/before.bin"
echo changed > "$WORK/mnt/after.txt"
wait "$FIO_PID"; check "fio ran to the end" test $? -eq 0
sync
fuse_attach esnap "$WORK/fuse2"; SNAP_FUSE_PID=$(cat "$WORK/nbdfuse-esnap.pid"); SNAP_FUSE_MOUNTED=1
SNAP_LOOP=$(timeout 30 losetup -f --show "$WORK/fuse2/nbd") || fail "losetup of the snapshot failed"
check "e2fsck -fn of the snapshot: clean" quiet timeout 120 e2fsck -fn "$SNAP_LOOP"
timeout 30 mount -t ext4 -o ro "$SNAP_LOOP" "$WORK/mnt2" && SNAP_MOUNTED=1 || fail "mounting the snapshot failed"
check "the snapshot has the file as it was" is "$(sha256sum < "$WORK/mnt2/before.bin")" "$ref"
check "and not the one written after" test ! -e "$WORK/mnt2/after.txt"
check "the origin has the change" test ! -e "$WORK/mnt/before.bin" -a -e "$WORK/mnt/after.txt"
snap_teardown
echo "# $(dm status esnap)"
pass
