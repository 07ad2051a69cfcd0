#!/bin/bash
# crypt.sh - the crypt target through the NBD server and the CLI, with
# cryptsetup (its own userspace encryption, offline, on plain files) as the
# other side:
#  1. cryptsetup's ciphertext (reencrypt --encrypt of a known plaintext, with
#     aes-xts-plain64 at 512 and 4096-byte sectors and aes-cbc-essiv:sha256)
#     reads back as the plaintext through a crypt table of cryptsetup's
#     volume key; what dmnbd writes through a crypt table over a volume with
#     a detached header, `cryptsetup reencrypt --decrypt` turns back into
#     exactly the plaintext written.
#  2. the key is never in `dmnbd table` (zeroes, as dmsetup shows it), its
#     --json, `status`, the server log or an error; `table --showkeys`
#     shows it.
#  3. key wipe and key set over the CLI, only while suspended; a resume
#     without a key is refused and I/O waits; after key set it goes on.
#  4. sector_size:4096: the export advertises 4 KiB blocks and writes of
#     512 bytes at odd places are read-modify-written.
#  5. a user key in the kernel keyring (keyctl), shown by its reference.
#  6. a config with an inline key that others can read is refused.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
command -v cryptsetup > /dev/null || { echo "SKIP crypt: cryptsetup (cryptsetup-bin) missing"; [ "${CI:-}" = true ] && exit 1; exit 77; }
make_work
cd "$WORK" || fail "no work dir"
printf 'passphrase' > pw
CS=(-q --key-file pw --pbkdf pbkdf2 --pbkdf-force-iterations 1000)
U="nbd+unix:///c?socket=$WORK/nbd.sock"

# The volume key of a LUKS header, as hex.
volume_key() {
  cryptsetup luksDump -q --dump-volume-key --key-file pw "$1" \
    | sed -n '/MK dump/,/^[^ \t]/p' | sed 's/MK dump://' | tr -d ' \t\n'
}
serve() { # TABLE: export c over the table (config mode 600: it holds the key)
  cat > cfg.yaml <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
devices:
  - name: c
    table: "$1"
YAML
  chmod 600 cfg.yaml
  dmnbd_start cfg.yaml
}

# ---- 1. cryptsetup encrypts, dmnbd decrypts
head -c 8M /dev/urandom > plain.bin
for spec in "aes-xts-plain64 512" "aes-xts-plain64 4096" "aes-cbc-essiv:sha256 512"; do
  set -- $spec
  rm -f v.img; truncate -s 24M v.img; dd if=plain.bin of=v.img conv=notrunc status=none
  quiet cryptsetup reencrypt --encrypt --type luks2 --cipher "$1" --key-size 256 --sector-size "$2" \
    --reduce-device-size 16M "${CS[@]}" v.img || fail "cryptsetup reencrypt --encrypt $spec failed"
  off=$(($(cryptsetup luksDump v.img | awk '/offset:/ {print $2; exit}') / 512))
  opts=""; [ "$2" = 512 ] || opts=" 1 sector_size:$2"
  serve "0 16384 crypt $1 $(volume_key v.img) 0 $WORK/v.img $off$opts"
  nbdcopy "$U" out.bin || fail "nbdcopy from the export failed"
  check "$spec: cryptsetup's ciphertext reads as the plaintext" cmp out.bin plain.bin
  dmnbd_stop
done

# ---- 1b. dmnbd encrypts, cryptsetup decrypts (a detached header: data from byte 0)
truncate -s 16M data.img
quiet cryptsetup luksFormat --type luks2 --header hdr.img --sector-size 4096 "${CS[@]}" data.img \
  || fail "luksFormat failed"
