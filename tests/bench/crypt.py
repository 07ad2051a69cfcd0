#!/usr/bin/python3
"""crypt benchmark: dmnbd's crypt (aes-xts-plain64) against linear on the same
file, and dmnbd on a LUKS1 volume against nbdkit's luks filter on the same
volume, side by side in one run, reported as ratios. Started by run.sh
(`bash tests/bench/run.sh crypt`), which installs the tools and mounts the
tmpfs.

  randread / randwrite   4 KiB at depth 16
  read-1m / write-1m     1 MiB sequential at depth 4

The 1 MiB throughput is also set against what `openssl speed -evp
aes-256-xts` does on one core, per core the server used (its CPU seconds
over the run's seconds): the share of the cipher's own speed left after
the NBD server's work.
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its server and fio helpers)

VOLUME_MB = 256
PASSPHRASE = "bench-passphrase"


def luks1_volume(args):
    """A LUKS1 volume (aes-xts-plain64, 512-bit key) and its crypt table."""
    vol = os.path.join(args.dir, "luks1.img")
    pw = os.path.join(args.dir, "luks1.pw")
    with open(pw, "w") as f:
        f.write(PASSPHRASE)
    bench.fresh_file(vol, VOLUME_MB + 4)
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks1", "--key-file", pw,
                    "--pbkdf-force-iterations", "1000", "--cipher", "aes-xts-plain64",
                    "--key-size", "512", vol], check=True)
    dump = subprocess.run(["cryptsetup", "luksDump", "-q", "--dump-volume-key", "--key-file", pw,
                           vol], check=True, capture_output=True, text=True).stdout
    key = "".join(re.search(r"MK dump:(.*?)(?:\n\S|\Z)", dump, re.S).group(1).split())
    offset = int(re.search(r"Payload offset:\s*(\d+)", dump).group(1))
    sectors = os.path.getsize(vol) // 512 - offset
    return vol, pw, f"0 {sectors} crypt aes-xts-plain64 {key} 0 {vol} {offset}", offset, sectors


def openssl_xts_mbs():
    """One core's AES-256-XTS speed on 1 MiB buffers, MB/s (openssl speed)."""
    out = subprocess.run(["openssl", "speed", "-elapsed", "-seconds", "3", "-bytes", "1048576",
                          "-evp", "aes-256-xts"], capture_output=True, text=True).stdout
    last = [l for l in out.splitlines() if l.startswith("AES-256-XTS")][-1]
    return float(last.split()[-1].rstrip("k")) * 1000 / 1e6


def main():
    args = bench.target_bench_args(__doc__)
    vol, pw, crypt_table, offset, sectors = luks1_volume(args)
    port = bench.free_port()
    nbdkit = (bench.Server("nbdkit-luks", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                          "--filter=luks", "file", vol, f"passphrase=+{pw}"],
                           f"nbd://127.0.0.1:{port}/"), port)
    servers = [
        bench.dmnbd_devices(args, "linear", [("d", f"0 {sectors} linear {vol} {offset}")], "d"),
        bench.dmnbd_devices(args, "crypt", [("d", crypt_table)], "d"),
        # The same key with 4 KiB encryption sectors (LUKS2's default on
        # files): what the per-sector cost is at 512 bytes shows here.
        bench.dmnbd_devices(args, "crypt-4k", [("d", crypt_table + " 1 sector_size:4096")], "d"),
        nbdkit,
    ]
    size = [f"--size={VOLUME_MB}m", f"--runtime={args.runtime}", "--time_based",
            "--ramp_time=1"]
    jobs = [("randread", "randread", size), ("randwrite", "randwrite", size),
            ("read-1m", "read", size + ["--bs=1m", "--iodepth=4"]),
            ("write-1m", "write", size + ["--bs=1m", "--iodepth=4"])]
    results = bench.run_set(args, servers, jobs, prefill_mb=VOLUME_MB, rounds=args.rounds)
    names = [s.name for s, _ in servers]
    print(f"\n{'job':10} {'server':12} {'IOPS':>9} {'MiB/s':>8} {'mean_us':>8} {'p99_us':>8} "
          f"{'srv_us/IO':>9}")
    for job, _, _ in jobs:
        for n in names:
            r = results[(job, n)]
            print(f"{job:10} {n:12} {r['iops']:9.0f} {r['mibs']:8.0f} {r['mean_us']:8.1f} "
                  f"{r['p99_us']:8.1f} {r['srv_us']:9.1f}")
    print("\nratios (IOPS): crypt / linear, crypt / nbdkit-luks (the goal: >= 2x)")
    for job, _, _ in jobs:
        for n in ("crypt", "crypt-4k"):
            c = results[(job, n)]["iops"]
            print(f"  {job:10} {n:9} {c / results[(job, 'linear')]['iops']:5.2f}x of linear   "
                  f"{c / results[(job, 'nbdkit-luks')]['iops']:5.2f}x of nbdkit-luks")
    xts = openssl_xts_mbs()
    print(f"\nopenssl speed -evp aes-256-xts, 1 MiB buffers, one core: {xts:.0f} MB/s")
    for n in ("crypt", "crypt-4k"):
        for job in ("read-1m", "write-1m"):
            r = results[(job, n)]
            mbs = r["mibs"] * 1.048576
            cores = r["srv_us"] * r["iops"] / 1e6  # CPU seconds per second: cores in use
            print(f"  {n} {job}: {mbs:.0f} MB/s on {cores:.2f} cores = {mbs / cores:.0f} MB/s "
                  f"per core, {mbs / cores / xts:.2f}x of openssl's (the goal: >= 0.7x)")


if __name__ == "__main__":
    main()
