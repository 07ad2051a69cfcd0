#!/usr/bin/env bash
# packages.sh - reads the one package list, .ci/packages.
#
#   bash .ci/packages.sh list ROLE...      the packages of these roles, one per line
#   bash .ci/packages.sh missing ROLE...   those of them not installed
#   bash .ci/packages.sh install ROLE...   installs the missing ones (apt-get, as root)
#
# Sourced, it defines the same three as functions (packages_list, ...) and
# packages_skip_status: the exit status for a test that cannot get a tool it
# needs. Under CI=true that is a failure (1); elsewhere a skip (77).

PACKAGES_FILE=${PACKAGES_FILE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/packages}

packages_list() { # ROLE...
  [ -r "$PACKAGES_FILE" ] || { echo "packages.sh: cannot read $PACKAGES_FILE" >&2; return 1; }
  awk -v want=" $* " '
    /^[[:space:]]*(#|$)/ { next }
    { n = split($2, roles, ","); for (i = 1; i <= n; i++) if (index(want, " " roles[i] " ")) { print $1; next } }
  ' "$PACKAGES_FILE"
}

packages_missing() { # ROLE...
  local p
  for p in $(packages_list "$@"); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"
  done
}

# Installs what is missing; a stale package index is refreshed once and the
# install retried. Returns non-zero, saying why, when that cannot be done.
packages_install() { # ROLE...
  local missing
  missing=$(packages_missing "$@" | tr '\n' ' ')
  [ -n "${missing// /}" ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to install packages (or install them yourself): $missing" >&2
    return 1
  fi
  echo "==> installing: $missing" >&2
  local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install $missing > /tmp/dmnbd-apt.log 2>&1 && return 0
  apt-get -q -o DPkg::Lock::Timeout=600 update >> /tmp/dmnbd-apt.log 2>&1 \
    || { tail -20 /tmp/dmnbd-apt.log >&2; echo "apt-get update failed (see /tmp/dmnbd-apt.log)" >&2; return 1; }
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install $missing >> /tmp/dmnbd-apt.log 2>&1 \
    || { tail -20 /tmp/dmnbd-apt.log >&2; echo "apt-get install $missing failed (see /tmp/dmnbd-apt.log)" >&2; return 1; }
}

packages_skip_status() {
  if [ "${CI:-}" = true ]; then echo 1; else echo 77; fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  verb=${1:-}
  shift || true
  case $verb in
    list | missing | install) "packages_$verb" "$@" ;;
    *) echo "usage: bash .ci/packages.sh list|missing|install ROLE..." >&2; exit 2 ;;
  esac
fi