KEY=$(volume_key hdr.img)
[ ${#KEY} = 128 ] || fail "no 64-byte volume key from luksDump"
serve "0 32768 crypt aes-xts-plain64 $KEY 0 $WORK/data.img 0 1 sector_size:4096"
head -c 16M /dev/urandom > p16.bin
nbdcopy p16.bin "$U" || fail "nbdcopy to the export failed"
check "the file holds ciphertext" bash -c "! cmp -s data.img p16.bin"

# ---- 2. the key stays hidden
ZEROES=$(printf '%0128d' 0)
check "table shows the key as zeroes" is "$(dm table c)" \
  "0 32768 crypt aes-xts-plain64 $ZEROES 0 $WORK/data.img 0 1 sector_size:4096"
check "table --showkeys shows it" is "$(dm table c --showkeys)" \
  "0 32768 crypt aes-xts-plain64 $KEY 0 $WORK/data.img 0 1 sector_size:4096"
check "--json table holds no key" bash -c "! $DMNBD --control $WORK/ctl.sock --json table c | grep -qi $KEY"
check "status holds no key" bash -c "! $DMNBD --control $WORK/ctl.sock status c | grep -qi $KEY"
# a load the server refuses: the error names the reason, not the key
out=$(dm load c --table "0 32768 crypt aes-xts-plain64 ${KEY}00 0 $WORK/data.img 0 1 sector_size:4096" 2>&1)
check "a refused table's error has no key" bash -c "! grep -qi '${KEY:0:32}' <<< '$out'"

# ---- 3. key messages
check "key wipe refused while live" bash -c "! $DMNBD --control $WORK/ctl.sock message c 0 key wipe 2>/dev/null"
dm suspend c || fail "suspend failed"
dm message c 0 key wipe || fail "key wipe failed"
check "wiped: the table shows zeroes even with --showkeys" is "$(dm table c --showkeys | cut -d' ' -f5)" "$ZEROES"
check "resume without a key is refused" bash -c "! $DMNBD --control $WORK/ctl.sock resume c 2>/dev/null"
dm message c 0 key set "$KEY" || fail "key set failed"
dm resume c || fail "resume after key set failed"
dmnbd_stop
quiet cryptsetup reencrypt --decrypt --force-offline-reencrypt --key-file pw --header hdr.img data.img \
  || fail "cryptsetup reencrypt --decrypt failed"
check "cryptsetup decrypts what dmnbd wrote" cmp data.img p16.bin
check "the server log holds no key" bash -c "! grep -qi '${KEY:0:32}' '$WORK/server.log'"

# ---- 4. 4 KiB encryption sectors and small writes
truncate -s 8M small.img
serve "0 16384 crypt aes-xts-plain64 $KEY 0 $WORK/small.img 0 1 sector_size:4096"
check "the export's minimum block is 4 KiB" bash -c "nbdinfo '$U' | grep -q 'block_size_minimum: 4096'"
head -c 8M p16.bin > want.bin
nbdcopy want.bin "$U" || fail "nbdcopy to the export failed"
printf 'A%.0s' $(seq 512) > patch.bin
qemu-io -f raw -c "write -P 0x41 1536 512" -c "write -P 0x42 8190 3" "$U" > /dev/null \
  || fail "qemu-io unaligned writes failed"
dd if=patch.bin of=want.bin bs=1 seek=1536 conv=notrunc status=none
printf 'BBB' | dd of=want.bin bs=1 seek=8190 conv=notrunc status=none
nbdcopy "$U" got.bin
check "unaligned writes landed, the rest of their 4 KiB units kept" cmp got.bin want.bin
dmnbd_stop

# ---- 5. a user key in the keyring
if command -v keyctl > /dev/null && KID=$(keyctl padd user "dmnbd-crypt-$$" @u < <(head -c 32 /dev/urandom)) 2> /dev/null; then
  on_cleanup keyctl unlink "$KID" @u
  truncate -s 4M k.img
  serve "0 8192 crypt aes-cbc-essiv:sha256 :32:user:dmnbd-crypt-$$ 0 $WORK/k.img 0"
  check "a keyring key is shown by its reference" is "$(dm table c)" \
    "0 8192 crypt aes-cbc-essiv:sha256 :32:user:dmnbd-crypt-$$ 0 $WORK/k.img 0"
  head -c 4M /dev/urandom > k.bin
  nbdcopy k.bin "$U" && nbdcopy "$U" k2.bin
  check "it encrypts and decrypts" cmp k.bin k2.bin
  dmnbd_stop
else
  echo "ok - keyring # SKIP no keyctl or no user keyring here"
fi

# ---- 6. a config holding a key inline must be the owner's only
serve "0 8192 crypt aes-xts-plain64 $KEY 0 $WORK/small.img 0"
dmnbd_stop
chmod 644 cfg.yaml
"$DMNBD" serve cfg.yaml > refused.log 2>&1
rc=$?
check "a readable config with a key is refused" [ "$rc" != 0 ]
check "the reason is given" grep -q "readable by other users (mode 0644): chmod 600" refused.log
check "the refusal holds no key" bash -c "! grep -qi '${KEY:0:32}' refused.log"
pass
