#!/bin/bash
# remote_legs.sh - devices on other NBD servers as table devices
# (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH):
# 1. a replicated volume: a mirror of a local file and an export of a second
#    dmnbd; fio --verify runs while the remote server is killed: fio sees no
#    error, the leg goes D and an event fires; the server comes back, a
#    resume resyncs, and the local file and the remote one are identical.
# 2. the same remote end played by nbdkit (file plugin) and by qemu-nbd.
# 3. linear over TCP and striped over a local file and a remote export read
#    back what was written, from the remote file itself too.
# 4. a table naming an export nobody serves is refused with the URI and the
#    reason, and the device keeps its table.
# 5. raid1 (dm-raid) over a local leg and a remote one, each with its
#    metadata beside it: the remote server is killed under fio --verify, no
#    client error, the leg goes D; back, a suspend/resume re-adds it and
#    recovers what it missed, and the two legs are identical.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
cd "$WORK" || fail "no work dir"
SECTORS=32768  # 16 MiB, 32 regions
REGIONS=32
truncate -s 16M local.img remote.img stripe-local.img stripe-remote.img tcp.img
truncate -s 16M raid-local.img raid-remote.img
truncate -s 1M log.img raid-local-meta.img raid-remote-meta.img

REMOTE_PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > remote.yaml <<YAML
listen: [ "unix://$WORK/remote.sock", "tcp://127.0.0.1:$REMOTE_PORT" ]
control: $WORK/remote-ctl.sock
devices:
  - name: rleg
    table: "0 $SECTORS linear $WORK/remote.img 0"
  - name: rstripe
    table: "0 $SECTORS linear $WORK/stripe-remote.img 0"
  - name: rtcp
    table: "0 $SECTORS linear $WORK/tcp.img 0"
  - name: rraid
    table: "0 $SECTORS linear $WORK/raid-remote.img 0"
  - name: rmeta
    table: "0 2048 linear $WORK/raid-remote-meta.img 0"
YAML
REMOTE_PID=""
remote_start() {
  rm -f "$WORK/remote.sock" "$WORK/remote-ctl.sock"
  "$DMNBD" serve remote.yaml >> remote.log 2>&1 &
  REMOTE_PID=$!
  for _ in $(seq 50); do [ -S "$WORK/remote-ctl.sock" ] && return 0; sleep 0.1; done
  fail "the remote dmnbd did not start (remote.log)"
}
remote_kill() { kill -9 "$REMOTE_PID"; wait "$REMOTE_PID" 2>/dev/null; REMOTE_PID=""; }
CLEANUP_HOOKS+=('[ -n "$REMOTE_PID" ] && kill "$REMOTE_PID"')
remote_start

R="nbd+unix:///rleg?socket=$WORK/remote.sock"
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
devices:
  - name: mi
    table: "0 $SECTORS mirror disk 2 $WORK/log.img 1024 2 $WORK/local.img 0 $R 0 2 handle_errors keep_log"
  - name: lin
    table: "0 $SECTORS linear nbd://127.0.0.1:$REMOTE_PORT/rtcp 0"
  - name: st
    table: "0 $SECTORS striped 2 128 $WORK/stripe-local.img 0 nbd+unix:///rstripe?socket=$WORK/remote.sock 0"
YAML
_targets_write_io_py
dmnbd_start "$WORK/cfg.yaml"

sync_ratio() { dm status "$1" | awk '{print $7}'; }
wait_in_sync() { # NAME [TENTHS]: every region in sync (<= 30 s)
  for _ in $(seq "${2:-300}"); do [ "$(sync_ratio "$1")" = "$REGIONS/$REGIONS" ] && return 0; sleep 0.1; done
  return 1
}
# resume_resyncs NAME: suspend and resume until the returned leg is resynced.
# The device reconnects in the background, once a second; on a loaded
# machine (the sanitizer run) that can take longer than one try waits.
resume_resyncs() {
  for _ in $(seq 10); do
    sleep 1.5
    dm suspend "$1" && dm resume "$1" || return 1
    wait_in_sync "$1" 50 && return 0
  done
  return 1
}
events() { dm info "$1" | awk '/Event number/ {print $3}'; }
fio_verify() { # NAME EXPORT: random writes then a verify of every block, in the background
  timeout 120 fio --name="$1" --ioengine=nbd --uri="nbd+unix:///$2?socket=$WORK/nbd.sock" \
    --rw=randwrite --bs=4k --size=16m --iodepth=16 --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --rate=8m > "$WORK/$1.log" 2>&1 &
  FIO_PID=$!
}

