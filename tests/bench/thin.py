#!/usr/bin/python3
"""Thin benchmark: dmnbd's thin-pool and thin (64 KiB blocks) against linear
on the same data file, with qemu-nbd over qcow2 (64 KiB clusters: the
nearest peer for thin provisioning and for a snapshot's copy on write),
nbdkit's file plugin and qemu-nbd raw for scale, side by side in one run,
reported as ratios to linear. Started by run.sh (`bash tests/bench/run.sh
thin`), which installs the tools and mounts the tmpfs.

  provisioned  a thin device of 256 MiB, every block written first (1 MiB
               writes), against linear over the same file and a qcow2 image
               written the same way: 4 KiB random reads at depth 16 and 1,
               4 KiB random rewrites at depth 16, 1 MiB reads at depth 4
               (time based, ROUNDS rounds, servers in alternating order)
  first writes a fresh thin device (a fresh qcow2 image) for every run, each
               write the first in its block, 4096 of them: 4 KiB writes at
               depth 16, each in a block of its own (the pool zeroes the
               other 60 KiB, qcow2 the rest of its cluster), whole 64 KiB
               blocks at depth 16 (nothing to zero), and 4 KiB writes each
               followed by a FLUSH at depth 1 (fio's fsync=1: every flush a
               pool commit); beside them the same 4 KiB+FLUSH pattern on
               provisioned blocks (a flush with nothing to commit)
  snapshot     4096 4 KiB writes, each in its own block, to a fresh snapshot
               of the provisioned device (every block shared: a 64 KiB copy
               on write each), to its origin (the same copies), and to a
               fresh qcow2 overlay on the raw file (qemu-img create -b
               -F raw: a 64 KiB cluster copied from the base each)
  memory       a pool whose data device is a `zero` device (no data stored)
               and skip_block_zeroing: one 4 KiB write to each of MEM_BLOCKS
               blocks (default 1M; 256k when ROUNDS=1) at depth 32; the
               server's RSS before, after and after a restart, the metadata
               blocks used, and 4 KiB random reads over all of them against
               reads of the zero device itself

  --only provisioned|first|snapshot|memory runs one part alone.
"""
import contextlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its server and fio helpers)

SIZE_MB = 640            # the data file: the pool's data device, linear's, the peers'
SECTORS = SIZE_MB * 2048
BLOCK = 128              # sectors: 64 KiB pool blocks, as qcow2's default clusters
BLOCK_KIB = BLOCK // 2
PROV_MB = 256            # the provisioned thin device, and every job's region
PROV_SECTORS = PROV_MB * 2048
META_MB = 16
FRESH_WRITES = PROV_MB * 1024 // BLOCK_KIB   # 4096: one write per block of the region
ONE_PER_BLOCK = [f"--size={PROV_MB}m", f"--io_size={FRESH_WRITES * 4}k"]  # with rw=write:60k
SKIP = f"write:{BLOCK_KIB - 4}k"  # 4 KiB written, the rest of the block skipped


def qemu_nbd(args, fmt, image, name):
    port = bench.free_port()
    return bench.Server(name, ["qemu-nbd", "-t", "-f", fmt, "-e", "8", "--aio=io_uring", "-b",
                               "127.0.0.1", "-p", str(port), image],
                        f"nbd://127.0.0.1:{port}/"), port


def qcow2_image(path, size_mb=None, backing=None):
    if os.path.exists(path):
        os.remove(path)
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={BLOCK_KIB}k"]
    if backing:
        cmd += ["-b", backing, "-F", "raw"]
    cmd += [path] + ([f"{size_mb}M"] if size_mb else [])
    subprocess.run(cmd, check=True)


