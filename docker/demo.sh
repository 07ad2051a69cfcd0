#!/bin/bash
# demo.sh - build the dmnbd container image, run it, and use it from the host
# (ctest: docker.demo). Runs with podman (as root); see docker/README.md.
#
#   bash docker/demo.sh [--clean]      --clean: remove the image and the build
#                                      stage's layer cache afterwards
#
#  1. base image: $DMNBD_BASE if set; else the standard Debian bookworm image if
#     present or pullable; else a bookworm minbase made with debootstrap and
#     "podman import"ed as localhost/bookworm-minbase (no registry needed)
#  2. podman build -f docker/Dockerfile --build-arg BASE=... (multi-stage)
#  3. podman run, as docker/compose.yaml does: a data volume on /data, the
#     port published on 127.0.0.1 only, a host directory on /run/dmnbd (NBD
#     unix socket + control socket)
#  4. from the host: nbdinfo, a 32 MiB nbdcopy write over TCP read back over the
#     unix socket; with a client connected, "dmnbd reload" of its table over the
#     control socket, the client sees the new mapping at once; dmnbd status /
#     table / info; SIGTERM stop (exit 0), restart, the data is still there
#  5. the same image once more through docker/compose.yaml with podman-compose
# Exit: 0 pass, 1 fail, 77 = podman cannot run here / no Debian archive.
# Env: DMNBD (host dmnbd binary for the control CLI; default build/dmnbd,
#      else "podman exec ... dmnbd"), DMNBD_BASE, DMNBD_IMAGE (localhost/dmnbd:latest),
#      DMNBD_DOCKER_CACHE (/var/cache/dmnbd/docker: the debootstrap tarball),
#      CONTAINERS_CONF (default docker/containers.conf), KEEP_WORK=1.
set -uo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}
CACHE=${DMNBD_DOCKER_CACHE:-/var/cache/dmnbd/docker}
IMG=${DMNBD_IMAGE:-localhost/dmnbd:latest}
STD_BASE=docker.io/library/debian:bookworm
MINBASE=localhost/bookworm-minbase:latest
HOST_DMNBD=${DMNBD:-$REPO/build/dmnbd}
PY=/usr/bin/python3
TEST_NAME=docker.demo
CLEAN=0
for a in "$@"; do
  case $a in
    --clean) CLEAN=1;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0;;
    *) echo "unknown argument: $a" >&2; exit 2;;
  esac
done

T0=$(date +%s.%N)
elapsed() { awk -v a="${1:-$T0}" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "# [+$(elapsed)s] $*" >&2; }
PASSED=0 FAILED=0 FIRST_FAIL="" FINISHED=0
ok() { echo "ok - $*"; PASSED=$((PASSED + 1)); }
notok() { echo "not ok - $*"; FAILED=$((FAILED + 1)); FIRST_FAIL=${FIRST_FAIL:-$*}; }
check() { # DESC CMD...: output of CMD goes to stderr as comments
  local d=$1 rc; shift
  "$@" 2>&1 | sed 's/^/#   /' >&2; rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then ok "$d"; else notok "$d"; fi
}
skip() { echo "SKIP container demo: $*" >&2; echo "SKIPPED $TEST_NAME: $*"; FINISHED=1; exit 77; }
die() { notok "$*"; exit 1; }

