#!/usr/bin/python3
"""Raw-socket NBD probe (no libnbd): negative and edge cases of the handshake
and transmission phases, checked against doc/proto.md rules.

usage: raw_probe.py SOCKET [DISK [RO [BAD]]]

Expected layout (raw_probe.sh creates it):
  DISK (default "disk", first device): 128 MiB = [0,64M) linear over a fresh
       sparse 64 MiB file, [64M,128M) zero target; description DISK_DESC.
  RO   (default "ro"):  read-only device.
  BAD  (default "bad"): error target (every I/O fails with EIO).
Prints "ok - ..." / "not ok - ..." per check; exit 1 if any failed.
"""
import os
import socket
import struct
import sys
import traceback

MiB = 1 << 20
DISK_SIZE = 128 * MiB
ZERO_START = 64 * MiB
DISK_DESC = os.environ.get("DISK_DESC", "linear disk with a zero tail")

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668E33EF

# options
O_EXPORT_NAME, O_ABORT, O_LIST, O_STARTTLS, O_INFO, O_GO = 1, 2, 3, 5, 6, 7
O_SR, O_LIST_META, O_SET_META, O_EXT_HDR = 8, 9, 10, 11
# option replies
R_ACK, R_SERVER, R_INFO, R_META = 1, 2, 3, 4
E_UNSUP, E_POLICY, E_INVALID, E_UNKNOWN = 0x80000001, 0x80000002, 0x80000003, 0x80000006
I_EXPORT, I_NAME, I_DESC, I_BLOCK = 0, 1, 2, 3
# commands and flags
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WZ, BS = 0, 1, 2, 3, 4, 5, 6, 7
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 0x10
# transmission flags
T_HAS, T_RO, T_FLUSH, T_FUA, T_TRIM, T_WZ, T_DF = 1, 2, 4, 8, 0x20, 0x40, 0x80
T_MULTI, T_CACHE, T_FAST_ZERO = 0x100, 0x400, 0x800
# chunk types
C_NONE, C_DATA, C_HOLE, C_BS, C_ERR, C_ERR_OFF = 0, 1, 2, 5, 0x8001, 0x8002
EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW = 1, 5, 22, 28, 75

SOCK = sys.argv[1] if len(sys.argv) > 1 else "nbd.sock"
DISK = sys.argv[2] if len(sys.argv) > 2 else "disk"
RO = sys.argv[3] if len(sys.argv) > 3 else "ro"
BAD = sys.argv[4] if len(sys.argv) > 4 else "bad"

failures = 0


def check(desc, cond, detail=""):
    global failures
    if cond:
        print("ok - " + desc)
    else:
        failures += 1
        print("not ok - " + desc + (": " + detail if detail else ""))
    sys.stdout.flush()
    return cond


class Closed(Exception):
    pass


class Reply:
    """All messages received for one request."""

    def __init__(self):
        self.error = 0          # first error seen (simple error or error chunk)
        self.data = b""         # simple READ payload
        self.chunks = []        # (flags, type, payload) for structured replies
        self.simple = None      # True/False once known


