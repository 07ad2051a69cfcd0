#!/usr/bin/python3
"""Side-by-side NBD benchmark: dmnbd and its peers on one tmpfs backing file.

Every server runs for the whole benchmark; each fio job runs against every
server in turn (job-major, server order reversed on odd rounds, so machine
drift spreads evenly). Reported per run: IOPS, MiB/s, mean and p99 latency,
server CPU time per I/O, and dmnbd's ratio to the best peer. Started by
run.sh, which installs the tools and mounts the tmpfs.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

JOBS = {
    "randread-4k-qd1": dict(rw="randread", bs="4k", iodepth=1, numjobs=1),
    "randread-4k-qd32": dict(rw="randread", bs="4k", iodepth=32, numjobs=1),
    "randwrite-4k-qd32": dict(rw="randwrite", bs="4k", iodepth=32, numjobs=1),
    "read-1m-qd8": dict(rw="read", bs="1m", iodepth=8, numjobs=1),
    "write-1m-qd8": dict(rw="write", bs="1m", iodepth=8, numjobs=1),
    # Four connections at the same total queue depth as randread-4k-qd32.
    "randread-4k-qd8-x4": dict(rw="randread", bs="4k", iodepth=8, numjobs=4),
}
PEERS = ("nbdkit-file", "qemu-nbd", "nbd-server")  # what users would pick instead of dmnbd
CEILINGS = ("file-uring", "nbdkit-null")           # limits, not competitors
SIZE_MB = 1024
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def tree_cpu_seconds(root):
    """CPU of a process, its live descendants and its reaped children."""
    parents, stats = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(pid)] = int(fields[1])
        stats[int(pid)] = fields
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if not fields:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == root:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
        todo += [child for child, parent in parents.items() if parent == pid]
    return total / TICK


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:", "RssShmem:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


class Server:
    def __init__(self, name, argv, uri, measure_pid=None, pidfile=None):
        self.name, self.argv, self.uri = name, argv, uri
        self.proc, self.pidfile, self._pid = None, pidfile, measure_pid

    @property
    def pid(self):
        if self.pidfile:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        return self.proc.pid

    def start(self, log, port):
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(port, None if self.pidfile else self.proc)

    def stop(self):
        if self.proc is None and not self.pidfile:
            return  # never started
        pid = self.pid
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
        if self.proc:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def dmnbd_server(name, args, table):
    port = free_port()
    cfg = os.path.join(args.dir, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(f'listen: [ "tcp://127.0.0.1:{port}" ]\ncontrol: {args.dir}/{name}.control.sock\n'
                f"devices:\n  - name: disk\n    table: \"{table}\"\n")
    return Server(name, [args.dmnbd, "serve", cfg, "--log-level", "warn"],
                  f"nbd://127.0.0.1:{port}/disk"), port


def make_servers(args, disk):
    sectors = SIZE_MB * 2048
    servers = []
    servers.append(dmnbd_server("dmnbd", args, f"0 {sectors} linear {disk} 0"))
    targets = subprocess.run([args.dmnbd, "targets"], capture_output=True, text=True).stdout
    if "striped" in targets:  # two legs: the two halves of the same file
        half = sectors // 2
        servers.append(dmnbd_server("dmnbd-striped", args,
                                    f"0 {sectors} striped 2 128 {disk} 0 {disk} {half}"))
    servers.append(dmnbd_server("dmnbd-zero", args, f"0 {sectors} zero"))
    port = free_port()
    servers.append((Server("nbdkit-file", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                           "file", disk], f"nbd://127.0.0.1:{port}/"), port))
    port = free_port()
    servers.append((Server("nbdkit-null", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                           "null", f"size={SIZE_MB}M"], f"nbd://127.0.0.1:{port}/"),
                    port))
    port = free_port()
    servers.append((Server("qemu-nbd", ["qemu-nbd", "-t", "-f", "raw", "-e", "8", "--aio=io_uring",
                                        "-b", "127.0.0.1", "-p", str(port), disk],
                           f"nbd://127.0.0.1:{port}/"), port))
    port = free_port()
    conf = os.path.join(args.dir, "nbd-server.conf")
    with open(conf, "w") as f:
        f.write(f"[generic]\nlistenaddr = 127.0.0.1\nport = {port}\n[disk]\nexportname = {disk}\n")
    pidfile = os.path.join(args.dir, "nbd-server.pid")
    servers.append((Server("nbd-server", ["nbd-server", "-C", conf, "-p", pidfile],
                           f"nbd://127.0.0.1:{port}/disk", pidfile=pidfile), port))
    wanted = set(args.servers.split(",")) if args.servers else None
    return [(s, p) for s, p in servers if wanted is None or s.name in wanted]


def run_fio(args, job, uri=None, filename=None):
    spec = JOBS[job]
    out = os.path.join(args.dir, "fio.json")
    cmd = ["fio", f"--name={job}", f"--rw={spec['rw']}", f"--bs={spec['bs']}",
           f"--iodepth={spec['iodepth']}", f"--numjobs={spec['numjobs']}", "--time_based",
           f"--runtime={args.runtime}", f"--ramp_time={args.ramp}", "--group_reporting",
           "--lat_percentiles=1", "--output-format=json", f"--output={out}"]
    if uri:
        cmd += ["--ioengine=nbd", f"--uri={uri}"]
    else:
        cmd += ["--ioengine=io_uring", f"--filename={filename}", f"--size={SIZE_MB}m"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out


def parse_fio(out):
    with open(out) as f:
        j = json.load(f)["jobs"][0]
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    iops = j["read"]["iops"] + j["write"]["iops"]
    side = j["read"] if j["read"]["total_ios"] else j["write"]
    pct = side["lat_ns"].get("percentile", {}) or side["clat_ns"].get("percentile", {})
    return dict(iops=iops, ios=ios, mibs=(j["read"]["bw"] + j["write"]["bw"]) / 1024,
                mean_us=side["lat_ns"]["mean"] / 1000,
                p99_us=pct.get("99.000000", 0) / 1000)


def measure(args, job, server):
    fio, out = run_fio(args, job, uri=server.uri if server else None,
                       filename=None if server else os.path.join(args.dir, "disk.img"))
    cpu0 = None
    if server:
        time.sleep(args.ramp + 0.15)  # CPU counted over the measured window only
        cpu0 = tree_cpu_seconds(server.pid)
    _, err = fio.communicate()
    if fio.returncode:
        raise RuntimeError(f"fio failed: {err.decode()[-500:]}")
    r = parse_fio(out)
    if server:
        r["srv_us"] = (tree_cpu_seconds(server.pid) - cpu0) * 1e6 / max(r["ios"], 1)
    return r


def report(results, servers, jobs):
    print(f"\n{'job':20} {'server':14} {'IOPS':>9} {'MiB/s':>7} {'mean_us':>8} {'p99_us':>8} {'srv_us/IO':>9}")
    for job in jobs:
        for name in servers:
            runs = results.get((job, name))
            if not runs:
                continue
            avg = {k: sum(r.get(k, 0) for r in runs) / len(runs) for k in runs[0]}
            srv = f"{avg['srv_us']:9.1f}" if "srv_us" in avg else f"{'-':>9}"
            print(f"{job:20} {name:14} {avg['iops']:9.0f} {avg['mibs']:7.0f} {avg['mean_us']:8.1f} "
                  f"{avg['p99_us']:8.1f} {srv}")
    print("\nratios (dmnbd / best peer IOPS; CPU per I/O dmnbd / nbdkit-file; zero / nbdkit-null)")

    def mean(job, name, key):
        runs = results.get((job, name))
        return sum(r.get(key, 0) for r in runs) / len(runs) if runs else None

    for job in jobs:
        peers = [(mean(job, p, "iops"), p) for p in PEERS if mean(job, p, "iops")]
        line = f"  {job:20}"
        d = mean(job, "dmnbd", "iops")
        if d and peers:
            best, who = max(peers)
            line += f" IOPS {d / best:5.2f}x {who:12}"
        c, k = mean(job, "dmnbd", "srv_us"), mean(job, "nbdkit-file", "srv_us")
        if c and k:
            line += f" CPU {c / k:5.2f}x"
        z, n = mean(job, "dmnbd-zero", "iops"), mean(job, "nbdkit-null", "iops")
        if z and n:
            line += f" zero/null {z / n:5.2f}x"
        print(line)
    one, four = mean("randread-4k-qd32", "dmnbd", "iops"), mean("randread-4k-qd8-x4", "dmnbd", "iops")
    if one and four:
        print(f"  dmnbd 4 connections / 1 connection at QD32 total: {four / one:.2f}x")



# ---- Shared by the target benchmarks (snapshot.py, mirror.py).
def target_bench_args(doc, extra=None):
    """The arguments run.sh gives a target benchmark; extra(parser), if given,
    adds the benchmark's own."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--dmnbd", required=True)
    ap.add_argument("--runtime", type=float, default=float(os.environ.get("RUNTIME", 4)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 2)))
    if extra:
        extra(ap)
    return ap.parse_args()