class ThinServer:
    """The dmnbd server of the pool, its provisioned thin device `prov`
    (id 1), and fresh thin devices and snapshots made and deleted per run."""

    def __init__(self, args):
        self.args = args
        self.meta = os.path.join(args.dir, "thin-meta.img")
        bench.fresh_file(self.meta, META_MB)  # zeroes: the pool formats it
        self.server, self.port = bench.dmnbd_devices(
            args, "thin", [("pool", f"0 {SECTORS} thin-pool {self.meta} {args.data} {BLOCK} 0")],
            "prov")
        self.base = self.server.uri.rsplit("/", 1)[0]
        self.ctl = [args.dmnbd, "--control", f"{args.dir}/thin.sock"]
        self.next_id = 2

    def dm(self, *words):
        return subprocess.run(self.ctl + list(words), check=True, capture_output=True,
                              text=True).stdout.strip()

    def start(self, log):
        self.server.start(log, self.port)
        self.dm("message", "pool", "0", "create_thin", "1")
        self.dm("create", "prov", "--table", f"0 {PROV_SECTORS} thin pool 1")

    def new_id(self):
        self.next_id += 1
        return str(self.next_id)

    @contextlib.contextmanager
    def fresh(self):
        """A new thin device of PROV_MB, nothing mapped; deleted after."""
        i = self.new_id()
        self.dm("message", "pool", "0", "create_thin", i)
        self.dm("create", "fresh", "--table", f"0 {PROV_SECTORS} thin pool {i}")
        try:
            yield self.base + "/fresh"
        finally:
            self.dm("remove", "fresh")
            self.dm("message", "pool", "0", "delete", i)  # commits: its blocks free again

    @contextlib.contextmanager
    def snapshot(self, write_to_snapshot):
        """A snapshot of prov (suspended for the moment of create_snap, as
        lvcreate -s does); the URI of the snapshot, or of prov (the origin)."""
        i = self.new_id()
        self.dm("suspend", "prov")
        try:
            self.dm("message", "pool", "0", "create_snap", i, "1")
        finally:
            self.dm("resume", "prov")
        if write_to_snapshot:
            self.dm("create", "snap", "--table", f"0 {PROV_SECTORS} thin pool {i}")
        try:
            yield self.base + ("/snap" if write_to_snapshot else "/prov")
        finally:
            if write_to_snapshot:
                self.dm("remove", "snap")
            self.dm("message", "pool", "0", "delete", i)


def run_fio(args, job, name, server, uri, rw, extra):
    """One fio run; the server's CPU per I/O over it, and the mean FLUSH
    latency if fio sent any (fsync=1)."""
    cpu0 = bench.tree_cpu_seconds(server.pid)
    r = bench.fio_json(args, uri, rw, extra)
    r["srv_us"] = (bench.tree_cpu_seconds(server.pid) - cpu0) * 1e6 / max(r["ios"], 1)
    with open(os.path.join(args.dir, "fio.json")) as f:
        sync = json.load(f)["jobs"][0].get("sync", {})
    r["flush_us"] = sync["lat_ns"]["mean"] / 1000 if sync.get("total_ios") else 0.0
    print(f"{job:16} {name:16} {r['iops']:9.0f} IOPS", file=sys.stderr)
    return r


def add(results, key, r):
    results.setdefault(key, []).append(r)


def mean(results):
    return {k: {m: sum(r[m] for r in runs) / len(runs) for m in runs[0]}
            for k, runs in results.items()}


def provisioned_bench(args, thin, linear, peers):
    """Time-based jobs on provisioned blocks, every server in turn."""
    rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1", f"--size={PROV_MB}m"]
    jobs = [("randread", "randread", rt),
            ("randread-qd1", "randread", rt + ["--iodepth=1"]),
            ("rewrite", "randwrite", rt),
            ("read-1m", "read", rt + ["--bs=1m", "--iodepth=4"])]
    targets = [("linear", linear, linear.uri), ("thin", thin.server, thin.server.uri)] + \
        [(s.name, s, s.uri) for s in peers]
    results = {}
    for rnd in range(args.rounds):
        for job, rw, extra in jobs:
            for name, server, uri in targets if rnd % 2 == 0 else reversed(targets):
                add(results, (job, name), run_fio(args, job, name, server, uri, rw, extra))
    return mean(results), [t[0] for t in targets], [j[0] for j in jobs]


