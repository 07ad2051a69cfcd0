#!/bin/bash
# thin.sh - thin-pool and thin from real clients, checked by thin_check and
# thin_dump (thin-provisioning-tools) on the metadata the server wrote:
# 1. a fresh pool's status and table lines, as the kernel prints them;
# 2. a thin device: unprovisioned reads are zeroes, writes provision blocks,
#    the status counts them;
# 3. a snapshot (origin suspended, create_snap, resume): it keeps the old
#    bytes while the origin changes (a partial write copies the rest of the
#    block), a discard on it frees only what the origin does not share;
# 4. messages and constructors refused in the kernel's words;
# 5. out of data space with error_if_no_space: ENOSPC, status
#    out_of_data_space, then the pool grown by a reload is rw again;
# 6. kill -9 under fio's writes: the pool opens again, thin_check passes,
#    and what fio wrote and flushed before the kill reads back;
# 7. after a clean stop: thin_check, and thin_dump shows the devices.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/../../.ci/packages.sh"
command -v thin_check > /dev/null || {
  echo "# thin-provisioning-tools not installed"
  exit "$(packages_skip_status)"
}
make_work
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
files:
  - { path: meta.img, size: 4MiB }
  - { path: data.img, size: 64MiB }
  - { path: meta2.img, size: 4MiB }
  - { path: data2.img, size: 2MiB }
devices:
  - name: pool
    table: "0 131072 thin-pool meta.img data.img 128 0"
  - name: pool2
    table: "0 2048 thin-pool meta2.img data2.img 128 0 1 error_if_no_space"
YAML
_targets_write_io_py
dmnbd_start "$WORK/cfg.yaml"
EXPORT=thin1
thin_check_ok() { quiet thin_check "$WORK/$1"; }
refused() { ! dm "$@" 2> "$WORK/err"; }  # the reason is in $WORK/err

# ---- 1. a fresh pool
check "fresh pool status" is "$(dm status pool)" \
  "0 131072 thin-pool 0 111/1024 0/1024 - rw discard_passdown queue_if_no_space - 256 "
check "pool table" is "$(dm table pool)" "0 131072 thin-pool meta.img data.img 128 0 0 "
check "pool2 table keeps its feature" is "$(dm table pool2)" \
  "0 2048 thin-pool meta2.img data2.img 128 0 1 error_if_no_space "

# ---- 2. a thin device
check "create_thin 1" quiet dm message pool 0 create_thin 1
check "create the thin device" quiet dm create thin1 --table "0 131072 thin pool 1"
check "fresh thin status" is "$(dm status thin1)" "0 131072 thin 0 -"
check "unprovisioned reads are zeroes" is "$(nbdio read:0:4096 | cut -d' ' -f2)" 0000000000000000
check "writes" is "$(nbdio write:8192:4096:0x11 write:327680:65536:0x22 flush | tr '\n' ' ')" "ok ok ok "
check "read back" is "$(nbdio read:8192:512 read:327680:512 read:0:512 | cut -d' ' -f2 | tr '\n' ' ')" \
  "1111111111111111 2222222222222222 0000000000000000 "
check "the rest of a partly written block is zeroes" is "$(nbdio read:12288:512 | cut -d' ' -f2)" \
  0000000000000000
check "thin status: 2 blocks, highest 5" is "$(dm status thin1)" "0 131072 thin 256 767"
check "pool counts 2 data blocks" is "$(dm status pool | awk '{print $6}')" 2/1024

# ---- 3. a snapshot
check "suspend the origin" quiet dm suspend thin1
check "create_snap 2 1" quiet dm message pool 0 create_snap 2 1
check "resume the origin" quiet dm resume thin1
check "open the snapshot" quiet dm create snap2 --table "0 131072 thin pool 2"
check "a partial write to the origin" is "$(nbdio write:8192:512:0x33 flush | tr '\n' ' ')" "ok ok "
check "the origin reads it" is "$(nbdio read:8192:512 | cut -d' ' -f2)" 3333333333333333
check "and the rest of its block as it was" is "$(nbdio read:8704:512 | cut -d' ' -f2)" \
  1111111111111111
check "the snapshot reads the old bytes" is "$(EXPORT=snap2 nbdio read:8192:512 | cut -d' ' -f2)" \
  1111111111111111
check "the copy took a new block" is "$(dm status pool | awk '{print $6}')" 3/1024
check "discard of block 5 on the snapshot" is "$(EXPORT=snap2 nbdio trim:327680:65536 flush | tr '\n' ' ')" "ok ok "
check "  the snapshot reads zeroes there" is "$(EXPORT=snap2 nbdio read:327680:512 | cut -d' ' -f2)" \
  0000000000000000
check "  the origin still has its data" is "$(nbdio read:327680:512 | cut -d' ' -f2)" 2222222222222222
check "  and the shared block stays allocated" is "$(dm status pool | awk '{print $6}')" 3/1024
check "snapshot status" is "$(dm status snap2)" "0 131072 thin 128 127"

