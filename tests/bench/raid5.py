#!/usr/bin/python3
"""raid5 benchmark: dmnbd's raid (dm-raid) raid5_ls over four legs and
raid6_zr over five (three data legs each, 64 KiB chunks; raid5 `nosync`,
raid6 resynced before, as it takes no `nosync`) against
striped over three of the same legs, with nbdkit's file plugin and qemu-nbd
on one file of the array's size for scale, side by side in one run, reported
as ratios to striped. Started by run.sh (`bash tests/bench/run.sh raid5`),
which installs the tools and mounts the tmpfs.

  write-rows  sequential writes of 5 rows (960 KiB: 5 x 3 x 64 KiB), aligned
              to rows, QD4: full-row writes, parity from the new data alone
  write-1m    sequential 1 MiB writes, QD4: rows cut in two by the request ends
  randwrite   4 KiB random writes, QD16: a read-modify-write of data and parity
              each (4 leg I/Os where striped does 1; raid6: 6)
  randread / read-1m   healthy reads (4 KiB QD16, 1 MiB QD4), and degraded:
              raid5 with leg 0 given as `- -` (a quarter of its chunks read as
              the XOR of the other three legs' chunks)
  isa-l       xor_gen and pq_gen over 64 KiB chunks (3 data + P, + Q) on one
              core through ctypes on libisal.so.2, against the data bytes the
              server wrote per second of its CPU in write-rows
"""
import ctypes
import ctypes.util
import mmap
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its server and fio helpers)
import raid  # noqa: E402  (legs, metas, raid_table)

LEG_MB = 128
SECTORS = LEG_MB * 2048  # per leg
CHUNK = 128              # sectors: 64 KiB
DATA = 3                 # data legs of every array here
ROW_KIB = DATA * CHUNK // 2
ARRAY_MB = DATA * LEG_MB


def peers(args, flat):
    """nbdkit's file plugin and qemu-nbd on one file of the array's size."""
    out = []
    port = bench.free_port()
    out.append((bench.Server("nbdkit-file", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                             "file", flat], f"nbd://127.0.0.1:{port}/"), port))
    port = bench.free_port()
    out.append((bench.Server("qemu-nbd", ["qemu-nbd", "-t", "-f", "raw", "-e", "8",
                                          "--aio=io_uring", "-b", "127.0.0.1", "-p", str(port),
                                          flat], f"nbd://127.0.0.1:{port}/"), port))
    return out


def striped(args, l):
    legs = " ".join(f"{leg} 0" for leg in l[:DATA])
    return bench.dmnbd_devices(args, "striped3", [
        ("d", f"0 {DATA * SECTORS} striped {DATA} {CHUNK} {legs}")], "d")


def raid5(args, name, meta, data):
    return bench.dmnbd_devices(args, name, [
        ("r", raid.raid_table(DATA * SECTORS, "raid5_ls", f"{CHUNK} nosync", meta, data))], "r")


def report(results, names, jobs, base="striped3"):
    print(f"\n{'job':10} {'server':15} {'IOPS':>9} {'MiB/s':>7} {'mean_us':>8} {'p99_us':>8} "
          f"{'srv_us/IO':>9} {'vs striped':>10}")
    for job, _, _ in jobs:
        b = results[(job, base)]["iops"]
        for n in names:
            r = results.get((job, n))
            if r:
                print(f"{job:10} {n:15} {r['iops']:9.0f} {r['mibs']:7.0f} {r['mean_us']:8.1f} "
                      f"{r['p99_us']:8.1f} {r['srv_us']:9.1f} {r['iops'] / b:9.2f}x")


def synced(args, name, table):
    """A dmnbd server of raid device r with `table`, started once before and
    stopped when its resync was done (raid6 takes no `nosync`, as in the
    kernel): the benchmark's own start finds the set in sync."""
    s, port = bench.dmnbd_devices(args, name, [("r", table)], "r")
    s.start(open(os.path.join(args.dir, "servers.log"), "a"), port)
    try:
        bench.wait_for_status([args.dmnbd, "--control", f"{args.dir}/{name}.sock"], "r",
                              lambda st: len(st) > 7 and st[7] == "idle" and
                              st[6] == f"{SECTORS}/{SECTORS}")
    finally:
        s.stop()
    return bench.dmnbd_devices(args, name, [("r", table)], "r")


def write_bench(args, l):
    m5 = raid.metas(args, "r5-meta", 4)
    m6 = raid.metas(args, "r6-meta", 5)
    flat = raid.legs(args, "flat", 1, ARRAY_MB)[0]
    r6 = raid.raid_table(DATA * SECTORS, "raid6_zr",
                         f"{CHUNK} max_recovery_rate 100000000", m6, l)
    servers = [striped(args, l), raid5(args, "raid5-4", m5, l[:4]),
               synced(args, "raid6-5", r6)] + peers(args, flat)
    rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1", f"--size={ARRAY_MB}m"]
    jobs = [("write-rows", "write", rt + [f"--bs={5 * ROW_KIB}k", "--iodepth=4"]),
            ("write-1m", "write", rt + ["--bs=1m", "--iodepth=4"]),
            ("randwrite", "randwrite", rt)]
    results = bench.run_set(args, servers, jobs, rounds=args.rounds)
    report(results, ["striped3", "raid5-4", "raid6-5", "nbdkit-file", "qemu-nbd"], jobs)
    return results, m5


