#!/usr/bin/python3
"""snapshot.py - host side of the kernel test's snapshot check (run.sh).

dmnbd's snapshot / snapshot-origin and the kernel's dm-snapshot must agree on
the persistent COW format: each reads what the other wrote, the kernel merges
what dmnbd wrote, and the same write sequence gives the same COW bytes.

  snapshot.py prepare WORK        the initial origin WORK/snap/orig0.img
        (SIZE sectors, each labelled "O:NNNNNN:" + seeded random bytes) and
        two write sequences: WORK/guest/etc/snap/ops and ops2 (what follows
        on the same files), "DEV SECTOR COUNT DATA_OFFSET" per line, DEV =
        base | s8 | s128, with the payloads in WORK/guest/etc/snap/data.bin
        (each sector labelled "W<op>:<dev>:<sector>:", "X..." for ops2);
        prints a summary
  snapshot.py write SOCKET WORK OPS  run the sequence OPS (ops | ops2)
        against dmnbd's exports base (snapshot-origin), s8, s128 through
        libnbd, one request at a time (the guest runs the same one with dd
        oflag=direct)
  snapshot.py sha SOCKET EXPORT...   "EXPORT SHA256" per export (libnbd)
  snapshot.py cmpcow A B CHUNK    compare two persistent COW files (A the
        dmnbd-written, B the kernel-written); prints "identical" or where
        they first differ (header / metadata area a slot i / data chunk of
        which exception), exit 1 on a difference
  snapshot.py model OPS           the exception counts and status numbers
        after ops (OPS = ops) or ops then ops2 (OPS = ops2), from a model of
        the kernel's allocation rule (printed for information: the kernel's
        own status lines are what the checks compare)
"""
import hashlib
import os
import random
import re
import struct
import sys

SECTOR = 512
SIZE = 16384                  # origin sectors (8 MiB)
COW_SECTORS = {8: 8192, 128: 24576}   # 4 MiB and 12 MiB COW files
MAGIC = 0x70416E53


def die(msg):
    print(f"snapshot.py: {msg}", file=sys.stderr)
    sys.exit(2)


def labelled(tag, first, count, rng):
    out = bytearray()
    for s in range(first, first + count):
        lab = f"{tag}:{s:06d}:".encode()
        out += lab + rng.randbytes(SECTOR - len(lab))
    return bytes(out)


def sequence():
    """The write sequence: (dev, sector, count). One origin with two
    snapshots (chunk 8 = 4 KiB, E = 256 slots per area; chunk 128 = 64 KiB).
    More than 512 chunk-8 exceptions, so s8 fills areas 0 and 1 and uses
    area 2."""
    rng = random.Random(20260202)
    ops = [
        ("base", 0, 1),           # partial chunk 0: copy-out to s8 c0 and s128 c0
        ("s8", 8, 8),             # whole s8 chunk 1: the bio is the chunk, no copy
        ("s8", 17, 2),            # partial s8 chunk 2: copy, then write
        ("base", 16, 8),          # s8 c2 and s128 c0 are in the COW: no copy-out
        ("s128", 128, 128),       # whole s128 chunk 1
        ("s128", 300, 5),         # partial s128 chunk 2
        ("base", 250, 20),        # s8 c31-33 copied, s128 c1-2 already there
        ("base", SIZE - 1, 1),    # the last sector: s8 c2047, s128 c127
        ("s8", 4090, 12),         # straddles s8 chunks 511 and 512
    ]
    # 20 origin writes of 64 KiB (16 chunk-8 copy-outs each) at random
    # 64 KiB-aligned places in chunks 3..95 of s128
    picks = rng.sample(range(3, 96), 20)
    for c in picks:
        ops.append(("base", c * 128, 128))
    free = [c for c in range(3, 96) if c not in picks]
    ops += [
        ("s8", free[0] * 128, 128),          # 16 whole chunk-8 writes, no copies
        ("s8", picks[0] * 128 + 3, 1),       # into a chunk copied before
        ("base", picks[1] * 128, 64),        # rewrite copied chunks: no new exceptions
        ("s128", free[1] * 128 + 64, 256),   # partial, whole, partial s128 chunks
        ("base", 12288, 2048),               # 1 MiB: 256 s8 and 16 s128 copy-outs
        ("s8", 12288 + 5, 3),                # into a chunk that write copied
        ("base", 8000, 300),                 # straddles many chunks of both
        ("s128", 12288 + 1000, 7),           # s128 chunk 103 copied by the 1 MiB write
        ("s8", free[2] * 128 + 1, 126),      # 16 chunks, first and last partial
        ("base", free[2] * 128, 128),        # s8 has them all; s128 copies once
    ]
    return ops


