#!/usr/bin/env bash
# The side-by-side benchmark: dmnbd against nbdkit, qemu-nbd and nbd-server on
# one backing file on a tmpfs, same fio jobs, interleaved. Not part of ctest:
# timings belong in a benchmark run, never in a unit test.
#
#   bash tests/bench/run.sh                  # full run (about 10 minutes)
#   RUNTIME=2 ROUNDS=1 bash tests/bench/run.sh --jobs randread-4k-qd32 --servers dmnbd,nbdkit-file
#   bash tests/bench/run.sh --help
#   bash tests/bench/run.sh snapshot         # the snapshot benchmark (snapshot.py)
#   bash tests/bench/run.sh mirror           # the mirror benchmark (mirror.py)
#   bash tests/bench/run.sh raid             # the raid benchmark (raid.py)
#   bash tests/bench/run.sh raid5            # raid5/raid6 against striped (raid5.py)
#   RUNTIME=1 ROUNDS=1 bash tests/bench/run.sh raid5   # the same, short (about two minutes)
#   bash tests/bench/run.sh raid5 --only capped          # its capped-legs part alone (about a minute)
#   bash tests/bench/run.sh crypt            # the crypt and LUKS benchmark (crypt.py)
#   bash tests/bench/run.sh thin             # thin-pool and thin against linear and qcow2 (thin.py)
#   RUNTIME=1 ROUNDS=1 bash tests/bench/run.sh thin    # the same, short (about a minute and a half)
#   bash tests/bench/run.sh thin --only memory          # one part: provisioned, first, snapshot, memory
#   DMNBD=/path/to/dmnbd bash tests/bench/run.sh raid5   # that binary, no build
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

bash "$root/.ci/packages.sh" install bench   # the bench role of the one package list
dmnbd=${DMNBD:-$root/build/dmnbd}   # DMNBD given: that binary, never a build
[ -n "${DMNBD:-}" ] || [ -x "$dmnbd" ] || bash "$root/.ci/quickstart" build

dir=${BENCH_DIR:-/tmp/dmnbd-bench}
mkdir -p "$dir"
mounted=0
if ! mountpoint -q "$dir"; then
  mount -t tmpfs -o size=1300m tmpfs "$dir" && mounted=1
fi
cleanup() { [ "$mounted" = 1 ] && umount "$dir"; }
trap cleanup EXIT
script=bench.py
case ${1:-} in snapshot|mirror|raid|raid5|crypt|thin) script=$1.py; shift;; esac
# The system python: fast to start, and the one with Debian's packages.
/usr/bin/python3 "$here/$script" --dir "$dir" --dmnbd "$dmnbd" "$@"
