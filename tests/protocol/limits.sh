#!/bin/bash
# limits.sh - what a hostile client can make the server hold, and for how long.
#  - 60 pipelined 32 MiB WRITEs on one connection to a slow device: peak RSS
#    stays under the per-connection payload bound plus a small constant (the
#    server stops reading the socket instead), and every write lands;
#  - 8 such clients at once stay under the server-wide bound;
#  - a connection that never finishes its handshake is closed at the limit,
#    one in transmission is not;
#  - connections beyond max_connections are closed at once.
source "$(dirname "$0")/lib.sh"
make_work
SOCK=$WORK/nbd.sock
truncate -s 2G "$WORK/slow.img"
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$SOCK" ]
limits:
  connection_payload: 64MiB
  server_payload: 128MiB
  handshake_timeout: 2
  max_connections: 12
devices:
  - name: slow
    table: "0 4194304 delay slow.img 0 0 slow.img 0 500"
YAML
dmnbd_start "$WORK/cfg.yaml"
check "startup logs the limits" grep -q "limits: 64 MiB of payload in flight per connection, 128 MiB in all, handshake 2 s, 12 connections" "$WORK/server.log"

run_probe 600 "$PY" "$LIB_DIR/limits_probe.py" "$SOCK" "$SERVER_PID" 64 128

# Handshake limit: an idle connection and one that stalls after the flags are
# closed after ~2 s; a negotiated one idles past that and still works.
"$PY" - "$SOCK" <<'PY' | tee -a "$WORK/probe.out"
import socket, struct, sys, time
sys.path.insert(0, sys.argv[0])
path = sys.argv[1]
def eof_after(send_flags):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.settimeout(10)
    t0 = time.monotonic()
    s.recv(18)
    if send_flags: s.sendall(struct.pack(">I", 3))
    try:
        data = s.recv(1)
    except socket.timeout:
        return None
    return time.monotonic() - t0 if data == b"" else None
for flags in (False, True):
    t = eof_after(flags)
    ok = t is not None and 1.5 <= t <= 5
    print(("ok - " if ok else "not ok - ") +
          f"a client silent {'after its flags' if flags else 'after the greeting'} is closed at the 2 s limit (after {t})")
PY
check "the server says why it closed them" grep -q "handshake not finished within 2 s" "$WORK/server.log"
check "a negotiated connection idle for 3 s still serves" \
  "$PY" -c 'import nbd,sys,time; h=nbd.NBD(); h.connect_uri(sys.argv[1]); time.sleep(3); h.pread(4096, 0); h.shutdown()' "nbd+unix:///slow?socket=$SOCK"

# max_connections: 12 held open (within the handshake limit), the 13th is closed at once.
"$PY" - "$SOCK" <<'PY' | tee -a "$WORK/probe.out"
import socket, sys, time
path = sys.argv[1]
held = []
for _ in range(12):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.settimeout(5)
    held.append((s, len(s.recv(18))))
extra = socket.socket(socket.AF_UNIX); extra.connect(path); extra.settimeout(5)
t0 = time.monotonic(); data = extra.recv(18); dt = time.monotonic() - t0
ok = all(n == 18 for _, n in held)
print(("ok - " if ok else "not ok - ") + "12 connections get the greeting")
ok = data == b"" and dt < 1
print(("ok - " if ok else "not ok - ") + f"the 13th is closed at once ({len(data)} bytes, {dt:.2f} s)")
for s, _ in held: s.close()
time.sleep(0.5)
again = socket.socket(socket.AF_UNIX); again.connect(path); again.settimeout(5)
ok = len(again.recv(18)) == 18
print(("ok - " if ok else "not ok - ") + "once they are gone a new connection is served")
PY
check "the refusal is logged" grep -q "refused: already 12 connections" "$WORK/server.log"
grep -q '^not ok' "$WORK/probe.out" && fail "$(grep -m1 '^not ok' "$WORK/probe.out")"
pass
