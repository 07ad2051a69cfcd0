#!/usr/bin/python3
"""raid.py - host side of the kernel test's raid check (run.sh, guest.sh).

dmnbd's raid target and the kernel's dm-raid (dm-raid.c, md raid0/1/10 and
raid4/5/6 6.1) must agree on the superblock and bitmap format, the data
layouts, parity (P and Q), and the status and table strings, in both
directions.

Sets (SETS; one table each, $M<i> $D<i> the metadata and data devices):
  r1    raid1, 2 legs, region_size 1024
  r10n  raid10 near, 4 legs, raid10_copies 2, chunk 128
  r10f  raid10 far, r10o raid10 offset, as r10n otherwise
  r0    raid0, 3 legs without metadata (- D<i>), chunk 128
  r4 r5ls r5la r5ra r5rs r5n r6zr r6nr r6nc r6n6 r6ls6 r6rs6 r6la6 r6ra6
        raid4 (3 legs), raid5_* (4), raid6_* (5) without metadata, chunk 64
        (r6zr: 8), legs of 1024 sectors; dmnbd writes F in 1 MiB requests,
        then P in small shuffled ones (rmw); DEGRADED: legs given as "- -"
  k5 k6 raid5_ls (4 legs), raid6_ls_6 (5) with metadata, region_size 256
Files in WORK/raid/, named PREFIX-SET-ROLE.img (ROLE m0 d0 m1 ...):
  d-    dmnbd writes pattern P (p.img) through its sets before the boot;
        kept as they were when it stopped (the kernel gets copies: dc-)
  k-    zeroed; the guest's kernel creates r1 and r10n over them (KSETS),
        resyncs, writes pattern K (k.img = the guest's /etc/raid/k.bin)
  kr-   copies of k- after the boot, assembled by dmnbd
  dg-   copies of d- after the boot: dmnbd runs the degraded tables
  dw-   zeroed (the degraded tables' legs only); dmnbd writes F, then W
        (w.img) in small requests through SET.degraded (WSETS) before the
        boot; the kernel reads them degraded
  kw-   zeroed; the kernel writes F, then W through SET.degraded; dmnbd
        reads them degraded after the boot; every leg must equal dw-'s
  t-    scratch for the kernel's table strings (step 4, TABLES4), zeroed
        metadata before each table; dt<i>- dmnbd's, one set of files each;
        dr<i>- dmnbd's for the tables both must refuse (REFUSE4)

  rb-   copies of d- of REBUILD's sets with those legs zeroed (derive pre);
        the kernel rebuilds them (step R, "rebuild N" tables)
  kb-   copies of k- so (derive post); dmnbd rebuilds them (DR)
  mk-, mr-, md-  copies of d- of FLIPS' sets with bytes flipped (derive
        pre); the kernel checks mk- (X) and repairs mr- (XR), dmnbd checks,
        then repairs md- (DX)

  raid.py prepare WORK   the files above, WORK/raid/tab/PREFIX-SET.table
        (tables with host paths; PREFIX-SET.degraded for d/dg), tab/dt<i>.table,
        WORK/raid/sets ("SET LENGTH ROLES..."), and the guest's /etc/raid/
        (k.bin, sets, ksets, SET.table, SET.degraded, tables: placeholders
        $M0 $D0 ...); prints a summary
  raid.py write SOCKET EXPORT SET FILE   the set's length of FILE to EXPORT
        through libnbd, 1 MiB per request, then flush; raid4/5/6 sets: F
        (f.img) so, then FILE in small shuffled requests, 8 in flight
  raid.py derive WORK pre|post   rb-, mk-, md- from d- (pre) or kb- from k- (post)
  raid.py sha SOCKET EXPORT...   "EXPORT SHA256" of each export (libnbd)
  raid.py sb FILE        the superblock and bitmap header of a metadata file
  raid.py check WORK CONSOLE   every comparison; "ok - ..." / "not ok - ..."
        lines, a summary line "raid: ..."; exit 1 on a failure

The kernel's side comes from the console (guest.sh raid()):
  NBDVM-RAID dev STEP SET ROLE MAJ:MIN
  NBDVM-RAID status STEP SET PHASE [LINE]   PHASE first|poll<i>|sync|written|
                                            checking|checked
  NBDVM-RAID table STEP SET [LINE]
  NBDVM-RAID sha STEP SET HEX
  NBDVM-RAID checkrun 1 all N               "data-check done" lines in dmesg
STEP 1 (dmnbd's files), 1deg (degraded), 2 (the kernel writes), W (dmnbd's
degraded writes), KW (the kernel's), 4 (strings; SET is the table's
number), 4r (refusals). dmnbd's side is WORK/raid/dmnbd.out in the same
format without the prefix (run.sh; ROLE mapped to a path, STEP D1, D2 (and
"status D2 SET checked": dmnbd's own check of k5/k6), Ddeg, DW, DKW, D4,
D4r). Device names are mapped to their roles (M0 D0 ...) before comparing;
otherwise the strings must be equal byte for byte.
"""
import hashlib
import os
import random
import re
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmfiles import SECTOR, connect, labelled, read, write, write_export  # noqa: E402

META_BYTES = 1 << 20
# name: (table after "0 L raid", L, number of legs, metadata?, data leg sectors);
# the options in the order the kernel's table line prints them
# (2 MiB sets: under TCG the guest moves only a few MB/s through nbd, and
# every set is read, checked or written more than once)
SETS = {
    "r1": ("raid1 3 0 region_size 1024", 4096, 2, True, 4096),
    "r10n": ("raid10 5 128 region_size 1024 raid10_copies 2", 4096, 4, True, 2048),
    "r10f": ("raid10 7 128 region_size 1024 raid10_copies 2 raid10_format far", 4096, 4, True, 2048),
    "r10o": ("raid10 7 128 region_size 1024 raid10_copies 2 raid10_format offset", 4096, 4, True, 2048),
    "r0": ("raid0 1 128", 3840, 3, False, 1280),
}
# raid4/5/6: legs of 1024 sectors (16 rows of chunk 64, every rotation
# several times), len = data legs * leg; without metadata (only N exports
# each) except k5 and k6, which the kernel creates over zeroed metadata
PLEG = 1024
for _name, _type, _legs, _chunk in (
        ("r4", "raid4", 3, 64), ("r5ls", "raid5_ls", 4, 64), ("r5la", "raid5_la", 4, 64),
        ("r5ra", "raid5_ra", 4, 64), ("r5rs", "raid5_rs", 4, 64), ("r5n", "raid5_n", 4, 64),
        ("r6zr", "raid6_zr", 5, 8), ("r6nr", "raid6_nr", 5, 64), ("r6nc", "raid6_nc", 5, 64),
        ("r6n6", "raid6_n_6", 5, 64), ("r6ls6", "raid6_ls_6", 5, 64), ("r6rs6", "raid6_rs_6", 5, 64),
        ("r6la6", "raid6_la_6", 5, 64), ("r6ra6", "raid6_ra_6", 5, 64)):
    SETS[_name] = (f"{_type} 1 {_chunk}", (_legs - 1 - _type.startswith("raid6")) * PLEG, _legs, False, PLEG)
