#!/usr/bin/env bash
# Fetch and build what the QEMU scenarios need, under build/qemu/ (cached;
# nothing system-wide changes):
#   qemu10/   qemu-system-x86 10.x from bookworm-backports, extracted
#   qemu72/   qemu-system-x86 7.2 from bookworm, extracted beside it
#   qemu11/   qemu-system-x86 11.x from trixie-backports, built for Debian
#             13: with its whole library closure down to glibc, started
#             through its own dynamic loader
#   kernel/   Debian's linux-image (vmlinuz + the VFIO modules)
#   busybox   busybox-static
# Packages come through a private apt state (build/qemu/apt) whose sources
# are this machine's Debian mirror with bookworm-backports added there, not
# in the machine's own sources. Each QEMU's missing shared libraries are
# the packages apt would install next to what this machine has (minus any
# QEMU already installed), downloaded and extracted beside it.
# QEMU 11 comes through a second private state (build/qemu/apt-trixie)
# whose sources are trixie and trixie-backports and whose status is empty:
# none of this machine's (Debian 12) libraries can serve a Debian 13
# binary, so apt resolves the whole closure, libc6 included.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${QEMU_TEST_BUILD:-$root/build/qemu}
apt=$out/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc/sources.list.d" "$out/debs"

log() { echo "qemu-setup: $*" >&2; }

# The Debian mirror this machine uses (deb822 URIs: or one-line deb form).
mirror() {
  local f u
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    u=$(grep -hoE 'https?://[^ ]+/debian/?( |$)' "$f" 2>/dev/null | grep -v -- '-security' | head -1 | tr -d ' ')
    [ -n "$u" ] && { echo "${u%/}"; return; }
  done
  echo http://deb.debian.org/debian
}

