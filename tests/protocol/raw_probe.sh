#!/bin/bash
# raw_probe.sh - start dmnbd with the layout raw_probe.py expects, run it, then
# check the backing-file rules and that SIGTERM is not blocked by idle clients.
source "$(dirname "$0")/lib.sh"
make_work
# ro.img exists and is bigger than the config says: it must be used, not resized.
truncate -s 2M "$WORK/ro.img"
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
files:
  - { path: disk0.img, size: 64MiB }
  - { path: ro.img, size: 1MiB }
devices:
  - name: disk
    description: linear disk with a zero tail
    table: |
      0 131072 linear disk0.img 0
      131072 131072 zero
  - name: ro
    description: read-only device
    read_only: true
    table: |
      0 2048 linear ro.img 0
  - name: bad
    description: every I/O fails
    table: |
      0 2048 error
YAML
dmnbd_start "$WORK/cfg.yaml"
check "missing file created with the configured size" test "$(stat -c %s "$WORK/disk0.img")" = 67108864
check "missing file created sparse" test "$(stat -c %b "$WORK/disk0.img")" -lt 1024
check "existing file not resized" test "$(stat -c %s "$WORK/ro.img")" = 2097152

run_probe 300 "$PY" "$LIB_DIR/raw_probe.py" "$WORK/nbd.sock" disk ro bad

# Two clients stay connected (one idle in the option phase, one in transmission):
# SIGTERM must still end the server promptly with status 0.
"$PY" - "$WORK/nbd.sock" "$WORK/held" <<'P' &
import socket, struct, sys, time
a = socket.socket(socket.AF_UNIX); a.connect(sys.argv[1]); a.recv(18)
b = socket.socket(socket.AF_UNIX); b.connect(sys.argv[1]); b.recv(18)
b.sendall(struct.pack(">IQII", 3, 0x49484156454F5054, 1, 4) + b"disk"); b.recv(10)
open(sys.argv[2], "w").close()
time.sleep(60)
P
HOLDER=$!
on_cleanup "kill $HOLDER"
for i in $(seq 50); do [ -e "$WORK/held" ] && break; sleep 0.1; done
check "two idle clients connected" test -e "$WORK/held"
check "SIGTERM with idle clients connected -> exit 0 within 15 s" dmnbd_stop
kill "$HOLDER" 2>/dev/null; wait "$HOLDER" 2>/dev/null
pass