def dmnbd_devices(args, name, devices, export):
    """A dmnbd server with `devices` [(name, table)], fio on `export`."""
    port = free_port()
    cfg = os.path.join(args.dir, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(f'listen: [ "tcp://127.0.0.1:{port}" ]\ncontrol: {args.dir}/{name}.sock\n'
                "devices:\n")
        for dev, table in devices:
            f.write(f'  - name: {dev}\n    table: "{table}"\n')
    os.chmod(cfg, 0o600)  # a crypt table holds its key
    return Server(name, [args.dmnbd, "serve", cfg, "--log-level", "warn"],
                        f"nbd://127.0.0.1:{port}/{export}"), port

def wait_for_status(ctl, name, done):
    """Polls `dmnbd status NAME` until done(its words) is true."""
    while True:
        words = subprocess.run(ctl + ["status", name], capture_output=True, text=True).stdout.split()
        if done(words):
            return
        time.sleep(0.01)


def nbdcopy_seconds(args, src, dst, sectors):
    """Seconds nbdcopy takes to copy file `src` onto `dst` through a dmnbd
    serving both (linear): the plain copy a resync is measured against."""
    log = open(os.path.join(args.dir, "servers.log"), "a")
    s, port = dmnbd_devices(args, "copy", [("a", f"0 {sectors} linear {src} 0"),
                                           ("b", f"0 {sectors} linear {dst} 0")], "a")
    s.start(log, port)
    try:
        base = s.uri.rsplit("/", 1)[0]
        t0 = time.time()
        subprocess.run(["nbdcopy", base + "/a", base + "/b"], check=True)
        return time.time() - t0
    finally:
        s.stop()


class CappedLegs:
    """nbdkit file servers over `files`, each capped at `rate` bits per second
    by its rate filter: legs that behave like disks (or machines) with a
    bandwidth of their own. The filter caps reads and writes apart (a link
    each way, not a disk's one head), and lets an idle leg save up
    `burstiness` seconds of its rate (the filter's default: 2). A context
    manager; .uris are their exports."""

    def __init__(self, args, files, rate, burstiness=None):
        self.args, self.files, self.rate, self.kits, self.uris = args, files, rate, [], []
        self.burst = [] if burstiness is None else [f"burstiness={burstiness}"]

    def __enter__(self):
        log = open(os.path.join(self.args.dir, "servers.log"), "a")
        try:
            for leg in self.files:
                port = free_port()
                kit = Server("nbdkit-rate", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                                             "--filter=rate", "file", leg, f"rate={self.rate}"] + self.burst,
                             f"nbd://127.0.0.1:{port}/")
                kit.start(log, port)
                self.kits.append(kit)
                self.uris.append(kit.uri)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for k in self.kits:
            k.stop()