# ---- 4. refusals
check "create_thin of an existing id: refused" refused message pool 0 create_thin 1
check "  logged in the kernel's words" grep -q "Creation of new thinly-provisioned device with id 1 failed." "$WORK/server.log"
check "an id over 2^24-1: refused" refused message pool 0 create_thin 16777216
check "  logged" grep -q "Message received with invalid device id: 16777216" "$WORK/server.log"
check "a wrong argument count: refused" refused message pool 0 create_thin
check "  logged" grep -q "Message received with 1 arguments instead of 2." "$WORK/server.log"
check "delete of an open device: refused" refused message pool 0 delete 2
check "set_transaction_id with the wrong current id: refused" refused message pool 0 set_transaction_id 3 4
check "set_transaction_id 0 5" quiet dm message pool 0 set_transaction_id 0 5
check "  shows in the status" is "$(dm status pool | awk '{print $4}')" 5
check "reserve_metadata_snap" quiet dm message pool 0 reserve_metadata_snap
check "  shows a held root" test "$(dm status pool | awk '{print $7}')" != -
check "  a second one: refused" refused message pool 0 reserve_metadata_snap
check "release_metadata_snap" quiet dm message pool 0 release_metadata_snap
check "  no held root" is "$(dm status pool | awk '{print $7}')" -
check "a thin of an unknown id: refused" refused create t9 --table "0 2048 thin pool 9"
check "  with the reason" grep -q "Couldn't open thin internal device" "$WORK/err"
check "block size 192: refused" refused create p3 --table "0 2048 thin-pool meta2.img data2.img 192 0"
check "  with the reason" grep -q "Invalid block size" "$WORK/err"
check "an unknown feature: refused" refused create p3 --table "0 2048 thin-pool meta2.img data2.img 128 0 1 frob"
check "  with the reason" grep -q "Unrecognised pool feature requested" "$WORK/err"
check "a second pool on the same metadata: refused" refused create p3 --table "0 2048 thin-pool meta.img data.img 128 0"
check "  with the reason" grep -q "metadata device already in use by a pool" "$WORK/err"

# ---- 5. out of data space (pool2: 16 blocks of 64 KiB, error_if_no_space)
check "create_thin 1 on pool2" quiet dm message pool2 0 create_thin 1
check "its thin device" quiet dm create small --table "0 4096 thin pool2 1"
writes=$(for i in $(seq 0 15); do printf 'write:%d:65536:0x44 ' $((i * 65536)); done)
# shellcheck disable=SC2086
check "16 blocks fill the pool" is "$(EXPORT=small nbdio $writes | sort -u)" ok
check "the 17th write: ENOSPC" is "$(EXPORT=small nbdio write:1048576:4096:0x45)" ENOSPC
check "  status out_of_data_space" is "$(dm status pool2 | awk '{print $6, $8}')" \
  "16/16 out_of_data_space"
check "  rewriting a provisioned block still works" is "$(EXPORT=small nbdio write:0:4096:0x46)" ok
check "grow pool2 by a reload" quiet dm reload pool2 --table \
  "0 4096 thin-pool meta2.img data2.img 128 0 1 error_if_no_space"
check "  rw again with 32 blocks" is "$(dm status pool2 | awk '{print $6, $8}')" "16/32 rw"
check "  the write goes through now" is "$(EXPORT=small nbdio write:1048576:4096:0x45)" ok

# ---- 6. kill -9 under fio's writes
check "a thin for fio" quiet dm message pool 0 create_thin 3
check "  and its device" quiet dm create fiothin --table "0 65536 thin pool 3"
fio_verify load fiothin 16M
check "fio's verified writes to a thin device" fio_wait load
check "  saw no error" fio_clean load
check "a flushed write before the kill" is "$(EXPORT=fiothin nbdio write:20971520:4096:0x5a flush | tr '\n' ' ')" "ok ok "
kill_under_fio fiothin 16M
sed -i 's/0 2048 thin-pool meta2.img/0 4096 thin-pool meta2.img/' "$WORK/cfg.yaml"  # grown in 5.
check "thin_check of the killed pool's metadata" thin_check_ok meta.img
dmnbd_start "$WORK/cfg.yaml"
for _ in $(seq 50); do [ -S "$WORK/ctl.sock" ] && break; sleep 0.1; done
check "the pool opens again" quiet dm create fiothin --table "0 65536 thin pool 3"
check "  the flushed write is there" is "$(EXPORT=fiothin nbdio read:20971520:512 | cut -d' ' -f2)" \
  5a5a5a5a5a5a5a5a
check "  the origin thin's data too" quiet dm create thin1 --table "0 131072 thin pool 1"
check "  reads back" is "$(nbdio read:8192:512 read:327680:512 | cut -d' ' -f2 | tr '\n' ' ')" \
  "3333333333333333 2222222222222222 "

# ---- 7. after a clean stop
dmnbd_stop || fail "$STOP_REASON"
check "thin_check of pool" thin_check_ok meta.img
check "thin_check of pool2" thin_check_ok meta2.img
thin_dump "$WORK/meta.img" > "$WORK/dump.xml" 2>&1
check "thin_dump: transaction 5" grep -q 'transaction="5"' "$WORK/dump.xml"
check "  devices 1, 2 and 3" is "$(grep -o 'dev_id="[0-9]*"' "$WORK/dump.xml" | tr '\n' ' ')" \
  'dev_id="1" dev_id="2" dev_id="3" '
check "  the snapshot's one block is the origin's old one" quiet \
  grep -A1 'dev_id="2"' "$WORK/dump.xml"
pass
