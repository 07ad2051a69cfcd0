# shellcheck shell=bash
# lib.sh - sourced by the target tests (tests/targets/*.sh) after
# tests/protocol/lib.sh: one export, the control CLI, and single NBD requests.
#
#   targets_start NAME "TABLE" [SIZE]   config with disk.img (SIZE, default 64MiB) and
#                                       device NAME, control socket; starts the server
#   dm VERB ARGS...                     the dmnbd CLI on this server's control socket
#   nbdio CMD...                        one connection to $EXPORT, one request per CMD:
#       read:OFF:LEN   write:OFF:LEN:BYTE[:fua]   flush   trim:OFF:LEN   zero:OFF:LEN
#     prints one line per CMD: "ok" (read: "ok <first 8 bytes hex> <sha1>") or the
#     errno name (EIO, ...)
#   fbytes OFF LEN                      hex of LEN bytes of disk.img at OFF
#   kill_under_fio EXPORT SIZE          kill -9 of the server under fio's random writes
#   fio_verify NAME EXPORT SIZE [ARG..] fio's verified 4 KiB random writes, in the background
#   fio_wait NAME / fio_clean NAME      its exit status / it exited 0 and reported no error
#   fail_under_fio STEP NAME EXPORT SIZE LEG...
#                                       fio_verify while each device LEG is reloaded with
#                                       the error target: fio must see no error
#   raid_field DEV N / raid_wait_idle DEV   a raid status field / until it is idle, in sync
#   fuse_attach EXPORT DIR              nbdfuse of EXPORT on DIR (its PID in
#                                       $WORK/nbdfuse-EXPORT.pid)
#   snap_teardown                       undoes a second attachment: SNAP_MOUNTED
#                                       ($WORK/mnt2), SNAP_LOOP, SNAP_FUSE_MOUNTED
#                                       ($WORK/fuse2), SNAP_FUSE_PID
#   $TARGETS_DIR/regions.py             region checks for the resync tests (its docstring)

# The directory of these scripts (regions.py), whatever the caller's cwd.
TARGETS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

targets_start() {
  EXPORT=$1
  local table=$2 size=${3:-64MiB}
  cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: $WORK/ctl.sock
files:
  - { path: disk.img, size: $size }
devices:
  - name: $EXPORT
    table: "$table"
YAML
  _targets_write_io_py
  dmnbd_start "$WORK/cfg.yaml"
  for _ in $(seq 50); do [ -S "$WORK/ctl.sock" ] && break; sleep 0.1; done
}

dm() { timeout 60 "$DMNBD" --control "$WORK/ctl.sock" "$@"; }

# kill_under_fio EXPORT SIZE: fio's 4 KiB random writes over the first SIZE of
# EXPORT at depth 32, and kill -9 of the server 1.5 s into them; the sockets
# it leaves are removed, for dmnbd_start to bring it back.
kill_under_fio() {
  timeout 60 fio --name=kill --ioengine=nbd --uri="nbd+unix:///$1?socket=$WORK/nbd.sock" \
    --rw=randwrite --bs=4k --size="$2" --iodepth=32 --time_based --runtime=30 > "$WORK/kill.log" 2>&1 &
  local fio_pid=$!
  sleep 1.5
  kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
  wait "$fio_pid"
  rm -f "$WORK/nbd.sock" "$WORK/ctl.sock"
}

# fio_verify NAME EXPORT SIZE [FIO ARGS...]: 4 KiB random writes at depth 16
# (20 MB/s) over the first SIZE of EXPORT, then every block read back and
# checked (crc32c); in the background (FIO_PID). Its output is in
# $WORK/NAME.log, cut at 4 MiB (fio's nbd engine repeats an error without end
# once the server is gone, and may not heed SIGTERM), its exit status in
# $WORK/NAME.rc.
fio_verify() {
  local name=$1 export=$2 size=$3
  shift 3
  rm -f "$WORK/$name.rc"
  { timeout -k 5 120 fio --name="$name" --ioengine=nbd --uri="nbd+unix:///$export?socket=$WORK/nbd.sock" \
      --rw=randwrite --bs=4k --size="$size" --iodepth=16 --verify=crc32c --do_verify=1 \
      --verify_fatal=1 --rate=20m "$@" 2>&1
    echo $? > "$WORK/$name.rc"; } | head -c 4M > "$WORK/$name.log" &
  FIO_PID=$!
}
fio_wait() { # NAME: wait for fio_verify NAME, return fio's exit status
  wait "$FIO_PID"
  for _ in $(seq 50); do [ -s "$WORK/$1.rc" ] && break; sleep 0.1; done
  return "$(cat "$WORK/$1.rc" 2>/dev/null || echo 1)"
}
fio_clean() { # NAME: fio reported no error and no verify failure
  grep -q "err= 0" "$WORK/$1.log" && ! grep -qi "verify:.*bad\|error" "$WORK/$1.log"
}
# fail_under_fio STEP NAME EXPORT SIZE LEG...: fio_verify NAME while each leg
# device LEG, 0.5 s apart, is reloaded with the error target (of its size);
# fio must run to the end with no error and every block verified.
fail_under_fio() {
  local step=$1 name=$2 export=$3 size=$4 leg rc
  shift 4
  fio_verify "$name" "$export" "$size"
  for leg in "$@"; do
    sleep 0.5
    dm reload "$leg" --table "0 $(dm table "$leg" | awk '{print $2}') error" || fail "reload $leg failed"
  done
  fio_wait "$name"; rc=$?
  check "$step: fio ran to the end with $* failing (exit $rc)" test "$rc" = 0
  check "$step: and saw no error, every block verified" fio_clean "$name"
}

