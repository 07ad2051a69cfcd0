#!/bin/bash
# clang_format.sh - every C and C++ file the project tracks follows .clang-format
# (ctest: style.clang_format). Fix with: clang-format -i FILE...
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
if ! command -v clang-format > /dev/null; then
  echo "clang-format is not installed (package clang-format, role test in .ci/packages)"
  [ "${CI:-}" = true ] && exit 1
  exit 77
fi
if git rev-parse --git-dir > /dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.c' '*.h')
else
  mapfile -t files < <(find include server targets config tests -name '*.[ch]pp' -o -name '*.[ch]')
fi
[ ${#files[@]} -gt 0 ] || { echo "no source files found"; exit 1; }
if ! clang-format --dry-run -Werror "${files[@]}" 2> /tmp/clang-format.$$; then
  grep -E '^[^ ].*: (error|warning):' /tmp/clang-format.$$ | cut -d: -f1 | sort | uniq -c \
    | sed 's/^/not formatted: /'
  rm -f /tmp/clang-format.$$
  echo "FAIL style.clang_format: run clang-format -i on the files above"
  exit 1
fi
rm -f /tmp/clang-format.$$
echo "PASS style.clang_format: ${#files[@]} files"
