#!/bin/bash
# luks.sh - LUKS volumes made by cryptsetup luksFormat, served by dmnbd:
# LUKS1 (pbkdf2), LUKS2 (argon2id with 32 MiB) and LUKS2 with 4 KiB sectors,
# opened through the config (luks:, one read-only) and through `dmnbd luks
# open`; an ext4 image copied onto each export and back is clean and its file
# reads back; what `cryptsetup reencrypt --encrypt` made of a plain file reads
# as the original; what dmnbd wrote, cryptsetup reencrypt (offline, in
# userspace: it decrypts with the old key, encrypts with a new one) turns into
# a volume that reads back as that plaintext, LUKS1 (converted to LUKS2) and
# LUKS2; wrong passphrases, damaged headers, open key files and a device that
# is not crypt are refused with their reasons and leave no device; tables mask
# the key (--showkeys shows cryptsetup's volume key) and the server log holds
# neither a passphrase nor a key.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
for tool in cryptsetup mke2fs e2fsck debugfs nbdcopy; do
  command -v "$tool" > /dev/null || { echo "SKIP luks: $tool missing"; exit 77; }
done
cd "$WORK" || fail "no work dir"
_targets_write_io_py
FAST=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)
# pw ends in a newline: a key file is the whole file, as cryptsetup reads it.
printf 'first pass phrase\n' > pw; chmod 600 pw
printf 'second pass' > pw2; chmod 600 pw2
format() {  # format FILE SIZE ARGS...
  local f=$1 size=$2; shift 2
  truncate -s "$size" "$f" && quiet cryptsetup luksFormat -q "$@" "$f"
}
format v1.img 64M --type luks1 --key-file pw "${FAST[@]}" || fail "luksFormat luks1"
format v2.img 64M --type luks2 --key-file pw2 --pbkdf argon2id --pbkdf-memory 32768 \
  --pbkdf-force-iterations 4 || fail "luksFormat luks2 argon2id"
