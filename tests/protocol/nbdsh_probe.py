#!/usr/bin/python3
"""libnbd probe (nbd-protocol.md section 5) turned into assertions.

usage: nbdsh_probe.py SOCKET
Layout (nbdsh_probe.sh creates it):
  disk: 128 MiB = [0,64M) linear over a fresh sparse 64 MiB file, [64M,128M) zero
  ro:   read-only 4 MiB linear      bad: 1 MiB error target
Prints "ok - ..." / "not ok - ..."; exit 1 if any check failed.
"""
import errno
import os
import sys
import traceback

import nbd

MiB = 1 << 20
SOCK = sys.argv[1]
SIZE = 128 * MiB
ZERO_START = 64 * MiB
DESCS = {"disk": "linear disk with a zero tail", "ro": "read-only device", "bad": "every I/O fails"}
failures = 0


def check(desc, cond, detail=""):
    global failures
    if not cond:
        failures += 1
    print(("ok - " if cond else "not ok - ") + desc + ("" if cond or not detail else ": " + str(detail)))
    sys.stdout.flush()
    return cond


def errnum_of(f):
    """Run f; return None on success, else the nbd.Error errnum (or -1 if none)."""
    try:
        f()
        return None
    except nbd.Error as e:
        return e.errnum if e.errnum is not None else -1


def safe(f):
    """Value of f(), or the error text (so a missing feature fails one check, not the test)."""
    try:
        return f()
    except nbd.Error as e:
        return "error: %s" % e


def handle(name="disk", opt_mode=False, sr=True, meta=True):
    h = nbd.NBD()
    h.set_export_name(name)
    h.set_request_structured_replies(sr)
    if meta:
        h.add_meta_context("base:allocation")
    if opt_mode:
        h.set_opt_mode(True)
        h.set_full_info(True)
    h.connect_unix(SOCK)
    return h


def extents(h, offset, count, flags=0):
    """All base:allocation extents from BLOCK_STATUS, looping like a client: [(off, len, status)]."""
    out, pos, end = [], offset, offset + count
    while pos < end:
        got = []
        h.block_status(end - pos, pos, lambda m, o, e, err: got.extend(e) if m == "base:allocation" else 0, flags)
        if not got:
            raise AssertionError("no extents at %d" % pos)
        for i in range(0, len(got), 2):
            if got[i] == 0:
                raise AssertionError("zero-length extent at %d" % pos)
            out.append((pos, got[i], got[i + 1]))
            pos += got[i]
        if flags & nbd.CMD_FLAG_REQ_ONE:
            break
    return out


def normalize(ext, offset, count):
    """Merge equal-status neighbours and clip to the request (a server may split or run past)."""
    res = []
    for o, n, s in ext:
        o2, e2 = max(o, offset), min(o + n, offset + count)
        if e2 <= o2:
            continue
        if res and res[-1][2] == s and res[-1][0] + res[-1][1] == o2:
            res[-1] = (res[-1][0], e2 - res[-1][0], s)
        else:
            res.append((o2, e2 - o2, s))
    return res


def t_options():
    h = handle(opt_mode=True)
    exports = {}
    h.opt_list(lambda n, d: exports.__setitem__(n, d))
    check("opt_list: names", set(DESCS) <= set(exports), exports)
    check("opt_list: descriptions", all(exports.get(n) == d for n, d in DESCS.items()), exports)
    ctxs = []
    h.opt_list_meta_context(lambda c: ctxs.append(c))
    check("opt_list_meta_context offers base:allocation", "base:allocation" in ctxs, ctxs)
    h.opt_info()
    check("opt_info: size", h.get_size() == SIZE, h.get_size())
    name, desc = safe(h.get_canonical_export_name), safe(h.get_export_description)
    check("opt_info: canonical name", name == "disk", name)
    check("opt_info: description", desc == DESCS["disk"], desc)
    bs = (h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM))
    check("block sizes 512/4096/32MiB", bs == (512, 4096, 32 * MiB), bs)
    h.opt_go()
    check("structured replies negotiated", h.get_structured_replies_negotiated())
    check("protocol newstyle-fixed", h.get_protocol() == "newstyle-fixed", h.get_protocol())
    for name in ("flush", "fua", "trim", "zero", "fast_zero", "df", "multi_conn", "cache"):
        check("can_" + name, getattr(h, "can_" + name)() is True)
    check("can_meta_context base:allocation", h.can_meta_context("base:allocation"))
    check("not read-only", h.is_read_only() is False)
    h.shutdown()


