#!/usr/bin/python3
"""Region checks for the resync tests of mirror.sh and raid.sh (two leg
files, regions of REGION_BYTES):

  regions.py scribble LEG REGION_BYTES DIRTY
      4 KiB of 0xee at the start of each region in DIRTY (a comma list) of
      LEG: garbage the resync must overwrite.
  regions.py check LEG_A LEG_B REGION_BYTES REGIONS DIRTY CLEAN
      the DIRTY regions are identical on both legs, region CLEAN (if >= 0)
      still differs (it was not resynced), and every other region is
      identical. Exit 1 with what is wrong otherwise.
"""
import sys


def scribble(leg, region_bytes, dirty):
    with open(leg, "r+b") as f:
        for r in map(int, dirty.split(",")):
            f.seek(r * region_bytes)
            f.write(b"\xee" * 4096)


def check(leg_a, leg_b, region_bytes, regions, dirty, clean):
    a, b = open(leg_a, "rb").read(), open(leg_b, "rb").read()
    R = region_bytes
    same = lambda r: a[r * R:(r + 1) * R] == b[r * R:(r + 1) * R]
    bad = [r for r in map(int, dirty.split(",")) if not same(r)]
    if bad:
        sys.exit(f"dirty regions still differ: {bad}")
    if clean >= 0 and same(clean):
        sys.exit(f"clean region {clean} was resynced too")
    others = [r for r in range(regions) if r != clean and not same(r)]
    if others:
        sys.exit(f"regions that differ: {others}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "scribble":
        scribble(args[0], int(args[1]), args[2])
    else:
        check(args[0], args[1], int(args[2]), int(args[3]), args[4], int(args[5]))
