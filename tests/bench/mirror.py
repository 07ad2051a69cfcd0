#!/usr/bin/python3
"""Mirror benchmark: dmnbd's mirror (two legs; core log, and disk log) against
linear on one leg, with nbdkit's file plugin on that leg for scale, side by
side in one run, reported as ratios. Started by run.sh
(`bash tests/bench/run.sh mirror`), which installs the tools and mounts the
tmpfs.

  randread:  4 KiB random reads at depth 16 (a mirror reads its default leg)
  randwrite: 4 KiB random writes at depth 16 (every leg, and the disk log's
             mark/clear of each region)
  write-1m:  1 MiB sequential writes at depth 4
  capped:    4 KiB random writes and 1 MiB writes where each leg is an nbdkit
             file server capped at LEG_RATE by its rate filter (legs that are
             disks): the mirror over two such legs against linear over one
  resync:    a full resync of a new disk log over LEG_MB, against nbdcopy of
             the same bytes from one leg to the other
  remote-leg: dmnbd linear over nbd://127.0.0.1 onto the nbdkit-file server,
             against that server read and written directly
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its server and fio helpers)

LEG_MB = 256
SECTORS = LEG_MB * 2048
REGION = 1024  # sectors: lvcreate --type mirror's default 512 KiB
CAPPED_MB = 64
LEG_RATE = "160M"  # bits per second (nbdkit-rate-filter): 20 MB/s per leg


def servers_for(args, legs):
    leg0, leg1 = legs
    log = os.path.join(args.dir, "mirror-log.img")
    bench.fresh_file(log, 1)
    # nbdkit first: the remote-leg server reads and writes through it.
    port = bench.free_port()
    kit = (bench.Server("nbdkit-file", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                        "file", leg0], f"nbd://127.0.0.1:{port}/"), port)
    out = [kit,
           bench.dmnbd_devices(args, "linear", [("d", f"0 {SECTORS} linear {leg0} 0")], "d"),
           bench.dmnbd_devices(args, "mirror-core", [
               ("m", f"0 {SECTORS} mirror core 2 {REGION} nosync 2 {leg0} 0 {leg1} 0")], "m"),
           bench.dmnbd_devices(args, "mirror-disk", [
               ("m", f"0 {SECTORS} mirror disk 3 {log} {REGION} nosync 2 {leg0} 0 {leg1} 0")],
               "m"),
           bench.dmnbd_devices(args, "remote-leg", [
               ("r", f"0 {SECTORS} linear nbd://127.0.0.1:{port}/ 0")], "r")]
    return out


def capped_bench(args):
    """The mirror against one leg where the legs have a bandwidth of their own."""
    files = [os.path.join(args.dir, f"capped{i}.img") for i in (0, 1)]
    for f in files:
        bench.fresh_file(f, CAPPED_MB)
    log = os.path.join(args.dir, "capped-log.img")
    bench.fresh_file(log, 1)
    sectors = CAPPED_MB * 2048
    with bench.CappedLegs(args, files, LEG_RATE) as capped:
        a, b = capped.uris
        servers = [
            bench.dmnbd_devices(args, "one-leg", [("d", f"0 {sectors} linear {a} 0")], "d"),
            bench.dmnbd_devices(args, "mirror-disk", [
                ("m", f"0 {sectors} mirror disk 3 {log} {REGION} nosync 2 {a} 0 {b} 0")], "m")]
        rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1", f"--size={CAPPED_MB}m"]
        jobs = [("randwrite", "randwrite", rt), ("write-1m", "write", rt + ["--bs=1m", "--iodepth=4"])]
        results = bench.run_set(args, servers, jobs, rounds=args.rounds)
    print(f"\ncapped legs ({LEG_RATE}bit/s each), mirror (disk log) over two against one leg: " +
          ", ".join(f"{job} {results[(job, 'mirror-disk')]['iops'] / results[(job, 'one-leg')]['iops']:.2f}x"
                    for job, _, _ in jobs))


def resync_bench(args, legs):
    """MiB/s of a full resync (new disk log) vs nbdcopy of the same bytes."""
    leg0, leg1 = legs
    log = os.path.join(args.dir, "resync-log.img")
    srv_log = open(os.path.join(args.dir, "servers.log"), "a")
    copy_s = bench.nbdcopy_seconds(args, leg0, leg1, SECTORS)
    bench.fresh_file(log, 1)  # a new log: every region out of sync
    s, port = bench.dmnbd_devices(args, "resync", [
        ("m", f"0 {SECTORS} mirror disk 2 {log} {REGION} 2 {leg0} 0 {leg1} 0")], "m")
    t0 = time.time()
    s.start(srv_log, port)
    ctl = [args.dmnbd, "--control", f"{args.dir}/resync.sock"]
    regions = SECTORS // REGION
    try:
        bench.wait_for_status(ctl, "m", lambda st: len(st) > 6 and st[6] == f"{regions}/{regions}")
        resync_s = time.time() - t0
    finally:
        s.stop()
    return LEG_MB / resync_s, LEG_MB / copy_s


def main():
    args = bench.target_bench_args(__doc__)
    legs = [os.path.join(args.dir, f"leg{i}.img") for i in (0, 1)]
    for leg in legs:
        if not os.path.exists(leg) or os.path.getsize(leg) != LEG_MB << 20:
            subprocess.run(["fio", "--name=fill", f"--filename={leg}", "--rw=write", "--bs=1m",
                            f"--size={LEG_MB}m", "--output=/dev/null"], check=True)
    rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1", f"--size={LEG_MB}m"]
    jobs = [("randread", "randread", rt),
            ("randwrite", "randwrite", rt),
            ("write-1m", "write", rt + ["--bs=1m", "--iodepth=4"])]
    results = bench.run_set(args, servers_for(args, legs), jobs, rounds=args.rounds)
    names = ["linear", "mirror-core", "mirror-disk", "nbdkit-file", "remote-leg"]
    print(f"\n{'job':10} {'server':12} {'IOPS':>9} {'mean_us':>8} {'p99_us':>8} {'srv_us/IO':>9} {'vs linear':>9}")
    for job, _, _ in jobs:
        base = results[(job, "linear")]["iops"]
        for n in names:
            r = results[(job, n)]
            print(f"{job:10} {n:12} {r['iops']:9.0f} {r['mean_us']:8.1f} {r['p99_us']:8.1f} "
                  f"{r['srv_us']:9.1f} {r['iops'] / base:8.2f}x")
    print("\nremote-leg (dmnbd linear over nbd://127.0.0.1 to nbdkit-file) / nbdkit-file read "
          "directly: " + ", ".join(
              f"{job} {results[(job, 'remote-leg')]['iops'] / results[(job, 'nbdkit-file')]['iops']:.2f}x"
              for job, _, _ in jobs))
    capped_bench(args)
    resync, copy = resync_bench(args, legs)
    print(f"\nresync of {LEG_MB} MiB (new disk log): {resync:.0f} MiB/s; nbdcopy of the same "
          f"bytes leg to leg: {copy:.0f} MiB/s ({resync / copy:.2f}x)")


if __name__ == "__main__":
    main()