class Conn:
    def __init__(self, path=SOCK, timeout=20):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.pending = {}       # cookie -> (cmd, length)
        self.next_cookie = 0x1000
        self.size = self.tflags = None

    def close(self):
        self.s.close()

    def recv(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                b = self.s.recv(min(n - len(buf), 4 * MiB))
            except ConnectionResetError:
                b = b""
            if not b:
                raise Closed("connection closed after %d of %d bytes" % (len(buf), n))
            buf += b
        return bytes(buf)

    def send(self, data):
        self.s.sendall(data)

    def is_closed(self, wait=5.0):
        """True if the peer closes (EOF) within `wait` s; any bytes sent first are drained."""
        self.s.settimeout(wait)
        try:
            while True:
                b = self.s.recv(65536)
                if not b:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.s.settimeout(20)

    # ---- handshake ----
    def greeting(self):
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        return magic, opt, hflags

    def start(self, cflags=3):
        self.greeting()
        self.send(struct.pack(">I", cflags))

    def opt(self, opt, data=b""):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def opt_reply(self):
        magic, opt, rtype, ln = struct.unpack(">QIII", self.recv(20))
        if magic != OPT_REPLY_MAGIC:
            raise Exception("bad option reply magic %#x" % magic)
        return opt, rtype, self.recv(ln)

    def opt_final(self, opt, data=b""):
        """Send an option; return (list of non-final replies, final reply type, final data)."""
        self.opt(opt, data)
        replies = []
        while True:
            o, t, d = self.opt_reply()
            if o != opt:
                raise Exception("option reply echoes %d, expected %d" % (o, opt))
            if t == R_ACK or t & 0x80000000:
                return replies, t, d
            replies.append((t, d))

    def go(self, name, infos=(), opt=O_GO):
        n = name.encode()
        data = struct.pack(">I", len(n)) + n + struct.pack(">H", len(infos))
        data += b"".join(struct.pack(">H", i) for i in infos)
        replies, t, d = self.opt_final(opt, data)
        info = {}
        for rt, rd in replies:
            if rt == R_INFO:
                (it,) = struct.unpack(">H", rd[:2])
                info[it] = rd[2:]
        if I_EXPORT in info and len(info[I_EXPORT]) == 10:
            self.size, self.tflags = struct.unpack(">QH", info[I_EXPORT])
        return t, info, replies

    def meta(self, opt, name, queries):
        n = name.encode()
        data = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q)) + q.encode()
        replies, t, d = self.opt_final(opt, data)
        ctx = {}
        for rt, rd in replies:
            if rt == R_META:
                ctx[rd[4:].decode()] = struct.unpack(">I", rd[:4])[0]
        return t, ctx

    # ---- transmission ----
    def request(self, cmd, flags=0, offset=0, length=0, payload=b"", cookie=None):
        if cookie is None:
            cookie = self.next_cookie
            self.next_cookie += 1
        self.pending[cookie] = (cmd, length)
        self.send(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset, length) + payload)
        return cookie

    def read_message(self, replies):
        """Read one reply message into replies[cookie]; return the cookie."""
        (magic,) = struct.unpack(">I", self.recv(4))
        if magic == SIMPLE_MAGIC:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            if cookie not in self.pending:
                raise Exception("simple reply for unknown/finished cookie %#x" % cookie)
            cmd, length = self.pending.pop(cookie)
            r = replies.setdefault(cookie, Reply())
            r.simple, r.error = True, err
            if cmd == READ and err == 0:
                r.data = self.recv(length)
            return cookie
        if magic == STRUCT_MAGIC:
            flags, ctype, cookie, ln = struct.unpack(">HHQI", self.recv(16))
            if cookie not in self.pending:
                raise Exception("chunk for unknown/finished cookie %#x" % cookie)
            payload = self.recv(ln)
            r = replies.setdefault(cookie, Reply())
            r.simple = False
            r.chunks.append((flags, ctype, payload))
            if ctype & 0x8000 and not r.error:
                r.error = struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else -1
            if flags & 1:
                self.pending.pop(cookie)
            return cookie
        raise Exception("bad reply magic %#x" % magic)

    def wait(self, cookies):
        replies = {}
        cookies = set(cookies)
        while any(c in self.pending for c in cookies):
            self.read_message(replies)
        return replies

    def cmd(self, cmd, flags=0, offset=0, length=0, payload=b""):
        c = self.request(cmd, flags, offset, length, payload)
        return self.wait([c])[c]


def open_tx(name=DISK, sr=False, meta=False, cflags=3):
    """Connection in transmission phase (GO); optionally with SR and base:allocation."""
    c = Conn()
    c.start(cflags)
    if sr:
        _, t, _ = c.opt_final(O_SR)
        assert t == R_ACK, "STRUCTURED_REPLY refused: %#x" % t
    if meta:
        t, ctx = c.meta(O_SET_META, name, ["base:allocation"])
        assert t == R_ACK and "base:allocation" in ctx, "SET_META_CONTEXT failed"
        c.ctx_id = ctx["base:allocation"]
    t, info, _ = c.go(name)
    assert t == R_ACK, "GO %r failed: %#x" % (name, t)
    return c


