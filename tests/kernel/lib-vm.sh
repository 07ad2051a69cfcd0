# shellcheck shell=bash
# lib-vm.sh - a throw-away QEMU guest running Debian's own kernel, with the
# kernel's nbd client and device-mapper, for tests/kernel/run.sh.  Sourced.
#
#   vm_prepare                  install host tools, download the kernel and the
#                               guest userland (.debs), build the base initramfs
#                               (cached); exits 77 when that is impossible
#   vm_boot WORK EXTRA_DIR SOCK OUT_IMG
#                               boot the guest with EXTRA_DIR appended to the
#                               initramfs (it must hold /guest-test.sh), one
#                               virtio disk OUT_IMG (/dev/vda in the guest), and
#                               10.0.2.100:10809 in the guest forwarded to the
#                               unix socket SOCK on the host; serial output in
#                               WORK/console.log; returns QEMU's exit status
#
# Nothing is installed into the host system except the host tools below; the
# guest's packages are fetched with "apt-get download" and unpacked with dpkg -x.
# The guest reaches nothing but SOCK: QEMU user networking with restrict=on
# and one guestfwd rule that runs "socat - UNIX-CONNECT:SOCK" per connection.
#
# Env: DMNBD_VM_CACHE (default /var/cache/dmnbd/vm) downloads + base initramfs;
#      DMNBD_VM_ACCEL=kvm|tcg (default: kvm if a 20 s probe boots, else tcg);
#      DMNBD_VM_TIMEOUT (default 600 s, the whole guest run); DMNBD_VM_MEM (768M);
#      DMNBD_VM_SMP (2).

VM_CACHE=${DMNBD_VM_CACHE:-/var/cache/dmnbd/vm}
VM_TIMEOUT=${DMNBD_VM_TIMEOUT:-600}
VM_MEM=${DMNBD_VM_MEM:-768M}
# Two vCPUs: the nbd driver gets one hardware queue per connection only up to
# the CPU count, so "nbd-client -C 2" needs two CPUs to really use both.
VM_SMP=${DMNBD_VM_SMP:-2}
VM_LIB_FILE=${BASH_SOURCE[0]}
# Guest userland: these packages + their Depends closure.
VM_GUEST_PKGS="busybox-static nbd-client dmsetup e2fsprogs kmod cryptsetup-bin"
# Packages of that closure the initramfs never needs.
VM_SKIP_RE='^(debconf|cdebconf|dpkg|install-info|tar|readline-common|libdebian-installer4|libnewt0\.52|libslang2|libtextwrap1|perl-base|debianutils|base-files|sensible-utils|gcc-12-base|logsave)$'

vm_log() { echo "# [vm] $*" >&2; }
# The environment cannot run the test at all: ctest reports SKIPPED (77).
vm_skip() { echo "SKIP kernel test: $*" >&2; echo "SKIPPED kernel.vm: $*"; exit 77; }
vm_die() { echo "not ok - vm setup: $*"; FIRST_FAIL=${FIRST_FAIL:-vm setup: $*}; exit 1; }

# Installs the vm role of .ci/packages (the one package list). When that
# fails the test cannot run: under CI=true a failure, elsewhere a skip.
_vm_install_tools() {
  # shellcheck source=.ci/packages.sh
  source "$(dirname "$VM_LIB_FILE")/../../.ci/packages.sh"
  [ -z "$(packages_missing vm)" ] && return 0
  vm_log "installing $(packages_missing vm | tr '\n' ' ')"
  packages_install vm && return 0
  if [ "$(packages_skip_status)" = 77 ]; then vm_skip "cannot install the vm packages of .ci/packages"; fi
  vm_die "cannot install the vm packages of .ci/packages (CI=true: a missing tool fails)"
}