def first_write_bench(args, log, thin, linear, prov_qcow2):
    """Fixed-count jobs, each write the first in its block: a fresh thin
    device, a fresh qcow2 image and its qemu-nbd per run; linear writes the
    same pattern. Then the 4 KiB+FLUSH pattern on provisioned blocks."""
    fresh_qcow2 = os.path.join(args.dir, "thin-fresh.qcow2")

    @contextlib.contextmanager
    def fresh_qemu():
        qcow2_image(fresh_qcow2, PROV_MB)
        s, port = qemu_nbd(args, "qcow2", fresh_qcow2, "qemu-nbd-qcow2")
        s.start(log, port)
        try:
            yield s
        finally:
            s.stop()
            os.remove(fresh_qcow2)

    @contextlib.contextmanager
    def fixed(uri):
        yield uri

    def fresh_targets():
        return [("linear", linear, lambda: fixed(linear.uri)),
                ("thin", thin.server, thin.fresh),
                ("qemu-nbd-qcow2", None, fresh_qemu)]

    jobs = [("first-4k", SKIP, ONE_PER_BLOCK, fresh_targets()),
            ("first-64k", "randwrite", [f"--size={PROV_MB}m", f"--bs={BLOCK_KIB}k"],
             fresh_targets()),
            ("first-4k-flush", SKIP, ONE_PER_BLOCK + ["--iodepth=1", "--fsync=1"],
             fresh_targets()),
            ("rewrite-4k-flush", SKIP, ONE_PER_BLOCK + ["--iodepth=1", "--fsync=1"],
             [("linear", linear, lambda: fixed(linear.uri)),
              ("thin", thin.server, lambda: fixed(thin.server.uri)),
              ("qemu-nbd-qcow2", prov_qcow2, lambda: fixed(prov_qcow2.uri))])]
    results = {}
    for rnd in range(args.first_rounds):
        for job, rw, extra, targets in jobs:
            for name, server, make in targets if rnd % 2 == 0 else reversed(targets):
                with make() as got:
                    if server is None:  # a server of its own, started for this run
                        r = run_fio(args, job, name, got, got.uri, rw, extra)
                    else:
                        r = run_fio(args, job, name, server, got, rw, extra)
                add(results, (job, name), r)
    return mean(results), [j[0] for j in jobs]


def snapshot_bench(args, log, thin, linear):
    """4 KiB writes, one per 64 KiB block, where every block is shared: a
    fresh snapshot (and its origin) per run, a fresh qcow2 overlay on the raw
    file per run; linear and the provisioned thin device (no sharing) with
    the same pattern for scale."""
    overlay = os.path.join(args.dir, "thin-overlay.qcow2")

    @contextlib.contextmanager
    def fresh_overlay():
        qcow2_image(overlay, backing=args.data)
        s, port = qemu_nbd(args, "qcow2", overlay, "qemu-nbd-overlay")
        s.start(log, port)
        try:
            yield s
        finally:
            s.stop()
            os.remove(overlay)

    @contextlib.contextmanager
    def fixed(uri):
        yield uri

    targets = [("linear", linear, lambda: fixed(linear.uri)),
               ("thin", thin.server, lambda: fixed(thin.server.uri)),
               ("thin-snapshot", thin.server, lambda: thin.snapshot(True)),
               ("thin-origin", thin.server, lambda: thin.snapshot(False)),
               ("qemu-nbd-overlay", None, fresh_overlay)]
    results = {}
    for rnd in range(args.first_rounds):
        for name, server, make in targets if rnd % 2 == 0 else reversed(targets):
            with make() as got:
                if server is None:
                    r = run_fio(args, "snapshot-4k", name, got, got.uri, SKIP, ONE_PER_BLOCK)
                else:
                    r = run_fio(args, "snapshot-4k", name, server, got, SKIP, ONE_PER_BLOCK)
            add(results, ("snapshot-4k", name), r)
    return mean(results), [t[0] for t in targets]


