#!/usr/bin/python3
"""oracle.py - host side of the kernel byte oracle (tests/kernel/run.sh).

The kernel's device-mapper, running in the QEMU guest, builds every table of
the table lists with dmsetup over the same backing files and copies each dm
device out; this script plans that run and afterwards compares, byte for byte,
with what dmnbd serves for the same table.

  oracle.py plan WORK OUT_START LIST...   parse the table lists, create the
        backing files WORK/back-{A,B,C,D}.img, write the guest's plan into
        WORK/guest/etc/oracle/ and WORK/plan.json; prints the out-disk size
  oracle.py config WORK                   print the YAML "devices:" entries
        for dmnbd (entries listed in WORK/refused.txt are left out)
  oracle.py check WORK SOCKET CONSOLE OUT_IMG
        compare; prints "ok - ..." / "not ok - ..." per table and a summary
        line; exit status 0 only if every table agrees

Table list format (tests/kernel/oracle-tables.txt is the project's list):
  [name]            starts an entry; name: [a-z0-9_]+ (unique over all lists)
  [name] refuse     an entry the kernel AND dmnbd must both refuse
  <dm table line>   the lines up to the next [name] are the table, in the
                    kernel's text format; '#' starts a comment
  Placeholders: $A $B $C $D = the backing files (16384 sectors = 8 MiB each;
  /dev/nbd0..3 in the guest, file paths for dmnbd); $name (or ${name}) = the
  device of an earlier entry (/dev/mapper/o-name in the guest, the device
  oracle-name in dmnbd), for stacking.

A table the guest kernel refuses with "unknown target type" while dmnbd accepts
it is reported as "ok - ... # SKIP": Debian's kernel is built without some
targets (e.g. CONFIG_DM_DUST is not set), so there is nothing to compare with.

Error regions: the guest copies with O_DIRECT reads and bisects a failing 1 MiB
read down to single sectors, so it knows exactly which sectors are unreadable;
those are written as zeroes and listed ("errors=S+L,..."). The host reads dmnbd
the same way (libnbd, 1 MiB reads, bisected on errors), and both the error maps
and the readable bytes must be identical.
"""
import hashlib
import json
import os
import random
import re
import sys

