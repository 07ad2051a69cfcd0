#!/usr/bin/python3
"""Snapshot benchmark: dmnbd's snapshot-origin and snapshot against linear,
and qemu-nbd over a qcow2 overlay (the nearest peer for a snapshot's own write
path), side by side in one run, reported as ratios. Started by run.sh
(`bash tests/bench/run.sh snapshot`), which installs the tools and mounts the
tmpfs.

  first-touch: 4 KiB random writes, each to a chunk no snapshot has copied yet
               (a fixed amount, fresh COWs for every server)
  rewrite:     4 KiB random writes to chunks already copied (time based)
  randread:    4 KiB random reads of a snapshot half of which is in the COW
  merge:       a snapshot-merge of 128 MiB of exceptions, against nbdcopy of
               the same bytes between two dmnbd exports
  memory:      dmnbd's RSS with 1M exceptions loaded, per exception
"""
import os
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its server and fio helpers)

SIZE_MB = 512
SECTORS = SIZE_MB * 2048
CHUNK = 8  # sectors: LVM's default 4 KiB






def servers_for(args, snapshots_of_origin=(1, 4), with_snapshot=True):
    """linear, origin with N snapshots, a snapshot device, qemu-nbd qcow2."""
    disk = os.path.join(args.dir, "disk.img")
    out = [bench.dmnbd_devices(args, "linear", [("d", f"0 {SECTORS} linear {disk} 0")], "d")]
    for n in snapshots_of_origin:
        devs = [("real", f"0 {SECTORS} linear {disk} 0"),
                ("origin", f"0 {SECTORS} snapshot-origin real")]
        for i in range(n):
            cow = os.path.join(args.dir, f"cow-{n}-{i}.img")
            bench.fresh_file(cow, SIZE_MB + 16)
            devs.append((f"s{i}", f"0 {SECTORS} snapshot real {cow} P {CHUNK}"))
        out.append(bench.dmnbd_devices(args, f"origin-{n}snap", devs, "origin"))
    if with_snapshot:
        cow = os.path.join(args.dir, "cow-snap.img")
        bench.fresh_file(cow, SIZE_MB + 16)
        out.append(bench.dmnbd_devices(args, "snapshot", [("real", f"0 {SECTORS} linear {disk} 0"),
                                            ("s", f"0 {SECTORS} snapshot real {cow} P {CHUNK}")],
                         "s"))
        overlay = os.path.join(args.dir, "overlay.qcow2")
        if os.path.exists(overlay):
            os.remove(overlay)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b",
                        disk, "-F", "raw", overlay], check=True)
        port = bench.free_port()
        out.append((bench.Server("qemu-nbd-qcow2", ["qemu-nbd", "-t", "-f", "qcow2", "-e", "8",
                                                    "--aio=io_uring", "-b", "127.0.0.1", "-p",
                                                    str(port), overlay],
                                 f"nbd://127.0.0.1:{port}/"), port))
    return out






def merge_bench(args):
    """MiB/s of a snapshot-merge of 128 MiB of exceptions vs nbdcopy of 128 MiB."""
    disk = os.path.join(args.dir, "disk.img")
    cow = os.path.join(args.dir, "cow-merge.img")
    bench.fresh_file(cow, SIZE_MB + 16)
    merge_mb = 128
    s, port = bench.dmnbd_devices(args, "merge", [("real", f"0 {SECTORS} linear {disk} 0"),
                                    ("s", f"0 {SECTORS} snapshot real {cow} P 128")], "s")
    log = open(os.path.join(args.dir, "servers.log"), "a")
    s.start(log, port)
    ctl = [args.dmnbd, "--control", f"{args.dir}/merge.sock"]
    try:
        subprocess.run(["nbdcopy", "--", "[", "nbdkit", "pattern", f"size={merge_mb}M", "]",
                        s.uri], check=True)  # 128 MiB of exceptions, whole chunks
        subprocess.run(ctl + ["create", "copy-to", "--table",
                              f"0 {merge_mb * 2048} linear {disk} {SECTORS // 2}"], check=True)
        # The same 128 MiB, read through the snapshot, onto the disk's other half.
        subprocess.run(ctl + ["create", "copy-from", "--table", f"0 {merge_mb * 2048} linear s 0"],
                       check=True)
        base = s.uri.rsplit("/", 1)[0]
        t0 = time.time()
        subprocess.run(["nbdcopy", base + "/copy-from", base + "/copy-to"], check=True)
        copy_s = time.time() - t0
        subprocess.run(ctl + ["remove", "copy-from"], check=True)
        subprocess.run(ctl + ["suspend", "s"], check=True)
        subprocess.run(ctl + ["remove", "s"], check=True)
        subprocess.run(ctl + ["create", "m", "--table",
                              f"0 {SECTORS} snapshot-merge real {cow} P 128"], check=True)
        t0 = time.time()
        # Merged: allocated == metadata.
        bench.wait_for_status(ctl, "m", lambda st: st[3].split("/")[0] == st[4])
        merge_s = time.time() - t0
    finally:
        s.stop()
    return merge_mb / merge_s, merge_mb / copy_s


