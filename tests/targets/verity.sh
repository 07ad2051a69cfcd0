#!/bin/bash
# verity.sh - the verity target over trees made by veritysetup format on plain
# files (type 1 and 0, 4096- and 512-byte blocks, sha256/sha1/sha512, with and
# without a salt, the tree in its own file or inside the data file at an
# offset): every export reads back byte for byte as its data file; one flipped
# byte in a data file fails exactly that block's reads (the block veritysetup
# verify names) and turns the status to C; a read-write table is refused; and
# an ext4 image served through verity reads (a file copied out with debugfs,
# and mounted via nbdfuse + loop), and after one flipped byte in a file of it
# that file fails with EIO while the rest reads.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
command -v veritysetup > /dev/null || { echo "SKIP verity: veritysetup missing (cryptsetup-bin)"; exit 77; }
make_work
cd "$WORK" || exit 1

# vformat NAME DATA HASH ARGS...: veritysetup format; $NAME_root, $NAME_salt
vformat() {
  local name=$1 data=$2 hash=$3; shift 3
  timeout 60 veritysetup format "$@" "$data" "$hash" > "$name.fmt" 2>&1 || fail "veritysetup format $name: $(cat "$name.fmt")"
  printf -v "${name}_root" %s "$(sed -n 's/^Root hash:[ \t]*//p' "$name.fmt")"
  printf -v "${name}_salt" %s "$(sed -n 's/^Salt:[ \t]*//p' "$name.fmt")"
}

head -c 16M /dev/urandom > d1.img
cp d1.img d2.img; cp d1.img d4.img; head -c 4M d1.img > d3.img; head -c 8M d1.img > d5.img
vformat v1 d1.img h1.img                                    # type 1, sha256, 4096/4096, random salt
vformat v2 d2.img h2.img --format 0 --salt -                # Chrome OS type 0, no salt
vformat v3 d3.img h3.img --data-block-size 512 --hash-block-size 512 --salt 00112233445566778899aabbccddeeff
vformat v4 d4.img h4.img --hash sha1 --no-superblock
vformat v6 d1.img h6.img --hash sha512 --data-block-size 1024 --hash-block-size 2048
# The tree inside the data file, after the 8 MiB of data (hash_start counts the superblock).
cp d5.img c5.img; truncate -s 12M c5.img
vformat v5 c5.img c5.img --hash-offset $((8 << 20)) --data-blocks 2048
[ -z "$v2_salt" ] || [ "$v2_salt" = "-" ] || fail "type 0 --salt - printed a salt: $v2_salt"

T1="0 32768 verity 1 d1.img h1.img 4096 4096 4096 1 sha256 $v1_root $v1_salt"
T2="0 32768 verity 0 d2.img h2.img 4096 4096 4096 1 sha256 $v2_root -"
T3="0 8192 verity 1 d3.img h3.img 512 512 8192 1 sha256 $v3_root $v3_salt"
T4="0 32768 verity 1 d4.img h4.img 4096 4096 4096 0 sha1 $v4_root $v4_salt"
T5="0 16384 verity 1 c5.img c5.img 4096 4096 2048 $(((8 << 20) / 4096 + 1)) sha256 $v5_root $v5_salt"
T6="0 32768 verity 1 d1.img h6.img 1024 2048 16384 1 sha512 $v6_root $v6_salt"
cat > cfg.yaml <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
devices:
  - { name: v1, read_only: true, table: "$T1" }
  - { name: v2, read_only: true, table: "$T2" }
  - { name: v3, read_only: true, table: "$T3" }
  - { name: v4, read_only: true, table: "$T4" }
  - { name: v5, read_only: true, table: "$T5" }
  - { name: v6, read_only: true, table: "$T6" }
YAML
_targets_write_io_py
dmnbd_start cfg.yaml
for _ in $(seq 50); do [ -S ctl.sock ] && break; sleep 0.1; done
uri() { echo "nbd+unix:///$1?socket=$WORK/nbd.sock"; }

for n in 1 2 3 4 5 6; do
  t="T$n"
  check "v$n: table as given" is "$(dm table "v$n")" "${!t}"
  check "v$n: status V" is "$(dm status "v$n")" "$(echo "${!t}" | cut -d' ' -f1-3) V"
