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