# ---- 1. the remote dmnbd dies under load
check "1: the new mirror resyncs onto the remote leg" wait_in_sync mi
check "1: status names the URI" is "$(dm status mi)" \
  "0 $SECTORS mirror 2 $WORK/local.img $R $REGIONS/$REGIONS 1 AA 3 disk $WORK/log.img A"
before=$(events mi)
fio_verify kill-dmnbd mi
sleep 0.7
remote_kill
wait "$FIO_PID"; rc=$?
check "1: fio ran to the end with the remote server killed (exit $rc)" test "$rc" = 0
check "1: fio saw no error" grep -q "err= 0" "$WORK/kill-dmnbd.log"
# D (a write failed) or F (a flush did too, and F is shown first), as the kernel.
check "1: the remote leg failed [$(dm status mi)]" grep -qx "A[DF]" <(dm status mi | awk '{print $9}')
check "1: an event fired" test "$(events mi)" -gt "$before"
check "1: the regions written meanwhile are out of sync" test "$(sync_ratio mi)" != "$REGIONS/$REGIONS"
remote_start
check "1: back: a resume resyncs" resume_resyncs mi
check "1: the local file and the remote one are identical" cmp local.img remote.img
check "1: the leg is A again" is "$(dm status mi | awk '{print $9}')" AA

# ---- 2. nbdkit and qemu-nbd as the remote end
peer_mirror() { # NAME URI: a second mirror device over local2.img and URI
  rm -f local2.img log2.img; truncate -s 16M local2.img; truncate -s 1M log2.img
  dm create "$1" --table "0 $SECTORS mirror disk 2 $WORK/log2.img 1024 2 $WORK/local2.img 0 $2 0 2 handle_errors keep_log"
}
if command -v nbdkit > /dev/null; then
  truncate -s 16M kit.img
  nbdkit -f -U "$WORK/kit.sock" file "$WORK/kit.img" > kit.log 2>&1 &
  KIT_PID=$!
  CLEANUP_HOOKS+=('[ -n "$KIT_PID" ] && kill "$KIT_PID"')
  for _ in $(seq 50); do [ -S "$WORK/kit.sock" ] && break; sleep 0.1; done
  check "2: a mirror over nbdkit's file plugin" quiet peer_mirror mkit "nbd+unix:///?socket=$WORK/kit.sock"
  check "2: resynced" wait_in_sync mkit
  fio_verify kill-nbdkit mkit
  sleep 0.7
  kill -9 "$KIT_PID"; wait "$KIT_PID" 2>/dev/null; KIT_PID=""
  wait "$FIO_PID"; rc=$?
  check "2: fio ran to the end with nbdkit killed (exit $rc), no error" grep -q "err= 0" "$WORK/kill-nbdkit.log"
  check "2: nbdkit's leg failed" grep -qx "A[DF]" <(dm status mkit | awk '{print $9}')
  rm -f "$WORK/kit.sock"
  nbdkit -f -U "$WORK/kit.sock" file "$WORK/kit.img" >> kit.log 2>&1 &
  KIT_PID=$!
  check "2: nbdkit back: resynced" resume_resyncs mkit
  check "2: local and nbdkit's file identical" cmp local2.img kit.img
  dm remove mkit
  kill "$KIT_PID"; wait "$KIT_PID" 2>/dev/null; KIT_PID=""
else
  check "2: nbdkit is installed" false