done
copy_matches() {  # EXPORT FILE [BYTES]
  rm -f out.img
  timeout 120 nbdcopy "$(uri "$1")" out.img || return 1
  if [ -n "${3:-}" ]; then cmp out.img <(head -c "$3" "$2"); else cmp out.img "$2"; fi
}
check "v1 (type 1, sha256, salt) reads as its data" copy_matches v1 d1.img
check "v2 (type 0, no salt) reads as its data" copy_matches v2 d2.img
check "v3 (512-byte blocks, salt) reads as its data" copy_matches v3 d3.img
check "v4 (sha1, no superblock) reads as its data" copy_matches v4 d4.img
check "v5 (tree in the data file) reads as its data" copy_matches v5 c5.img $((8 << 20))
check "v6 (sha512, 1024/2048) reads as its data" copy_matches v6 d1.img
check "nbdinfo: v1 is 16 MiB and read-only" \
  sh -c "timeout 30 nbdinfo '$(uri v1)' | grep -q 'export-size: 16777216' && timeout 30 nbdinfo '$(uri v1)' | grep -q 'is_read_only: true'"
check "second pass still reads right" copy_matches v1 d1.img
# 4096-byte blocks are the exports' logical block; a 512-byte read inside one
# (libnbd's alignment check off) is served from the whole block, checked.
small_read() {  # EXPORT OFFSET: sha1 of the 512 bytes there, or the error
  timeout 30 "$PY" - "$(uri "$1")" "$2" <<'PY'
import errno, hashlib, sys, nbd
h = nbd.NBD()
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)
h.connect_uri(sys.argv[1])
try:
    print(hashlib.sha1(h.pread(512, int(sys.argv[2]))).hexdigest())
except nbd.Error as e:
    print("error", errno.errorcode.get(e.errno, e.errno))
PY
}
check "v1: a 512-byte read at sector 3" is "$(small_read v1 1536)" "$(dd if=d1.img bs=512 skip=3 count=1 status=none | sha1sum | cut -d' ' -f1)"
check "nbdinfo: v1's minimum block size is 4096" sh -c "timeout 30 nbdinfo '$(uri v1)' | grep -q 'block_size_minimum: 4096'"

