# shellcheck shell=bash
# lib.sh - sourced by every black-box test script (tests/protocol, tests/interop).
#
#   source "$(dirname "$0")/../protocol/lib.sh"
#   make_work                      # $WORK = fresh temp dir
#   cat > "$WORK/cfg.yaml" ...; dmnbd_start "$WORK/cfg.yaml"
#   check "reads back" cmp a b     # prints ok/not ok, remembers failures
#   pass                           # or: fail "reason"
#
# On exit the server is stopped with SIGTERM (by PID) and must exit 0; the last
# line printed is always "PASS <name>" or "FAIL <name>: <reason>".
# Env: DMNBD (server binary), KEEP_WORK=1 (keep $WORK even on success),
# WORK_BASE (where $WORK is made; /tmp by default, /dev/shm puts the backing
# files on a tmpfs, where large reads take the zero-copy path).

set -uo pipefail

TEST_NAME=${TEST_NAME:-$(basename "${BASH_SOURCE[1]:-$0}" .sh)}
DMNBD=${DMNBD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/dmnbd}
# nbdsh and python3-libnbd need the distro python; pyenv shims must not win.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
PY=/usr/bin/python3
LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

WORK=""
SERVER_PID=""
FAIL_REASON=""
STOP_REASON=""
NFAILED=0
CLEANUP_HOOKS=()

log() { echo "# $*" >&2; }

make_work() {
  WORK=$(mktemp -d "${WORK_BASE:-/tmp}/dmnbd-${TEST_NAME}.XXXXXX") || { echo "mktemp failed"; exit 1; }
}

# Run before the server is stopped (unmount, detach loops, kill clients...).
on_cleanup() { CLEANUP_HOOKS+=("$*"); }

server_log_tail() {
  [ -n "$WORK" ] && [ -f "$WORK/server.log" ] || return 0
  echo "---- server log (last 40 lines of $WORK/server.log) ----" >&2
  tail -n 40 "$WORK/server.log" >&2
  echo "----" >&2
}

fail() {
  FAIL_REASON=${FAIL_REASON:-$*}
  echo "not ok - $*" >&2
  server_log_tail
  exit 1
}

# Finish successfully, unless a check() failed along the way.
pass() {
  [ "$NFAILED" -eq 0 ] || fail "$NFAILED check(s) failed (see 'not ok' lines)"
  exit 0
}

ok() { echo "ok - $*"; }

# check DESC CMD...: run CMD, print ok/not ok, keep going on failure.
check() {
  local desc=$1; shift
  if "$@"; then
    echo "ok - $desc"
  else
    echo "not ok - $desc (command: $*)"
    NFAILED=$((NFAILED + 1))
    FAIL_REASON=${FAIL_REASON:-$desc}
  fi
}

# quiet CMD...: run CMD with its output in $WORK/quiet.log, shown only on failure.
quiet() {
  "$@" > "$WORK/quiet.log" 2>&1 && return 0
  local rc=$?; sed 's/^/#   /' "$WORK/quiet.log" >&2; return $rc
}

# run_probe SECONDS CMD...: run a probe printing ok/not ok lines; on failure
# fail with the count and the first "not ok" line as the reason.
run_probe() {
  local secs=$1 rc n first; shift
  timeout "$secs" "$@" 2>&1 | tee "$WORK/probe.out"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && return 0
  n=$(grep -c '^not ok' "$WORK/probe.out")
  first=$(grep -m1 '^not ok' "$WORK/probe.out" | sed 's/^not ok - //')
  [ "$rc" -eq 124 ] && fail "probe timed out after ${secs}s ($n not ok so far)"
  fail "$n check(s) failed, first: ${first:-exit status $rc}"
}

