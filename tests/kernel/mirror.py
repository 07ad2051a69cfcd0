#!/usr/bin/python3
"""mirror.py - host side of the kernel test's mirror check (run.sh, guest.sh).

dmnbd's mirror and the kernel's dm-mirror (dm-raid1.c, dm-log.c 6.1) must
agree on the disk log format, on which regions a write leaves out of sync and
on the resync, status and table strings.

Dirty regions on purpose: leg 1 is a device that fails writes in the regions
ERR_REGIONS (linear pieces of leg 1's file with "error" between them), under a
mirror without handle_errors: a write that fails on leg 1 completes for the
client and leaves its region out of sync, its clean bit 0 in the log. Leg 1's
file starts as pattern B, leg 0's as pattern P; the writes put pattern A on
the whole device. Afterwards leg 0 is A, leg 1 is A except the error regions
(still B), and the log marks exactly the error regions dirty. A mirror loaded
over those files (leg 1 the plain file now) resyncs the dirty regions from
leg 0 and ends with leg 1 = leg 0 and every region clean.

  mirror.py prepare WORK   the files in WORK/mirror/ (p0.img, b.img, r.img:
        leg 0, leg 1 and log before the writes; the model after the writes
        m-leg0.img, m-leg1.img, m-log.img; m-log-clean.img, the model of the
        log after a resync; a.img, pattern A), the guest's WORK/guest/etc/
        mirror/ (a.bin, leg1s.table with @LEG1@ for leg 1's device, tables:
        step 3's tables with $LEG0 $LEG1 $LEG2 $LOG) and WORK/mirror/params
        (shell: MIR_L MIR_REGION MIR_REGIONS MIR_LOG_SECTORS MIR_T_L
        MIR_T_LEG_SECTORS); prints a summary
  mirror.py stitch DEV     leg 1's table over DEV (one line per target)
  mirror.py write SOCKET EXPORT FILE   write FILE to EXPORT from offset 0
        through libnbd, 1 MiB per request, one at a time, then flush (the
        guest: dd bs=1M oflag=direct)
  mirror.py check WORK CONSOLE   every comparison; "ok - ..." / "not ok - ..."
        lines, a summary line "mirror: ..."; exit 1 on a failure

The kernel's side comes from the console (guest.sh mirror()): lines
"NBDVM-MIRROR dev STEP ROLE MAJ:MIN", "NBDVM-MIRROR status STEP PHASE [LINE]"
(PHASE first | sync | written), "NBDVM-MIRROR table STEP [LINE]",
"NBDVM-MIRROR polls STEP N". dmnbd's side is WORK/mirror/dmnbd.out in the same
format (run.sh; ROLE mapped to the path or device name dmnbd's table shows);
WORK/mirror/dmnbd.skip, when present, says why dmnbd's parts did not run.
Device names are compared after mapping both to their roles (LEG0 LEG1 LEG2
LOG).
"""
import os
import random
import re
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmfiles import SECTOR, connect, labelled, read, write, write_export  # noqa: E402

