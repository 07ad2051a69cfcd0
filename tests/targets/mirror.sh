#!/bin/bash
# mirror.sh - a two-leg mirror with a disk log, driven by fio over NBD:
# 1. leg 1 fails (its device is reloaded with the error target) in the middle
#    of fio's writes: fio sees no error and verifies every block; the status
#    shows the leg D and the regions it missed out of sync; the leg comes
#    back, a resume resyncs it, and the legs are identical.
# 2. the same with handle_errors keep_log and the default leg failing: the
#    mirror fails over to leg 1 (an event), fio sees no error; back, resynced
#    from leg 1, identical.
# 3. kill -9 of the server under fio's writes: after the restart exactly the
#    regions the log has dirty are resynced (a clean region made to differ on
#    purpose stays different), and then the legs are identical.
# 4. handle_errors holds a write that failed on a leg (for userspace to
#    reconfigure the mirror): `suspend --noflush`, a table without the leg and
#    a resume complete it with no error; and a write still held when the
#    server is stopped gets EIO, and the server exits 0.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
SECTORS=65536  # 32 MiB, 64 regions of 1024 sectors
REGIONS=64
cd "$WORK" || fail "no work dir"
truncate -s 32M leg0.img leg1.img
truncate -s 1M log.img
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
devices:
  - name: l0
    table: "0 $SECTORS linear $WORK/leg0.img 0"
  - name: l1
    table: "0 $SECTORS linear $WORK/leg1.img 0"
  - name: mi
    table: "0 $SECTORS mirror disk 2 $WORK/log.img 1024 2 l0 0 l1 0"
YAML
_targets_write_io_py
dmnbd_start "$WORK/cfg.yaml"
EXPORT=mi

# sync_ratio: the "<in-sync>/<regions>" field of the mirror's status.
sync_ratio() { dm status mi | awk '{print $7}'; }
wait_in_sync() { # wait until every region is in sync (<= 60 s)
  for _ in $(seq 600); do [ "$(sync_ratio)" = "$REGIONS/$REGIONS" ] && return 0; sleep 0.1; done
  return 1
}
check "a new disk log: the whole mirror is resynced" wait_in_sync
check "status" is "$(dm status mi)" "0 $SECTORS mirror 2 l0 l1 $REGIONS/$REGIONS 1 AA 3 disk $WORK/log.img A"
check "table" is "$(dm table mi)" "0 $SECTORS mirror disk 2 $WORK/log.img 1024 2 l0 0 l1 0"

# ---- 1. leg 1 fails under fio
fail_under_fio 1 l1 mi 32m l1
st=$(dm status mi)
check "1: leg 1 shows D [$st]" is "$(echo "$st" | awk '{print $9}')" AD
check "1: regions it missed are out of sync [$(sync_ratio)]" test "$(sync_ratio)" != "$REGIONS/$REGIONS"
dm reload l1 --table "0 $SECTORS linear $WORK/leg1.img 0" || fail "reload l1 back failed"
dm suspend mi && dm resume mi || fail "suspend/resume mi failed"
check "1: after the leg came back and a resume, the mirror resyncs" wait_in_sync
check "1: and the legs are identical" cmp leg0.img leg1.img
check "1: status clean again" is "$(dm status mi | awk '{print $9}')" AA

# ---- 2. the default leg fails, handle_errors keep_log
dm reload mi --table "0 $SECTORS mirror disk 2 $WORK/log.img 1024 2 l0 0 l1 0 2 handle_errors keep_log" ||
  fail "reload mi with handle_errors failed"
wait_in_sync
events=$(dm info mi | awk '/Event number/ {print $3}')
fail_under_fio 2 l0 mi 32m l0
check "2: leg 0 shows D [$(dm status mi)]" is "$(dm status mi | awk '{print $9}')" DA
check "2: an event was raised" test "$(dm info mi | awk '/Event number/ {print $3}')" -gt "$events"
dm reload l0 --table "0 $SECTORS linear $WORK/leg0.img 0" || fail "reload l0 back failed"
# A new table starts from leg 0 again; resync from leg 1, the one that has
# every write, by listing it first (what lvconvert --repair would do).
dm reload mi --table "0 $SECTORS mirror disk 2 $WORK/log.img 1024 2 l1 0 l0 0 2 handle_errors keep_log" ||
  fail "reload mi, leg 1 first, failed"