# One flipped byte in data block 1000 of d4.img (sha1) and in block 5000 of
# d3.img (512-byte blocks); veritysetup verify is the oracle for which block.
flip() { printf "\\x$(printf %02x $((0x$(od -An -tx1 -j "$2" -N1 "$1" | tr -d ' ') ^ 0xff)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
flip d4.img $((1000 * 4096 + 123))
flip d3.img $((5000 * 512 + 7))
oracle_block() {  # DATA HASH ROOT BLOCKSIZE ARGS...: the block veritysetup verify fails at
  local data=$1 hash=$2 root=$3 bs=$4 pos; shift 4
  pos=$(timeout 60 veritysetup verify "$@" "$data" "$hash" "$root" 2>&1 | sed -n 's/.*Verification failed at position \([0-9]*\).*/\1/p' | head -1)
  [ -n "$pos" ] && echo $((pos / bs))
}
check "veritysetup verify: d4 fails at block 1000" is "$(oracle_block d4.img h4.img "$v4_root" 4096 --no-superblock --hash sha1 --salt "$v4_salt")" 1000
check "veritysetup verify: d3 fails at block 5000" is "$(oracle_block d3.img h3.img "$v3_root" 512)" 5000
EXPORT=v4
check "v4: block 1000 fails" is "$(nbdio read:$((1000 * 4096)):4096 | cut -d' ' -f1)" EIO
check "v4: a read covering it fails" is "$(nbdio read:$((998 * 4096)):16384 | cut -d' ' -f1)" EIO
check "v4: its neighbours read" is "$(nbdio read:$((999 * 4096)):4096 read:$((1001 * 4096)):4096 | cut -d' ' -f1 | tr '\n' ' ')" "ok ok "
check "v4: status C" is "$(dm status v4)" "0 32768 verity C"
check "v4: a 512-byte read inside block 1000 fails too" is "$(small_read v4 $((1000 * 4096 + 3584)))" "error EIO"
check "v1: still V" is "$(dm status v1)" "0 32768 verity V"
EXPORT=v3
check "v3: block 5000 fails" is "$(nbdio read:$((5000 * 512)):512 | cut -d' ' -f1)" EIO
check "v3: blocks 4999 and 5001 read" is "$(nbdio read:$((4999 * 512)):512 read:$((5001 * 512)):512 | cut -d' ' -f1 | tr '\n' ' ')" "ok ok "
check "v3: status C" is "$(dm status v3)" "0 8192 verity C"
# Every other block of v4 still reads as the file: nbdcopy fails as a whole,
# so read the two halves around the bad block.
check "v4: everything else reads right" sh -c "timeout 60 $PY - <<'PY'
import nbd
h = nbd.NBD(); h.connect_uri('$(uri v4)')
data = open('d4.img', 'rb').read()
a = h.pread(1000 * 4096, 0); b = h.pread(len(data) - 1001 * 4096, 1001 * 4096)
assert a == data[:1000 * 4096] and b == data[1001 * 4096:], 'mismatch'
PY"

# A read-write table is refused, as the kernel refuses it.
sed 's/read_only: true/read_only: false/' cfg.yaml | sed "s|$WORK/nbd.sock|$WORK/rw.sock|; s|$WORK/ctl.sock|$WORK/rwctl.sock|" > rw.yaml
timeout 20 "$DMNBD" serve rw.yaml > rw.log 2>&1
check "a read-write verity table does not load" grep -q "verity: Device must be readonly" rw.log

# ext4 through verity: a file written into an image, the image formatted,
# served, copied out and the file read with debugfs; e2fsck finds it clean.
mkdir -p root/dir && head -c 300000 /dev/urandom > root/dir/blob && echo "hello verity" > root/hello.txt
quiet timeout 60 mkfs.ext4 -q -F -b 4096 -d root e.img 32M || fail "mkfs.ext4 -d failed"
vformat ve e.img eh.img
TE="0 65536 verity 1 e.img eh.img 4096 4096 8192 1 sha256 $ve_root $ve_salt"
check "ext4: dm create --readonly" dm create ve --readonly --table "$TE"
check "ext4: the verity device loads" is "$(dm status ve 2>/dev/null)" "0 65536 verity V"
rm -f out.img
timeout 60 nbdcopy "$(uri ve)" out.img
check "ext4: hello.txt reads out" is "$(debugfs -R 'cat /hello.txt' out.img 2>/dev/null)" "hello verity"
check "ext4: dir/blob reads out" sh -c "debugfs -R 'cat /dir/blob' out.img 2>/dev/null | cmp - root/dir/blob"
check "ext4: e2fsck -fn is clean" quiet timeout 60 e2fsck -fn out.img

# The kernel reading it: nbdfuse + a loop device, mounted read-only; then one
# byte of dir/blob's second block flipped in the image: the mount still
# works, the file's read fails with EIO, the other file reads.
for dev in /dev/fuse /dev/loop-control; do
  [ -e "$dev" ] || { echo "# no $dev: the mount part is skipped (needs root, fuse and loop)"; pass; }
done
mkdir -p fuse mnt
on_cleanup fuse_teardown
mount_ve() {
  rm -f nbdfuse.pid
  nbdfuse -r -P nbdfuse.pid fuse "$(uri ve)" > nbdfuse.log 2>&1 &
  for _ in $(seq 100); do [ -s nbdfuse.pid ] && break; sleep 0.1; done
  FUSE_PID=$(cat nbdfuse.pid 2>/dev/null)
  [ -e fuse/nbd ] || fail "nbdfuse did not come up: $(cat nbdfuse.log)"
  FUSE_MOUNTED=1
  LOOP=$(timeout 30 losetup -r -f --show fuse/nbd) || fail "losetup failed"
  timeout 30 mount -t ext4 -o ro,noload "$LOOP" mnt && MOUNTED=1
}
mount_ve
check "mounted: hello.txt reads" is "$(cat mnt/hello.txt)" "hello verity"
check "mounted: dir/blob reads" cmp mnt/dir/blob root/dir/blob
fuse_teardown
blob_block=$(debugfs -R 'bmap /dir/blob 1' e.img 2>/dev/null)
[ -n "$blob_block" ] || fail "debugfs bmap found no block for dir/blob"
flip e.img $((blob_block * 4096 + 100))
mount_ve
check "mounted after the flip: hello.txt reads" is "$(cat mnt/hello.txt)" "hello verity"
check "mounted after the flip: reading dir/blob fails with EIO" sh -c "! cat mnt/dir/blob > /dev/null 2> cat.err && grep -q 'Input/output error' cat.err"
check "status C" is "$(dm status ve)" "0 65536 verity C"
fuse_teardown
pass
