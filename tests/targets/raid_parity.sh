#!/bin/bash
# raid_parity.sh - dm-raid's parity levels (raid4, raid5_*, raid6_*) driven by
# fio over NBD, the legs checked against parity.py, an oracle written from
# md's raid5.c (where each row's data, P and Q go; P the XOR, Q the GF(2^8)
# syndrome):
# 1. raid5_ls, 4 legs: leg 2 fails (its device is reloaded with the error
#    target) in the middle of fio's writes: fio sees no error and verifies
#    every block (the reads of leg 2's chunks rebuilt from the others); the
#    status shows it D. The leg comes back and a suspend/resume re-adds it;
#    after the recovery the array reads as it did degraded, a second fio pass
#    verifies every block again, `check` counts no mismatch, and every row of
#    every leg is what the oracle says.
#    A scribbled parity chunk: `check` counts its 4 KiB (8 sectors, as md),
#    `repair` rewrites it.
# 2. raid6_zr, 5 legs: the same with legs 1 and 3 failing; their bytes are
#    wiped, and a reload with `rebuild 1 rebuild 3` rebuilds both from P and Q.
# 3. raid4: the parity is on the first leg: leg 0 is the XOR of legs 1-3.
# 4. every other layout (raid5_la/ra/rs/n, raid6_nr/nc/n_6/la_6/ra_6/ls_6/rs_6)
#    on 2 MiB legs: written with random bytes, the legs as the oracle says;
#    with one leg (raid6: two) failed, the array still reads back those bytes.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
cd "$WORK" || fail "no work dir"
SECTORS=32768  # 16 MiB per leg
SMALL=4096     # 2 MiB per leg: the layouts of step 4
CHUNK=128      # 64 KiB
for i in 0 1 2 3 4; do truncate -s 16M leg$i.img; truncate -s 1M meta$i.img; done

# ptable TYPE LEG_SECTORS LEGS [PARAM...]: a table of TYPE over the first LEGS
# leg devices l0.., metadata on meta0.img.., chunk 64 KiB, and PARAMs.
ptable() {
  local type=$1 leg=$2 n=$3 data pairs="" i params
  shift 3
  params="$CHUNK region_size 1024${*:+ $*}"
  case $type in raid6*) data=$((n - 2)) ;; *) data=$((n - 1)) ;; esac
  for ((i = 0; i < n; i++)); do pairs+=" $WORK/meta$i.img l$i"; done
  echo "0 $((data * leg)) raid $type $(wc -w <<< "$params") $params $n$pairs"
}
R5=$(ptable raid5_ls $SECTORS 4)
{
  echo "listen: [ \"unix://$WORK/nbd.sock\" ]"
  echo "control: $WORK/ctl.sock"
  echo "devices:"
  for i in 0 1 2 3 4; do
    echo "  - { name: l$i, table: \"0 $SECTORS linear $WORK/leg$i.img 0\" }"
  done
  echo "  - { name: r, table: \"$R5\" }"
} > "$WORK/cfg.yaml"
dmnbd_start "$WORK/cfg.yaml"
URI="nbd+unix:///r?socket=$WORK/nbd.sock"

# new_set TABLE: r becomes a new raid set (zeroed metadata) with TABLE; the
# old set is replaced first, so it writes no superblock over the new ones.
new_set() {
  dm reload r --table "0 $SECTORS zero" || fail "reload r as zero failed"
  for i in 0 1 2 3 4; do truncate -s 0 meta$i.img; truncate -s 1M meta$i.img; done
  dm reload r --table "$1" || fail "reload r as $(awk '{print $4}' <<< "$1") failed"
}
legs_back() { # IDX...: leg devices back to linear over their files
  local i
  for i in "$@"; do
    dm reload "l$i" --table "0 $SECTORS linear $WORK/leg$i.img 0" || fail "reload l$i back failed"
  done
}
# oracle TYPE ARRAY LEGS: parity.py's check of leg0.img.. against ARRAY's bytes.
oracle() {
  local legs=() i
  for ((i = 0; i < $3; i++)); do legs+=("leg$i.img"); done
  "$PY" "$TARGETS_DIR/parity.py" check "$1" $((CHUNK * 512)) "$2" "${legs[@]}"
}
dump() { timeout 60 nbdcopy "$URI" "$1"; }  # the array's bytes into file $1
mismatches_after_check() { # the mismatch count of a `check` run to its end
  dm message r 0 check && raid_wait_idle r && raid_field r 9
}

check "a new raid5 set resyncs" raid_wait_idle r
check "status" is "$(dm status r)" "0 $((3 * SECTORS)) raid raid5_ls 4 AAAA $SECTORS/$SECTORS idle 0 0 -"
check "table" is "$(dm table r)" "$R5"

