#!/bin/sh
# guest.sh - runs as /guest-test.sh inside the QEMU guest (busybox sh, Debian's
# nbd-client / dmsetup / e2fsprogs, the host-built static /sbin/blkprobe).
# Parameters come from /etc/nbdvm.env (written by run.sh):
#   NBD_HOST NBD_PORT   where dmnbd answers (QEMU forwards it to the host's socket)
#   RUN_E2E RUN_ORACLE RUN_LW RUN_SNAP RUN_MIRROR RUN_CRYPT RUN_THIN RUN_RAID  1 or 0
#   LW_SEQ              the log-writes sequence (run.sh's LW_SEQ; the host runs
#                       the same one against dmnbd's log-writes)
#   ERR_OUT             byte offset in /dev/vda for the copy of the error device
#   SNAP_SIZE SNAP_{D,C}_SHA_{S8,S128,BASE} SNAP_{D,C}_STATUS_{S8,S128}
#                       the snapshot check: origin sectors; what dmnbd served
#                       (sha256, "dmnbd status" line) after ops (D) and after
#                       ops2 on top of that (C)
#   MIR_L MIR_REGION    the mirror check: mirror sectors, region size (sectors);
#   MIR_D               1 when dmnbd wrote its mirror files (exports md-*)
#   MIR_M               1 to resync the model's files too (exports mm-*; run.sh
#                       sets 0 when dmnbd's files are byte-identical to them)
#   THIN_POOL THIN_SECTORS  the thin check: pool and thin device sectors
# Snapshot sequences: /etc/snap/ops, ops2, data.bin (snapshot.py prepare).
# Mirror: /etc/mirror/a.bin (pattern A), leg1s.table, tables (mirror.py prepare).
# Raid: /etc/raid/ (raid.py prepare; see raid() below).
# Crypt: /etc/crypt/ (cryptvols.py prepare; see crypt() below).
# Thin: /etc/thin/ops, data.bin (thin.py prepare; see thin() below).
# Oracle plan: /etc/oracle/backing ("LETTER /dev/nbdN EXPORT" per line),
# /etc/oracle/plan ("NAME OUT_OFFSET" per line), /etc/oracle/NAME.table.
# Output protocol (serial console, parsed by run.sh / oracle.py):
#   NBDVM-CHECK <name> PASS|FAIL [detail]    a check decided in the guest
#   NBDVM-SHA256 <label> <hex>               a checksum the host verifies
#   NBDVM-ERRMAP <label> sectors=N errors=…  unreadable sectors of a device
#   ORACLE-RESULT <name> sectors=N errors=…  the dm device was copied to /dev/vda
#   ORACLE-REFUSED <name> <reason>           dmsetup create failed
#   NBDVM-LW <op> <result>                   one step of the log-writes sequence
#   NBDVM-SNAP sha|status|merge <dev> …      the kernel's snapshot after a sequence
#   NBDVM-MIRROR dev|status|table|polls …    the kernel's mirror (mirror.py check)
#   NBDVM-RAID dev|status|table|sha|…        the kernel's raid (raid.py check)
#   NBDVM-CRYPT sha|wrote|verity|vstatus …   LUKS and verity (cryptvols.py check)
#   NBDVM-THIN status|table|sha …            the kernel's thin-pool (thin.py check)
#   NBDVM-RESULT: PASS|FAIL
export DM_DISABLE_UDEV=1
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
FAIL=0
up() { cut -d' ' -f1 /proc/uptime; }
res() { echo "NBDVM-CHECK $1 $2${3:+ $3}"; [ "$2" = PASS ] || FAIL=1; }
# chk NAME CMD...: run CMD (output shown only on failure), PASS/FAIL line.
chk() {
  n=$1; shift
  if "$@" > /tmp/chk.out 2>&1; then res "$n" PASS; return 0; fi
  sed 's/^/    | /' /tmp/chk.out; res "$n" FAIL "($*)"; return 1
}
# chk_fails NAME CMD...: CMD must fail.
chk_fails() {
  n=$1; shift
  if "$@" > /tmp/chk.out 2>&1; then res "$n" FAIL "(succeeded: $*)"; return 1; fi
  res "$n" PASS "($(head -c 100 /tmp/chk.out | tr '\n' ' '))"; return 0
}
attach() { # DEV EXPORT [nbd-client options...]
  d=$1 e=$2; shift 2
  nbd-client "$NBD_HOST" "$NBD_PORT" "$d" -N "$e" "$@" > /tmp/attach.out 2>&1 && return 0
  cat /tmp/attach.out; return 1
}
detach() {
  nbd-client -d "$1" > /dev/null 2>&1
  # wait until the kernel has really let go (size back to 0)
  for i in 1 2 3 4 5 6 7 8 9 10; do
    [ "$(cat /sys/block/${1#/dev/}/size 2>/dev/null)" = 0 ] && return 0; sleep 0.2
  done
  return 0
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
hwqueues() { ls /sys/block/${1#/dev/}/mq 2>/dev/null | wc -l; }
# how often the block layer ran hardware queue N of DEV (blk-mq debugfs); with
# -C N the nbd driver has one hardware queue per connection (capped by the CPU
# count) and sends what queue i dispatches over connection i
hwq_runs() { cat /sys/kernel/debug/block/${1#/dev/}/hctx$2/run 2>/dev/null || echo 0; }

# (nbds_max=64: the raid stage keeps 30 exports attached, from nbd16 up)
for m in virtio_pci virtio_net virtio_blk "nbd nbds_max=64" dm-mod; do
  modprobe $m || res "modprobe-${m%% *}" FAIL
done
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up; ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0
[ -b /dev/vda ] || res out-disk FAIL "(no /dev/vda)"
echo "NBDVM-KERNEL $(uname -r) $(dmsetup version | tr '\n' ' ')"

# ------------------------------------------------------------------ e2e
e2e_ext4() {
  D=/dev/nbd10 M=/mnt
  t=$(up)
  # round 1: one connection; mkfs, write, delete, fstrim
  chk ext4-attach-C1 attach $D disk || return
  echo "NBDVM-INFO disk: $(cat /sys/block/nbd10/size) sectors, $(hwqueues $D) hw queue(s), $(nproc) cpu(s), lbs $(cat /sys/block/nbd10/queue/logical_block_size), discard_max $(cat /sys/block/nbd10/queue/discard_max_bytes)"
  chk ext4-mkfs mkfs.ext4 -q -F $D || { detach $D; return; }
  chk ext4-mount mount -t ext4 $D $M || { detach $D; return; }
  head -c 25165824 /dev/urandom > $M/f0.bin
  sync
  head -c 4194304 /dev/urandom > $M/f1.bin
  seq 1 150000 > $M/f2.txt
  mkdir $M/dir; for i in $(seq 1 40); do echo "small file $i" > $M/dir/s$i; done
  S1=$(sha $M/f1.bin) S2=$(sha $M/f2.txt)
  rm $M/f0.bin
  sync    # commit the deletion first: ext4 only trims blocks whose freeing is committed
  chk ext4-fstrim-1 sh -c "fstrim -v $M | tee /dev/stderr | grep -q ' [1-9][0-9]* bytes trimmed'"
  chk ext4-sync-umount-1 sh -c "sync && umount $M"
  detach $D
  # round 2: two connections; fsck, verify, write more, fstrim
  chk ext4-attach-C2 attach $D disk -C 2 || return
  NQ=2; [ "$(nproc)" -lt 2 ] && NQ=1    # the driver caps its queues at the CPU count
  chk ext4-C2-hw-queues-$NQ test "$(hwqueues $D)" = $NQ
  chk ext4-fsck-1 e2fsck -fn $D
  chk ext4-mount-C2 mount -t ext4 $D $M || { detach $D; return; }
  chk ext4-f1-after-reconnect test "$(sha $M/f1.bin)" = "$S1"
  chk ext4-f2-after-reconnect test "$(sha $M/f2.txt)" = "$S2"
  # one writer pinned to each CPU, so both queues (= both connections) carry writes
  q0=$(hwq_runs $D 0) q1=$(hwq_runs $D 1)
  head -c 6291456 /dev/urandom > /tmp/f3.bin; head -c 6291456 /dev/urandom > /tmp/f4.bin
  taskset 1 dd if=/tmp/f3.bin of=$M/f3.bin bs=64k oflag=direct conv=fsync 2>/dev/null &
  taskset 2 dd if=/tmp/f4.bin of=$M/f4.bin bs=64k oflag=direct conv=fsync 2>/dev/null &
  wait
  S3=$(sha /tmp/f3.bin) S4=$(sha /tmp/f4.bin)
  rm /tmp/f3.bin /tmp/f4.bin
  chk ext4-C2-f3-written test "$(sha $M/f3.bin)" = "$S3"
  chk ext4-C2-f4-written test "$(sha $M/f4.bin)" = "$S4"
  echo "NBDVM-INFO C2 hardware queue runs per connection: $(( $(hwq_runs $D 0) - q0 )) $(( $(hwq_runs $D 1) - q1 ))"
  [ $NQ = 2 ] && chk ext4-C2-both-connections-used test $(( $(hwq_runs $D 0) - q0 )) -gt 0 -a $(( $(hwq_runs $D 1) - q1 )) -gt 0
  rm -r $M/dir
  sync
  chk ext4-fstrim-C2 sh -c "fstrim -v $M | tee /dev/stderr | grep -q ' [1-9][0-9]* bytes trimmed'"
  chk ext4-sync-umount-2 sh -c "sync && umount $M"
  detach $D
  # round 3: reconnect once more (one connection), fsck, read-only verify
  chk ext4-reattach attach $D disk || return
  chk ext4-fsck-2 e2fsck -fn $D
  chk ext4-mount-ro mount -t ext4 -o ro $D $M || { detach $D; return; }
  chk ext4-f1-final test "$(sha $M/f1.bin)" = "$S1"
  chk ext4-f2-final test "$(sha $M/f2.txt)" = "$S2"
  chk ext4-f3-final test "$(sha $M/f3.bin)" = "$S3"
  chk ext4-f4-final test "$(sha $M/f4.bin)" = "$S4"
  chk ext4-dir-gone test ! -e $M/dir
  echo "NBDVM-SHA256 f1.bin $S1"
  echo "NBDVM-SHA256 f2.txt $S2"
  echo "NBDVM-SHA256 f3.bin $S3"
  echo "NBDVM-SHA256 f4.bin $S4"
  echo "NBDVM-INFO df $(df -k $M | tail -1)"
  umount $M
  detach $D
  echo "NBDVM-TIME e2e-ext4 $t -> $(up)"
}

e2e_readonly() {
  D=/dev/nbd11 M=/mnt
  chk ro-attach attach $D ro || return
  chk ro-kernel-sees-ro test "$(cat /sys/block/nbd11/ro)" = 1
  echo "NBDVM-SHA256 ro-device $(sha $D)"
  chk_fails ro-write-refused blkprobe write $D 0 8
  chk_fails ro-dd-refused dd if=/dev/zero of=$D bs=4096 count=1 conv=fsync
  # busybox mount falls back to read-only by itself: what counts is that no
  # read-write mount comes out of it
  mount -t ext4 -o rw $D $M > /tmp/chk.out 2>&1
  if grep -q " $M ext4 rw" /proc/mounts; then res ro-mount-rw-refused FAIL; else res ro-mount-rw-refused PASS; fi
  umount $M 2>/dev/null
  if chk ro-mount-ro mount -t ext4 -o ro,noload $D $M; then
    echo "NBDVM-SHA256 ro-file $(sha $M/hello.bin)"
    chk_fails ro-file-write-refused sh -c "echo x > $M/new.txt"
    umount $M
  fi
  detach $D
}

e2e_error() {
  D=/dev/nbd12
  chk err-attach attach $D errdev -b 512 || return
  # copy first (before the write probe below changes a sector)
  if r=$(blkprobe copy $D /dev/vda "$ERR_OUT"); then
    echo "NBDVM-ERRMAP errdev $r"
  else
    res err-copy FAIL "$r"
  fi
  chk err-read-before-region blkprobe read $D 2047 1
  chk_fails err-read-region-start blkprobe read $D 2048 1
  chk_fails err-read-region-end blkprobe read $D 2055 1
  chk err-read-after-region blkprobe read $D 2056 1
  chk_fails err-read-straddling blkprobe read $D 4095 2
  chk_fails err-write-region blkprobe write $D 2050 1
  chk err-write-elsewhere blkprobe write $D 100 1
  chk err-readback-elsewhere sh -c "dd if=$D bs=512 skip=100 count=1 iflag=direct 2>/dev/null | head -c 12 | grep -q 'blkprobe 100'"
  detach $D
}

# ------------------------------------------------------------------ oracle
oracle() {
  t=$(up)
  while read -r letter dev export; do
    if attach "$dev" "$export" -b 512 < /dev/null; then
      echo "NBDVM-SHA256 backing-$letter $(sha "$dev")"
    else
      res "oracle-attach-$letter" FAIL
    fi
  done < /etc/oracle/backing
  created=""
  while read -r name off; do
    n0=$(dmesg | wc -l)
    if dmsetup create "o-$name" "/etc/oracle/$name.table" < /dev/null > /tmp/dm.out 2>&1; then
      created="o-$name $created"
      if r=$(blkprobe copy "/dev/mapper/o-$name" /dev/vda "$off" < /dev/null); then
        echo "ORACLE-RESULT $name $r"
      else
        echo "ORACLE-COPYFAILED $name $r"
      fi
      echo "ORACLE-TABLE $name $(dmsetup table "o-$name" | tr '\n' ';')"
    else
      why=$(dmesg | tail -n +$((n0 + 1)) | grep -i 'device-mapper' | tail -2 | sed 's/^\[[ 0-9.]*\] //' | tr '\n' ' ')
      echo "ORACLE-REFUSED $name ${why:-$(tr '\n' ' ' < /tmp/dm.out)}"
    fi
  done < /etc/oracle/plan
  for d in $created; do dmsetup remove "$d" || res "oracle-remove-$d" FAIL; done
  while read -r letter dev export; do detach "$dev"; done < /etc/oracle/backing
  echo "NBDVM-TIME oracle $t -> $(up)"
}

# ------------------------------------------------------------------ log-writes
# The kernel's dm-log-writes over two scratch exports (lwdata, lwlog: zeroed
# files on the host). LW_SEQ is run on it; "dmsetup remove" logs what no flush
# covered and the end mark; the host replays the log (lwlog's file) and
# compares with dmnbd's log for the same sequence.
#   w:OFF:LEN:BYTE    O_DIRECT write          fua:OFF:LEN:BYTE  the same, REQ_FUA
#   flush             fsync = empty flush     discard:OFF:LEN   BLKDISCARD
#   mark:NAME         dmsetup message lw 0 mark NAME
logwrites() {
  t=$(up)
  chk lw-attach-data attach /dev/nbd13 lwdata -b 512 || return
  chk lw-attach-log attach /dev/nbd14 lwlog -b 512 || { detach /dev/nbd13; return; }
  if chk lw-create dmsetup create lw --table "0 $(blockdev --getsz /dev/nbd13) log-writes /dev/nbd13 /dev/nbd14"; then
    D=/dev/mapper/lw bad=""
    echo "NBDVM-INFO lw: write cache $(cat /sys/block/nbd13/queue/write_cache), fua $(cat /sys/block/nbd13/queue/fua 2>/dev/null), discard_max $(cat /sys/block/nbd13/queue/discard_max_bytes)"
    for op in $LW_SEQ; do
      oifs=$IFS; IFS=:; set -f; set -- $op; set +f; IFS=$oifs
      k=$1 a=${2:-} b=${3:-} c=${4:-}
      case $k in
        w) r=$(blkprobe pwrite $D "$a" "$b" "$c" 2>&1);;
        fua) r=$(blkprobe pwrite $D "$a" "$b" "$c" fua 2>&1);;
        flush) r=$(blkprobe flush $D 2>&1);;
        discard) r=$(blkdiscard -o "$a" -l "$b" $D 2>&1 && echo ok);;
        mark) r=$(dmsetup message lw 0 mark "$a" 2>&1 && echo ok);;
        *) r="unknown op";;
      esac
      r=$(echo $r)
      echo "NBDVM-LW $op $r"
      [ "$r" = ok ] || bad="$bad $op"
    done
    echo "NBDVM-INFO lw status: $(dmsetup status lw)"
    if [ -z "$bad" ]; then res lw-sequence PASS "($(echo $LW_SEQ | wc -w) steps)"; else res lw-sequence FAIL "(failed:$bad)"; fi
    chk lw-remove dmsetup remove lw
  fi
  detach /dev/nbd13; detach /dev/nbd14
  echo "NBDVM-TIME logwrites $t -> $(up)"
}