SECTOR = 512
BACKING = {"A": 16384, "B": 16384, "C": 16384, "D": 16384}
MIB = 1 << 20
ENTRY_RE = re.compile(r"^\[([a-z0-9_]+)\](?:\s+(refuse))?\s*$")
PLACEHOLDER_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def die(msg):
    print(f"oracle.py: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_lists(paths):
    entries, names = [], set()
    for path in paths:
        cur = None
        with open(path) as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                m = ENTRY_RE.match(line)
                if m:
                    name = m.group(1)
                    if name in names:
                        die(f"{path}:{lineno}: entry [{name}] defined twice")
                    names.add(name)
                    cur = {"name": name, "refuse": bool(m.group(2)), "lines": [],
                           "src": f"{path}:{lineno}"}
                    entries.append(cur)
                    continue
                if line.startswith("["):
                    die(f"{path}:{lineno}: bad entry header {line!r} (want [name] or [name] refuse, name: a-z 0-9 _)")
                if cur is None:
                    die(f"{path}:{lineno}: table line before the first [name]")
                cur["lines"].append(line)
    seen = set()
    for e in entries:
        if not e["lines"]:
            die(f"{e['src']}: entry [{e['name']}] has no table lines")
        for line in e["lines"]:
            for m in PLACEHOLDER_RE.finditer(line):
                ref = m.group(1) or m.group(2)
                if ref not in BACKING and ref not in seen:
                    die(f"{e['src']}: [{e['name']}]: ${ref} is neither a backing file "
                        f"({' '.join('$' + k for k in BACKING)}) nor an earlier entry")
        seen.add(e["name"])
    return entries


def substitute(line, backing, entry):
    def rep(m):
        ref = m.group(1) or m.group(2)
        return backing[ref] if ref in BACKING else entry(ref)
    return PLACEHOLDER_RE.sub(rep, line)


def table_sectors(lines):
    end = 0
    for line in lines:
        f = line.split()
        try:
            end = max(end, int(f[0]) + int(f[1]))
        except (ValueError, IndexError):
            pass
    return end


def make_backing(work):
    """Every sector starts with its own label ("A:000123:") so a mismatch says
    where the bytes came from; the rest is seeded random data. A has a 1 MiB
    hole at sectors 8192-10239, C one at 0-2047 (files are sparse there)."""
    holes = {"A": (8192, 10240), "C": (0, 2048)}
    for letter, sectors in BACKING.items():
        rnd = random.Random(f"dmnbd-oracle-{letter}")
        path = os.path.join(work, f"back-{letter}.img")
        with open(path, "wb") as f:
            f.truncate(sectors * SECTOR)
            lo, hi = holes.get(letter, (0, 0))
            for s in range(sectors):
                data = rnd.randbytes(SECTOR)
                if lo <= s < hi:
                    continue
                label = f"{letter}:{s:06d}:".encode()
                f.seek(s * SECTOR)
                f.write(label + data[len(label):])


def cmd_plan(work, out_start, lists):
    entries = parse_lists(lists)
    make_backing(work)
    gdir = os.path.join(work, "guest", "etc", "oracle")
    os.makedirs(gdir, exist_ok=True)
    guest_dev = {k: f"/dev/nbd{i}" for i, k in enumerate(BACKING)}
    with open(os.path.join(gdir, "backing"), "w") as f:
        for k in BACKING:
            f.write(f"{k} {guest_dev[k]} back-{k}\n")
    off = out_start
    plan = []
    with open(os.path.join(gdir, "plan"), "w") as pf:
        for e in entries:
            sectors = table_sectors(e["lines"])
            region = max(MIB, (sectors * SECTOR + MIB - 1) // MIB * MIB)
            with open(os.path.join(gdir, e["name"] + ".table"), "w") as tf:
                for line in e["lines"]:
                    tf.write(substitute(line, guest_dev, lambda r: f"/dev/mapper/o-{r}") + "\n")
            pf.write(f"{e['name']} {off}\n")
            plan.append(dict(e, offset=off, region=region, sectors=sectors))
            off += region
    with open(os.path.join(work, "plan.json"), "w") as f:
        json.dump({"entries": plan, "out_size": off}, f, indent=1)
    print(off)


def load_plan(work):
    with open(os.path.join(work, "plan.json")) as f:
        return json.load(f)


def refused(work):
    path = os.path.join(work, "refused.txt")
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                name, _, why = line.rstrip("\n").partition(" ")
                out[name] = why
    return out


def cmd_config(work):
    plan, skip = load_plan(work), refused(work)
    for k, sectors in BACKING.items():
        print(f"  - name: back-{k}\n    table: \"0 {sectors} linear back-{k}.img 0\"")
    for e in plan["entries"]:
        if e["name"] in skip:
            continue
        print(f"  - name: oracle-{e['name']}\n    description: \"oracle table {e['src']}\"\n    table: |")
        for line in e["lines"]:
            print("      " + substitute(line, {k: f"back-{k}.img" for k in BACKING}, lambda r: f"oracle-{r}"))


def read_export(sock, name):
    """(bytes, error ranges) of a dmnbd export, read like blkprobe copy does."""
    import nbd
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(sock)
    size = h.get_size()
    buf = bytearray(size)
    errors = []

    def add(s, n):
        if errors and errors[-1][0] + errors[-1][1] == s:
            errors[-1][1] += n
        else:
            errors.append([s, n])
    def bisect(pos, n):
        try:
            buf[pos:pos + n] = h.pread(n, pos)
        except nbd.Error:
            if n <= SECTOR:
                add(pos // SECTOR, n // SECTOR)
                return
            half = (n // 2 + SECTOR - 1) // SECTOR * SECTOR
            bisect(pos, half)
            bisect(pos + half, n - half)
    for pos in range(0, size, MIB):
        bisect(pos, min(MIB, size - pos))
    h.shutdown()
    return bytes(buf), errors


def fmt_errors(errors):
    return ",".join(f"{s}+{n}" for s, n in errors) or "-"


def label(data, sector):
    chunk = data[sector * SECTOR:sector * SECTOR + 9]
    if re.fullmatch(rb"[A-D]:\d{6}:", chunk):
        return chunk.decode()[:-1]
    if not any(data[sector * SECTOR:(sector + 1) * SECTOR]):
        return "zeroes"
    return "other bytes"


def diff_ranges(a, b, limit=3):
    out, s, n = [], 0, len(a) // SECTOR
    while s < n and len(out) < limit:
        if a[s * SECTOR:(s + 1) * SECTOR] != b[s * SECTOR:(s + 1) * SECTOR]:
            e = s
            while e < n and a[e * SECTOR:(e + 1) * SECTOR] != b[e * SECTOR:(e + 1) * SECTOR]:
                e += 1
            out.append(f"sectors {s}-{e - 1}: kernel has {label(a, s)}, dmnbd has {label(b, s)}")
            s = e
        else:
            s += 1
    return "; ".join(out)


def cmd_check(work, sock, console, out_img):
    plan, skip = load_plan(work), refused(work)
    text = open(console, errors="replace").read()
    results, refusals, copyfail, shas = {}, {}, {}, {}
    for m in re.finditer(r"ORACLE-RESULT (\S+) sectors=(\d+) errors=(\S+)", text):
        results[m.group(1)] = (int(m.group(2)), m.group(3))
    for m in re.finditer(r"ORACLE-REFUSED (\S+) ?(.*)", text):
        refusals[m.group(1)] = m.group(2).strip()
    for m in re.finditer(r"ORACLE-COPYFAILED (\S+) ?(.*)", text):
        copyfail[m.group(1)] = m.group(2).strip()
    for m in re.finditer(r"NBDVM-SHA256 backing-([A-D]) ([0-9a-f]{64})", text):
        shas[m.group(1)] = m.group(2)
    fails = 0

    def report(ok, msg):
        nonlocal fails
        print(("ok - " if ok else "not ok - ") + msg, flush=True)
        fails += not ok
    for k in BACKING:
        with open(os.path.join(work, f"back-{k}.img"), "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()
        report(shas.get(k) == want, f"oracle backing ${k}: the guest's /dev/nbd read matches the host file"
               + ("" if shas.get(k) == want else f" (guest {shas.get(k)}, host {want})"))
    agree = skipped = 0
    with open(out_img, "rb") as out:
        for e in plan["entries"]:
            name = e["name"]
            tag = f"oracle [{name}] ({e['src']}, {len(e['lines'])} line(s))"
            kref, dref = refusals.get(name), skip.get(name)
            if name in copyfail:
                report(False, f"{tag}: the guest could not copy the kernel's device: {copyfail[name]}")
                continue
            if kref is not None or dref is not None:
                if kref is not None and dref is not None:
                    ok = e["refuse"]
                    report(ok, f"{tag}: both refuse" + ("" if ok else " (mark the entry '[name] refuse' if meant)")
                           + f" - kernel: {kref} | dmnbd: {dref}")
                    agree += 1
                elif kref is not None and (m := re.search(r"(\S+): unknown target type", kref)):
                    # not a disagreement: the guest's kernel (Debian's config) lacks the target
                    print(f"ok - {tag}: # SKIP the guest kernel has no '{m.group(1)}' target "
                          f"(dmnbd accepts the table, nothing to compare with)", flush=True)
                    skipped += 1
                elif kref is not None:
                    report(False, f"{tag}: the kernel refuses, dmnbd accepts - kernel: {kref}")
                else:
                    report(False, f"{tag}: dmnbd refuses, the kernel accepts - dmnbd: {dref}")
                continue
            if name not in results:
                report(False, f"{tag}: no kernel result in the console log (guest died or timed out?)")
                continue
            if e["refuse"]:
                report(False, f"{tag}: marked 'refuse' but the kernel and dmnbd both accept it")
                continue
            ksectors, kerr = results[name]
            if ksectors * SECTOR > e["region"]:
                report(False, f"{tag}: the kernel device has {ksectors} sectors, more than the planned region")
                continue
            out.seek(e["offset"])
            kdata = out.read(ksectors * SECTOR)
            try:
                ddata, derrs = read_export(sock, f"oracle-{name}")
            except Exception as ex:  # noqa: BLE001 - report any client failure as a mismatch
                report(False, f"{tag}: reading dmnbd's export failed: {ex}")
                continue
            problems = []
            if len(ddata) != ksectors * SECTOR:
                problems.append(f"size: kernel {ksectors} sectors, dmnbd {len(ddata) // SECTOR}")
            if fmt_errors(derrs) != kerr:
                problems.append(f"unreadable sectors: kernel {kerr}, dmnbd {fmt_errors(derrs)}")
            if len(ddata) == len(kdata) and ddata != kdata:
                problems.append("bytes differ: " + diff_ranges(kdata, ddata))
            errs = "" if kerr == "-" else f", unreadable {kerr}"
            report(not problems, f"{tag}: {ksectors} sectors{errs}, sha256 {hashlib.sha256(kdata).hexdigest()[:16]}"
                   + (" identical" if not problems else " - " + "; ".join(problems)))
            agree += not problems
    n = len(plan["entries"])
    print(f"oracle: {n} tables, {agree} agree with the kernel, {n - agree - skipped} differ"
          + (f", {skipped} skipped (target not in the guest kernel)" if skipped else ""), flush=True)
    return 0 if fails == 0 else 1


def main(argv):
    if len(argv) >= 4 and argv[1] == "plan":
        cmd_plan(argv[2], int(argv[3]), argv[4:])
    elif len(argv) == 3 and argv[1] == "config":
        cmd_config(argv[2])
    elif len(argv) == 6 and argv[1] == "check":
        return cmd_check(*argv[2:6])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
