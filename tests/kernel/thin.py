#!/usr/bin/python3
"""thin.py - host side of the kernel test's thin check (run.sh, guest.sh).

dmnbd's thin-pool / thin and the kernel's dm-thin (dm-thin.c,
dm-thin-metadata.c, persistent-data, 6.1) must agree on the metadata format
(each opens the pool the other wrote), on what the thin devices read, on the
status and table strings, and, for the same synchronous write sequence, on the
mappings thin_dump shows.

The pool: "0 131072 thin-pool META DATA 128 0" over a zeroed 4 MiB metadata
file and a 64 MiB data file (1024 blocks of 64 KiB); thin devices of
THIN_SECTORS sectors (2 MiB, 32 blocks). The sequence OPS (one request at a
time; the guest: one dd oflag=direct per write): create_thin 1; whole-block,
two-block, partial (4 KiB) and straddling writes to thin1; a flush; thin1
suspended, create_snap 2 1, resumed; writes to thin1 that break the sharing
(a whole block: no copy; partial ones: copy first) and to new blocks; writes
to the snapshot thin2; a discard of two blocks of thin1 (one its own: freed
on the data device; one still shared: kept for thin2) and one of less than a
block on thin2 (nothing unmapped); set_transaction_id 0 5. OPS2 (after the
boot, dmnbd on the kernel's pool): a new block for thin1 and a partial write
to a block thin2 shares with thin1 (copy on write).

Files in WORK/thin/:
  d-meta.img d-data.img    dmnbd runs OPS before the boot (D1)
  dc-*  copies for the kernel (exports th-dc-meta, th-dc-data: K1)
  dr-*  copies dmnbd reopens after the boot (Dr: its status of the same bytes)
  k-meta.img k-data.img    zeroed; the kernel runs OPS (exports th-k-*: K2)
  kr-*  copies of k-* after the boot: dmnbd reads them (D2), runs OPS2 (D3)
  *.xml thin_dump of d-meta (d.xml), k-meta (k.xml), kr-meta after D3 (kr.xml)

  thin.py prepare WORK     the files above, the guest's /etc/thin/ (ops,
        data.bin: every written sector labelled "T<op>:<dev>:<sector>:"),
        WORK/thin/ops2, WORK/thin/params (THIN_POOL=... THIN_SECTORS=...,
        for run.sh); prints a summary
  thin.py run SOCKET CONTROL DMNBD WORK OPS PREFIX STEP
        the sequence OPS (ops | ops2) on dmnbd's pool PREFIXpool and thins
        PREFIXthin1, PREFIXthin2 (messages and creates with the dmnbd CLI,
        I/O through libnbd); prints the lines of STEP (status, table, sha,
        and where a device differs from the model, its first differing sector)
  thin.py read SOCKET CONTROL DMNBD PREFIX STEP [PHASE]   the same lines
        without running anything
  thin.py model [ops2]     the model's sha256, mappings and status numbers
  thin.py check WORK CONSOLE   every comparison; "ok - ..." / "not ok - ..."
        lines and the summary "thin: N checks pass, M fail"; exit 1 on a failure

Lines (the kernel's on the console with the prefix "NBDVM-THIN ", dmnbd's in
WORK/thin/dmnbd.out without it):
  status STEP DEV PHASE [LINE]   DEV pool|thin1|thin2, PHASE first|end
  table STEP DEV [LINE]          sha STEP DEV HEX
  diff STEP DEV TEXT             (dmnbd only) where DEV differs from the model
  dump STEP FILE                 (run.sh) thin_dump of FILE in WORK/thin/STEP.xml
STEP K1 (the kernel on dmnbd's files), K2 (the kernel runs OPS), D1 (dmnbd
runs OPS), Dr (dmnbd reopens its own files), D2 (dmnbd opens the kernel's),
D3 (dmnbd after OPS2 on them).
"""
import hashlib
import os
import random
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmfiles import SECTOR, connect, read, write  # noqa: E402

BLOCK = 128                    # sectors (64 KiB)
POOL_SECTORS = 131072          # 1024 data blocks
NR_BLOCKS = POOL_SECTORS // BLOCK
META_BYTES = 4 << 20
THIN_SECTORS = 4096            # 2 MiB, 32 blocks (the guest hashes them: ~0.7 s for 8 MiB under TCG)
DEVS = ("thin1", "thin2")
IDS = {"thin1": 1, "thin2": 2}
FRESH = f"0 {POOL_SECTORS} thin-pool 0 111/1024 0/1024 - rw discard_passdown queue_if_no_space - 256 "