SETS["k5"] = ("raid5_ls 3 64 region_size 256", 3 * PLEG, 4, True, PLEG)
SETS["k6"] = ("raid6_ls_6 3 64 region_size 256", 3 * PLEG, 5, True, PLEG)
PARITY = tuple(n for n, s in SETS.items() if s[0].startswith(("raid4", "raid5", "raid6")))
# resync_max_sectors, the status' total: dev_sectors (raid0/1/4/5/6), array size (raid10)
TOTAL = {"r1": 4096, "r10n": 4096, "r10f": 4096, "r10o": 4096, "r0": 1280}
TOTAL.update({n: PLEG for n in PARITY})
# the legs given as "- -" (raid4's parity is leg 0, so r4 reads leg 1 back
# from P; r6zr's legs 1 and 3 are Q+D, P+D, D+Q, D+P and D+D over its 5
# rotations; r6ls6's Q is always leg 4: D+P and D+D; r6nc: one leg, by P).
# The layouts themselves are checked on every set (the sha256, the check);
# a degraded set takes ~2.5 s of TCG guest time, so only these
DEGRADED = {"r1": (1,), "r10n": (1,), "r4": (1,), "r5ls": (1,), "r6zr": (1, 3), "r6ls6": (0, 2), "r6nc": (2,)}
# degraded writes: dmnbd writes W through SET.degraded over zeroed legs
# (dw-), the kernel through the same table over others (kw-); W_LEN sectors
WSETS = ("r5ls", "r6zr")
W_LEN = 3 * PLEG
KSETS = ("r1", "r10n", "k5", "k6")  # the kernel creates these (step 2)
CHECKED = ("r1", "r10n", "r10f", "r10o") + PARITY  # "message 0 check" on dmnbd's files
T_LEG = 2048                        # step 4 scratch legs (sectors)
# R, recovery: the kernel rebuilds these legs (data and metadata zeroed) of
# copies of dmnbd's files (rb-, "rebuild N" tables), and dmnbd the same legs
# of copies of the kernel's step 2 files (kb-); each rebuilt leg must equal
# the one it replaces byte for byte (k6: two legs at once, compute6_2)
REBUILD = {"k5": (2,), "k6": (1, 3)}
# X, mismatch accounting: copies of dmnbd's files with bytes flipped, (leg,
# leg sector, byte) each, checked then repaired by the kernel (mk-) and by
# dmnbd (md-); the mismatch count the check must give (8 sectors for every
# 4 KiB row whose P or Q is wrong). r5ls: one byte of P in row 5 (P is on
# leg 3 - 5 % 4 = 2): repair rewrites P as it was. r6ls6: two bytes of data
# leg 0 in row 1 (P on leg 3 - 1 % 4 = 2, Q on leg 4), in the chunk's 4 KiB
# rows 0 and 5: P and Q of both rows are recomputed, the data stays flipped.
FLIPS = {"r5ls": ((2, 5 * 64 + 17, 100),), "r6ls6": ((0, 64 + 3, 7), (0, 64 + 45, 300))}
FLIP_MISMATCH = {"r5ls": 8, "r6ls6": 16}
# (options in other orders than the kernel prints them, on purpose)
TABLES4 = [
    "0 2048 raid raid1 7 0 region_size 1024 write_mostly 1 max_write_behind 256 2 $M0 $D0 $M1 $D1",
    "0 2048 raid raid1 8 0 nosync max_recovery_rate 50000 daemon_sleep 3000 min_recovery_rate 500 2 $M0 $D0 $M1 $D1",
    "0 2048 raid raid10 7 128 raid10_copies 2 raid10_format near region_size 512 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
    "0 2048 raid raid10 5 64 raid10_copies 2 raid10_format far 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
    "0 2048 raid raid10 11 128 raid10_format offset daemon_sleep 2000 min_recovery_rate 1000 "
    "max_recovery_rate 20000 region_size 2048 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
    # raid4/5/6 (len = data legs * T_LEG): stripe_cache prints before
    # region_size, as the value the kernel allocated (at least chunk / 2)
    "0 6144 raid raid5_ls 5 64 region_size 512 stripe_cache 300 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
    "0 6144 raid raid5_la 4 64 stripe_cache 10 nosync 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
    "0 6144 raid raid4 1 64 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
    "0 4096 raid raid6_nr 4 64 daemon_sleep 2000 sync 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
    # 3000 / 3 = 1000 sectors a leg, not a multiple of the chunk: the kernel
    # rounds the legs down to 960 (its status total) and still takes the
    # table of 3000 sectors (md_run's size check does not refuse it)
    "0 3000 raid raid5_ls 1 64 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
]
# tables both must refuse, with the kernel's ti->error (dmesg "...: raid:
# TEXT (-EINVAL)") in dmnbd's create error; the text the notes expect
REFUSE4 = [
    ("0 6144 raid raid4 3 8 stripe_cache 16 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
     "Failed to set raid4/5/6 stripe cache size"),
    ("0 4096 raid raid6_zr 2 64 nosync 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3", "Invalid flags combination"),
    ("0 6144 raid raid5_ls 3 64 journal_mode writeback 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3",
     "raid4/5/6 'journal_mode' is invalid without 'journal_dev'"),
    ("0 2048 raid raid6_zr 1 64 3 $M0 $D0 $M1 $D1 $M2 $D2", "Failed to run raid array"),
    ("0 6144 raid raid5_n 3 64 raid10_copies 2 4 $M0 $D0 $M1 $D1 $M2 $D2 $M3 $D3", "Invalid flags combination"),
]
T_ROLES = ["m0", "d0", "m1", "d1", "m2", "d2", "m3", "d3"]
MAXSECTOR = (1 << 64) - 1


