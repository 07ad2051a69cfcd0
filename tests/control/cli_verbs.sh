#!/bin/bash
# cli_verbs.sh - the control socket through the dmnbd CLI: every verb with its
# dmsetup-like output, every error (unknown device, bad tables with the live
# table untouched, busy remove by a connection and by an upper table, remove
# --force under a connected client, resume without a table, messages, cycles),
# rename vs. exports, --json, exit codes 1/2/3, the socket's mode, malformed
# and oversized raw requests, and several control clients at once.
source "$(dirname "$0")/../protocol/lib.sh"
make_work
mkdir -p "$WORK/ctl"
dd if=/dev/urandom of="$WORK/a.img" bs=1M count=16 status=none
cat > "$WORK/cfg.yaml" <<YAML
listen: [ "unix://$WORK/nbd.sock" ]
control: ctl/control.sock
files:
  - { path: a.img, size: 16MiB }
  - { path: b.img, size: 8MiB }
devices:
  - name: base
    description: base device
    table: "0 32768 linear a.img 0"
  - name: top
    table: "0 32768 linear base 0"
YAML
dmnbd_start "$WORK/cfg.yaml"
CTL="$WORK/ctl/control.sock"
SOCK="$WORK/nbd.sock"
uri() { echo "nbd+unix:///$1?socket=$SOCK"; }

dm() { timeout 20 "$DMNBD" --control "$CTL" "$@"; }
# expect RC CMD...: run CMD; $OUT/$ERR/$RC hold its stdout/stderr/status; true iff status == RC.
expect() {
  local want=$1; shift
  "$@" > "$WORK/out" 2> "$WORK/err"; RC=$?
  OUT=$(cat "$WORK/out"); ERR=$(cat "$WORK/err")
  [ "$RC" -eq "$want" ] && return 0
  echo "#   exit status $RC (expected $want)"; echo "#   stdout: ${OUT:0:600}"; echo "#   stderr: ${ERR:0:600}"
  return 1
}
out_has() { grep -qF -- "$1" <<<"$OUT" || { echo "#   stdout lacks '$1':"; sed 's/^/#     /' <<<"$OUT"; return 1; }; }
out_lacks() { ! grep -qF -- "$1" <<<"$OUT" || { echo "#   stdout has '$1'"; return 1; }; }
out_line() { grep -qxF -- "$1" <<<"$OUT" || { echo "#   no stdout line '$1':"; sed 's/^/#     /' <<<"$OUT"; return 1; }; }
err_has() { grep -qF -- "$1" <<<"$ERR" || { echo "#   stderr lacks '$1': $ERR"; return 1; }; }
out_is() { [ "$OUT" = "$1" ] || { echo "#   stdout differs:"; diff <(echo "$1") <(echo "$OUT") | sed 's/^/#     /'; return 1; }; }
# jtrue PY-EXPR: evaluate EXPR with d = json.loads($OUT)
jtrue() {
  "$PY" -c 'import json,sys; d=json.loads(sys.argv[2]); sys.exit(0 if eval(sys.argv[1]) else 1)' "$1" "$OUT" \
    || { echo "#   JSON check failed: $1 on ${OUT:0:600}"; return 1; }
}
# ifield NAME KEY: one info field from --json info
ifield() { dm --json info "$1" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["devices"][0][sys.argv[1]])' "$2"; }
is() { [ "$1" = "$2" ] || { echo "#   got '$1', expected '$2'"; return 1; }; }
nbdsize() { timeout 10 nbdinfo --size "$(uri "$1")" 2>/dev/null; }
has_export() { timeout 10 nbdinfo --list --json "nbd+unix:///?socket=$SOCK" 2>/dev/null \
  | "$PY" -c 'import json,sys; sys.exit(0 if sys.argv[1] in [e["export-name"] for e in json.load(sys.stdin)["exports"]] else 1)' "$1"; }
not() { ! "$@"; }
refused() { ! timeout 10 nbdinfo --size "$(uri "$1")" > /dev/null 2>&1; }
# reads N bytes at OFFSET of export NAME into stdout
nbdread() { timeout 20 nbdsh -u "$(uri "$1")" -c "import sys; sys.stdout.buffer.write(h.pread($3, $2))"; }
# the checks below run some pipelines in "bash -c": give them the helpers
export DMNBD CTL SOCK PY WORK
export -f uri dm ifield nbdsize has_export nbdread

# ---- the socket itself ----
check "control socket exists at the configured (config-relative) path" test -S "$CTL"
check "control socket mode is 0600" is "$(stat -c %a "$CTL")" 600
check "control socket is owned by the server's user" is "$(stat -c %u "$CTL")" "$(id -u)"

# ---- targets ----
check "targets" expect 0 dm targets
for t in linear zero error; do
  check "targets lists $t as 'name vX.Y.Z'" bash -c 'grep -qE "^$1 +v[0-9]+\.[0-9]+\.[0-9]+$" <<<"$2"' _ "$t" "$OUT"