# (op, ...): msg WORDS | create DEV | w DEV SECTOR COUNT | flush DEV |
# suspend DEV | resume DEV | discard DEV SECTOR COUNT
OPS = [
    ("msg", "create_thin 1"),
    ("create", "thin1"),
    ("w", "thin1", 0, 128),        # block 0, whole: no zeroing
    ("w", "thin1", 128, 128),      # block 1, whole
    ("w", "thin1", 640, 256),      # blocks 5 and 6 in one 128 KiB request
    ("w", "thin1", 1288, 8),       # 4 KiB at 4 KiB into block 10: the rest zeroed
    ("w", "thin1", 2000, 400),     # partial 15, whole 16 and 17, partial 18
    ("w", "thin1", 2568, 8),       # 4 KiB into block 20
    ("w", "thin1", 4088, 8),       # the last 4 KiB: block 31
    ("flush", "thin1"),            # commits
    ("suspend", "thin1"),
    ("msg", "create_snap 2 1"),
    ("resume", "thin1"),
    ("create", "thin2"),
    ("w", "thin1", 0, 128),        # whole shared block 0: a new block, no copy
    ("w", "thin1", 648, 8),        # 4 KiB into shared block 5: copy, then write
    ("w", "thin1", 1280, 8),       # 4 KiB into shared block 10 (its zeroed part)
    ("w", "thin1", 2040, 16),      # straddles shared blocks 15 and 16: two copies
    ("w", "thin1", 3200, 8),       # block 25, unmapped: a new block
    ("w", "thin2", 130, 4),        # the snapshot: 2 KiB into shared block 1: copy
    ("w", "thin2", 3584, 128),     # the snapshot's own new block 28
    ("flush", "thin1"),
    ("flush", "thin2"),
    ("discard", "thin1", 640, 256),    # block 5 (thin1's copy: freed), 6 (shared: kept)
    ("discard", "thin2", 2056, 16),    # less than a block: nothing unmapped
    ("flush", "thin1"),
    ("flush", "thin2"),
    ("msg", "set_transaction_id 0 5"),
]
# after the boot, dmnbd on the kernel's pool (thin1, thin2 open)
OPS2 = [
    ("w", "thin1", 3336, 8),       # block 26, unmapped: a new block
    ("w", "thin2", 2180, 8),       # 4 KiB into block 17, shared with thin1: copy
    ("flush", "thin1"),
    ("flush", "thin2"),
]


def die(msg):
    print(f"thin.py: {msg}", file=sys.stderr)
    sys.exit(2)