format v4.img 64M --type luks2 --key-file pw --sector-size 4096 "${FAST[@]}" || fail "luksFormat luks2 4k"
volume_key() {  # the hex volume key cryptsetup keeps in FILE
  cryptsetup luksDump --dump-volume-key --key-file "$2" -q "$1" |
    sed -n '/MK dump:/,/^[^ \t]/p' | sed 's/MK dump://' | grep -E '^\s+([0-9a-f]{2} ?)+\s*$' | tr -d ' \t\n'
}
K1=$(volume_key v1.img pw) K2=$(volume_key v2.img pw2) K4=$(volume_key v4.img pw)
[ ${#K1} = 128 ] && [ ${#K2} = 128 ] && [ ${#K4} = 128 ] || fail "luksDump gave no volume keys"
ZERO=$(printf '0%.0s' $(seq 128))

cat > cfg.yaml <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
devices:
  - name: v1
    luks: { file: v1.img, key_file: pw }
  - name: v4
    read_only: true
    luks: { file: v4.img, key_file: pw }
YAML
dmnbd_start cfg.yaml
uri() { echo "nbd+unix:///$1?socket=$WORK/nbd.sock"; }

# ---- tables: cryptsetup's line, the key masked unless asked for
check "v1: LUKS1 table (data offset 4096, the key masked)" is "$(dm table v1)" \
  "0 126976 crypt aes-xts-plain64 $ZERO 0 $WORK/v1.img 4096"
check "v1: --showkeys shows cryptsetup's volume key" is "$(dm table v1 --showkeys)" \
  "0 126976 crypt aes-xts-plain64 $K1 0 $WORK/v1.img 4096"
check "v4: LUKS2 4 KiB table (sector_size:4096)" is "$(dm table v4 --showkeys)" \
  "0 98304 crypt aes-xts-plain64 $K4 0 $WORK/v4.img 32768 1 sector_size:4096"
check "v4: read-only" grep -q "READ-ONLY" <<<"$(dm info v4)"
check "v4: a write is refused" is "$(EXPORT=v4 nbdio write:0:4096:0x61)" EPERM
check "v4: reads" is "$(EXPORT=v4 nbdio read:0:4096 | cut -d' ' -f1)" ok

# ---- dmnbd luks open: a key file, a line of stdin, all of stdin
check "luks open v2 (argon2id) with --key-file" dm luks open v2.img v2 --key-file pw2
check "v2: LUKS2 table" is "$(dm table v2 --showkeys)" \
  "0 98304 crypt aes-xts-plain64 $K2 0 $WORK/v2.img 32768 1 sector_size:4096"
check "v2: luks close" dm luks close v2
check "luks open: the passphrase as one line of stdin" sh -c "printf 'second pass\nignored' | timeout 60 '$DMNBD' --control ctl.sock luks open v2.img v2"
check "luks close v2" dm luks close v2
check "luks open --key-file - reads all of stdin" sh -c "timeout 60 '$DMNBD' --control ctl.sock luks open v2.img v2 --key-file - < pw2"
check "v2 is back" is "$(dm ls | cut -f1 | sort | tr '\n' ' ')" "v1 v2 v4 "

# ---- ext4 through each writable export: an image made with mke2fs -d,
# copied on, copied back, checked and its file read
mkdir -p tree && head -c 3M /dev/urandom > tree/f && echo hello > tree/small
ext4_round_trip() {  # EXPORT
  local e=$1 size
  size=$(nbdinfo --size "$(uri "$e")") || return 1
  rm -f "fs-$e.img" "back-$e.img"
  quiet mke2fs -q -t ext4 -d tree "fs-$e.img" "$((size / 1024))k" || return 1
  nbdcopy "fs-$e.img" "$(uri "$e")" || return 1
  nbdcopy "$(uri "$e")" "back-$e.img" || return 1
  quiet e2fsck -fn "back-$e.img" || return 1
  cmp <(debugfs -R "cat /f" "back-$e.img" 2>/dev/null) tree/f
}
check "v1 (LUKS1, config): ext4 image on and back, e2fsck clean, file reads" ext4_round_trip v1
check "v2 (LUKS2 argon2id, luks open): the same" ext4_round_trip v2
check "the volume file holds no plaintext" sh -c "! grep -q hello v1.img"

# ---- what cryptsetup encrypted, dmnbd reads
head -c 64M /dev/urandom > plain.img; cp plain.img plain.orig
quiet cryptsetup reencrypt -q --encrypt --type luks2 --reduce-device-size 32M --key-file pw \
  "${FAST[@]}" plain.img || fail "cryptsetup reencrypt --encrypt"
check "luks open of a cryptsetup-encrypted file" dm luks open plain.img enc --key-file pw
nbdcopy "$(uri enc)" enc.out
check "it reads as the original plaintext" cmp <(head -c 32M enc.out) <(head -c 32M plain.orig)
check "luks close enc" dm luks close enc

# ---- what dmnbd encrypted, cryptsetup decrypts: written through dmnbd,
# reencrypted offline by cryptsetup (old key -> new key), read back
head -c 40M /dev/urandom > data.bin
reencrypt_round_trip() {  # VOLUME KEYFILE CONVERT
  local v=$1 k=$2 convert=$3
  cp "$v" "re-$v" && dm luks open "re-$v" re --key-file "$k" || return 1
  nbdcopy data.bin "$(uri re)" && dm luks close re || return 1
  if [ "$convert" = 1 ]; then quiet cryptsetup convert -q --type luks2 "re-$v" || return 1; fi
  local before; before=$(volume_key "re-$v" "$k")
  quiet cryptsetup reencrypt -q --force-offline-reencrypt --key-file "$k" "${FAST[@]}" "re-$v" || return 1
  [ "$(volume_key "re-$v" "$k")" != "$before" ] || { echo "#   the volume key did not change"; return 1; }
  dm luks open "re-$v" re --key-file "$k" || return 1
  nbdcopy "$(uri re)" "re-$v.out"; dm luks close re || return 1
  cmp <(head -c 40M "re-$v.out") data.bin
}
check "LUKS1: written by dmnbd, reencrypted by cryptsetup, reads back" reencrypt_round_trip v1.img pw 1
check "LUKS2 4 KiB: the same" reencrypt_round_trip v4.img pw 0

# ---- refusals: clear errors, no device left
refused() {  # WANT_TEXT ARGS... : luks open fails with exit 1 and WANT_TEXT, no device made
  local want=$1 out rc; shift
  out=$(dm luks open "$@" 2>&1); rc=$?
  [ "$rc" = 1 ] || { echo "#   exit $rc: $out"; return 1; }
  grep -qF "$want" <<<"$out" || { echo "#   said: $out"; return 1; }
  [ "$(dm ls | cut -f1 | sort | tr '\n' ' ')" = "v1 v2 v4 " ] || { echo "#   devices: $(dm ls)"; return 1; }
}
printf 'wrong' > bad; chmod 600 bad
check "wrong passphrase" refused "no key slot matches the passphrase for $WORK/v1.img" v1.img x --key-file bad
printf 'first pass phrase' > pw-no-newline; chmod 600 pw-no-newline
check "the key file's newline is part of the passphrase (none stripped)" \
  refused "no key slot matches" v1.img x --key-file pw-no-newline
cp v1.img dam1.img && dd if=/dev/zero of=dam1.img bs=4096 count=1 conv=notrunc status=none
check "LUKS1 with its first 4 KiB zeroed" \
  refused "Device $WORK/dam1.img is not a valid LUKS device, or its header is damaged" dam1.img x --key-file pw
cp v4.img dam2.img && dd if=/dev/zero of=dam2.img bs=4096 count=1 conv=notrunc status=none
check "LUKS2 with its first 4 KiB zeroed opens from the second header, as cryptsetup does" \
  dm luks open dam2.img dam2 --key-file pw
check "... and closes" dm luks close dam2
dd if=/dev/zero of=dam2.img bs=32K count=1 conv=notrunc status=none
check "LUKS2 with both headers zeroed" refused "is not a valid LUKS device" dam2.img x --key-file pw
check "not a LUKS file" refused "is not a valid LUKS device" data.bin x --key-file pw
check "a missing file" refused "cannot open $WORK/nope.img: No such file or directory" nope.img x --key-file pw
chmod 644 bad
check "a key file others may read" refused "permissions 0644 are too open" v1.img x --key-file bad
dm create z --table "0 8 zero"
out=$(dm luks close z 2>&1); rc=$?
check "luks close of a zero device: refused" is "$rc:$out" "1:dmnbd luks close: z is not a crypt device (its table maps zero)"
check "... and it is still there" quiet dm info z
dm remove z

# ---- the config refuses a wrong key file, an open one, before anything is served
bad_config() {  # KEYFILE WANT_TEXT
  cat > bad.yaml <<YAML
listen: [ "unix://$WORK/bad.sock" ]
control: $WORK/bad-ctl.sock
devices:
  - name: b
    luks: { file: v1.img, key_file: $1 }
YAML
  local out rc; out=$(timeout 60 "$DMNBD" serve bad.yaml 2>&1); rc=$?
  [ "$rc" = 2 ] && grep -qF "$2" <<<"$out" && [ ! -e bad.sock ] || { echo "#   exit $rc: $out"; return 1; }
}
chmod 600 bad
check "config: wrong passphrase" bad_config bad \
  "bad.yaml:5: device b: no key slot matches the passphrase for $WORK/v1.img"
chmod 640 bad
check "config: a group-readable key file" bad_config bad \
  "bad.yaml:5: device b: key file $WORK/bad: permissions 0640 are too open: group and others must have no access (chmod 600 $WORK/bad)"

# ---- no secret in the server's log
dmnbd_stop || fail "$STOP_REASON"
check "the server log says what it unlocked" grep -qF "device v1: LUKS volume $WORK/v1.img unlocked" server.log
for secret in "first pass phrase" "second pass" "$K1" "$K2" "$K4"; do
  check "the server log holds no '${secret:0:6}...'" sh -c "! grep -qiF '$secret' server.log"
done
pass