# ---- 1. raid5_ls, leg 2 fails under fio, comes back, is recovered
fail_under_fio 1 r5 r 48m l2
check "1: leg 2 shows D [$(dm status r)]" is "$(raid_field r 6)" AADA
dump degraded.img
legs_back 2
dm suspend r && dm resume r || fail "suspend/resume r failed"
check "1: the returning leg is recovered" raid_wait_idle r
check "1: status AAAA again [$(dm status r)]" is "$(raid_field r 6)" AAAA
fio_verify r5 r 48m --verify_only
check "1: after the recovery fio verifies every block again" fio_wait r5
check "1: with no error" fio_clean r5
check "1: check counts no mismatch" is "$(mismatches_after_check)" 0
dump array.img
check "1: the array reads as it did degraded" cmp degraded.img array.img
check "1: every row of every leg is what md's raid5_ls layout puts there" oracle raid5_ls array.img 4
# Row 0's P is on leg 3 (left-symmetric: data_disks - row % disks).
cp leg3.img leg3.saved
printf 'scribble' | dd of=leg3.img bs=1 seek=100 conv=notrunc status=none
check "1: check counts the scribbled 4 KiB of parity as 8 sectors" is "$(mismatches_after_check)" 8
check "1: repair" dm message r 0 repair
check "1: repair finishes" raid_wait_idle r
check "1: and rewrites the parity" cmp leg3.img leg3.saved
check "1: a check after the repair counts nothing" is "$(mismatches_after_check)" 0

# ---- 2. raid6_zr, legs 1 and 3 fail under fio, are wiped and rebuilt
R6=$(ptable raid6_zr $SECTORS 5)
new_set "$R6"
check "2: a new raid6 set resyncs" raid_wait_idle r
check "2: status" is "$(dm status r)" "0 $((3 * SECTORS)) raid raid6_zr 5 AAAAA $SECTORS/$SECTORS idle 0 0 -"
fail_under_fio 2 r6 r 48m l1 l3
check "2: legs 1 and 3 show D [$(dm status r)]" is "$(raid_field r 6)" ADADA
dump degraded.img
dd if=/dev/zero of=leg1.img bs=1M count=16 conv=notrunc status=none
dd if=/dev/zero of=leg3.img bs=1M count=16 conv=notrunc status=none
legs_back 1 3
dm reload r --table "$(ptable raid6_zr $SECTORS 5 rebuild 1 rebuild 3)" ||
  fail "reload r with rebuild 1 rebuild 3 failed"
check "2: both wiped legs are rebuilt" raid_wait_idle r
check "2: status AAAAA again [$(dm status r)]" is "$(raid_field r 6)" AAAAA
fio_verify r6 r 48m --verify_only
check "2: after the rebuild fio verifies every block again" fio_wait r6
check "2: with no error" fio_clean r6
check "2: check counts no mismatch" is "$(mismatches_after_check)" 0
dump array.img
check "2: the array reads as it did with two legs failed" cmp degraded.img array.img
check "2: every row of every leg is what md's raid6_zr layout puts there" oracle raid6_zr array.img 5

# ---- 3. raid4: the parity on the first leg
new_set "$(ptable raid4 $SECTORS 4)"
check "3: a new raid4 set resyncs" raid_wait_idle r
head -c 48M /dev/urandom > data.img
check "3: 48 MiB of random bytes written" timeout 60 nbdcopy data.img "$URI"
check "3: leg 0 is the XOR of legs 1, 2 and 3" \
  "$PY" "$TARGETS_DIR/parity.py" xor $((SECTORS * 512)) leg0.img leg1.img leg2.img leg3.img
check "3: the array's first chunk is the start of leg 1" \
  cmp -n $((CHUNK * 512)) data.img leg1.img
check "3: every row as md's raid4 (ALGORITHM_PARITY_0)" oracle raid4 data.img 4

# ---- 4. the other layouts, healthy and degraded
for type in raid5_la raid5_ra raid5_rs raid5_n raid6_nr raid6_nc raid6_n_6 raid6_la_6 \
  raid6_ra_6 raid6_ls_6 raid6_rs_6; do
  case $type in raid6*) n=5 failed="0 2" ;; *) n=4 failed=0 ;; esac
  new_set "$(ptable $type $SMALL $n)"
  check "4: $type: a new set resyncs" raid_wait_idle r
  head -c $((3 * SMALL * 512)) data.img > small.img  # 3 data legs, raid5 and raid6 alike
  check "4: $type: 6 MiB of random bytes written" timeout 60 nbdcopy small.img "$URI"
  check "4: $type: the legs as md's layout" oracle $type small.img $n
  for i in $failed; do dm reload "l$i" --table "0 $SECTORS error" || fail "reload l$i failed"; done
  rm -f back.img
  dump back.img
  check "4: $type: with legs $failed failed, the array reads back the same bytes" cmp small.img back.img
  legs_back $failed
done
pass