# raid_field DEV N: word N of a raid device's status (6 health, 7 ratio,
# 8 action, 9 mismatches).
raid_field() { dm status "$1" | awk -v n="$2" '{print $n}'; }
raid_wait_idle() { # DEV: until the action is idle with full progress (<= 60 s)
  local ratio
  for _ in $(seq 600); do
    ratio=$(raid_field "$1" 7)
    [ "$(raid_field "$1" 8)" = idle ] && [ "${ratio%/*}" = "${ratio#*/}" ] && return 0
    sleep 0.1
  done
  return 1
}

nbdio() { timeout 60 "$PY" "$WORK/io.py" "$WORK/nbd.sock" "$EXPORT" "$@"; }

fbytes() { od -An -tx1 -v -j "$1" -N "$2" "$WORK/disk.img" | tr -d ' \n'; }

# is GOT WANT: equality with a readable complaint.
is() { [ "$1" = "$2" ] || { echo "#   got '$1', expected '$2'"; return 1; }; }

_targets_write_io_py() {
  cat > "$WORK/io.py" <<'PYEOF'
import errno, hashlib, sys
import nbd

sock, export = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.set_export_name(export)
h.connect_unix(sock)
for cmd in sys.argv[3:]:
    f = cmd.split(":")
    try:
        if f[0] == "read":
            data = h.pread(int(f[2]), int(f[1]))
            print("ok", data[:8].hex(), hashlib.sha1(data).hexdigest())
            continue
        if f[0] == "write":
            flags = nbd.CMD_FLAG_FUA if len(f) > 4 and f[4] == "fua" else 0
            h.pwrite(bytes([int(f[3], 0)]) * int(f[2]), int(f[1]), flags)
        elif f[0] == "flush":
            h.flush()
        elif f[0] == "trim":
            h.trim(int(f[2]), int(f[1]))
        elif f[0] == "zero":
            h.zero(int(f[2]), int(f[1]))
        else:
            raise SystemExit(f"io.py: unknown command {cmd}")
        print("ok")
    except nbd.Error as e:
        print(errno.errorcode.get(e.errno, str(e.errno)) if e.errno else str(e))
    sys.stdout.flush()
h.shutdown()
PYEOF
}

# A second export through the kernel's block layer beside protocol/lib.sh's
# one (a snapshot beside its origin): the same steps, its own variables.
SNAP_FUSE_PID="" SNAP_LOOP="" SNAP_MOUNTED=0 SNAP_FUSE_MOUNTED=0
snap_teardown() {
  [ "$SNAP_MOUNTED" = 1 ] && timeout 30 umount "$WORK/mnt2" && SNAP_MOUNTED=0
  [ -n "$SNAP_LOOP" ] && timeout 30 losetup -d "$SNAP_LOOP" && SNAP_LOOP=""
  [ "$SNAP_FUSE_MOUNTED" = 1 ] && timeout 30 umount "$WORK/fuse2" && SNAP_FUSE_MOUNTED=0
  [ -n "$SNAP_FUSE_PID" ] && kill -0 "$SNAP_FUSE_PID" 2>/dev/null && kill "$SNAP_FUSE_PID"
  SNAP_FUSE_PID=""
  return 0
}
fuse_attach() { # EXPORT DIR
  local i pidfile="$WORK/nbdfuse-$1.pid"
  nbdfuse -P "$pidfile" "$2" "nbd+unix:///$1?socket=$WORK/nbd.sock" >> "$WORK/nbdfuse.log" 2>&1 &
  for i in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.1; done
  [ -e "$2/nbd" ] || fail "nbdfuse for $1 did not come up: $(cat "$WORK/nbdfuse.log")"
}