def zeroed(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def payloads():
    """the data of every write of OPS and OPS2: {(seq, i): bytes}, and the
    whole data.bin with each write's offset"""
    rng = random.Random(3001)
    out, offs, blob = {}, {}, bytearray()
    for seq, tag, ops in (("ops", "T", OPS), ("ops2", "U", OPS2)):
        for i, op in enumerate(ops):
            if op[0] != "w":
                continue
            dev, sector, count = op[1:]
            buf = bytearray()
            for s in range(sector, sector + count):
                lab = f"{tag}{i:02d}:{dev}:{s:06d}:".encode()
                buf += lab + rng.randbytes(SECTOR - len(lab))
            out[(seq, i)] = bytes(buf)
            offs[(seq, i)] = len(blob)
            blob += buf
    return out, offs, bytes(blob)


def op_lines(seq):
    """the guest's form of a sequence: one op a line, writes with their
    payload's byte offset in data.bin"""
    _, offs, _ = payloads()
    lines = []
    for i, op in enumerate(OPS if seq == "ops" else OPS2):
        if op[0] == "msg":
            lines.append(f"msg {op[1]}")
        elif op[0] == "create":
            lines.append(f"create {op[1]} {IDS[op[1]]}")
        elif op[0] == "w":
            lines.append(f"w {op[1]} {op[2]} {op[3]} {offs[(seq, i)]}")
        elif op[0] == "discard":
            lines.append(f"discard {op[1]} {op[2]} {op[3]}")
        else:
            lines.append(f"{op[0]} {op[1]}")
    return "".join(x + "\n" for x in lines)


# ------------------------------------------------------------------ model
class Model:
    """Bytes and block mappings of the thin devices; data blocks allocated
    as the kernel does (next-fit from a cursor that starts at 0 when the pool
    is opened; a block freed since the last commit is not reused before it)."""

    def __init__(self):
        self.bytes = {}
        self.map = {}              # dev -> {vblock: data block}
        self.ref = [0] * NR_BLOCKS
        self.committed = [0] * NR_BLOCKS
        self.cursor = 0
        self.trans = 0

    def reopen(self):
        self.commit()
        self.cursor = 0

    def commit(self):
        self.committed = list(self.ref)

    def alloc(self):
        for b in list(range(self.cursor, NR_BLOCKS)) + list(range(0, self.cursor)):
            if self.ref[b] == 0 and self.committed[b] == 0:
                self.cursor = b + 1
                self.ref[b] = 1
                return b
        die("model: out of data blocks")

    def write(self, dev, sector, data):
        m = self.map[dev]
        first, last = sector // BLOCK, (sector + len(data) // SECTOR - 1) // BLOCK
        for vb in range(first, last + 1):
            if vb not in m or self.ref[m[vb]] > 1:
                if vb in m:
                    self.ref[m[vb]] -= 1
                m[vb] = self.alloc()
        self.bytes[dev][sector * SECTOR:sector * SECTOR + len(data)] = data

    def discard(self, dev, sector, count):
        m = self.map[dev]
        first = -(-sector // BLOCK)
        end = (sector + count) // BLOCK
        for vb in range(first, end):
            if vb in m:
                self.ref[m.pop(vb)] -= 1
                self.bytes[dev][vb * BLOCK * SECTOR:(vb + 1) * BLOCK * SECTOR] = bytes(BLOCK * SECTOR)

    def run(self, seq, ops):
        data, _, _ = payloads()
        for i, op in enumerate(ops):
            k = op[0]
            if k == "msg":
                w = op[1].split()
                if w[0] == "create_thin":
                    self.map[f"thin{w[1]}"] = {}
                    self.bytes[f"thin{w[1]}"] = bytearray(THIN_SECTORS * SECTOR)
                elif w[0] == "create_snap":
                    src, dst = f"thin{w[2]}", f"thin{w[1]}"
                    self.map[dst] = dict(self.map[src])
                    for b in self.map[dst].values():
                        self.ref[b] += 1
                    self.bytes[dst] = bytearray(self.bytes[src])
                elif w[0] == "set_transaction_id":
                    self.trans = int(w[2])
                self.commit()
            elif k == "w":
                self.write(op[1], op[2], data[(seq, i)])
            elif k == "discard":
                self.discard(op[1], op[2], op[3])
            elif k in ("flush", "suspend"):
                self.commit()

    def sha(self, dev):
        return hashlib.sha256(self.bytes[dev]).hexdigest()

    def used(self):
        return sum(1 for r in self.ref if r)

    def thin_status(self, dev):
        m = self.map[dev]
        if not m:
            return f"0 {THIN_SECTORS} thin 0 -"
        return f"0 {THIN_SECTORS} thin {len(m) * BLOCK} {(max(m) + 1) * BLOCK - 1}"


def model(with_ops2=False):
    m = Model()
    m.run("ops", OPS)
    if with_ops2:
        m.reopen()
        m.run("ops2", OPS2)
    return m


def cmd_model(which):
    m = model(which == "ops2")
    for dev in DEVS:
        print(dev, m.sha(dev), m.thin_status(dev), " ".join(f"{v}:{b}" for v, b in sorted(m.map[dev].items())))
    print(f"pool data used {m.used()}/{NR_BLOCKS}, transaction {m.trans}")


# ------------------------------------------------------------------ prepare
def cmd_prepare(work):
    tdir = os.path.join(work, "thin")
    gdir = os.path.join(work, "guest", "etc", "thin")
    for d in (tdir, gdir):
        os.makedirs(d, exist_ok=True)
    for p in ("d", "k"):
        zeroed(os.path.join(tdir, f"{p}-meta.img"), META_BYTES)
        zeroed(os.path.join(tdir, f"{p}-data.img"), POOL_SECTORS * SECTOR)
    _, _, blob = payloads()
    write(os.path.join(gdir, "data.bin"), blob)
    write(os.path.join(tdir, "data.bin"), blob)
    write(os.path.join(gdir, "ops"), op_lines("ops").encode())
    write(os.path.join(tdir, "ops"), op_lines("ops").encode())
    write(os.path.join(tdir, "ops2"), op_lines("ops2").encode())
    write(os.path.join(tdir, "params"), f"THIN_POOL={POOL_SECTORS} THIN_SECTORS={THIN_SECTORS}\n".encode())
    m = model()
    print(f"{sum(1 for o in OPS if o[0] == 'w')} writes, {sum(1 for o in OPS if o[0] == 'discard')} discards, "
          f"{len(blob) >> 10} KiB; the model: {m.used()} data blocks, thin1 {len(m.map['thin1'])} "
          f"and thin2 {len(m.map['thin2'])} mapped")


# ------------------------------------------------------------------ dmnbd
def label(buf):
    m = re.match(rb"([TU]\d\d:thin\d:\d{6}):", buf)
    if m:
        return m.group(1).decode()
    return "zeroes" if buf[:16] == bytes(16) else f"unlabelled bytes {buf[:8].hex()}"


def first_diff(got, want):
    """the first differing sector, by its labels"""
    for s in range(0, len(want), SECTOR):
        if got[s:s + SECTOR] != want[s:s + SECTOR]:
            n = s // SECTOR
            nd = sum(1 for x in range(0, len(want), SECTOR) if got[x:x + SECTOR] != want[x:x + SECTOR])
            return (f"{nd} sectors differ, the first {n} (block {n // BLOCK}): has {label(got[s:])}, "
                    f"the model {label(want[s:])}")
    return f"sizes {len(got)} vs {len(want)}" if len(got) != len(want) else "equal"


class Dmnbd:
    def __init__(self, sock, ctl, dmnbd, prefix):
        self.sock, self.ctl, self.dmnbd, self.prefix = sock, ctl, dmnbd, prefix
        self.handles = {}

    def cli(self, *args):
        r = subprocess.run([self.dmnbd, "--control", self.ctl, *args], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode:
            raise RuntimeError(f"dmnbd {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout.rstrip("\n")

    def h(self, dev):
        if dev not in self.handles:
            self.handles[dev] = connect(self.sock, self.prefix + dev)
        return self.handles[dev]

    def read_all(self, dev):
        h = self.h(dev)
        size, out = h.get_size(), bytearray()
        while len(out) < size:
            out += h.pread(min(1 << 20, size - len(out)), len(out))
        return bytes(out)

    def run(self, seq, lines):
        data = read(os.path.join(os.path.dirname(seq), "data.bin"))
        for n, line in enumerate(lines, 1):
            w = line.split()
            k = w[0]
            if k == "msg":
                self.cli("message", self.prefix + "pool", "0", *w[1:])
            elif k == "create":
                self.cli("create", self.prefix + w[1], "--table",
                         f"0 {THIN_SECTORS} thin {self.prefix}pool {w[2]}")
            elif k == "w":
                sector, count, off = int(w[2]), int(w[3]), int(w[4])
                self.h(w[1]).pwrite(data[off:off + count * SECTOR], sector * SECTOR)
            elif k == "flush":
                self.h(w[1]).flush()
            elif k == "discard":
                self.h(w[1]).trim(int(w[3]) * SECTOR, int(w[2]) * SECTOR)
            elif k in ("suspend", "resume"):
                self.cli(k, self.prefix + w[1])
            else:
                die(f"{seq}:{n}: unknown op {k}")

    def report(self, step, phase, m):
        print(f"status {step} pool {phase} [{self.cli('status', self.prefix + 'pool')}]")
        print(f"table {step} pool [{self.cli('table', self.prefix + 'pool')}]")
        for dev in DEVS:
            print(f"status {step} {dev} {phase} [{self.cli('status', self.prefix + dev)}]")
            print(f"table {step} {dev} [{self.cli('table', self.prefix + dev)}]")
            got = self.read_all(dev)
            print(f"sha {step} {dev} {hashlib.sha256(got).hexdigest()}")
            if m is not None and bytes(m.bytes[dev]) != got:
                print(f"diff {step} {dev} {first_diff(got, bytes(m.bytes[dev]))}")
        sys.stdout.flush()

    def close(self):
        for h in self.handles.values():
            h.shutdown()


def cmd_run(sock, ctl, dmnbd, work, seq, prefix, step):
    d = Dmnbd(sock, ctl, dmnbd, prefix)
    path = os.path.join(work, "thin", seq)
    rc = 0
    if seq == "ops":
        print(f"status {step} pool first [{d.cli('status', prefix + 'pool')}]")
    try:
        d.run(path, open(path).read().splitlines())
    except Exception as e:   # noqa: BLE001 - reported, the statuses still read
        print(f"refused {step} all {type(e).__name__}: {str(e).strip()}")
        rc = 1
    d.report(step, "end", model(seq == "ops2"))
    d.close()
    return rc


def cmd_read(sock, ctl, dmnbd, prefix, step, phase="first"):
    d = Dmnbd(sock, ctl, dmnbd, prefix)
    d.report(step, phase, model())
    d.close()


# ------------------------------------------------------------------ check
def parse_out(text, prefix):
    """-> {step: {"status": {(dev, phase): line}, "table": {dev: line},
    "sha": {dev: hex}, "diff": {dev: text}, "refused": [...]}}"""
    out = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix):]
        m = re.match(r"status (\S+) (\S+) (\S+) \[(.*)\]$", rest)
        if m:
            out.setdefault(m.group(1), {}).setdefault("status", {})[(m.group(2), m.group(3))] = m.group(4)
            continue
        m = re.match(r"table (\S+) (\S+) \[(.*)\]$", rest)
        if m:
            out.setdefault(m.group(1), {}).setdefault("table", {})[m.group(2)] = m.group(3)
            continue
        m = re.match(r"(sha|diff|refused) (\S+) (\S+) ?(.*)$", rest)
        if m:
            s = out.setdefault(m.group(2), {})
            if m.group(1) == "refused":
                s.setdefault("refused", []).append(f"{m.group(3)} {m.group(4)}")
            else:
                s.setdefault(m.group(1), {})[m.group(3)] = m.group(4)
    return out


def pool_fields(line):
    """0 L thin-pool TRANS META DATA HELD MODE DISCARD NOSPACE NEEDS_CHECK LOWWATER"""
    w = (line or "").split(" ")
    if len(w) < 12 or w[2] != "thin-pool":
        return None
    return w


def masked(line, fields):
    """the line with the words at those positions replaced by *"""
    w = (line or "").split(" ")
    return " ".join("*" if i in fields else x for i, x in enumerate(w))


def parse_dump(path):
    """thin_dump XML -> (superblock attrs, {dev_id: (attrs, {origin: (data, time)})}), or None"""
    if not os.path.exists(path):
        return None
    text = open(path).read()
    m = re.search(r"<superblock ([^>]*)>", text)
    if not m:
        return None

    def attrs(s):
        return dict(re.findall(r'(\w+)="([^"]*)"', s))
    sb = attrs(m.group(1))
    devs = {}
    for dm in re.finditer(r"<device ([^>]*)>(.*?)</device>", text, re.S):
        a = attrs(dm.group(1))
        maps = {}
        for mm in re.finditer(r"<(range|single)_mapping ([^>]*)/>", dm.group(2)):
            x = attrs(mm.group(2))
            if mm.group(1) == "range":
                for i in range(int(x["length"])):
                    maps[int(x["origin_begin"]) + i] = (int(x["data_begin"]) + i, int(x["time"]))
            else:
                maps[int(x["origin_block"])] = (int(x["data_block"]), int(x["time"]))
        devs[int(a["dev_id"])] = (a, maps)
    return sb, devs


def sharing(devs):
    """which (dev, vblock)s share a data block: a set of frozensets"""
    by = {}
    for dev, (_, maps) in devs.items():
        for v, (b, _) in maps.items():
            by.setdefault(b, set()).add((dev, v))
    return {frozenset(s) for s in by.values()}


def cmd_check(work, console):
    tdir = os.path.join(work, "thin")
    k = parse_out(open(console, errors="replace").read(), "NBDVM-THIN ")
    dpath = os.path.join(tdir, "dmnbd.out")
    d = parse_out(open(dpath).read() if os.path.exists(dpath) else "", "")
    fails = passes = 0

    def report(ok, msg):
        nonlocal fails, passes
        print(("ok - " if ok else "not ok - ") + msg, flush=True)
        fails += not ok
        passes += bool(ok)

    def note(msg):
        print(f"# {msg}", flush=True)

    def st(src, step, dev, phase):
        return src.get(step, {}).get("status", {}).get((dev, phase))

    def sha(src, step, dev):
        return src.get(step, {}).get("sha", {}).get(dev)

    m1, m2 = model(), model(True)
    want_pool = {"trans": "5", "data": f"{m1.used()}/{NR_BLOCKS}"}

    for step in ("D1", "Dr", "D2", "D3", "K1", "K2"):
        src = d if step.startswith("D") else k
        for r in src.get(step, {}).get("refused", []):
            report(False, f"thin {step}: {r}")

    # ---- D1: dmnbd ran OPS; the model decides
    tag = "thin D1 (dmnbd runs the sequence)"
    first = st(d, "D1", "pool", "first")
    report(first == FRESH, f"{tag}: a fresh pool's status [{first}] is the kernel's [{FRESH}]")
    for dev in DEVS:
        got = sha(d, "D1", dev)
        report(got == m1.sha(dev), f"{tag}: {dev} reads as the model ({(got or 'nothing')[:16]}, want "
               f"{m1.sha(dev)[:16]}){'; ' + d['D1']['diff'][dev] if dev in d.get('D1', {}).get('diff', {}) else ''}")
        report(st(d, "D1", dev, "end") == m1.thin_status(dev),
               f"{tag}: {dev}'s status [{st(d, 'D1', dev, 'end')}] is the model's [{m1.thin_status(dev)}]")
    pf = pool_fields(st(d, "D1", "pool", "end"))
    want_line = masked(f"0 {POOL_SECTORS} thin-pool {want_pool['trans']} * {want_pool['data']} - rw "
                       "discard_passdown queue_if_no_space - 256 ", {4})
    report(pf is not None and masked(st(d, "D1", "pool", "end"), {4}) == want_line,
           f"{tag}: the pool's status [{st(d, 'D1', 'pool', 'end')}] is [{want_line}] (metadata used aside)")

    # ---- K1: the kernel opened dmnbd's files
    tag = "thin K1 (the kernel opens dmnbd's pool)"
    if "K1" not in k:
        report(False, f"{tag}: no lines from the guest")
    else:
        for dev in DEVS:
            got, want = sha(k, "K1", dev), sha(d, "D1", dev)
            report(got is not None and got == want,
                   f"{tag}: the kernel's {dev} reads as dmnbd's did ({(got or 'nothing')[:16]}, dmnbd {(want or 'nothing')[:16]})")
            got, want = st(k, "K1", dev, "first"), st(d, "D1", dev, "end")
            report(got is not None and got == want, f"{tag}: {dev}'s status: the kernel's [{got}], dmnbd's [{want}]")
        kp, dp = st(k, "K1", "pool", "first"), st(d, "D1", "pool", "end")
        report(kp is not None and masked(kp, {4}) == masked(dp, {4}),
               f"{tag}: the pool's status: the kernel's [{kp}], dmnbd's before it stopped [{dp}] (metadata used aside)")
        note(f"{tag}: metadata used: the kernel {(pool_fields(kp) or ['?'] * 5)[4]}, dmnbd before its stop "
             f"{(pool_fields(dp) or ['?'] * 5)[4]}")
        rp = st(d, "Dr", "pool", "first")
        report(kp is not None and kp == rp,
               f"{tag}: the same bytes, the same status, metadata used too: the kernel's [{kp}], dmnbd reopening "
               f"a copy of its files [{rp}]")
        for dev in DEVS:
            report(sha(d, "Dr", dev) == sha(d, "D1", dev) and st(d, "Dr", dev, "first") == st(d, "D1", dev, "end"),
                   f"thin Dr (dmnbd reopens its own pool): {dev} reads and shows as before [{st(d, 'Dr', dev, 'first')}]")
        for dev in ("pool",) + DEVS:
            kt, dt = k["K1"].get("table", {}).get(dev), d.get("D1", {}).get("table", {}).get(dev)
            pos = {3, 4} if dev == "pool" else {3}
            report(kt is not None and masked(kt, pos) == masked(dt, pos),
                   f"{tag}: {dev}'s table: the kernel's [{kt}], dmnbd's [{dt}] (device names aside)")

    # ---- K2: the kernel ran OPS; the model and dmnbd's D1 decide
    tag = "thin K2 (the kernel runs the sequence)"
    if "K2" not in k:
        report(False, f"{tag}: no lines from the guest")
    else:
        report(st(k, "K2", "pool", "first") == FRESH,
               f"{tag}: the kernel's fresh pool [{st(k, 'K2', 'pool', 'first')}] is [{FRESH}]")
        for dev in DEVS:
            got = sha(k, "K2", dev)
            report(got == m1.sha(dev) and got == sha(d, "D1", dev),
                   f"{tag}: the kernel's {dev} reads as the model and dmnbd's ({(got or 'nothing')[:16]}, "
                   f"model {m1.sha(dev)[:16]}, dmnbd {(sha(d, 'D1', dev) or 'nothing')[:16]})")
            got, want = st(k, "K2", dev, "end"), st(d, "D1", dev, "end")
            report(got is not None and got == want,
                   f"{tag}: {dev}'s status: the kernel's [{got}], dmnbd's [{want}], the model's [{m1.thin_status(dev)}]")
        kp, dp = st(k, "K2", "pool", "end"), st(d, "D1", "pool", "end")
        report(kp is not None and masked(kp, {4}) == masked(dp, {4}),
               f"{tag}: the pool's status after the sequence: the kernel's [{kp}], dmnbd's [{dp}] (metadata used aside)")
        kf, df = pool_fields(kp), pool_fields(dp)
        if kf and df:
            note(f"{tag}: metadata used after the same sequence: the kernel {kf[4]}, dmnbd {df[4]}"
                 + (" (equal)" if kf[4] == df[4] else " (they differ: metadata blocks are the writer's own choice)"))

    # ---- D2: dmnbd opened the kernel's files; D3: and wrote to them
    tag = "thin D2 (dmnbd opens the kernel's pool)"
    if "D2" not in d:
        report(False, f"{tag}: no lines from dmnbd")
    else:
        for dev in DEVS:
            got, want = sha(d, "D2", dev), sha(k, "K2", dev)
            report(got is not None and got == want,
                   f"{tag}: dmnbd's {dev} reads as the kernel's did ({(got or 'nothing')[:16]}, kernel "
                   f"{(want or 'nothing')[:16]}){'; ' + d['D2']['diff'][dev] if dev in d['D2'].get('diff', {}) else ''}")
            got, want = st(d, "D2", dev, "first"), st(k, "K2", dev, "end")
            report(got is not None and got == want, f"{tag}: {dev}'s status: dmnbd's [{got}], the kernel's [{want}]")
        dp, kp = st(d, "D2", "pool", "first"), st(k, "K2", "pool", "end")
        report(dp is not None and masked(dp, {4}) == masked(kp, {4}),
               f"{tag}: the pool's status: dmnbd's [{dp}], the kernel's last [{kp}] (metadata used aside)")
        note(f"{tag}: metadata used: dmnbd on the kernel's files {(pool_fields(dp) or ['?'] * 5)[4]}, "
             f"the kernel's last status {(pool_fields(kp) or ['?'] * 5)[4]}")
    tag = "thin D3 (dmnbd writes to the kernel's pool)"
    if "D3" not in d:
        report(False, f"{tag}: no lines from dmnbd")
    else:
        for dev in DEVS:
            got = sha(d, "D3", dev)
            report(got == m2.sha(dev), f"{tag}: {dev} after the writes reads as the model ({(got or 'nothing')[:16]}, "
                   f"want {m2.sha(dev)[:16]}){'; ' + d['D3']['diff'][dev] if dev in d['D3'].get('diff', {}) else ''}")
            report(st(d, "D3", dev, "end") == m2.thin_status(dev),
                   f"{tag}: {dev}'s status [{st(d, 'D3', dev, 'end')}] is the model's [{m2.thin_status(dev)}]")
        pf = pool_fields(st(d, "D3", "pool", "end"))
        report(pf is not None and pf[3] == "5" and pf[5] == f"{m2.used()}/{NR_BLOCKS}" and pf[7] == "rw",
               f"{tag}: the pool [{st(d, 'D3', 'pool', 'end')}]: transaction 5, {m2.used()}/{NR_BLOCKS} data blocks, rw")

    # ---- thin_dump: dmnbd's and the kernel's metadata after the same sequence
    tag = "thin dump"
    dd_, kd = parse_dump(os.path.join(tdir, "d.xml")), parse_dump(os.path.join(tdir, "k.xml"))
    if dd_ is None or kd is None:
        report(False, f"{tag}: no thin_dump of {'d-meta' if dd_ is None else 'k-meta'}.img")
    else:
        dtext, ktext = (re.sub(r' uuid="[^"]*"', "", open(os.path.join(tdir, f)).read()) for f in ("d.xml", "k.xml"))
        if dtext == ktext:
            report(True, f"{tag}: the XML of dmnbd's and the kernel's metadata is identical "
                   f"({len(dtext.splitlines())} lines, data_block numbers too)")
        else:
            note(f"{tag}: the XML differs; how:")
        (dsb, ddevs), (ksb, kdevs) = dd_, kd
        sbd = {a: (dsb.get(a), ksb.get(a)) for a in set(dsb) | set(ksb) if a != "uuid" and dsb.get(a) != ksb.get(a)}
        report(not sbd, f"{tag}: superblock (time, transaction, flags, version, data_block_size, nr_data_blocks) "
               f"the same [{' '.join(f'{a}={v}' for a, v in sorted(ksb.items()) if a != 'uuid')}]"
               + (f"; differ (dmnbd, kernel): {sbd}" if sbd else ""))
        report(sorted(ddevs) == sorted(kdevs), f"{tag}: devices: dmnbd {sorted(ddevs)}, kernel {sorted(kdevs)}")
        for dev in sorted(set(ddevs) & set(kdevs)):
            da, dm_ = ddevs[dev]
            ka, km = kdevs[dev]
            ad = {a: (da.get(a), ka.get(a)) for a in set(da) | set(ka) if da.get(a) != ka.get(a)}
            report(not ad, f"{tag}: device {dev}'s details (mapped_blocks, transaction, creation_time, snap_time) "
                   f"the same [{' '.join(f'{a}={v}' for a, v in sorted(ka.items()))}]" + (f"; differ (dmnbd, kernel): {ad}" if ad else ""))
            dv = {v: t for v, (_, t) in dm_.items()}
            kv = {v: t for v, (_, t) in km.items()}
            report(dv == kv, f"{tag}: device {dev}: the same {len(kv)} virtual blocks mapped, with the same times"
                   + ("" if dv == kv else f"; only dmnbd: {sorted(set(dv) - set(kv))}, only the kernel: "
                      f"{sorted(set(kv) - set(dv))}, other times: {sorted(v for v in set(dv) & set(kv) if dv[v] != kv[v])}"))
            mv = m1.map.get(f"thin{dev}", {})
            report(set(kv) == set(mv), f"{tag}: device {dev}: the kernel maps the model's virtual blocks")
            diffb = [(v, dm_[v][0], km[v][0]) for v in sorted(set(dm_) & set(km)) if dm_[v][0] != km[v][0]]
            if diffb:
                note(f"{tag}: device {dev}: data_block differs (vblock, dmnbd, kernel): {diffb}")
            else:
                note(f"{tag}: device {dev}: every data_block the same")
            notmodel = [(v, km[v][0], mv.get(v)) for v in sorted(km) if mv.get(v) != km[v][0]]
            note(f"{tag}: device {dev}: the kernel's data_blocks " + (
                "are the model's (next-fit from 0)" if not notmodel else f"differ from the model's (vblock, kernel, model): {notmodel}"))
        report(sharing(ddevs) == sharing(kdevs),
               f"{tag}: the same virtual blocks share a data block in both ({sum(1 for s in sharing(kdevs) if len(s) > 1)} shared)")
        # both allocate next-fit from block 0 and the writes are synchronous:
        # the same data_block for every mapping, and so the same data devices
        same_blocks = all(ddevs[i][1].get(v, (None,))[0] == b for i in kdevs if i in ddevs
                          for v, (b, _) in kdevs[i][1].items())
        report(same_blocks, f"{tag}: dmnbd put every mapping in the data block the kernel did (next-fit from 0 on "
               "both sides; the numbers are in the notes above when they differ)")
        if same_blocks:
            da, ka = (read(os.path.join(tdir, f)) for f in ("d-data.img", "k-data.img"))
            bad = [b for b in range(NR_BLOCKS) if da[b * BLOCK * SECTOR:(b + 1) * BLOCK * SECTOR]
                   != ka[b * BLOCK * SECTOR:(b + 1) * BLOCK * SECTOR]]
            report(not bad, f"{tag}: so the data devices dmnbd and the kernel wrote are byte-identical "
                   f"({len(da) >> 20} MiB" + (f"; data blocks differ: {bad[:20]})" if bad else ", the zeroed tails of "
                                               "partial blocks and the discarded block included)"))
        if dtext != ktext:
            import difflib
            for line in list(difflib.unified_diff(dtext.splitlines(), ktext.splitlines(), "dmnbd", "kernel", lineterm="", n=0))[:40]:
                note(f"{tag}: | {line}")

    # ---- after D3: kr-meta's dump has the new mappings
    tag = "thin D3 dump"
    kr = parse_dump(os.path.join(tdir, "kr.xml"))
    if kr is None:
        report(False, f"{tag}: no thin_dump of kr-meta.img")
    else:
        _, krd = kr
        for dev in DEVS:
            i = IDS[dev]
            got = set(krd.get(i, ({}, {}))[1])
            report(got == set(m2.map[dev]), f"{tag}: device {i} maps the model's {len(m2.map[dev])} virtual blocks "
                   f"after dmnbd's writes (has {len(got)})")
            gm = {v: b for v, (b, _) in krd.get(i, ({}, {}))[1].items()}
            note(f"{tag}: device {i}: data_blocks " + ("are the model's (next-fit from 0 at open)" if gm == m2.map[dev]
                                                       else f"(vblock, dmnbd, model): {[(v, gm.get(v), b) for v, b in sorted(m2.map[dev].items()) if gm.get(v) != b]}"))
    print(f"thin: {passes} checks pass, {fails} fail")
    return 1 if fails else 0


def main(argv):
    if len(argv) == 3 and argv[1] == "prepare":
        cmd_prepare(argv[2])
    elif len(argv) == 9 and argv[1] == "run":
        return cmd_run(*argv[2:9])
    elif len(argv) in (7, 8) and argv[1] == "read":
        cmd_read(*argv[2:])
    elif len(argv) in (2, 3) and argv[1] == "model":
        cmd_model(argv[2] if len(argv) == 3 else "ops")
    elif len(argv) == 4 and argv[1] == "check":
        return cmd_check(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
