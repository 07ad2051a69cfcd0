#!/usr/bin/env bash
# The side-by-side benchmark: dmnbd against nbdkit, qemu-nbd and nbd-server on
# one backing file on a tmpfs, same fio jobs, interleaved. Not part of ctest:
# timings belong in a benchmark run, never in a unit test.
#
#   bash tests/bench/run.sh                  # full run (about 10 minutes)
#   RUNTIME=2 ROUNDS=1 bash tests/bench/run.sh --jobs randread-4k-qd32 --servers dmnbd,nbdkit-file
#   bash tests/bench/run.sh --help
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

need=()
for p in fio:fio nbdkit:nbdkit qemu-nbd:qemu-utils nbd-server:nbd-server nbdinfo:libnbd-bin; do
  command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x "$root/build/dmnbd" ] || bash "$root/.ci/quickstart" build

dir=${BENCH_DIR:-/tmp/dmnbd-bench}
mkdir -p "$dir"
mounted=0
if ! mountpoint -q "$dir"; then
  mount -t tmpfs -o size=1300m tmpfs "$dir" && mounted=1
fi
cleanup() { [ "$mounted" = 1 ] && umount "$dir"; }
trap cleanup EXIT
# The system python: fast to start, and the one with Debian's packages.
/usr/bin/python3 "$here/bench.py" --dir "$dir" --dmnbd "$root/build/dmnbd" "$@"
