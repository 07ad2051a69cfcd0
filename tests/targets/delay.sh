#!/bin/bash
# delay.sh - the delay target through a real client (libnbd, many requests in
# flight): reads take the configured extra latency (measured, with a
# tolerance), writes with no delay are not held up by delayed reads, delayed
# requests wait side by side rather than one after another, the status line
# counts the waiting ones, a suspend lets them all go at once, and a separate
# flush delay applies to flushes only.
source "$(dirname "$0")/../protocol/lib.sh"
source "$(dirname "$0")/lib.sh"
make_work
targets_start dl "0 131072 delay disk.img 0 300 disk.img 0 0"

cat > "$WORK/delay.py" <<'PYEOF'
import subprocess, sys, time
import nbd

sock, dmnbd, ctl, part = sys.argv[1:5]
failed = 0
def check(desc, cond, detail=""):
    global failed
    print(("ok - " if cond else "not ok - ") + desc + (f" ({detail})" if detail else ""))
    failed += not cond
def dm(*args):
    return subprocess.run([dmnbd, "--control", ctl, *args], capture_output=True, text=True,
                          timeout=30).stdout.strip()
h = nbd.NBD()
h.set_export_name("dl")
h.connect_unix(sock)
retired = set()
def completed(c):  # a cookie can be asked about until it is retired, once
    if c not in retired and h.aio_command_completed(c):
        retired.add(c)
    return c in retired
def wait(cookies, limit=10.0):
    t = time.monotonic()
    while not all(completed(c) for c in cookies) and time.monotonic() - t < limit:
        h.poll(100)
def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t

if part == "latency":
    h.pwrite(b"\x5a" * 65536, 0)
    d = timed(lambda: h.pread(4096, 0))
    check("a read takes >= 300 ms", 0.300 <= d < 1.3, f"{d*1000:.0f} ms")
    d = timed(lambda: h.pwrite(b"w" * 4096, 8192))
    check("a write (delay 0) is immediate", d < 0.15, f"{d*1000:.0f} ms")
    d = timed(lambda: h.flush())
    check("a flush goes with writes (delay 0)", d < 0.3, f"{d*1000:.0f} ms")
    # 32 reads in flight wait side by side; a write meanwhile is not held up.
    bufs = [nbd.Buffer(4096) for _ in range(32)]
    t0 = time.monotonic()
    reads = [h.aio_pread(b, i * 4096) for i, b in enumerate(bufs)]
    wbuf = nbd.Buffer.from_bytearray(bytearray(b"v" * 4096))
    w = h.aio_pwrite(wbuf, 1 << 20)
    wait([w])
    dw = time.monotonic() - t0
    pending = sum(not completed(c) for c in reads)
    check("a write among 32 delayed reads completes at once", dw < 0.2 and pending > 0,
          f"{dw*1000:.0f} ms, {pending} reads still waiting")
    wait(reads)
    d = time.monotonic() - t0
    check("32 delayed reads finish in about one delay", 0.300 <= d < 1.5, f"{d*1000:.0f} ms")
    check("the reads return the data", bufs[0].to_bytearray()[:4] == b"\x5a" * 4)

if part == "suspend":
    # Table: everything delayed 3 s. 8 reads and 4 writes wait; status counts them.
    bufs = [nbd.Buffer(4096) for _ in range(8)]
    t0 = time.monotonic()
    cookies = [h.aio_pread(b, i * 4096) for i, b in enumerate(bufs)]
    wbufs = [nbd.Buffer.from_bytearray(bytearray(4096)) for _ in range(4)]
    cookies += [h.aio_pwrite(b, (64 + i) * 4096) for i, b in enumerate(wbufs)]
    time.sleep(0.3)
    st = dm("status", "dl")
    check("status counts the waiting requests", st == "0 131072 delay 8 4 0", st)
    ts = time.monotonic()
    out = subprocess.run([dmnbd, "--control", ctl, "suspend", "dl"], capture_output=True,
                         text=True, timeout=30)
    ds = time.monotonic() - ts
    check("suspend returns at once (the queue is let go)", out.returncode == 0 and ds < 1.5,
          f"{ds*1000:.0f} ms, rc {out.returncode} {out.stderr.strip()}")
    wait(cookies)
    d = time.monotonic() - t0
    check("every waiting request completed well before 3 s", d < 2.0, f"{d*1000:.0f} ms")
    st = dm("status", "dl")
    check("status: nothing waiting", st == "0 131072 delay 0 0 0", st)
    subprocess.run([dmnbd, "--control", ctl, "resume", "dl"], timeout=30, check=True)
    d = timed(lambda: h.pread(512, 0))
    check("after resume, reads are delayed again", 3.0 <= d < 5.0, f"{d*1000:.0f} ms")

if part == "flush":
    # Table: reads 0, writes 0, flushes 400 ms.
    d = timed(lambda: h.pread(4096, 0))
    check("flush table: read immediate", d < 0.15, f"{d*1000:.0f} ms")
    d = timed(lambda: h.pwrite(b"f" * 4096, 0))
    check("flush table: write immediate", d < 0.15, f"{d*1000:.0f} ms")
    d = timed(lambda: h.flush())
    check("flush table: flush takes >= 400 ms", 0.400 <= d < 1.5, f"{d*1000:.0f} ms")
h.shutdown()
sys.exit(1 if failed else 0)
PYEOF
dpy() { timeout 120 "$PY" "$WORK/delay.py" "$WORK/nbd.sock" "$DMNBD" "$WORK/ctl.sock" "$1"; }

check "table (6 arguments)" is "$(dm table dl)" "0 131072 delay disk.img 0 300 disk.img 0 0"
check "status: nothing waiting" is "$(dm status dl)" "0 131072 delay 0 0 0"
dpy latency || NFAILED=$((NFAILED + 1))

dm reload dl --table "0 131072 delay disk.img 0 3000" || fail "reload failed"
check "table (3 arguments)" is "$(dm table dl)" "0 131072 delay disk.img 0 3000"
dpy suspend || NFAILED=$((NFAILED + 1))

dm reload dl --table "0 131072 delay disk.img 0 0 disk.img 0 0 disk.img 0 400" || fail "reload failed"
check "table (9 arguments)" is "$(dm table dl)" "0 131072 delay disk.img 0 0 disk.img 0 0 disk.img 0 400"
dpy flush || NFAILED=$((NFAILED + 1))
pass
