"""Writes that a client saw acknowledged, and a check that they survived.

  acked_writes.py write SOCKET EXPORT BYTES LOG   until killed (or every slot
      is written): 4 KiB writes, each to a slot of its own in random order, 32
      in flight; each slot's number goes to LOG (flushed) once its reply came
  acked_writes.py verify SOCKET EXPORT LOG        every slot in LOG reads back
      as written; prints how many were checked, exits 1 on the first that does not

Each slot is written once, so whatever was in flight when the server died may
hold old or new bytes, but an acknowledged one must hold its own.
"""
import hashlib
import random
import sys

import nbd

SLOT = 4096


def content(slot):
    return (hashlib.sha256(b"slot %d" % slot).digest() * (SLOT // 32))


def connect(sock, export):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h


def write(sock, export, size, log_path):
    h = connect(sock, export)
    slots = list(range(size // SLOT))
    random.Random(7).shuffle(slots)
    log = open(log_path, "a", buffering=1)

    def done(slot, err):
        if err.value == 0:
            log.write("%d\n" % slot)
            log.flush()
        return 1

    for slot in slots:
        while h.aio_in_flight() >= 32:
            h.poll(-1)
        h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(content(slot))), slot * SLOT,
                     completion=lambda err, s=slot: done(s, err))
    while h.aio_in_flight():
        h.poll(-1)


def verify(sock, export, log_path):
    h = connect(sock, export)
    slots = [int(line) for line in open(log_path) if line.strip()]
    for slot in slots:
        if h.pread(SLOT, slot * SLOT) != content(slot):
            print("slot %d does not hold what was acknowledged" % slot)
            sys.exit(1)
    print("# %d acknowledged writes read back" % len(slots))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        verify(sys.argv[2], sys.argv[3], sys.argv[4])
