#!/bin/bash
# raid_parity_crash.sh - kill -9 of the server under raid5 and raid6 writes
# (4 KiB, 32 in flight, each to a block of its own, so the rows being
# written are torn by the kill):
# 1. after the restart, whose resync recomputes parity in the regions the
#    bitmap has dirty, every write the client saw acknowledged reads back;
# 2. a check then finds every row's parity right (mismatch_cnt 0);
# 3. with any one leg missing (raid6: any two, next to each other), every
#    acknowledged write still reads back, rebuilt from the others.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
cd "$WORK" || fail "no work dir"
LEG=32768  # sectors, 16 MiB per leg
for i in 0 1 2 3 4; do truncate -s 16M leg$i.img; truncate -s 1M meta$i.img; done

# crash_set NAME TYPE LEGS: the three steps above for one raid set.
crash_set() {
  local name=$1 type=$2 legs=$3 parity=$4 i pairs="" bare="" size
  size=$(((legs - parity) * LEG))
  for i in $(seq 0 $((legs - 1))); do
    truncate -s 0 meta$i.img; truncate -s 1M meta$i.img
    pairs+=" $WORK/meta$i.img l$i"
  done
  {
    echo "listen: [ \"unix://$WORK/nbd.sock\" ]"
    echo "control: $WORK/ctl.sock"
    echo "devices:"
    for i in $(seq 0 $((legs - 1))); do
      echo "  - { name: l$i, table: \"0 $LEG linear $WORK/leg$i.img 0\" }"
    done
    echo "  - { name: r, table: \"0 $size raid $type 5 64 region_size 1024 daemon_sleep 25 $legs$pairs\" }"
  } > cfg.yaml
  dmnbd_start cfg.yaml
  check "$name: the new set resyncs" raid_wait_idle r
  sleep 0.3  # the resync's bits cleared
  rm -f acked.log
  "$PY" "$TARGETS_DIR/acked_writes.py" write "$WORK/nbd.sock" r $((size * 512)) acked.log \
    > writer.log 2>&1 &
  local writer=$! slots=$((size / 8))
  for _ in $(seq 200); do [ "$(cat acked.log 2>/dev/null | wc -l)" -ge 3000 ] && break; sleep 0.1; done
  kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
  wait "$writer"
  rm -f nbd.sock ctl.sock
  log "$name: $(wc -l < acked.log) of $slots writes acknowledged before the kill"
  check "$name: the kill came under load" test "$(wc -l < acked.log)" -lt "$slots"
  check "$name: the kill left regions dirty in the bitmap" "$PY" -c '
import sys; m = open(sys.argv[1], "rb").read()
assert m[4096:4100] == b"bitm" and any(m[4352:4352 + 4]), "no dirty bit"' meta0.img
  dmnbd_start cfg.yaml
  check "$name: the dirty regions are resynced after the restart" raid_wait_idle r
  check "$name: 1: every acknowledged write reads back" \
    "$PY" "$TARGETS_DIR/acked_writes.py" verify "$WORK/nbd.sock" r acked.log
  dm message r 0 check && raid_wait_idle r
  check "$name: 2: a check finds parity right [$(dm status r)]" is "$(raid_field r 9)" 0
  for lost in $(seq 0 $((legs - 1))); do
    bare=""
    for i in $(seq 0 $((legs - 1))); do
      if [ "$i" = "$lost" ] || { [ "$parity" = 2 ] && [ "$i" = $(((lost + 1) % legs)) ]; }; then
        bare+=" - -"
      else
        bare+=" - l$i"
      fi
    done
    dm suspend r && dm reload r --table "0 $size raid $type 1 64 $legs$bare" && dm resume r ||
      fail "$name: reload without leg $lost failed"
    check "$name: 3: without leg $lost (of $parity) every acknowledged write reads back" \
      "$PY" "$TARGETS_DIR/acked_writes.py" verify "$WORK/nbd.sock" r acked.log
  done
  dmnbd_stop
}

crash_set raid5 raid5_ls 4 1
crash_set raid6 raid6_nc 5 2
pass
