#!/bin/bash
# bare_build.sh - proves the package list complete (ctest: docker.bare_build).
# On a bare Debian bookworm image (the same base the container demo uses: a
# debootstrapped minbase when no registry can be reached) it installs only the
# build role of .ci/packages, builds dmnbd and its unit tests, and runs them
# (docker/Dockerfile, stage build, which the container demo's image reuses
# from the layer cache). A build package missing from the list fails here, on
# any machine, however much the host has installed.
# Exit: 0 pass, 1 fail, 77 = podman cannot run here.
# Env: DMNBD_BASE, DMNBD_DOCKER_CACHE (/var/cache/dmnbd/docker), CONTAINERS_CONF.
set -uo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
HERE=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}
CACHE=${DMNBD_DOCKER_CACHE:-/var/cache/dmnbd/docker}
STD_BASE=docker.io/library/debian:bookworm
MINBASE=localhost/bookworm-minbase:latest
PY=/usr/bin/python3
IMG=localhost/dmnbd-unit-tests:latest
TEST_NAME=docker.bare_build

T0=$(date +%s)
log() { echo "# [+$(($(date +%s) - T0))s] $*" >&2; }
skip() { echo "SKIPPED $TEST_NAME: $*"; exit 77; }
die() { echo "not ok - $*"; echo "FAIL $TEST_NAME: $*"; exit 1; }
cleanup() { timeout 60 podman rmi -f "$IMG" > /dev/null 2>&1; }
trap cleanup EXIT

# shellcheck source=docker/lib.sh
source "$HERE/lib.sh"
prepare_base_image
echo "ok - base image $BASE runs"

LOG=$CACHE/bare-build.log
log "podman build --target build (build role only: $(packages_list build | tr '\n' ' ')); log: $LOG"
if ! podman_build "$LOG" --target build -t "$IMG"; then
  tail -40 "$LOG" | sed 's/^/#   build| /' >&2
  die "building or unit-testing on bare $BASE with only the build packages failed (see $LOG)"
fi
# From the image, not the log: a build served from the layer cache prints nothing.
summary=$(timeout 60 podman run --rm --network none "$IMG" cat /out/unit-tests.txt | grep -E '[0-9]+% tests passed')
[ -n "$summary" ] || die "no unit-test summary in the build stage's /out/unit-tests.txt"
echo "ok - bare $BASE + build packages: dmnbd and its unit tests build; $summary"
echo "PASS $TEST_NAME ($(($(date +%s) - T0)) s)"