# ------------------------------------------------------------------ snapshot
# The kernel's dm-snapshot against dmnbd's persistent COW format (run.sh,
# snapshot.py). One origin (SNAP_SIZE sectors) with two snapshots, chunk 8
# (s8) and chunk 128 (s128). /etc/snap/ops and /etc/snap/ops2: "DEV SECTOR
# COUNT DATA_OFFSET" lines, DEV base (the snapshot-origin) | s8 | s128, the
# payload at byte DATA_OFFSET of /etc/snap/data.bin; one dd oflag=direct each.
#  1. dmnbd ran ops on the host (SNAP_D_*: its sha256 and status lines); its
#     origin and COW files are sr-orig, sr-cow8, sr-cow128: the kernel's
#     read-only snapshots over them must read the same bytes and show the
#     same status.
#  1b. the kernel goes on from dmnbd's files (copies: sc-*) with ops2, as
#     dmnbd did on its own copies after a restart (SNAP_C_*).
#  2. the kernel runs ops on a fresh origin copy (sk-orig) and two zeroed
#     COWs (sk-cow8, sk-cow128); the host then compares with dmnbd
#     (NBDVM-SNAP sha/status lines).
#  3. the kernel's snapshot-merge over copies of dmnbd's files (sm8-orig +
#     sm8-cow, sm128-orig + sm128-cow): once merged, the origin must read as
#     dmnbd's snapshot did.
snap_same() { # NAME GOT WANT: PASS when equal
  if [ -n "$3" ] && [ "$2" = "$3" ]; then res "$1" PASS "($2)"; else res "$1" FAIL "(kernel: $2; dmnbd: $3)"; fi
}
snap_attach() { # NBDN EXPORT...: attach /dev/nbdN, /dev/nbdN+1, ... in order
  nb=$1; shift
  for x in "$@"; do chk "snap-attach-$x" attach /dev/nbd$nb "$x" -b 512 || return 1; nb=$((nb + 1)); done
}
snap_detach() { for x in "$@"; do detach /dev/nbd$x; done; }
snap_short() { echo "$1" | cut -c1-16; }
snap_val() { eval "echo \"\$$1\""; }   # the value of the variable named $1
snap_out() { echo "NBDVM-SNAP $*"; echo "NBDVM-SNAP $*" >> /tmp/snap.out; }
snap_got() { grep "^NBDVM-SNAP $1 $2 " /tmp/snap.out | tail -1 | cut -d' ' -f4-; }  # WHAT DEV
# snap_kernel_run STEP P OPS: the kernel's P-base-real (linear /dev/nbd4),
# snapshots P-s8 (COW /dev/nbd5) and P-s128 (/dev/nbd6), then the origin
# P-base (its write split is computed at resume, so after the snapshots);
# OPS one write at a time; NBDVM-SNAP lines; everything removed again.
snap_kernel_run() {
  st=$1 p=$2 ops=$3
  if chk snap-$st-create-base-real dmsetup create $p-base-real --table "0 $S linear /dev/nbd4 0" &&
     chk snap-$st-create-s8 dmsetup create $p-s8 --table "0 $S snapshot /dev/mapper/$p-base-real /dev/nbd5 P 8" &&
     chk snap-$st-create-s128 dmsetup create $p-s128 --table "0 $S snapshot /dev/mapper/$p-base-real /dev/nbd6 P 128" &&
     chk snap-$st-create-base dmsetup create $p-base --table "0 $S snapshot-origin /dev/mapper/$p-base-real"; then
    bad="" nw=0
    while read -r dev sector count off; do
      dd if=/etc/snap/data.bin of=/dev/mapper/$p-$dev bs=$((count * 512)) count=1 skip="$off" iflag=skip_bytes \
         seek=$((sector * 512)) oflag=seek_bytes,direct conv=notrunc status=none < /dev/null > /tmp/dd.out 2>&1 \
        || bad="$bad $dev:$sector+$count($(tr '\n' ' ' < /tmp/dd.out))"
      nw=$((nw + 1))
    done < "$ops"
    sync
    if [ -z "$bad" ]; then res snap-$st-kernel-writes PASS "($nw dd oflag=direct writes, ${ops##*/})"; else res snap-$st-kernel-writes FAIL "(failed:$bad)"; fi
    for d in s8 s128 base; do
      snap_out sha $p-$d "$(sha /dev/mapper/$p-$d)"
      snap_out status $p-$d "$(dmsetup status $p-$d)"
    done
  fi
  sync
  for d in $p-base $p-s8 $p-s128 $p-base-real; do
    dmsetup info "$d" > /dev/null 2>&1 && chk "snap-$st-remove-$d" dmsetup remove "$d"
  done
}
snapshot() {
  t=$(up)
  S=$SNAP_SIZE
  # 1. the kernel reads the origin and COWs dmnbd wrote
  if snap_attach 4 sr-orig sr-cow8 sr-cow128; then
    for c in 8 128; do
      cow=/dev/nbd5; [ $c = 128 ] && cow=/dev/nbd6
      chk snap-1-create-s$c dmsetup create --readonly r-s$c --table "0 $S snapshot /dev/nbd4 $cow P $c" || continue
      want=$(snap_val SNAP_D_SHA_S$c)
      snap_same snap-1-kernel-reads-dmnbd-cow-s$c "$(snap_short "$(sha /dev/mapper/r-s$c)")" "$(snap_short "$want")"
      want=$(snap_val SNAP_D_STATUS_S$c)
      snap_same snap-1-status-s$c "$(dmsetup status r-s$c)" "$want"
      chk snap-1-remove-s$c dmsetup remove r-s$c
    done
  fi
  snap_detach 4 5 6
  t1=$(up)
  # 1b. the kernel goes on where dmnbd stopped (ops2 on copies of its files)
  if snap_attach 4 sc-orig sc-cow8 sc-cow128; then
    snap_kernel_run 1b kc /etc/snap/ops2
    for d in s8 s128 base; do
      want=$(snap_val "SNAP_C_SHA_$(echo "$d" | tr a-z A-Z)")
      snap_same snap-1b-kernel-continues-dmnbd-cow-$d "$(snap_short "$(snap_got sha kc-$d)")" "$(snap_short "$want")"
    done
    for c in 8 128; do
      want=$(snap_val SNAP_C_STATUS_S$c)
      snap_same snap-1b-status-s$c "$(snap_got status kc-s$c)" "$want"
    done
  fi
  snap_detach 4 5 6
  t2=$(up)
  # 2. the kernel runs the sequence itself
  snap_attach 4 sk-orig sk-cow8 sk-cow128 && snap_kernel_run 2 k /etc/snap/ops
  snap_detach 4 5 6
  t3=$(up)
  # 3. the kernel merges dmnbd's COWs into copies of dmnbd's origin
  merged=""
  if snap_attach 4 sm8-orig sm8-cow sm128-orig sm128-cow; then
    chk snap-3-create-merge-s8 dmsetup create m8 --table "0 $S snapshot-merge /dev/nbd4 /dev/nbd5 P 8" && merged="m8"
    chk snap-3-create-merge-s128 dmsetup create m128 --table "0 $S snapshot-merge /dev/nbd6 /dev/nbd7 P 128" && merged="$merged m128"
    for m in $merged; do
      c=${m#m} i=0
      while :; do
        st=$(dmsetup status $m) v=$(echo "$st" | cut -d' ' -f4-)
        a=${v%%/*} meta=${v##* }
        [ "$a" = "$meta" ] && break
        i=$((i + 1)); [ $i -ge 600 ] && break
        sleep 0.1
      done
      echo "NBDVM-SNAP merge $m after $i polls: $st"
      cow=/dev/nbd5; [ $c = 128 ] && cow=/dev/nbd7
      snap_same snap-3-merge-s$c-finished "$v" "$((2 * c))/$(blockdev --getsz $cow) $((2 * c))"
    done
    for m in $merged; do chk snap-3-remove-$m dmsetup remove $m; done
    # the origins (nothing read them before: no stale page cache)
    for m in $merged; do
      c=${m#m}; o=/dev/nbd4; [ $c = 128 ] && o=/dev/nbd6
      want=$(snap_val SNAP_D_SHA_S$c)
      snap_same snap-3-merged-origin-is-dmnbd-snapshot-s$c "$(snap_short "$(sha $o)")" "$(snap_short "$want")"
    done
  fi
  snap_detach 4 5 6 7
  echo "NBDVM-TIME snapshot $t -> $(up) (1: $t -> $t1, 1b: $t1 -> $t2, 2: $t2 -> $t3, 3: $t3 -> $(up))"
}

# ------------------------------------------------------------------ mirror
# The kernel's dm-mirror against dmnbd's (run.sh, mirror.py). Exports, each
# a file on the host, attached once on their own /dev/nbdN (the other stages
# have detached theirs by now): P-leg0 P-leg1 P-log for P = mm (nbd0-2; the
# model's files: leg 1 differs from leg 0 in the regions the log marks dirty),
# md (nbd3-5; dmnbd's, when MIR_D=1), mk (nbd6-8; leg 0 pattern P, leg 1
# pattern B, a log of random bytes); mt-leg0..2, mt-log (nbd9-12; step 3).
#  1. mirror over mm (MIR_M=1) / md (MIR_D=1) with handle_errors: the kernel resyncs the dirty
#     regions from leg 0 (poll dmsetup status until N/N), then dmsetup remove;
#     the host checks legs and log.
#  2. leg 1 = mk-leg1s, mk-leg1 with error targets over some regions
#     (leg1s.table); mirror without handle_errors, disk log mk-log; wait for
#     the first resync, write pattern A (a.bin) with dd oflag=direct, remove.
#  3. every table of /etc/mirror/tables (placeholders $LEG0 $LEG1 $LEG2 $LOG)
#     on its own: first status, status once in sync, table, remove.
# The lines: NBDVM-MIRROR dev STEP ROLE MAJ:MIN | status STEP first|settling|
# sync|written [LINE] | table STEP [LINE] | polls STEP N.
mir_out() { echo "NBDVM-MIRROR $*"; }
mir_dev() { # STEP ROLE DEV
  case $3 in
    /dev/mapper/*) mm=$(dmsetup info -c --noheadings -o major,minor "${3#/dev/mapper/}" < /dev/null);;
    *) mm=$(cat "/sys/block/${3#/dev/}/dev");;
  esac
  mir_out dev "$1" "$2" "$mm"
}
mir_attach() { # NBDN EXPORT...: /dev/nbdN, N+1, ... in order (mir_nbds: the attached ones)
  nb=$1; shift
  for x in "$@"; do
    chk "mirror-attach-$x" attach /dev/nbd$nb "$x" -b 512 < /dev/null || return 1
    mir_nbds="$mir_nbds $nb"; nb=$((nb + 1))
  done
}
# mir_wait STEP NAME: the first status, then polls until in-sync == regions
# (60 s at most), the status then. The kernel counts the last region in sync
# (dm_rh_update_states()), flushes the legs and writes and flushes the log
# (set_region_sync() marks the log touched), and only then clears the legs'
# error flags (do_recovery(): reset_ms_flags()); for those round trips it
# shows N/N with a leg's S. So when a leg shows an error once in sync the
# status is read again until two reads 0.2 s apart agree.
mir_wait() {
  ws=$1 wn=$2 i=0
  st=$(dmsetup status "$wn" < /dev/null)
  mir_out status "$ws" first "[$st]"
  while :; do
    set -- $(echo "$st" | awk '{print $(5 + $4), $(7 + $4)}')
    r=${1:-} c=${2:-}
    [ -n "$r" ] && [ "${r%/*}" = "${r#*/}" ] && break
    i=$((i + 1)); [ $i -ge 600 ] && break
    sleep 0.1
    st=$(dmsetup status "$wn" < /dev/null)
  done
  case $c in
    *[!A]*)
      for _ in 1 2 3 4 5; do
        sleep 0.2; st2=$(dmsetup status "$wn" < /dev/null)
        [ "$st2" = "$st" ] && break
        mir_out status "$ws" settling "[$st]"; st=$st2
      done
      r=$(echo "$st" | awk '{print $(5 + $4)}');;
  esac
  mir_out polls "$ws" $i
  mir_out status "$ws" sync "[$st]"
  if [ -n "$r" ] && [ "${r%/*}" = "${r#*/}" ]; then res "mirror-$ws-in-sync" PASS "($r after $i polls)"
  else res "mirror-$ws-in-sync" FAIL "(still $r after $i polls)"; fi
}
mir_resync() { # STEP EXPORT-PREFIX NBDN: the kernel loads userspace's files and resyncs
  s=$1 p=$2 l0=/dev/nbd$3 l1=/dev/nbd$(($3 + 1)) lg=/dev/nbd$(($3 + 2))
  mir_attach $3 $p-leg0 $p-leg1 $p-log || return
  mir_dev $s LEG0 $l0; mir_dev $s LEG1 $l1; mir_dev $s LOG $lg
  if chk mirror-$s-create dmsetup create mi --table "0 $MIR_L mirror disk 2 $lg $MIR_REGION 2 $l0 0 $l1 0 1 handle_errors"; then
    mir_wait $s mi
    mir_out table $s "[$(dmsetup table mi)]"
    chk mirror-$s-remove dmsetup remove mi
  fi
}
mirror() {
  t=$(up) mir_nbds=""
  [ "${MIR_M:-1}" = 1 ] && mir_resync 1m mm 0
  [ "${MIR_D:-0}" = 1 ] && mir_resync 1d md 3
  t1=$(up)
  # 2. the kernel writes through a mirror whose leg 1 fails in some regions;
  # 1 MiB writes, which the mirror splits at region boundaries
  if mir_attach 6 mk-leg0 mk-leg1 mk-log; then
    mir_dev 2 LEG0 /dev/nbd6; mir_dev 2 LOG /dev/nbd8
    sed 's#@LEG1@#/dev/nbd7#' /etc/mirror/leg1s.table > /tmp/leg1s.table
    if chk mirror-2-create-leg1s dmsetup create mk-leg1s /tmp/leg1s.table; then
      mir_dev 2 LEG1 /dev/mapper/mk-leg1s
      if chk mirror-2-create dmsetup create mk --table "0 $MIR_L mirror disk 2 /dev/nbd8 $MIR_REGION 2 /dev/nbd6 0 /dev/mapper/mk-leg1s 0"; then
        mir_wait 2 mk
        chk mirror-2-write-A dd if=/etc/mirror/a.bin of=/dev/mapper/mk bs=1048576 oflag=direct conv=notrunc status=none
        mir_out status 2 written "[$(dmsetup status mk)]"
        mir_out table 2 "[$(dmsetup table mk)]"
        chk mirror-2-remove dmsetup remove mk
      fi
      chk mirror-2-remove-leg1s dmsetup remove mk-leg1s
    fi
  fi
  t2=$(up)
  # 3. status and table strings
  if mir_attach 9 mt-leg0 mt-leg1 mt-leg2 mt-log; then
    mir_dev 3 LEG0 /dev/nbd9; mir_dev 3 LEG1 /dev/nbd10; mir_dev 3 LEG2 /dev/nbd11; mir_dev 3 LOG /dev/nbd12
    tn=0   # (chk uses n, mir_wait i)
    while read -r tbl; do
      tn=$((tn + 1))
      tbl=$(echo "$tbl" | sed 's#\$LEG0#/dev/nbd9#g; s#\$LEG1#/dev/nbd10#g; s#\$LEG2#/dev/nbd11#g; s#\$LOG#/dev/nbd12#g')
      chk mirror-3.$tn-create dmsetup create mt --table "$tbl" < /dev/null || continue
      mir_wait 3.$tn mt
      mir_out table 3.$tn "[$(dmsetup table mt < /dev/null)]"
      chk mirror-3.$tn-remove dmsetup remove mt < /dev/null
    done < /etc/mirror/tables
  fi
  t3=$(up)
  for x in $mir_nbds; do detach /dev/nbd$x; done
  echo "NBDVM-TIME mirror $t -> $(up) (1: $t -> $t1, 2: $t1 -> $t2, 3: $t2 -> $t3, detach: $t3 -> $(up))"
}