done

# ---- ls / info / table / status / deps on the config's devices ----
check "ls" expect 0 dm ls
check "ls: base (253:0)" out_line "base	(253:0)"
check "ls: top (253:1)" out_line "top	(253:1)"
check "ls --tree" expect 0 dm ls --tree
check "ls --tree: top with base below it" bash -c 'grep -q "^top (253:1)" <<<"$1" && grep -q "└─base (253:0)" <<<"$1" && grep -q "a.img" <<<"$1"' _ "$OUT"
check "info base" expect 0 dm info base
for l in "Name:              base" "State:             ACTIVE" "Tables present:    LIVE" \
         "Open count:        1" "Event number:      0" "Major, minor:      253, 0" "Number of targets: 1"; do
  check "info base: '$l'" out_line "$l"
done
check "info top" expect 0 dm info top
check "info top: open count 0" out_line "Open count:        0"
check "info top: 253, 1" out_line "Major, minor:      253, 1"
check "info (all)" expect 0 dm info
check "info (all) shows both devices" bash -c 'grep -qx "Name: *base" <<<"$1" && grep -qx "Name: *top" <<<"$1"' _ "$OUT"
check "table base" expect 0 dm table base
check "table base: the line as loaded, no prefix" out_is "0 32768 linear a.img 0"
check "table (all)" expect 0 dm table
check "table (all): 'base: ' prefix" out_line "base: 0 32768 linear a.img 0"
check "table (all): 'top: ' prefix" out_line "top: 0 32768 linear base 0"
check "status base" expect 0 dm status base
check "status base: 0 32768 linear" is "$(sed 's/ *$//' <<<"$OUT")" "0 32768 linear"
check "status (all)" expect 0 dm status
check "status (all): prefixed lines" bash -c 'grep -q "^base: 0 32768 linear" <<<"$1" && grep -q "^top: 0 32768 linear" <<<"$1"' _ "$OUT"
check "deps top" expect 0 dm deps top
check "deps top: 1 dependencies : (253, 0)" out_is "1 dependencies	: (253, 0)"
check "deps base" expect 0 dm deps base
check "deps base: the backing file" out_is "1 dependencies	: ($WORK/a.img)"
check "deps (all)" expect 0 dm deps
check "deps (all): prefixed" bash -c 'grep -qxF "top: 1 dependencies	: (253, 0)" <<<"$1"' _ "$OUT"