APT=(-o Dir::State::Lists="$apt/lists" -o Dir::Etc::SourceList=/dev/null
     -o Dir::Etc::SourceParts="$apt/etc/sources.list.d" -o Dir::Cache="$apt/cache"
     -o Dir::State::status="$apt/status" -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")

apt_state() {
  local m; m=$(mirror)
  cat > "$apt/etc/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $m
Suites: bookworm bookworm-updates bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # This machine's packages, as if no QEMU and none of its firmware were
  # installed: a QEMU of another version (the oracle installs bookworm's)
  # must not decide what the one we extract needs, and the extracted QEMU
  # finds its BIOS and option ROMs only beside itself (-L).
  awk 'BEGIN { RS = ""; ORS = "\n\n" } !/^Package: (qemu-|seabios|ipxe-qemu|ovmf)/' /var/lib/dpkg/status > "$apt/status"
  if [ ! -f "$apt/updated" ] || [ -n "$(find "$apt/updated" -mmin +1440)" ]; then
    log "apt-get update (private state, $m)"
    apt-get "${APT[@]}" update -qq >/dev/null
    touch "$apt/updated"
  fi
}

# The same for QEMU 11: trixie's suites, nothing installed. Sets APT and
# DEBS for the caller (dynamic scope).
apt_state_trixie() {
  local m tapt=$out/apt-trixie; m=$(mirror)
  mkdir -p "$tapt/lists/partial" "$tapt/cache/archives/partial" "$tapt/etc/sources.list.d" "$out/debs-trixie"
  cat > "$tapt/etc/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $m
Suites: trixie trixie-updates trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  : > "$tapt/status"
  APT=(-o Dir::State::Lists="$tapt/lists" -o Dir::Etc::SourceList=/dev/null
       -o Dir::Etc::SourceParts="$tapt/etc/sources.list.d" -o Dir::Cache="$tapt/cache"
       -o Dir::State::status="$tapt/status" -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")
  DEBS=$out/debs-trixie
  log "apt-get update (private trixie state, $m)"
  apt-get "${APT[@]}" update -qq >/dev/null
}

DEBS=$out/debs

# Download package names with versions ("name=version") into $DEBS.
download() {
  (cd "$DEBS" && apt-get "${APT[@]}" download "$@" >/dev/null 2>&1) || {
    (cd "$DEBS" && apt-get "${APT[@]}" download "$@") ; return 1; }
}

# Extract QEMU (and the packages it would pull in) into $1 from release $2;
# with $3 = ld.so, a QEMU of another Debian release, launched through the
# dynamic loader it was extracted with.
extract_qemu() {
  local dest=$1 release=$2 loader=${3:-} pkgs=() line name ver
  [ -x "$dest/usr/bin/qemu-system-x86_64" ] && return 0
  log "fetching qemu-system-x86 from $release"
  while read -r line; do
    name=$(awk '{print $2}' <<<"$line"); ver=$(sed -E 's/^Inst [^ ]+ (\[[^]]*\] )?\(([^ ]+) .*/\2/' <<<"$line")
    pkgs+=("$name=$ver")
  done < <(apt-get "${APT[@]}" -s -t "$release" install --no-install-recommends qemu-system-x86 2>/dev/null | grep '^Inst ')
  [ ${#pkgs[@]} -gt 0 ] || { log "apt found no qemu-system-x86 in $release"; return 1; }
  download "${pkgs[@]}"
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  local p v
  for p in "${pkgs[@]}"; do
    v=${p#*=}
    dpkg-deb -x "$DEBS/${p%%=*}_${v//:/%3a}_"*.deb "$dest.tmp"
  done
  # A launcher that finds the extracted libraries and firmware.
  if [ -z "$loader" ]; then
    cat > "$dest.tmp/qemu" <<'SH'
#!/bin/sh
d=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$d/usr/lib/x86_64-linux-gnu:$d/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export QEMU_MODULE_DIR="$d/usr/lib/x86_64-linux-gnu/qemu"
exec "$d/usr/bin/qemu-system-x86_64" -L "$d/usr/share/qemu" -L "$d/usr/share/seabios" "$@"
SH
  else
    # Its own ld.so and only its own libraries (--library-path stands in
    # for LD_LIBRARY_PATH; the machine's libraries are never looked at).
    # The shim of `uiommufd run` reaches it through LD_PRELOAD in the
    # environment, which an explicitly started ld.so honours as well.
    cat > "$dest.tmp/qemu" <<'SH'
#!/bin/sh
d=$(cd "$(dirname "$0")" && pwd)
l=$d/usr/lib/x86_64-linux-gnu
export QEMU_MODULE_DIR="$l/qemu"
exec "$l/ld-linux-x86-64.so.2" --library-path "$l" "$d/usr/bin/qemu-system-x86_64" \
  -L "$d/usr/share/qemu" -L "$d/usr/share/seabios" "$@"
SH
  fi
  chmod +x "$dest.tmp/qemu"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
  "$dest/qemu" --version | head -1 >&2
}

extract_kernel() {
  [ -f "$out/kernel/vmlinuz" ] && return 0
  local img ver
  img=$(apt-cache "${APT[@]}" depends -t bookworm linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$img" ] || { log "no linux-image found"; return 1; }
  log "fetching $img"
  (cd "$out/debs" && apt-get "${APT[@]}" -t bookworm download "$img" >/dev/null)
  rm -rf "$out/kernel.tmp"; mkdir -p "$out/kernel.tmp/x"
  dpkg-deb -x "$out/debs/${img}_"*.deb "$out/kernel.tmp/x"
  cp "$out/kernel.tmp/x/boot/vmlinuz-"* "$out/kernel.tmp/vmlinuz"
  ver=$(ls "$out/kernel.tmp/x/lib/modules")
  echo "$ver" > "$out/kernel.tmp/release"
  mkdir -p "$out/kernel.tmp/modules"
  local m f
  for m in irqbypass vfio vfio_iommu_type1 vfio-pci-core vfio-pci vfio_virqfd iommufd; do
    f=$(find "$out/kernel.tmp/x/lib/modules/$ver" -name "$m.ko*" | head -1)
    [ -n "$f" ] || continue
    case $f in
      *.xz) xz -dc "$f" > "$out/kernel.tmp/modules/$m.ko" ;;
      *.zst) zstd -qdc "$f" > "$out/kernel.tmp/modules/$m.ko" ;;
      *) cp "$f" "$out/kernel.tmp/modules/$m.ko" ;;
    esac
  done
  rm -rf "$out/kernel.tmp/x" "$out/kernel"; mv "$out/kernel.tmp" "$out/kernel"
}

extract_busybox() {
  [ -x "$out/busybox" ] && return 0
  log "fetching busybox-static"
  (cd "$out/debs" && apt-get "${APT[@]}" -t bookworm download busybox-static >/dev/null)
  rm -rf "$out/bb.tmp"; mkdir -p "$out/bb.tmp"
  dpkg-deb -x "$out/debs/busybox-static_"*.deb "$out/bb.tmp"
  cp "$out/bb.tmp/bin/busybox" "$out/busybox"; rm -rf "$out/bb.tmp"
}

apt_state
extract_qemu "$out/qemu10" bookworm-backports
extract_qemu "$out/qemu72" bookworm
qemu_trixie() {
  [ -x "$out/qemu11/usr/bin/qemu-system-x86_64" ] && return 0
  local -a APT; local DEBS
  apt_state_trixie && extract_qemu "$out/qemu11" trixie-backports ld.so
}
qemu_trixie
extract_kernel
extract_busybox