# ------------------------------------------------------------------ crypt
# LUKS and verity (cryptvols.py): the kernel's `cryptsetup open` reads the
# volumes dmnbd wrote (exports c-luks1, c-luks2, c-luks2k: the raw files) and
# writes /etc/crypt/kdata.bin into c-kvol for dmnbd to read after the boot;
# the kernel's dm-verity reads the trees of cv-data/cv-hash (good) and
# cv-bad/cv-badhash (bytes flipped) with the tables of /etc/crypt/verity.
crypt_out() { echo "NBDVM-CRYPT $*"; }
crypt() {
  t=$(up)
  modprobe dm-crypt; modprobe dm-verity
  mkdir -p /run/cryptsetup
  n=70
  # (attach sets d and e: the loop's names are its own)
  for ce in luks1 luks2 luks2k kvol vdata vhash vbad vbadhash; do
    if attach /dev/nbd$n "c-$ce" < /dev/null; then eval "cdev_$ce=/dev/nbd$n"; else res "crypt-attach-$ce" FAIL; fi
    n=$((n + 1))
  done
  while read -r name want; do
    cdev=$(eval "echo \$cdev_$name")
    if chk "crypt-open-$name" cryptsetup open --key-file /etc/crypt/pw "$cdev" "k-$name" < /dev/null; then
      # the plaintext's 8 MiB (a LUKS1 volume's data area is larger)
      crypt_out sha "$name" "$(dd if="/dev/mapper/k-$name" bs=1M count=8 status=none < /dev/null | sha256sum | cut -d' ' -f1)"
      chk "crypt-close-$name" cryptsetup close "k-$name" < /dev/null
    fi
  done < /etc/crypt/expect
  if chk crypt-open-kvol cryptsetup open --key-file /etc/crypt/pw "$cdev_kvol" k-kvol < /dev/null; then
    if dd if=/etc/crypt/kdata.bin of=/dev/mapper/k-kvol bs=1M oflag=direct conv=fsync status=none < /dev/null; then
      crypt_out wrote kvol ok
    else
      crypt_out wrote kvol failed
    fi
    chk crypt-close-kvol cryptsetup close k-kvol < /dev/null
  fi
  while read -r name table; do
    case $name in good) vd=$cdev_vdata vh=$cdev_vhash;; *) vd=$cdev_vbad vh=$cdev_vbadhash;; esac
    echo "$table" | sed "s#@DATA@#$vd#; s#@HASH@#$vh#" > /tmp/verity.table
    if chk "verity-create-$name" dmsetup create --readonly "v-$name" /tmp/verity.table < /dev/null; then
      : > /tmp/verity.out
      r=$(blkprobe copy "/dev/mapper/v-$name" /tmp/verity.out 0 < /dev/null)
      crypt_out verity "$name" "$r" "$(sha /tmp/verity.out)"
      crypt_out vstatus "$name" "$(dmsetup status "v-$name" < /dev/null)"
      chk "verity-remove-$name" dmsetup remove "v-$name" < /dev/null
    fi
  done < /etc/crypt/verity
  for ce in luks1 luks2 luks2k kvol vdata vhash vbad vbadhash; do
    cdev=$(eval "echo \$cdev_$ce"); [ -n "$cdev" ] && detach "$cdev"
  done
  dmesg | grep -E 'device-mapper: (crypt|verity)' | tail -10 | sed 's/^/NBDVM-DMESG crypt /'
  echo "NBDVM-TIME crypt $t -> $(up)"
}

