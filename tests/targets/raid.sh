#!/bin/bash
# raid.sh - dm-raid's raid1 and raid10 driven by fio over NBD:
# 1. raid1: leg 1 fails (its device is reloaded with the error target) in
#    the middle of fio's writes to the first half: fio sees no error and verifies every block;
#    the status shows the leg D and an event fires; the superblock on leg 0
#    records the failure. The leg comes back, a suspend/resume re-adds it,
#    the recovery copies only what it missed, and the legs are identical.
# 2. raid10 near, 4 legs: the same with leg 2 failing; after the recovery
#    each mirror pair (legs 0/1, 2/3) is identical.
# 3. kill -9 of the server under fio's writes on raid1: after the restart
#    the regions the bitmap has dirty are resynced (a clean region made to
#    differ on purpose stays different), and then the legs agree.
# 4. `message check` counts what differs, `repair` fixes it, `frozen` and
#    `idle` show in the status.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
cd "$WORK" || fail "no work dir"
SECTORS=65536  # 32 MiB per leg; raid1 regions of 1024 sectors: 64
REGIONS=64
R10=131072     # raid10 near 2 over 4 legs of 32 MiB: 64 MiB
for i in 0 1 2 3; do truncate -s 32M leg$i.img; truncate -s 1M meta$i.img; done
TABLE1="0 $SECTORS raid raid1 5 0 daemon_sleep 25 region_size 1024 2 $WORK/meta0.img l0 $WORK/meta1.img l1"
TABLE10="0 $R10 raid raid10 5 128 raid10_copies 2 raid10_format near 4 $WORK/meta0.img l0 $WORK/meta1.img l1 $WORK/meta2.img l2 $WORK/meta3.img l3"
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
devices:
  - name: l0
    table: "0 $SECTORS linear $WORK/leg0.img 0"
  - name: l1
    table: "0 $SECTORS linear $WORK/leg1.img 0"
  - name: l2
    table: "0 $SECTORS linear $WORK/leg2.img 0"
  - name: l3
    table: "0 $SECTORS linear $WORK/leg3.img 0"
  - name: r
    table: "$TABLE1"
YAML
_targets_write_io_py
dmnbd_start "$WORK/cfg.yaml"
EXPORT=r

# sb_failed META DEV: the failed_devices bit of DEV in the superblock on META.
sb_failed() {
  "$PY" -c 'import sys,struct; b=open(sys.argv[1],"rb").read(512); assert b[:4]==b"DmRd"; print((struct.unpack_from("<Q",b,24)[0]>>int(sys.argv[2]))&1)' "$1" "$2"
}
# same_data A B: the first 32 MiB of two leg files are identical.
same_data() { cmp -n $((SECTORS * 512)) "$1" "$2"; }

check "a new raid1 set resyncs" raid_wait_idle r
check "status" is "$(dm status r)" "0 $SECTORS raid raid1 2 AA $SECTORS/$SECTORS idle 0 0 -"
check "table" is "$(dm table r)" "$TABLE1"
check "the legs are identical after the initial resync" same_data leg0.img leg1.img