def memory_bench(args, log, blocks):
    """RSS of a pool with `blocks` mapped (one 4 KiB write each, data on a
    zero device: nothing stored), the metadata they take, random reads over
    them against the zero device's own, and the RSS after a restart."""
    meta = os.path.join(args.dir, "thin-mem-meta.img")
    meta_mb = max(32, blocks >> 14)  # 64 MiB for 1M mappings (about 40 used)
    bench.fresh_file(meta, meta_mb)
    sectors = blocks * BLOCK
    devices = [("zdata", f"0 {sectors} zero"),
               ("pool", f"0 {sectors} thin-pool {meta} zdata {BLOCK} 0 1 skip_block_zeroing")]
    ctl = [args.dmnbd, "--control", f"{args.dir}/thin-mem.sock"]

    def dm(*words):
        return subprocess.run(ctl + list(words), check=True, capture_output=True,
                              text=True).stdout.strip()

    def used_blocks():
        return int(dm("status", "pool").split()[4].split("/")[0])

    out = {"blocks": blocks, "meta_mb": meta_mb}
    rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1", f"--size={blocks * BLOCK_KIB}k"]
    s, port = bench.dmnbd_devices(args, "thin-mem", devices, "big")
    s.start(log, port)
    try:
        dm("message", "pool", "0", "create_thin", "1")
        dm("create", "big", "--table", f"0 {sectors} thin pool 1")
        time.sleep(0.3)
        out["rss_before"], out["used_before"] = bench.rss_kib(s.pid), used_blocks()
        t0 = time.time()
        w = run_fio(args, "mem-write", "thin", s, s.uri, SKIP,
                    [f"--size={blocks * BLOCK_KIB}k", f"--io_size={blocks * 4}k", "--iodepth=32"])
        out["write_s"], out["write"] = time.time() - t0, w
        out["rss_written"] = bench.rss_kib(s.pid)
        time.sleep(1.5)  # the periodic commit
        out["used_after"] = used_blocks()
        out["status"] = dm("status", "pool")
        base = s.uri.rsplit("/", 1)[0]
        reads = {}
        for rnd in range(args.rounds):
            for name in ("big", "zdata") if rnd % 2 == 0 else ("zdata", "big"):
                add(reads, name, run_fio(args, "mem-randread", name, s, f"{base}/{name}",
                                         "randread", rt))
        out["reads"] = mean(reads)
        out["rss_read"] = bench.rss_kib(s.pid)
    finally:
        s.stop()
    # The same pool opened again from its metadata.
    s, port = bench.dmnbd_devices(args, "thin-mem", devices, "big")
    s.start(log, port)
    try:
        dm("create", "big", "--table", f"0 {sectors} thin pool 1")
        time.sleep(0.3)
        out["rss_reopened"] = bench.rss_kib(s.pid)
        run_fio(args, "mem-randread", "big", s, s.uri, "randread", rt)
        out["rss_reopened_read"] = bench.rss_kib(s.pid)
    finally:
        s.stop()
    os.remove(meta)
    return out


def table(results, job, names, base="linear", flush=False):
    b = results[(job, base)]["iops"]
    extra = f" {'us/write':>8} {'flush_us':>8}" if flush else ""
    for n in names:
        r = results.get((job, n))
        if not r:
            continue
        line = (f"{job:16} {n:16} {r['iops']:9.0f} {r['mibs']:7.0f} {r['mean_us']:8.1f} "
                f"{r['p99_us']:8.1f} {r['srv_us']:9.1f} {r['iops'] / b:8.2f}x")
        if flush and r["flush_us"]:  # QD1, a FLUSH after every write: 1/IOPS each
            line += f" {1e6 / r['iops']:8.1f} {r['flush_us']:8.1f}"
        elif flush:
            line += f" {'-':>8} {'-':>8}"
        print(line)


def header(flush=False):
    print(f"\n{'job':16} {'server':16} {'IOPS':>9} {'MiB/s':>7} {'mean_us':>8} {'p99_us':>8} "
          f"{'srv_us/IO':>9} {'vs linear':>9}" + (f" {'us/write':>8} {'flush_us':>8}" if flush else ""))