fi
if command -v qemu-nbd > /dev/null; then
  truncate -s 16M qemu.img
  qemu-nbd -t -f raw -k "$WORK/qemu.sock" "$WORK/qemu.img" > qemu.log 2>&1 &
  QEMU_PID=$!
  CLEANUP_HOOKS+=('[ -n "$QEMU_PID" ] && kill "$QEMU_PID"')
  for _ in $(seq 50); do [ -S "$WORK/qemu.sock" ] && break; sleep 0.1; done
  check "2: a mirror over qemu-nbd" quiet peer_mirror mqemu "nbd+unix:///?socket=$WORK/qemu.sock"
  check "2: resynced" wait_in_sync mqemu
  fio_verify qemu mqemu
  wait "$FIO_PID"
  check "2: fio verified every block through qemu-nbd's leg" grep -q "err= 0" "$WORK/qemu.log"
  dm suspend mqemu
  check "2: local and qemu-nbd's file identical" cmp local2.img qemu.img
  dm resume mqemu
  dm remove mqemu
  kill "$QEMU_PID"; wait "$QEMU_PID" 2>/dev/null; QEMU_PID=""
else
  check "2: qemu-nbd is installed" false
fi

# ---- 3. linear over TCP, striped over a local file and a remote export
check "3: linear over TCP: a write" is "$(EXPORT=lin nbdio write:1048576:65536:0x5a:fua)" ok
check "3: reads back" is "$(EXPORT=lin nbdio read:1048576:512 | cut -d' ' -f2)" 5a5a5a5a5a5a5a5a
check "3: and is in the remote file" is "$(od -An -tx1 -j 1048576 -N 4 tcp.img | tr -d ' ')" 5a5a5a5a
check "3: striped: a write over both stripes" is "$(EXPORT=st nbdio write:0:131072:0x3c:fua)" ok
check "3: reads back" is "$(EXPORT=st nbdio read:0:131072 | cut -d' ' -f2)" 3c3c3c3c3c3c3c3c
check "3: the remote stripe got chunk 1" is "$(od -An -tx1 -j 0 -N 4 stripe-remote.img | tr -d ' ')" 3c3c3c3c

# ---- 4. nobody serves it
before_table=$(dm table lin)
check "4: a reload naming a dead export is refused" quiet bash -c \
  "! timeout 60 '$DMNBD' --control '$WORK/ctl.sock' reload lin --table '0 $SECTORS linear nbd+unix:///none?socket=$WORK/nobody.sock 0' 2>'$WORK/err'"
log "4: $(cat "$WORK/err")"
check "4: with the URI and the reason" grep -q "line 1: linear: Device lookup failed (cannot connect to nbd+unix:///none?socket=$WORK/nobody.sock: .*No such file or directory)" "$WORK/err"
check "4: the live table is untouched" is "$(dm table lin)" "$before_table"

# ---- 5. raid1 with a remote leg
RM="nbd+unix:///rmeta?socket=$WORK/remote.sock"
RD="nbd+unix:///rraid?socket=$WORK/remote.sock"
raid_state() { dm status rr | awk '{print $6, $7, $8}'; }
raid_idle() { # <= 30 s
  for _ in $(seq 300); do [ "$(raid_state)" = "$1 $SECTORS/$SECTORS idle" ] && return 0; sleep 0.1; done
  return 1
}
dm create rr --table "0 $SECTORS raid raid1 5 0 daemon_sleep 25 region_size 1024 2 $WORK/raid-local-meta.img $WORK/raid-local.img $RM $RD" ||
  fail "create rr failed"
check "5: the new raid1 set resyncs onto the remote leg" raid_idle AA
before=$(events rr)
fio_verify kill-raid rr
sleep 0.7
remote_kill
wait "$FIO_PID"; rc=$?
check "5: fio ran to the end with the remote server killed (exit $rc)" test "$rc" = 0
check "5: fio saw no error" grep -q "err= 0" "$WORK/kill-raid.log"
check "5: the remote leg failed [$(dm status rr)]" is "$(dm status rr | awk '{print $6}')" AD
check "5: an event fired" test "$(events rr)" -gt "$before"
remote_start
# The devices reconnect in the background, once a second; a resume re-adds
# the leg once its superblock reads again (tried again while it does not).
for _ in $(seq 10); do
  sleep 1
  dm suspend rr && dm resume rr || fail "suspend/resume rr failed"
  [ "$(dm status rr | awk '{print $6}')" != AD ] && break
done
check "5: back: the leg is re-added and recovered [$(dm status rr)]" raid_idle AA
check "5: the local leg and the remote one are identical" cmp raid-local.img raid-remote.img
dm remove rr
kill "$REMOTE_PID"; wait "$REMOTE_PID" 2>/dev/null; REMOTE_PID=""
pass
