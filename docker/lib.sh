# shellcheck shell=bash
# lib.sh - sourced by docker/demo.sh and docker/bare_build.sh.
#
#   prepare_base_image    installs the host tools (the docker role of
#                         .ci/packages), then sets BASE to a Debian bookworm
#                         image that runs: $DMNBD_BASE, else the standard image
#                         if present or pullable, else a minbase made with
#                         debootstrap and "podman import"ed (no registry needed)
#
# The caller defines log, skip (exit 77) and die (exit 1), and sets HERE,
# CACHE, PY, STD_BASE and MINBASE.

prepare_base_image() {
  [ "$(id -u)" = 0 ] || skip "needs root (rootful podman)"
  mkdir -p "$CACHE" || skip "cannot create $CACHE"
  # shellcheck source=.ci/packages.sh
  source "$HERE/../.ci/packages.sh"
  local missing
  missing=$(packages_missing docker | tr '\n' ' ')
  if [ -n "${missing// /}" ]; then
    log "installing $missing"
    packages_install docker || missing_tools "cannot install $missing"
  fi
  podman info > "$CACHE/podman-info.log" 2>&1 \
    || skip "podman cannot run here: $(tail -1 "$CACHE/podman-info.log")"
  # the real test of "can run containers" comes with the base image below

  BASE=${DMNBD_BASE:-}
  if [ -z "$BASE" ]; then
    if podman image exists "$STD_BASE"; then BASE=$STD_BASE
    elif timeout 45 podman pull -q "$STD_BASE" > "$CACHE/pull.log" 2>&1; then BASE=$STD_BASE
    else
      log "$STD_BASE cannot be pulled (no registry): using a debootstrapped bookworm minbase"
      BASE=$MINBASE
    fi
  fi
  if [ "$BASE" = "$MINBASE" ] && ! podman image exists "$MINBASE"; then
    if [ ! -s "$CACHE/bookworm-minbase.tar" ]; then
      # the Debian mirror exactly as apt on this host is configured
      local mirror root
      mirror=$(apt-cache policy 2>/dev/null | awk '$1 ~ /^[0-9]+$/ && $3 == "bookworm/main" {print $2; exit}')
      [ -n "$mirror" ] || skip "no bookworm/main source in apt's configuration (run apt-get update)"
      log "debootstrap --variant=minbase bookworm from $mirror"
      root=$(mktemp -d /tmp/minbase.XXXXXX)
      if ! timeout 900 debootstrap --variant=minbase bookworm "$root" "$mirror" > "$CACHE/debootstrap.log" 2>&1; then
        rm -rf "$root"; skip "debootstrap failed, Debian's archive not reachable? (see $CACHE/debootstrap.log)"
      fi
      rm -f "$root"/var/cache/apt/archives/*.deb; rm -rf "$root"/var/lib/apt/lists/*
      tar -C "$root" -cf "$CACHE/bookworm-minbase.tar.tmp" . && mv "$CACHE/bookworm-minbase.tar.tmp" "$CACHE/bookworm-minbase.tar"
      rm -rf "$root"
    fi
    podman import --change 'CMD ["/bin/bash"]' "$CACHE/bookworm-minbase.tar" "$MINBASE" > "$CACHE/import.log" 2>&1 \
      || die "podman import of the minbase tarball failed"
    log "imported $MINBASE"
  fi
  timeout 120 podman run --rm --network none "$BASE" true > "$CACHE/run-probe.log" 2>&1 \
    || skip "podman cannot run a container here: $(tail -2 "$CACHE/run-probe.log" | tr '\n' ' ')"
}

# A tool the test needs cannot be had: under CI a failure, elsewhere a skip.
missing_tools() {
  if [ "$(packages_skip_status)" = 77 ]; then skip "$*"; else die "$* (CI=true: a missing tool fails)"; fi
}

# podman build of docker/Dockerfile from the repository root; extra arguments
# (--target, -t) are passed on. Output goes to LOG.
podman_build() { # LOG ARGS...
  local log_file=$1; shift
  local ignore=()
  podman build --help 2>/dev/null | grep -q -- --ignorefile && ignore=(--ignorefile "$HERE/Dockerfile.dockerignore")
  timeout 1500 podman build --pull=never --network host --layers --build-arg "BASE=$BASE" \
    "${ignore[@]}" -f "$HERE/Dockerfile" "$@" "$HERE/.." > "$log_file" 2>&1
}