def t_io():
    h = handle()
    buf = b"U" * 65536
    h.pwrite(buf, 0, nbd.CMD_FLAG_FUA)
    check("pwrite FUA / pread", h.pread(65536, 0) == buf)
    h.pwrite(b"V" * (3 * MiB), 65536)
    h.zero(1 * MiB, 65536, nbd.CMD_FLAG_NO_HOLE)
    check("zero NO_HOLE reads back zero", h.pread(1 * MiB, 65536) == bytes(1 * MiB))
    fz = 1 * MiB + 65536    # still "V" here
    e = errnum_of(lambda: h.zero(1 * MiB, fz, nbd.CMD_FLAG_FAST_ZERO))
    check("zero FAST_ZERO -> ok or ENOTSUP", e in (None, errno.ENOTSUP), e)
    if e is None:
        check("... reads back zero", h.pread(1 * MiB, fz) == bytes(1 * MiB))
    else:
        check("... ENOTSUP changed nothing", h.pread(1 * MiB, fz) == b"V" * (1 * MiB))
    h.zero(1 * MiB, 2 * MiB)
    check("zero (may punch) reads back zero", h.pread(1 * MiB, 2 * MiB) == bytes(1 * MiB))
    h.trim(3 * MiB, 65536)
    h.cache(65536, 0)
    h.flush()
    check("trim / cache / flush succeed", True)
    check("data outside trimmed range intact", h.pread(65536, 0) == buf)
    h.shutdown()


def t_block_status():
    h = handle()
    # Fresh file region: 56M..64M untouched except 128 KiB written at 60M; zero target from 64M.
    h.pwrite(b"D" * (128 * 1024), 60 * MiB)
    h.flush()
    off, cnt = 56 * MiB, 16 * MiB
    want = [(56 * MiB, 4 * MiB, 3), (60 * MiB, 128 * 1024, 0), (60 * MiB + 128 * 1024, 12 * MiB - 128 * 1024, 3)]
    got = normalize(extents(h, off, cnt), off, cnt)
    check("block_status full: exact extents (hole|zero, data, hole|zero incl. zero target)", got == want, got)
    one = extents(h, off, cnt, nbd.CMD_FLAG_REQ_ONE)
    check("block_status REQ_ONE: one extent, status 3, within the file hole",
          len(one) == 1 and one[0][2] == 3 and 0 < one[0][1] <= 4 * MiB, one)
    one = extents(h, 60 * MiB, 1 * MiB, nbd.CMD_FLAG_REQ_ONE)
    check("block_status REQ_ONE at data: status 0, <= 128 KiB",
          len(one) == 1 and one[0][2] == 0 and one[0][1] <= 128 * 1024, one)
    tail = extents(h, SIZE - 8 * MiB, 8 * MiB)
    check("block_status at end of export: zero target 3, not past the end",
          all(s == 3 for _, _, s in tail) and tail[-1][0] + tail[-1][1] <= SIZE, tail)
    chunks = []
    h.pread_structured(256 * 1024, 60 * MiB - 64 * 1024,
                       lambda b, o, s, err: chunks.append((o, len(b), s)), nbd.CMD_FLAG_DF)
    check("pread_structured DF: one data chunk", chunks == [(60 * MiB - 64 * 1024, 256 * 1024, nbd.READ_DATA)], chunks)
    chunks = []
    h.pread_structured(1 * MiB, ZERO_START, lambda b, o, s, err: chunks.append((o, len(b), s)))
    check("pread_structured over zero target: holes covering the range",
          chunks and all(s == nbd.READ_HOLE for _, _, s in chunks) and sum(n for _, n, _ in chunks) == 1 * MiB, chunks)
    h.shutdown()


