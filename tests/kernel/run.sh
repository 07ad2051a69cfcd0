#!/bin/bash
# run.sh - dmnbd under the REAL Linux kernel: nbd client, ext4 and device-mapper
# in a QEMU guest booted from Debian's own kernel package (ctest: kernel.vm).
#
#   bash tests/kernel/run.sh [--tables FILE]... [--only e2e|oracle|logwrites|snapshot|mirror|crypt|thin|raid] [--keep]
#
# One guest boot runs everything:
#  e2e     nbd-client attach (1 and 2 connections), mkfs.ext4, mount, write,
#          fstrim, sync, umount, disconnect, reconnect, e2fsck -fn, checksums;
#          the host then reads the same files back out of the backing file.
#          A read-only export refuses writes; an export with error regions
#          fails reads and writes at exactly those sectors and works elsewhere.
#  oracle  every table of tests/kernel/oracle-tables.txt (plus --tables FILE and
#          DMNBD_ORACLE_TABLES=FILE[:FILE...]) is built by the guest's real
#          dmsetup over the same backing files and copied out; the host compares
#          byte for byte with what dmnbd serves for the same table (oracle.py).
#  logwrites  the kernel's dm-log-writes (over two scratch exports) and dmnbd's
#          log-writes run the same write/FUA/flush/discard/mark sequence
#          (LW_SEQ); both logs, replayed with "dmnbd replay-log" onto zeroed
#          images, must give identical images at every mark and at the end.
#  snapshot  dmnbd's snapshot/snapshot-origin and the kernel's dm-snapshot on
#          the persistent COW format (snapshot.py): one origin, snapshots of
#          chunk 8 and 128, the same write sequence on both sides. The kernel
#          reads dmnbd's COWs (same bytes, same status), dmnbd reads the
#          kernel's, both COWs are byte-identical, and the kernel's
#          snapshot-merge of dmnbd's COWs gives the origin dmnbd's snapshot
#          content; after the boot dmnbd's snapshot-merge of the kernel's COWs
#          gives the origin the kernel's snapshot content.
#  mirror  dmnbd's mirror and the kernel's dm-mirror on the disk log format
#          (mirror.py): a mirror whose leg 1 fails writes in chosen regions
#          (error targets, no handle_errors) gets pattern A written, which
#          leaves exactly those regions dirty in the log. dmnbd does it before
#          the boot and the kernel resyncs its files; the kernel does it in the
#          guest, its log must be byte-identical to dmnbd's, and dmnbd resyncs
#          the kernel's files; both must match the model (legs, log bytes).
#          Status and table strings of core/disk logs, sync/nosync and the
#          features are compared for the same tables.
#  crypt   LUKS and verity (cryptvols.py): dmnbd writes a plaintext into LUKS1,
#          LUKS2 (argon2id) and LUKS2 4 KiB-sector volumes made by cryptsetup
#          luksFormat, each opened by dmnbd (a luks: device); the guest's
#          `cryptsetup open` reads it back; the kernel writes into a fourth
#          volume and dmnbd reads it after the boot. The kernel's dm-verity and
#          dmnbd's read the same veritysetup trees (one intact, one with flipped
#          data and hash bytes; also ignore_corruption): the same unreadable
#          sectors and the same bytes elsewhere.
#  thin    dmnbd's thin-pool/thin and the kernel's dm-thin (thin.py): dmnbd
#          runs a write sequence (whole-block, partial, straddling writes,
#          create_snap with the origin suspended, writes that break the
#          sharing, discards, set_transaction_id) on a new pool before the
#          boot; the kernel opens copies of its files with the same tables:
#          the same bytes and status lines. The kernel runs the same
#          sequence on a new pool; after the boot thin_check passes on its
#          metadata, dmnbd reads it (the same bytes and statuses) and writes
#          to it (thin_check again), and thin_dump of both writers' metadata
#          must show the same devices, mappings, times and sharing.
#  raid    dmnbd's raid and the kernel's dm-raid (raid.py): dmnbd writes a
#          pattern through raid1, raid10 near/far/offset (with metadata),
#          raid0, raid4, every raid5 and raid6 layout (without) and raid5_ls,
#          raid6_ls_6 (with) before the boot (raid4/5/6: in small shuffled
#          requests); the kernel assembles copies of its files with the same
#          tables: all A, total/total idle, no resync, the same bytes, also
#          with legs missing ("- -"), and "check" finds no mismatch (P and Q
#          where and what the kernel has them). Degraded raid5/6 writes both
#          ways, the legs byte for byte. The kernel creates raid1, raid10
#          near, raid5_ls and raid6_ls_6 over zeroed files and writes; after
#          the boot dmnbd assembles them: idle at once, the same bytes, the
#          kernel's status line, dmnbd's own check finds no mismatch; the
#          superblocks and bitmap headers of both writers agree field by
#          field. Table strings of raid1/10/4/5/6 options are compared for
#          the same tables, and the kernel's refusals with dmnbd's.
#          Recovery both ways (k5, k6 with legs zeroed and "rebuild N": the
#          rebuilt legs equal the originals), and check/repair of copies
#          with flipped bytes (mismatch 8 and 16, the repaired legs equal).
#
# dmnbd ($DMNBD, default build/dmnbd) is started here on a unix socket in a temp
# dir and stopped by PID at the end; QEMU forwards the guest's connections to it.
# Needs root and Debian's archive (host tools and the guest's .debs are fetched
# with apt; cached in /var/cache/dmnbd/vm). KVM is used when it works, else TCG.
# Exit: 0 pass, 1 fail, 77 = this machine cannot run it (reason printed).
# Env: KEEP_WORK=1 keeps the work dir; see lib-vm.sh for DMNBD_VM_*.
set -uo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
HERE=$(cd "$(dirname "$0")" && pwd)
DMNBD=${DMNBD:-$HERE/../../build/dmnbd}
PY=/usr/bin/python3
TEST_NAME=kernel.vm
LISTS=("$HERE/oracle-tables.txt")
RUN_E2E=1 RUN_ORACLE=1 RUN_LW=1 RUN_SNAP=1 RUN_MIRROR=1 RUN_CRYPT=1 RUN_THIN=1 RUN_RAID=1
KEEP=${KEEP_WORK:-0}
IFS=: read -r -a _extra <<< "${DMNBD_ORACLE_TABLES:-}"
for f in "${_extra[@]}"; do [ -n "$f" ] && LISTS+=("$f"); done
while [ $# -gt 0 ]; do
  case $1 in
    --tables) LISTS+=("$2"); shift 2;;
    --only) case $2 in
              e2e|oracle|logwrites|snapshot|mirror|crypt|thin|raid)
                RUN_E2E=0 RUN_ORACLE=0 RUN_LW=0 RUN_SNAP=0 RUN_MIRROR=0 RUN_CRYPT=0 RUN_THIN=0 RUN_RAID=0
                case $2 in
                  e2e) RUN_E2E=1;; oracle) RUN_ORACLE=1;; logwrites) RUN_LW=1;; snapshot) RUN_SNAP=1;; mirror) RUN_MIRROR=1;; crypt) RUN_CRYPT=1;; thin) RUN_THIN=1;; raid) RUN_RAID=1;;
                esac;;
              *) echo "--only e2e|oracle|logwrites|snapshot|mirror|crypt|thin|raid" >&2; exit 2;;
            esac; shift 2;;
    --keep) KEEP=1; shift;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
  esac
done
for i in "${!LISTS[@]}"; do
  [ -r "${LISTS[$i]}" ] || { echo "table list ${LISTS[$i]} not readable" >&2; exit 2; }
  LISTS[$i]=$(readlink -f "${LISTS[$i]}")
done

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "# [+$(elapsed)s] $*" >&2; }
PASSED=0 FAILED=0 FIRST_FAIL=""
ok() { echo "ok - $*"; PASSED=$((PASSED + 1)); }
notok() { echo "not ok - $*"; FAILED=$((FAILED + 1)); FIRST_FAIL=${FIRST_FAIL:-$*}; }
check() { local d=$1; shift; if "$@"; then ok "$d"; else notok "$d"; fi; }

WORK="" SHM_DIR="" SERVER_PID="" SNAP_PID="" MIR_PID="" THIN_PID="" RAID_PID="" FINISHED=0
stop_server() { local pid=$SERVER_PID; SERVER_PID=""; stop_pid "$pid"; }
stop_pid() { # SIGTERM by PID; the server must exit 0 within 15 s
  local pid=$1 rc i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; wait "$pid" 2>/dev/null; return 1; fi
  wait "$pid"; rc=$?
  [ "$rc" = 0 ]
}
on_exit() {
  local rc=$?
  trap - EXIT
  [ -n "$SERVER_PID" ] && { stop_server || true; }
  [ -n "$SNAP_PID" ] && { stop_pid "$SNAP_PID" || true; }
  [ -n "$MIR_PID" ] && { stop_pid "$MIR_PID" || true; }
  [ -n "$THIN_PID" ] && { stop_pid "$THIN_PID" || true; }
  [ -n "$RAID_PID" ] && { stop_pid "$RAID_PID" || true; }
  [ -n "$SHM_DIR" ] && rm -rf "$SHM_DIR"
  if [ "$FINISHED" = 0 ] && [ "$rc" != 77 ]; then
    [ -n "$WORK" ] && echo "# work dir kept: $WORK" >&2
    echo "FAIL $TEST_NAME: ${FIRST_FAIL:-exit status $rc}"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'FIRST_FAIL=${FIRST_FAIL:-interrupted}; exit 130' INT TERM
die() { notok "$*"; [ -f "$WORK/server.log" ] && tail -20 "$WORK/server.log" | sed 's/^/#   server| /' >&2; exit 1; }

# shellcheck source=tests/kernel/lib-vm.sh
source "$HERE/lib-vm.sh"
[ -x "$DMNBD" ] || die "server binary $DMNBD not found (build first, or set DMNBD)"
vm_prepare

WORK=$(mktemp -d /tmp/dmnbd-kernel.XXXXXX)
mkdir -p "$WORK/guest/etc" "$WORK/guest/sbin" "$WORK/mnt"
# The ext4 round trip's backing file goes on a tmpfs where there is one, so the
# guest kernel's large writes take the zero-copy path (received straight into
# the file's mapping) and are checked by everything below; the other files stay
# in $WORK, on the copying path.
DISK=$WORK/disk.img
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] &&
   [ "$(df -k --output=avail /dev/shm | tail -1)" -gt $((256 << 10)) ]; then
  SHM_DIR=$(mktemp -d /dev/shm/dmnbd-kernel.XXXXXX)
  DISK=$SHM_DIR/disk.img
fi
cc -static -O2 -o "$WORK/guest/sbin/blkprobe" "$HERE/blkprobe.c" || die "cannot build blkprobe.c (cc -static)"
cp "$HERE/guest.sh" "$WORK/guest/guest-test.sh"; chmod +x "$WORK/guest/guest-test.sh"

