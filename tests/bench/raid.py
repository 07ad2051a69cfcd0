#!/usr/bin/python3
"""raid benchmark: dmnbd's raid (dm-raid) raid1 over two legs and raid10 near
over four, against linear on one leg, side by side in one run, reported as
ratios. Started by run.sh (`bash tests/bench/run.sh raid`), which installs the
tools and mounts the tmpfs.

  randread / randwrite / write-1m   as in mirror.py, on legs in the tmpfs
                                    (the server's CPU is the limit there)
  spread:  4 KiB random reads at depth 32 where each leg is an nbdkit file
           server capped by its rate filter (a disk of LEG_RATE): linear over
           one such leg against raid10 near over four, which reads each chunk
           from whichever copy has fewer requests in flight, as md does
  resync:  a new raid1 set's resync of LEG_MB, at md's default cap
           (max_recovery_rate 200000 KiB/s) and uncapped, against nbdcopy of
           the same bytes leg to leg
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its server and fio helpers)

LEG_MB = 256
SECTORS = LEG_MB * 2048
SPREAD_MB = 64
LEG_RATE = "160M"  # bits per second (nbdkit-rate-filter): 20 MB/s per leg


def legs(args, prefix, count, mb):
    out = [os.path.join(args.dir, f"{prefix}{i}.img") for i in range(count)]
    for leg in out:
        if not os.path.exists(leg) or os.path.getsize(leg) != mb << 20:
            subprocess.run(["fio", "--name=fill", f"--filename={leg}", "--rw=write", "--bs=1m",
                            f"--size={mb}m", "--output=/dev/null"], check=True)
    return out


def metas(args, prefix, count):
    out = [os.path.join(args.dir, f"{prefix}{i}.img") for i in range(count)]
    for m in out:
        bench.fresh_file(m, 1)
    return out


def raid_table(sectors, kind, params, meta, data):
    pairs = " ".join(f"{m} {d}" for m, d in zip(meta, data))
    return f"0 {sectors} raid {kind} {len(params.split())} {params} {len(data)} {pairs}"


def local_bench(args):
    l = legs(args, "leg", 4, LEG_MB // 2)
    m = metas(args, "meta", 6)  # two for raid1, four for raid10
    half = SECTORS // 2
    servers = [
        bench.dmnbd_devices(args, "linear", [("d", f"0 {half} linear {l[0]} 0")], "d"),
        bench.dmnbd_devices(args, "raid1", [
            ("r", raid_table(half, "raid1", "0 nosync region_size 1024", m[:2], l[:2]))], "r"),
        bench.dmnbd_devices(args, "raid10-near4", [
            ("r", raid_table(SECTORS, "raid10", "128 nosync", m[2:], l))], "r")]
    rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1", f"--size={LEG_MB // 2}m"]
    jobs = [("randread", "randread", rt), ("randwrite", "randwrite", rt),
            ("write-1m", "write", rt + ["--bs=1m", "--iodepth=4"])]
    results = bench.run_set(args, servers, jobs, rounds=args.rounds)
    print(f"\n{'job':10} {'server':13} {'IOPS':>9} {'mean_us':>8} {'p99_us':>8} {'srv_us/IO':>9} {'vs linear':>9}")
    for job, _, _ in jobs:
        base = results[(job, "linear")]["iops"]
        for n in ["linear", "raid1", "raid10-near4"]:
            r = results[(job, n)]
            print(f"{job:10} {n:13} {r['iops']:9.0f} {r['mean_us']:8.1f} {r['p99_us']:8.1f} "
                  f"{r['srv_us']:9.1f} {r['iops'] / base:8.2f}x")


def spread_bench(args):
    l = legs(args, "spread", 4, SPREAD_MB)
    m = metas(args, "spread-meta", 4)
    with bench.CappedLegs(args, l, LEG_RATE) as capped:
        uris = capped.uris
        sectors = SPREAD_MB * 2048
        m2 = metas(args, "spread-meta-r1-", 2)
        servers = [
            bench.dmnbd_devices(args, "one-leg", [("d", f"0 {sectors} linear {uris[0]} 0")], "d"),
            bench.dmnbd_devices(args, "raid1", [
                ("r", raid_table(sectors, "raid1", "0 nosync", m2, uris[2:]))], "r"),
            bench.dmnbd_devices(args, "raid10-near4", [
                ("r", raid_table(2 * sectors, "raid10", "128 nosync", m, uris))], "r")]
        rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1",
              f"--size={SPREAD_MB}m"]
        jobs = [("spread", "randread", rt + ["--iodepth=32"]),
                ("write-1m", "write", rt + ["--bs=1m", "--iodepth=4"])]
        results = bench.run_set(args, servers, jobs, rounds=args.rounds)
    one = results[("spread", "one-leg")]["iops"]
    print(f"\nspread: 4k random reads, legs capped at {LEG_RATE}bit/s each: one leg {one:.0f} IOPS, "
          + ", ".join(f"{n} {results[('spread', n)]['iops']:.0f} IOPS "
                      f"({results[('spread', n)]['iops'] / one:.2f}x)"
                      for n in ("raid1", "raid10-near4")))
    w1 = results[("write-1m", "one-leg")]["iops"]
    print("1 MiB writes to the same capped legs (each copy goes to its own leg, side by side): "
          + ", ".join(f"{n} {results[('write-1m', n)]['iops'] / w1:.2f}x"
                      for n in ("raid1", "raid10-near4")) + f" of one leg's {w1:.0f} IOPS")


def resync_bench(args):
    l = legs(args, "leg", 2, LEG_MB)
    srv_log = open(os.path.join(args.dir, "servers.log"), "a")
    copy_s = bench.nbdcopy_seconds(args, l[0], l[1], SECTORS)
    out = []
    for label, params in [("md's default cap", "0 region_size 1024"),
                          ("uncapped", "0 region_size 1024 max_recovery_rate 100000000")]:
        m = metas(args, "resync-meta", 2)  # zeroed: a new set, resynced whole
        s, port = bench.dmnbd_devices(args, "resync", [
            ("r", raid_table(SECTORS, "raid1", params, m, l))], "r")
        t0 = time.time()
        s.start(srv_log, port)
        ctl = [args.dmnbd, "--control", f"{args.dir}/resync.sock"]
        try:
            bench.wait_for_status(ctl, "r", lambda st: len(st) > 7 and st[7] == "idle" and
                                  st[6] == f"{SECTORS}/{SECTORS}")
            out.append((label, LEG_MB / (time.time() - t0)))
        finally:
            s.stop()
    copy = LEG_MB / copy_s
    print(f"\nresync of {LEG_MB} MiB (new raid1 set): " + ", ".join(
        f"{label} {mbs:.0f} MiB/s ({mbs / copy:.2f}x)" for label, mbs in out) +
        f"; nbdcopy of the same bytes leg to leg: {copy:.0f} MiB/s")


def main():
    args = bench.target_bench_args(__doc__)
    local_bench(args)
    spread_bench(args)
    resync_bench(args)


if __name__ == "__main__":
    main()