check "2: resynced from leg 1" wait_in_sync
check "2: and the legs are identical" cmp leg0.img leg1.img

# ---- 2b. block status is the default leg's: holes of sparse legs show
truncate -s 4M sparse0.img sparse1.img
dm create ms --table "0 8192 mirror core 2 1024 nosync 2 $WORK/sparse0.img 0 $WORK/sparse1.img 0" ||
  fail "create ms failed"
EXPORT=ms nbdio write:1048576:65536:0x77 > /dev/null
map=$(timeout 30 nbdinfo --map "nbd+unix:///ms?socket=$WORK/nbd.sock" 2>&1)
log "2b: nbdinfo --map: $(echo "$map" | tr -s ' ' | tr '\n' ';')"
check "2b: the untouched start of a sparse leg maps as a hole" \
  grep -Eq "^ *0 +1048576 +3 +hole,zero" <<< "$map"
check "2b: the written 64 KiB as data" grep -Eq "^ *1048576 +65536 +0 +data" <<< "$map"
dm remove ms

# ---- 3. kill -9 under load
dm reload mi --table "0 $SECTORS mirror disk 2 $WORK/log.img 1024 2 l0 0 l1 0" || fail "reload mi failed"
wait_in_sync
kill_under_fio mi 32m
# The log as the kill left it: the dirty regions, and one clean region made
# to differ on leg 1 (a resync of it would undo that).
read -r DIRTY CLEAN < <("$PY" - "$WORK/log.img" <<'PYEOF'
import sys
log = open(sys.argv[1], "rb").read()
assert log[:4] == b"rRiM", "no log header"
bits = [(log[1024 + r // 8] >> (r % 8)) & 1 for r in range(64)]
dirty = [r for r in range(64) if not bits[r]]
clean = [r for r in range(64) if bits[r]]
print(",".join(map(str, dirty)) or "-", clean[0] if clean else -1)
PYEOF
)
log "3: dirty regions after kill -9: $DIRTY; clean region $CLEAN gets a scribble on leg 1"
check "3: the kill left some regions dirty" test "$DIRTY" != "-"
if [ "$CLEAN" -ge 0 ]; then
  printf 'scribble' | dd of=leg1.img bs=1 seek=$((CLEAN * 1024 * 512 + 100)) conv=notrunc status=none
fi
"$PY" "$TARGETS_DIR/regions.py" scribble leg1.img $((1024 * 512)) "$DIRTY"
dmnbd_start "$WORK/cfg.yaml"
check "3: after the restart the mirror resyncs" wait_in_sync
check "3: the dirty regions are identical on both legs" \
  "$PY" "$TARGETS_DIR/regions.py" check leg0.img leg1.img $((1024 * 512)) $REGIONS "$DIRTY" "$CLEAN"

# ---- 4. held writes: the dmeventd repair, and a stop
dm reload mi --table "0 $SECTORS mirror disk 2 $WORK/log.img 1024 2 l0 0 l1 0 1 handle_errors" ||
  fail "reload mi with handle_errors failed"
wait_in_sync
dm reload l1 --table "0 $SECTORS error" || fail "reload l1 to error failed"
nbdio write:4096:4096:0x61 > "$WORK/held.out" &
HELD=$!
sleep 0.5
check "4: the write that failed on leg 1 is held" kill -0 "$HELD"
dm suspend --noflush mi || fail "suspend --noflush mi failed"
dm reload mi --table "0 $SECTORS linear l0 0" || fail "reload mi without the leg failed"
dm resume mi || fail "resume mi failed"
wait "$HELD"
check "4: after suspend --noflush, a table without the leg and a resume, it succeeds" \
  is "$(cat "$WORK/held.out")" ok
check "4: and reads back" is "$(nbdio read:4096:512 | cut -d' ' -f2)" 6161616161616161
dm reload mi --table "0 $SECTORS mirror disk 2 $WORK/log.img 1024 2 l0 0 l1 0 1 handle_errors" ||
  fail "reload mi with handle_errors again failed"
nbdio write:8192:4096:0x62 > "$WORK/held2.out" &
HELD=$!
sleep 0.5
check "4: a second failed write is held" kill -0 "$HELD"
check "4: a stop (SIGTERM) with the write held: exit 0" dmnbd_stop
wait "$HELD"
check "4: and the held write got EIO" is "$(cat "$WORK/held2.out")" EIO
pass