def die(msg):
    print(f"raid.py: {msg}", file=sys.stderr)
    sys.exit(2)


def roles(name, degraded=False):
    """the set's roles; degraded: only those of the legs its .degraded table has"""
    n, meta = SETS[name][2], SETS[name][3]
    return [r for i in range(n) if not (degraded and i in DEGRADED.get(name, ()))
            for r in ((f"m{i}", f"d{i}") if meta else (f"d{i}",))]


def table(name, degraded=False):
    """the set's table, $M0 $D0 ... for the devices"""
    spec, length, n, meta, _ = SETS[name]
    legs = []
    for i in range(n):
        if degraded and i in DEGRADED.get(name, ()):
            legs.append("- -")
        else:
            legs.append(f"{'$M%d' % i if meta else '-'} $D{i}")
    return f"0 {length} raid {spec} {n} " + " ".join(legs)


def rebuild_table(name):
    """the set's table with "rebuild N" for the legs of REBUILD"""
    w = table(name).split(" ")
    # 0 L raid TYPE #PARAMS CHUNK ...
    extra = [x for i in REBUILD[name] for x in ("rebuild", str(i))]
    w[4] = str(int(w[4]) + len(extra))
    pos = 5 + int(w[4]) - len(extra)
    return " ".join(w[:pos] + extra + w[pos:])


def subst(line, paths):
    return re.sub(r"\$([MD]\d)", lambda m: paths[m.group(1).lower()], line)


def zeroed(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def cmd_prepare(work):
    rdir = os.path.join(work, "raid")
    tdir = os.path.join(rdir, "tab")
    gdir = os.path.join(work, "guest", "etc", "raid")
    for d in (rdir, tdir, gdir):
        os.makedirs(d, exist_ok=True)
    p = labelled("P", max(s[1] for s in SETS.values()), random.Random(2001))
    k = labelled("K", max(SETS[s][1] for s in KSETS), random.Random(2002))
    write(os.path.join(rdir, "p.img"), p)
    write(os.path.join(rdir, "k.img"), k)
    write(os.path.join(gdir, "k.bin"), k)
    # raid4/5/6 writers first write F in 1 MiB requests, then the pattern in
    # small ones; W is what goes through the degraded tables (WSETS)
    f = labelled("F", max(s[1] for s in SETS.values()), random.Random(2003))
    w = labelled("W", W_LEN, random.Random(2004))
    assert all(SETS[s][1] == W_LEN and s in DEGRADED and s in PARITY for s in WSETS)
    write(os.path.join(rdir, "f.img"), f)
    write(os.path.join(gdir, "f.bin"), f)
    write(os.path.join(rdir, "w.img"), w)
    write(os.path.join(gdir, "w.bin"), w)

    def files(prefix, name, rl, legsz):
        paths = {}
        for r in rl:
            path = os.path.join(rdir, f"{prefix}-{name}-{r}.img" if name else f"{prefix}-{r}.img")
            zeroed(path, META_BYTES if r[0] == "m" else legsz * SECTOR)
            paths[r] = path
        return paths

    with open(os.path.join(rdir, "sets"), "w") as fs, open(os.path.join(gdir, "sets"), "w") as gs:
        for name, (_, length, _, _, legsz) in SETS.items():
            fs.write(f"{name} {length} {' '.join(roles(name))}\n")
            gs.write(f"{name} {length} {' '.join(roles(name))}\n")
            write(os.path.join(gdir, f"{name}.table"), (table(name) + "\n").encode())
            prefixes = ["d", "dc", "dg"] + (["k", "kr"] if name in KSETS else []) + (["dw", "kw"] if name in WSETS else [])
            for pre in prefixes:
                paths = files(pre, name, roles(name, pre in ("dw", "kw")), legsz)
                if pre in ("dw", "kw"):
                    # (the missing legs have no files; their table is not written)
                    write(os.path.join(tdir, f"{pre}-{name}.degraded"), (subst(table(name, True), paths) + "\n").encode())
                    continue
                write(os.path.join(tdir, f"{pre}-{name}.table"), (subst(table(name), paths) + "\n").encode())
                if name in DEGRADED:
                    write(os.path.join(tdir, f"{pre}-{name}.degraded"),
                          (subst(table(name, True), paths) + "\n").encode())
            if name in DEGRADED:
                write(os.path.join(gdir, f"{name}.degraded"), (table(name, True) + "\n").encode())
    # the guest cuts each set's export (its legs one after another, run.sh)
    # into legs of these sizes
    write(os.path.join(gdir, "legsz"), ("".join(f"{n} {s[4]}\n" for n, s in SETS.items())
                                        + f"t {T_LEG}\nmeta {META_BYTES // SECTOR}\n").encode())
    write(os.path.join(gdir, "ksets"), (" ".join(KSETS) + "\n").encode())
    # R and X: the files are copies of d- (derive pre) and k- (derive post)
    for name in REBUILD:
        write(os.path.join(gdir, f"{name}.rebuild"), (rebuild_table(name) + "\n").encode())
        for pre in ("rb", "kb"):
            paths = files(pre, name, roles(name), SETS[name][4])
            write(os.path.join(tdir, f"{pre}-{name}.rebuild"), (subst(rebuild_table(name), paths) + "\n").encode())
    for name in FLIPS:
        for pre in ("mk", "mr", "md"):
            paths = files(pre, name, roles(name), SETS[name][4])
            write(os.path.join(tdir, f"{pre}-{name}.table"), (subst(table(name), paths) + "\n").encode())
    write(os.path.join(gdir, "rsets"), (" ".join(REBUILD) + "\n").encode())
    write(os.path.join(gdir, "xsets"), (" ".join(FLIPS) + "\n").encode())
    write(os.path.join(gdir, "checked"), (" ".join(CHECKED) + "\n").encode())
    write(os.path.join(gdir, "parity"), (" ".join(PARITY) + "\n").encode())
    write(os.path.join(gdir, "wsets"), "".join(f"{n} {SETS[n][1]} {' '.join(roles(n, True))}\n" for n in WSETS).encode())
    write(os.path.join(rdir, "wsets"), "".join(f"{n} {SETS[n][1]} {' '.join(roles(n, True))}\n" for n in WSETS).encode())
    files("t", "", T_ROLES, T_LEG)
    for i, t in enumerate(TABLES4, 1):
        paths = files(f"dt{i}", "", T_ROLES, T_LEG)
        write(os.path.join(tdir, f"dt{i}.table"), (subst(t, paths) + "\n").encode())
    write(os.path.join(gdir, "tables"), "".join(t + "\n" for t in TABLES4).encode())
    for i, (t, _) in enumerate(REFUSE4, 1):
        paths = files(f"dr{i}", "", T_ROLES, T_LEG)
        write(os.path.join(tdir, f"dr{i}.table"), (subst(t, paths) + "\n").encode())
    write(os.path.join(gdir, "refusals"), "".join(t + "\n" for t, _ in REFUSE4).encode())
    print(f"sets {' '.join(SETS)} (dmnbd writes P; the kernel reads, checks, and degraded "
          f"{' '.join(DEGRADED)}), the kernel writes K on {' '.join(KSETS)}; degraded writes on "
          f"{' '.join(WSETS)}; {len(TABLES4)} table strings, {len(REFUSE4)} refusals")


def cmd_derive(work, when):
    """pre (after dmnbd wrote d-): rb- = d- with REBUILD's legs zeroed, mk-
    and md- = d- with FLIPS; post (after the boot): kb- = the kernel's k-
    with REBUILD's legs zeroed"""
    rdir = os.path.join(work, "raid")

    def copy(src, dst, name, zero=(), flips=()):
        for r in roles(name):
            data = bytearray(read(os.path.join(rdir, f"{src}-{name}-{r}.img")))
            if int(r[1:]) in zero:
                data[:] = bytes(len(data))
            for leg, sector, byte in flips:
                if r == f"d{leg}":
                    data[sector * SECTOR + byte] ^= 0x5a
            write(os.path.join(rdir, f"{dst}-{name}-{r}.img"), bytes(data))
    if when == "pre":
        for name, legs in REBUILD.items():
            copy("d", "rb", name, zero=legs)
        for name, fl in FLIPS.items():
            copy("d", "mk", name, flips=fl)
            copy("d", "mr", name, flips=fl)
            copy("d", "md", name, flips=fl)
    else:
        for name, legs in REBUILD.items():
            copy("k", "kb", name, zero=legs)


def write_small(h, data, rng, depth=8):
    """data in pieces of 512 B to 7 KiB (most not 4 KiB aligned), shuffled,
    `depth` in flight at once (so that writes to one row race), then a flush"""
    import nbd
    pieces, off = [], 0
    while off < len(data):
        n = min(rng.choice((3584, 512, 512, 3584, 1024, 7168)), len(data) - off)
        pieces.append((off, n))
        off += n
    rng.shuffle(pieces)
    cookies = []

    def reap(limit):
        while len(cookies) > limit:
            h.poll(-1)
            cookies[:] = [c for c in cookies if not h.aio_command_completed(c)]
    for off, n in pieces:
        reap(depth - 1)
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data[off:off + n])), off))
    reap(0)
    h.flush()
    return len(pieces)