def t_negative():
    h = handle()
    h.set_strict_mode(0)   # let libnbd send requests a strict client would refuse
    cases = [
        ("pread beyond end", lambda: h.pread(4096, SIZE), errno.EINVAL),
        ("pread crossing end", lambda: h.pread(8192, SIZE - 4096), errno.EINVAL),
        ("pread length 0", lambda: h.pread(0, 0), errno.EINVAL),
        ("pread unknown flag 0x8000", lambda: h.pread(512, 0, 0x8000), errno.EINVAL),
        ("pwrite beyond end", lambda: h.pwrite(b"x" * 4096, SIZE), errno.ENOSPC),
        ("zero beyond end", lambda: h.zero(4096, SIZE), errno.ENOSPC),
        ("trim beyond end", lambda: h.trim(4096, SIZE), errno.EINVAL),
        ("block_status beyond end", lambda: h.block_status(4096, SIZE, lambda *a: 0), errno.EINVAL),
        ("pread 33 MiB", lambda: h.pread(33 * MiB, 0), (errno.EINVAL, errno.EOVERFLOW)),
    ]
    for desc, f, want in cases:
        e = errnum_of(f)
        want = want if isinstance(want, tuple) else (want,)
        check("%s -> %s" % (desc, "/".join(errno.errorcode[w] for w in want)), e in want, "errnum %s" % e)
        check("... still connected", h.aio_is_ready() and h.pread(512, 0) is not None)
    # Unaligned I/O: either served correctly or EINVAL, never a disconnect.
    h.pwrite(bytes(range(256)) * 16, 0)
    e = errnum_of(lambda: check("unaligned pread returns right data", h.pread(3, 1) == bytes([1, 2, 3])))
    check("unaligned pread: ok or EINVAL", e in (None, errno.EINVAL), e)
    check("... still connected", h.pread(512, 0) is not None)
    h.shutdown()


def t_readonly_error():
    h = handle("ro")
    check("ro: is_read_only", h.is_read_only() is True)
    h.set_strict_mode(0)
    for desc, f in (("pwrite", lambda: h.pwrite(b"x" * 4096, 0)), ("trim", lambda: h.trim(4096, 0)),
                    ("zero", lambda: h.zero(4096, 0))):
        e = errnum_of(f)
        check("ro: %s -> EPERM" % desc, e == errno.EPERM, e)
    check("ro: pread works", h.pread(4096, 0) is not None)
    h.shutdown()
    h = handle("bad")
    check("bad: size 1 MiB", h.get_size() == 1 * MiB, h.get_size())
    for i in range(2):
        e = errnum_of(lambda: h.pread(4096, i * 4096))
        check("bad: pread #%d -> EIO" % (i + 1), e == errno.EIO, e)
    e = errnum_of(lambda: h.pwrite(b"x" * 4096, 0))
    check("bad: pwrite -> EIO", e == errno.EIO, e)
    h.shutdown()


def t_multi_conn():
    hs = [handle() for _ in range(4)]
    check("multi-conn advertised", all(h.can_multi_conn() for h in hs))
    base = 40 * MiB
    blobs = [os.urandom(65536) for _ in hs]
    for i, h in enumerate(hs):
        h.pwrite(blobs[i], base + i * 65536)
    hs[0].flush()   # one flush must cover writes acknowledged on every connection
    good = all(h.pread(65536, base + i * 65536) == blobs[i] for h in hs for i in range(4))
    check("4 connections: each sees every connection's writes after a flush on one", good)
    for h in hs:
        h.shutdown()


def t_simple_and_oldstyle_flags():
    h = handle(sr=False, meta=False)
    check("simple replies: SR not negotiated", not h.get_structured_replies_negotiated())
    check("simple replies: DF not advertised", h.can_df() is False)
    h.pwrite(b"S" * 8192, 44 * MiB)
    check("simple replies: pwrite/pread", h.pread(8192, 44 * MiB) == b"S" * 8192)
    check("simple replies: zero region reads zero", h.pread(65536, ZERO_START) == bytes(65536))
    h.shutdown()
    h = nbd.NBD()
    h.set_handshake_flags(0)   # non-fixed newstyle: only EXPORT_NAME, and 124 zero bytes follow
    h.set_export_name("disk")
    h.connect_unix(SOCK)
    check("non-fixed newstyle: protocol newstyle", h.get_protocol() == "newstyle", h.get_protocol())
    check("non-fixed newstyle: size and read", h.get_size() == SIZE and h.pread(8192, 44 * MiB) == b"S" * 8192)
    h.shutdown()
    h = handle("", opt_mode=True)
    h.opt_info()
    check("default export \"\": size of first device", h.get_size() == SIZE, h.get_size())
    name = safe(h.get_canonical_export_name)
    check("default export \"\": canonical name", name in ("disk", ""), name)
    h.opt_go()
    check("default export \"\": read", h.pread(8192, 44 * MiB) == b"S" * 8192)
    h.shutdown()


TESTS = [t_options, t_io, t_block_status, t_negative, t_readonly_error, t_multi_conn, t_simple_and_oldstyle_flags]

if __name__ == "__main__":
    for t in TESTS:
        print("# " + t.__name__)
        try:
            t()
        except Exception as e:
            check("%s completed" % t.__name__, False, "%s: %s" % (type(e).__name__, e))
            traceback.print_exc(file=sys.stderr)
    print("# %d check(s) failed" % failures)
    sys.exit(1 if failures else 0)