NAME=dmnbd-demo-$$ VOL=dmnbd-demo-data-$$ WORK="" STARTED=0
PROJ=dmnbddemo$$ COMPOSED=0               # podman-compose project of step 5
cleanup() {
  local rc=$?
  trap - EXIT
  if [ "$STARTED" = 1 ]; then
    timeout 60 podman stop -t 15 "$NAME" > /dev/null 2>&1
    timeout 60 podman rm -f "$NAME" > /dev/null 2>&1
  fi
  podman volume exists "$VOL" 2>/dev/null && timeout 60 podman volume rm -f "$VOL" > /dev/null 2>&1
  if [ "$COMPOSED" = 1 ]; then
    timeout 120 podman-compose -p "$PROJ" -f "$HERE/compose.yaml" down > /dev/null 2>&1
    timeout 60 podman rm -f "${PROJ}_dmnbd_1" > /dev/null 2>&1
    timeout 60 podman volume rm -f "${PROJ}_dmnbd-data" > /dev/null 2>&1
    timeout 60 podman network rm -f "${PROJ}_default" > /dev/null 2>&1
  fi
  if [ "$CLEAN" = 1 ]; then
    timeout 60 podman rmi -f "$IMG" > /dev/null 2>&1
    # the build stage's untagged images (the layer cache) of this Dockerfile only
    timeout 120 podman image prune -f --filter label=dmnbd.stage=build > /dev/null 2>&1
  fi
  if [ -n "$WORK" ]; then
    if [ "$rc" = 0 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; else echo "# work dir kept: $WORK" >&2; fi
  fi
  [ "$FINISHED" = 0 ] && echo "FAIL $TEST_NAME: ${FIRST_FAIL:-exit status $rc}"
  exit "$rc"
}
trap cleanup EXIT
trap 'FIRST_FAIL=${FIRST_FAIL:-interrupted}; exit 130' INT TERM

# ------------------------------------------------------------ host tools, base image
# shellcheck source=docker/lib.sh
source "$HERE/lib.sh"
prepare_base_image
ok "base image $BASE runs"

# ------------------------------------------------------------ build
TB=$(date +%s.%N)
log "podman build -f docker/Dockerfile --build-arg BASE=$BASE -t $IMG (log: $CACHE/build.log)"
if podman_build "$CACHE/build.log" -t "$IMG"; then
  BUILD_S=$(elapsed "$TB")
  ok "image built in ${BUILD_S}s ($(podman image inspect --format '{{.Size}}' "$IMG" | awk '{printf "%.0f MB", $1/1e6}'))"
else
  tail -30 "$CACHE/build.log" | sed 's/^/#   build| /' >&2
  die "podman build failed (see $CACHE/build.log)"
fi
grep -o 'runtime packages: .*' "$CACHE/build.log" | tail -1 | sed 's/^/# /' >&2
# runtime images of earlier builds, untagged by this one, are of no further use
timeout 120 podman image prune -f --filter label=dmnbd.stage=runtime > /dev/null 2>&1
check "runtime image: dmnbd runs (every shared library present)" \
  timeout 60 podman run --rm --network none "$IMG" --version
check "runtime image: no compiler or build tools in it" \
  timeout 60 podman run --rm --network none --entrypoint /bin/sh "$IMG" -c \
    '! command -v g++ && ! command -v cc && ! command -v cmake && ! test -e /usr/include/boost'
CONTROL=0
timeout 60 podman run --rm --network none "$IMG" --help 2>/dev/null | grep -qw reload && CONTROL=1

# ------------------------------------------------------------ run
WORK=$(mktemp -d /tmp/dmnbd-demo.XXXXXX)
RUN=$WORK/run                               # compose: ./run:/run/dmnbd
mkdir -p "$RUN"
if [ "$CONTROL" = 1 ]; then cp "$HERE/dmnbd.yaml" "$WORK/dmnbd.yaml"
else grep -v '^control:' "$HERE/dmnbd.yaml" > "$WORK/dmnbd.yaml"; fi
PORT=$("$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
podman volume create "$VOL" > /dev/null || die "podman volume create failed"
log "podman run $NAME: 127.0.0.1:$PORT -> 10809, volume $VOL -> /data, $RUN -> /run/dmnbd"
podman run -d --name "$NAME" --network slirp4netns -p "127.0.0.1:$PORT:10809" \
  -v "$VOL:/data" -v "$RUN:/run/dmnbd" -v "$WORK/dmnbd.yaml:/etc/dmnbd/dmnbd.yaml:ro" \
  "$IMG" > /dev/null || die "podman run failed"
STARTED=1
TCP="nbd://127.0.0.1:$PORT"
UNIX="nbd+unix:///disk?socket=$RUN/nbd.sock"
wait_up() {
  local i ts; ts=$(date +%s.%N)
  for i in $(seq 100); do
    timeout 5 nbdinfo --size "$TCP/disk" > /dev/null 2>&1 && { UP_S=$(elapsed "$ts"); return 0; }
    sleep 0.2
  done
  podman logs "$NAME" 2>&1 | tail -20 | sed 's/^/#   container| /' >&2
  return 1
}
wait_up || die "the container's server never answered on $TCP"
ok "container up, NBD answering on 127.0.0.1:$PORT after ${UP_S}s"
timeout 30 nbdinfo --list "$TCP" > "$WORK/list.txt" 2>&1
check "nbdinfo --list shows the exports disk and demo" grep -q 'export="demo"' "$WORK/list.txt"
grep -E 'export=|description|export-size' "$WORK/list.txt" | sed 's/^/#   /' >&2
check "NBD unix socket reachable from the host ($RUN/nbd.sock)" timeout 10 nbdinfo --size "$UNIX"

head -c 33554432 /dev/urandom > "$WORK/data.bin"
SHA=$(sha256sum < "$WORK/data.bin" | cut -d' ' -f1)
check "32 MiB written over TCP (nbdcopy)" timeout 120 nbdcopy "$WORK/data.bin" "$TCP/disk"
check "... read back over the unix socket, identical" \
  sh -c "timeout 120 nbdcopy '$UNIX' - | head -c 33554432 | cmp -s - '$WORK/data.bin'"

# ---- the control socket: reload a table under a connected client
if [ "$CONTROL" = 1 ]; then
  for i in $(seq 50); do [ -S "$RUN/control.sock" ] && break; sleep 0.1; done
  check "control socket reachable from the host ($RUN/control.sock)" test -S "$RUN/control.sock"
  if [ -x "$HOST_DMNBD" ] && "$HOST_DMNBD" --help 2>/dev/null | grep -q -- --control; then
    CLI=("$HOST_DMNBD" --control "$RUN/control.sock"); CLI_DESC="host $HOST_DMNBD --control $RUN/control.sock"
  else
    CLI=(podman exec "$NAME" dmnbd); CLI_DESC="podman exec $NAME dmnbd"
  fi
  log "control CLI: $CLI_DESC"
  # One libnbd client stays connected to "disk" the whole time. While it is
  # connected, the table is reloaded so that sector 0 maps to sector 262144 of
  # disk.img (where the client wrote a marker) followed by zero; the same
  # connection must see the new mapping at once, then the old one after a
  # second reload.
  "$PY" - "$PORT" "${CLI[@]}" > "$WORK/reload.out" 2>&1 <<'PY'
import subprocess, sys, nbd
port, cli = sys.argv[1], sys.argv[2:]
OLD = "0 524288 linear /data/disk.img 0"
NEW = "0 262144 linear /data/disk.img 262144\n262144 262144 zero"
h = nbd.NBD()
h.set_export_name("disk")
h.connect_tcp("127.0.0.1", port)
marker = b"dmnbd reload demo: sector 262144 of disk.img\n".ljust(4096, b"\xa5")
h.pwrite(marker, 262144 * 512)
h.flush()
before = h.pread(4096, 0)
def run(*args):
    r = subprocess.run(cli + list(args), capture_output=True, text=True, timeout=60)
    print(f"$ dmnbd {' '.join(args)}  (exit {r.returncode})\n{r.stdout}{r.stderr}", end="")
    return r
fails = 0
def check(ok, msg):
    global fails
    print(("ok - " if ok else "not ok - ") + msg, flush=True)
    fails += not ok
check(run("reload", "disk", "--table", NEW).returncode == 0, "dmnbd reload disk (client connected)")
check(h.pread(4096, 0) == marker, "the connected client reads the marker at offset 0 right after the reload")
check(h.pread(4096, 128 << 20) == bytes(4096), "... and zeroes at 128 MiB (the zero target)")
t = run("table", "disk")
check(t.returncode == 0 and "zero" in t.stdout, "dmnbd table disk shows the new table")
run("status")
run("info", "disk")
check(run("reload", "disk", "--table", OLD).returncode == 0, "dmnbd reload disk back to the old table")
check(h.pread(4096, 0) == before, "the same client reads the original data at offset 0 again")
h.shutdown()
sys.exit(1 if fails else 0)
PY
  RRC=$?
  # The mirror device: written through, in sync, both legs the same bytes.
  mirror_in_sync() {
    local i
    for i in $(seq 100); do
      "${CLI[@]}" status mirror 2>/dev/null | grep -q " 128/128 1 AA 3 disk " && return 0
      sleep 0.1
    done
    return 1
  }
  head -c 8388608 /dev/urandom > "$WORK/mirror.bin"
  check "mirror: 8 MiB written over TCP (nbdcopy)" timeout 120 nbdcopy "$WORK/mirror.bin" "$TCP/mirror"
  check "mirror: dmnbd status shows every region in sync, both legs A" mirror_in_sync
  log "mirror: $("${CLI[@]}" status mirror 2>&1)"
  check "mirror: both legs hold the same bytes (cmp in the container)" \
    podman exec "$NAME" cmp /data/mirror-a.img /data/mirror-b.img
  # The raid1 device: resynced, written through, idle, both legs the same bytes.
  raid_idle() {
    local i
    for i in $(seq 100); do
      "${CLI[@]}" status raid1 2>/dev/null | grep -q " raid raid1 2 AA 131072/131072 idle 0 0 -" && return 0
      sleep 0.1
    done
    return 1
  }
  check "raid1: 8 MiB written over TCP (nbdcopy)" timeout 120 nbdcopy "$WORK/mirror.bin" "$TCP/raid1"
  check "raid1: dmnbd status shows both legs A, in sync, idle" raid_idle
  log "raid1: $("${CLI[@]}" status raid1 2>&1)"
  check "raid1: both legs hold the same bytes (cmp in the container)" \
    podman exec "$NAME" cmp /data/raid-a.img /data/raid-b.img
  sed -n '/^\(not \)\?ok - /!s/^/#   /p' "$WORK/reload.out" >&2
  PASSED=$((PASSED + $(grep -c '^ok - ' "$WORK/reload.out")))
  n=$(grep -c '^not ok - ' "$WORK/reload.out"); FAILED=$((FAILED + n))
  grep '^\(not \)\?ok - ' "$WORK/reload.out"
  [ "$n" -gt 0 ] && FIRST_FAIL=${FIRST_FAIL:-$(grep -m1 '^not ok - ' "$WORK/reload.out" | sed 's/^not ok - //')}
  [ "$RRC" != 0 ] && [ "$n" = 0 ] && notok "reload demo client failed: $(tail -3 "$WORK/reload.out" | tr '\n' ' ')"
else
  # ---- CONTROL SOCKET STEPS: this build has no control socket / reload / status CLI
  echo "# SKIPPED (this dmnbd build has no control socket): with a client connected,"
  echo "#   dmnbd --control $RUN/control.sock reload disk --table '0 262144 linear /data/disk.img 262144 ...'"
  echo "#   dmnbd --control $RUN/control.sock status"
fi

# ---- stop (SIGTERM -> exit 0), start again, the volume kept the data
timeout 60 podman stop -t 15 "$NAME" > /dev/null
check "container stopped by SIGTERM, dmnbd exit status 0" \
  test "$(podman inspect --format '{{.State.ExitCode}}' "$NAME")" = 0
podman logs "$NAME" 2>&1 | tail -4 | sed 's/^/#   container| /' >&2
timeout 60 podman start "$NAME" > /dev/null || notok "podman start failed"
wait_up || notok "the restarted container never answered"
check "after a restart the data volume still holds the 32 MiB" \
  sh -c "timeout 120 nbdcopy '$TCP/disk' - | head -c 33554432 | sha256sum | grep -q '^$SHA '"

timeout 60 podman stop -t 15 "$NAME" > /dev/null

# ---- 5. the same image through docker/compose.yaml (podman-compose; the image
# exists, so nothing is built): volume, 127.0.0.1 port, host run directory
CPORT=$("$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mkdir -p "$WORK/crun"
COMPOSED=1
log "podman-compose -p $PROJ -f docker/compose.yaml up -d (port 127.0.0.1:$CPORT, run dir $WORK/crun)"
if DMNBD_PORT=$CPORT DMNBD_BASE=$BASE DMNBD_RUN_DIR=$WORK/crun \
     timeout 300 podman-compose -p "$PROJ" -f "$HERE/compose.yaml" up -d > "$WORK/compose.log" 2>&1; then
  TCP="nbd://127.0.0.1:$CPORT" NAME_SAVED=$NAME NAME="${PROJ}_dmnbd_1"
  if wait_up; then
    ok "compose: the service answers NBD on 127.0.0.1:$CPORT"
    check "compose: NBD unix socket in the host run directory" \
      timeout 10 nbdinfo --size "nbd+unix:///demo?socket=$WORK/crun/nbd.sock"
    if [ "$CONTROL" = 1 ]; then
      for i in $(seq 50); do [ -S "$WORK/crun/control.sock" ] && break; sleep 0.1; done
      if [ "${CLI[0]}" = podman ]; then CLI=(podman exec "$NAME" dmnbd); else CLI=("$HOST_DMNBD" --control "$WORK/crun/control.sock"); fi
      check "compose: dmnbd status over the control socket" "${CLI[@]}" status
    fi
  else
    notok "compose: the service never answered on 127.0.0.1:$CPORT"
  fi
  NAME=$NAME_SAVED
  timeout 120 podman-compose -p "$PROJ" -f "$HERE/compose.yaml" down >> "$WORK/compose.log" 2>&1
  check "compose: down" sh -c "! podman container exists '${PROJ}_dmnbd_1'"
else
  sed 's/^/#   compose| /' "$WORK/compose.log" | tail -20 >&2
  notok "podman-compose up failed"
fi

FINISHED=1
summary="$TEST_NAME: $PASSED passed, $FAILED failed (base $BASE, build ${BUILD_S:-?}s, control socket $([ "$CONTROL" = 1 ] && echo tested || echo 'not in this build'), $(elapsed) s)"
echo "$summary"
if [ "$FAILED" = 0 ]; then echo "PASS $TEST_NAME"; exit 0; fi
echo "FAIL $TEST_NAME: $FIRST_FAIL"
exit 1