def cmd_write(sock, export, name, path):
    """the set's length of FILE through EXPORT: 1 MiB requests; for raid4/5/6
    first F (f.img beside FILE) in 1 MiB requests (full rows), then FILE in
    small ones (read-modify-write of partial rows and blocks)"""
    length = SETS[name][1]
    data = read(path)[:length * SECTOR]
    h = connect(sock, export)
    if h.get_size() != len(data):
        die(f"{export}: size {h.get_size()}, want {len(data)}")
    if name in PARITY:
        write_export(h, read(os.path.join(os.path.dirname(path), "f.img"))[:len(data)])
        n = write_small(h, data, random.Random(export))
        print(f"{export}: F in 1 MiB requests, then {os.path.basename(path)} in {n} small ones")
    else:
        write_export(h, data)
    h.shutdown()


def cmd_sha(sock, exports):
    for e in exports:
        try:
            h = connect(sock, e)
            size, s, off = h.get_size(), hashlib.sha256(), 0
            while off < size:
                n = min(1 << 20, size - off)
                s.update(h.pread(n, off))
                off += n
            h.shutdown()
            print(e, s.hexdigest())
        except Exception as ex:   # noqa: BLE001 - reported as a missing sha
            print(e, f"error:{type(ex).__name__}")


# ------------------------------------------------------------------ superblock
SB_FIELDS = [   # (name, offset, struct code), dm_raid_superblock (reference 3.2)
    ("magic", 0, "I"), ("compat_features", 4, "I"), ("num_devices", 8, "I"),
    ("array_position", 12, "I"), ("events", 16, "Q"), ("failed_devices", 24, "Q"),
    ("disk_recovery_offset", 32, "Q"), ("array_resync_offset", 40, "Q"), ("level", 48, "I"),
    ("layout", 52, "I"), ("stripe_sectors", 56, "I"), ("flags", 60, "I"),
    ("reshape_position", 64, "Q"), ("new_level", 72, "I"), ("new_layout", 76, "I"),
    ("new_stripe_sectors", 80, "I"), ("delta_disks", 84, "I"), ("array_sectors", 88, "Q"),
    ("data_offset", 96, "Q"), ("new_data_offset", 104, "Q"), ("sectors", 112, "Q"),
    ("extended_failed_devices", 120, "3Q"), ("incompat_features", 144, "I"),
]
BM_FIELDS = [   # md bitmap_super_t at byte 4096 (reference 3.4)
    ("magic", 0, "I"), ("version", 4, "I"), ("uuid", 8, "16s"), ("events", 24, "Q"),
    ("events_cleared", 32, "Q"), ("sync_size", 40, "Q"), ("state", 48, "I"), ("chunksize", 52, "I"),
    ("daemon_sleep", 56, "I"), ("write_behind", 60, "I"), ("sectors_reserved", 64, "I"), ("nodes", 68, "I"),
]
BM_OFF, BITS_OFF = 4096, 4352
# what must agree between two writers of the same table (events are counters)
SB_SAME = [f for f, _, _ in SB_FIELDS if f != "events"]
BM_SAME = [f for f, _, _ in BM_FIELDS if f not in ("events", "events_cleared")] + ["dirty_bits", "sb_tail_zero"]


