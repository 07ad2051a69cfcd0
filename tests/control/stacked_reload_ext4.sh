#!/bin/bash
# stacked_reload_ext4.sh - ext4 on a stacked device whose tables are swapped
# under it: top = linear over mid = linear over disk.img, served through
# nbdfuse (2 connections) + loop + mkfs.ext4 + mount.  While files are written,
# synced, read back and fsck'd, a loop keeps reloading mid and top with tables
# that map the same data differently (one linear line, or two or three lines
# split at random sectors).  Then: e2fsck -fn clean, checksums match, and the
# backing file alone holds the same filesystem.  Needs root, /dev/fuse, loop.
source "$(dirname "$0")/../protocol/lib.sh"
make_work
for dev in /dev/fuse /dev/loop-control; do
  [ -e "$dev" ] || { echo "SKIP stacked_reload_ext4: $dev missing (needs root, fuse and loop devices)"; exit 77; }
done
SECTORS=524288   # 256 MiB
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
files:
  - { path: disk.img, size: 256MiB }
devices:
  - name: mid
    table: "0 $SECTORS linear disk.img 0"
  - name: top
    description: ext4 on top of mid
    table: "0 $SECTORS linear mid 0"
YAML
dmnbd_start "$WORK/cfg.yaml"
CTL="$WORK/control.sock"
U="nbd+unix:///top?socket=$WORK/nbd.sock"
mkdir -p "$WORK/fuse" "$WORK/mnt"

# ---- the reload loop ----
# table_for LOWER: the same identity map of LOWER as 1, 2 or 3 linear lines at random sectors.
table_for() {
  local lower=$1 n=$((RANDOM % 3 + 1)) a b
  a=$(( (RANDOM << 15 | RANDOM) % (SECTORS - 2) + 1 ))
  b=$(( (RANDOM << 15 | RANDOM) % (SECTORS - 2) + 1 ))
  [ "$a" -gt "$b" ] && { local x=$a; a=$b; b=$x; }
  [ "$a" -eq "$b" ] && b=$((a + 1))
  case $n in
    1) echo "0 $SECTORS linear $lower 0" ;;
    2) printf '0 %d linear %s 0\n%d %d linear %s %d\n' "$a" "$lower" "$a" $((SECTORS - a)) "$lower" "$a" ;;
    3) printf '0 %d linear %s 0\n%d %d linear %s %d\n%d %d linear %s %d\n' \
         "$a" "$lower" "$a" $((b - a)) "$lower" "$a" "$b" $((SECTORS - b)) "$lower" "$b" ;;
  esac
}
# reload DEV TABLE-FILE: one reload; a reload that takes over 20 s is a hang:
# record the devices' state in $WORK/hang.txt, then kill the server (by PID) so
# the kernel's pending I/O fails instead of blocking this test forever.
reload_one() {
  local rc
  timeout 20 "$DMNBD" --control "$CTL" reload "$1" "$2" 2>> "$WORK/reload.err"; rc=$?
  [ "$rc" -eq 0 ] && return 0
  { echo "# reload $1 failed (exit $rc), table:"; cat "$2"; } >> "$WORK/reload.err"
  if [ "$rc" -eq 124 ]; then
    { echo "reload $1 did not finish within 20 s; table being loaded: $(tr '\n' '|' < "$2")"
      echo "info: $(timeout 5 "$DMNBD" --control "$CTL" --json info | tr -d ' \n')"; } > "$WORK/hang.txt"
    kill -KILL "$SERVER_PID"
  fi
  return 1
}
reload_loop() {  # until $WORK/stop exists; "$WORK/reloads" = "mid top failures"
  local m=0 t=0 f=0 i=0
  while [ ! -e "$WORK/stop" ] && [ ! -e "$WORK/hang.txt" ]; do
    if (( i % 2 == 0 )); then
      table_for "$WORK/disk.img" > "$WORK/t.mid"
      if reload_one mid "$WORK/t.mid"; then m=$((m + 1)); else f=$((f + 1)); fi
    else
      table_for mid > "$WORK/t.top"
      if reload_one top "$WORK/t.top"; then t=$((t + 1)); else f=$((f + 1)); fi
    fi
    i=$((i + 1))
    echo "$m $t $f" > "$WORK/reloads.tmp" && mv "$WORK/reloads.tmp" "$WORK/reloads"
  done
}
read_reloads() { M=0 T=0 F=0; [ -s "$WORK/reloads" ] && read -r M T F < "$WORK/reloads"; }
# die REASON: fail, naming a hung reload as the cause when there was one.
die() {
  [ -e "$WORK/hang.txt" ] && { FAIL_REASON="server hang: $(head -c 1500 "$WORK/hang.txt")"; fail "$*"; }
  fail "$@"
}
waits() { timeout 10 "$DMNBD" --control "$CTL" --json info "$1" \
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["devices"][0]["suspended_waits"])'; }