def main():
    def extra(ap):
        ap.add_argument("--only", choices=("provisioned", "first", "snapshot", "memory"))
        ap.add_argument("--mem-blocks", type=int, default=int(os.environ.get("MEM_BLOCKS", 0)))
    args = bench.target_bench_args(__doc__, extra)
    # First writes and snapshots are fixed counts, short runs: twice the rounds.
    args.first_rounds = 2 * args.rounds
    blocks = args.mem_blocks or (1 << 20 if args.rounds >= 2 else 1 << 18)
    args.data = os.path.join(args.dir, "thin-data.img")
    if not os.path.exists(args.data) or os.path.getsize(args.data) != SIZE_MB << 20:
        subprocess.run(["fio", "--name=fill", f"--filename={args.data}", "--rw=write", "--bs=1m",
                        f"--size={SIZE_MB}m", "--output=/dev/null"], check=True)
    log = open(os.path.join(args.dir, "servers.log"), "a")
    want = lambda part: args.only in (None, part)  # noqa: E731
    prov = first = snap = mem = None
    if any(want(p) for p in ("provisioned", "first", "snapshot")):
        linear, lport = bench.dmnbd_devices(args, "linear",
                                            [("d", f"0 {SECTORS} linear {args.data} 0")], "d")
        thin = ThinServer(args)
        prov_qcow2_file = os.path.join(args.dir, "thin-prov.qcow2")
        qcow2_image(prov_qcow2_file, PROV_MB)
        prov_qcow2, qport = qemu_nbd(args, "qcow2", prov_qcow2_file, "qemu-nbd-qcow2")
        port = bench.free_port()
        nbdkit = (bench.Server("nbdkit-file", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                               "file", args.data], f"nbd://127.0.0.1:{port}/"),
                  port)
        raw = qemu_nbd(args, "raw", args.data, "qemu-nbd")
        started = []
        try:
            for s, p in ((linear, lport), (prov_qcow2, qport), nbdkit, raw):
                s.start(log, p)
                started.append(s)
            thin.start(log)
            started.append(thin.server)
            # Every block of prov (and every cluster of the qcow2 image) written once.
            for uri in (thin.server.uri, prov_qcow2.uri):
                subprocess.run(["fio", "--name=prefill", "--rw=write", "--bs=1m", "--ioengine=nbd",
                                f"--uri={uri}", f"--size={PROV_MB}m", "--output=/dev/null"],
                               check=True)
            if want("provisioned"):
                prov = provisioned_bench(args, thin, linear, [prov_qcow2, nbdkit[0], raw[0]])
            if want("first"):
                first = first_write_bench(args, log, thin, linear, prov_qcow2)
            if want("snapshot"):
                snap = snapshot_bench(args, log, thin, linear)
            pool_status = thin.dm("status", "pool")
        finally:
            for s in reversed(started):
                s.stop()
        os.remove(prov_qcow2_file)
        os.remove(thin.meta)
    if want("memory"):
        mem = memory_bench(args, log, blocks)

    if prov:
        results, names, jobs = prov
        header()
        for job in jobs:
            table(results, job, names)
    if first:
        results, jobs = first
        header(flush=True)
        for job in jobs:
            table(results, job, ["linear", "thin", "qemu-nbd-qcow2"], flush=True)
    if snap:
        results, names = snap
        header()
        table(results, "snapshot-4k", names)
    if prov or first or snap:
        print(f"\npool at the end: {pool_status}")

    if prov or first or snap:
        print("\nratios to linear (IOPS); thin's blocks and qcow2's clusters are 64 KiB:")

    def r(res, job, n, base="linear"):
        return res[(job, n)]["iops"] / res[(job, base)]["iops"]

    if prov:
        res = prov[0]
        for job, goal in (("randread", " (goal >= 0.9x)"), ("randread-qd1", ""),
                          ("rewrite", " (goal >= 0.8x)"), ("read-1m", "")):
            print(f"  provisioned {job:14} thin {r(res, job, 'thin'):.2f}x{goal}  qcow2 "
                  f"{r(res, job, 'qemu-nbd-qcow2'):.2f}x  nbdkit-file "
                  f"{r(res, job, 'nbdkit-file'):.2f}x  qemu-nbd raw {r(res, job, 'qemu-nbd'):.2f}x")
    if first:
        res = first[0]
        for job in ("first-4k", "first-64k", "first-4k-flush", "rewrite-4k-flush"):
            t, q = res[(job, "thin")], res[(job, "qemu-nbd-qcow2")]
            line = (f"  {job:26} thin {r(res, job, 'thin'):.2f}x ({t['iops']:.0f} blocks/s, "
                    f"{t['iops'] * BLOCK_KIB / 1024:.0f} MiB/s provisioned)  qcow2 "
                    f"{r(res, job, 'qemu-nbd-qcow2'):.2f}x  thin/qcow2 {t['iops'] / q['iops']:.2f}x")
            if "flush" in job:
                line = (f"  {job:26} thin {r(res, job, 'thin'):.2f}x  us per write+flush: thin "
                        f"{1e6 / t['iops']:.0f}, linear {1e6 / res[(job, 'linear')]['iops']:.0f}, "
                        f"qcow2 {1e6 / q['iops']:.0f}  (flush alone: thin {t['flush_us']:.0f}, "
                        f"linear {res[(job, 'linear')]['flush_us']:.0f}, qcow2 {q['flush_us']:.0f})")
            print(line)
    if snap:
        res = snap[0]
        s, o = res[("snapshot-4k", "thin-snapshot")], res[("snapshot-4k", "qemu-nbd-overlay")]
        print(f"  snapshot first write 4k    thin snapshot {r(res, 'snapshot-4k', 'thin-snapshot'):.2f}x"
              f" ({s['iops']:.0f} copies/s)  origin {r(res, 'snapshot-4k', 'thin-origin'):.2f}x  "
              f"qcow2 overlay {r(res, 'snapshot-4k', 'qemu-nbd-overlay'):.2f}x  "
              f"thin snapshot / qcow2 overlay {s['iops'] / o['iops']:.2f}x  "
              f"(thin without sharing {r(res, 'snapshot-4k', 'thin'):.2f}x)")
    if mem:
        n, w, rd = mem["blocks"], mem["write"], mem["reads"]
        before, after = mem["rss_before"], mem["rss_read"]
        used = mem["used_after"] - mem["used_before"]
        print(f"\nmemory: {n} blocks mapped (one 4 KiB write each, QD32, {mem['write_s']:.1f} s: "
              f"{w['iops']:.0f} first writes/s, server {w['srv_us']:.1f} us CPU each)")
        print(f"  RssAnon {before['RssAnon']} KiB before, {mem['rss_written']['RssAnon']} KiB "
              f"written, {after['RssAnon']} KiB after random reads over all of them "
              f"(+{after['RssAnon'] - before['RssAnon']} KiB; the metadata cache keeps at most "
              f"2048 clean 4 KiB blocks); VmRSS {before['VmRSS']} -> {after['VmRSS']} KiB, "
              f"VmHWM {after['VmHWM']} KiB")
        print(f"  reopened from its metadata: RssAnon {mem['rss_reopened']['RssAnon']} KiB, "
              f"{mem['rss_reopened_read']['RssAnon']} KiB after random reads; VmHWM "
              f"{mem['rss_reopened_read']['VmHWM']} KiB")
        print(f"  metadata: {used} blocks of 4 KiB for the mappings ({used * 4096 / n:.1f} bytes "
              f"each; {mem['used_after']} of a {mem['meta_mb']} MiB device used)  {mem['status']}")
        print(f"  4 KiB random reads over the {n} mapped blocks, QD16: thin {rd['big']['iops']:.0f} "
              f"IOPS, the zero device itself {rd['zdata']['iops']:.0f} "
              f"({rd['big']['iops'] / rd['zdata']['iops']:.2f}x; server CPU "
              f"{rd['big']['srv_us']:.1f} vs {rd['zdata']['srv_us']:.1f} us per read)")
        if n < 1 << 20:
            print(f"  at 1M mappings: about {(1 << 20) * used * 4096 / n / 2**20:.0f} MiB of "
                  f"metadata (it grows with the mappings; the RSS does not past the cache's bound)")


if __name__ == "__main__":
    main()