def read_bench(args, l, m5):
    """Healthy and degraded reads. The degraded set is the write bench's raid5
    (its superblocks say four legs) with leg 0 missing; the healthy one beside
    it a new set of its own metadata."""
    fresh = raid.metas(args, "r5b-meta", 4)
    flat = os.path.join(args.dir, "flat0.img")
    servers = [striped(args, l), raid5(args, "raid5-4", fresh, l[:4]),
               raid5(args, "raid5-degraded", ["-"] + m5[1:], ["-"] + l[1:4])] + peers(args, flat)
    rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1", f"--size={ARRAY_MB}m"]
    jobs = [("randread", "randread", rt), ("read-1m", "read", rt + ["--bs=1m", "--iodepth=4"])]
    results = bench.run_set(args, servers, jobs, rounds=args.rounds)
    report(results, ["striped3", "raid5-4", "raid5-degraded", "nbdkit-file", "qemu-nbd"], jobs)
    return results


def isal_rates(chunk=64 << 10, span=32 << 20, seconds=0.5):
    """Data bytes per CPU second of ISA-L's xor_gen (3 data + P) and pq_gen
    (3 data + P + Q) over `chunk`-byte blocks on one core: "hot", the same
    blocks again and again (in the cache), and "streaming", block after block
    through `span` bytes per vector (DRAM, as the server's rows come)."""
    lib = ctypes.CDLL(ctypes.util.find_library("isal") or "libisal.so.2")
    bufs = [mmap.mmap(-1, span) for _ in range(DATA + 2)]  # page-aligned
    for b in bufs[:DATA]:
        for off in range(0, span, 1 << 20):
            b[off:off + (1 << 20)] = os.urandom(1 << 20)
    base = [ctypes.addressof(ctypes.c_char.from_buffer(b)) for b in bufs]
    out = {}
    for name, vects in (("xor_gen", DATA + 1), ("pq_gen", DATA + 2)):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
        for mode, blocks in (("hot", 1), ("streaming", span // chunk)):
            arrays = [(ctypes.c_void_p * vects)(*[a + i * chunk for a in base[:vects]])
                      for i in range(blocks)]
            if fn(vects, chunk, arrays[0]):
                raise RuntimeError(f"{name} refused its arguments")
            calls, t0 = 0, time.process_time()
            while time.process_time() - t0 < seconds:
                for a in arrays if blocks > 1 else arrays * 256:
                    fn(vects, chunk, a)
                calls += max(blocks, 256)
            out[(name, mode)] = calls * chunk * DATA / (time.process_time() - t0)
    return out


def main():
    args = bench.target_bench_args(__doc__)
    l = raid.legs(args, "leg", 5, LEG_MB)
    w, m5 = write_bench(args, l)
    r = read_bench(args, l, m5)
    isal = isal_rates()

    def ratio(res, job, n, base="striped3"):
        return res[(job, n)]["iops"] / res[(job, base)]["iops"]

    def ratios(res, job, names):
        return "  ".join(f"{n} {ratio(res, job, n):.2f}x" for n in names)

    print("\nratios to striped over 3 legs (IOPS):")
    for job in ("write-rows", "write-1m", "randwrite"):
        print(f"  {job:10} " + ratios(w, job, ("raid5-4", "raid6-5", "nbdkit-file", "qemu-nbd")))
    for job in ("randread", "read-1m"):
        print(f"  {job:10} " + ratios(r, job, ("raid5-4", "raid5-degraded", "nbdkit-file",
                                               "qemu-nbd"))
              + f"  (degraded / healthy raid5 {ratio(r, job, 'raid5-degraded', 'raid5-4'):.2f}x)")
    rw, sw = w[("randwrite", "raid5-4")]["iops"], w[("randwrite", "striped3")]["iops"]
    print(f"  4k random writes: raid5 {rw:.0f} IOPS, {rw / sw:.2f}x striped's {sw:.0f}, beside "
          f"the 0.25x of its 4 leg I/Os per write (raid6 {ratio(w, 'randwrite', 'raid6-5'):.2f}x, "
          "beside 6 I/Os: 0.17x)")
    print("  degraded 4k reads: a quarter of them read the 3 other legs, 1.5 leg reads a read "
          "(0.67x where the legs are the limit)")
    print("\nISA-L on one core, 64 KiB blocks, 3 data blocks (GB/s of data in): "
          + ", ".join(f"{n} {m} {v / 1e9:.1f}" for (n, m), v in isal.items()))
    for n, fn in (("raid5-4", "xor_gen"), ("raid6-5", "pq_gen")):
        x = w[("write-rows", n)]
        data_bps = x["mibs"] * (1 << 20)
        cores = x["srv_us"] * x["iops"] / 1e6
        per_core = data_bps / max(cores, 1e-9)
        print(f"  {n} write-rows: {data_bps / 1e6:.0f} MB/s of data on {cores:.2f} server cores, "
              f"{per_core / 1e6:.0f} MB/s per core; {fn} (streaming) would take "
              f"{per_core / isal[(fn, 'streaming')] * 100:.1f}% of that CPU")

if __name__ == "__main__":
    main()
