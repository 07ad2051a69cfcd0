#!/usr/bin/python3
"""What a hostile client can make the server hold (tests/protocol/limits.sh).

usage: limits_probe.py SOCKET SERVER_PID CONN_LIMIT_MIB SERVER_LIMIT_MIB

Against an export "slow" (writes held 500 ms by the delay target over a
backing file) on the unix socket SOCKET:
  1. one client pipelines 60 WRITEs of 32 MiB without waiting for replies: the
     server's peak RSS grows by at most the per-connection bound plus a small
     constant, and every write lands (read back and checked);
  2. eight such clients at once (8 writes each) stay under the server bound.
Prints "ok - ..." / "not ok - ..." and "# measured ..." lines; exit 1 on failure.
"""
import os
import struct
import sys
import threading
import time

from nbd_wire import REQ_MAGIC, SIMPLE_MAGIC, connect_go, recv_exact

MiB = 1 << 20
READ, WRITE = 0, 1
WRITE_SIZE = 32 * MiB
# Beyond the bound: the receive buffer, allocator slack, one request being received.
SLACK = 24 * MiB

SOCK, PID = sys.argv[1], int(sys.argv[2])
CONN_LIMIT, SERVER_LIMIT = int(sys.argv[3]) * MiB, int(sys.argv[4]) * MiB
failures = 0


def check(desc, cond, detail=""):
    global failures
    print(("ok - " if cond else "not ok - ") + desc + ("" if cond else f" ({detail})"))
    failures += 0 if cond else 1


def connect(export="slow"):
    return connect_go(SOCK, export)


def fill(i):
    return bytes([(i * 37 + 11) & 0xFF]) * WRITE_SIZE


def pipelined_writes(base, count, errors):
    """Sends `count` WRITEs back to back from one thread, reads replies on another."""
    s, _ = connect()
    replies = {}

    def reader():
        try:
            for _ in range(count):
                magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
                replies[cookie] = err if magic == SIMPLE_MAGIC else -1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(count):
        header = struct.pack(">IHHQQI", REQ_MAGIC, 0, WRITE, base + i, (base + i) * WRITE_SIZE,
                             WRITE_SIZE)
        s.sendall(header + fill(base + i))
    t.join()
    s.close()
    bad = {c: e for c, e in replies.items() if e != 0}
    if len(replies) != count or bad:
        errors.append(f"{len(replies)}/{count} replies, errors {bad}")


def read_back(first, count):
    """Reads every written range over a fresh connection and compares it."""
    s, _ = connect()
    wrong = []
    for i in range(first, first + count):
        s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, READ, i, i * WRITE_SIZE, WRITE_SIZE))
        magic, err, _cookie = struct.unpack(">IIQ", recv_exact(s, 16))
        data = recv_exact(s, WRITE_SIZE) if err == 0 else b""
        if err or data != fill(i):
            wrong.append(i)
    s.close()
    return wrong


def status_kib(field):
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak():
    # Writing 5 to clear_refs resets VmHWM to the current RSS (proc(5)).
    with open(f"/proc/{PID}/clear_refs", "w") as f:
        f.write("5")


def run_case(name, clients, writes_each, bound):
    reset_peak()
    base_kib = status_kib("VmRSS")
    errors, threads = [], []
    t0 = time.monotonic()
    for c in range(clients):
        t = threading.Thread(target=pipelined_writes, args=(c * writes_each, writes_each, errors))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    growth = (status_kib("VmHWM") - base_kib) * 1024
    print(f"# measured {name}: peak RSS grew {growth / MiB:.1f} MiB over {base_kib // 1024} MiB "
          f"(bound {bound // MiB} MiB + {SLACK // MiB} MiB slack), "
          f"{clients * writes_each * WRITE_SIZE // MiB} MiB written in {secs:.1f} s")
    check(f"{name}: every WRITE answered without error", not errors, "; ".join(errors[:3]))
    if os.environ.get("DMNBD_SANITIZED") == "1":
        # AddressSanitizer keeps freed memory in quarantine: RSS says nothing here.
        print(f"# {name}: peak RSS not checked in a sanitizer build")
    else:
        check(f"{name}: peak RSS growth {growth / MiB:.1f} MiB <= {(bound + SLACK) // MiB} MiB",
              growth <= bound + SLACK, f"{growth / MiB:.1f} MiB")
    wrong = read_back(0, clients * writes_each)
    check(f"{name}: all {clients * writes_each} writes read back intact", not wrong,
          f"wrong: {wrong[:10]}")


def main():
    run_case("1 client x 60 x 32 MiB", 1, 60, CONN_LIMIT)
    run_case("8 clients x 8 x 32 MiB", 8, 8, SERVER_LIMIT)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