# ------------------------------------------------------------------ thin
# The kernel's dm-thin against dmnbd's thin-pool / thin (run.sh, thin.py).
# /etc/thin/ops is the sequence, one op a line: "msg WORDS" (a pool
# message), "create DEV ID" (a thin device of THIN_SECTORS), "w DEV SECTOR
# COUNT DATA_OFFSET" (the payload at byte DATA_OFFSET of /etc/thin/data.bin;
# one dd oflag=direct), "flush DEV" (fsync: an empty flush), "suspend DEV",
# "resume DEV", "discard DEV SECTOR COUNT" (BLKDISCARD). Exports, each a file
# on the host: th-dc-meta, th-dc-data (copies of the pool dmnbd wrote with
# the sequence), th-k-meta, th-k-data (zeroed), on /dev/nbd0-3.
#  K1. the pool over dmnbd's files, the same pool and thin tables
#      ("0 THIN_POOL thin-pool META DATA 128 0", "0 THIN_SECTORS thin POOL
#      ID"): the statuses, tables and sha256 of thin1 and thin2; removed.
#  K2. a pool over the zeroed files: its first status; the sequence; the
#      statuses, tables, sha256; removed (the kernel commits). After the
#      boot dmnbd opens these files and writes to them.
# The lines: NBDVM-THIN status STEP DEV first|end [LINE] | table STEP DEV
# [LINE] | sha STEP DEV HEX, DEV pool|thin1|thin2 (thin.py check).
thin_out() { echo "NBDVM-THIN $*"; }
# thin_report STEP P PHASE: P-pool, P-thin1, P-thin2 (one dmsetup status and
# one dmsetup table for all: a dmsetup call costs ~0.25 s under TCG; with
# more than one device dmsetup puts "NAME: " first)
thin_report() {
  dmsetup status < /dev/null > /tmp/thin.st; dmsetup table < /dev/null > /tmp/thin.tb
  awk -v st="$1" -v p="$2-" -v ph="$3" 'FNR == 1 {f++}
    { n = $1; sub(/:$/, "", n); if (index(n, p) != 1) next; x = substr(n, length(p) + 1)
      if (x != "pool" && x != "thin1" && x != "thin2") next
      sub(/^[^:]*: /, "")
      if (f == 1) print "NBDVM-THIN status " st " " x " " ph " [" $0 "]"
      else print "NBDVM-THIN table " st " " x " [" $0 "]" }' /tmp/thin.st /tmp/thin.tb
  for x in thin1 thin2; do
    [ -e "/dev/mapper/$2-$x" ] && thin_out sha "$1" $x "$(sha "/dev/mapper/$2-$x")"
  done
}
thin_remove() { # STEP P: the thins, then the pool, in one dmsetup call
  rm_l=""
  for x in thin2 thin1 pool; do [ -e "/dev/mapper/$2-$x" ] && rm_l="$rm_l $2-$x"; done
  [ -n "$rm_l" ] && chk "thin-$1-remove" dmsetup remove $rm_l < /dev/null
}
thin_run() { # STEP P: /etc/thin/ops on P-pool
  bad="" nw=0
  while read -r op x y z o; do
    case $op in
      msg) dmsetup message "$2-pool" 0 $x $y $z;;
      create) dmsetup create "$2-$x" --table "0 $THIN_SECTORS thin /dev/mapper/$2-pool $y";;
      w) nw=$((nw + 1))
         dd if=/etc/thin/data.bin of="/dev/mapper/$2-$x" bs=$((z * 512)) count=1 skip="$o" iflag=skip_bytes \
            seek=$((y * 512)) oflag=seek_bytes,direct conv=notrunc status=none;;
      flush) blkprobe flush "/dev/mapper/$2-$x";;
      suspend|resume) dmsetup "$op" "$2-$x";;
      discard) blkdiscard -o $((y * 512)) -l $((z * 512)) "/dev/mapper/$2-$x";;
      *) echo "unknown op"; false;;
    esac < /dev/null > /tmp/thin.out 2>&1 || bad="$bad [$op $x $y $z: $(tr '\n' ' ' < /tmp/thin.out)]"
  done < /etc/thin/ops
  if [ -z "$bad" ]; then res "thin-$1-sequence" PASS "($(wc -l < /etc/thin/ops) steps, $nw dd oflag=direct writes)"
  else res "thin-$1-sequence" FAIL "(failed:$bad)"; fi
}
thin() {
  t=$(up)
  modprobe dm-thin-pool || { res modprobe-dm-thin-pool FAIL; return; }
  # (in the background: nbd-client takes ~0.5 s of CPU under TCG)
  n=0
  for x in th-dc-meta th-dc-data th-k-meta th-k-data; do
    (attach /dev/nbd$n $x -b 512 < /dev/null > /tmp/th$n.out 2>&1; echo $? > /tmp/th$n.rc) &
    n=$((n + 1))
  done
  wait
  n=0 thok=1
  for x in th-dc-meta th-dc-data th-k-meta th-k-data; do
    if [ "$(cat /tmp/th$n.rc)" = 0 ]; then res "thin-attach-$x" PASS
    else sed 's/^/    | /' /tmp/th$n.out; res "thin-attach-$x" FAIL "(nbd$n)"; thok=0; fi
    n=$((n + 1))
  done
  t0=$(up)
  # K1. the kernel opens the pool dmnbd wrote
  if [ $thok = 1 ] && chk thin-K1-create-pool dmsetup create r-pool --table "0 $THIN_POOL thin-pool /dev/nbd0 /dev/nbd1 128 0" < /dev/null; then
    chk thin-K1-create-thin1 dmsetup create r-thin1 --table "0 $THIN_SECTORS thin /dev/mapper/r-pool 1" < /dev/null &&
      chk thin-K1-create-thin2 dmsetup create r-thin2 --table "0 $THIN_SECTORS thin /dev/mapper/r-pool 2" < /dev/null &&
      thin_report K1 r first
    thin_remove K1 r
  fi
  t1=$(up)
  # K2. the kernel runs the sequence on a new pool
  if [ $thok = 1 ] && chk thin-K2-create-pool dmsetup create k-pool --table "0 $THIN_POOL thin-pool /dev/nbd2 /dev/nbd3 128 0" < /dev/null; then
    thin_out status K2 pool first "[$(dmsetup status k-pool < /dev/null)]"
    thin_run K2 k
    thin_report K2 k end
    thin_remove K2 k
  fi
  t2=$(up)
  for n in 0 1 2 3; do detach /dev/nbd$n; done
  dmesg | grep -E 'device-mapper: thin' | tail -10 | sed 's/^/NBDVM-DMESG thin /'
  echo "NBDVM-TIME thin $t -> $(up) (attach: $t -> $t0, K1: $t0 -> $t1, K2: $t1 -> $t2, detach: $t2 -> $(up))"
}