def fmt(v):
    if isinstance(v, bytes):
        return "0" if not any(v) else v.hex()
    if isinstance(v, tuple):
        return ",".join(fmt(x) for x in v)
    if v == MAXSECTOR:
        return "max"
    return f"{v:#x}" if v > 0xffff else str(v)


def decode(buf):
    """superblock and bitmap fields of a metadata device's bytes"""
    sb = {}
    for name, off, code in SB_FIELDS:
        v = struct.unpack_from("<" + code, buf, off)
        sb[name] = v[0] if len(v) == 1 else v
    sb["sb_tail_zero"] = int(not any(buf[148:SECTOR]))
    bm = {}
    for name, off, code in BM_FIELDS:
        bm[name] = struct.unpack_from("<" + code, buf, BM_OFF + off)[0]
    chunk = bm["chunksize"] // SECTOR
    n = -(-bm["sync_size"] // chunk) if chunk else 0
    # the bits of the first bitmap page (bytes 4352-8191: the header's page)
    page = int.from_bytes(buf[BITS_OFF:BM_OFF + 4096], "little")
    n = min(n, (4096 - (BITS_OFF - BM_OFF)) * 8)
    bm["dirty_bits"] = bin(page & ((1 << n) - 1)).count("1")
    # set bits past the last chunk mean nothing (the kernel sets the whole
    # page of a new bitmap and clears only the chunks): printed, not compared
    bm["bits_past_end"] = bin(page >> n).count("1")
    bm["sb_tail_zero"] = sb.pop("sb_tail_zero")
    return sb, bm


def describe(buf, fields=None):
    sb, bm = decode(buf)
    a = " ".join(f"{k}={fmt(v)}" for k, v in sb.items() if fields is None or k in fields)
    b = " ".join(f"{k}={fmt(v)}" for k, v in bm.items() if fields is None or k in fields)
    return f"sb[{a}] bitmap[{b}]"


def cmd_sb(path):
    print(describe(read(path)))


# ------------------------------------------------------------------ check
def parse_out(text, prefix):
    """-> {(step, set): {"dev": {dev: role}, "status": {phase: line}, ...}}"""
    out = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix):]
        m = re.match(r"dev (\S+) (\S+) (\S+) (\S+)$", rest)
        if m:
            out.setdefault((m.group(1), m.group(2)), {}).setdefault("dev", {})[m.group(4)] = m.group(3)
            continue
        m = re.match(r"status (\S+) (\S+) (\S+) \[(.*)\]$", rest)
        if m:
            out.setdefault((m.group(1), m.group(2)), {}).setdefault("status", {})[m.group(3)] = m.group(4)
            continue
        m = re.match(r"table (\S+) (\S+) \[(.*)\]$", rest)
        if m:
            out.setdefault((m.group(1), m.group(2)), {})["table"] = m.group(3)
            continue
        m = re.match(r"(sha|checkrun|refused) (\S+) (\S+) (.*)$", rest)
        if m:
            out.setdefault((m.group(2), m.group(3)), {})[m.group(1)] = m.group(4)
    return out


def norm(line, devs):
    if line is None:
        return None
    return " ".join(("$" + devs[t].upper()) if t in devs else t for t in line.split(" "))


def status_fields(line):
    """0 L raid TYPE N HEALTH P/T ACTION MISMATCH DOFF JOURNAL -> dict, or None"""
    w = (line or "").split()
    if len(w) != 11 or w[2] != "raid" or "/" not in w[6]:
        return None
    a, _, b = w[6].partition("/")
    return {"type": w[3], "n": w[4], "health": w[5], "done": a, "total": b, "action": w[7],
            "mismatch": w[8], "doff": w[9], "journal": w[10]}


def clean_idle(line, length, n, total, health=None):
    """the status of an assembled, in-sync, idle set"""
    f = status_fields(line)
    want_h = health or "A" * n
    return (f is not None and line.split()[1] == str(length) and f["n"] == str(n) and f["health"] == want_h
            and f["done"] == str(total) and f["total"] == str(total) and f["action"] == "idle"
            and f["mismatch"] == "0" and f["doff"] == "0" and f["journal"] == "-")


