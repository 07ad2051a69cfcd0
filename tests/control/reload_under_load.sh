#!/bin/bash
# reload_under_load.sh - zero I/O loss across live table swaps.  While writers
# with read-back verification run flat out, a loop does `dmnbd reload` over and
# over, alternating between two tables that map the same data differently:
#   A: 0 S linear d.img 0
#   B: 0 K linear d.img 0 / K S-K linear d.img K    (K random, new each time)
# Writers: (1) fio, one connection, crc32c verify during the write
# (--verify_backlog) and at the end; (2) fio numjobs=2, two connections on
# disjoint halves; (3) a libnbd writer with two connections on the same range,
# reading every write back through the other connection, with FLUSHes.
# Asserts: no I/O error, no verify failure, every reload exits 0, >= 100 reloads
# overlapped each writer, and suspended_waits (requests that had to wait for a
# resume) grew in each phase - else the reloads never met I/O and prove nothing.
source "$(dirname "$0")/../protocol/lib.sh"
make_work
SECTORS=131072   # 64 MiB
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
files:
  - { path: d.img, size: 64MiB }
devices:
  - name: dev
    table: "0 $SECTORS linear d.img 0"
YAML
dmnbd_start "$WORK/cfg.yaml"
CTL="$WORK/control.sock"
IMG="$WORK/d.img"
U="nbd+unix:///dev?socket=$WORK/nbd.sock"
# A sanitizer build (tests/sanitize/run.sh) runs several times slower.
MIN_RELOADS=100
[ "${DMNBD_SANITIZED:-0}" = 1 ] && MIN_RELOADS=20
PHASE_SECS=${PHASE_SECS:-15}

waits() { timeout 10 "$DMNBD" --control "$CTL" --json info dev \
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["devices"][0]["suspended_waits"])'; }

# reload_loop TAG: reload until $WORK/stop-TAG exists; "$WORK/reloads-TAG" = "count failures"
reload_loop() {
  local tag=$1 n=0 f=0 k t rc
  while [ ! -e "$WORK/stop-$tag" ]; do
    if (( n % 2 )); then
      k=$(( (RANDOM << 15 | RANDOM) % (SECTORS - 1) + 1 ))
      t="0 $k linear $IMG 0
$k $((SECTORS - k)) linear $IMG $k"
    else
      t="0 $SECTORS linear $IMG 0"
    fi
    timeout 20 "$DMNBD" --control "$CTL" reload dev --table "$t" 2>> "$WORK/reload-$tag.err"; rc=$?
    if [ "$rc" -ne 0 ]; then
      f=$((f + 1)); echo "# reload $n (table: ${t//$'\n'/ | }) failed (exit $rc)" >> "$WORK/reload-$tag.err"
      if [ "$rc" -eq 124 ]; then  # a hang: keep the evidence, then kill the server so the writer fails fast
        { echo "reload $n did not finish within 20 s (table: ${t//$'\n'/ | })"
          echo "info: $(timeout 5 "$DMNBD" --control "$CTL" --json info | tr -d ' \n')"; } > "$WORK/hang.txt"
        kill -KILL "$SERVER_PID"
        break
      fi
    fi
    n=$((n + 1))
    echo "$n $f" > "$WORK/reloads-$tag.tmp" && mv "$WORK/reloads-$tag.tmp" "$WORK/reloads-$tag"
  done
}
RELOAD_PID=""
on_cleanup '[ -n "$RELOAD_PID" ] && kill "$RELOAD_PID"'

# phase TAG DESC CMD...: run CMD (the writer) while reload_loop runs; check both.
phase() {
  local tag=$1 desc=$2 w0 w1 rc n f; shift 2
  w0=$(waits) || fail "$desc: no answer to info"
  rm -f "$WORK/stop-$tag"; echo "0 0" > "$WORK/reloads-$tag"
  reload_loop "$tag" & RELOAD_PID=$!
  local t0=$SECONDS
  "$@"; rc=$?
  read -r n f < "$WORK/reloads-$tag"        # reloads that overlapped the writer
  touch "$WORK/stop-$tag"; wait "$RELOAD_PID"; RELOAD_PID=""
  [ -e "$WORK/hang.txt" ] && { FAIL_REASON="$desc: server hang: $(head -c 1500 "$WORK/hang.txt")"; fail "$FAIL_REASON"; }
  w1=$(waits)
  log "$desc: writer exit $rc after $((SECONDS - t0)) s; $n reloads during it ($f failed); suspended_waits $w0 -> $w1 (+$((w1 - w0)))"
  check "$desc: writer saw no I/O error and no verify failure" test "$rc" -eq 0
  check "$desc: every reload exited 0 ($f of $n failed)" test "$f" -eq 0
  [ "$f" -eq 0 ] || sed 's/^/#   /' "$WORK/reload-$tag.err" | head -20 >&2
  check "$desc: at least $MIN_RELOADS reloads overlapped the writer (got $n)" test "$n" -ge "$MIN_RELOADS"
  check "$desc: requests waited on suspends (suspended_waits +$((w1 - w0)) > 0)" test "$((w1 - w0))" -gt 0
  check "$desc: device ACTIVE afterwards with no inactive table" bash -c \
    'o=$(timeout 10 "$1" --control "$2" info dev) && grep -qx "State: *ACTIVE" <<<"$o" && grep -qx "Tables present: *LIVE" <<<"$o"' _ "$DMNBD" "$CTL"
  echo "$desc: $n reloads, suspended_waits +$((w1 - w0))" >> "$WORK/summary"
}