def memory_bench(args, exceptions=1 << 20):
    """RSS of dmnbd with `exceptions` loaded from a COW written here (header
    and areas only, data chunks sparse), minus the same server without it."""
    origin = os.path.join(args.dir, "big-origin.img")
    cow = os.path.join(args.dir, "big-cow.img")
    per_area = CHUNK * 512 // 16
    areas = (exceptions + per_area - 1) // per_area
    cow_chunks = 2 + areas * (per_area + 1)
    bench.fresh_file(origin, exceptions * CHUNK * 512 >> 20)
    bench.fresh_file(cow, (cow_chunks * CHUNK * 512 >> 20) + 1)
    chunk_bytes = CHUNK * 512
    with open(cow, "r+b") as f:
        f.write(struct.pack("<IIII", 0x70416E53, 1, 1, CHUNK))
        for a in range(areas):
            area = bytearray(chunk_bytes)
            for i in range(min(per_area, exceptions - a * per_area)):
                struct.pack_into("<QQ", area, 16 * i, a * per_area + i, 2 + a * (per_area + 1) + i)
            f.seek((1 + a * (per_area + 1)) * chunk_bytes)
            f.write(area)
    sectors = exceptions * CHUNK
    log = open(os.path.join(args.dir, "servers.log"), "a")
    rss = {}
    for name, devs in (("base", [("real", f"0 {sectors} linear {origin} 0")]),
                       ("snap", [("real", f"0 {sectors} linear {origin} 0"),
                                 ("s", f"0 {sectors} snapshot real {cow} P {CHUNK}")])):
        s, port = bench.dmnbd_devices(args, f"mem-{name}", devs, "real")
        s.start(log, port)
        time.sleep(0.5)
        rss[name] = bench.rss_kib(s.pid)["RssAnon"]
        st = subprocess.run([args.dmnbd, "--control", f"{args.dir}/mem-{name}.sock", "status"],
                            capture_output=True, text=True).stdout.strip()
        s.stop()
    os.remove(origin)
    os.remove(cow)
    return (rss["snap"] - rss["base"]) * 1024 / exceptions, rss, st


def main():
    args = bench.target_bench_args(__doc__)
    disk = os.path.join(args.dir, "disk.img")
    if not os.path.exists(disk) or os.path.getsize(disk) != SIZE_MB << 20:
        subprocess.run(["fio", "--name=fill", f"--filename={disk}", "--rw=write", "--bs=1m",
                        f"--size={SIZE_MB}m", "--output=/dev/null"], check=True)
    rt = [f"--runtime={args.runtime}", "--time_based", "--ramp_time=1"]
    # first touch: 64 MiB of 4 KiB writes, each block once (fio's random map).
    # Each first-touch round needs COWs of its own: fresh servers per round.
    results = {}
    for rnd in range(args.rounds):
        one = bench.run_set(args, servers_for(args),
                      [("first-touch", "randwrite", ["--size=512m", "--io_size=64m"])])
        for k, r in one.items():
            prev = results.get(k)
            results[k] = r if not prev else {m: (prev[m] * rnd + r[m]) / (rnd + 1) for m in r}
    # rewrite and reads: 64 MiB copied first (sequentially), then timed runs there.
    results.update(bench.run_set(args, servers_for(args),
                           [("rewrite", "randwrite", ["--size=64m"] + rt),
                            ("randread", "randread", ["--size=128m"] + rt)], prefill_mb=64,
                           rounds=args.rounds))
    names = ["linear", "origin-1snap", "origin-4snap", "snapshot", "qemu-nbd-qcow2"]
    print(f"\n{'job':12} {'server':16} {'IOPS':>9} {'mean_us':>8} {'p99_us':>8} {'srv_us/IO':>9} {'vs linear':>9}")
    for job in ("first-touch", "rewrite", "randread"):
        base = results[(job, "linear")]["iops"]
        for n in names:
            r = results.get((job, n))
            if r:
                print(f"{job:12} {n:16} {r['iops']:9.0f} {r['mean_us']:8.1f} {r['p99_us']:8.1f} "
                      f"{r['srv_us']:9.1f} {r['iops'] / base:8.2f}x")
    snap_vs_qcow = {job: results[(job, "snapshot")]["iops"] / results[(job, "qemu-nbd-qcow2")]["iops"]
                    for job in ("first-touch", "rewrite", "randread")}
    print("\nsnapshot device / qemu-nbd qcow2 overlay: " +
          ", ".join(f"{j} {v:.2f}x" for j, v in snap_vs_qcow.items()))
    merge, copy = merge_bench(args)
    print(f"merge of 128 MiB: {merge:.0f} MiB/s; nbdcopy of the same bytes: {copy:.0f} MiB/s "
          f"({merge / copy:.2f}x)")
    per, rss, st = memory_bench(args)
    print(f"memory: {per:.1f} bytes per exception (RssAnon {rss['base']} KiB without the "
          f"snapshot, {rss['snap']} KiB with 1M exceptions; {st})")


if __name__ == "__main__":
    main()
