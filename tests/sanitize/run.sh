#!/bin/bash
# run.sh - the unit and black-box tests once more, in a build with
# AddressSanitizer and UndefinedBehaviorSanitizer (ctest: sanitize.asan_ubsan).
# A report anywhere fails: in a unit test directly, in the server because it
# then exits non-zero and every black-box test requires a clean exit.
#   bash tests/sanitize/run.sh [BUILD_DIR]     default: build-sanitize beside build
# The build directory is configured once and rebuilt incrementally after that.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$ROOT/build-sanitize}
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=0}
# Tests that measure time or memory relax what they assert (reload counts,
# peak RSS): the build runs slower and ASan holds freed memory in quarantine.
export DMNBD_SANITIZED=1
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  # -O1 -g1: the sanitizer build compiles in about half the time of -O2 -g.
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DDMNBD_SANITIZE=address,undefined > /tmp/dmnbd-sanitize-configure.log 2>&1 \
    || { cat /tmp/dmnbd-sanitize-configure.log; echo "FAIL sanitize: configure"; exit 1; }
fi
cmake --build "$BUILD" -j "$(nproc)" > "$BUILD/build.log" 2>&1 \
  || { tail -40 "$BUILD/build.log"; echo "FAIL sanitize: build"; exit 1; }
# The kernel, container and style tests exercise nothing the sanitizers see.
ctest --test-dir "$BUILD" -L 'unit|protocol|interop|control|targets' -j "$(nproc)" \
  --output-on-failure > "$BUILD/ctest.log" 2>&1
rc=$?
grep -E '^(not ok|.*(ERROR|runtime error): )' -r "$BUILD/ctest.log" | head -20
tail -15 "$BUILD/ctest.log"
[ "$rc" = 0 ] && echo "PASS sanitize.asan_ubsan" || echo "FAIL sanitize.asan_ubsan (see $BUILD/ctest.log)"
exit "$rc"