# ---- 1. raid1, leg 1 fails under fio
events=$(dm info r | awk '/Event number/ {print $3}')
fail_under_fio 1 l1 r 16m l1  # the first half: the second stays clean
check "1: leg 1 shows D [$(dm status r)]" is "$(raid_field r 6)" AD
check "1: an event was raised" test "$(dm info r | awk '/Event number/ {print $3}')" -gt "$events"
check "1: leg 0's superblock records leg 1 as failed" is "$(sb_failed meta0.img 1)" 1
dm reload l1 --table "0 $SECTORS linear $WORK/leg1.img 0" || fail "reload l1 back failed"
# A region leg 1 did not miss, made to differ: a full copy would undo it.
untouched=$("$PY" - "$WORK/meta0.img" <<'PYEOF'
import sys
m = open(sys.argv[1], "rb").read()
bits = [(m[4352 + r // 8] >> (r % 8)) & 1 for r in range(64)]
print(next((r for r in range(64) if not bits[r]), -1))
PYEOF
)
log "1: a region leg 1 did not miss: $untouched"
[ "$untouched" -ge 0 ] && printf 'scribble' |
  dd of=leg1.img bs=1 seek=$((untouched * 1024 * 512 + 100)) conv=notrunc status=none
dm suspend r && dm resume r || fail "suspend/resume r failed"
check "1: the returning leg is recovered" raid_wait_idle r
check "1: status AA again [$(dm status r)]" is "$(raid_field r 6)" AA
check "1: its failure is cleared in the superblock" is "$(sb_failed meta0.img 1)" 0
if [ "$untouched" -ge 0 ]; then
  check "1: only what it missed was copied (the scribble stays)" bash -c \
    "! cmp -s -i $((untouched * 1024 * 512)):$((untouched * 1024 * 512)) -n 524288 leg0.img leg1.img"
  dd if=leg0.img of=leg1.img bs=512 skip=$((untouched * 1024)) seek=$((untouched * 1024)) \
    count=1024 conv=notrunc status=none
fi
check "1: and otherwise the legs are identical" same_data leg0.img leg1.img

# ---- 2. raid10 near, leg 2 fails under fio
for i in 0 1 2 3; do truncate -s 0 meta$i.img; truncate -s 1M meta$i.img; done
dm reload r --table "$TABLE10" || fail "reload r as raid10 failed"
check "2: a new raid10 set resyncs" raid_wait_idle r
check "2: status" is "$(dm status r)" "0 $R10 raid raid10 4 AAAA $R10/$R10 idle 0 0 -"
fail_under_fio 2 l2 r 64m l2
check "2: leg 2 shows D [$(dm status r)]" is "$(raid_field r 6)" AADA
dm reload l2 --table "0 $SECTORS linear $WORK/leg2.img 0" || fail "reload l2 back failed"
dm suspend r && dm resume r || fail "suspend/resume r failed"
check "2: the returning leg is recovered" raid_wait_idle r
check "2: status AAAA again [$(dm status r)]" is "$(raid_field r 6)" AAAA
check "2: legs 0 and 1 hold the same copies" same_data leg0.img leg1.img
check "2: legs 2 and 3 hold the same copies" same_data leg2.img leg3.img

# ---- 3. kill -9 under load (raid1)
for i in 0 1; do truncate -s 0 meta$i.img; truncate -s 1M meta$i.img; done
dm reload r --table "$TABLE1" || fail "reload r as raid1 failed"
raid_wait_idle r
sleep 0.5  # the resync's bits are cleared after 2 daemon periods (200 ms)
kill_under_fio r 16m
read -r DIRTY CLEAN < <("$PY" - "$WORK/meta0.img" <<'PYEOF'
import sys
m = open(sys.argv[1], "rb").read()
assert m[4096:4100] == b"bitm", "no bitmap"
bits = [(m[4352 + r // 8] >> (r % 8)) & 1 for r in range(64)]
dirty = [r for r in range(64) if bits[r]]
clean = [r for r in range(64) if not bits[r]]
print(",".join(map(str, dirty)) or "-", clean[0] if clean else -1)
PYEOF
)
log "3: dirty regions after kill -9: $DIRTY; clean region $CLEAN gets a scribble on leg 1"
check "3: the kill left some regions dirty" test "$DIRTY" != "-"
[ "$CLEAN" -ge 0 ] && printf 'scribble' |
  dd of=leg1.img bs=1 seek=$((CLEAN * 1024 * 512 + 100)) conv=notrunc status=none
"$PY" "$TARGETS_DIR/regions.py" scribble leg1.img $((1024 * 512)) "$DIRTY"
sed -i "s|table: \"$TABLE10\"|table: \"$TABLE1\"|" "$WORK/cfg.yaml"
dmnbd_start "$WORK/cfg.yaml"
check "3: after the restart the dirty regions are resynced" raid_wait_idle r
check "3: the dirty regions are identical, the clean one untouched" \
  "$PY" "$TARGETS_DIR/regions.py" check leg0.img leg1.img $((1024 * 512)) $REGIONS "$DIRTY" "$CLEAN"

# ---- 4. check, repair, frozen
check "4: check starts" dm message r 0 check
check "4: check finishes" raid_wait_idle r
if [ "$CLEAN" -ge 0 ]; then
  check "4: check counts the scribbled 64 KiB block [$(dm status r)]" is "$(raid_field r 9)" 128
  check "4: repair" dm message r 0 repair
  check "4: repair finishes" raid_wait_idle r
  dm message r 0 check && raid_wait_idle r
  check "4: a check after the repair finds nothing" is "$(raid_field r 9)" 0
fi
check "4: the legs are identical" same_data leg0.img leg1.img
check "4: frozen" dm message r 0 frozen
check "4: shows frozen" is "$(raid_field r 8)" frozen
check "4: idle" dm message r 0 idle
check "4: shows idle" is "$(raid_field r 8)" idle
check "4: an unknown message is refused" bash -c "! $DMNBD --control $WORK/ctl.sock message r 0 scrub"
pass