def cmd_check(work, console):
    rdir = os.path.join(work, "raid")
    text = open(console, errors="replace").read()
    k = parse_out(text, "NBDVM-RAID ")
    dpath = os.path.join(rdir, "dmnbd.out")
    d = parse_out(open(dpath).read() if os.path.exists(dpath) else "", "")
    fails = passes = 0

    def report(ok, msg):
        nonlocal fails, passes
        print(("ok - " if ok else "not ok - ") + msg, flush=True)
        fails += not ok
        passes += bool(ok)

    def get(src, step, name):
        """a step's lines, device names mapped to roles"""
        s = src.get((step, name))
        if s is None:
            return None
        devs = s.get("dev", {}) or src.get((step, "t"), {}).get("dev", {})
        o = dict(s)
        o["status"] = {ph: norm(v, devs) for ph, v in s.get("status", {}).items()}
        if "table" in s:
            o["table"] = norm(s["table"], devs)
        return o

    def same(what, got, want, gname, wname):
        eq = got is not None and got == want
        report(eq, f"{what}: {gname} [{got}] {'=' if eq else '!='} {wname} [{want}]")

    def f(name):
        p = os.path.join(rdir, name)
        return read(p) if os.path.exists(p) else None

    psha = hashlib.sha256
    pat, kpat = f("p.img"), f("k.img")

    # ---- 1 and 3: dmnbd wrote P, the kernel assembles its files
    for name, (spec, length, n, meta, _) in SETS.items():
        tag = f"raid 1 [{name}: {table(name)}]"
        ks, ds = get(k, "1", name), get(d, "D1", name)
        want_sha = psha(pat[:length * SECTOR]).hexdigest()
        if ds is None:
            report(False, f"{tag}: no dmnbd lines (dmnbd refused the table or did not run; see raid/server.log)")
        else:
            report(clean_idle(ds["status"].get("written"), length, n, TOTAL[name]),
                   f"{tag}: dmnbd in sync and idle after writing P [{ds['status'].get('written')}]")
            same(f"{tag}: dmnbd's sha256 of P", (ds.get("sha") or "")[:16], want_sha[:16], "dmnbd", "pattern")
        if ks is None or "refused" in ks:
            report(False, f"{tag}: the kernel did not assemble dmnbd's files"
                   + (f": {ks['refused']}" if ks and "refused" in ks else " (no lines)"))
            continue
        st = ks["status"]
        first = st.get("first")
        report(clean_idle(first, length, n, TOTAL[name]),
               f"{tag}: the kernel's first status is all A, {TOTAL[name]}/{TOTAL[name]} idle 0 0 - [{first}]")
        polls = [v for ph, v in sorted(st.items()) if ph.startswith("poll")]
        moved = [v for v in polls if v != first]
        report(bool(polls) and not moved,
               f"{tag}: the kernel started no resync ({len(polls)} polls over {len(polls) * 0.2:.1f} s all equal the first"
               + (f"; differed: {sorted(set(moved))}" if moved else "") + ")")
        if ds is not None:
            same(f"{tag}: status", first, ds["status"].get("written"), "kernel", "dmnbd")
        report(ks.get("sha") == want_sha, f"{tag}: the kernel reads P ({(ks.get('sha') or 'nothing')[:16]}, want {want_sha[:16]})")
        if ks.get("table") != table(name):
            print(f"# {tag}: the kernel's table differs from the line given: [{ks.get('table')}]")
        if ds is not None:
            same(f"{tag}: table", ds.get("table"), ks.get("table"), "dmnbd", "kernel")
        if name in CHECKED:
            # ran: its status right after the message shows "check", or dmesg
            # has a "data-check done" line for every set checked (the md name
            # is "mdX" for every dm-raid set, so the lines do not say which)
            ck = st.get("checked")
            seen = (k.get(("1", "all"), {}).get("checkrun") or "0").split()[0]
            running = status_fields(st.get("checking")) or {}
            report((running.get("action") == "check" or seen == str(len(CHECKED))) and clean_idle(ck, length, n, TOTAL[name]),
                   f"raid 3 [{name}]: the kernel's check of dmnbd's copies ran (status right after the message "
                   f"[{st.get('checking')}]; {seen} 'data-check done' lines in dmesg for {len(CHECKED)} sets) "
                   f"and found 0 mismatches: [{ck}]")
        if name in DEGRADED:
            leg = ",".join(map(str, DEGRADED[name]))
            health = "".join("-" if i in DEGRADED[name] else "A" for i in range(n))
            kg, dg = get(k, "1deg", name), get(d, "Ddeg", name)
            gtag = f"raid 1 degraded [{name}: {table(name, True)}]"
            if kg is None or "refused" in kg:
                report(False, f"{gtag}: the kernel did not assemble it"
                       + (f": {kg['refused']}" if kg and "refused" in kg else " (no lines)"))
            else:
                kst = kg["status"].get("first")
                report(status_fields(kst) is not None and status_fields(kst)["health"] == health,
                       f"{gtag}: the kernel shows leg {leg} missing ({health}) [{kst}]")
                report(kg.get("sha") == want_sha, f"{gtag}: the kernel reads P without leg {leg} "
                       f"({(kg.get('sha') or 'nothing')[:16]}, want {want_sha[:16]})")
            if dg is None:
                report(False, f"{gtag}: no dmnbd lines (dmnbd over copies of its files)")
            else:
                same(f"{gtag}: status", dg["status"].get("first"), (kg or {}).get("status", {}).get("first"),
                     "dmnbd", "kernel")
                report(dg.get("sha") == want_sha, f"{gtag}: dmnbd reads P without leg {leg} "
                       f"({(dg.get('sha') or 'nothing')[:16]}, want {want_sha[:16]})")

    # ---- 2: the kernel writes K, dmnbd assembles its files
    for name in KSETS:
        spec, length, n, meta, _ = SETS[name]
        tag = f"raid 2 [{name}]"
        ks, ds = get(k, "2", name), get(d, "D2", name)
        want_sha = psha(kpat[:length * SECTOR]).hexdigest()
        if ks is None or "refused" in ks:
            report(False, f"{tag}: the kernel did not create it"
                   + (f": {ks['refused']}" if ks and "refused" in ks else " (no lines)"))
            continue
        st = ks["status"]
        report(clean_idle(st.get("sync"), length, n, TOTAL[name]),
               f"{tag}: the kernel's resync over zeroed metadata finished [{st.get('sync')}] (first [{st.get('first')}])")
        report(ks.get("sha") == want_sha, f"{tag}: the kernel wrote and reads K ({(ks.get('sha') or 'nothing')[:16]}, want {want_sha[:16]})")
        if ds is None:
            report(False, f"{tag}: no dmnbd lines (dmnbd over the kernel's files; see raid/server.log)")
        else:
            dfirst = ds["status"].get("first")
            print(f"# {tag}: status kernel [{st.get('written')}]")
            print(f"# {tag}: status dmnbd  [{dfirst}]")
            report(clean_idle(dfirst, length, n, TOTAL[name]),
                   f"{tag}: dmnbd's first status over the kernel's files is all A, {TOTAL[name]}/{TOTAL[name]} idle 0 0 - [{dfirst}]")
            same(f"{tag}: status", dfirst, st.get("written"), "dmnbd", "kernel")
            polls = [v for ph, v in sorted(ds["status"].items()) if ph.startswith("poll")]
            moved = [v for v in polls if v != dfirst]
            report(bool(polls) and not moved, f"{tag}: dmnbd started no resync ({len(polls)} polls all equal the first"
                   + (f"; differed: {sorted(set(moved))}" if moved else "") + ")")
            same(f"{tag}: table", ds.get("table"), ks.get("table"), "dmnbd", "kernel")
            report(ds.get("sha") == want_sha, f"{tag}: dmnbd reads K from the kernel's legs "
                   f"({(ds.get('sha') or 'nothing')[:16]}, want {want_sha[:16]})")
            if name in PARITY:
                ck = ds["status"].get("checked")
                report(clean_idle(ck, length, n, TOTAL[name]) and "refused" not in (d.get(("D2c", name)) or {}),
                       f"{tag}: dmnbd's own check of the kernel's parity finds 0 mismatches [{ck}]")
        # superblocks and bitmaps: the kernel's (k-), dmnbd's for the same
        # table (d-, as dmnbd stopped), and the kernel's after dmnbd ran (kr-)
        for i in range(n):
            kb, db, rb = f(f"k-{name}-m{i}.img"), f(f"d-{name}-m{i}.img"), f(f"kr-{name}-m{i}.img")
            if kb is None or not any(kb[:8]):
                report(False, f"{tag} meta {i}: the kernel wrote no superblock")
                continue
            print(f"# {tag} meta {i}: kernel {describe(kb)}")
            if db is not None:
                print(f"# {tag} meta {i}: dmnbd  {describe(db)}")
            for who, other in (("dmnbd's own (d-, same table)", db), ("dmnbd's over the kernel's (kr-, after SIGTERM)", rb)):
                if other is None:
                    report(False, f"{tag} meta {i}: {who} file missing")
                    continue
                for part, fields, idx in (("superblock", SB_SAME, 0), ("bitmap header", BM_SAME, 1)):
                    kv, ov = decode(kb)[idx], decode(other)[idx]
                    diff = [x for x in fields if kv.get(x) != ov.get(x)]
                    report(not diff, f"{tag} meta {i}: {part} fields of {who} equal the kernel's"
                           + (f" ({' '.join(f'{x}={fmt(kv[x])}' for x in fields if x in kv)})" if not diff else
                              ": " + "; ".join(f"{x}: dmnbd {fmt(ov[x])}, kernel {fmt(kv[x])}" for x in diff)))

    # ---- W: degraded writes (WSETS): dmnbd's (DW, over dw-) read by the
    # kernel (W); the kernel's (KW, over kw-) read by dmnbd (DKW)
    wpat = f("w.img")
    for name in WSETS:
        spec, length, n, meta, _ = SETS[name]
        tag = f"raid W [{name}: {table(name, True)}]"
        want_sha = psha(wpat[:length * SECTOR]).hexdigest()
        health = "".join("-" if i in DEGRADED[name] else "A" for i in range(n))
        dw, kw = get(d, "DW", name), get(k, "W", name)
        kx, dx = get(k, "KW", name), get(d, "DKW", name)
        for who, src, ph, what in (("dmnbd", dw, "written", "wrote W degraded"), ("the kernel", kx, "written", "wrote W degraded"),
                                   ("the kernel", kw, "first", "reads dmnbd's degraded W"),
                                   ("dmnbd", dx, "first", "reads the kernel's degraded W")):
            if src is None or "refused" in src:
                report(False, f"{tag}: {who} {what}: " + (src["refused"] if src else "no lines"))
                continue
            st = src["status"].get(ph)
            report(clean_idle(st, length, n, TOTAL[name], health), f"{tag}: {who} {what}: status {health} idle [{st}]")
            report(src.get("sha") == want_sha, f"{tag}: {who} {what}: sha256 {(src.get('sha') or 'nothing')[:16]}, want {want_sha[:16]}")
        if dw is not None and kw is not None:
            same(f"{tag}: status", kw["status"].get("first"), dw["status"].get("written"), "kernel", "dmnbd")
            same(f"{tag}: table", dw.get("table"), kw.get("table"), "dmnbd", "kernel")
        if kx is not None and dx is not None:
            same(f"{tag}: status over the kernel's legs", dx["status"].get("first"), kx["status"].get("written"), "dmnbd", "kernel")
        # the present legs, byte for byte: new data, and P/Q of the full new
        # data, whichever requests wrote it
        for r in roles(name, True):
            a, b = f(f"dw-{name}-{r}.img"), f(f"kw-{name}-{r}.img")
            if a is None or b is None:
                report(False, f"{tag} leg {r}: a file is missing")
                continue
            diff = [i for i in range(0, len(a), SECTOR) if a[i:i + SECTOR] != b[i:i + SECTOR]]
            report(not diff, f"{tag} leg {r}: dmnbd's bytes equal the kernel's" + (
                "" if not diff else f": {len(diff)} sectors differ, first at leg sector {diff[0] // SECTOR} "
                f"(dmnbd {a[diff[0]:diff[0] + 12]!r}, kernel {b[diff[0]:diff[0] + 12]!r})"))

    # ---- R: recovery; the kernel rebuilds legs of dmnbd's files (rb-),
    # dmnbd the same legs of the kernel's (kb-)
    def legs_equal(tag, a_name, b_name, a_who, b_who):
        a, b = f(a_name), f(b_name)
        if a is None or b is None:
            report(False, f"{tag}: {a_name if a is None else b_name} is missing")
            return
        diff = [i for i in range(0, max(len(a), len(b)), SECTOR) if a[i:i + SECTOR] != b[i:i + SECTOR]]
        report(not diff, f"{tag}: {a_who} ({a_name}) equals {b_who} ({b_name}) byte for byte" + (
            "" if not diff else f": {len(diff)} sectors differ, first at leg sector {diff[0] // SECTOR} "
            f"({a_who} {a[diff[0]:diff[0] + 12]!r}, {b_who} {b[diff[0]:diff[0] + 12]!r})"))
    for name, legs in REBUILD.items():
        spec, length, n, meta, _ = SETS[name]
        lg = ",".join(map(str, legs))
        for who, src, step, pre, orig, pat_ in (("the kernel", k, "R", "rb", "d", pat), ("dmnbd", d, "DR", "kb", "k", kpat)):
            tag = f"raid R [{name}: {rebuild_table(name)}] {who} rebuilds leg {lg} of {'dmnbd' if pre == 'rb' else 'the kernel'}'s files"
            s_ = get(src, step, name)
            if s_ is None or "refused" in s_:
                report(False, f"{tag}: " + ((s_ or {}).get("refused") or "no lines"))
                continue
            st = s_["status"]
            print(f"# {tag}: status first [{st.get('first')}]")
            report(clean_idle(st.get("rebuilt"), length, n, TOTAL[name]),
                   f"{tag}: finished, all A, idle [{st.get('rebuilt')}]")
            want_sha = psha(pat_[:length * SECTOR]).hexdigest()
            report(s_.get("sha") == want_sha, f"{tag}: reads the pattern ({(s_.get('sha') or 'nothing')[:16]}, want {want_sha[:16]})")
            for i in legs:
                legs_equal(f"{tag}: rebuilt leg d{i}", f"{pre}-{name}-d{i}.img", f"{orig}-{name}-d{i}.img",
                           "the rebuilt leg", "the original")

    # ---- X: mismatch accounting and repair on copies with flipped bytes
    for name, flips in FLIPS.items():
        spec, length, n, meta, _ = SETS[name]
        tag = f"raid X [{name}: flipped {' '.join(f'leg {a} sector {b} byte {c}' for a, b, c in flips)}]"
        ks, ds = get(k, "X", name), get(d, "DX", name)
        if ks is None or "refused" in ks or ds is None or "refused" in ds:
            report(False, f"{tag}: no lines or refused: kernel {(ks or {}).get('refused', '')}, dmnbd {(ds or {}).get('refused', '')}")
            continue
        kc = status_fields(ks["status"].get("checked")) or {}
        report(kc.get("action") == "idle" and kc.get("mismatch") == str(FLIP_MISMATCH[name]),
               f"{tag}: the kernel's check counts {FLIP_MISMATCH[name]} [{ks['status'].get('checked')}]")
        same(f"{tag}: status after the check", ds["status"].get("checked"), ks["status"].get("checked"), "dmnbd", "kernel")
        kr = get(k, "XR", name) or {"status": {}}
        print(f"# {tag}: status after the repair: kernel [{kr['status'].get('repaired')}], dmnbd [{ds['status'].get('repaired')}]")
        report(clean_idle(kr["status"].get("repaired"), length, n, TOTAL[name]),
               f"{tag}: the kernel's repair (of mr-, other copies) finished [{kr['status'].get('repaired')}] "
               f"(first [{kr['status'].get('first')}])")
        report(clean_idle(ds["status"].get("repaired"), length, n, TOTAL[name]),
               f"{tag}: dmnbd's repair (after its check) finished [{ds['status'].get('repaired')}]")
        for r in roles(name):
            legs_equal(f"{tag} leg {r} after the repair", f"md-{name}-{r}.img", f"mr-{name}-{r}.img", "dmnbd's", "the kernel's")
        # what the repair rewrote: raid5, P back as it was (every leg is the
        # original again); raid6, P and Q of the flipped rows from the flipped
        # data (the data stays flipped, nothing outside those rows changes)
        rows = {sec // 64 for _, sec, _ in flips}
        for who, pre in (("the kernel's", "mr"), ("dmnbd's", "md")):
            for r in roles(name):
                a, b = f(f"{pre}-{name}-{r}.img"), f(f"d-{name}-{r}.img")
                if a is None or b is None:
                    report(False, f"{tag} leg {r}: a file is missing")
                    continue
                diff = [i // SECTOR for i in range(0, len(a), SECTOR) if a[i:i + SECTOR] != b[i:i + SECTOR]]
                if name.startswith("r5"):
                    report(not diff, f"{tag} leg {r}: {who} repair left the original (P rewritten as it was)"
                           + ("" if not diff else f": {len(diff)} sectors differ, first {diff[0]}"))
                    continue
                want = sorted({sec for lg, sec, _ in flips if f"d{lg}" == r})
                outside = [x for x in diff if x // 64 not in rows]
                report(not outside and (not want or diff == want),
                       f"{tag} leg {r}: after {who} repair it differs from the original only in the flipped rows"
                       + (f", and there exactly at the flipped sectors {want}" if want else "") + f" (differs at {diff[:12]})")

    # ---- 4: table strings
    for i, t in enumerate(TABLES4, 1):
        tag = f"raid 4.{i} [{t}]"
        ks, ds = get(k, "4", str(i)), get(d, "D4", str(i))
        if ks is None or "refused" in ks:
            report(False, f"{tag}: the kernel refused it: {(ks or {}).get('refused', 'no lines')}")
            continue
        if ds is None or "refused" in ds:
            report(False, f"{tag}: dmnbd refused it: {(ds or {}).get('refused', 'no lines')}")
            continue
        print(f"# {tag}: kernel status [{ks['status'].get('first')}], dmnbd status [{ds['status'].get('first')}]")
        if ks.get("table") != t:
            print(f"# {tag}: the kernel's table differs from the line given: [{ks.get('table')}]")
        same(f"{tag}: table", ds.get("table"), ks.get("table"), "dmnbd", "kernel")
        kf, df = status_fields(ks["status"].get("first")) or {}, status_fields(ds["status"].get("first")) or {}
        same(f"{tag}: status type, legs and total", (df.get("type"), df.get("n"), df.get("total")),
             (kf.get("type"), kf.get("n"), kf.get("total")), "dmnbd", "kernel")
    # ---- 4r: refusals; the kernel's ti->error must be in dmnbd's error
    for i, (t, expect) in enumerate(REFUSE4, 1):
        tag = f"raid 4r.{i} [{t}]"
        ks, ds = get(k, "4r", str(i)), get(d, "D4r", str(i))
        kwhy = (ks or {}).get("refused")
        if kwhy is None:
            report(False, f"{tag}: the kernel did not refuse it ({'created' if ks else 'no lines'})")
            continue
        m = re.search(r"table: \S+: raid: (.*?) \(-E[A-Z]+\)", kwhy)
        ktext = m.group(1) if m else None
        if ktext != expect:
            print(f"# {tag}: the kernel's error [{ktext}] is not the expected [{expect}] (dmesg: {kwhy})")
        dwhy = (ds or {}).get("refused")
        if dwhy is None:
            report(False, f"{tag}: dmnbd did not refuse it ({'created: ' + str(ds['status'].get('first')) if ds else 'no lines'}); "
                   f"the kernel: {ktext or kwhy}")
            continue
        report(ktext is not None and ktext in dwhy,
               f"{tag}: both refuse it; dmnbd's error [{dwhy.strip()}] has the kernel's [{ktext or kwhy}]")
    print(f"raid: {passes} checks pass, {fails} fail")
    return 1 if fails else 0


def main(argv):
    if len(argv) == 3 and argv[1] == "prepare":
        cmd_prepare(argv[2])
    elif len(argv) == 6 and argv[1] == "write":
        cmd_write(argv[2], argv[3], argv[4], argv[5])
    elif len(argv) >= 4 and argv[1] == "sha":
        cmd_sha(argv[2], argv[3:])
    elif len(argv) == 4 and argv[1] == "derive" and argv[3] in ("pre", "post"):
        cmd_derive(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "sb":
        cmd_sb(argv[2])
    elif len(argv) == 4 and argv[1] == "check":
        return cmd_check(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