vm_prepare() {
  [ "$(id -u)" = 0 ] || vm_skip "needs root (apt-get, and the host side reads root-owned caches)"
  [ "$(uname -m)" = x86_64 ] || vm_skip "the guest is an amd64 Debian kernel; this host is $(uname -m)"
  mkdir -p "$VM_CACHE/debs" || vm_skip "cannot create $VM_CACHE"
  _vm_install_tools

  # Kernel = what linux-image-cloud-amd64 depends on today (nbd, loop, every dm
  # target and virtio as modules, ext4 built in).
  local kpkg pkgs
  kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$kpkg" ]; then
    timeout 300 apt-get update -q -o DPkg::Lock::Timeout=600 > "$VM_CACHE/apt-update.log" 2>&1 \
      || vm_skip "apt-get update failed, Debian's archive is not reachable (see $VM_CACHE/apt-update.log)"
    kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$kpkg" ] || vm_skip "apt knows no linux-image-cloud-amd64 (no Debian bookworm amd64 sources?)"
  fi
  VM_KVER=${kpkg#linux-image-}
  # shellcheck disable=SC2086
  pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
           --no-breaks --no-replaces --no-enhances $VM_GUEST_PKGS 2>/dev/null \
         | grep -v '^ ' | grep -v '^<' | sort -u | grep -Ev "$VM_SKIP_RE" || true)
  [ -n "$pkgs" ] || vm_skip "apt-cache depends $VM_GUEST_PKGS gave nothing"
  local stamp root
  stamp="$VM_CACHE/stamp-$VM_KVER-$( (echo "$pkgs"; sed -n '/^vm_prepare()/,/^}/p' "$VM_LIB_FILE") | md5sum | cut -c1-8)"
  root="$VM_CACHE/root"
  VM_BASE_CPIO="$VM_CACHE/base-$VM_KVER.cpio.gz"
  VM_KERNEL="$VM_CACHE/vmlinuz-$VM_KVER"
  if [ -e "$stamp" ] && [ -s "$VM_BASE_CPIO" ] && [ -s "$VM_KERNEL" ]; then
    vm_log "cached guest: kernel $VM_KVER, $VM_BASE_CPIO"
    return 0
  fi

  local missing=() p deb
  for p in $kpkg $pkgs; do
    ls "$VM_CACHE/debs/${p}_"*.deb >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    vm_log "apt-get download ${#missing[@]} packages (kernel $kpkg + guest userland) into $VM_CACHE/debs"
    (cd "$VM_CACHE/debs" && timeout 900 apt-get download -q -o APT::Sandbox::User=root "${missing[@]}" \
       > "$VM_CACHE/apt-download.log" 2>&1) \
      || vm_skip "apt-get download failed, Debian's archive is not reachable (see $VM_CACHE/apt-download.log)"
  fi
  rm -rf "$root"; mkdir -p "$root"
  for p in $kpkg $pkgs; do
    deb=$(ls -t "$VM_CACHE/debs/${p}_"*.deb | head -1)
    dpkg -x "$deb" "$root" || vm_die "dpkg -x $deb failed"
  done
  local moddir="$root/lib/modules/$VM_KVER"
  [ -e "$root/boot/vmlinuz-$VM_KVER" ] || vm_die "no kernel image in $kpkg"

  vm_log "building the base initramfs"
  local st="$VM_CACHE/stage" ld libpath
  rm -rf "$st"
  mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,etc,proc,sys,dev,run,tmp,mnt,root}
  cp "$root/bin/busybox" "$st/bin/busybox"
  ld="$root/lib64/ld-linux-x86-64.so.2"
  libpath="$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu"
  _vm_copy_bin() { # NAME: binary + its shared libraries, all resolved inside $root
    local name=$1 lib src="" d
    for d in sbin usr/sbin bin usr/bin; do [ -e "$root/$d/$name" ] && { src="$root/$d/$name"; break; }; done
    [ -n "$src" ] || vm_die "$name not found in the unpacked packages"
    cp -L "$src" "$st/sbin/$name"
    "$ld" --library-path "$libpath" --list "$src" | grep -q 'not found' && vm_die "$src: missing libraries"
    for lib in $("$ld" --library-path "$libpath" --list "$src" | awk '/=> \//{print $3}'); do
      case "$lib" in "$root"/*) ;; *) vm_die "library $lib of $src resolved outside $root";; esac
      cp -Ln "$lib" "$st/lib/x86_64-linux-gnu/" 2>/dev/null || true
    done
  }
  for p in nbd-client dmsetup mke2fs e2fsck debugfs kmod cryptsetup veritysetup; do _vm_copy_bin $p; done
  cp -L "$ld" "$st/lib64/"
  cp -a "$root/etc/mke2fs.conf" "$st/etc/" 2>/dev/null || true
  for p in modprobe insmod rmmod lsmod depmod modinfo; do ln -s kmod "$st/sbin/$p"; done
  ln -s mke2fs "$st/sbin/mkfs.ext4"; ln -s e2fsck "$st/sbin/fsck.ext4"

  # Modules: all of drivers/md (every dm target), crypto, nbd, loop, virtio.
  mkdir -p "$st/lib/modules/$VM_KVER"
  (cd "$moddir" && find kernel/drivers/md kernel/crypto kernel/arch/x86/crypto kernel/lib \
      kernel/drivers/virtio kernel/drivers/block/nbd.ko kernel/drivers/block/loop.ko \
      kernel/drivers/block/virtio_blk.ko kernel/drivers/net/virtio_net.ko \
      kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko -name '*.ko*' 2>/dev/null \
    | cpio -pdm --quiet "$st/lib/modules/$VM_KVER")
  cp "$moddir"/modules.builtin* "$moddir"/modules.order "$st/lib/modules/$VM_KVER/"

  cat > "$st/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/mapper
echo /sbin/modprobe > /proc/sys/kernel/modprobe
# kmod's depmod, not busybox's (which writes no .bin indexes for autoloading)
/sbin/depmod -a
echo "NBDVM-BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)"
[ -f /etc/nbdvm.env ] && . /etc/nbdvm.env
if [ -x /guest-test.sh ]; then /guest-test.sh 2>&1; rc=$?; else echo "no /guest-test.sh"; rc=1; fi
echo "NBDVM-EXIT rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
EOF
  chmod +x "$st/init"
  (cd "$st" && find . | cpio -o -H newc --quiet | gzip -1) > "$VM_BASE_CPIO.tmp" || vm_die "cpio failed"
  mv "$VM_BASE_CPIO.tmp" "$VM_BASE_CPIO"
  cp "$root/boot/vmlinuz-$VM_KVER" "$VM_KERNEL"
  rm -rf "$st"; rm -f "$VM_CACHE"/stamp-*; touch "$stamp"
  vm_log "base initramfs $(du -h "$VM_BASE_CPIO" | cut -f1), kernel $VM_KVER"
}

vm_boot() { # WORK EXTRA_DIR SOCK OUT_IMG
  local work=$1 extra=$2 sock=$3 out=$4 accel cpu=() qrc
  (cd "$extra" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/extra.cpio.gz" || vm_die "cpio failed"
  cat "$VM_BASE_CPIO" "$work/extra.cpio.gz" > "$work/initrd.gz"
  local common=(-m "$VM_MEM" -smp "$VM_SMP" -nographic -monitor none -no-reboot -kernel "$VM_KERNEL")
  accel=${DMNBD_VM_ACCEL:-}
  if [ -z "$accel" ]; then
    accel=tcg
    if [ -w /dev/kvm ]; then
      # A stock kernel under KVM must reach /init within 20 s (on some hosts,
      # e.g. PVM-only KVM, "-cpu host" aborts at once or hangs in early boot).
      mkdir -p "$work/probe"
      printf '#!/bin/sh\necho NBDVM-KVM-OK\n' > "$work/probe/guest-test.sh"; chmod +x "$work/probe/guest-test.sh"
      (cd "$work/probe" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/probe.cpio.gz"
      cat "$VM_BASE_CPIO" "$work/probe.cpio.gz" > "$work/probe-initrd.gz"
      ( timeout 20 qemu-system-x86_64 -accel kvm -cpu host "${common[@]}" -initrd "$work/probe-initrd.gz" \
        -append "console=ttyS0 panic=-1 quiet" -serial file:"$work/kvm-probe.log" > "$work/kvm-probe.out" 2>&1
      ) 2>/dev/null   # (QEMU aborting here is the expected "no usable KVM" answer)
      grep -aq NBDVM-KVM-OK "$work/kvm-probe.log" 2>/dev/null && accel=kvm
      rm -rf "$work/probe" "$work/probe.cpio.gz" "$work/probe-initrd.gz"
    fi
  fi
  [ "$accel" = kvm ] && cpu=(-cpu host)
  [ "$accel" = tcg ] && [ "$VM_SMP" -gt 1 ] && accel=tcg,thread=multi
  VM_ACCEL=$accel
  case "$sock$out" in *,*) vm_die "paths must not contain commas: $sock $out";; esac
  vm_log "booting $VM_KVER with -accel $accel (serial log $work/console.log)"
  # loglevel=3: kernel errors (nbd/dm I/O errors are expected here) stay off the
  # console so they cannot split the result lines; the guest dumps dmesg at the end.
  timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel "$accel" "${cpu[@]}" "${common[@]}" \
    -initrd "$work/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" \
    -netdev "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:socat - UNIX-CONNECT:$sock" \
    -device virtio-net-pci,netdev=n0,romfile= \
    -drive "file=$out,format=raw,if=virtio,cache=writeback" \
    -serial file:"$work/console.log" > "$work/qemu.out" 2>&1
  qrc=$?
  tr -d '\r' < "$work/console.log" > "$work/console.txt" 2>/dev/null
  return $qrc
}