def pattern(seed, n):
    return bytes((seed + i // 512) & 0xFF for i in range(n))


def read_ok(c, offset=0, length=4096):
    """Connection still usable: a small read succeeds."""
    r = c.cmd(READ, 0, offset, length)
    return r.error == 0


def covered(chunks, offset, length):
    """Check READ chunks cover [offset, offset+length) exactly once; return (ok, detail, data)."""
    buf = bytearray(length)
    seen = [False] * ((length + 511) // 512)
    for flags, t, p in chunks:
        if t == C_DATA:
            (o,) = struct.unpack(">Q", p[:8])
            n = len(p) - 8
            content = p[8:]
        elif t == C_HOLE:
            o, n = struct.unpack(">QI", p[:12])
            content = bytes(n)
        else:
            continue
        if n == 0 or o < offset or o + n > offset + length:
            return False, "chunk %d+%d outside request" % (o, n), None
        rel = o - offset
        buf[rel:rel + n] = content
        for b in range(rel // 512, (rel + n + 511) // 512):
            if seen[b]:
                return False, "overlapping chunks at %d" % o, None
            seen[b] = True
    if not all(seen):
        return False, "range not fully covered", None
    return True, "", bytes(buf)


def extents_of(reply, ctx_id):
    """Parse the BLOCK_STATUS chunk(s): list of (ctx, [(len, status)])."""
    out = []
    for flags, t, p in reply.chunks:
        if t == C_BS:
            (cid,) = struct.unpack(">I", p[:4])
            ext = [struct.unpack(">II", p[i:i + 8]) for i in range(4, len(p), 8)]
            out.append((cid, ext, (len(p) - 4) % 8 == 0))
    return out


# ====================================================================== handshake
def t_greeting():
    c = Conn()
    magic, opt, hflags = c.greeting()
    check("greeting magic NBDMAGIC + IHAVEOPT", magic == NBDMAGIC and opt == IHAVEOPT,
          "%#x %#x" % (magic, opt))
    check("handshake flags = FIXED_NEWSTYLE|NO_ZEROES", hflags == 3, "got %#x" % hflags)
    c.close()


def t_unknown_option():
    c = Conn()
    c.start()
    _, t, _ = c.opt_final(0x7654321, b"\xaa" * 100)
    check("unknown option with 100-byte payload -> ERR_UNSUP", t == E_UNSUP, "got %#x" % t)
    t, info, _ = c.go(DISK)
    check("GO after unknown option on same connection -> ACK", t == R_ACK, "got %#x" % t)
    check("... and transmission works", read_ok(c))
    c.close()


def t_list():
    c = Conn()
    c.start()
    _, t, _ = c.opt_final(O_LIST, b"junk")
    check("LIST with payload -> ERR_INVALID", t == E_INVALID, "got %#x" % t)
    replies, t, _ = c.opt_final(O_LIST)
    check("LIST -> ACK", t == R_ACK, "got %#x" % t)
    names, lens_ok = {}, True
    for rt, rd in replies:
        (nl,) = struct.unpack(">I", rd[:4])
        lens_ok &= rt == R_SERVER and nl <= len(rd) - 4
        names[rd[4:4 + nl].decode()] = rd[4 + nl:].decode()
    check("LIST REP_SERVER name lengths consistent", lens_ok)
    check("LIST names all devices", {DISK, RO, BAD} <= set(names), "got %s" % sorted(names))
    check("LIST carries description", names.get(DISK) == DISK_DESC, "got %r" % names.get(DISK))
    _, t, _ = c.opt_final(O_ABORT)
    check("ABORT -> ACK", t == R_ACK, "got %#x" % t)
    check("ABORT -> server closes", c.is_closed())


def t_starttls_exthdr():
    c = Conn()
    c.start()
    _, t, _ = c.opt_final(O_STARTTLS)
    check("STARTTLS without TLS -> ERR_POLICY or ERR_UNSUP", t in (E_POLICY, E_UNSUP), "got %#x" % t)
    _, t, _ = c.opt_final(O_EXT_HDR)
    check("EXTENDED_HEADERS -> ERR_UNSUP", t == E_UNSUP, "got %#x" % t)
    t, _, _ = c.go(DISK)
    check("GO after STARTTLS/EXTENDED_HEADERS refusals -> ACK", t == R_ACK, "got %#x" % t)
    c.close()


def t_info_bad_length():
    c = Conn()
    c.start()
    n = DISK.encode()
    # namelen claims more bytes than the option carries
    _, t, _ = c.opt_final(O_INFO, struct.pack(">I", 200) + n + b"\0\0")
    check("INFO with namelen > optlen -> ERR_INVALID", t == E_INVALID, "got %#x" % t)
    # nreq says 2 requests, only one present (optlen != 6+namelen+2*nreq)
    _, t, _ = c.opt_final(O_INFO, struct.pack(">I", len(n)) + n + struct.pack(">HH", 2, I_NAME))
    check("INFO with short request list -> ERR_INVALID", t == E_INVALID, "got %#x" % t)
    _, t, _ = c.opt_final(O_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0) + b"\0")
    check("GO with trailing byte -> ERR_INVALID", t == E_INVALID, "got %#x" % t)
    t, _, _ = c.go(DISK)
    check("GO after malformed INFO/GO -> ACK", t == R_ACK, "got %#x" % t)
    c.close()


def t_go_unknown():
    c = Conn()
    c.start()
    t, info, replies = c.go("no-such-export")
    check("GO unknown export -> ERR_UNKNOWN", t == E_UNKNOWN, "got %#x" % t)
    check("GO unknown export: no INFO before the error", not replies, "%d replies" % len(replies))
    if t == R_ACK:
        return c.close()    # we are in transmission now; the rest would misparse
    t, info, _ = c.go(DISK, opt=O_INFO)
    check("INFO after failed GO -> ACK", t == R_ACK, "got %#x" % t)
    t, info, _ = c.go(DISK)
    check("GO after failed GO -> ACK", t == R_ACK, "got %#x" % t)
    check("... and transmission works", read_ok(c))
    c.close()


def t_info_go_content():
    c = Conn()
    c.start()
    for opt, label in ((O_INFO, "INFO"), (O_GO, "GO")):
        t, info, _ = c.go(DISK, opt=opt)
        check("%s with 0 requests -> INFO_EXPORT (length 12) + ACK" % label,
              t == R_ACK and I_EXPORT in info and len(info[I_EXPORT]) == 10,
              "type %#x, infos %s" % (t, sorted(info)))
        check("%s: size = %d" % (label, DISK_SIZE), c.size == DISK_SIZE, "got %s" % c.size)
        f = c.tflags or 0
        want = T_HAS | T_FLUSH | T_FUA | T_TRIM | T_WZ | T_MULTI | T_CACHE | T_FAST_ZERO
        check("%s: flags HAS_FLAGS FLUSH FUA TRIM WRITE_ZEROES MULTI_CONN CACHE FAST_ZERO, not RO"
              % label, f & want == want and not f & T_RO, "got %#x" % f)
        check("%s: no SEND_DF without structured replies" % label, not f & T_DF, "got %#x" % f)
        if opt == O_INFO:
            t, info, _ = c.go(DISK, opt=O_INFO, infos=(I_NAME, I_DESC, I_BLOCK))
            check("INFO NAME = export name", info.get(I_NAME) == DISK.encode(), repr(info.get(I_NAME)))
            check("INFO DESCRIPTION", info.get(I_DESC) == DISK_DESC.encode(), repr(info.get(I_DESC)))
            bs = struct.unpack(">III", info[I_BLOCK]) if len(info.get(I_BLOCK, b"")) == 12 else None
            check("INFO BLOCK_SIZE = 512/4096/32MiB", bs == (512, 4096, 32 * MiB), "got %s" % (bs,))
            t, info, _ = c.go("", opt=O_INFO, infos=(I_NAME,))
            check("INFO default export \"\" -> first device", t == R_ACK and c.size == DISK_SIZE,
                  "type %#x size %s" % (t, c.size))
    check("no padding after GO: first reply is a simple reply", read_ok(c))
    c.close()
    c = open_tx(RO)
    check("read-only device: READ_ONLY flag", (c.tflags or 0) & T_RO, "got %#x" % (c.tflags or 0))
    c.close()
    c = open_tx(sr=True)
    check("SEND_DF advertised with structured replies", (c.tflags or 0) & T_DF, "got %#x" % c.tflags)
    c.close()


def t_export_name():
    # NO_ZEROES negotiated: exactly size+flags, then the stream continues with our reply.
    c = Conn()
    c.start(cflags=3)
    c.opt(O_EXPORT_NAME, DISK.encode())
    size, flags = struct.unpack(">QH", c.recv(10))
    check("EXPORT_NAME (NO_ZEROES): size", size == DISK_SIZE, "got %d" % size)
    r = c.cmd(READ, 0, 0, 512)
    check("EXPORT_NAME (NO_ZEROES): no 124 zero bytes, READ works", r.simple and r.error == 0)
    c.close()
    # Without NO_ZEROES the 124 zero bytes must be there.
    c = Conn()
    c.start(cflags=1)
    c.opt(O_EXPORT_NAME, DISK.encode())
    size, flags = struct.unpack(">QH", c.recv(10))
    pad = c.recv(124)
    check("EXPORT_NAME without NO_ZEROES: 124 zero bytes", pad == bytes(124))
    check("... then READ works", read_ok(c))
    c.close()
    # Non-fixed newstyle client (flags 0) may still use EXPORT_NAME.
    c = Conn()
    c.start(cflags=0)
    c.opt(O_EXPORT_NAME, b"")
    size, flags = struct.unpack(">QH", c.recv(10))
    c.recv(124)
    check("client flags 0 + EXPORT_NAME \"\" -> default export", size == DISK_SIZE, "got %d" % size)
    c.close()
    c = Conn()
    c.start()
    c.opt(O_EXPORT_NAME, b"no-such-export")
    check("EXPORT_NAME unknown export -> connection closed", c.is_closed())


def t_bad_client_flags():
    c = Conn()
    c.start(cflags=0x1 | 0x4)
    # Whatever we send next, the server must have closed.
    try:
        c.opt(O_LIST)
    except OSError:
        pass
    check("client flags with unknown bit 0x4 -> connection closed", c.is_closed())


def t_meta_contexts():
    c = Conn()
    c.start()
    t, ctx = c.meta(O_SET_META, DISK, ["base:allocation"])
    check("SET_META_CONTEXT before STRUCTURED_REPLY -> ERR_INVALID", t == E_INVALID, "got %#x" % t)
    t, ctx = c.meta(O_LIST_META, DISK, [])
    check("LIST_META_CONTEXT (all) offers base:allocation", t == R_ACK and "base:allocation" in ctx,
          "type %#x ctx %s" % (t, ctx))
    _, t, _ = c.opt_final(O_SR)
    check("STRUCTURED_REPLY -> ACK", t == R_ACK, "got %#x" % t)
    _, t, _ = c.opt_final(O_SR, b"x")
    check("STRUCTURED_REPLY with payload -> ERR_INVALID", t == E_INVALID, "got %#x" % t)
    t, ctx = c.meta(O_SET_META, DISK, ["x-nosuch:thing", "base:allocation"])
    check("SET_META_CONTEXT selects only base:allocation", t == R_ACK and list(ctx) == ["base:allocation"],
          "type %#x ctx %s" % (t, ctx))
    # Length overruns inside the query list must be ERR_INVALID.
    n = DISK.encode()
    bad = struct.pack(">I", len(n)) + n + struct.pack(">II", 1, 100) + b"base:allocation"
    _, t, _ = c.opt_final(O_SET_META, bad)
    check("SET_META_CONTEXT with overrunning query length -> ERR_INVALID", t == E_INVALID, "got %#x" % t)
    c.close()


# =================================================================== transmission
def t_simple_rw():
    c = open_tx()
    data = pattern(7, 8192)
    r = c.cmd(WRITE, 0, 1 * MiB, len(data), data)
    check("simple WRITE 8 KiB", r.simple and r.error == 0, "err %d" % r.error)
    r = c.cmd(READ, 0, 1 * MiB, len(data))
    check("simple READ returns written data", r.simple and r.error == 0 and r.data == data)
    r = c.cmd(WRITE, F_FUA, 1 * MiB + 8192, 4096, pattern(9, 4096))
    check("WRITE with FUA", r.error == 0, "err %d" % r.error)
    r = c.cmd(READ, F_FUA, 1 * MiB, 512)
    check("READ with FUA flag accepted", r.error == 0, "err %d" % r.error)
    r = c.cmd(FLUSH, F_FUA)
    check("FLUSH with FUA flag accepted", r.error == 0, "err %d" % r.error)
    r = c.cmd(FLUSH)
    check("FLUSH", r.error == 0, "err %d" % r.error)
    r = c.cmd(CACHE, 0, 0, 1 * MiB)
    check("CACHE", r.error == 0, "err %d" % r.error)
    r = c.cmd(WRITE, 0, ZERO_START, 4096, pattern(3, 4096))
    check("WRITE to zero target succeeds (dropped)", r.error == 0, "err %d" % r.error)
    r = c.cmd(READ, 0, ZERO_START, 4096)
    check("zero target still reads zeroes", r.error == 0 and r.data == bytes(4096))
    r = c.cmd(WZ, 0, 1 * MiB, 4096)
    r2 = c.cmd(READ, 0, 1 * MiB, 8192)
    check("WRITE_ZEROES then READ", r.error == 0 and r2.data == bytes(4096) + data[4096:])
    r = c.cmd(WZ, F_NO_HOLE, 1 * MiB, 8192)
    check("WRITE_ZEROES NO_HOLE", r.error == 0, "err %d" % r.error)
    r = c.cmd(WZ, F_FAST_ZERO, 1 * MiB, 8192)
    check("WRITE_ZEROES FAST_ZERO -> ok or ENOTSUP", r.error in (0, 95), "err %d" % r.error)
    r = c.cmd(TRIM, 0, 1 * MiB, 64 * 1024)
    check("TRIM", r.error == 0, "err %d" % r.error)
    c.close()


def t_errors():
    c = open_tx()
    cases = [
        ("unknown command 99 -> EINVAL", (99, 0, 0, 512), (EINVAL,)),
        ("unknown flag 0x8000 on READ -> EINVAL", (READ, 0x8000, 0, 512), (EINVAL,)),
        ("FLUSH with nonzero offset -> EINVAL", (FLUSH, 0, 4096, 0), (EINVAL,)),
        ("zero-length READ -> EINVAL", (READ, 0, 0, 0), (EINVAL,)),
        ("READ beyond end -> EINVAL", (READ, 0, DISK_SIZE, 4096), (EINVAL,)),
        ("READ crossing end -> EINVAL", (READ, 0, DISK_SIZE - 512, 1024), (EINVAL,)),
        ("TRIM beyond end -> EINVAL", (TRIM, 0, DISK_SIZE, 4096), (EINVAL,)),
        ("WRITE_ZEROES beyond end -> ENOSPC", (WZ, 0, DISK_SIZE - 4096, 8192), (ENOSPC,)),
        ("33 MiB READ -> EINVAL or EOVERFLOW", (READ, 0, 0, 33 * MiB), (EINVAL, EOVERFLOW)),
        ("BLOCK_STATUS without structured replies -> EINVAL", (BS, 0, 0, 4096), (EINVAL,)),
    ]
    for desc, (cmd, flags, off, ln), want in cases:
        r = c.cmd(cmd, flags, off, ln)
        check(desc, r.error in want and r.data == b"", "err %d, %d data bytes" % (r.error, len(r.data)))
        check("... connection still works", read_ok(c))
    # DF is not advertised without SR: either rejected or harmless, never a disconnect.
    r = c.cmd(READ, F_DF, 0, 512)
    check("DF READ without structured replies -> EINVAL or plain data",
          (r.error == EINVAL and r.data == b"") or (r.error == 0 and len(r.data) == 512), "err %d" % r.error)
    check("... connection still works", read_ok(c))
    # A rejected WRITE's payload must be consumed: a desync would misparse it as requests.
    junk = struct.pack(">IHHQQI", REQ_MAGIC, 0, DISC, 0, 0, 0) * 200
    r = c.cmd(WRITE, 0, DISK_SIZE, len(junk), junk)
    check("WRITE beyond end (payload looks like DISC requests) -> ENOSPC", r.error == ENOSPC,
          "err %d" % r.error)
    r = c.cmd(WRITE, 0x8000, 0, 4096, junk[:4096])
    check("WRITE with unknown flag -> EINVAL", r.error == EINVAL, "err %d" % r.error)
    check("... payload consumed, READ works", read_ok(c))
    c.close()


def t_readonly():
    c = open_tx(RO)
    junk = struct.pack(">IHHQQI", REQ_MAGIC, 0, DISC, 0, 0, 0) * 146
    for desc, args in (("WRITE", (WRITE, 0, 0, len(junk), junk)), ("TRIM", (TRIM, 0, 0, 4096)),
                       ("WRITE_ZEROES", (WZ, 0, 0, 4096))):
        r = c.cmd(*args)
        check("read-only device: %s -> EPERM" % desc, r.error == EPERM, "err %d" % r.error)
    check("read-only device: READ works after refused writes", read_ok(c))
    r = c.cmd(FLUSH)
    check("read-only device: FLUSH ok", r.error == 0, "err %d" % r.error)
    c.close()


def t_pipeline():
    c = open_tx()
    base = 2 * MiB
    blobs = {}
    cookies = []
    for i in range(64):
        blobs[i] = pattern(i * 5 + 1, 4096)
        cookies.append(c.request(WRITE, 0, base + i * 4096, 4096, blobs[i], cookie=0xC0DE0000 + i))
    replies = c.wait(cookies)
    check("64 pipelined WRITEs: one reply each", sorted(replies) == sorted(cookies)
          and all(r.error == 0 for r in replies.values()))
    # Reads in reverse order with cookies that differ only in high bits.
    cookies = [c.request(READ, 0, base + i * 4096, 4096, cookie=(i << 40) | 0xFF) for i in range(63, -1, -1)]
    replies = c.wait(cookies)
    good = all(replies[(i << 40) | 0xFF].data == blobs[i] for i in range(64))
    check("64 pipelined READs: matched by cookie, data correct", len(replies) == 64 and good)
    # Nothing extra may arrive (each request answered exactly once).
    c.s.settimeout(0.5)
    try:
        extra = c.s.recv(1)
    except socket.timeout:
        extra = b""
    c.s.settimeout(20)
    check("no extra replies after pipeline", extra == b"", "got %r" % extra)
    c.close()


def t_big():
    c = open_tx()
    data = os.urandom(32 * MiB)
    r = c.cmd(WRITE, 0, 16 * MiB, len(data), data)
    check("32 MiB WRITE", r.error == 0, "err %d" % r.error)
    r = c.cmd(READ, 0, 16 * MiB, 32 * MiB)
    check("32 MiB READ returns the data", r.error == 0 and r.data == data)
    r = c.cmd(WZ, 0, 16 * MiB, 48 * MiB)
    check("48 MiB WRITE_ZEROES", r.error == 0, "err %d" % r.error)
    r = c.cmd(READ, 0, 16 * MiB, 32 * MiB)
    check("... reads back zero", r.error == 0 and r.data == bytes(32 * MiB))
    r = c.cmd(TRIM, 0, 16 * MiB, 48 * MiB)
    check("48 MiB TRIM", r.error == 0, "err %d" % r.error)
    c.close()


def t_structured():
    c = open_tx(sr=True)
    r = c.cmd(READ, 0, ZERO_START, 1 * MiB)
    ok, why, buf = covered(r.chunks, ZERO_START, 1 * MiB)
    types = {t for _, t, _ in r.chunks}
    check("structured READ of zero region: covered, all zero", ok and buf == bytes(1 * MiB), why)
    check("... uses OFFSET_HOLE chunks only", types <= {C_HOLE, C_NONE} and C_HOLE in types,
          "chunk types %s" % sorted(types))
    check("... only the last chunk has DONE", r.chunks and all(
        (f & 1) == (i == len(r.chunks) - 1) for i, (f, _, _) in enumerate(r.chunks)))
    data = pattern(11, 64 * 1024)
    c.cmd(WRITE, 0, 3 * MiB, len(data), data)
    r = c.cmd(READ, 0, 3 * MiB, len(data))
    ok, why, buf = covered(r.chunks, 3 * MiB, len(data))
    check("structured READ of data: covered, correct", ok and buf == data, why)
    r = c.cmd(READ, F_DF, ZERO_START - 32 * 1024, 64 * 1024)
    ok, why, buf = covered(r.chunks, ZERO_START - 32 * 1024, 64 * 1024)
    datachunks = [x for x in r.chunks if x[1] == C_DATA]
    check("DF READ (64 KiB, across linear/zero): exactly one OFFSET_DATA chunk",
          ok and len(datachunks) == 1 and len(datachunks[0][2]) == 8 + 64 * 1024,
          "%s; chunks %s" % (why, [(t, len(p)) for _, t, p in r.chunks]))
    r = c.cmd(READ, 0, DISK_SIZE, 4096)
    errs = [x for x in r.chunks if x[1] in (C_ERR, C_ERR_OFF)]
    check("structured READ beyond end -> ERROR chunk EINVAL with DONE",
          r.error == EINVAL and errs and r.chunks[-1][0] & 1,
          "err %d chunks %s" % (r.error, [(f, t) for f, t, _ in r.chunks]))
    if errs:
        e, ml = struct.unpack(">IH", errs[0][2][:6])
        check("... error chunk length = 6 + msglen", len(errs[0][2]) == 6 + ml + (8 if errs[0][1] == C_ERR_OFF else 0))
    r = c.cmd(READ, 0, 0, 0)
    check("structured zero-length READ -> EINVAL", r.error == EINVAL and not r.simple, "err %d" % r.error)
    r = c.cmd(WRITE, 0, 3 * MiB, 512, bytes(512))
    check("structured WRITE reply ok", r.error == 0, "err %d" % r.error)
    r = c.cmd(BS, 0, 0, 4096)
    check("BLOCK_STATUS without a selected context -> EINVAL", r.error == EINVAL, "err %d" % r.error)
    check("... connection still works", read_ok(c))
    c.close()


def t_block_status():
    c = open_tx(sr=True, meta=True)
    # Data written at 8M..8M+64K on a fresh sparse file; around it file holes; zero target from 64M.
    c.cmd(WRITE, 0, 8 * MiB, 64 * 1024, pattern(1, 64 * 1024))
    c.cmd(FLUSH)
    start, ln = 8 * MiB - 64 * 1024, 256 * 1024
    r = c.cmd(BS, 0, start, ln)
    ex = extents_of(r, c.ctx_id)
    check("BLOCK_STATUS: one chunk, right context id, well-formed",
          r.error == 0 and len(ex) == 1 and ex[0][0] == c.ctx_id and ex[0][2],
          "err %d chunks %s" % (r.error, [(cid, n) for cid, n, _ in ex]))
    if ex:
        lst = ex[0][1]
        check("extents nonzero", lst and all(n > 0 for n, _ in lst), str(lst))
        check("first n-1 extents sum < length", sum(n for n, _ in lst[:-1]) < ln, str(lst))
        # Walk the extents: hole|zero, then data, then hole|zero.
        pos, statuses = start, []
        for n, s in lst:
            statuses.append((pos, n, s))
            pos += n
        def status_at(off):
            for p, n, s in statuses:
                if p <= off < p + n:
                    return s
        check("file hole before data -> 3", status_at(start) == 3, str(statuses))
        check("written data -> 0", status_at(8 * MiB) == 0 and status_at(8 * MiB + 65535) == 0, str(statuses))
        if pos > 8 * MiB + 64 * 1024:
            check("file hole after data -> 3", status_at(8 * MiB + 64 * 1024) == 3, str(statuses))
    r = c.cmd(BS, F_REQ_ONE, start, ln)
    ex = extents_of(r, c.ctx_id)
    check("BLOCK_STATUS REQ_ONE -> exactly one extent <= length",
          r.error == 0 and len(ex) == 1 and len(ex[0][1]) == 1 and 0 < ex[0][1][0][0] <= 64 * 1024
          and ex[0][1][0][1] == 3, "err %d %s" % (r.error, ex))
    r = c.cmd(BS, 0, ZERO_START, 4 * MiB)
    ex = extents_of(r, c.ctx_id)
    check("BLOCK_STATUS of zero target -> HOLE|ZERO (3)",
          r.error == 0 and ex and all(s == 3 for _, s in ex[0][1]), "err %d %s" % (r.error, ex))
    r = c.cmd(BS, 0, DISK_SIZE - 4096, 4096)
    ex = extents_of(r, c.ctx_id)
    check("BLOCK_STATUS last 4 KiB: extents not past export end",
          r.error == 0 and ex and sum(n for n, _ in ex[0][1]) <= 4096, "err %d %s" % (r.error, ex))
    r = c.cmd(BS, 0, DISK_SIZE, 4096)
    check("BLOCK_STATUS beyond end -> EINVAL", r.error == EINVAL, "err %d" % r.error)
    check("... connection still works", read_ok(c))
    c.close()


def t_error_target():
    for sr in (False, True):
        mode = "structured" if sr else "simple"
        c = open_tx(BAD, sr=sr)
        r = c.cmd(READ, 0, 0, 4096)
        if sr:
            check("%s: error-target READ -> ERROR chunk EIO" % mode,
                  r.error == EIO and any(t in (C_ERR, C_ERR_OFF) for _, t, _ in r.chunks),
                  "err %d" % r.error)
        else:
            check("%s: error-target READ -> EIO, no data" % mode, r.error == EIO and r.data == b"",
                  "err %d" % r.error)
        r = c.cmd(WRITE, 0, 0, 4096, bytes(4096))
        check("%s: error-target WRITE -> EIO" % mode, r.error == EIO, "err %d" % r.error)
        r = c.cmd(READ, 0, 4096, 512)
        check("%s: connection keeps working after EIO" % mode, r.error == EIO, "err %d" % r.error)
        c.close()


def t_disc_and_magic():
    c = open_tx()
    c1 = c.request(READ, 0, 0, 4096)
    c.send(struct.pack(">IHHQQI", REQ_MAGIC, 0, DISC, 0xD15C, 0, 0))
    rep = c.wait([c1])
    check("DISC: earlier READ answered first", rep[c1].error == 0)
    check("DISC: server closes the connection", c.is_closed())
    c = open_tx()
    c.send(struct.pack(">IHHQQI", 0x12560953, 0, READ, 1, 0, 512))
    check("bad request magic -> connection closed", c.is_closed())
    c = open_tx()
    c.close()   # EOF without DISC (fio does this); the next connection must still work
    c = open_tx()
    check("server fine after a client EOF without DISC", read_ok(c))
    c.close()


def t_zero_length_and_overflow():
    c = open_tx(sr=True, meta=True)
    # Length 0 is unspecified except READ (EINVAL here); it must never cost the connection.
    for name, cmd in (("WRITE", WRITE), ("TRIM", TRIM), ("WRITE_ZEROES", WZ), ("CACHE", CACHE),
                      ("BLOCK_STATUS", BS)):
        r = c.cmd(cmd, 0, 4096, 0)
        check("zero-length %s answered (err %d), connection kept" % (name, r.error), read_ok(c))
    # offset + length wraps around 2^64: must be range errors, not a crash or a short op.
    top = (1 << 64) - 512
    r = c.cmd(READ, 0, top, 1024)
    check("READ with offset+length overflowing u64 -> EINVAL", r.error == EINVAL, "err %d" % r.error)
    r = c.cmd(WRITE, 0, top, 1024, bytes(1024))
    check("WRITE with offset+length overflowing u64 -> ENOSPC or EINVAL", r.error in (ENOSPC, EINVAL),
          "err %d" % r.error)
    r = c.cmd(BS, 0, top, 1024)
    check("BLOCK_STATUS with offset+length overflowing u64 -> EINVAL", r.error == EINVAL, "err %d" % r.error)
    check("... connection still works", read_ok(c))
    c.close()


def t_pipeline_mixed():
    """Many concurrent requests of all kinds on one SR connection: replies must never
    interleave mid-message (every message parses) and each request completes once."""
    c = open_tx(sr=True, meta=True)
    data = os.urandom(1 * MiB)
    c.cmd(WRITE, 0, 4 * MiB, len(data), data)
    reqs = {}   # cookie -> (kind, offset, length)
    for i in range(8):
        hole = ZERO_START + i * MiB
        reqs[c.request(READ, 0, 4 * MiB, 1 * MiB)] = ("read", 4 * MiB, 1 * MiB)
        reqs[c.request(READ, 0, hole, 1 * MiB)] = ("hole", hole, 1 * MiB)
        reqs[c.request(BS, 0, 0, DISK_SIZE)] = ("bs", 0, 0)
        reqs[c.request(WRITE, 0, 6 * MiB + i * 65536, 65536, bytes([i + 1]) * 65536)] = ("write", 0, 0)
        reqs[c.request(READ, F_DF, 4 * MiB, 65536)] = ("df", 4 * MiB, 65536)
        reqs[c.request(FLUSH)] = ("flush", 0, 0)
        reqs[c.request(READ, 0, DISK_SIZE, 512)] = ("einval", 0, 0)
    replies = c.wait(list(reqs))
    bad = []
    for ck, (kind, off, ln) in reqs.items():
        r = replies.get(ck)
        if r is None:
            bad.append((kind, "no reply"))
        elif kind == "einval":
            if r.error != EINVAL:
                bad.append((kind, r.error))
        elif r.error:
            bad.append((kind, r.error))
        elif kind in ("read", "hole", "df"):
            ok, why, buf = covered(r.chunks, off, ln)
            if not ok or buf != (bytes(ln) if kind == "hole" else data[:ln]):
                bad.append((kind, why or "wrong data"))
    check("56 mixed pipelined requests (reads, holes, block status, writes, DF, flush, errors)",
          not bad, str(bad[:5]))
    c.close()


TESTS = [t_greeting, t_unknown_option, t_list, t_starttls_exthdr, t_info_bad_length, t_go_unknown,
         t_info_go_content, t_export_name, t_bad_client_flags, t_meta_contexts, t_simple_rw, t_errors,
         t_readonly, t_pipeline, t_pipeline_mixed, t_zero_length_and_overflow, t_block_status, t_big,
         t_structured, t_error_target, t_disc_and_magic]

if __name__ == "__main__":
    only = os.environ.get("RAW_PROBE_ONLY")
    for t in TESTS:
        if only and t.__name__ not in only.split(","):
            continue
        print("# " + t.__name__)
        try:
            t()
        except Exception as e:
            check("%s completed" % t.__name__, False, "%s: %s" % (type(e).__name__, e))
            traceback.print_exc(file=sys.stderr)
    print("# %d check(s) failed" % failures)
    sys.exit(1 if failures else 0)
