#!/usr/bin/python3
"""parity.py - an oracle for the raid4/5/6 tests (raid_parity.sh), written
from md's raid5.c (raid5_compute_sector, set_syndrome_sources) and not from
dmnbd's code: where each row's data and parity chunks go, and what P and Q
hold.

  parity.py check TYPE CHUNK ARRAY LEG...
      ARRAY is the array's bytes (read through the export), LEG... its data
      devices in table order, data_offset 0, CHUNK bytes a chunk. For every row
      (one chunk on each leg): each data chunk on its leg equals the array's
      chunk the layout puts there, P is the XOR of the row's data, Q (raid6)
      its GF(2^8) syndrome. Prints what differs and exits 1, if anything
      does.
  parity.py xor LEN LEG0 LEG...
      the first LEN bytes of LEG0 are the XOR of the other legs' (raid4's
      parity device, layout-free).
"""
import sys

# dm-raid's names: (md level, md algorithm), as dm-raid.c's raid_types[].
LA, RA, LS, RS, P0, PN = 0, 1, 2, 3, 4, 5
ZR, NR, NC, LA6, RA6, LS6, RS6 = 8, 9, 10, 16, 17, 18, 19
TYPES = {
    "raid4": (5, P0), "raid5_la": (5, LA), "raid5_ra": (5, RA), "raid5_ls": (5, LS),
    "raid5_rs": (5, RS), "raid5_n": (5, PN), "raid6_zr": (6, ZR), "raid6_nr": (6, NR),
    "raid6_nc": (6, NC), "raid6_n_6": (6, PN), "raid6_la_6": (6, LA6), "raid6_ra_6": (6, RA6),
    "raid6_ls_6": (6, LS6), "raid6_rs_6": (6, RS6),
}


def place(level, algo, n, stripe):
    """raid5_compute_sector() for row `stripe` of n devices: (pd, qd, ddf,
    [device of data index k])."""
    data = n - (2 if level == 6 else 1)
    qd, ddf = None, False
    if level == 5:
        if algo in (LA, LS):
            pd = data - stripe % n
        elif algo in (RA, RS):
            pd = stripe % n
        elif algo == P0:
            pd = 0
        else:
            pd = data
        if algo in (LA, RA):
            devs = [k + 1 if k >= pd else k for k in range(data)]
        elif algo in (LS, RS):
            devs = [(pd + 1 + k) % n for k in range(data)]
        elif algo == P0:
            devs = [k + 1 for k in range(data)]
        else:
            devs = list(range(data))
        return pd, qd, ddf, devs
    if algo in (ZR, NR):
        pd = stripe % n if algo == ZR else n - 1 - (stripe + 1) % n
        if pd == n - 1:
            qd, devs = 0, [k + 1 for k in range(data)]
        else:
            qd, devs = pd + 1, [k + 2 if k >= pd else k for k in range(data)]
        ddf = True
    elif algo == NC:
        pd = n - 1 - stripe % n
        qd = (pd + n - 1) % n
        devs = [(pd + 1 + k) % n for k in range(data)]
        ddf = True
    elif algo == PN:
        pd, qd, devs = data, data + 1, list(range(data))
    else:
        pd = data - stripe % (n - 1) if algo in (LA6, LS6) else stripe % (n - 1)
        qd = n - 1
        if algo in (LA6, RA6):
            devs = [k + 1 if k >= pd else k for k in range(data)]
        else:
            devs = [(pd + 1 + k) % (n - 1) for k in range(data)]
    return pd, qd, ddf, devs


def syndrome_slots(n, pd, qd, ddf):
    """set_syndrome_sources(): device -> its weight's exponent in Q."""
    if ddf:  # every device counts from 0, P and Q as zero blocks
        return {i: i for i in range(n) if i not in (pd, qd)}
    d0 = 0 if qd == n - 1 else qd + 1
    slots, count = {}, 0
    for step in range(n):
        i = (d0 + step) % n
        if i not in (pd, qd):
            slots[i] = count
            count += 1
    return slots


def mul2(x, ones, low7):
    """Every byte of big-endian integer x times 2 in GF(2^8), polynomial 0x11d."""
    return ((x & low7) << 1) ^ (((x >> 7) & ones) * 0x1D)


def check(kind, chunk, array, legs):
    level, algo = TYPES[kind]
    n = len(legs)
    data = n - (2 if level == 6 else 1)
    arr = open(array, "rb").read()
    rows = len(arr) // (chunk * data)
    devs = [open(leg, "rb") for leg in legs]
    ones = int.from_bytes(b"\x01" * chunk, "big")
    low7 = int.from_bytes(b"\x7f" * chunk, "big")
    bad = []
    for s in range(rows):
        pd, qd, ddf, where = place(level, algo, n, s)
        assert sorted(where + [pd] + ([qd] if qd is not None else [])) == list(range(n))
        onleg = []
        for f in devs:
            f.seek(s * chunk)
            onleg.append(f.read(chunk))
        p, q = 0, [0] * n
        slots = syndrome_slots(n, pd, qd, ddf) if level == 6 else {}
        for k, dev in enumerate(where):
            want = arr[(s * data + k) * chunk:(s * data + k + 1) * chunk]
            if onleg[dev] != want:
                bad.append(f"row {s}: data index {k} on leg {dev} differs from the array's")
            v = int.from_bytes(want, "big")
            p ^= v
            if level == 6:
                q[slots[dev]] = v
        if p.to_bytes(chunk, "big") != onleg[pd]:
            bad.append(f"row {s}: P on leg {pd} is not the XOR of the data")
        if level == 6:
            acc = 0
            for v in reversed(q):  # Horner: sum of 2^slot * D_slot
                acc = mul2(acc, ones, low7) ^ v
            if acc.to_bytes(chunk, "big") != onleg[qd]:
                bad.append(f"row {s}: Q on leg {qd} is not the syndrome of the data")
    if bad:
        nrows = len({b.split(":")[0] for b in bad})
        print(f"{len(bad)} chunks in {nrows} of {rows} rows differ: " + "; ".join(bad[:8]))
        return 1
    return 0


def xor(length, first, rest):
    want = 0
    for leg in rest:
        with open(leg, "rb") as f:
            want ^= int.from_bytes(f.read(length), "big")
    with open(first, "rb") as f:
        got = f.read(length)
    if want.to_bytes(length, "big") != got:
        print(f"{first} is not the XOR of {' '.join(rest)}")
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]))
    if sys.argv[1] == "xor":
        sys.exit(xor(int(sys.argv[2]), sys.argv[3], sys.argv[4:]))
    sys.exit(__doc__)
