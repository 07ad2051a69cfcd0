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
  randwrite   4 KiB random writes, QD16: each a reconstruct-write (2 reads, of
              the other data, and 2 writes: 4 leg I/Os over 4 legs where striped
              does 1 over 3; raid6: 2 reads and 3 writes over 5)
  randread / read-1m   healthy reads (4 KiB QD16, 1 MiB QD4), and degraded:
              raid5 with leg 0 given as `- -` (a quarter of its chunks read as
              the XOR of the other three legs' chunks)
  isa-l       xor_gen and pq_gen over 64 KiB chunks (3 data + P, + Q) on one
              core through ctypes on libisal.so.2, against the data bytes the
              server wrote per second of its CPU in write-rows
  capped      the same legs each served by nbdkit capped by its rate filter
              at CAP_RATE (10 MiB/s), where the legs are the limit:
              write-rows, randwrite, healthy and degraded read-1m for striped
              over 3, raid5 over 4 and raid6 over 5, each beside what the legs
              would allow (leg_bytes: every leg's bytes for the job, from md's
              layouts in tests/targets/parity.py), CAP_RUNTIME seconds a job
              (2, after a 0.5 s ramp), CAP_ROUNDS rounds (2): about 60 s

  --only capped (or tmpfs) runs that part alone; a longer capped run:
  CAP_RUNTIME=10 CAP_ROUNDS=2 bash tests/bench/run.sh raid5 --only capped
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
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "targets"))
import parity  # noqa: E402  (md's layouts: the raid_parity tests' oracle)

LEG_MB = 128
SECTORS = LEG_MB * 2048  # per leg
CHUNK = 128              # sectors: 64 KiB
DATA = 3                 # data legs of every array here
ROW_KIB = DATA * CHUNK // 2
ARRAY_MB = DATA * LEG_MB
# Bits per second per leg (nbdkit's M: 2^20): 10 MiB/s, half raid.py's LEG_RATE, so that
# striped's 4 KiB writes (7680 IOPS) are the legs' limit and not the two cores'.
CAP_RATE = "80M"
CAP_BURST = 0.25          # seconds of its rate an idle leg saves up: spent in the ramp
CAP_RAMP = "500ms"


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
    resync(args, name, table)
    return bench.dmnbd_devices(args, name, [("r", table)], "r")


def resync(args, name, table):
    """Serves raid device r with `table` until its resync is done."""
    s, port = bench.dmnbd_devices(args, name, [("r", table)], "r")
    s.start(open(os.path.join(args.dir, "servers.log"), "a"), port)
    try:
        bench.wait_for_status([args.dmnbd, "--control", f"{args.dir}/{name}.sock"], "r",
                              lambda st: len(st) > 7 and st[7] == "idle" and
                              st[6] == f"{SECTORS}/{SECTORS}")
    finally:
        s.stop()


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