def fresh_file(path, size_mb):
    if os.path.exists(path):
        os.remove(path)
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)

def fio_json(args, uri, rw, extra):
    out = os.path.join(args.dir, "fio.json")
    cmd = ["fio", "--name=j", f"--rw={rw}", "--bs=4k", "--iodepth=16", "--ioengine=nbd",
           f"--uri={uri}", "--output-format=json", f"--output={out}", "--group_reporting",
           "--lat_percentiles=1"] + extra
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return parse_fio(out)

def run_set(args, servers, jobs, prefill_mb=0, rounds=1):
    """Starts the servers, writes `prefill_mb` sequentially through each (so
    those chunks are copied already), runs every job [(name, rw, fio args)]
    against every server `rounds` times, and stops them. Results: the mean
    of the rounds."""
    log = open(os.path.join(args.dir, "servers.log"), "a")
    results = {}
    try:
        for s, port in servers:
            s.start(log, port)
            if prefill_mb:
                subprocess.run(["fio", "--name=prefill", "--rw=write", "--bs=1m", "--ioengine=nbd",
                                f"--uri={s.uri}", f"--size={prefill_mb}m", "--output=/dev/null"],
                               check=True)
        for job, rw, extra in jobs:
            for rnd in range(rounds):
                # Server order reversed every other round: the machine's drift
                # spreads over all of them.
                for s, _ in (servers if rnd % 2 == 0 else list(reversed(servers))):
                    cpu0 = tree_cpu_seconds(s.pid)
                    r = fio_json(args, s.uri, rw, extra)
                    r["srv_us"] = (tree_cpu_seconds(s.pid) - cpu0) * 1e6 / max(r["ios"], 1)
                    results.setdefault((job, s.name), []).append(r)
                    print(f"{job:12} {s.name:16} {r['iops']:9.0f} IOPS", file=sys.stderr)
    finally:
        for s, _ in servers:
            s.stop()
    return {k: {m: sum(r[m] for r in runs) / len(runs) for m in runs[0]}
            for k, runs in results.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--dmnbd", required=True)
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--servers", default="", help="comma list (default: all)")
    ap.add_argument("--runtime", type=float, default=float(os.environ.get("RUNTIME", 4)))
    ap.add_argument("--ramp", type=float, default=float(os.environ.get("RAMP", 1)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 2)))
    args = ap.parse_args()
    jobs = args.jobs.split(",")

    disk = os.path.join(args.dir, "disk.img")
    if not os.path.exists(disk) or os.path.getsize(disk) != SIZE_MB << 20:
        print(f"filling {disk} ({SIZE_MB} MiB, no holes)", file=sys.stderr)
        subprocess.run(["fio", "--name=fill", f"--filename={disk}", "--rw=write", "--bs=1m",
                        f"--size={SIZE_MB}m", "--output=/dev/null"], check=True)

    servers = make_servers(args, disk)
    log = open(os.path.join(args.dir, "servers.log"), "w")
    results, rss = {}, []
    try:
        for server, port in servers:
            server.start(log, port)
        names = [s.name for s, _ in servers]
        with_file = args.servers == "" or "file-uring" in args.servers
        for rnd in range(args.rounds):
            for job in jobs:
                order = servers if rnd % 2 == 0 else list(reversed(servers))
                runs = [(s.name, s) for s, _ in order] + ([("file-uring", None)] if with_file else [])
                for name, server in runs:
                    r = measure(args, job, server)
                    results.setdefault((job, name), []).append(r)
                    print(f"round {rnd + 1} {job:20} {name:14} {r['iops']:9.0f} IOPS", file=sys.stderr)
                    if name == "dmnbd":
                        served = (rss[-1][0] if rss else 0) + r["ios"]
                        rss.append((served, rss_kib(server.pid)))
        report(results, names + (["file-uring"] if with_file else []), jobs)
        if rss:
            # RssShmem is the tmpfs backing file, mapped for zero-copy reads: page
            # cache that exists anyway, shared, not memory dmnbd allocated.
            (n0, first), (n1, last) = rss[0], rss[-1]
            print(f"\ndmnbd memory (linear export): private (RssAnon) {first['RssAnon']} KiB after "
                  f"{n0} requests, {last['RssAnon']} KiB after {n1}; VmRSS {last['VmRSS']} KiB "
                  f"of which the mapped tmpfs backing file (RssShmem) {last['RssShmem']} KiB; "
                  f"peak VmHWM {max(r['VmHWM'] for _, r in rss)} KiB")
        with open(os.path.join(args.dir, "results.json"), "w") as f:
            json.dump({f"{j}/{n}": v for (j, n), v in results.items()}, f, indent=1)
    finally:
        for server, _ in servers:
            server.stop()


if __name__ == "__main__":
    main()