runfio() {  # runfio NAME fio-args...: nonzero on any I/O error or verify mismatch
  local name=$1; shift
  timeout $((PHASE_SECS + 60)) fio --name="$name" --verify_state_save=0 --ioengine=nbd --uri="$U" \
    --output="$WORK/fio-$name.log" --rw=randwrite --bsrange=4k-64k --time_based --runtime="$PHASE_SECS" \
    --verify=crc32c --verify_backlog=256 --do_verify=1 --verify_fatal=1 "$@" \
    || { sed 's/^/#   /' "$WORK/fio-$name.log" | head -60 >&2; return 1; }
  grep -q "err= 0" "$WORK/fio-$name.log" || { sed 's/^/#   /' "$WORK/fio-$name.log" >&2; return 1; }
}

phase one "fio, 1 connection, whole device, iodepth 32" \
  runfio one --iodepth=32 --size=64M
phase two "fio numjobs=2 (2 connections), disjoint halves, iodepth 16" \
  runfio two --iodepth=16 --numjobs=2 --size=32M --offset_increment=32M

cat > "$WORK/writer.py" <<'PY'
# Two connections on the same range, 32 requests in flight: random writes of
# unique content, each read back through the other connection once it has
# completed (the range stays reserved until then), FLUSH every 64 writes.
import os, random, select, struct, sys, time
import nbd

uri, secs = sys.argv[1], float(sys.argv[2])
BLK = 4096
hs = []
for _ in range(2):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
nblk = hs[0].get_size() // BLK
shadow = {}            # block -> expected bytes
busy = set()
inflight = []          # [handle, cookie, kind, start, count, buf]
seq = 0
stats = {"write": 0, "read": 0, "flush": 0}
errors = []


def content(s, b):
    return struct.pack("<QQ", s, b) * (BLK // 16)


def pump(timeout):
    rl, wl = [], []
    for h in hs:
        d = h.aio_get_direction()
        if d & nbd.AIO_DIRECTION_READ:
            rl.append(h.aio_get_fd())
        if d & nbd.AIO_DIRECTION_WRITE:
            wl.append(h.aio_get_fd())
    r, w, _ = select.select(rl, wl, [], timeout)
    for h in hs:
        if h.aio_get_fd() in r:
            h.aio_notify_read()
        if h.aio_get_fd() in w:
            h.aio_notify_write()


def issue_write():
    global seq
    n = random.randint(1, 16)
    for _ in range(8):
        s = random.randrange(0, nblk - n + 1)
        if not any(b in busy for b in range(s, s + n)):
            break
    else:
        return
    seq += 1
    data = b"".join(content(seq, b) for b in range(s, s + n))
    i = random.randrange(2)
    buf = nbd.Buffer.from_bytearray(bytearray(data))
    c = hs[i].aio_pwrite(buf, s * BLK)
    busy.update(range(s, s + n))
    inflight.append([i, c, "write", s, n, buf, data])


end = time.time() + secs
while time.time() < end or inflight:
    while time.time() < end and len(inflight) < 32:
        issue_write()
        if stats["write"] and stats["write"] % 64 == 0 and not any(x[2] == "flush" for x in inflight):
            i = random.randrange(2)
            inflight.append([i, hs[i].aio_flush(), "flush", 0, 0, None, None])
    pump(0.05)
    for x in list(inflight):
        i, c, kind, s, n, buf, data = x
        try:
            if not hs[i].aio_command_completed(c):
                continue
        except nbd.Error as e:
            errors.append("%s of blocks %d+%d on connection %d: %s" % (kind, s, n, i, e))
            inflight.remove(x)
            busy.difference_update(range(s, s + n))
            continue
        inflight.remove(x)
        stats[kind] += 1
        if kind == "write":
            for k, b in enumerate(range(s, s + n)):
                shadow[b] = data[k * BLK:(k + 1) * BLK]
            j = 1 - i
            rbuf = nbd.Buffer(n * BLK)
            inflight.append([j, hs[j].aio_pread(rbuf, s * BLK), "read", s, n, rbuf, data])
        elif kind == "read":
            got = bytes(buf.to_bytearray())
            if got != data:
                bad = [s + k for k in range(n) if got[k * BLK:(k + 1) * BLK] != data[k * BLK:(k + 1) * BLK]]
                errors.append("read-back through connection %d of blocks %d+%d differs (blocks %s)" % (i, s, n, bad[:8]))
            busy.difference_update(range(s, s + n))
    if len(errors) > 20:
        break
for h in hs:
    h.flush()
# final pass: every block written reads back through a fresh connection
h = nbd.NBD()
h.connect_uri(uri)
dev = b"".join(h.pread(min(4 << 20, nblk * BLK - off), off) for off in range(0, nblk * BLK, 4 << 20))
wrong = [b for b, d in shadow.items() if dev[b * BLK:(b + 1) * BLK] != d]
if wrong:
    errors.append("final read: %d of %d written blocks differ (first %s)" % (len(wrong), len(shadow), sorted(wrong)[:8]))
h.shutdown()
for h in hs:
    h.shutdown()
print("# libnbd writer: %d writes, %d read-backs, %d flushes, %d distinct blocks" %
      (stats["write"], stats["read"], stats["flush"], len(shadow)))
for e in errors[:20]:
    print("# ERROR: " + e)
sys.exit(1 if errors else 0)
PY
phase three "libnbd writer, 2 connections on the same range, cross-connection read-back" \
  timeout $((PHASE_SECS + 60)) "$PY" "$WORK/writer.py" "$U" "$PHASE_SECS"

# The table is an identity map in both forms: the device must equal the backing file.
check "device content equals the backing file" \
  bash -c 'timeout 60 nbdcopy "$1" "$2/dump.img" && cmp "$2/dump.img" "$2/d.img"' _ "$U" "$WORK"
sed 's/^/# /' "$WORK/summary" >&2
pass