FUSE_PID="" LOOP="" MOUNTED=0 FUSE_MOUNTED=0 RELOAD_PID=""
fs_cleanup() {
  touch "$WORK/stop"
  [ -n "$RELOAD_PID" ] && { wait "$RELOAD_PID"; RELOAD_PID=""; }
  fuse_teardown
}
on_cleanup fs_cleanup

dd if=/dev/urandom of="$WORK/ref.bin" bs=1M count=48 status=none
REF=$(sha256sum < "$WORK/ref.bin")
SEQ=$(seq 1 300000 | sha256sum)
mkdir -p "$WORK/small"
for i in $(seq 300); do head -c $((RANDOM * 3 % 90000 + 1)) /dev/urandom > "$WORK/small/f$i"; done
(cd "$WORK/small" && sha256sum f* > "$WORK/small.sums")

nbdfuse -C 2 -P "$WORK/nbdfuse.pid" "$WORK/fuse" "$U" > "$WORK/nbdfuse.log" 2>&1 &
for i in $(seq 100); do [ -s "$WORK/nbdfuse.pid" ] && break; sleep 0.1; done
FUSE_PID=$(cat "$WORK/nbdfuse.pid" 2>/dev/null)
[ -e "$WORK/fuse/nbd" ] || fail "nbdfuse did not come up: $(cat "$WORK/nbdfuse.log")"
FUSE_MOUNTED=1
check "fuse file is 256 MiB" test "$(timeout 10 stat -c %s "$WORK/fuse/nbd")" = 268435456
LOOP=$(timeout 30 losetup -f --show "$WORK/fuse/nbd") || fail "losetup failed"
W0_TOP=$(waits top) W0_MID=$(waits mid)

# Reloads start before mkfs and run through everything until the final unmount.
reload_loop & RELOAD_PID=$!
# Watchdog: whatever hangs, kill the server after 200 s so blocked I/O fails.
( for i in $(seq 200); do [ -e "$WORK/stop" ] && exit 0; sleep 1; done
  echo "watchdog: the test ran over 200 s; killed the server" > "$WORK/hang.txt"; kill -KILL "$SERVER_PID" ) &
WATCHDOG_PID=$!
on_cleanup 'kill "$WATCHDOG_PID"'   # (fs_cleanup touches $WORK/stop too)
timeout 120 mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP" || die "mkfs.ext4 failed"
timeout 30 mount -t ext4 -o discard "$LOOP" "$WORK/mnt" && MOUNTED=1 || die "mount failed"
# Rounds of writes until both devices were reloaded >= MIN_RELOADS times under
# the mounted filesystem and >= 15 s passed (at most 60 s): each round writes a
# 48 MiB file, a text file, a 16 MiB O_DIRECT file and 300 small files, syncs,
# after deleting what the round before last wrote (-o discard: TRIMs).
MIN_RELOADS=30
T0=$SECONDS R=0
while :; do
  R=$((R + 1))
  [ "$R" -gt 2 ] && { timeout 60 rm -rf "$WORK/mnt/f1.$((R - 2)).bin" "$WORK/mnt/f2.$((R - 2)).txt" \
                       "$WORK/mnt/f3.$((R - 2)).bin" "$WORK/mnt/small.$((R - 2))" || die "round $R: rm failed"; }
  timeout 60 cp "$WORK/ref.bin" "$WORK/mnt/f1.$R.bin" || die "round $R: cp failed"
  timeout 60 sh -c "seq 1 300000 > '$WORK/mnt/f2.$R.txt'" || die "round $R: writing f2 failed"
  timeout 60 dd if="$WORK/ref.bin" of="$WORK/mnt/f3.$R.bin" bs=1M count=16 oflag=direct status=none || die "round $R: dd oflag=direct failed"
  timeout 60 cp -r "$WORK/small" "$WORK/mnt/small.$R" || die "round $R: cp -r small failed"
  timeout 60 sync -f "$WORK/mnt" || die "round $R: syncfs failed"
  read_reloads
  [ -e "$WORK/hang.txt" ] && die "round $R"
  [ $((SECONDS - T0)) -ge 60 ] && break
  [ "$M" -ge "$MIN_RELOADS" ] && [ "$T" -ge "$MIN_RELOADS" ] && [ $((SECONDS - T0)) -ge 15 ] && break