# ---- create: --table, a file, stdin; description; readonly; notable ----
check "create c1 --table --description" expect 0 dm create c1 --table "0 2048 zero" --description "zero disk"
check "c1 is an export at once (nbdinfo --list)" has_export c1
check "nbdinfo --list shows c1's description" bash -c 'timeout 10 nbdinfo --list "$1" | grep -q "description: zero disk"' _ "nbd+unix:///?socket=$SOCK"
check "c1 size 1 MiB" is "$(nbdsize c1)" 1048576
check "info c1 253, 2, ACTIVE, LIVE" bash -c 'o=$(timeout 10 "$1" --control "$2" info c1) && grep -qx "Major, minor: *253, 2" <<<"$o" && grep -qx "State: *ACTIVE" <<<"$o" && grep -qx "Tables present: *LIVE" <<<"$o"' _ "$DMNBD" "$CTL"
check "--json info c1 description" expect 0 dm --json info c1
check "--json info c1: description, sectors, read_only" jtrue 'd["ok"] and d["devices"][0]["description"]=="zero disk" and d["devices"][0]["sectors"]==2048 and d["devices"][0]["read_only"] is False'
printf '# a comment\n0 1024 linear %s 0\n1024 1024 zero\n' "$WORK/b.img" > "$WORK/c2.table"
check "create c2 FILE (two targets, comment line)" expect 0 dm create c2 "$WORK/c2.table"
check "table c2" expect 0 dm table c2
check "table c2: both lines, comment dropped" out_is "0 1024 linear $WORK/b.img 0
1024 1024 zero"
check "info c2: 2 targets" bash -c '[ "$(timeout 10 "$1" --control "$2" --json info c2 | "$3" -c "import json,sys; print(json.load(sys.stdin)[\"devices\"][0][\"targets\"])")" = 2 ]' _ "$DMNBD" "$CTL" "$PY"
check "create c3 - (table on stdin)" expect 0 bash -c 'echo "0 4096 linear $1 2048" | timeout 20 "$2" --control "$3" create c3 -' _ "$WORK/a.img" "$DMNBD" "$CTL"
check "c3 maps a.img from sector 2048" bash -c 'cmp <(nbdread c3 0 65536) <(dd if="$1" bs=512 skip=2048 count=128 status=none)' _ "$WORK/a.img"
check "create an existing name refused (1)" expect 1 dm create c1 --table "0 8 zero"
check "create ro --readonly" expect 0 dm create ro --table "0 2048 linear $WORK/b.img 0" --readonly
check "info ro: State ACTIVE (READ-ONLY)" bash -c 'timeout 10 "$1" --control "$2" info ro | grep -qx "State: *ACTIVE (READ-ONLY)"' _ "$DMNBD" "$CTL"
check "ro: writes refused with EPERM" bash -c 'timeout 20 nbdsh -u "$1" -c "
import sys
try:
    h.pwrite(b\"x\"*512, 0); sys.exit(1)
except nbd.Error as e:
    sys.exit(0 if e.errno == \"EPERM\" else 1)"' _ "$(uri ro)"
check "create nt --notable" expect 0 dm create nt --notable
check "nt: Tables present: None, 0 targets" bash -c 'o=$(timeout 10 "$1" --control "$2" info nt) && grep -qx "Tables present: *None" <<<"$o" && grep -qx "Number of targets: *0" <<<"$o"' _ "$DMNBD" "$CTL"
check "resume of a --notable device without a table refused (1)" expect 1 dm resume nt
check "... with a message" test -n "$ERR"
check "message to nt (no target at sector 0) refused" expect 1 dm message nt 0 hello
check "... 'Target message sector outside device.'" err_has "Target message sector outside device."
check "load nt" expect 0 dm load nt --table "0 64 zero"
check "resume nt after load" expect 0 dm resume nt
check "nt now 32 KiB" is "$(nbdsize nt)" 32768

# ---- load / table --inactive / clear / resume (size change) / reload ----
check "load c1 (bigger zero)" expect 0 dm load c1 --table "0 4096 zero"
check "info c1: LIVE & INACTIVE" bash -c 'timeout 10 "$1" --control "$2" info c1 | grep -qx "Tables present: *LIVE & INACTIVE"' _ "$DMNBD" "$CTL"
check "table c1 still the live one" expect 0 dm table c1
check "... 0 2048 zero" out_is "0 2048 zero"
check "table c1 --inactive" expect 0 dm table c1 --inactive
check "... 0 4096 zero" out_is "0 4096 zero"
check "load does not change the export size" is "$(nbdsize c1)" 1048576
check "clear c1" expect 0 dm clear c1
check "info c1: LIVE only after clear" bash -c 'timeout 10 "$1" --control "$2" info c1 | grep -qx "Tables present: *LIVE"' _ "$DMNBD" "$CTL"
check "resume c1 after clear keeps the old table" bash -c 'timeout 10 "$1" --control "$2" resume c1 && [ "$(timeout 10 "$1" --control "$2" table c1)" = "0 2048 zero" ]' _ "$DMNBD" "$CTL"
check "load c1 from stdin" expect 0 bash -c 'echo "0 4096 zero" | timeout 20 "$1" --control "$2" load c1 -' _ "$DMNBD" "$CTL"
check "resume c1 swaps it in" expect 0 dm resume c1
check "c1 now 2 MiB" is "$(nbdsize c1)" 2097152
check "info c1: LIVE only after the swap" bash -c 'timeout 10 "$1" --control "$2" info c1 | grep -qx "Tables present: *LIVE"' _ "$DMNBD" "$CTL"
check "reload c1 --table (load+suspend+resume)" expect 0 dm reload c1 --table "0 8192 zero"
check "c1 now 4 MiB, ACTIVE" bash -c '[ "$(timeout 10 nbdinfo --size "$1")" = 4194304 ] && timeout 10 "$2" --control "$3" info c1 | grep -qx "State: *ACTIVE"' _ "$(uri c1)" "$DMNBD" "$CTL"
# table output must be re-loadable: round-trip base's table
check "table base | reload base - (round trip)" expect 0 bash -c 'timeout 10 "$1" --control "$2" table base | timeout 20 "$1" --control "$2" reload base -' _ "$DMNBD" "$CTL"
check "base table unchanged after the round trip" bash -c '[ "$(timeout 10 "$1" --control "$2" table base)" = "0 32768 linear a.img 0" ]' _ "$DMNBD" "$CTL"
# reload of a lower device: the upper one keeps working and sees the same data
printf '0 10000 linear %s 0\n10000 22768 linear %s 10000\n' "$WORK/a.img" "$WORK/a.img" > "$WORK/split.table"
check "reload base FILE (same data, split in two)" expect 0 dm reload base "$WORK/split.table"
check "base and top both ACTIVE after reloading base" bash -c 'timeout 10 "$1" --control "$2" info | grep "^State:" | grep -vq SUSPENDED && ! timeout 10 "$1" --control "$2" info | grep -q SUSPENDED' _ "$DMNBD" "$CTL"
check "top reads a.img through the reloaded base" bash -c 'cmp <(nbdread top 0 16777216) "$1"' _ "$WORK/a.img"

# ---- suspend / resume ----
check "suspend c2" expect 0 dm suspend c2
check "info c2: SUSPENDED" bash -c 'timeout 10 "$1" --control "$2" info c2 | grep -qx "State: *SUSPENDED"' _ "$DMNBD" "$CTL"
check "--json info c2: state SUSPENDED" bash -c '[ "$(ifield c2 state)" = SUSPENDED ]'
check "suspend c2 again (already suspended) is fine" expect 0 dm suspend c2
check "resume c2" expect 0 dm resume c2
check "info c2: ACTIVE" bash -c 'timeout 10 "$1" --control "$2" info c2 | grep -qx "State: *ACTIVE"' _ "$DMNBD" "$CTL"
check "resume of an active device is fine" expect 0 dm resume c2
check "suspend --noflush --nolockfs c2" expect 0 dm suspend --noflush --nolockfs c2
check "resume c2 (after --noflush)" expect 0 dm resume c2

# ---- message ----
check "message to zero refused (1)" expect 1 dm message c1 0 hello
check "... 'Target type does not support messages'" err_has "Target type does not support messages"
check "message to linear refused" expect 1 dm message base 0 hello
check "... 'Target type does not support messages'" err_has "Target type does not support messages"
check "create e1 (error target)" expect 0 dm create e1 --table "0 8 error"
check "message to error refused" expect 1 dm message e1 0 hello
check "... 'Target type does not support messages'" err_has "Target type does not support messages"
check "remove e1" expect 0 dm remove e1
check "message to a sector past the end refused" expect 1 dm message c1 8192 hello
check "... 'Target message sector outside device.'" err_has "Target message sector outside device."
check "message far past the end refused" expect 1 dm message c1 999999999 hello
check "... 'Target message sector outside device.'" err_has "Target message sector outside device."

# ---- wait ----
check "wait c1 0 --timeout 1 (no event) exits 1" expect 1 dm wait c1 0 --timeout 1
check "... with a message" test -n "$ERR"

# ---- rename ----
# dm_hash_rename raises a table event (kernel dm-ioctl.c), so a waiter wakes up.
EV=$(ifield c1 event_nr)
timeout 20 "$DMNBD" --control "$CTL" wait c1 "$EV" --timeout 10 > "$WORK/wait.out" 2>&1 &
WAIT_PID=$!
sleep 0.5
check "rename c1 c1new" expect 0 dm rename c1 c1new
check "ls shows c1new, not c1" bash -c 'o=$(timeout 10 "$1" --control "$2" ls) && grep -q "^c1new	(253:2)" <<<"$o" && ! grep -q "^c1	" <<<"$o"' _ "$DMNBD" "$CTL"
check "the new name is an export" is "$(nbdsize c1new)" 4194304
check "the old name is not an export" not has_export c1
check "a connection to the old name is refused" refused c1
check "info c1 (old name) refused (1)" expect 1 dm info c1
check "rename raised an event: 'wait c1 $EV' woke up (exit 0)" wait "$WAIT_PID"
check "event number after rename > $EV" bash -c '[ "$(ifield c1new event_nr)" -gt "$1" ]' _ "$EV"
check "wait c1new 0 returns at once once an event happened" expect 0 dm wait c1new 0 --timeout 5
check "rename to an existing name refused (1)" expect 1 dm rename c1new c2
check "rename of an unknown device refused (1)" expect 1 dm rename nosuch other

# ---- unknown device, for every verb taking a name ----
for v in "info" "table" "status" "deps" "clear" "suspend" "resume" "remove" "message 0 x" "wait 0 --timeout 1"; do
  set -- $v
  check "$1 nosuch: exit 1" expect 1 dm "$1" nosuch "${@:2}"
  check "$1 nosuch: message on stderr" test -n "$ERR"
done
check "load nosuch: exit 1" expect 1 dm load nosuch --table "0 8 zero"
check "reload nosuch: exit 1" expect 1 dm reload nosuch --table "0 8 zero"
check "--json info nosuch: ok false, errno ENXIO(6) or ENODEV(19)" bash -c '! o=$(timeout 10 "$1" --control "$2" --json info nosuch) && "$3" -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d[\"ok\"] is False and d[\"errno\"] in (6,19) and d[\"error\"] else 1)" "$o"' _ "$DMNBD" "$CTL" "$PY"

# ---- bad tables: error names line N and target with the kernel's reason; live table untouched ----
badload() {  # badload DESC EXPECTED-SUBSTRING TABLE
  check "load base, $1: exit 1" expect 1 dm load base --table "$3"
  check "load base, $1: error '$2'" err_has "$2"
  check "load base, $1: live table untouched" bash -c '[ "$(timeout 10 "$1" --control "$2" table base)" = "$(cat "$3")" ]' _ "$DMNBD" "$CTL" "$WORK/split.table"
  check "load base, $1: no inactive table" bash -c '[ "$(ifield base inactive_table)" = False ]'
}
badload "gap" "line 2: zero: Gap in table" "0 100 zero
200 100 zero"
badload "unknown target" "line 1: nosuchtarget: unknown target type" "0 100 nosuchtarget"
badload "missing backing file" "line 1: linear: Device lookup failed" "0 100 linear $WORK/missing.img 0"
badload "zero length" "line 1: zero: zero-length target" "0 0 zero"
badload "zero with arguments" "line 1: zero: No arguments required" "0 100 zero extra"
badload "linear past the end of its device" "line 2: linear:" "0 100 zero
100 99999 linear $WORK/b.img 0"
check "reload base with a bad table: exit 1" expect 1 dm reload base --table "0 100 nosuchtarget"
check "reload base with a bad table: live table untouched" bash -c '[ "$(timeout 10 "$1" --control "$2" table base)" = "$(cat "$3")" ]' _ "$DMNBD" "$CTL" "$WORK/split.table"
check "reload base with a bad table: base not left suspended" bash -c '[ "$(ifield base state)" = ACTIVE ] && [ "$(ifield top state)" = ACTIVE ]'
check "base data still readable after the refused loads" bash -c 'cmp <(nbdread base 0 1048576) <(head -c 1048576 "$1")' _ "$WORK/a.img"
# a good inactive table survives a refused load? (kernel: a failed load leaves the previous inactive table)
check "create with a bad table: exit 1" expect 1 dm create bad --table "0 100 zero
50 100 zero"
check "create with a bad table: device not created" bash -c '! timeout 10 "$1" --control "$2" ls | grep -q "^bad	"' _ "$DMNBD" "$CTL"
check "create with a bad table: no export" not has_export bad

# ---- stacking cycles ----
check "cycle base -> top -> base refused (1)" expect 1 dm load base --table "0 32768 linear top 0"
check "... error mentions the cycle" bash -c 'grep -qi "cycle" <<<"$1"' _ "$ERR"
check "self-reference base -> base refused (1)" expect 1 dm load base --table "0 32768 linear base 0"
check "3-device cycle refused: create t3 on top, then load base on t3" bash -c 'timeout 10 "$1" --control "$2" create t3 --table "0 32768 linear top 0" && ! timeout 10 "$1" --control "$2" load base --table "0 32768 linear t3 0"' _ "$DMNBD" "$CTL"
check "no inactive table left behind by the refused cycles" bash -c '[ "$(ifield base inactive_table)" = False ]'
check "deps t3: (253, 1)" bash -c '[ "$(timeout 10 "$1" --control "$2" deps t3)" = "1 dependencies	: (253, 1)" ]' _ "$DMNBD" "$CTL"
check "remove t3" expect 0 dm remove t3

# ---- busy remove: open by an NBD connection ----
cat > "$WORK/hold.py" <<'PY'
# hold.py URI DIR: connect, write, signal DIR/ready, wait for DIR/go, then
# read + write once more and record the outcome (ok or errno) in DIR/result.
import nbd, os, sys, time
uri, d = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b"\xab" * 4096, 0)
open(os.path.join(d, "ready"), "w").write("ready\n")
end = time.time() + 60
while not os.path.exists(os.path.join(d, "go")) and time.time() < end:
    time.sleep(0.05)
res = []
for name, op in (("read", lambda: h.pread(4096, 0)), ("write", lambda: h.pwrite(b"\xcd" * 4096, 0))):
    try:
        op()
        res.append(name + " ok")
    except nbd.Error as e:
        res.append("%s %s" % (name, e.errno))
open(os.path.join(d, "result"), "w").write("\n".join(res) + "\n")
try:
    h.shutdown()
except nbd.Error:
    pass
PY
HOLD_PIDS=()
on_cleanup 'for p in "${HOLD_PIDS[@]}"; do kill "$p"; done'
# hold NAME DIR: start a holder, wait until it is connected
hold() {
  mkdir -p "$2"; rm -f "$2"/{ready,go,result}
  timeout 90 "$PY" "$WORK/hold.py" "$(uri "$1")" "$2" > "$2/log" 2>&1 &
  HOLD_PID=$!; HOLD_PIDS+=("$HOLD_PID")
  local i; for i in $(seq 200); do [ -e "$2/ready" ] && return 0; sleep 0.05; done
  echo "#   holder did not connect: $(cat "$2/log")"; return 1
}
release() { touch "$1/go"; wait "$HOLD_PID"; }

check "create busy (linear on b.img)" expect 0 dm create busy --table "0 4096 linear $WORK/b.img 4096"
check "holder connects to busy" hold busy "$WORK/h1"
check "info busy: open count 1 while connected" bash -c '[ "$(ifield busy open_count)" = 1 ]'
check "remove busy while connected: exit 1" expect 1 dm remove busy
check "... EBUSY text" err_has "busy"
check "--json remove busy: errno 16" bash -c '! o=$(timeout 10 "$1" --control "$2" --json remove busy) && "$3" -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d[\"ok\"] is False and d[\"errno\"] == 16 else 1)" "$o"' _ "$DMNBD" "$CTL" "$PY"
check "busy still listed and exported" bash -c 'timeout 10 "$1" --control "$2" ls | grep -q "^busy	" && has_export busy' _ "$DMNBD" "$CTL"
check "holder finishes (read+write ok)" release "$WORK/h1"
check "holder: read and write ok" is "$(cat "$WORK/h1/result" 2>/dev/null | tr '\n' ' ')" "read ok write ok "
check "busy data landed in b.img" bash -c 'cmp <(dd if="$1" bs=512 skip=4096 count=8 status=none) <(head -c 4096 /dev/zero | tr "\0" "\315")' _ "$WORK/b.img"
sleep 0.2
check "info busy: open count back to 0" bash -c '[ "$(ifield busy open_count)" = 0 ]'
check "remove busy after the client left" expect 0 dm remove busy
check "busy gone from ls" bash -c '! timeout 10 "$1" --control "$2" ls | grep -q "^busy	"' _ "$DMNBD" "$CTL"
check "busy no longer an export" not has_export busy
check "a new connection to busy is refused" refused busy

# ---- busy remove: open by an upper device's table ----
check "remove base (top's table uses it): exit 1" expect 1 dm remove base
check "... EBUSY" bash -c '! o=$(timeout 10 "$1" --control "$2" --json remove base) && "$3" -c "import json,sys; sys.exit(0 if json.loads(sys.argv[1])[\"errno\"] == 16 else 1)" "$o"' _ "$DMNBD" "$CTL" "$PY"
check "base still there and readable" bash -c 'cmp <(nbdread base 0 65536) <(head -c 65536 "$1")' _ "$WORK/a.img"
check "an inactive table on top that uses base also holds it" bash -c 'timeout 10 "$1" --control "$2" create up2 --table "0 8 zero" && timeout 10 "$1" --control "$2" load up2 --table "0 32768 linear base 0"' _ "$DMNBD" "$CTL"
check "base open count 2 (top live + up2 inactive)" bash -c '[ "$(ifield base open_count)" = 2 ]'
check "clear up2 releases base" bash -c 'timeout 10 "$1" --control "$2" clear up2 && [ "$(ifield base open_count)" = 1 ]' _ "$DMNBD" "$CTL"
check "remove up2" expect 0 dm remove up2

# ---- remove --force with a connected client ----
check "create forced (linear on b.img)" expect 0 dm create forced --table "0 4096 linear $WORK/b.img 0"
check "holder connects to forced" hold forced "$WORK/h2"
check "remove --force forced while connected: exit 0" expect 0 dm remove --force forced
check "forced gone from ls" bash -c '! timeout 10 "$1" --control "$2" ls | grep -q "^forced	"' _ "$DMNBD" "$CTL"
check "forced no longer an export" not has_export forced
check "a new connection to forced is refused" refused forced
check "holder finishes" release "$WORK/h2"
check "holder's I/O after the forced remove: EIO" is "$(cat "$WORK/h2/result" 2>/dev/null | tr '\n' ' ')" "read EIO write EIO "

# ---- --json output parses ----
for v in "ls" "info" "info base" "table" "table base" "status base" "deps" "deps top" "targets"; do
  check "--json $v parses, ok true" expect 0 dm --json $v
  check "--json $v: ok is true" jtrue 'd["ok"] is True'
done
check "--json ls: names, 253 majors" bash -c 'o=$(timeout 10 "$1" --control "$2" --json ls) && "$3" -c "import json,sys; d=json.loads(sys.argv[1]); n={x[\"name\"]:x for x in d[\"devices\"]}; sys.exit(0 if n[\"base\"][\"major\"]==253 and n[\"base\"][\"minor\"]==0 and n[\"top\"][\"minor\"]==1 else 1)" "$o"' _ "$DMNBD" "$CTL" "$PY"
check "--json table base: lines" bash -c 'o=$(timeout 10 "$1" --control "$2" --json table base) && "$3" -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d[\"devices\"][0][\"lines\"]==open(sys.argv[2]).read().splitlines() else 1)" "$o" "$4"' _ "$DMNBD" "$CTL" "$PY" "$WORK/split.table"
check "--json deps top: names base" bash -c 'o=$(timeout 10 "$1" --control "$2" --json deps top) && "$3" -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d[\"devices\"][0][\"deps\"]==[{\"name\":\"base\",\"major\":253,\"minor\":0}] else 1)" "$o"' _ "$DMNBD" "$CTL" "$PY"
check "--json info base: every documented field" expect 0 dm --json info base
check "... fields" jtrue 'set(["name","state","read_only","live_table","inactive_table","open_count","event_nr","major","minor","targets","sectors","description","suspended_waits"]) <= set(d["devices"][0]) and d["devices"][0]["description"]=="base device" and d["devices"][0]["targets"]==2'
check "--json message refused: still JSON" bash -c '! o=$(timeout 10 "$1" --control "$2" --json message base 0 x) && "$3" -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d[\"ok\"] is False and isinstance(d[\"errno\"], int) else 1)" "$o"' _ "$DMNBD" "$CTL" "$PY"

# ---- exit codes: 2 usage, 3 no server ----
check "no verb: exit 2" expect 2 dm
check "unknown verb: exit 2" expect 2 dm frobnicate
check "create without a name: exit 2" expect 2 dm create
check "rename with one name: exit 2" expect 2 dm rename base
check "unknown option: exit 2" expect 2 dm info --bogus
check "table file that does not exist: exit 2" expect 2 dm load base "$WORK/no-such-file.table"
check "no socket at --control: exit 3" expect 3 timeout 20 "$DMNBD" --control "$WORK/nothing.sock" ls
check "... says so on stderr" test -n "$ERR"
check "DMNBD_CONTROL pointing nowhere: exit 3" expect 3 env DMNBD_CONTROL="$WORK/nothing.sock" timeout 20 "$DMNBD" info base
check "DMNBD_CONTROL pointing at the server: works" expect 0 env DMNBD_CONTROL="$CTL" timeout 20 "$DMNBD" info base
"$PY" -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$WORK/stale.sock"
check "stale socket (nobody listening): exit 3" expect 3 timeout 20 "$DMNBD" --control "$WORK/stale.sock" ls

# ---- raw socket: malformed, odd and oversized requests; the server survives ----
cat > "$WORK/raw.py" <<'PY'
import json, socket, sys, threading, time
path = sys.argv[1]
bad = 0
def conn():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    return s
def readline(s):
    buf = b""
    while not buf.endswith(b"\n"):
        c = s.recv(65536)
        if not c:
            break
        buf += c
    return buf
def ask(payload):
    s = conn()
    s.sendall(payload)
    r = readline(s)
    s.close()
    return r
def t(desc, cond):
    global bad
    print(("ok - " if cond else "not ok - ") + desc)
    if not cond:
        bad += 1
def err_response(r, errnos=None):
    try:
        d = json.loads(r)
    except ValueError:
        return False
    return (d.get("ok") is False and isinstance(d.get("error"), str) and d["error"] != ""
            and isinstance(d.get("errno"), int) and (errnos is None or d["errno"] in errnos))
def good(r):
    try:
        return json.loads(r).get("ok") is True
    except ValueError:
        return False

for desc, payload in [
        ("malformed JSON", b"{not json\n"),
        ("plain garbage", b"hello world\n"),
        ("binary garbage", bytes(range(1, 256)).replace(b"\n", b"") + b"\n"),
        ("JSON array", b"[1,2,3]\n"),
        ("JSON string", b"\"ls\"\n"),
        ("no cmd", b"{\"name\":\"base\"}\n"),
        ("unknown cmd", b"{\"cmd\":\"frobnicate\"}\n"),
        ("cmd not a string", b"{\"cmd\":42}\n"),
        ("name not a string", b"{\"cmd\":\"info\",\"name\":5}\n"),
        ("load without a table", b"{\"cmd\":\"load\",\"name\":\"base\"}\n"),
        ("create without a name", b"{\"cmd\":\"create\",\"table\":\"0 8 zero\"}\n"),
        ("message with a negative sector", b"{\"cmd\":\"message\",\"name\":\"base\",\"sector\":-1,\"words\":[\"x\"]}\n"),
        ("message words not a list", b"{\"cmd\":\"message\",\"name\":\"base\",\"sector\":0,\"words\":\"x\"}\n"),
        ("trailing garbage after the object", b"{\"cmd\":\"ls\"} junk\n"),
        ]:
    r = ask(payload)
    t("raw %s: JSON error response (got %r)" % (desc, r[:200]), err_response(r))

r = ask(b"{\"cmd\":\"ls\"}\n")
t("raw ls: ok", good(r))
# a bad line does not end the conversation: the next line on the same connection is answered
s = conn()
s.sendall(b"garbage\n{\"cmd\":\"ls\"}\n{\"cmd\":\"targets\"}\n")
f = s.makefile("rb")
r1, r2, r3 = f.readline(), f.readline(), f.readline()
t("pipelined: error, then ls ok, then targets ok", err_response(r1) and good(r2) and good(r3))
s.close()
# CRLF line ending
r = ask(b"{\"cmd\":\"ls\"}\r\n")
t("CRLF-terminated request: ok or a JSON error, not silence (got %r)" % r[:100], good(r) or err_response(r))

# oversized (> 1 MiB) request: a JSON error, then the server may close
s = conn()
big = b"{\"cmd\":\"ls\",\"pad\":\"" + b"a" * (2 * 1024 * 1024) + b"\"}\n"
sent = 0
try:
    while sent < len(big):
        sent += s.send(big[sent:sent + 65536])
except OSError:
    pass
try:
    r = readline(s)
except OSError as e:
    r = b""
t("oversized request: JSON error response (got %r)" % r[:200], err_response(r))
s.close()
# oversized without any newline at all, then hang up
s = conn()
try:
    s.sendall(b"x" * (1536 * 1024))
except OSError:
    pass
s.close()
# a client that sends half a line and idles does not block others
idle = conn()
idle.sendall(b"{\"cmd\":\"l")
idle2 = conn()          # and one that sends nothing
ok = all(good(ask(b"{\"cmd\":\"info\",\"name\":\"base\"}\n")) for _ in range(20))
t("20 requests answered while two other clients idle mid-request", ok)
idle.sendall(b"s\"}\n")
t("the idle client's completed line is answered", good(readline(idle)))
idle.close(); idle2.close()
# a client that connects and hangs up at once
for _ in range(20):
    c = conn(); c.close()
# 24 clients at once, each with several requests
results = []
def worker(i):
    good_all = True
    try:
        c = conn()
        f = c.makefile("rb")
        for cmd in (b"ls", b"info", b"status", b"table", b"deps", b"targets"):
            c.sendall(b"{\"cmd\":\"" + cmd + b"\"}\n")
            good_all = good_all and good(f.readline())
        c.close()
    except OSError:
        good_all = False
    results.append(good_all)
ths = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
for th in ths: th.start()
for th in ths: th.join(30)
t("24 concurrent raw clients x 6 requests all answered ok", len(results) == 24 and all(results))
r = ask(b"{\"cmd\":\"ls\"}\n")
t("server still answers after all that", good(r))
sys.exit(1 if bad else 0)
PY
check "raw socket probe" timeout 120 "$PY" "$WORK/raw.py" "$CTL"
check "server process still alive" kill -0 "$SERVER_PID"
check "NBD still served after the raw probe" bash -c 'cmp <(nbdread top 0 65536) <(head -c 65536 "$1")' _ "$WORK/a.img"

# ---- several CLI clients at once, mixing queries with create/load/resume/remove ----
cli_worker() {  # cli_worker N: 15 rounds on its own device + shared queries
  local n=$1 i
  for i in $(seq 15); do
    timeout 20 "$DMNBD" --control "$CTL" create "w$n" --table "0 $((2048 + i * 8)) zero" || { echo "create w$n round $i"; return 1; }
    timeout 20 "$DMNBD" --control "$CTL" info "w$n" > /dev/null || { echo "info w$n round $i"; return 1; }
    timeout 20 "$DMNBD" --control "$CTL" ls > /dev/null || { echo "ls round $i"; return 1; }
    timeout 20 "$DMNBD" --control "$CTL" reload "w$n" --table "0 4096 zero" || { echo "reload w$n round $i"; return 1; }
    timeout 20 "$DMNBD" --control "$CTL" status > /dev/null || { echo "status round $i"; return 1; }
    timeout 20 "$DMNBD" --control "$CTL" table base > /dev/null || { echo "table round $i"; return 1; }
    timeout 20 "$DMNBD" --control "$CTL" remove "w$n" || { echo "remove w$n round $i"; return 1; }
  done
}
WPIDS=()
for n in 1 2 3 4; do cli_worker "$n" > "$WORK/worker$n.log" 2>&1 & WPIDS+=($!); done
for n in 1 2 3 4; do
  check "CLI worker $n (15 x create/info/ls/reload/status/table/remove concurrently)" wait "${WPIDS[$((n - 1))]}"
done
check "no worker devices left behind" bash -c '! timeout 10 "$1" --control "$2" ls | grep -q "^w[0-9]"' _ "$DMNBD" "$CTL"
check "minors are not reused while live: base 0, top 1 unchanged" bash -c 'o=$(timeout 10 "$1" --control "$2" ls) && grep -qx "base	(253:0)" <<<"$o" && grep -qx "top	(253:1)" <<<"$o"' _ "$DMNBD" "$CTL"

# ---- default control path: control.sock next to the config ----
dmnbd_stop || fail "$STOP_REASON"
mkdir -p "$WORK/second"
cat > "$WORK/second/cfg.yaml" <<YAML
listen: [ "unix://$WORK/second/nbd.sock" ]
devices:
  - name: z
    table: "0 2048 zero"
YAML
dmnbd_start "$WORK/second/cfg.yaml"
for i in $(seq 50); do [ -S "$WORK/second/control.sock" ] && break; sleep 0.1; done
check "default control socket: control.sock next to the config" test -S "$WORK/second/control.sock"
check "default control socket mode 0600" is "$(stat -c %a "$WORK/second/control.sock" 2>/dev/null)" 600
check "DMNBD_CONTROL reaches it" expect 0 env DMNBD_CONTROL="$WORK/second/control.sock" timeout 20 "$DMNBD" ls
check "... z (253:0)" out_line "z	(253:0)"
pass