# ------------------------------------------------------------ backing files
# $DISK: created (sparse, 128 MiB) by dmnbd from the config's "files:".
# ro.img: an ext4 image made here, served read-only.
mkdir -p "$WORK/rodir"
head -c 1048576 /dev/urandom > "$WORK/rodir/hello.bin"
echo "hello from the host" > "$WORK/rodir/hello.txt"
mkfs.ext4 -q -F -d "$WORK/rodir" "$WORK/ro.img" 16M > /dev/null || die "mkfs.ext4 -d failed on the host"
RO_SHA=$(sha256sum < "$WORK/ro.img" | cut -d' ' -f1)
HELLO_SHA=$(sha256sum < "$WORK/rodir/hello.bin" | cut -d' ' -f1)
# err.img: 8 MiB random, served through a table with error regions at
# sectors 2048-2055 and 4096 (the guest probes exactly these boundaries).
head -c 8388608 /dev/urandom > "$WORK/err.img"
cp "$WORK/err.img" "$WORK/err.orig"
ERR_EXPECTED="2048+8,4096+1"
ERR_OUT=0                               # its copy goes to the start of the out disk
OUT_START=8388608                       # the oracle's copies follow

# log-writes: lw-kdata.img / lw-klog.img are the scratch exports lwdata / lwlog
# under the guest kernel's dm-log-writes; lw-ddata.img / lw-dlog.img are behind
# dmnbd's own log-writes device lwd. The sequence (see guest.sh / logwrites.py):
# the FUA write is logged at once, the plain writes and the discard only at the
# next flush (or at teardown), marks at once: so m1 holds the FUA write only,
# m2 adds what the flush covered, the end has everything.
LW_SEQ="w:0:65536:0x11 fua:1048576:4096:0x22 mark:m1 flush w:2097152:32768:0x33 discard:16384:16384 mark:m2 fua:3145728:8192:0x44 w:4194304:4096:0x55"
LW_MARKS="m1 m2"
if [ "$RUN_LW" = 1 ]; then
  for f in lw-kdata lw-ddata; do truncate -s 8M "$WORK/$f.img"; done
  for f in lw-klog lw-dlog; do truncate -s 16M "$WORK/$f.img"; done
fi

# snapshot (snapshot.py; guest.sh snapshot()): SNAP/orig0.img is the origin
# before the sequences. d-*: dmnbd runs ops here, before the boot, on
# d-orig.img (a copy) with the COWs d-cow8.img, d-cow128.img; the guest's
# kernel reads them (exports sr-*) and merges copies of them (m8-*, m128-*:
# exports sm8-*, sm128-*). c-*: dmnbd, restarted, runs ops2 on copies of d-*;
# kc-*: the kernel does the same on other copies (exports sc-*). k-*: the
# guest's kernel runs ops on a fresh copy and zeroed COWs (exports sk-*).
# After the boot dmnbd reads the kernel's files and all must agree.
SNAP=$WORK/snap
# stage_serve CFG SOCK LOG WHAT: a dmnbd of its own for a stage, up once SOCK
# exists; its PID in SERVED_PID (empty, and the log's tail shown, if it failed).
stage_serve() {
  local i
  "$DMNBD" serve "$1" >> "$3" 2>&1 &
  SERVED_PID=$!
  for i in $(seq 100); do
    [ -S "$2" ] && return 0
    kill -0 "$SERVED_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$3" | sed "s/^/#   $4 server| /" >&2
  stop_pid "$SERVED_PID"; SERVED_PID=""
  return 1
}
snap_start() { # CFG SOCK: a dmnbd of its own for the snapshot devices
  stage_serve "$1" "$2" "$SNAP/server.log" snapshot; local rc=$?
  SNAP_PID=$SERVED_PID
  return $rc
}
snap_stop() { local pid=$SNAP_PID; SNAP_PID=""; stop_pid "$pid"; }
snap_devices() { # PREFIX FILE-PREFIX: origin, snapshot-origin and the two snapshots
  cat <<EOF
  - name: $1base-real
    table: "0 $SNAP_SIZE linear $SNAP/$2orig.img 0"
  - name: $1base
    table: "0 $SNAP_SIZE snapshot-origin $1base-real"
  - name: $1s8
    table: "0 $SNAP_SIZE snapshot $1base-real $SNAP/$2cow8.img P 8"
  - name: $1s128
    table: "0 $SNAP_SIZE snapshot $1base-real $SNAP/$2cow128.img P 128"
EOF
}
fsha() { sha256sum < "$1" | cut -d' ' -f1; }
declare -A SNAP_FSHA   # file -> sha256, to show it unchanged later
# snap_record P: what dmnbd instance P (socket $SNAP/P.sock) serves: sets
# SNAP_<P>_SHA_{S8,S128,BASE} and SNAP_<P>_STATUS_{S8,S128}.
snap_record() {
  local p=$1 n up=${1^^}
  "$PY" "$HERE/snapshot.py" sha "$SNAP/$p.sock" s8 s128 base > "$SNAP/$p.sha"
  for n in s8 s128 base; do
    printf -v "SNAP_${up}_SHA_${n^^}" '%s' "$(awk -v n="$n" '$1 == n {print $2}' "$SNAP/$p.sha")"
  done
  for n in s8 s128; do
    printf -v "SNAP_${up}_STATUS_${n^^}" '%s' "$("$DMNBD" --control "$SNAP/$p-ctl.sock" status "$n")"
  done
}
if [ "$RUN_SNAP" = 1 ]; then
  "$PY" "$HERE/snapshot.py" prepare "$WORK" > "$WORK/snap-prepare.out" || die "snapshot.py prepare failed"
  read -r SNAP_SIZE SNAP_COW8 SNAP_COW128 < "$SNAP/sizes"
  cp "$SNAP/orig0.img" "$SNAP/d-orig.img"
  cp "$SNAP/orig0.img" "$SNAP/k-orig.img"
  for p in d k; do
    truncate -s $((SNAP_COW8 * 512)) "$SNAP/$p-cow8.img"; truncate -s $((SNAP_COW128 * 512)) "$SNAP/$p-cow128.img"
  done
  printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$SNAP/d.sock" "$SNAP/d-ctl.sock" > "$SNAP/d.yaml"
  snap_devices "" d- >> "$SNAP/d.yaml"
  if snap_start "$SNAP/d.yaml" "$SNAP/d.sock"; then
    timeout 120 "$PY" "$HERE/snapshot.py" write "$SNAP/d.sock" "$WORK" ops > "$SNAP/write.out" 2>&1; rc=$?
    check "snapshot: dmnbd ran ops on base (snapshot-origin), s8, s128 ($(cat "$WORK/snap-prepare.out"))" test $rc = 0
    snap_record d
    log "snapshot: dmnbd after the sequence: s8 [$SNAP_D_STATUS_S8], s128 [$SNAP_D_STATUS_S128]; the kernel's allocation rule says: $("$PY" "$HERE/snapshot.py" model ops | tr '\n' ';')"
    if snap_stop; then ok "snapshot: dmnbd (the writer) stopped cleanly on SIGTERM"; else notok "snapshot: dmnbd (the writer) did not exit 0 on SIGTERM"; fi
    for f in d-orig d-cow8 d-cow128; do SNAP_FSHA[$f]=$(fsha "$SNAP/$f.img"); done
    cp "$SNAP/d-orig.img" "$SNAP/m8-orig.img"; cp "$SNAP/d-cow8.img" "$SNAP/m8-cow.img"
    cp "$SNAP/d-orig.img" "$SNAP/m128-orig.img"; cp "$SNAP/d-cow128.img" "$SNAP/m128-cow.img"
    for f in orig cow8 cow128; do cp "$SNAP/d-$f.img" "$SNAP/c-$f.img"; cp "$SNAP/d-$f.img" "$SNAP/kc-$f.img"; done
    printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$SNAP/c.sock" "$SNAP/c-ctl.sock" > "$SNAP/c.yaml"
    snap_devices "" c- >> "$SNAP/c.yaml"
  else
    notok "snapshot: dmnbd did not start with the snapshot tables (see $SNAP/server.log)"
    RUN_SNAP=0
  fi
fi
if [ "$RUN_SNAP" = 1 ]; then
  if snap_start "$SNAP/c.yaml" "$SNAP/c.sock"; then
    timeout 120 "$PY" "$HERE/snapshot.py" write "$SNAP/c.sock" "$WORK" ops2 > "$SNAP/write2.out" 2>&1
    check "snapshot: dmnbd, restarted on copies of its files, ran ops2 on top" test $? = 0
    snap_record c
    log "snapshot: dmnbd after ops2: s8 [$SNAP_C_STATUS_S8], s128 [$SNAP_C_STATUS_S128]; the kernel's allocation rule says: $("$PY" "$HERE/snapshot.py" model ops2 | tr '\n' ';')"
    if snap_stop; then ok "snapshot: dmnbd (ops2) stopped cleanly on SIGTERM"; else notok "snapshot: dmnbd (ops2) did not exit 0 on SIGTERM"; fi
  else
    notok "snapshot: dmnbd did not restart on copies of its snapshot files (see $SNAP/server.log)"
  fi
fi