# ------------------------------------------------------------------ raid
# The kernel's dm-raid against dmnbd's raid (run.sh, raid.py). /etc/raid/:
# sets ("SET LENGTH ROLES..."), SET.table and SET.degraded (placeholders $M0
# $D0 ... for the metadata and data devices), ksets, checked, wsets, tables,
# refusals, k.bin, f.bin, w.bin, legsz ("SET SECTORS": a data leg's size;
# "meta SECTORS").
# Every set's legs are one export (r-PREFIX-SET: the legs one after another,
# run.sh), attached on a /dev/nbdN of its own from nbd16 up and cut into
# dm-linear legs rl-KEY-ROLE; all stay until the poweroff (this stage runs
# last). One export per leg (162 of them) took 27 s of TCG to attach in
# step 1 alone: nbd-client costs ~0.5 s of CPU each.
#  1. all sets at once over copies of dmnbd's files (exports r-dc-SET):
#     create, the first status and 10 more 0.2 s apart (no resync may start),
#     sha256, table;
#  3. for the sets in "checked": "message 0 check" (all at once), wait for
#     idle, status; remove raid0/1/10 (raid4/5/6 stay, see below); then
#     (1deg) the SET.degraded tables: status, sha256.
#  2. for the sets in "ksets", over zeroed files (r-k-SET): create, wait
#     for the resync, write k.bin (dd oflag=direct), status, sha256, table,
#     suspend, remove; the host hands the files to dmnbd.
#  W. for the sets in "wsets" (SET LENGTH ROLES: the degraded table's legs
#     only): SET.degraded over dmnbd's degraded writes (r-dw-SET):
#     status, sha256, table; KW: the same table over zeroed exports
#     (r-kw-SET): write f.bin (512 KiB requests), then w.bin (3584
#     bytes each), status, sha256, table, suspend, remove.
#  R. for the sets in "rsets": SET.rebuild (its table with "rebuild N")
#     over copies of dmnbd's files with those legs zeroed (r-rb-SET): wait
#     for the recovery, status, sha256, table. X. for the sets in "xsets":
#     SET.table over copies of dmnbd's files with bytes flipped (r-mk-SET):
#     check, status; XR (last): the same over other such copies
#     (r-mr-SET), never checked: repair, status. None is removed.
#  4. every table of "tables" over the scratch export r-t (metadata zeroed
#     before each, so each is a new set): status, table, remove; 4r: every
#     table of "refusals" must be refused ("refused 4r N REASON").
# The lines: NBDVM-RAID dev STEP SET ROLE MAJ:MIN | status STEP SET PHASE
# [LINE] | table STEP SET [LINE] | sha STEP SET HEX | checkrun 1 all N
# ("data-check done" lines in dmesg) | refused STEP SET REASON.
raid_out() { echo "NBDVM-RAID $*"; }
# raid_watch SECS WHAT / raid_unwatch: if WHAT takes longer than SECS, the
# blocked tasks' stacks (sysrq w) and dmesg's tail go to the console
# (NBDVM-HANG lines), to see where a hang in the kernel is
raid_watch() {
  ( sleep "$1"; echo "NBDVM-HANG $2: still running after $1 s"; echo w > /proc/sysrq-trigger
    for f in /sys/block/nbd*/inflight /sys/block/dm-*/inflight; do
      read -r ir iw < "$f"; [ "$ir$iw" = 00 ] || echo "NBDVM-HANG in flight: $f $ir $iw"
    done
    sleep 1; dmesg | tail -150 | sed 's/^/NBDVM-HANG /' ) &
  raid_wpid=$!
}
raid_unwatch() { kill "$raid_wpid" 2>/dev/null; wait "$raid_wpid" 2>/dev/null; }
# raid_dm CHECK-NAME suspend|remove NAME: chk, watched
raid_dm() {
  raid_watch 30 "dmsetup $2 $3"
  chk "$1" dmsetup "$2" "$3" < /dev/null; rd_rc=$?
  raid_unwatch
  return $rd_rc
}
raid_t() { echo "NBDVM-INFO raid $(up) $*"; }
raid_nb=16
# raid_attach KEY STEP SET EXPORT ROLES...: the next free /dev/nbdN for
# EXPORT, which holds the set's legs one after another in the order of ROLES
# (run.sh: metadata legs $raid_meta sectors, data legs legsz SET); in the
# background: one nbd-client takes ~0.5 s of CPU under TCG, so all of a
# step's exports are attached at once, one per set, not one per leg.
# raid_attached then waits for them, cuts every export into its legs with
# one "dmsetup create --concise" (dm-linear rl-KEY-ROLE, $rdev_KEY_ROLE),
# reports, and sets $ra_fail_KEY to 1 when something failed.
raid_pending=""
raid_attach() {
  ra_k=$1 ra_s=$2 ra_n=$3 ra_e=$4; shift 4
  eval "ra_fail_$ra_k=0"
  (attach /dev/nbd$raid_nb "$ra_e" -b 512 < /dev/null > /tmp/ra$raid_nb.out 2>&1; echo $? > /tmp/ra$raid_nb.rc) &
  ra_r=$*
  raid_pending="$raid_pending $raid_nb:$ra_k:$ra_s:$ra_n:$ra_e:${ra_r// /,}"
  raid_nb=$((raid_nb + 1))
}
raid_attached() {
  wait
  ra_spec="" ra_keys=""
  : > /tmp/raid.map
  for x in $raid_pending; do
    oifs=$IFS; IFS=:; set -- $x; IFS=$oifs
    if [ "$(cat /tmp/ra$1.rc)" = 0 ]; then
      eval "ra_lz=\${legsz_$4:-0}"
      ra_off=0
      for r in ${6//,/ }; do
        case $r in m*) ra_len=$raid_meta;; *) ra_len=$ra_lz;; esac
        ra_spec="$ra_spec;rl-$2-$r,,,rw,0 $ra_len linear /dev/nbd$1 $ra_off"
        eval "rdev_$2_$r=/dev/mapper/rl-$2-$r"
        echo "rl-$2-$r $3 $4 $r" >> /tmp/raid.map
        ra_off=$((ra_off + ra_len))
      done
      if [ "$(cat /sys/block/nbd$1/size)" = $ra_off ]; then
        res "raid-attach-$5" PASS
        ra_keys="$ra_keys $2"
      else
        res "raid-attach-$5" FAIL "(nbd$1: $(cat /sys/block/nbd$1/size) sectors, the legs $ra_off)"; eval "ra_fail_$2=1"
      fi
    else
      sed 's/^/    | /' /tmp/ra$1.out; res "raid-attach-$5" FAIL "(nbd$1)"; eval "ra_fail_$2=1"
    fi
  done
  if [ -n "$ra_spec" ] && ! chk raid-legs-create dmsetup create --concise "${ra_spec#;}"; then
    for k in $ra_keys; do eval "ra_fail_$k=1"; done
  fi
  dmsetup info -c --noheadings -o name,major,minor --separator ' ' < /dev/null > /tmp/raid.info
  awk 'NR == FNR {mm[$1] = $2 ":" $3; next} ($1 in mm) {print "NBDVM-RAID dev " $2 " " $3 " " $4 " " mm[$1]}' \
    /tmp/raid.info /tmp/raid.map
  raid_pending=""
}
raid_ok() { [ "$(eval "echo \$ra_fail_$1")" = 0 ]; }
# raid_statuses NAMES...: their statuses with one dmsetup call, to
# /tmp/raid.st as "NAME: STATUS" (dmsetup puts the name first only when it
# lists more than one device)
raid_statuses() {
  if [ $# = 1 ]; then echo "$1: $(dmsetup status "$1" < /dev/null)" > /tmp/raid.st
  else dmsetup status < /dev/null > /tmp/raid.st; fi
}
# raid_st_out STEP PHASE: a status line for each rd-SET of /tmp/raid.st
raid_st_out() {
  awk -v st="$1" -v ph="$2" '/^rd-[^:]*: / {n = substr($1, 4, length($1) - 4); sub(/^[^:]*: /, "");
    print "NBDVM-RAID status " st " " n " " ph " [" $0 "]"}' /tmp/raid.st
}
raid_table() { # KEY FILE: the table with KEY's devices (no forks: ~30 of
  # them per table cost ~0.3 s under TCG)
  read -r tt < "$2"
  for r in m0 d0 m1 d1 m2 d2 m3 d3 m4 d4 m5 d5; do
    eval "dv=\${rdev_$1_$r:-}"
    case $r in m*) R=M${r#m};; *) R=D${r#d};; esac
    [ -n "$dv" ] && tt=${tt//\$$R/$dv}
  done
  echo "$tt"
}
raid_roles() { awk -v n="$1" '$1 == n {$1 = $2 = ""; print}' /etc/raid/${2:-sets}; }
raid_create() { # STEP SET NAME TABLE: dmsetup create, or a "refused" line with the kernel's reason
  n0=$(dmesg | wc -l)
  dmsetup create "$3" --table "$4" < /dev/null > /tmp/dm.out 2>&1 && return 0
  why=$(dmesg | tail -n +$((n0 + 1)) | grep -iE 'device-mapper|md/raid|md:' | tail -3 | sed 's/^\[[ 0-9.]*\] //' | tr '\n' ' ')
  raid_out refused "$1" "$2" "${why:-$(tr '\n' ' ' < /tmp/dm.out)}"
  [ "${raid_refuse:-0}" = 1 ] && { res "raid-$1-$2-refused" PASS "($why)"; return 1; }
  res "raid-$1-$2-create" FAIL "(${why:-$(tr '\n' ' ' < /tmp/dm.out)})"
  return 1
}
# raid_wait NAME: until idle, progress total/total and no "a" (60 s at most);
# rw_st the last status
raid_wait() {
  rw_i=0
  while :; do
    rw_st=$(dmsetup status "$1" < /dev/null)
    rw_h=$(echo "$rw_st" | awk '{print $6}') rw_p=$(echo "$rw_st" | awk '{print $7}') rw_a=$(echo "$rw_st" | awk '{print $8}')
    if [ "$rw_a" = idle ] && [ -n "$rw_p" ] && [ "${rw_p%/*}" = "${rw_p#*/}" ]; then
      case $rw_h in *a*) ;; *) return 0;; esac
    fi
    rw_i=$((rw_i + 1)); [ $rw_i -ge 600 ] && return 1
    sleep 0.1
  done
}
raid() {
  t=$(up)
  modprobe dm-raid || { res modprobe-dm-raid FAIL; return; }
  while read -r a b; do eval "legsz_$a=$b"; done < /etc/raid/legsz
  raid_meta=$legsz_meta
  # 1 and 3: dmnbd's files, every set at once
  up1=""
  for s in $(cut -d' ' -f1 /etc/raid/sets); do raid_attach "d$s" 1 "$s" "r-dc-$s" $(raid_roles "$s"); done
  raid_attached
  raid_t "1 attached"
  for s in $(cut -d' ' -f1 /etc/raid/sets); do
    raid_ok "d$s" && raid_create 1 "$s" "rd-$s" "$(raid_table "d$s" /etc/raid/$s.table)" && up1="$up1 $s"
  done
  ta=$(up)
  # (one dmsetup call per round: 50 of them took 5 s under TCG)
  rd=$(for s in $up1; do echo rd-$s; done)
  raid_statuses $rd; raid_st_out 1 first
  for i in 01 02 03 04 05 06 07 08 09 10; do sleep 0.2; raid_statuses $rd; raid_st_out 1 poll$i; done
  tp=$(up)
  for s in $up1; do
    raid_out sha 1 "$s" "$(sha /dev/mapper/rd-$s)"
    raid_out table 1 "$s" "[$(dmsetup table rd-$s)]"
  done
  ts=$(up)
  n0=$(dmesg | grep -c 'data-check done')
  ck=""
  for s in $up1; do
    grep -qw "$s" /etc/raid/checked || continue
    chk "raid-3-$s-message-check" dmsetup message rd-$s 0 check && ck="$ck $s"
    raid_out status 1 "$s" checking "[$(dmsetup status rd-$s)]"
  done
  for s in $ck; do
    raid_wait rd-$s || res "raid-3-$s-check-finished" FAIL "(after 60 s: $rw_st)"
    raid_out status 1 "$s" checked "[$rw_st]"
  done
  raid_out checkrun 1 all $(( $(dmesg | grep -c 'data-check done') - n0 ))
  tc=$(up)
  # The raid4/5/6 sets stay until the poweroff: the kernel only read and
  # checked them, so there is nothing to flush, and their removal hung in
  # about half the boots (dmsetup in D state in raid5_quiesce <-
  # __md_stop_writes <- raid_postsuspend <- __dm_destroy, always a set that
  # had been checked: r4, r5la, r6nr, r6rs6; no I/O in flight on any nbd or
  # dm device, dmnbd idle; a "message 0 idle" first did not help). raid0/1/10
  # are removed: their degraded tables write the superblocks.
  par=" $(cat /etc/raid/parity) "
  for s in $up1; do
    case $par in *" $s "*) continue;; esac
    raid_dm "raid-1-$s-remove" remove rd-$s
  done
  tr=$(up)
  for s in $up1; do
    [ -f /etc/raid/$s.degraded ] || continue
    raid_create 1deg "$s" "rg-$s" "$(raid_table "d$s" /etc/raid/$s.degraded)" || continue
    raid_out status 1deg "$s" first "[$(dmsetup status rg-$s)]"
    raid_out sha 1deg "$s" "$(sha /dev/mapper/rg-$s)"
    raid_out table 1deg "$s" "[$(dmsetup table rg-$s)]"
    # (a degraded raid4/5/6 set stays too; it runs beside rd-SET over the same legs)
    case $par in *" $s "*) ;; *) raid_dm "raid-1deg-$s-remove" remove rg-$s;; esac
    raid_t "1deg $s done"
  done
  t1=$(up)
  # 2. the kernel writes
  up2=""
  for s in $(cat /etc/raid/ksets); do raid_attach "k$s" 2 "$s" "r-k-$s" $(raid_roles "$s"); done
  ws=$(cut -d' ' -f1 /etc/raid/wsets)
  for s in $ws; do
    raid_attach "w$s" W "$s" "r-dw-$s" $(raid_roles "$s" wsets)
    raid_attach "x$s" KW "$s" "r-kw-$s" $(raid_roles "$s" wsets)
  done
  raid_attached
  for s in $(cat /etc/raid/ksets); do
    raid_ok "k$s" && raid_create 2 "$s" "rk-$s" "$(raid_table "k$s" /etc/raid/$s.table)" && up2="$up2 $s"
  done
  for s in $up2; do raid_out status 2 "$s" first "[$(dmsetup status rk-$s)]"; done
  for s in $up2; do
    D=/dev/mapper/rk-$s
    raid_wait rk-$s || res "raid-2-$s-resync-finished" FAIL "(after 60 s: $rw_st)"
    raid_out status 2 "$s" sync "[$rw_st]"
    chk "raid-2-$s-write-K" dd if=/etc/raid/k.bin of=$D bs=65536 count=$(($(blockdev --getsz $D) / 128)) oflag=direct conv=notrunc status=none
    raid_out status 2 "$s" written "[$(dmsetup status rk-$s)]"
    raid_out sha 2 "$s" "$(sha $D)"
    raid_out table 2 "$s" "[$(dmsetup table rk-$s)]"
    raid_dm "raid-2-$s-suspend" suspend rk-$s
    raid_dm "raid-2-$s-remove" remove rk-$s
    raid_t "2 $s done"
  done
  tw=$(up)
  # W: dmnbd's writes through the degraded tables, read degraded; KW: the
  # kernel writes F (512 KiB requests), then W (3584 bytes each) degraded
  for s in $ws; do
    if raid_ok "w$s" && raid_create W "$s" "rw-$s" "$(raid_table "w$s" /etc/raid/$s.degraded)"; then
      raid_out status W "$s" first "[$(dmsetup status rw-$s)]"
      raid_out sha W "$s" "$(sha /dev/mapper/rw-$s)"
      raid_out table W "$s" "[$(dmsetup table rw-$s)]"
      raid_dm "raid-W-$s-remove" remove rw-$s
    fi
    raid_ok "x$s" && raid_create KW "$s" "rx-$s" "$(raid_table "x$s" /etc/raid/$s.degraded)" || continue
    D=/dev/mapper/rx-$s
    chk "raid-KW-$s-write-F" dd if=/etc/raid/f.bin of=$D bs=524288 count=$(($(blockdev --getsz $D) / 1024)) oflag=direct conv=notrunc status=none
    chk "raid-KW-$s-write-W" dd if=/etc/raid/w.bin of=$D bs=3584 oflag=direct conv=notrunc status=none
    raid_out status KW "$s" written "[$(dmsetup status rx-$s)]"
    raid_out sha KW "$s" "$(sha $D)"
    raid_out table KW "$s" "[$(dmsetup table rx-$s)]"
    raid_dm "raid-KW-$s-suspend" suspend rx-$s
    raid_dm "raid-KW-$s-remove" remove rx-$s
  done
  t2=$(up)
  # R: the kernel rebuilds legs (zeroed) of copies of dmnbd's k5/k6 with
  # "rebuild N" tables; X: check, then repair, of copies of dmnbd's files
  # with bytes flipped. Neither is removed (see step 3): the host compares
  # the legs as dmnbd's files have them once the set is idle.
  rs=$(cat /etc/raid/rsets) xs=$(cat /etc/raid/xsets) upr="" upx=""
  for s in $rs; do raid_attach "b$s" R "$s" "r-rb-$s" $(raid_roles "$s"); done
  for s in $xs; do raid_attach "m$s" X "$s" "r-mk-$s" $(raid_roles "$s"); done
  raid_attached
  for s in $rs; do
    raid_ok "b$s" && raid_create R "$s" "rb-$s" "$(raid_table "b$s" /etc/raid/$s.rebuild)" || continue
    raid_out status R "$s" first "[$(dmsetup status rb-$s)]"; upr="$upr $s"
  done
  for s in $xs; do
    raid_ok "m$s" && raid_create X "$s" "rm-$s" "$(raid_table "m$s" /etc/raid/$s.table)" || continue
    raid_out status X "$s" first "[$(dmsetup status rm-$s)]"
    chk "raid-X-$s-message-check" dmsetup message rm-$s 0 check && upx="$upx $s"
  done
  for s in $upr; do
    raid_wait rb-$s || res "raid-R-$s-rebuild-finished" FAIL "(after 60 s: $rw_st)"
    raid_out status R "$s" rebuilt "[$rw_st]"
    raid_out sha R "$s" "$(sha /dev/mapper/rb-$s)"
    raid_out table R "$s" "[$(dmsetup table rb-$s)]"
  done
  for s in $upx; do
    raid_wait rm-$s || res "raid-X-$s-check-finished" FAIL "(after 60 s: $rw_st)"
    raid_out status X "$s" checked "[$rw_st]"
  done
  # (a "repair" right after the check of the same set never progressed:
  # "0/1024 repair" for 60 s on r5ls, and the next one stalled the guest;
  # the repair runs last, on fresh copies: XR)
  t3=$(up)
  # 4. table strings (the tables are read up front: nothing in the loop may
  # eat its stdin)
  raid_attach t 4 t r-t m0 d0 m1 d1 m2 d2 m3 d3
  raid_attached
  if raid_ok t; then
    tn=0
    while [ $tn -lt "$(wc -l < /etc/raid/tables)" ]; do
      tn=$((tn + 1)) tbl=$(sed -n "${tn}p" /etc/raid/tables)
      for r in m0 m1 m2 m3; do
        dd if=/dev/zero of=$(eval "echo \$rdev_t_$r") bs=65536 count=1 oflag=direct conv=notrunc status=none < /dev/null
      done
      echo "$tbl" > /tmp/raid4.table
      raid_create 4 $tn rt "$(raid_table t /tmp/raid4.table)" || continue
      raid_out status 4 $tn first "[$(dmsetup status rt < /dev/null)]"
      raid_out table 4 $tn "[$(dmsetup table rt < /dev/null)]"
      raid_dm "raid-4.$tn-remove" remove rt
      raid_t "4.$tn done"
    done
    # 4r. tables the kernel refuses (its reason: "refused 4r N ...")
    tn=0
    while [ $tn -lt "$(wc -l < /etc/raid/refusals)" ]; do
      tn=$((tn + 1)) tbl=$(sed -n "${tn}p" /etc/raid/refusals)
      for r in m0 m1 m2 m3; do
        dd if=/dev/zero of=$(eval "echo \$rdev_t_$r") bs=65536 count=1 oflag=direct conv=notrunc status=none < /dev/null
      done
      echo "$tbl" > /tmp/raid4.table
      raid_refuse=1
      if raid_create 4r $tn rt "$(raid_table t /tmp/raid4.table)"; then
        res "raid-4r.$tn-refused" FAIL "(the kernel created it)"
        raid_out status 4r $tn first "[$(dmsetup status rt < /dev/null)]"
        raid_dm "raid-4r.$tn-remove" remove rt
      fi
      raid_t "4r.$tn done"
      raid_refuse=0
    done
  fi
  # XR: "repair" of other copies with the same flipped bytes (r-mr-SET),
  # never checked; last, watched: see X
  t4=$(up)
  for s in $xs; do raid_attach "r$s" XR "$s" "r-mr-$s" $(raid_roles "$s"); done
  raid_attached
  for s in $xs; do
    raid_ok "r$s" && raid_create XR "$s" "rr-$s" "$(raid_table "r$s" /etc/raid/$s.table)" || continue
    raid_out status XR "$s" first "[$(dmsetup status rr-$s)]"
    chk "raid-XR-$s-message-repair" dmsetup message rr-$s 0 repair || continue
    raid_watch 30 "repair of rr-$s"
    raid_wait rr-$s || res "raid-XR-$s-repair-finished" FAIL "(after 60 s: $rw_st)"
    raid_unwatch
    raid_out status XR "$s" repaired "[$rw_st]"
  done
  dmesg | grep -E 'md/raid|md:|dm-raid|raid' | tail -25 | sed 's/^/NBDVM-DMESG raid /'
  echo "NBDVM-TIME raid $t -> $(up) (1+3: $t -> $t1: attach+create -> $ta, polls -> $tp, sha -> $ts, check -> $tc, remove -> $tr, degraded -> $t1; 2: $t1 -> $tw, W+KW: $tw -> $t2, R+X: $t2 -> $t3, 4: $t3 -> $t4, XR: $t4 -> $(up))"
}

[ "${RUN_E2E:-1}" = 1 ] && { e2e_ext4; e2e_readonly; e2e_error; }
[ "${RUN_ORACLE:-1}" = 1 ] && oracle
[ "${RUN_LW:-1}" = 1 ] && logwrites
[ "${RUN_SNAP:-1}" = 1 ] && snapshot
[ "${RUN_MIRROR:-1}" = 1 ] && mirror
[ "${RUN_CRYPT:-1}" = 1 ] && crypt
[ "${RUN_THIN:-1}" = 1 ] && thin
[ "${RUN_RAID:-1}" = 1 ] && raid
echo "NBDVM-TARGETS $(dmsetup targets | tr '\n' ' ')"
# kernel messages were kept off the console (loglevel=3); show the interesting ones
dmesg | grep -iE 'nbd|device-mapper|EXT4|I/O error|blk_update' | tail -40 | sed 's/^/NBDVM-DMESG /'
[ $FAIL = 0 ] && echo "NBDVM-RESULT: PASS" || echo "NBDVM-RESULT: FAIL"
exit $FAIL