L = 8064                 # mirror sectors: 16 regions, the last one 384 sectors
REGION = 512
REGIONS = -(-L // REGION)
ERR_REGIONS = (2, 9, 15)  # leg 1 fails writes here (15: the partial last region)
LOG_SECTORS = 128         # 64 KiB log files
MAGIC = 0x4D695272
VERSION = 2
LOG_OFFSET = 1024         # the clean bitmap
# step 3: tables over scratch legs (4096 sectors each) and a scratch log
T_L = 2048
T_LEG_SECTORS = 4096
TABLES3 = [
    "core 1 512 2 $LEG0 0 $LEG1 0",
    "core 2 512 nosync 2 $LEG0 0 $LEG1 0",
    "core 2 256 sync 2 $LEG0 0 $LEG1 0",
    "disk 2 $LOG 512 2 $LEG0 0 $LEG1 0 1 handle_errors",
    "disk 3 $LOG 512 nosync 2 $LEG0 0 $LEG1 0 2 handle_errors keep_log",
    "disk 3 $LOG 256 sync 3 $LEG0 0 $LEG1 1024 $LEG2 2048 1 handle_errors",
    "core 2 1024 nosync 3 $LEG0 2048 $LEG1 0 $LEG2 100 2 handle_errors keep_log",
]


def die(msg):
    print(f"mirror.py: {msg}", file=sys.stderr)
    sys.exit(2)


def region_range(r, length=L, region=REGION):
    a = r * region
    return a, min(length, a + region)


def stitch_lines(dev):
    """leg 1: its file, with error targets over ERR_REGIONS"""
    lines, pos = [], 0
    for r in ERR_REGIONS:
        a, b = region_range(r)
        if a > pos:
            lines.append(f"{pos} {a - pos} linear {dev} {pos}")
        lines.append(f"{a} {b - a} error")
        pos = b
    if pos < L:
        lines.append(f"{pos} {L - pos} linear {dev} {pos}")
    return lines


def bitmap_bytes(regions):
    return -(-regions // 64) * 8


def make_log(base, regions, dirty):
    """the log the kernel leaves: base (what was on the device) with the
    header and the clean bitmap (1 = clean; bits past the last region 0)"""
    log = bytearray(base)
    struct.pack_into("<IIQ", log, 0, MAGIC, VERSION, regions)
    bm = bytearray(bitmap_bytes(regions))
    for r in range(regions):
        if r not in dirty:
            bm[r // 8] |= 1 << (r % 8)
    log[LOG_OFFSET:LOG_OFFSET + len(bm)] = bm
    return bytes(log)


def cmd_prepare(work):
    mdir = os.path.join(work, "mirror")
    gdir = os.path.join(work, "guest", "etc", "mirror")
    os.makedirs(mdir, exist_ok=True)
    os.makedirs(gdir, exist_ok=True)
    p0 = labelled("P", L, random.Random(1001))
    b = labelled("B", L, random.Random(1002))
    a = labelled("A", L, random.Random(1003))
    r = bytearray(random.Random(1004).randbytes(LOG_SECTORS * SECTOR))
    if struct.unpack_from("<I", r)[0] == MAGIC:
        r[0] ^= 1
    write(os.path.join(mdir, "p0.img"), p0)
    write(os.path.join(mdir, "b.img"), b)
    write(os.path.join(mdir, "a.img"), a)
    write(os.path.join(gdir, "a.bin"), a)
    write(os.path.join(mdir, "r.img"), bytes(r))
    write(os.path.join(mdir, "m-leg0.img"), a)
    leg1 = bytearray(a)
    for reg in ERR_REGIONS:
        s, e = region_range(reg)
        leg1[s * SECTOR:e * SECTOR] = b[s * SECTOR:e * SECTOR]
    write(os.path.join(mdir, "m-leg1.img"), bytes(leg1))
    write(os.path.join(mdir, "m-log.img"), make_log(r, REGIONS, set(ERR_REGIONS)))
    write(os.path.join(mdir, "m-log-clean.img"), make_log(r, REGIONS, set()))
    with open(os.path.join(gdir, "leg1s.table"), "w") as f:
        f.write("".join(x + "\n" for x in stitch_lines("@LEG1@")))
    with open(os.path.join(gdir, "tables"), "w") as f:
        f.write("".join(f"0 {T_L} mirror {t}\n" for t in TABLES3))
    with open(os.path.join(mdir, "params"), "w") as f:
        f.write(f"MIR_L={L} MIR_REGION={REGION} MIR_REGIONS={REGIONS} MIR_LOG_SECTORS={LOG_SECTORS} "
                f"MIR_T_L={T_L} MIR_T_LEG_SECTORS={T_LEG_SECTORS}\n")
    print(f"{L} sectors, {REGIONS} regions of {REGION}, leg 1 fails writes in regions "
          f"{','.join(map(str, ERR_REGIONS))}; {len(TABLES3)} status/table strings")


def cmd_stitch(dev):
    print("\n".join(stitch_lines(dev)))


def cmd_write(sock, export, path):
    h = connect(sock, export)
    write_export(h, read(path))
    h.shutdown()


# ------------------------------------------------------------------ check
def parse_log(buf, regions):
    magic, version, nr = struct.unpack_from("<IIQ", buf, 0)
    bm = buf[LOG_OFFSET:LOG_OFFSET + bitmap_bytes(regions)]
    dirty = [r for r in range(regions) if not bm[r // 8] >> (r % 8) & 1]
    extra = [r for r in range(regions, len(bm) * 8) if bm[r // 8] >> (r % 8) & 1]
    return magic, version, nr, dirty, extra


def describe_log(buf, regions=REGIONS):
    magic, version, nr, dirty, extra = parse_log(buf, regions)
    return (f"magic {magic:#x} version {version} nr_regions {nr} dirty {dirty or 'none'}"
            + (f", bits set past the last region {extra}" if extra else ""))


def cmp_log(got, want, base):
    """'' when equal, else what differs: header fields, bitmap, the bytes the
    kernel writes back unchanged (16-1023, after the bitmap) or beyond"""
    if got == want:
        return ""
    out = []
    if len(got) != len(want):
        out.append(f"size {len(got)} (want {len(want)})")
    if got[:16] != want[:16] or got[LOG_OFFSET:LOG_OFFSET + 8] != want[LOG_OFFSET:LOG_OFFSET + 8]:
        out.append(f"got [{describe_log(got)}] want [{describe_log(want)}]; bytes 0-15 "
                   f"{got[:16].hex()} (want {want[:16].hex()}), bitmap {got[LOG_OFFSET:LOG_OFFSET + 8].hex()} "
                   f"(want {want[LOG_OFFSET:LOG_OFFSET + 8].hex()})")
    n = min(len(got), len(want))
    for lo, hi, what in ((16, LOG_OFFSET, "bytes 16-1023"),
                         (LOG_OFFSET + 8, n, f"bytes {LOG_OFFSET + 8}-{n - 1}")):
        diff = [i for i in range(lo, hi) if got[i] != want[i]]
        if diff:
            zero = all(got[i] == 0 for i in diff)
            out.append(f"{what}: {len(diff)} differ, first at {diff[0]} ({got[diff[0]]:#04x}, want "
                       f"{want[diff[0]]:#04x}{', as on the device before' if want[diff[0]] == base[diff[0]] else ''})"
                       + ("; all of them are zero" if zero else ""))
    return "; ".join(out) or "differs"


def region_diff(x, y):
    """the regions where two leg images differ"""
    out = []
    for r in range(REGIONS):
        s, e = region_range(r)
        if x[s * SECTOR:e * SECTOR] != y[s * SECTOR:e * SECTOR]:
            out.append(r)
    return out


def first_diff_sector(x, y):
    n = min(len(x), len(y))
    return next((i // SECTOR for i in range(0, n, SECTOR) if x[i:i + SECTOR] != y[i:i + SECTOR]), n // SECTOR)


def label_at(buf, sector):
    m = re.match(rb"([A-Z]:\d{6}):", buf[sector * SECTOR:sector * SECTOR + 16])
    return m.group(1).decode() if m else buf[sector * SECTOR:sector * SECTOR + 8].hex()


def parse_out(text, prefix):
    """dev/status/table/polls lines -> {step: {...}}"""
    steps = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix):]
        m = re.match(r"dev (\S+) (\S+) (\S+)$", rest)
        if m:
            steps.setdefault(m.group(1), {}).setdefault("dev", {})[m.group(3)] = m.group(2)
            continue
        m = re.match(r"status (\S+) (\S+) \[(.*)\]$", rest)
        if m:
            steps.setdefault(m.group(1), {})[m.group(2)] = m.group(3)
            continue
        m = re.match(r"table (\S+) \[(.*)\]$", rest)
        if m:
            steps.setdefault(m.group(1), {})["table"] = m.group(2)
            continue
        m = re.match(r"polls (\S+) (\d+)$", rest)
        if m:
            steps.setdefault(m.group(1), {})["polls"] = int(m.group(2))
    return steps


def norm(line, devs):
    if line is None:
        return None
    return " ".join(devs.get(t, t) for t in line.split(" "))


def model_status(length, nlegs, insync, regions, chars, log):
    legs = " ".join(f"LEG{i}" for i in range(nlegs))
    logst = "1 core" if log == "core" else "3 disk LOG A"
    return f"0 {length} mirror {nlegs} {legs} {insync}/{regions} 1 {chars} {logst}"


def table_model3(t):
    return f"0 {T_L} mirror " + t.replace("$", "")


def table3_info(t):
    w = t.split()
    nlog = int(w[1])
    region = int(w[2] if w[0] == "core" else w[3])
    sync = w[1 + nlog] if w[1 + nlog] in ("sync", "nosync") else None
    nlegs = int(w[2 + nlog])
    return w[0], region, sync, nlegs


def cmd_check(work, console):
    mdir = os.path.join(work, "mirror")
    text = open(console, errors="replace").read()
    k = parse_out(text, "NBDVM-MIRROR ")
    dpath = os.path.join(mdir, "dmnbd.out")
    d = parse_out(open(dpath).read() if os.path.exists(dpath) else "", "")
    skip = open(os.path.join(mdir, "dmnbd.skip")).read().strip() if os.path.exists(
        os.path.join(mdir, "dmnbd.skip")) else ""
    fails = passes = 0

    def report(ok, msg):
        nonlocal fails, passes
        print(("ok - " if ok else "not ok - ") + msg, flush=True)
        fails += not ok
        passes += bool(ok)

    def f(name):
        p = os.path.join(mdir, name)
        return read(p) if os.path.exists(p) else None

    a, r = f("a.img"), f("r.img")
    m_leg1, m_log, m_clean = f("m-leg1.img"), f("m-log.img"), f("m-log-clean.img")

    def kd(src, step):   # a step's lines with device names mapped to roles
        s = src.get(step)
        if not s:
            return None
        devs = s.get("dev", {})
        if step.startswith("3.") or step.startswith("D3."):
            devs = src.get(step.split(".")[0], {}).get("dev", {})
        return {key: (norm(v, devs) if isinstance(v, str) else v) for key, v in s.items() if key != "dev"}

    def same(what, got, want, gname, wname):
        report(got is not None and got == want, f"{what}: {gname} [{got}] {'=' if got == want else '!='} {wname} [{want}]")

    def legs_check(what, leg0, leg1, want1):
        if leg0 is None or leg1 is None:
            report(False, f"{what}: leg file missing")
            return
        report(leg0 == a, f"{what}: leg 0 is pattern A" + (
            "" if leg0 == a else f" (differs in regions {region_diff(leg0, a)})"))
        if leg1 == want1:
            report(True, f"{what}: leg 1 is {'leg 0 (A) in every region' if want1 == a else 'A except the error regions ' + str(list(ERR_REGIONS)) + ' (still B)'}")
        else:
            rd = region_diff(leg1, want1)
            sec = first_diff_sector(leg1, want1)
            report(False, f"{what}: leg 1 differs from the model in regions {rd} (first at sector "
                   f"{sec}: {label_at(leg1, sec)}, model {label_at(want1, sec)})")

    def log_check(what, got, want, wname):
        if got is None:
            report(False, f"{what}: log file missing")
            return
        c = cmp_log(got, want, r)
        report(not c, f"{what}: the log is {wname} [{describe_log(got)}; bytes 16-1023 and after the bitmap as before]"
               if not c else f"{what}: the log is not {wname}: {c}")

    # ---- 1: the kernel loads userspace's files and resyncs them
    want_sync = model_status(L, 2, REGIONS, REGIONS, "AA", "disk")
    want_t1 = f"0 {L} mirror disk 2 LOG {REGION} 2 LEG0 0 LEG1 0 1 handle_errors"
    for step, files, who in (("1m", "mm", "the model's files"), ("1d", "dc", "dmnbd's files")):
        s = kd(k, step)
        tag = f"mirror 1 ({'model' if step == '1m' else 'dmnbd'} -> kernel)"
        if step == "1d" and skip:
            report(False, f"{tag}: not run, dmnbd wrote no files: {skip}")
            continue
        if step == "1m" and os.path.exists(os.path.join(mdir, "m-same")):
            continue    # dmnbd's files are the model's: step 1d is this one
        if s is None:
            report(False, f"{tag}: no NBDVM-MIRROR lines for step {step} in the console")
            continue
        report(s.get("sync") == want_sync, f"{tag}: the kernel resynced {who} after {s.get('polls')} polls: "
               f"[{s.get('sync')}] (model [{want_sync}]; first [{s.get('first')}])")
        same(f"{tag}: table", s.get("table"), want_t1, "kernel", "model")
        legs_check(f"{tag} after dmsetup remove", f(f"{files}-leg0.img"), f(f"{files}-leg1.img"), a)
        log_check(f"{tag} after dmsetup remove", f(f"{files}-log.img"), m_clean, "the model's, all clean")
    # dmnbd's files themselves (the writer)
    tag = "mirror 1 (dmnbd writes)"
    ds = kd(d, "D1")
    if skip or ds is None:
        report(False, f"{tag}: dmnbd's part did not run: {skip or 'no D1 lines in dmnbd.out'}")
    else:
        legs_check(f"{tag} after SIGTERM", f("d-leg0.img"), f("d-leg1.img"), m_leg1)
        log_check(f"{tag} after SIGTERM", f("d-log.img"), m_log, f"the model's, dirty {list(ERR_REGIONS)}")

    # ---- 2: the kernel writes, dmnbd reads
    tag = "mirror 2 (kernel writes)"
    s = kd(k, "2")
    want_written = model_status(L, 2, REGIONS - len(ERR_REGIONS), REGIONS, "AD", "disk")
    want_t2 = f"0 {L} mirror disk 2 LOG {REGION} 2 LEG0 0 LEG1 0"
    if s is None:
        report(False, f"{tag}: no NBDVM-MIRROR lines for step 2 in the console")
        s = {}
    else:
        report(s.get("sync") == want_sync, f"{tag}: after the first resync over a new log ({s.get('polls')} polls; "
               f"the failed recoveries of the error regions count as in sync): [{s.get('sync')}] (model [{want_sync}])")
        same(f"{tag}: after the writes", s.get("written"), want_written, "kernel", "model")
        same(f"{tag}: table", s.get("table"), want_t2, "kernel", "model")
        legs_check(f"{tag} after dmsetup remove", f("k-leg0.img"), f("k-leg1.img"), m_leg1)
        log_check(f"{tag} after dmsetup remove", f("k-log.img"), m_log, f"the model's, dirty {list(ERR_REGIONS)}")
    tag = "mirror 2 (kernel vs dmnbd, the same writes)"
    if skip or ds is None:
        report(False, f"{tag}: dmnbd's part did not run: {skip or 'no D1 lines in dmnbd.out'}")
    else:
        kl, dl = f("k-log.img"), f("d-log.img")
        report(kl is not None and kl == dl, f"{tag}: the kernel's log is byte-identical to dmnbd's"
               + ("" if kl == dl else f" (kernel [{describe_log(kl or bytes(2048))}], dmnbd: {cmp_log(dl or b'', kl or b'', r)})"))
        report(f("k-leg1.img") == f("d-leg1.img") and f("k-leg0.img") == f("d-leg0.img"),
               f"{tag}: the kernel's legs are byte-identical to dmnbd's")
        for ph, what in (("sync", "status after the first resync"), ("written", "status after the writes"),
                         ("table", "table")):
            same(f"{tag}: {what}", ds.get(ph), s.get(ph), "dmnbd", "kernel")
    tag = "mirror 2 (kernel -> dmnbd)"
    ds2 = kd(d, "D2")
    if skip or ds2 is None:
        report(False, f"{tag}: dmnbd's part did not run: {skip or 'no D2 lines in dmnbd.out'}")
    else:
        k1step = "1d" if "1d" in k else "1m"
        k1 = kd(k, k1step) or {}
        report(ds2.get("sync") == want_sync, f"{tag}: dmnbd resynced the kernel's files after {ds2.get('polls')} polls: "
               f"[{ds2.get('sync')}] (model [{want_sync}]; first [{ds2.get('first')}])")
        same(f"{tag}: status in sync", ds2.get("sync"), k1.get("sync"), "dmnbd", f"kernel (step {k1step})")
        same(f"{tag}: table", ds2.get("table"), k1.get("table"), "dmnbd", f"kernel (step {k1step})")
        legs_check(f"{tag} after SIGTERM", f("kr-leg0.img"), f("kr-leg1.img"), a)
        log_check(f"{tag} after SIGTERM", f("kr-log.img"), m_clean, "the model's, all clean")
        kr, k1log = f("kr-log.img"), f(("dc" if k1step == "1d" else "mm") + "-log.img")
        report(kr is not None and kr == k1log, f"{tag}: dmnbd's resynced log is byte-identical to the kernel's (step {k1step})")

    # ---- 3: status and table strings
    d3 = not skip and "D3" in d
    if not d3:
        report(False, f"mirror 3 (dmnbd's strings): dmnbd's part did not run: {skip or 'no D3 lines in dmnbd.out'}")
    for i, t in enumerate(TABLES3, 1):
        log, region, sync, nlegs = table3_info(t)
        regions = -(-T_L // region)
        tag = f"mirror 3.{i} [{t.replace('$', '')}]"
        ks, dd = kd(k, f"3.{i}"), kd(d, f"D3.{i}") if d3 else None
        want = model_status(T_L, nlegs, regions, regions, "A" * nlegs, log)
        if ks is None:
            report(False, f"{tag}: no kernel lines")
        else:
            same(f"{tag}: status in sync", ks.get("sync"), want, "kernel", "model")
            same(f"{tag}: table", ks.get("table"), table_model3(t), "kernel", "model")
            if sync == "nosync":
                same(f"{tag}: nosync, the first status", ks.get("first"), want, "kernel", "model")
        if d3:
            if dd is None:
                report(False, f"{tag}: no dmnbd lines (dmnbd refused the table? see mirror/server.log)")
                continue
            same(f"{tag}: status in sync", dd.get("sync"), (ks or {}).get("sync"), "dmnbd", "kernel")
            same(f"{tag}: table", dd.get("table"), (ks or {}).get("table"), "dmnbd", "kernel")
            if sync == "nosync":
                same(f"{tag}: nosync, the first status", dd.get("first"), want, "dmnbd", "model")
    print(f"mirror: {passes} checks pass, {fails} fail")
    return 1 if fails else 0


def main(argv):
    if len(argv) == 3 and argv[1] == "prepare":
        cmd_prepare(argv[2])
    elif len(argv) == 3 and argv[1] == "stitch":
        cmd_stitch(argv[2])
    elif len(argv) == 5 and argv[1] == "write":
        cmd_write(argv[2], argv[3], argv[4])
    elif len(argv) == 4 and argv[1] == "check":
        return cmd_check(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
