#!/bin/bash
# zero_copy_stall.sh - large reads from a tmpfs file are sent straight from its
# mapping; a client that stops reading its replies must neither block a
# suspend nor see data written after the suspend returned:
#  - queue 24 x 1 MiB READs and read none of the replies (the socket fills);
#  - `dmnbd suspend` returns promptly;
#  - while suspended, the backing file is overwritten from outside;
#  - the client then reads every reply: all bytes are the old content;
#  - after resume a new read sees the new content.
# Large writes are received straight into the mapping, and likewise a client
# that stops halfway through a write's payload must not block a suspend:
#  - send a 4 MiB WRITE with half its payload, then stall;
#  - `dmnbd suspend` returns promptly;
#  - send the rest: no reply while suspended, the reply after resume, and the
#    file then holds the whole payload.
source "$(dirname "$0")/lib.sh"
[ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] || { echo "SKIP: /dev/shm is not a tmpfs"; exit 77; }
[ "$(df -k --output=avail /dev/shm | tail -1)" -gt $((64 << 10)) ] || { echo "SKIP: /dev/shm has less than 64 MiB free"; exit 77; }
make_work
SHM=$(mktemp -d /dev/shm/dmnbd-stall.XXXXXX)
on_cleanup rm -rf "$SHM"
head -c $((32 << 20)) /dev/urandom > "$SHM/disk.img"
cp "$SHM/disk.img" "$WORK/old.img"
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
devices:
  - name: disk
    table: "0 65536 linear $SHM/disk.img 0"
YAML
dmnbd_start "$WORK/cfg.yaml"

cat > "$WORK/stall.py" <<'PY'
import socket, struct, subprocess, sys, time

from nbd_wire import connect_go, recv_exact

sock, ctl, dmnbd, img, old = sys.argv[1:6]
MiB = 1 << 20
COUNT = 24
bad = 0


def t(desc, cond, detail=""):
    global bad
    print(("ok - " if cond else "not ok - ") + desc + (("  [" + detail + "]") if detail else ""))
    sys.stdout.flush()
    bad += 0 if cond else 1


def control(*args):
    return subprocess.run([dmnbd, "--control", ctl] + list(args), capture_output=True, text=True,
                          timeout=20)


s, _ = connect_go(sock, "disk", rcvbuf=64 * 1024)  # a small buffer fills up soon

for i in range(COUNT):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, i * MiB, MiB))
time.sleep(1.0)  # the server sends what fits and is left holding the rest

start = time.time()
r = control("suspend", "disk")
took = time.time() - start
t("suspend succeeds while the client is not reading", r.returncode == 0, r.stderr.strip())
t("suspend returns promptly", took < 5, "%.1f s" % took)

with open(img, "r+b") as f:  # a change made while suspended
    f.write(b"\x5a" * (COUNT * MiB))
    f.flush()

with open(old, "rb") as f:
    expected = f.read(COUNT * MiB)
wrong = []
for i in range(COUNT):
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    data = recv_exact(s, MiB)
    if err or data != expected[cookie * MiB:(cookie + 1) * MiB]:
        wrong.append(cookie)
t("every reply carries the data from before the suspend", not wrong,
  "wrong replies for cookies %s" % wrong[:8] if wrong else "")

r = control("resume", "disk")
t("resume succeeds", r.returncode == 0, r.stderr.strip())
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 999, 0, MiB))
magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
t("a read after resume sees the new content", err == 0 and recv_exact(s, MiB) == b"\x5a" * MiB)

SIZE, AT = 4 * MiB, 3 * MiB
data = bytes((i * 7 + (i >> 12)) & 0xff for i in range(SIZE))
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1000, AT, SIZE) + data[:SIZE // 2])  # WRITE
time.sleep(1.0)
start = time.time()
r = control("suspend", "disk")
took = time.time() - start
t("suspend succeeds halfway through a write's payload", r.returncode == 0, r.stderr.strip())
t("that suspend returns promptly", took < 5, "%.1f s" % took)
s.sendall(data[SIZE // 2:])
s.settimeout(1.0)
try:
    early = s.recv(16)
except socket.timeout:
    early = b""
s.settimeout(None)
t("no reply to the write while suspended", not early)
r = control("resume", "disk")
t("resume succeeds", r.returncode == 0, r.stderr.strip())
reply = early + recv_exact(s, 16 - len(early))
magic, err, cookie = struct.unpack(">IIQ", reply)
t("the write is answered after resume", err == 0 and cookie == 1000, "error %d" % err)
with open(img, "rb") as f:
    f.seek(AT)
    t("the file holds the whole payload", f.read(SIZE) == data)
sys.exit(1 if bad else 0)
PY
export PYTHONPATH=$LIB_DIR  # nbd_wire.py
run_probe 90 "$PY" "$WORK/stall.py" "$WORK/nbd.sock" "$WORK/control.sock" "$DMNBD" \
  "$SHM/disk.img" "$WORK/old.img"
pass