# The kernel path without a VM: nbdfuse exposes an export as a file, a loop
# device makes it a block device. Scripts set FUSE_PID, LOOP, MOUNTED and
# FUSE_MOUNTED as they go; fuse_teardown undoes whatever is set, in order.
FUSE_PID="" LOOP="" MOUNTED=0 FUSE_MOUNTED=0
fuse_teardown() {
  [ "$MOUNTED" = 1 ] && timeout 30 umount "$WORK/mnt" && MOUNTED=0
  [ -n "$LOOP" ] && timeout 30 losetup -d "$LOOP" && LOOP=""
  [ "$FUSE_MOUNTED" = 1 ] && timeout 30 umount "$WORK/fuse" && FUSE_MOUNTED=0
  # nbdfuse exits by itself once its mount is gone; kill it (by PID) only if it lingers.
  local i
  for i in $(seq 50); do [ -n "$FUSE_PID" ] && kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
  [ -n "$FUSE_PID" ] && kill -0 "$FUSE_PID" 2>/dev/null && kill "$FUSE_PID"
  FUSE_PID=""
  return 0
}

# Socket paths of "unix://..." listen entries in a config.
# The listen addresses only: tables may name nbd+unix:// and nbd:// devices.
_config_listen() { grep '^listen:' "$1"; }
_config_unix_sockets() { _config_listen "$1" | grep -o '"unix://[^]"'"'"' ,]*' | sed 's|^"unix://||'; }
_config_tcp_ports() { _config_listen "$1" | grep -o '"tcp://[^]"'"'"' ,]*' | sed 's|.*:||'; }

free_tcp_port() {
  "$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# dmnbd_start CONFIG: start "$DMNBD serve CONFIG" in the background and wait
# (<= 10 s) until every unix socket / tcp port it lists is up.
dmnbd_start() {
  local cfg=$1 i s p ready
  [ -x "$DMNBD" ] || fail "server binary $DMNBD not found (set DMNBD)"
  [ -n "$SERVER_PID" ] && fail "dmnbd_start: a server is already running"
  "$DMNBD" serve "$cfg" >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for i in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || {
      wait "$SERVER_PID"; local rc=$?; SERVER_PID=""
      fail "server died during startup (exit $rc)"; }
    ready=1
    for s in $(_config_unix_sockets "$cfg"); do [ -S "$s" ] || ready=0; done
    for p in $(_config_tcp_ports "$cfg"); do
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || ready=0
    done
    [ "$ready" = 1 ] && return 0
    sleep 0.1
  done
  fail "server did not open its listen sockets within 10 s"
}

# dmnbd_stop: SIGTERM, wait (<= 15 s), require exit status 0 (else $STOP_REASON says why).
dmnbd_stop() {
  local pid=$SERVER_PID rc i
  [ -n "$pid" ] || return 0
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    STOP_REASON="server did not exit within 15 s of SIGTERM"
    return 1
  fi
  wait "$pid"; rc=$?
  if [ "$rc" -ne 0 ]; then
    STOP_REASON="server exited with status $rc on SIGTERM (expected 0)"
    return 1
  fi
  return 0
}

_lib_on_exit() {
  local rc=$? h
  trap - EXIT
  for h in "${CLEANUP_HOOKS[@]}"; do eval "$h" >/dev/null 2>&1 || true; done
  if [ -n "$SERVER_PID" ]; then
    dmnbd_stop || { rc=1; FAIL_REASON=${FAIL_REASON:-$STOP_REASON}; server_log_tail; }
  fi
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ]; then  # 77: skipped (ctest SKIP_RETURN_CODE)
    [ "${KEEP_WORK:-0}" = 1 ] || { [ -n "$WORK" ] && rm -rf "$WORK"; }
    [ "$rc" -eq 0 ] && echo "PASS $TEST_NAME"
  else
    [ -n "$WORK" ] && echo "# work dir kept: $WORK" >&2
    echo "FAIL $TEST_NAME: ${FAIL_REASON:-exit status $rc}"
  fi
  exit "$rc"
}
trap _lib_on_exit EXIT
trap 'FAIL_REASON=${FAIL_REASON:-interrupted}; exit 130' INT TERM