def sequence2():
    """What comes after sequence() (on the COWs it left, after a reload):
    s8 fills area 2 (exception 768) and goes on in area 3; writes to
    chunks copied before, and to new ones."""
    return [
        ("base", 14336, 1024),    # 512 KiB in chunks nothing touched: 128 s8, 8 s128 copy-outs
        ("s8", 16 + 3, 1),        # s8 chunk 2, in the COW since sequence()
        ("base", 15900, 20),      # straddles s8 chunks 1987-1990, s128 chunk 124
        ("s128", 15616 + 7, 130), # s128 chunks 122 (new, partial) and 123 (new, partial)
        ("base", 12288 + 64, 8),  # copied by sequence(): no copy-outs
        ("s8", 16376, 8),         # the last s8 chunk, whole, copied in sequence()
        ("base", 16256, 16),      # s128 chunk 127 copied before; s8 chunks 2032-2033 new
    ]


def ops_files():
    return (("ops", "W", sequence()), ("ops2", "X", sequence2()))


def cmd_prepare(work):
    snap = os.path.join(work, "snap")
    gdir = os.path.join(work, "guest", "etc", "snap")
    os.makedirs(snap, exist_ok=True)
    os.makedirs(gdir, exist_ok=True)
    with open(os.path.join(snap, "orig0.img"), "wb") as f:
        f.write(labelled("O", 0, SIZE, random.Random(4711)))
    rng = random.Random(815)
    off = 0
    summary = []
    with open(os.path.join(gdir, "data.bin"), "wb") as data:
        for name, tag, ops in ops_files():
            lines = []
            start = off
            for i, (dev, sector, count) in enumerate(ops):
                if sector + count > SIZE:
                    die(f"{name} op {i} past the end")
                data.write(labelled(f"{tag}{i:02d}:{dev}", sector, count, rng))
                lines.append(f"{dev} {sector} {count} {off}\n")
                off += count * SECTOR
            with open(os.path.join(gdir, name), "w") as f:
                f.writelines(lines)
            summary.append(f"{name}: {len(lines)} writes, {(off - start) >> 10} KiB")
    with open(os.path.join(snap, "sizes"), "w") as f:
        f.write(f"{SIZE} {COW_SECTORS[8]} {COW_SECTORS[128]}\n")
    print("; ".join(summary))


def cmd_write(sock, work, ops):
    import nbd
    gdir = os.path.join(work, "guest", "etc", "snap")
    data = open(os.path.join(gdir, "data.bin"), "rb").read()
    handles = {}
    bad = 0
    for line in open(os.path.join(gdir, ops)):
        dev, sector, count, off = line.split()
        sector, count, off = int(sector), int(count), int(off)
        if dev not in handles:
            h = nbd.NBD()
            h.set_export_name(dev)
            h.connect_unix(sock)
            handles[dev] = h
        try:
            handles[dev].pwrite(data[off:off + count * SECTOR], sector * SECTOR)
        except nbd.Error as e:
            print(f"{dev} {sector} {count}: {e}")
            bad += 1
    for h in handles.values():
        h.flush()
        h.shutdown()
    sys.exit(1 if bad else 0)


def cmd_sha(sock, exports):
    import nbd
    for name in exports:
        h = nbd.NBD()
        h.set_export_name(name)
        h.connect_unix(sock)
        size = h.get_size()
        d = hashlib.sha256()
        for pos in range(0, size, 1 << 20):
            d.update(h.pread(min(1 << 20, size - pos), pos))
        h.shutdown()
        print(name, d.hexdigest())


def areas(cow, chunk):
    """exceptions per metadata area: [(old, new)...] per area, as the
    kernel's read_exceptions() reads them (stop at new_chunk == 0)"""
    e = chunk * SECTOR // 16
    cb = chunk * SECTOR
    out = []
    a = 0
    while True:
        pos = (1 + a * (e + 1)) * cb
        buf = cow[pos:pos + cb]
        if len(buf) < cb:
            break
        slots = []
        for i in range(e):
            old, new = struct.unpack_from("<QQ", buf, 16 * i)
            if new == 0:
                break
            slots.append((old, new))
        out.append(slots)
        if len(slots) < e:
            break
        a += 1
    return out