# mirror (mirror.py; guest.sh mirror()): MIR/p0.img, b.img, r.img are leg 0,
# leg 1 and the log before the writes, a.img the pattern written. d-*: dmnbd
# runs the mirror with the error-stitched leg 1 (D1) here, before the boot;
# the guest's kernel resyncs copies of its files (dc-*, exports md-*), and
# of the model's (mm-*) when dmnbd's differ from those or are missing (MIR_M).
# k-*: the kernel does what dmnbd did (exports mk-*).
# t-*: scratch legs and log for step 3's tables (exports mt-*). After the
# boot dmnbd resyncs copies of the kernel's files (kr-*, D2) and runs step 3
# (D3, files dt-*). dmnbd's lines go to MIR/dmnbd.out (mirror.py's format).
MIR=$WORK/mirror MIR_D=0 MIR_M=1
mir_start() { # CFG SOCK: a dmnbd of its own for the mirror devices
  stage_serve "$1" "$2" "$MIR/server.log" mirror; local rc=$?
  MIR_PID=$SERVED_PID
  return $rc
}
mir_stop() { local pid=$MIR_PID; MIR_PID=""; stop_pid "$pid"; }
mir_out() { echo "$*" >> "$MIR/dmnbd.out"; }
# mir_wait CTL NAME STEP: as guest.sh's mir_wait, with dmnbd's status
mir_wait() {
  local ctl=$1 name=$2 step=$3 st st2 r i=0
  st=$(timeout 10 "$DMNBD" --control "$ctl" status "$name" 2>&1)
  mir_out "status $step first [$st]"
  while :; do
    r=$(awk '{print $(5 + $4)}' <<< "$st" 2>/dev/null)
    [ -n "$r" ] && [ "${r%/*}" = "${r#*/}" ] && break
    i=$((i + 1)); [ $i -ge 600 ] && break
    sleep 0.1
    st=$(timeout 10 "$DMNBD" --control "$ctl" status "$name" 2>&1)
  done
  for _ in 1 2 3 4 5; do
    sleep 0.2; st2=$(timeout 10 "$DMNBD" --control "$ctl" status "$name" 2>&1)
    [ "$st2" = "$st" ] && break
    mir_out "status $step settling [$st]"; st=$st2
  done
  r=$(awk '{print $(5 + $4)}' <<< "$st" 2>/dev/null)
  mir_out "polls $step $i"
  mir_out "status $step sync [$st]"
  [ -n "$r" ] && [ "${r%/*}" = "${r#*/}" ]
}
mir_table() { mir_out "table $3 [$(timeout 10 "$DMNBD" --control "$1" table "$2" 2>&1)]"; }
if [ "$RUN_MIRROR" = 1 ]; then
  "$PY" "$HERE/mirror.py" prepare "$WORK" > "$WORK/mirror-prepare.out" || die "mirror.py prepare failed"
  read -r MIR_PARAMS < "$MIR/params"; eval "$MIR_PARAMS"
  : > "$MIR/dmnbd.out"
  for f in leg0 leg1 log; do cp "$MIR/m-$f.img" "$MIR/mm-$f.img"; done
  for f in leg0:p0 leg1:b log:r; do
    cp "$MIR/${f#*:}.img" "$MIR/k-${f%%:*}.img"; cp "$MIR/${f#*:}.img" "$MIR/d-${f%%:*}.img"
  done
  for f in leg0 leg1 leg2; do truncate -s $((MIR_T_LEG_SECTORS * 512)) "$MIR/t-$f.img" "$MIR/dt-$f.img"; done
  truncate -s $((MIR_LOG_SECTORS * 512)) "$MIR/t-log.img" "$MIR/dt-log.img"
  if ! "$DMNBD" targets 2>/dev/null | grep -qw mirror; then
    echo "$DMNBD has no mirror target (dmnbd targets: $("$DMNBD" targets 2>&1 | awk '{print $1}' | tr '\n' ' '))" > "$MIR/dmnbd.skip"
    notok "mirror: dmnbd's parts cannot run: $(cat "$MIR/dmnbd.skip")"
  else
    # D1: dmnbd writes A through its mirror over d-leg0 and the stitched d-leg1
    {
      printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$MIR/d.sock" "$MIR/d-ctl.sock"
      printf '  - name: d-leg1s\n    table: |\n'
      "$PY" "$HERE/mirror.py" stitch "$MIR/d-leg1.img" | sed 's/^/      /'
      printf '  - name: d-mi\n    table: "0 %s mirror disk 2 %s %s 2 %s 0 d-leg1s 0"\n' "$MIR_L" "$MIR/d-log.img" "$MIR_REGION" "$MIR/d-leg0.img"
    } > "$MIR/d.yaml"
    printf 'dev D1 %s %s\n' LEG0 "$MIR/d-leg0.img" LEG1 d-leg1s LOG "$MIR/d-log.img" >> "$MIR/dmnbd.out"
    if mir_start "$MIR/d.yaml" "$MIR/d.sock"; then
      mir_wait "$MIR/d-ctl.sock" d-mi D1; rc=$?
      check "mirror 1: dmnbd's first resync over a new log finished ($(sed -n 's/^status D1 sync //p' "$MIR/dmnbd.out"))" test $rc = 0
      timeout 120 "$PY" "$HERE/mirror.py" write "$MIR/d.sock" d-mi "$MIR/a.img" > "$MIR/write.out" 2>&1; rc=$?
      check "mirror 1: dmnbd's mirror d-mi took pattern A through libnbd, 1 MiB per request$( [ $rc != 0 ] && echo " ($(tail -1 "$MIR/write.out"))")" test $rc = 0
      mir_out "status D1 written [$(timeout 10 "$DMNBD" --control "$MIR/d-ctl.sock" status d-mi 2>&1)]"
      mir_table "$MIR/d-ctl.sock" d-mi D1
      log "mirror 1: dmnbd after the writes: $(sed -n 's/^status D1 written //p' "$MIR/dmnbd.out")"
      if mir_stop; then ok "mirror 1: dmnbd (the writer) stopped cleanly on SIGTERM"; else notok "mirror 1: dmnbd (the writer) did not exit 0 on SIGTERM"; fi
      for f in leg0 leg1 log; do cp "$MIR/d-$f.img" "$MIR/dc-$f.img"; done
      MIR_D=1
      # the kernel resyncs the model's files only when dmnbd's differ from them
      if cmp -s "$MIR/d-leg0.img" "$MIR/m-leg0.img" && cmp -s "$MIR/d-leg1.img" "$MIR/m-leg1.img" &&
         cmp -s "$MIR/d-log.img" "$MIR/m-log.img"; then
        MIR_M=0; : > "$MIR/m-same"
        log "mirror 1: dmnbd's files are byte-identical to the model's: the guest resyncs dmnbd's only"
      fi
    else
      echo "dmnbd did not start with the mirror tables (see $MIR/server.log)" > "$MIR/dmnbd.skip"
      notok "mirror 1: $(cat "$MIR/dmnbd.skip")"
    fi
  fi
fi

# crypt (cryptvols.py; guest.sh crypt()): dmnbd opens each LUKS volume (a
# luks: device) and writes its plaintext before the boot, in a dmnbd of its own.
CRYPT=$WORK/crypt
if [ "$RUN_CRYPT" = 1 ]; then
  "$PY" "$HERE/cryptvols.py" prepare "$WORK" > "$WORK/crypt-prepare.out" 2>&1 \
    || die "cryptvols.py prepare failed: $(tail -3 "$WORK/crypt-prepare.out")"
  {
    printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$CRYPT/w.sock" "$CRYPT/w-ctl.sock"
    for v in luks1 luks2 luks2k; do
      printf '  - name: c-%s-plain\n    luks: { file: %s, key_file: %s }\n' "$v" "$CRYPT/$v.img" "$CRYPT/pw"
    done
  } > "$CRYPT/w.yaml"
  chmod 600 "$CRYPT/w.yaml"
  if stage_serve "$CRYPT/w.yaml" "$CRYPT/w.sock" "$CRYPT/server.log" crypt; then
    for v in luks1 luks2 luks2k; do
      timeout 120 nbdcopy "$CRYPT/$v.plain" "nbd+unix:///c-$v-plain?socket=$CRYPT/w.sock"
      check "crypt: dmnbd opened $v (luks:) and wrote its plaintext" test $? = 0
    done
    if stop_pid "$SERVED_PID"; then ok "crypt: dmnbd (the writer) stopped cleanly"; else notok "crypt: dmnbd (the writer) did not exit 0"; fi
  else
    notok "crypt: dmnbd did not start with the crypt tables (see $CRYPT/server.log)"
  fi
fi

# thin (thin.py; guest.sh thin()): THIN/d-*: dmnbd's pool, on which it runs
# the sequence here, before the boot (D1); the guest's kernel opens copies
# (dc-*, exports th-dc-*: K1) and runs the same sequence on zeroed files
# (k-*, exports th-k-*: K2). After the boot dmnbd opens copies of its own
# files (dr-*: Dr, its status of the bytes the kernel read) and of the
# kernel's (kr-*: D2), and writes to the latter (D3). dmnbd's lines go to
# THIN/dmnbd.out (thin.py's format).
THIN=$WORK/thin
thin_devices() { # PREFIX: a pool over THIN/PREFIX-meta.img, PREFIX-data.img, and thin1, thin2
  printf '  - name: %spool\n    table: "0 %s thin-pool %s %s 128 0"\n' "$1" "$THIN_POOL" "$THIN/$1meta.img" "$THIN/$1data.img"
  [ "${2:-}" = thins ] && printf '  - name: %sthin%s\n    table: "0 %s thin %spool %s"\n' "$1" 1 "$THIN_SECTORS" "$1" 1 "$1" 2 "$THIN_SECTORS" "$1" 2
  return 0
}
thin_yaml() { # NAME PREFIX[:thins]...: THIN/NAME.yaml
  local n=$1 p; shift
  {
    printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$THIN/$n.sock" "$THIN/$n-ctl.sock"
    for p in "$@"; do thin_devices "${p%%:*}" "$([ "${p#*:}" != "$p" ] && echo "${p#*:}")"; done
  } > "$THIN/$n.yaml"
}
# thin_stop WHAT: SIGTERM; it must exit 0 within 15 s
thin_stop() {
  local pid=$THIN_PID
  THIN_PID=""
  if stop_pid "$pid"; then ok "$1 stopped cleanly on SIGTERM"; else notok "$1 did not exit 0 within 15 s of SIGTERM"; fi
}
# thin_check_ok WHAT FILE: thin_check (its output shown when it fails)
thin_check_ok() {
  if thin_check "$2" > "$THIN/thin_check.out" 2>&1; then ok "$1: thin_check ${2##*/} passes"
  else sed 's/^/#   thin_check| /' "$THIN/thin_check.out" >&2; notok "$1: thin_check ${2##*/} fails"; fi
}
if [ "$RUN_THIN" = 1 ]; then
  "$PY" "$HERE/thin.py" prepare "$WORK" > "$WORK/thin-prepare.out" || die "thin.py prepare failed"
  read -r THIN_PARAMS < "$THIN/params"; eval "$THIN_PARAMS"
  : > "$THIN/dmnbd.out"
  thin_yaml d d-
  TT=$(date +%s.%N)
  if stage_serve "$THIN/d.yaml" "$THIN/d.sock" "$THIN/server.log" thin; then
    THIN_PID=$SERVED_PID
    timeout 120 "$PY" "$HERE/thin.py" run "$THIN/d.sock" "$THIN/d-ctl.sock" "$DMNBD" "$WORK" ops d- D1 \
      >> "$THIN/dmnbd.out" 2> "$THIN/run.err"
    rc=$?
    check "thin D1: dmnbd ran the sequence on a new pool ($(cat "$WORK/thin-prepare.out"))$(
      [ $rc != 0 ] && echo "; $(tail -1 "$THIN/dmnbd.out") $(tail -1 "$THIN/run.err")")" test $rc = 0
    thin_stop "thin D1: dmnbd (the writer)"
    thin_check_ok "thin D1: dmnbd's metadata after the sequence" "$THIN/d-meta.img"
    thin_dump "$THIN/d-meta.img" > "$THIN/d.xml" 2>&1
    for f in meta data; do
      cp --sparse=always "$THIN/d-$f.img" "$THIN/dc-$f.img"; cp --sparse=always "$THIN/d-$f.img" "$THIN/dr-$f.img"
    done
    log "thin D1: dmnbd's pool after the sequence: $(sed -n 's/^status D1 pool end //p' "$THIN/dmnbd.out") ($(awk -v a="$TT" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s)"
  else
    notok "thin D1: dmnbd did not start with the thin-pool table (see $THIN/server.log)"
    for f in meta data; do cp "$THIN/d-$f.img" "$THIN/dc-$f.img"; cp "$THIN/d-$f.img" "$THIN/dr-$f.img"; done
  fi
fi

