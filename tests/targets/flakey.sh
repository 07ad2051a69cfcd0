#!/bin/bash
# flakey.sh - the flakey target through a real client (libnbd) and the control
# CLI: while "down", each feature fails or drops exactly what it says (reads,
# writes, flushes, trims, write-zeroes), corrupts what it says, and the
# up/down clock runs from the table's load. Tables are switched with `reload`.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
T="0 131072 flakey disk.img 0"
targets_start fl "$T 180 0"
reload() { dm reload fl --table "$1"; }
one() { nbdio "$@" | cut -d' ' -f1-2; }  # "ok <first bytes>" or the errno name

# ---- up
check "up: write" is "$(one write:0:65536:0x11)" ok
check "up: read back" is "$(one read:0:512)" "ok 1111111111111111"
check "up: flush, trim, zero" is "$(nbdio flush trim:65536:4096 zero:69632:4096 | tr '\n' ' ')" "ok ok ok "
check "table: no features = error_reads + error_writes" \
  is "$(dm table fl)" "$T 180 0 2 error_reads error_writes"
check "status is empty" is "$(dm status fl | sed 's/ *$//')" "0 131072 flakey"
dm message fl 0 hello >/dev/null 2>&1
check "messages are refused (exit 1)" is "$?" 1

# ---- down, no features: everything fails, nothing reaches the disk
reload "$T 0 180" || fail "reload failed"
check "down: read fails" is "$(one read:0:512)" EIO
check "down: write fails" is "$(one write:0:512:0x99)" EIO
check "down: flush fails" is "$(one flush)" EIO
check "down: trim fails" is "$(one trim:0:4096)" EIO
check "down: write-zeroes fails" is "$(one zero:0:4096)" EIO
check "down: disk unchanged" is "$(fbytes 0 4)" 11111111

# ---- drop_writes: writes, flushes, trims succeed and vanish; reads work
reload "$T 0 180 1 drop_writes" || fail "reload failed"
check "drop_writes: table" is "$(dm table fl)" "$T 0 180 1 drop_writes"
check "drop_writes: write succeeds" is "$(one write:0:4096:0x22:fua)" ok
check "drop_writes: flush, trim, zero succeed" is "$(nbdio flush trim:0:4096 zero:4096:4096 | tr '\n' ' ')" "ok ok ok "
check "drop_writes: read gives the old data" is "$(one read:0:512)" "ok 1111111111111111"
check "drop_writes: disk unchanged" is "$(fbytes 0 4)$(fbytes 4096 4)" 1111111111111111

# ---- error_writes: writes and flushes fail, reads work
reload "$T 0 180 1 error_writes" || fail "reload failed"
check "error_writes: write fails" is "$(one write:0:4096:0x33)" EIO
check "error_writes: flush fails" is "$(one flush)" EIO
check "error_writes: trim fails" is "$(one trim:0:4096)" EIO
check "error_writes: read works" is "$(one read:0:512)" "ok 1111111111111111"

# ---- error_reads: reads fail, writes land
reload "$T 0 180 1 error_reads" || fail "reload failed"
check "error_reads: read fails" is "$(one read:0:512)" EIO
check "error_reads: write lands" is "$(one write:8192:512:0x44)" ok
check "error_reads: flush works" is "$(one flush)" ok
check "error_reads: disk has the write" is "$(fbytes 8192 2)" 4444

# ---- corrupt_bio_byte on reads: byte 1 of every read request; the disk keeps its data
reload "$T 0 180 5 corrupt_bio_byte 1 r 66 0" || fail "reload failed"
check "corrupt r: first byte of a read" is "$(one read:0:512)" "ok 4211111111111111"
check "corrupt r: every request" is "$(one read:8192:512)" "ok 4244444444444444"
check "corrupt r: disk unchanged" is "$(fbytes 0 2)" 1111
check "corrupt r: writes untouched" is "$(one write:12288:512:0x55)" ok
check "corrupt r: ... on disk" is "$(fbytes 12288 2)" 5555

# ---- corrupt_bio_byte on writes: byte 5 of what reaches the disk
reload "$T 0 180 5 corrupt_bio_byte 5 w 0 0" || fail "reload failed"
check "corrupt w: write succeeds" is "$(one write:16384:512:0x66)" ok
check "corrupt w: byte 5 on disk is 0" is "$(fbytes 16384 6)" 666666660066
# flags 131072 = REQ_FUA: only FUA writes match
reload "$T 0 180 5 corrupt_bio_byte 1 w 0 131072" || fail "reload failed"
check "corrupt w FUA-only: plain write intact" is "$(one write:20480:512:0x77)$(fbytes 20480 1)" ok77
check "corrupt w FUA-only: FUA write corrupted" is "$(one write:24576:512:0x77:fua)$(fbytes 24576 1)" ok00

# ---- random_write_corrupt at 100%: one random byte per write (at most one differs)
reload "$T 0 180 2 random_write_corrupt 1000000000" || fail "reload failed"
check "random_write_corrupt: write succeeds" is "$(one write:32768:4096:0x88)" ok
ndiff=$(od -An -tx1 -v -j 32768 -N 4096 "$WORK/disk.img" | tr -s ' \n' '\n' | grep -v '^$' | grep -vc '^88$')
check "random_write_corrupt: at most one byte differs ($ndiff)" test "$ndiff" -le 1

# ---- the clock: up 2 s, down 2 s, from the table's load
reload "$T 2 2 1 error_writes" || fail "reload failed"
t0=$(date +%s.%N)
at() { "$PY" -c 'import sys, time; time.sleep(max(0, float(sys.argv[1]) + float(sys.argv[2]) - time.time()))' "$t0" "$1"; }
at 0.5; r1=$(one write:40960:512:0x01)
at 3.0; r2=$(one write:40960:512:0x02)
at 5.0; r3=$(one write:40960:512:0x03)
check "timed: up at 0.5 s" is "$r1" ok
check "timed: down at 3 s" is "$r2" EIO
check "timed: up again at 5 s" is "$r3" ok
check "timed: disk has the last write" is "$(fbytes 40960 1)" 03
pass
