#!/usr/bin/python3
"""cryptvols.py - host side of the kernel test's crypt check (run.sh, guest.sh
crypt()): LUKS volumes and verity trees, both ways.

LUKS: `cryptsetup luksFormat` makes LUKS1 (pbkdf2), LUKS2 (argon2id, 32 MiB,
512-byte sectors) and LUKS2 with 4 KiB sectors (pbkdf2) volumes; before the boot dmnbd opens
each (a `luks:` device of its config, run.sh) and writes a random plaintext
into it; the guest's kernel opens each with `cryptsetup open` and reads the
plaintext back (sha256). The other way, the kernel writes a plaintext into a
fourth volume (kvol) through `cryptsetup open`, and after the boot dmnbd
opens it and reads it.

verity: `veritysetup format` over a random data file; a copy with bytes
flipped in data blocks 3 and 1000 and in the level-0 hash block of blocks
1536..1663 (vbad, vbadhash). The guest's kernel and dmnbd build the same
verity tables over the same files and read every sector: the same error map
and the same bytes elsewhere (blkprobe copy in the guest; libnbd bisected
reads here, as oracle.py reads).

  cryptvols.py prepare WORK   WORK/crypt/ (volumes, pw, plaintexts, `verity`:
        NAME TABLE lines with @DATA@ @HASH@ for the device paths) and WORK/guest/etc/crypt/
        (pw, kdata.bin, verity: the same verity tables, expect: NAME SHA)
  cryptvols.py check WORK SOCKET CONSOLE   compares; "ok - ..." /
        "not ok - ..." lines and a summary line "crypt: ..."; exit 1 on a
        failure. SOCKET serves c-kvol-plain (dmnbd's luks: device over the
        kernel's kvol) and cv-NAME (dmnbd's verity tables).
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmfiles import connect, read, write  # noqa: E402

MB = 1 << 20
PASSPHRASE = b"kernel-oracle-passphrase"
DATA_MB = 8
VERITY_BLOCKS = 2048  # 8 MiB of 4 KiB blocks
VOLUMES = [  # name, luksFormat arguments
    ("luks1", ["--type", "luks1", "--pbkdf-force-iterations", "1000"]),
    ("luks2", ["--type", "luks2", "--pbkdf", "argon2id", "--pbkdf-memory", "32768",
               "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1", "--sector-size", "512"]),
    ("luks2k", ["--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                "--sector-size", "4096"]),
    ("kvol", ["--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]),
]
VERITY = [  # name, data file, hash file, salt
    ("good", "vdata.img", "vhash.img"),
    ("bad", "vbad.img", "vbadhash.img"),
]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def prepare(work):
    d = os.path.join(work, "crypt")
    g = os.path.join(work, "guest", "etc", "crypt")
    for p in (d, g):
        shutil.rmtree(p, ignore_errors=True)
        os.makedirs(p)
    pw = os.path.join(d, "pw")
    write(pw, PASSPHRASE)
    os.chmod(pw, 0o600)  # dmnbd refuses a key file others may read
    write(os.path.join(g, "pw"), PASSPHRASE)
    expect = []
    for name, args in VOLUMES:
        vol = os.path.join(d, f"{name}.img")
        with open(vol, "wb") as f:
            f.truncate((DATA_MB + 16) * MB)  # LUKS2's header area is 16 MiB
        run("cryptsetup", "luksFormat", "-q", "--key-file", pw, *args, vol)
        plain = os.urandom(DATA_MB * MB)
        write(os.path.join(d, f"{name}.plain"), plain)
        if name == "kvol":
            write(os.path.join(g, "kdata.bin"), plain)  # the kernel writes this one
        else:
            expect.append(f"{name} {sha(plain)}")
    write(os.path.join(g, "expect"), ("\n".join(expect) + "\n").encode())

    data = bytearray(os.urandom(VERITY_BLOCKS * 4096))
    write(os.path.join(d, "vdata.img"), data)
    out = run("veritysetup", "format", os.path.join(d, "vdata.img"), os.path.join(d, "vhash.img"))
    root = re.search(r"Root hash:\s*(\S+)", out).group(1)
    salt = re.search(r"Salt:\s*(\S+)", out).group(1)
    for block in (3, 1000):
        data[block * 4096 + 100] ^= 0x5a
    write(os.path.join(d, "vbad.img"), data)
    hashes = bytearray(read(os.path.join(d, "vhash.img")))
    # The hash file: a 4 KiB superblock, the top level, then level 0 (2048
    # digests of 32 bytes = 16 blocks of 128): flip a byte in level 0's
    # 13th block, which covers data blocks 1536..1663.
    level0 = len(hashes) - 16 * 4096
    hashes[level0 + 12 * 4096 + 7] ^= 0x01
    write(os.path.join(d, "vbadhash.img"), hashes)
    table = (f"0 {VERITY_BLOCKS * 8} verity 1 @DATA@ @HASH@ 4096 4096 {VERITY_BLOCKS} 1 sha256 "
             f"{root} {salt}")
    lines = [f"{name} {table}" for name, _, _ in VERITY]
    lines.append(f"ignore {table} 1 ignore_corruption")
    write(os.path.join(d, "verity"), ("\n".join(lines) + "\n").encode())
    write(os.path.join(g, "verity"), ("\n".join(lines) + "\n").encode())
    print(f"crypt: {len(VOLUMES)} LUKS volumes, verity root {root[:16]}...")


def verity_files(name):
    return {"good": ("vdata.img", "vhash.img"), "bad": ("vbad.img", "vbadhash.img"),
            "ignore": ("vbad.img", "vbadhash.img")}[name]


def read_mapped(sock, export):
    """(bytes with unreadable sectors as zeroes, "S+L,..." or "-") through
    libnbd, 1 MiB reads bisected down to 4 KiB on errors."""
    import nbd
    h = connect(sock, export)
    size = h.get_size()
    buf = bytearray(size)
    errors = []

    def get(off, n):
        try:
            buf[off:off + n] = h.pread(n, off)
        except nbd.Error:
            if n <= 4096:
                s, c = off // 512, n // 512
                if errors and errors[-1][0] + errors[-1][1] == s:
                    errors[-1][1] += c
                else:
                    errors.append([s, c])
                return
            get(off, n // 2)
            get(off + n // 2, n - n // 2)

    for off in range(0, size, MB):
        get(off, min(MB, size - off))
    h.shutdown()
    return bytes(buf), ",".join(f"{s}+{c}" for s, c in errors) or "-"


def check(work, sock, console):
    d = os.path.join(work, "crypt")
    lines = [l.split(" ", 1)[1].strip() for l in open(console, errors="replace")
             if l.startswith("NBDVM-CRYPT ")]
    results = []

    def report(ok, what):
        results.append(ok)
        print(("ok - " if ok else "not ok - ") + "crypt: " + what)

    got = {}
    for l in lines:
        w = l.split()
        got[(w[0], w[1])] = w[2:]
    for name, _ in VOLUMES:
        if name == "kvol":
            continue
        want = sha(read(os.path.join(d, f"{name}.plain")))
        have = got.get(("sha", name), ["(none)"])[0]
        report(have == want, f"the kernel's cryptsetup open of {name}, written by dmnbd, reads "
                             f"its plaintext ({have[:16]} vs {want[:16]})")
    report(got.get(("wrote", "kvol"), ["?"])[0] == "ok", "the kernel wrote kvol through cryptsetup open")
    data, errs = read_mapped(sock, "c-kvol-plain")
    want = read(os.path.join(d, "kvol.plain"))
    report(data == want and errs == "-", "dmnbd reads what the kernel's dm-crypt wrote into kvol")
    for name, _, _ in VERITY + [("ignore", None, None)]:
        k = got.get(("verity", name))
        if not k:
            report(False, f"verity {name}: no result from the guest")
            continue
        data, errs = read_mapped(sock, f"cv-{name}")
        k_errs = k[1].split("=", 1)[1] if len(k) > 1 else "?"
        report(k_errs == errs, f"verity {name}: the same unreadable sectors (kernel {k_errs}, "
                               f"dmnbd {errs})")
        report(k[2] == sha(data), f"verity {name}: the same bytes elsewhere")
        status = got.get(("vstatus", name), ["?"])
        report(status[-1] in ("V", "C"), f"verity {name}: the kernel's status {' '.join(status)}")
    print(f"crypt: {sum(results)} of {len(results)} checks agree")
    return all(results)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    elif len(sys.argv) >= 5 and sys.argv[1] == "check":
        sys.exit(0 if check(sys.argv[2], sys.argv[3], sys.argv[4]) else 1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