# raid (raid.py; guest.sh raid()): files RAID/PREFIX-SET-ROLE.img. d-*: dmnbd
# writes pattern P through its raid sets here, before the boot (D1), and its
# table strings for step 4 go over dt<i>-* (D4); the guest's kernel gets
# copies (dc-*, exports r-dc-*) to assemble, check and run degraded; dg-*
# (copies too) are for dmnbd's degraded run after the boot. k-*: zeroed, the
# kernel creates r1 and r10n over them and writes pattern K (exports r-k-*);
# after the boot dmnbd assembles copies (kr-*, D2). t-*: the kernel's scratch
# for step 4 (exports r-t-*). dmnbd's lines go to RAID/dmnbd.out (raid.py's
# format).
RAID=$WORK/raid
raid_start() { # CFG SOCK: a dmnbd of its own for the raid sets
  stage_serve "$1" "$2" "$RAID/server.log" raid; local rc=$?
  RAID_PID=$SERVED_PID
  return $rc
}
# raid_stop WHAT: SIGTERM; it must exit 0 within 15 s like every server here.
# It is given 30 s before SIGKILL, so a late exit still leaves the files as
# dmnbd finishes them (the checks after it read them) and is told apart
# from a hang.
raid_stop() {
  local pid=$RAID_PID rc i t
  RAID_PID=""
  t=$(date +%s.%N)
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"; wait "$pid" 2>/dev/null
    notok "$1 did not exit within 30 s of SIGTERM (killed)"
    return 1
  fi
  wait "$pid"; rc=$?
  t=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  check "$1 exited 0 on SIGTERM (exit $rc, after $t s)" test "$rc" = 0
  check "$1 exited within 15 s of SIGTERM, as every server of this test must (took $t s)" \
    awk -v t="$t" 'BEGIN{exit !(t < 15)}'
}
raid_out() { echo "$*" >> "$RAID/dmnbd.out"; }
raid_st() { timeout 10 "$DMNBD" --control "$1" status "$2" 2>&1; }
# raid_wait CTL NAME: until idle, total/total and no "a" (60 s at most)
raid_wait() {
  local st i=0 w
  while :; do
    st=$(raid_st "$1" "$2"); read -r -a w <<< "$st"
    [ "${w[7]:-}" = idle ] && [ -n "${w[6]:-}" ] && [ "${w[6]%/*}" = "${w[6]#*/}" ] &&
      [[ ${w[5]} != *a* ]] && return 0
    i=$((i + 1)); [ $i -ge 600 ] && return 1
    sleep 0.1
  done
}
raid_devs() { # STEP SET FILE-PREFIX ROLES...: which path is which role
  local s=$1 n=$2 p=$3 r; shift 3
  for r in "$@"; do raid_out "dev $s $n $r $RAID/$p$r.img"; done
}
raid_sets() { cut -d' ' -f1 "$RAID/sets"; }
raid_roles() { awk -v n="$1" '$1 == n {$1 = $2 = ""; print}' "$RAID/sets"; }
raid_wsets() { cut -d' ' -f1 "$RAID/wsets"; }
raid_wroles() { awk -v n="$1" '$1 == n {$1 = $2 = ""; print}' "$RAID/wsets"; }
# raid_create_out STEP N NAME TABLE: "dmnbd create"; its status and table,
# or a "refused" line with dmnbd's error
raid_create_out() {
  if timeout 30 "$DMNBD" --control "$RAID/d-ctl.sock" create "$3" --table "$4" > "$RAID/create.out" 2>&1 < /dev/null; then
    raid_out "status $1 $2 first [$(raid_st "$RAID/d-ctl.sock" "$3")]"
    raid_out "table $1 $2 [$(timeout 10 "$DMNBD" --control "$RAID/d-ctl.sock" table "$3" 2>&1)]"
  else
    raid_out "refused $1 $2 $(tr '\n' ' ' < "$RAID/create.out")"
  fi
}
if [ "$RUN_RAID" = 1 ]; then
  "$PY" "$HERE/raid.py" prepare "$WORK" > "$WORK/raid-prepare.out" || die "raid.py prepare failed"
  : > "$RAID/dmnbd.out"
  {
    printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$RAID/d.sock" "$RAID/d-ctl.sock"
    for s in $(raid_sets); do printf '  - name: d-%s\n    table: "%s"\n' "$s" "$(cat "$RAID/tab/d-$s.table")"; done
    for s in $(raid_wsets); do printf '  - name: w-%s\n    table: "%s"\n' "$s" "$(cat "$RAID/tab/dw-$s.degraded")"; done
  } > "$RAID/d.yaml"
  TR=$(date +%s.%N)
  if raid_start "$RAID/d.yaml" "$RAID/d.sock"; then
    # step 4's table strings, one "dmnbd create" each over files of its own;
    # first, so that their resyncs are long over at the stop (dmnbd holds up
    # a raid set's removal, and so its stop, for ~10 s after the set's last
    # resync or write)
    for i in $(seq "$(ls "$RAID"/tab/dt*.table | wc -l)"); do
      raid_devs D4 "$i" "dt$i-" m0 d0 m1 d1 m2 d2 m3 d3
      raid_create_out D4 "$i" "dt$i" "$(cat "$RAID/tab/dt$i.table")"
    done
    # (these must be refused)
    for i in $(seq "$(ls "$RAID"/tab/dr*.table | wc -l)"); do
      raid_devs D4r "$i" "dr$i-" m0 d0 m1 d1 m2 d2 m3 d3
      raid_create_out D4r "$i" "dr$i" "$(cat "$RAID/tab/dr$i.table")"
    done
    for s in $(raid_sets); do
      # (write and read only once the first resync is done: its reads and
      # writes would otherwise race with P's)
      raid_wait "$RAID/d-ctl.sock" "d-$s" || raid_out "status D1 $s resync-timeout [$(raid_st "$RAID/d-ctl.sock" "d-$s")]"
      timeout 120 "$PY" "$HERE/raid.py" write "$RAID/d.sock" "d-$s" "$s" "$RAID/p.img" >> "$RAID/write.out" 2>&1 \
        || raid_out "refused D1 $s writing P failed: $(tail -1 "$RAID/write.out")"
      raid_wait "$RAID/d-ctl.sock" "d-$s"
      raid_devs D1 "$s" "d-$s-" $(raid_roles "$s")
      raid_out "status D1 $s written [$(raid_st "$RAID/d-ctl.sock" "d-$s")]"
      raid_out "table D1 $s [$(timeout 10 "$DMNBD" --control "$RAID/d-ctl.sock" table "d-$s" 2>&1)]"
    done
    "$PY" "$HERE/raid.py" sha "$RAID/d.sock" $(raid_sets | sed 's/^/d-/') | sed 's/^d-\([^ ]*\) /sha D1 \1 /' >> "$RAID/dmnbd.out"
    # DW: W through the degraded tables (over zeroed legs: F, then W in small requests)
    for s in $(raid_wsets); do
      timeout 120 "$PY" "$HERE/raid.py" write "$RAID/d.sock" "w-$s" "$s" "$RAID/w.img" >> "$RAID/write.out" 2>&1 \
        || raid_out "refused DW $s writing W failed: $(tail -1 "$RAID/write.out")"
      raid_devs DW "$s" "dw-$s-" $(raid_wroles "$s")
      raid_out "status DW $s written [$(raid_st "$RAID/d-ctl.sock" "w-$s")]"
      raid_out "table DW $s [$(timeout 10 "$DMNBD" --control "$RAID/d-ctl.sock" table "w-$s" 2>&1)]"
    done
    "$PY" "$HERE/raid.py" sha "$RAID/d.sock" $(raid_wsets | sed 's/^/w-/') | sed 's/^w-\([^ ]*\) /sha DW \1 /' >> "$RAID/dmnbd.out"
    raid_stop "raid 1: dmnbd (the writer)"
    log "raid 1: dmnbd wrote P on $(raid_sets | tr '\n' ' ')in $(awk -v a="$TR" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s: $(grep '^status D1 .* written' "$RAID/dmnbd.out" | sed 's/^status D1 //; s/ written / /' | tr '\n' ';')"
  else
    notok "raid 1: dmnbd did not start with the raid tables (see $RAID/server.log)"
  fi
  # the kernel assembles copies; d-* stay as dmnbd left them
  for f in "$RAID"/d-*.img; do b=${f##*/}; cp "$f" "$RAID/dc-${b#d-}"; cp "$f" "$RAID/dg-${b#d-}"; done
  # R and X: copies with legs zeroed (rb-) or bytes flipped (mk-, md-)
  "$PY" "$HERE/raid.py" derive "$WORK" pre || notok "raid: raid.py derive pre failed"
fi

OUT_SIZE=0
if [ "$RUN_ORACLE" = 1 ]; then
  OUT_SIZE=$("$PY" "$HERE/oracle.py" plan "$WORK" "$OUT_START" "${LISTS[@]}") || die "oracle.py plan failed"
  log "oracle: $(grep -c '"name"' "$WORK/plan.json") tables from ${LISTS[*]}"
else
  mkdir -p "$WORK/guest/etc/oracle"; : > "$WORK/guest/etc/oracle/plan"; : > "$WORK/guest/etc/oracle/backing"
  echo '{"entries": [], "out_size": 0}' > "$WORK/plan.json"
fi
[ "$OUT_SIZE" -lt "$OUT_START" ] && OUT_SIZE=$OUT_START
truncate -s "$OUT_SIZE" "$WORK/out.img"

cat > "$WORK/guest/etc/nbdvm.env" <<EOF
NBD_HOST=10.0.2.100
NBD_PORT=10809
RUN_E2E=$RUN_E2E
RUN_ORACLE=$RUN_ORACLE
RUN_LW=$RUN_LW
LW_SEQ="$LW_SEQ"
ERR_OUT=$ERR_OUT
RUN_SNAP=$RUN_SNAP
SNAP_SIZE=${SNAP_SIZE:-0}
SNAP_D_SHA_S8=${SNAP_D_SHA_S8:-}
SNAP_D_SHA_S128=${SNAP_D_SHA_S128:-}
SNAP_D_SHA_BASE=${SNAP_D_SHA_BASE:-}
SNAP_D_STATUS_S8="${SNAP_D_STATUS_S8:-}"
SNAP_D_STATUS_S128="${SNAP_D_STATUS_S128:-}"
SNAP_C_SHA_S8=${SNAP_C_SHA_S8:-}
SNAP_C_SHA_S128=${SNAP_C_SHA_S128:-}
SNAP_C_SHA_BASE=${SNAP_C_SHA_BASE:-}
SNAP_C_STATUS_S8="${SNAP_C_STATUS_S8:-}"
SNAP_C_STATUS_S128="${SNAP_C_STATUS_S128:-}"
RUN_MIRROR=$RUN_MIRROR
MIR_L=${MIR_L:-0}
MIR_REGION=${MIR_REGION:-0}
MIR_D=$MIR_D
MIR_M=$MIR_M
RUN_CRYPT=$RUN_CRYPT
RUN_THIN=$RUN_THIN
THIN_POOL=${THIN_POOL:-0}
THIN_SECTORS=${THIN_SECTORS:-0}
RUN_RAID=$RUN_RAID
export NBD_HOST NBD_PORT RUN_E2E RUN_ORACLE RUN_LW LW_SEQ ERR_OUT RUN_SNAP SNAP_SIZE
export SNAP_D_SHA_S8 SNAP_D_SHA_S128 SNAP_D_SHA_BASE SNAP_D_STATUS_S8 SNAP_D_STATUS_S128
export SNAP_C_SHA_S8 SNAP_C_SHA_S128 SNAP_C_SHA_BASE SNAP_C_STATUS_S8 SNAP_C_STATUS_S128
export RUN_MIRROR MIR_L MIR_REGION MIR_D MIR_M RUN_CRYPT RUN_THIN THIN_POOL THIN_SECTORS RUN_RAID
EOF

# ------------------------------------------------------------ dmnbd
SOCK=$WORK/nbd.sock
CTL=$WORK/ctl.sock
write_config() {
  cat > "$WORK/cfg.yaml" <<EOF
listen: [ "unix://$SOCK" ]
control: $CTL
files:
  - { path: $DISK, size: 128MiB }
devices:
  - name: disk
    description: ext4 round trip
    table: "0 262144 linear $DISK 0"
  - name: ro
    read_only: true
    table: "0 32768 linear ro.img 0"
  - name: errdev
    table: |
      0 2048 linear err.img 0
      2048 8 error
      2056 2040 linear err.img 2056
      4096 1 error
      4097 12287 linear err.img 4097
EOF
  [ "$RUN_LW" = 1 ] && cat >> "$WORK/cfg.yaml" <<EOF
  - name: lwdata
    description: scratch data device for the guest kernel's dm-log-writes
    table: "0 16384 linear lw-kdata.img 0"
  - name: lwlog
    description: scratch log device for the guest kernel's dm-log-writes
    table: "0 32768 linear lw-klog.img 0"
  - name: lwd
    description: dmnbd's log-writes, compared with the kernel's
    table: "0 16384 log-writes lw-ddata.img lw-dlog.img"
EOF
  if [ "$RUN_SNAP" = 1 ]; then
    local e f
    for e in sr-orig:d-orig sr-cow8:d-cow8 sr-cow128:d-cow128 sk-orig:k-orig sk-cow8:k-cow8 sk-cow128:k-cow128 \
             sc-orig:kc-orig sc-cow8:kc-cow8 sc-cow128:kc-cow128 \
             sm8-orig:m8-orig sm8-cow:m8-cow sm128-orig:m128-orig sm128-cow:m128-cow; do
      f=$SNAP/${e#*:}.img
      printf '  - name: %s\n    table: "0 %s linear %s 0"\n' "${e%%:*}" $(($(stat -c %s "$f") / 512)) "$f" >> "$WORK/cfg.yaml"
    done
  fi
  if [ "$RUN_MIRROR" = 1 ]; then
    local p r f
    # export prefix : file prefix
    for p in mk:k mt:t $([ "$MIR_M" = 1 ] && echo mm:mm) $([ "$MIR_D" = 1 ] && echo md:dc); do
      for r in leg0 leg1 leg2 log; do
        f=$MIR/${p#*:}-$r.img
        [ -e "$f" ] || continue
        printf '  - name: %s\n    table: "0 %s linear %s 0"\n' "${p%%:*}-$r" $(($(stat -c %s "$f") / 512)) "$f" >> "$WORK/cfg.yaml"
      done
    done
  fi
  if [ "$RUN_RAID" = 1 ]; then
    local s p r roles
    # the guest's legs, one export per set (r-PREFIX-SET, the legs one after
    # another in the order of their roles; the guest cuts them apart again
    # with dm-linear): dmnbd's copies (dc-), the kernel's (k-), dmnbd's
    # degraded writes (dw-), the kernel's (kw-), scratch (r-t)
    raid_export() { # EXPORT FILE...
      local e=$1 f n off=0
      printf '  - name: %s\n    table: |\n' "$e"
      shift
      for f in "$@"; do
        n=$(($(stat -c %s "$f") / 512))
        printf '      %s %s linear %s 0\n' $off $n "$f"
        off=$((off + n))
      done
    }
    while read -r s _ roles; do
      for p in dc k rb mk mr; do
        [ -e "$RAID/$p-$s-${roles%% *}.img" ] || continue
        raid_export "r-$p-$s" $(for r in $roles; do echo "$RAID/$p-$s-$r.img"; done) >> "$WORK/cfg.yaml"
      done
    done < "$RAID/sets"
    while read -r s _ roles; do
      for p in dw kw; do
        raid_export "r-$p-$s" $(for r in $roles; do echo "$RAID/$p-$s-$r.img"; done) >> "$WORK/cfg.yaml"
      done
    done < "$RAID/wsets"
    raid_export r-t $(for r in m0 d0 m1 d1 m2 d2 m3 d3; do echo "$RAID/t-$r.img"; done) >> "$WORK/cfg.yaml"
  fi
  if [ "$RUN_CRYPT" = 1 ]; then
    for e in luks1 luks2 luks2k kvol vdata vhash vbad vbadhash; do
      f=$CRYPT/$e.img
      printf '  - name: c-%s\n    table: "0 %s linear %s 0"\n' "$e" $(($(stat -c %s "$f") / 512)) "$f" >> "$WORK/cfg.yaml"
    done
  fi
  if [ "$RUN_THIN" = 1 ]; then
    for e in dc-meta dc-data k-meta k-data; do
      f=$THIN/$e.img
      printf '  - name: th-%s\n    table: "0 %s linear %s 0"\n' "$e" $(($(stat -c %s "$f") / 512)) "$f" >> "$WORK/cfg.yaml"
    done
  fi
  [ "$RUN_ORACLE" = 1 ] && "$PY" "$HERE/oracle.py" config "$WORK" >> "$WORK/cfg.yaml"
  chmod 600 "$WORK/cfg.yaml"  # the oracle's crypt tables hold keys
  return 0
}
# Start dmnbd; an oracle table it refuses (exit 2, "device oracle-NAME: ...")
# is recorded in refused.txt (oracle.py compares that with the kernel) and left
# out, then the server is started again.
start_server() {
  local i rc msg name
  for _ in $(seq 100); do
    write_config
    "$DMNBD" serve "$WORK/cfg.yaml" >> "$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for i in $(seq 100); do
      [ -S "$SOCK" ] && return 0
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$SERVER_PID" 2>/dev/null && die "dmnbd did not open $SOCK within 10 s"
    wait "$SERVER_PID"; rc=$?; SERVER_PID=""
    msg=$(tail -1 "$WORK/server.log")
    name=$(sed -n 's/.*: device oracle-\([a-z0-9_]*\): .*/\1/p' <<< "$msg")
    if [ "$rc" = 2 ] && [ -n "$name" ] && ! grep -q "^$name " "$WORK/refused.txt" 2>/dev/null; then
      echo "$name ${msg#*: device oracle-$name: }" >> "$WORK/refused.txt"
      continue
    fi
    die "dmnbd failed to start (exit $rc): $msg"
  done
  die "dmnbd: too many refused tables"
}
start_server
log "dmnbd pid $SERVER_PID on $SOCK$( [ -s "$WORK/refused.txt" ] && echo ", refused $(wc -l < "$WORK/refused.txt") oracle table(s)")"

# ------------------------------------------------------------ boot
TB=$(date +%s.%N)
vm_boot "$WORK" "$WORK/guest" "$SOCK" "$WORK/out.img"
QRC=$?
log "guest finished: qemu exit $QRC after $(awk -v a="$TB" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s (accel $VM_ACCEL)"
C=$WORK/console.txt
grep -a -E '^(NBDVM-|ORACLE-|    \| )' "$C" | grep -v '^NBDVM-DMESG' | sed 's/^/#   guest| /' >&2
grep -a '^NBDVM-DMESG' "$C" | sed 's/^NBDVM-DMESG/#   guest dmesg|/' >&2
check "guest ran to the end (qemu exit $QRC)" grep -aq '^NBDVM-RESULT:' "$C"
while read -r _ name verdict detail; do
  if [ "$verdict" = PASS ]; then ok "guest: $name${detail:+ $detail}"; else notok "guest: $name${detail:+ $detail}"; fi
done < <(grep -a '^NBDVM-CHECK ' "$C")
gsha() { grep -a "^NBDVM-SHA256 $1 " "$C" | tail -1 | awk '{print $3}'; }

# ------------------------------------------------------------ host checks
if [ "$RUN_E2E" = 1 ]; then
  check "host: e2fsck -fn of the backing file disk.img is clean" \
    sh -c "e2fsck -fn '$DISK' > '$WORK/e2fsck.log' 2>&1"
  for f in f1.bin f2.txt f3.bin f4.bin; do
    want=$(gsha "$f")
    got=$(debugfs -R "cat /$f" "$DISK" 2>/dev/null | sha256sum | cut -d' ' -f1)
    check "host: /$f read from the backing file has the guest's sha256 ${want:0:16}" \
      test -n "$want" -a "$want" = "$got"
  done
  # fstrim -> TRIM -> dmnbd punches the file: every block the filesystem has
  # free must read as zeroes in disk.img (the deleted 24 MiB f0.bin was random)
  free_check=$("$PY" - "$DISK" <<'PY'
import re, subprocess, sys
out = subprocess.run(["dumpe2fs", sys.argv[1]], capture_output=True, text=True).stdout
bs = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
ranges = []
for m in re.finditer(r"^\s+Free blocks: (.*)$", out, re.M):
    for r in filter(None, (x.strip() for x in m.group(1).split(","))):
        a, _, b = r.partition("-")
        ranges.append((int(a), int(b or a)))
free = dirty = 0
with open(sys.argv[1], "rb") as f:
    for a, b in ranges:
        f.seek(a * bs)
        data = f.read((b - a + 1) * bs)
        free += len(data)
        dirty += len(data) - data.count(0)
print(f"{free >> 20} {dirty}")
PY
)
  check "host: fstrim reached the backing file (all ${free_check%% *} MiB the fs has free read as zeroes in disk.img)" \
    test -n "$free_check" -a "${free_check#* }" = 0
  check "host: the guest read the read-only export as the file is" test "$(gsha ro-device)" = "$RO_SHA"
  check "host: the guest read hello.bin from the read-only ext4" test "$(gsha ro-file)" = "$HELLO_SHA"
  check "host: ro.img unchanged" test "$(sha256sum < "$WORK/ro.img" | cut -d' ' -f1)" = "$RO_SHA"
  errmap=$(grep -a '^NBDVM-ERRMAP errdev ' "$C" | sed -n 's/.* errors=\([^ ]*\).*/\1/p')
  check "host: the guest's unreadable sectors of errdev are exactly $ERR_EXPECTED (got ${errmap:-nothing})" \
    test "$errmap" = "$ERR_EXPECTED"
  # expected copy: err.orig with the error ranges as zeroes
  cp "$WORK/err.orig" "$WORK/err.expected"
  for r in ${ERR_EXPECTED//,/ }; do
    dd if=/dev/zero of="$WORK/err.expected" bs=512 seek="${r%+*}" count="${r#*+}" conv=notrunc status=none
  done
  check "host: the guest read every other sector of errdev correctly" \
    cmp -s -n 8388608 "$WORK/err.expected" <(dd if="$WORK/out.img" bs=1M skip=$((ERR_OUT >> 20)) count=8 status=none)
  check "host: the guest's write to errdev sector 100 reached err.img" \
    test "$(dd if="$WORK/err.img" bs=512 skip=100 count=1 status=none | head -c 12)" = "blkprobe 100"
  check "host: nothing else of err.img changed" \
    bash -c "cmp -s <(head -c 51200 '$WORK/err.img') <(head -c 51200 '$WORK/err.orig') && cmp -s -i 51712 '$WORK/err.img' '$WORK/err.orig'"
fi

# tally FILE WHAT: a checker's TAP lines counted in, its last line "WHAT: ..." required.
tally() {
  local n
  cat "$1"
  PASSED=$((PASSED + $(grep -c '^ok - ' "$1")))
  n=$(grep -c '^not ok - ' "$1")
  FAILED=$((FAILED + n))
  [ "$n" -gt 0 ] && FIRST_FAIL=${FIRST_FAIL:-$(grep -m1 '^not ok - ' "$1" | sed 's/^not ok - //')}
  grep -q "^$2: " "$1" || notok "$2.py check did not finish"
}

if [ "$RUN_ORACLE" = 1 ]; then
  "$PY" "$HERE/oracle.py" check "$WORK" "$SOCK" "$C" "$WORK/out.img" > "$WORK/oracle.out" 2>&1
  tally "$WORK/oracle.out" oracle
fi

if [ "$RUN_LW" = 1 ]; then
  # the same sequence on dmnbd's log-writes; removing the device logs what no
  # flush covered and the end mark (the kernel's dtr did the same in the guest)
  timeout 120 "$PY" "$HERE/logwrites.py" "$SOCK" lwd "$DMNBD" "$CTL" lwd $LW_SEQ > "$WORK/lw-host.out" 2>&1
  rc=$?
  sed 's/^/#   host lwd| /' "$WORK/lw-host.out" >&2
  check "host: dmnbd's log-writes device lwd ran the same $(wc -w <<< "$LW_SEQ") steps through libnbd" test "$rc" = 0
  for i in $(seq 50); do
    timeout 60 "$DMNBD" --control "$CTL" remove lwd > "$WORK/lw-remove.out" 2>&1 && break
    sleep 0.2
  done
  check "host: dmnbd's log-writes device removed (logs the end mark)" test "$i" -lt 50 -a -z "$(timeout 60 "$DMNBD" --control "$CTL" ls 2>/dev/null | grep -w lwd)"
  lw_replay() { # LOG IMG [MARK]
    rm -f "$2"; truncate -s 8M "$2"
    timeout 120 "$DMNBD" replay-log --log "$1" --replay "$2" ${3:+--end-mark "$3"} >> "$WORK/lw-replay.out" 2>&1
  }
  lw_list() { timeout 120 "$DMNBD" replay-log --log "$1" --list 2>/dev/null; }
  lw_marks() { lw_list "$1" | sed -n 's/.*(MARK), mark //p' | tr '\n' ' '; }
  lw_flags() { lw_list "$1" | sed -n 's/.*, sectors \([0-9]*\), flags 0x[0-9a-f]*(\([^)]*\)).*/\2:\1/p' | tr '\n' ' '; }
  nonzero() { "$PY" -c 'import sys; d=open(sys.argv[1],"rb").read(); print(len(d)-d.count(0))' "$1"; }
  KLOG=$WORK/lw-klog.img DLOG=$WORK/lw-dlog.img
  kn=$(timeout 120 "$DMNBD" replay-log --log "$KLOG" --num-entries 2>&1) dn=$(timeout 120 "$DMNBD" replay-log --log "$DLOG" --num-entries 2>&1)
  log "log-writes entries (flags:sectors): kernel $kn: $(lw_flags "$KLOG")"
  log "log-writes entries (flags:sectors): dmnbd  $dn: $(lw_flags "$DLOG")"
  [ "$kn" = "$dn" ] && [ "$(lw_flags "$KLOG")" = "$(lw_flags "$DLOG")" ] \
    || log "note: the entry lists differ (the kernel may split or merge I/O); the images decide"
  km=$(lw_marks "$KLOG") dm=$(lw_marks "$DLOG")
  check "logwrites: both logs have the marks $LW_MARKS and the end mark, in order (kernel: ${km:-none}; dmnbd: ${dm:-none})" \
    test "$km" = "$dm" -a "$km" = "$LW_MARKS dm-log-writes-end "
  for m in $LW_MARKS ""; do
    ki=$WORK/lw-k-${m:-end}.img di=$WORK/lw-d-${m:-end}.img
    if lw_replay "$KLOG" "$ki" "$m" && lw_replay "$DLOG" "$di" "$m"; then
      check "logwrites: the kernel's and dmnbd's logs replay to the same image $(if [ -n "$m" ]; then echo "at mark $m"; else echo "at the end"; fi) ($(nonzero "$ki") non-zero bytes)" \
        cmp "$ki" "$di"
    else
      notok "logwrites: replay-log ${m:+--end-mark $m }failed: $(tail -2 "$WORK/lw-replay.out" | tr '\n' ' ')"
    fi
  done
  check "logwrites: the full replays equal the data devices (lwdata's file, lwd's data file) and are not empty" \
    sh -c "cmp '$WORK/lw-k-end.img' '$WORK/lw-kdata.img' && cmp '$WORK/lw-d-end.img' '$WORK/lw-ddata.img' && test \"\$1\" -gt 0" _ "$(nonzero "$WORK/lw-k-end.img")"
fi

if [ "$RUN_SNAP" = 1 ]; then
  ksnap() { grep -a "^NBDVM-SNAP $1 $2 " "$C" | tail -1 | cut -d' ' -f4-; }
  same() { [ -n "$1" ] && [ "$1" = "$2" ]; }
  for f in d-orig d-cow8 d-cow128; do
    check "snapshot 1: $f.img, which the kernel's read-only snapshots used, is unchanged" same "$(fsha "$SNAP/$f.img")" "${SNAP_FSHA[$f]}"
  done
  # 2. the kernel ran the same sequence as dmnbd, from the same origin
  for d in s8 s128 base; do
    v=SNAP_D_SHA_${d^^}; want=${!v}
    check "snapshot 2: the kernel's $d after the sequence reads as dmnbd's $d did (${want:0:16})" same "$(ksnap sha "k-$d")" "$want"
  done
  for c in 8 128; do
    v=SNAP_D_STATUS_S$c; want=${!v}
    check "snapshot 2: the kernel's status of s$c after the sequence [$(ksnap status "k-s$c")] is dmnbd's [$want]" \
      same "$(ksnap status "k-s$c")" "$want"
  done
  cmpcows() { # STEP DMNBD-PREFIX KERNEL-PREFIX WHAT
    local c rc
    check "snapshot $1: the kernel's origin file equals dmnbd's after $4" cmp "$SNAP/$2-orig.img" "$SNAP/$3-orig.img"
    for c in 8 128; do
      "$PY" "$HERE/snapshot.py" cmpcow "$SNAP/$2-cow$c.img" "$SNAP/$3-cow$c.img" "$c" > "$SNAP/cmp$1-$c.out" 2>&1
      rc=$?
      sed 's/^/#   '"$2-cow$c vs $3-cow$c"' (dmnbd vs kernel)| /' "$SNAP/cmp$1-$c.out" >&2
      check "snapshot $1: the COW dmnbd wrote for s$c is byte-identical to the kernel's after $4 ($(head -1 "$SNAP/cmp$1-$c.out"))" test "$rc" = 0
    done
  }
  cmpcows 2 d k "the same sequence (ops)"
  # 1b. the kernel went on from dmnbd's files with ops2, as dmnbd did
  cmpcows 1b c kc "ops2 on top of dmnbd's files"
  for f in k-orig k-cow8 k-cow128 kc-orig kc-cow8 kc-cow128; do SNAP_FSHA[$f]=$(fsha "$SNAP/$f.img"); done
  # dmnbd reads the kernel's files (k-*), its own again (d-*), and the COWs
  # the kernel merged (m8-*, m128-*: a snapshot of the merged origin is empty)
  {
    printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$SNAP/r.sock" "$SNAP/r-ctl.sock"
    snap_devices k- k-
    snap_devices kc- kc-
    snap_devices d- d-
    for c in 8 128; do
      printf '  - name: mg%s-real\n    table: "0 %s linear %s 0"\n' "$c" "$SNAP_SIZE" "$SNAP/m$c-orig.img"
      printf '  - name: mg-s%s\n    table: "0 %s snapshot mg%s-real %s P %s"\n' "$c" "$SNAP_SIZE" "$c" "$SNAP/m$c-cow.img" "$c"
    done
  } > "$SNAP/r.yaml"
  if snap_start "$SNAP/r.yaml" "$SNAP/r.sock"; then
    "$PY" "$HERE/snapshot.py" sha "$SNAP/r.sock" k-s8 k-s128 k-base kc-s8 kc-s128 kc-base d-s8 d-s128 mg-s8 mg-s128 > "$SNAP/r.sha"
    rsha() { awk -v n="$1" '$1 == n {print $2}' "$SNAP/r.sha"; }
    rstatus() { "$DMNBD" --control "$SNAP/r-ctl.sock" status "$1" 2>&1; }
    for p in k kc; do
      st=2; [ $p = kc ] && st=1b
      for d in s8 s128 base; do
        check "snapshot $st: dmnbd reads the kernel's $p-$d as the kernel did" same "$(rsha "$p-$d")" "$(ksnap sha "$p-$d")"
      done
      for c in 8 128; do
        check "snapshot $st: dmnbd's status of the kernel's $p-s$c [$(rstatus "$p-s$c")] is the kernel's [$(ksnap status "$p-s$c")]" \
          same "$(rstatus "$p-s$c")" "$(ksnap status "$p-s$c")"
      done
    done
    for c in 8 128; do
      v=SNAP_D_SHA_S$c; want=${!v}; v=SNAP_D_STATUS_S$c; wst=${!v}
      check "snapshot 1: dmnbd, restarted, reads its own s$c as before [$(rstatus "d-s$c")]" \
        sh -c 'test -n "$1" -a "$1" = "$2" -a -n "$3" -a "$3" = "$4"' _ "$(rsha "d-s$c")" "$want" "$(rstatus "d-s$c")" "$wst"
      v=SNAP_D_SHA_S$c; want=${!v}
      check "snapshot 3: dmnbd loads the COW the kernel merged for s$c: empty [$(rstatus "mg-s$c")], reads as the merged origin" \
        sh -c 'test -n "$1" -a "$1" = "$2" -a "$3" = "$4"' _ "$(rsha "mg-s$c")" "$want" "$(rstatus "mg-s$c")" \
        "0 $SNAP_SIZE snapshot $((2 * c))/$(($(stat -c %s "$SNAP/m$c-cow.img") / 512)) $((2 * c))"
    done
    if snap_stop; then ok "snapshot: dmnbd (the reader) stopped cleanly on SIGTERM"; else notok "snapshot: dmnbd (the reader) did not exit 0 on SIGTERM"; fi
  else
    notok "snapshot: dmnbd did not start over the kernel's snapshot files (see $SNAP/server.log)"
  fi
  for f in k-orig k-cow8 k-cow128 kc-orig kc-cow8 kc-cow128; do
    check "snapshot ${f%%-*}: dmnbd's reading left the kernel's $f.img unchanged" same "$(fsha "$SNAP/$f.img")" "${SNAP_FSHA[$f]}"
  done
  # 3. the merged origins are dmnbd's snapshots
  for c in 8 128; do
    v=SNAP_D_SHA_S$c; want=${!v}
    check "snapshot 3: m$c-orig.img, merged by the kernel, is dmnbd's s$c (${want:0:16})" same "$(fsha "$SNAP/m$c-orig.img")" "$want"
  done
  # 4. dmnbd merges the kernel's COWs (snapshot-merge over copies of k-*,
  # files km8-*, km128-*). Nothing but status polls touches the devices until
  # the merge is done, so the run is deterministic.
  T4=$(date +%s.%N)
  {
    printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$SNAP/km.sock" "$SNAP/km-ctl.sock"
    for c in 8 128; do
      cp "$SNAP/k-orig.img" "$SNAP/km$c-orig.img"; cp "$SNAP/k-cow$c.img" "$SNAP/km$c-cow.img"
      printf '  - name: km%s-real\n    table: "0 %s linear %s 0"\n' "$c" "$SNAP_SIZE" "$SNAP/km$c-orig.img"
      printf '  - name: km%s\n    table: "0 %s snapshot-merge km%s-real %s P %s"\n' "$c" "$SNAP_SIZE" "$c" "$SNAP/km$c-cow.img" "$c"
    done
  } > "$SNAP/km.yaml"
  if snap_start "$SNAP/km.yaml" "$SNAP/km.sock"; then
    for c in 8 128; do
      want="$((2 * c))/$(($(stat -c %s "$SNAP/km$c-cow.img") / 512)) $((2 * c))"
      first="" st="" i=0
      while [ $i -lt 600 ]; do   # 60 s
        st=$(timeout 10 "$DMNBD" --control "$SNAP/km-ctl.sock" status "km$c" 2>&1) v=$(cut -d' ' -f4- <<< "$st")
        first=${first:-$st}
        a=${v%%/*} meta=${v##* }
        [ -n "$a" ] && [ "$a" = "$meta" ] && break
        i=$((i + 1)); sleep 0.1
      done
      log "snapshot 4: dmnbd's merge of the kernel's k-cow$c: first status [$first], [$st] after $i polls"
      check "snapshot 4: dmnbd's snapshot-merge of the kernel's COW for s$c finished [$st] (want [0 $SNAP_SIZE snapshot-merge $want])" \
        same "$st" "0 $SNAP_SIZE snapshot-merge $want"
    done
    "$PY" "$HERE/snapshot.py" sha "$SNAP/km.sock" km8 km8-real km128 km128-real > "$SNAP/km.sha"
    kmsha() { awk -v n="$1" '$1 == n {print $2}' "$SNAP/km.sha"; }
    for c in 8 128; do
      want=$(ksnap sha "k-s$c")
      check "snapshot 4: the origin dmnbd merged from the kernel's s$c reads, through dmnbd (km$c and km$c-real), as the kernel's s$c did (${want:0:16})" \
        sh -c 'test -n "$1" -a "$1" = "$2" -a "$1" = "$3"' _ "$want" "$(kmsha "km$c")" "$(kmsha "km$c-real")"
    done
    if snap_stop; then ok "snapshot 4: dmnbd (the merger) stopped cleanly on SIGTERM"; else notok "snapshot 4: dmnbd (the merger) did not exit 0 on SIGTERM"; fi
    for c in 8 128; do
      want=$(ksnap sha "k-s$c")
      check "snapshot 4: km$c-orig.img, merged by dmnbd, is the kernel's s$c (${want:0:16}; the unmerged k-orig.img is not)" \
        sh -c 'test -n "$1" -a "$1" = "$2" -a "$1" != "$3"' _ "$want" "$(fsha "$SNAP/km$c-orig.img")" "$(fsha "$SNAP/k-orig.img")"
      # the kernel merged the same input in step 3 when k-cow$c = d-cow$c (step 2)
      if cmp -s "$SNAP/k-cow$c.img" "$SNAP/d-cow$c.img"; then
        "$PY" "$HERE/snapshot.py" cmpcow "$SNAP/km$c-cow.img" "$SNAP/m$c-cow.img" "$c" > "$SNAP/cmp4-$c.out" 2>&1
        rc=$?
        sed 's/^/#   '"km$c-cow vs m$c-cow"' (dmnbd vs kernel)| /' "$SNAP/cmp4-$c.out" >&2
        check "snapshot 4: the COW dmnbd merged for s$c is byte-identical to the one the kernel merged from the same bytes in step 3 ($(head -1 "$SNAP/cmp4-$c.out"))" test "$rc" = 0
      fi
    done
    # dmnbd restarted on the merged COWs with plain snapshot tables: empty
    {
      printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$SNAP/ke.sock" "$SNAP/ke-ctl.sock"
      for c in 8 128; do
        printf '  - name: ke%s-real\n    table: "0 %s linear %s 0"\n' "$c" "$SNAP_SIZE" "$SNAP/km$c-orig.img"
        printf '  - name: ke-s%s\n    table: "0 %s snapshot ke%s-real %s P %s"\n' "$c" "$SNAP_SIZE" "$c" "$SNAP/km$c-cow.img" "$c"
      done
    } > "$SNAP/ke.yaml"
    if snap_start "$SNAP/ke.yaml" "$SNAP/ke.sock"; then
      "$PY" "$HERE/snapshot.py" sha "$SNAP/ke.sock" ke-s8 ke-s128 > "$SNAP/ke.sha"
      for c in 8 128; do
        want=$(ksnap sha "k-s$c")
        st=$("$DMNBD" --control "$SNAP/ke-ctl.sock" status "ke-s$c" 2>&1)
        check "snapshot 4: dmnbd loads the COW it merged for s$c as an empty snapshot [$st], which reads as the merged origin" \
          sh -c 'test -n "$1" -a "$1" = "$2" -a "$3" = "$4"' _ "$(awk -v n="ke-s$c" '$1 == n {print $2}' "$SNAP/ke.sha")" "$want" "$st" \
          "0 $SNAP_SIZE snapshot $((2 * c))/$(($(stat -c %s "$SNAP/km$c-cow.img") / 512)) $((2 * c))"
      done
      if snap_stop; then ok "snapshot 4: dmnbd (over the merged COWs) stopped cleanly on SIGTERM"; else notok "snapshot 4: dmnbd (over the merged COWs) did not exit 0 on SIGTERM"; fi
    else
      notok "snapshot 4: dmnbd did not start over the COWs it merged (see $SNAP/server.log)"
    fi
  else
    notok "snapshot 4: dmnbd did not start snapshot-merge over the kernel's COWs (see $SNAP/server.log)"
  fi
  log "snapshot 4 (dmnbd merges the kernel's COWs) took $(awk -v a="$T4" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
fi

if [ "$RUN_MIRROR" = 1 ]; then
  TM=$(date +%s.%N)
  if [ ! -e "$MIR/dmnbd.skip" ]; then
    # D2: dmnbd loads copies of the kernel's files (leg 1 the plain file now)
    # and resyncs the regions the kernel's log marks dirty; D3: step 3's
    # tables, one "dmnbd create" at a time, over dt-*
    for f in leg0 leg1 log; do cp "$MIR/k-$f.img" "$MIR/kr-$f.img"; done
    {
      printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$MIR/r.sock" "$MIR/r-ctl.sock"
      printf '  - name: kr-mi\n    table: "0 %s mirror disk 2 %s %s 2 %s 0 %s 0 1 handle_errors"\n' \
        "$MIR_L" "$MIR/kr-log.img" "$MIR_REGION" "$MIR/kr-leg0.img" "$MIR/kr-leg1.img"
    } > "$MIR/r.yaml"
    printf 'dev D2 %s %s\n' LEG0 "$MIR/kr-leg0.img" LEG1 "$MIR/kr-leg1.img" LOG "$MIR/kr-log.img" >> "$MIR/dmnbd.out"
    printf 'dev D3 %s %s\n' LEG0 "$MIR/dt-leg0.img" LEG1 "$MIR/dt-leg1.img" LEG2 "$MIR/dt-leg2.img" LOG "$MIR/dt-log.img" >> "$MIR/dmnbd.out"
    if mir_start "$MIR/r.yaml" "$MIR/r.sock"; then
      mir_wait "$MIR/r-ctl.sock" kr-mi D2; rc=$?
      check "mirror 2: dmnbd's resync of the kernel's files finished ($(sed -n 's/^status D2 sync //p' "$MIR/dmnbd.out"))" test $rc = 0
      log "mirror 2: dmnbd's status before the resync finished: $(sed -n 's/^status D2 first //p' "$MIR/dmnbd.out"), $(sed -n 's/^polls D2 //p' "$MIR/dmnbd.out") polls"
      mir_table "$MIR/r-ctl.sock" kr-mi D2
      i=0
      while read -r tbl; do
        i=$((i + 1))
        tbl=${tbl//\$LEG0/$MIR/dt-leg0.img} tbl=${tbl//\$LEG1/$MIR/dt-leg1.img}
        tbl=${tbl//\$LEG2/$MIR/dt-leg2.img} tbl=${tbl//\$LOG/$MIR/dt-log.img}
        if ! timeout 30 "$DMNBD" --control "$MIR/r-ctl.sock" create mt --table "$tbl" > "$MIR/create.out" 2>&1 < /dev/null; then
          notok "mirror 3.$i: dmnbd create refused [$tbl]: $(tr '\n' ' ' < "$MIR/create.out")"
          continue
        fi
        mir_wait "$MIR/r-ctl.sock" mt "D3.$i" < /dev/null || notok "mirror 3.$i: dmnbd's mirror did not get in sync within 60 s"
        mir_table "$MIR/r-ctl.sock" mt "D3.$i" < /dev/null
        timeout 30 "$DMNBD" --control "$MIR/r-ctl.sock" remove mt > "$MIR/remove.out" 2>&1 < /dev/null \
          || notok "mirror 3.$i: dmnbd remove mt failed: $(tr '\n' ' ' < "$MIR/remove.out")"
      done < "$WORK/guest/etc/mirror/tables"
      if mir_stop; then ok "mirror 2: dmnbd (the resyncer) stopped cleanly on SIGTERM"; else notok "mirror 2: dmnbd (the resyncer) did not exit 0 on SIGTERM"; fi
    else
      notok "mirror 2: dmnbd did not start over the kernel's mirror files (see $MIR/server.log)"
    fi
  fi
  sed 's/^/#   dmnbd mirror| /' "$MIR/dmnbd.out" >&2
  "$PY" "$HERE/mirror.py" check "$WORK" "$C" > "$WORK/mirror.out" 2>&1
  tally "$WORK/mirror.out" mirror
  log "mirror: the host's part after the boot took $(awk -v a="$TM" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
fi

if [ "$RUN_CRYPT" = 1 ]; then
  # dmnbd reads the kernel's kvol through its crypt table, and the verity
  # trees through its verity tables (read-only devices).
  {
    printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$CRYPT/r.sock" "$CRYPT/r-ctl.sock"
    printf '  - name: c-kvol-plain\n    luks: { file: %s, key_file: %s }\n' "$CRYPT/kvol.img" "$CRYPT/pw"
    while read -r name table; do
      case $name in good) d=vdata h=vhash;; *) d=vbad h=vbadhash;; esac
      printf '  - name: cv-%s\n    read_only: true\n    table: "%s"\n' "$name" \
        "$(echo "$table" | sed "s#@DATA@#$CRYPT/$d.img#; s#@HASH@#$CRYPT/$h.img#")"
    done < "$CRYPT/verity"
  } > "$CRYPT/r.yaml"
  chmod 600 "$CRYPT/r.yaml"
  if stage_serve "$CRYPT/r.yaml" "$CRYPT/r.sock" "$CRYPT/server.log" crypt; then
    "$PY" "$HERE/cryptvols.py" check "$WORK" "$CRYPT/r.sock" "$C" > "$WORK/crypt.out" 2>&1
    tally "$WORK/crypt.out" crypt
    if stop_pid "$SERVED_PID"; then ok "crypt: dmnbd (the reader) stopped cleanly"; else notok "crypt: dmnbd (the reader) did not exit 0"; fi
  else
    notok "crypt: dmnbd did not start over the kernel's files (see $CRYPT/server.log)"
  fi
fi

if [ "$RUN_THIN" = 1 ]; then
  TT=$(date +%s.%N)
  # K2: the kernel's metadata as it left it; D2, D3: dmnbd opens copies of
  # the kernel's files, reads them, writes OPS2; Dr: dmnbd reopens copies of
  # its own (what K1 read)
  thin_check_ok "thin K2: the kernel's metadata after the sequence" "$THIN/k-meta.img"
  thin_dump "$THIN/k-meta.img" > "$THIN/k.xml" 2>&1
  if cmp -s "$THIN/dc-meta.img" "$THIN/dr-meta.img"; then log "thin K1: the kernel left dmnbd's metadata (dc-meta.img) unchanged"
  else log "thin K1: the kernel changed dmnbd's metadata (dc-meta.img) when it opened it: $(cmp "$THIN/dc-meta.img" "$THIN/dr-meta.img" | head -1)"; fi
  for f in meta data; do cp --sparse=always "$THIN/k-$f.img" "$THIN/kr-$f.img"; done
  cp "$THIN/dr-meta.img" "$THIN/dr-meta.before"
  thin_yaml r dr-:thins kr-:thins
  if stage_serve "$THIN/r.yaml" "$THIN/r.sock" "$THIN/server.log" thin; then
    THIN_PID=$SERVED_PID
    timeout 60 "$PY" "$HERE/thin.py" read "$THIN/r.sock" "$THIN/r-ctl.sock" "$DMNBD" dr- Dr >> "$THIN/dmnbd.out" 2> "$THIN/run.err" \
      || notok "thin Dr: thin.py read failed: $(tail -1 "$THIN/run.err")"
    timeout 60 "$PY" "$HERE/thin.py" read "$THIN/r.sock" "$THIN/r-ctl.sock" "$DMNBD" kr- D2 >> "$THIN/dmnbd.out" 2> "$THIN/run.err" \
      || notok "thin D2: thin.py read failed: $(tail -1 "$THIN/run.err")"
    timeout 120 "$PY" "$HERE/thin.py" run "$THIN/r.sock" "$THIN/r-ctl.sock" "$DMNBD" "$WORK" ops2 kr- D3 >> "$THIN/dmnbd.out" 2> "$THIN/run.err"
    rc=$?
    check "thin D3: dmnbd wrote to the kernel's pool (a new block for thin1, a copy on write for thin2)$(
      [ $rc != 0 ] && echo "; $(tail -1 "$THIN/dmnbd.out") $(tail -1 "$THIN/run.err")")" test $rc = 0
    thin_stop "thin D2: dmnbd (over the kernel's pool and its own)"
  else
    notok "thin D2: dmnbd did not start over the kernel's pool (see $THIN/server.log)"
  fi
  thin_check_ok "thin D3: the kernel's metadata after dmnbd's writes" "$THIN/kr-meta.img"
  thin_dump "$THIN/kr-meta.img" > "$THIN/kr.xml" 2>&1
  thin_check_ok "thin Dr: dmnbd's metadata after it reopened it" "$THIN/dr-meta.img"
  cmp -s "$THIN/dr-meta.img" "$THIN/dr-meta.before" || log "thin Dr: dmnbd rewrote its metadata when it only read it: $(cmp "$THIN/dr-meta.img" "$THIN/dr-meta.before" | head -1)"
  sed 's/^/#   dmnbd thin| /' "$THIN/dmnbd.out" >&2
  "$PY" "$HERE/thin.py" check "$WORK" "$C" > "$WORK/thin.out" 2>&1
  tally "$WORK/thin.out" thin
  log "thin: the host's part after the boot took $(awk -v a="$TT" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
fi

if [ "$RUN_RAID" = 1 ]; then
  TR=$(date +%s.%N)
  # D2: dmnbd assembles copies of the kernel's files (kr-*) with the same
  # tables; Ddeg: the degraded tables over copies of its own files (dg-*).
  # The first status is read as soon as the socket is up: a resync would
  # show there or in the polls after it.
  for f in "$RAID"/k-*.img; do b=${f##*/}; cp "$f" "$RAID/kr-${b#k-}"; done
  # DR: dmnbd rebuilds legs of copies of the kernel's files (kb-); DX: check
  # and repair of copies of its own files with flipped bytes (md-)
  "$PY" "$HERE/raid.py" derive "$WORK" post || notok "raid: raid.py derive post failed"
  RSETS=$(cat "$WORK/guest/etc/raid/rsets") XSETS=$(cat "$WORK/guest/etc/raid/xsets")
  KSETS=$(cat "$WORK/guest/etc/raid/ksets") DSETS=$(cd "$RAID/tab" && ls dg-*.degraded | sed 's/^dg-//; s/\.degraded$//')
  {
    printf 'listen: [ "unix://%s" ]\ncontrol: %s\ndevices:\n' "$RAID/r.sock" "$RAID/r-ctl.sock"
    for s in $KSETS; do printf '  - name: kr-%s\n    table: "%s"\n' "$s" "$(cat "$RAID/tab/kr-$s.table")"; done
    for s in $DSETS; do printf '  - name: dg-%s\n    table: "%s"\n' "$s" "$(cat "$RAID/tab/dg-$s.degraded")"; done
    for s in $(raid_wsets); do printf '  - name: kw-%s\n    table: "%s"\n' "$s" "$(cat "$RAID/tab/kw-$s.degraded")"; done
    for s in $RSETS; do printf '  - name: xb-%s\n    table: "%s"\n' "$s" "$(cat "$RAID/tab/kb-$s.rebuild")"; done
    for s in $XSETS; do printf '  - name: xm-%s\n    table: "%s"\n' "$s" "$(cat "$RAID/tab/md-$s.table")"; done
  } > "$RAID/r.yaml"
  if raid_start "$RAID/r.yaml" "$RAID/r.sock"; then
    for s in $KSETS; do raid_out "status D2 $s first [$(raid_st "$RAID/r-ctl.sock" "kr-$s")]"; done
    for s in $DSETS; do raid_out "status Ddeg $s first [$(raid_st "$RAID/r-ctl.sock" "dg-$s")]"; done
    for i in 01 02 03 04 05 06 07 08 09 10; do
      sleep 0.2
      for s in $KSETS; do raid_out "status D2 $s poll$i [$(raid_st "$RAID/r-ctl.sock" "kr-$s")]"; done
    done
    for s in $KSETS; do
      raid_devs D2 "$s" "kr-$s-" $(raid_roles "$s")
      raid_out "table D2 $s [$(timeout 10 "$DMNBD" --control "$RAID/r-ctl.sock" table "kr-$s" 2>&1)]"
    done
    "$PY" "$HERE/raid.py" sha "$RAID/r.sock" $(for s in $KSETS; do echo "kr-$s"; done) | sed 's/^kr-\([^ ]*\) /sha D2 \1 /' >> "$RAID/dmnbd.out"
    "$PY" "$HERE/raid.py" sha "$RAID/r.sock" $(for s in $DSETS; do echo "dg-$s"; done) | sed 's/^dg-\([^ ]*\) /sha Ddeg \1 /' >> "$RAID/dmnbd.out"
    # DKW: the kernel's degraded writes, through the same degraded tables
    for s in $(raid_wsets); do
      raid_devs DKW "$s" "kw-$s-" $(raid_wroles "$s")
      raid_out "status DKW $s first [$(raid_st "$RAID/r-ctl.sock" "kw-$s")]"
      raid_out "table DKW $s [$(timeout 10 "$DMNBD" --control "$RAID/r-ctl.sock" table "kw-$s" 2>&1)]"
    done
    "$PY" "$HERE/raid.py" sha "$RAID/r.sock" $(raid_wsets | sed 's/^/kw-/') | sed 's/^kw-\([^ ]*\) /sha DKW \1 /' >> "$RAID/dmnbd.out"
    # dmnbd's own check of the kernel's raid4/5/6 parity (kr-)
    for s in $KSETS; do
      grep -qw "$s" "$WORK/guest/etc/raid/parity" || continue
      timeout 10 "$DMNBD" --control "$RAID/r-ctl.sock" message "kr-$s" 0 check > /dev/null 2>&1 < /dev/null \
        || raid_out "refused D2c $s message check failed"
      raid_wait "$RAID/r-ctl.sock" "kr-$s"
      raid_out "status D2 $s checked [$(raid_st "$RAID/r-ctl.sock" "kr-$s")]"
    done
    # DR: the rebuilds (started with the server)
    for s in $RSETS; do
      raid_devs DR "$s" "kb-$s-" $(raid_roles "$s")
      raid_out "status DR $s first [$(raid_st "$RAID/r-ctl.sock" "xb-$s")]"
    done
    for s in $RSETS; do
      raid_wait "$RAID/r-ctl.sock" "xb-$s"
      raid_out "status DR $s rebuilt [$(raid_st "$RAID/r-ctl.sock" "xb-$s")]"
    done
    "$PY" "$HERE/raid.py" sha "$RAID/r.sock" $(for s in $RSETS; do echo "xb-$s"; done) | sed 's/^xb-\([^ ]*\) /sha DR \1 /' >> "$RAID/dmnbd.out"
    # DX: check, then repair
    for s in $XSETS; do
      raid_devs DX "$s" "md-$s-" $(raid_roles "$s")
      for a in check:checked repair:repaired; do
        timeout 10 "$DMNBD" --control "$RAID/r-ctl.sock" message "xm-$s" 0 "${a%:*}" > /dev/null 2>&1 < /dev/null \
          || raid_out "refused DX $s message ${a%:*} failed"
        raid_wait "$RAID/r-ctl.sock" "xm-$s"
        raid_out "status DX $s ${a#*:} [$(raid_st "$RAID/r-ctl.sock" "xm-$s")]"
      done
    done
    raid_stop "raid 2: dmnbd (over the kernel's files)"
  else
    notok "raid 2: dmnbd did not start over the kernel's raid files (see $RAID/server.log)"
  fi
  sed 's/^/#   dmnbd raid| /' "$RAID/dmnbd.out" >&2
  "$PY" "$HERE/raid.py" check "$WORK" "$C" > "$WORK/raid.out" 2>&1
  tally "$WORK/raid.out" raid
  log "raid: the host's part after the boot took $(awk -v a="$TR" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
fi

if stop_server; then ok "dmnbd stopped cleanly on SIGTERM"; else notok "dmnbd did not exit 0 on SIGTERM"; fi
FINISHED=1
summary="$TEST_NAME: $PASSED passed, $FAILED failed ($(grep -a -c '^NBDVM-CHECK ' "$C") guest checks$(
  [ "$RUN_ORACLE" = 1 ] && echo ", $(grep '^oracle: ' "$WORK/oracle.out" | sed 's/^oracle: //')"); accel $VM_ACCEL, $(elapsed) s)"
if [ "$FAILED" = 0 ]; then
  [ "$KEEP" = 1 ] && echo "# work dir kept: $WORK" >&2 || rm -rf "$WORK"
  echo "$summary"
  echo "PASS $TEST_NAME"
  exit 0
fi
echo "# work dir kept: $WORK (console.txt, server.log, cfg.yaml, out.img)" >&2
echo "$summary"
echo "FAIL $TEST_NAME: $FIRST_FAIL"
exit 1