def leg_bytes(kind, n, requests, lost=None):
    """The bytes each of n legs reads and writes for `requests` [(rw, offset,
    length)] on the array: kind None is striped over n legs, else a dm-raid
    type with its rows where md puts them (parity.place), written as dmnbd
    writes (a whole row reads nothing; a part of one is a read-modify-write
    or a reconstruct-write, whichever reads fewer blocks, a tie going to
    reconstruct-write) and read as it reads (a row with a lost block asked
    for: every other leg's column, once, data and P). ([reads], [writes])"""
    chunk = CHUNK * 512
    reads, writes = [0] * n, [0] * n
    for rw, off, length in requests:
        rows = {}  # row -> [(data index, start, end in the chunk)]
        at = off
        while at < off + length:
            c, lo = divmod(at, chunk)
            hi = min(chunk, lo + off + length - at)
            rows.setdefault(c // DATA, []).append((c % DATA, lo, hi))
            at += hi - lo
        for row, pieces in rows.items():
            if kind is None:
                for k, lo, hi in pieces:
                    (reads if rw == "r" else writes)[(row * DATA + k) % n] += hi - lo
                continue
            pd, qd, _, devs = parity.place(*parity.TYPES[kind], n, row)
            par = [pd] + ([] if qd is None else [qd])
            lo, hi = min(p[1] for p in pieces), max(p[2] for p in pieces)
            asked = {k for k, _, _ in pieces}
            if rw == "r":
                if lost is not None and lost in (devs[k] for k in asked):
                    for d in devs + [pd]:
                        if d != lost:
                            reads[d] += hi - lo
                else:
                    for k, a, b in pieces:
                        reads[devs[k]] += b - a
                continue
            if len(asked) < DATA or hi - lo < chunk:
                rmw, rcw = len(asked) + len(par), DATA - len(asked)
                for d in ([devs[k] for k in range(DATA) if k not in asked] if rcw <= rmw
                          else [devs[k] for k in asked] + par):
                    reads[d] += hi - lo
            for d in [devs[k] for k in asked] + par:
                writes[d] += hi - lo
    return reads, writes


def expected(kind, n, requests, lost=None):
    """What the legs allow `kind` over n legs, as a ratio to striped over
    DATA legs doing `requests`: the busiest leg's bytes against striped's.
    Two numbers: legs capping reads and writes apart (nbdkit's rate filter: a
    link each way), and legs with one cap for both (a disk)."""
    def busiest(loads):
        r, w = loads
        return max(max(r), max(w)), max(a + b for a, b in zip(r, w))
    s, k = busiest(leg_bytes(None, DATA, requests)), busiest(leg_bytes(kind, n, requests, lost))
    return s[0] / k[0], s[1] / k[1]


def capped_bench(args, l):
    """Every leg an nbdkit file server capped at CAP_RATE: the legs are the
    limit, not the two cores. The sets' own metadata: raid5 `nosync` (its
    healthy reads on a second, fresh set: the degraded one marks leg 0 lost
    in the first's superblocks), raid6 resynced on the tmpfs before."""
    m5, m5h = raid.metas(args, "cap-r5-meta", 4), raid.metas(args, "cap-r5h-meta", 4)
    m6 = raid.metas(args, "cap-r6-meta", 5)

    def r6(legs):
        return raid.raid_table(DATA * SECTORS, "raid6_zr",
                               f"{CHUNK} max_recovery_rate 100000000", m6, legs)
    resync(args, "raid6-5", r6(l))
    row = 5 * ROW_KIB << 10
    cycle = 60  # rows: a whole number of raid5's and raid6's parity rotations
    model = {"write-rows": [("w", i * row, row) for i in range(cycle // 5)],
             "randwrite": [("w", c * CHUNK * 512, 4096) for c in range(cycle * DATA)],
             "read-1m": [("r", i << 20, 1 << 20) for i in range(ARRAY_MB)]}
    rt = [f"--runtime={args.cap_runtime}", "--time_based", f"--ramp_time={CAP_RAMP}",
          f"--size={ARRAY_MB}m"]
    wjobs = [("write-rows", "write", rt + [f"--bs={5 * ROW_KIB}k", "--iodepth=4"]),
             ("randwrite", "randwrite", rt)]
    rjobs = [("read-1m", "read", rt + ["--bs=1m", "--iodepth=4"])]
    with bench.CappedLegs(args, l, CAP_RATE, CAP_BURST) as capped:
        u = capped.uris
        raid6 = bench.dmnbd_devices(args, "raid6-5", [("r", r6(u))], "r")
        w = bench.run_set(args, [striped(args, u), raid5(args, "raid5-4", m5, u[:4]), raid6],
                          wjobs, rounds=args.cap_rounds)
        r = bench.run_set(args, [striped(args, u), raid5(args, "raid5-4", m5h, u[:4]), raid6,
                                 raid5(args, "raid5-degraded", ["-"] + m5[1:], ["-"] + u[1:4])],
                          rjobs, rounds=args.cap_rounds)
    leg_bps = int(CAP_RATE[:-1]) * (1 << 20) // 8
    print(f"\ncapped legs: every leg nbdkit's file plugin capped at {CAP_RATE}bit/s "
          f"({leg_bps / (1 << 20):.0f} MiB/s each way), {args.cap_runtime:g} s a job, "
          f"{args.cap_rounds} round(s)")
    print(f"{'job':10} {'server':15} {'IOPS':>8} {'MiB/s':>7} {'p99_us':>8} {'srv_cores':>9} "
          f"{'vs striped':>10} {'legs allow':>10} {'one cap':>8}")
    rows = [(w, "write-rows", ("striped3", "raid5-4", "raid6-5")),
            (w, "randwrite", ("striped3", "raid5-4", "raid6-5")),
            (r, "read-1m", ("striped3", "raid5-4", "raid6-5", "raid5-degraded"))]
    out = {}
    for res, job, names in rows:
        base = res[(job, "striped3")]["iops"]
        for n in names:
            x = res[(job, n)]
            kind, legs, lost = {"striped3": (None, DATA, None), "raid5-4": ("raid5_ls", 4, None),
                                "raid6-5": ("raid6_zr", 5, None),
                                "raid5-degraded": ("raid5_ls", 4, 0)}[n]
            exp = (1.0, 1.0) if kind is None else expected(kind, legs, model[job], lost)
            out[(job, n)] = (x["iops"] / base, exp)
            print(f"{job:10} {n:15} {x['iops']:8.0f} {x['mibs']:7.1f} {x['p99_us']:8.0f} "
                  f"{x['srv_us'] * x['iops'] / 1e6:9.2f} "
                  f"{x['iops'] / base:9.2f}x {exp[0]:9.2f}x {exp[1]:7.2f}x")
    s_rows, s_rand = w[("write-rows", "striped3")], w[("randwrite", "striped3")]
    print(f"  striped's legs at their cap? whole rows {s_rows['mibs']:.1f} MiB/s of "
          f"{DATA * leg_bps / (1 << 20):.0f}, 4k writes {s_rand['iops']:.0f} IOPS of "
          f"{DATA * leg_bps / 4096:.0f}")
    print("  legs allow: the busiest leg's bytes against striped's (md's layouts, dmnbd's "
          "reads and writes); one cap: the same were a leg's reads and writes to share its "
          "cap, as a disk's; srv_cores: dmnbd's CPU (the nbdkit legs' not counted)")
    return out


def main():
    def extra(ap):
        ap.add_argument("--only", choices=("tmpfs", "capped"), help="run that part alone")
        ap.add_argument("--cap-runtime", type=float,
                        default=float(os.environ.get("CAP_RUNTIME", 2)))
        ap.add_argument("--cap-rounds", type=int, default=int(os.environ.get("CAP_ROUNDS", 2)))
    args = bench.target_bench_args(__doc__, extra)
    l = raid.legs(args, "leg", 5, LEG_MB)
    if args.only == "capped":
        capped_bench(args, l)
        return
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
          f"the 0.33x of its 4 leg I/Os over 4 legs (raid6 {ratio(w, 'randwrite', 'raid6-5'):.2f}x, "
          "5 over 5: 0.33x)")
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
    if args.only != "tmpfs":
        capped_bench(args, l)


if __name__ == "__main__":
    main()