def describe(cow, chunk, k):
    """what chunk k of a COW is"""
    e = chunk * SECTOR // 16
    if k == 0:
        return "header"
    if (k - 1) % (e + 1) == 0:
        return f"metadata area {(k - 1) // (e + 1)}"
    for a, slots in enumerate(areas(cow, chunk)):
        for i, (old, new) in enumerate(slots):
            if new == k:
                return f"data chunk of exception old_chunk {old} (area {a} slot {i})"
    return "data chunk no exception points to"


def label(buf):
    m = re.match(rb"(O:\d{6}|[WX]\d\d:[a-z0-9]+:\d{6}):", buf)
    return m.group(1).decode() if m else f"unlabelled bytes {buf[:8].hex()}"


def cmd_cmpcow(a_path, b_path, chunk):
    a = open(a_path, "rb").read()
    b = open(b_path, "rb").read()
    if len(a) != len(b):
        print(f"sizes differ: {len(a)} vs {len(b)} bytes")
    if a == b:
        print(f"identical ({len(a) >> 10} KiB)")
        return 0
    cb = chunk * SECTOR
    n = max(len(a), len(b)) // cb
    diff = [k for k in range(n) if a[k * cb:(k + 1) * cb] != b[k * cb:(k + 1) * cb]]
    k = diff[0]
    ca, cbk = a[k * cb:(k + 1) * cb], b[k * cb:(k + 1) * cb]
    byte = next(i for i in range(min(len(ca), len(cbk))) if ca[i] != cbk[i]) if ca and cbk else 0
    print(f"{len(diff)} of {n} chunks differ; first: chunk {k} (dmnbd: {describe(a, chunk, k)}; "
          f"kernel: {describe(b, chunk, k)}), first differing byte {byte} of it")
    if k == 0:
        print(f"  header dmnbd {ca[:16].hex()} kernel {cbk[:16].hex()}")
    elif describe(a, chunk, k).startswith("metadata"):
        slot = byte // 16
        print(f"  slot {slot}: dmnbd {struct.unpack_from('<QQ', ca, slot * 16)} "
              f"kernel {struct.unpack_from('<QQ', cbk, slot * 16)}")
    else:
        s = byte // SECTOR * SECTOR
        print(f"  sector {byte // SECTOR} of the chunk, byte {byte % SECTOR}: dmnbd has {label(ca[s:])}, "
              f"kernel has {label(cbk[s:])}")
    print(f"  differing chunks (first 20): {diff[:20]}")
    ea, eb = areas(a, chunk), areas(b, chunk)
    print(f"  exceptions: dmnbd {sum(map(len, ea))} in {len(ea)} area(s), kernel {sum(map(len, eb))} in {len(eb)} area(s)")
    return 1


def model(chunk, cow_sectors, seqs):
    """The kernel's allocation for the sequences (sequential writes): how
    many exceptions; status numbers."""
    e = chunk * SECTOR // 16
    have = set()
    next_free = 2
    count = 0

    def alloc(c):
        nonlocal next_free, count
        if c in have:
            return
        if (next_free + 1) * chunk > cow_sectors:
            die(f"chunk {chunk}: COW too small for the sequence")
        have.add(c)
        count += 1
        next_free += 1
        if next_free % (e + 1) == 1:
            next_free += 1
    for dev, sector, n in (op for seq in seqs for op in seq):
        if dev not in ("base", f"s{chunk}"):
            continue
        for c in range(sector // chunk, (sector + n - 1) // chunk + 1):
            alloc(c)
    current_area = count // e
    return count, f"{next_free * chunk}/{cow_sectors} {(current_area + 2) * chunk}"


def cmd_model(which):
    seqs = [sequence()] + ([sequence2()] if which == "ops2" else [])
    for c in (8, 128):
        n, st = model(c, COW_SECTORS[c], seqs)
        print(f"s{c} {st} exceptions={n}")


def main(argv):
    if len(argv) == 3 and argv[1] == "prepare":
        cmd_prepare(argv[2])
    elif len(argv) == 5 and argv[1] == "write":
        cmd_write(argv[2], argv[3], argv[4])
    elif len(argv) >= 3 and argv[1] == "sha":
        cmd_sha(argv[2], argv[3:])
    elif len(argv) == 5 and argv[1] == "cmpcow":
        sys.exit(cmd_cmpcow(argv[2], argv[3], int(argv[4])))
    elif len(argv) == 3 and argv[1] == "model":
        cmd_model(argv[2])
    else:
        die("usage: prepare WORK | write SOCKET WORK OPS | sha SOCKET EXPORT... | cmpcow A B CHUNK | model OPS")


if __name__ == "__main__":
    main(sys.argv)