done
timeout 60 fstrim "$WORK/mnt" >/dev/null 2>&1 || true
timeout 60 sync || die "sync failed"
read_reloads
log "$R rounds in $((SECONDS - T0)) s; reloads during mkfs + writes + sync: mid $M, top $T, failed $F"
timeout 30 umount "$WORK/mnt" && MOUNTED=0 || die "umount failed"
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
check "e2fsck -fn clean (tables still being swapped)" quiet timeout 120 e2fsck -fn "$LOOP"
timeout 30 mount -t ext4 -o ro "$LOOP" "$WORK/mnt" && MOUNTED=1 || die "ro mount failed"
verify_files() {  # verify_files DIR LABEL: the last two rounds' files
  local r
  for r in $((R - 1)) "$R"; do
    [ "$r" -ge 1 ] || continue
    check "$2round $r: 48 MiB file checksum" test "$(timeout 60 sha256sum < "$1/f1.$r.bin")" = "$REF"
    check "$2round $r: text file checksum" test "$(timeout 60 sha256sum < "$1/f2.$r.txt")" = "$SEQ"
    check "$2round $r: O_DIRECT-written file matches" timeout 60 cmp "$1/f3.$r.bin" <(head -c 16M "$WORK/ref.bin")
    check "$2round $r: 300 small files checksums" bash -c 'cd "$1" && timeout 60 sha256sum --quiet -c "$2"' _ "$1/small.$r" "$WORK/small.sums"
  done
}
verify_files "$WORK/mnt" ""
timeout 30 umount "$WORK/mnt" && MOUNTED=0
touch "$WORK/stop"; wait "$RELOAD_PID"; RELOAD_PID=""
read_reloads
W1_TOP=$(waits top) W1_MID=$(waits mid)
log "reloads in all: mid $M, top $T, failed $F; suspended_waits top +$((W1_TOP - W0_TOP)), mid +$((W1_MID - W0_MID))"
[ -e "$WORK/hang.txt" ] && die "checks above"
check "every reload exited 0 ($F failed)" test "$F" -eq 0
[ "$F" -eq 0 ] || sed 's/^/#   /' "$WORK/reload.err" | head -30 >&2
check "mid reloaded under the mounted filesystem ($M >= $MIN_RELOADS)" test "$M" -ge "$MIN_RELOADS"
check "top reloaded under the mounted filesystem ($T >= $MIN_RELOADS)" test "$T" -ge "$MIN_RELOADS"
check "I/O met the suspends (suspended_waits of top + mid grew)" test $((W1_TOP - W0_TOP + W1_MID - W0_MID)) -gt 0
check "mid and top ACTIVE, no inactive tables" bash -c \
  'o=$(timeout 10 "$1" --control "$2" info) && ! grep -q SUSPENDED <<<"$o" && ! grep -q INACTIVE <<<"$o"' _ "$DMNBD" "$CTL"
timeout 30 losetup -d "$LOOP" && LOOP=""
timeout 30 umount "$WORK/fuse" && FUSE_MOUNTED=0
fs_cleanup

# Every table was an identity map: the backing file alone holds the filesystem.
dmnbd_stop || fail "$STOP_REASON"
cp --sparse=always "$WORK/disk.img" "$WORK/copy.img"
check "backing file copy: e2fsck -fn clean" quiet timeout 120 e2fsck -fn "$WORK/copy.img"
LOOP=$(timeout 30 losetup -f --show -r "$WORK/copy.img") || fail "losetup of the copy failed"
timeout 30 mount -t ext4 -o ro "$LOOP" "$WORK/mnt" && MOUNTED=1 || fail "mount of the copy failed"
verify_files "$WORK/mnt" "backing file copy: "
fs_cleanup
pass
