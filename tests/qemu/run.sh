#!/usr/bin/env bash
# Unmodified QEMU against uiommufd: guests under TCG whose VFIO device is
# uiommufd's DMA engine (docs/QEMU.md says what each scenario shows).
# Prints one PASS/FAIL line per scenario and "N passed, N failed"; exits 1
# if any failed. Fetches QEMU 10 (bookworm-backports), QEMU 7.2 (bookworm),
# a Debian kernel and busybox into build/qemu/ on first use (setup.sh).
#
# Usage: tests/qemu/run.sh [--no-build] [SCENARIO...]   (default: all)
# Env: QEMU_TEST_KEEP=1 keeps build/qemu/run/ (logs, traces) after a pass.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/qemu
B=${QEMU_TEST_BUILD:-$root/build/qemu}
U=$root/target/release/uiommufd
RUN=$B/run
build=1
[ "${1:-}" = --no-build ] && { build=0; shift; }

"$here/setup.sh" || { echo "qemu: setup failed"; exit 1; }
[ $build = 1 ] && { cargo build --release -q -p uiommufd -p uiommufd-preload || exit 1; }

# The guest: busybox, the static test program, the VFIO modules.
guest_image() {
  local ir=$B/initramfs
  rm -rf "$ir"; mkdir -p "$ir"/{bin,proc,sys,dev,tmp,lib/modules}
  cp "$B/busybox" "$ir/bin/busybox"
  local t
  for t in sh mount cat echo poweroff sleep stty insmod grep ls readlink; do ln -s busybox "$ir/bin/$t"; done
  gcc -static -O2 -Wall -o "$ir/bin/udma" "$here/guest/udma.c" || return 1
  cp "$B"/kernel/modules/*.ko "$ir/lib/modules/"
  cp "$here/guest/init" "$ir/init"; chmod +x "$ir/init"
  (cd "$ir" && find . | "$B/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 > "$B/initramfs.gz"
}
guest_image || { echo "qemu: building the guest failed"; exit 1; }

# shellcheck source=tests/qemu/lib.sh
. "$here/lib.sh"
rm -rf "$RUN"; mkdir -p "$RUN"
trap vm_stop_all EXIT

Q10=$B/qemu10/qemu
Q72=$B/qemu72/qemu
DEV=dma-engine:bdf=0000:00:04.0
passed=0 failed=0

# result NAME START_SECONDS STATUS [DETAIL]
result() {
  local t=$((SECONDS - $2))
  if [ "$3" = 0 ]; then
    echo "PASS $1 (${t}s)"; passed=$((passed + 1))
  else
    echo "FAIL $1 (${t}s): ${4:-see $RUN}"; failed=$((failed + 1))
  fi
}

# a. Driverless guest DMA: the guest program reaches BAR0 through sysfs and
# gives the engine guest-physical addresses; QEMU maps guest RAM at IOVA =
# GPA in our IOAS (iommufd) or compat container (legacy).
scenario_a() {
  local name=$1 qemu=$2 backend=$3 start=$SECONDS why=""
  local dev=(-device "vfio-pci,host=0000:00:04.0,id=udma0")
  [ "$backend" = iommufd ] && dev=(-object iommufd,id=iommufd0 -device "vfio-pci,host=0000:00:04.0,id=udma0,iommufd=iommufd0")
  if ! vm_start "$name" "$qemu" "--iommu vtd --device $DEV" "${dev[@]}"; then
    why="the guest did not boot"
  elif ! guest "$name" t1 60 udma sysfs; then
    why="the guest's DMA checks failed"
  else
    local w; w=$(qemu_warnings "$name")
    [ -n "$w" ] && why="QEMU warned: $w"
  fi
  vm_stop "$name"
  if [ -z "$why" ] && [ "$backend" = iommufd ]; then
    grep -q 'VFIO_DEVICE_BIND_IOMMUFD) = 0' "$RUN/$name/trace.log" || why="QEMU did not bind through iommufd"
  elif [ -z "$why" ]; then
    grep -q 'VFIO_GROUP_GET_DEVICE_FD) = ' "$RUN/$name/trace.log" || why="QEMU did not open the device through its group"
  fi
  [ -n "$why" ] && show_checks "$name"
  result "$name" "$start" "$([ -z "$why" ] && echo 0 || echo 1)" "$why"
}

# The console lines of the guest's checks, indented (for a failure).
show_checks() { grep -E '^(ok|FAIL|udma|device|mapped)' "$RUN/$1/console.log" | tr -d '\r' | sed 's/^/    /'; }

# b. A guest IOMMU that translates: QEMU's intel-iommu (caching mode) in
# the guest, the guest's own vfio-pci, and udma mapping its buffers at
# IOVAs it chooses; QEMU shadows the guest's page tables into our IOAS
# (iommufd) or container (type1 MAP_DMA/UNMAP_DMA). DMA lands at those
# IOVAs; DMA to an IOVA the guest unmapped faults in our VT-d model.
# c. In the same guest: MSI-X completion interrupts reach the guest's
# eventfd, and its kernel's interrupt counter moves by as many.
scenario_bc() {
  local name=$1 qemu=$2 backend=$3 with_c=$4 start=$SECONDS why="" cwhy=""
  local dev=(-device "vfio-pci,host=0000:00:04.0,id=udma0")
  [ "$backend" = iommufd ] && dev=(-object iommufd,id=iommufd0 -device "vfio-pci,host=0000:00:04.0,id=udma0,iommufd=iommufd0")
  if ! VM_APPEND="intel_iommu=on" vm_start "$name" "$qemu" "--iommu vtd --device $DEV" \
      -device intel-iommu,caching-mode=on "${dev[@]}"; then
    why="the guest did not boot"
  elif ! guest "$name" bind 60 vfio_bind; then
    why="the guest's vfio-pci did not take the device"
  elif ! guest "$name" b 60 udma vfio; then
    why="the guest's DMA checks failed"
  else
    local w; w=$(qemu_warnings "$name")
    [ -n "$w" ] && why="QEMU warned: $w"
  fi
  local cstart=$SECONDS
  if [ "$with_c" = 1 ]; then
    if [ -n "$why" ]; then
      cwhy="b failed first"
    elif ! guest "$name" c 60 udma vfio --irq; then
      cwhy="the guest's interrupt checks failed"
    fi
  fi
  vm_stop "$name"
  [ -n "$why$cwhy" ] && show_checks "$name"
  result "$name" "$start" "$([ -z "$why" ] && echo 0 || echo 1)" "$why"
  [ "$with_c" = 1 ] && result "c-msix-${name#b-viommu-}" "$cstart" "$([ -z "$cwhy" ] && echo 0 || echo 1)" "$cwhy"
}

all=(a-qemu10-iommufd a-qemu10-container a-qemu72-container b-viommu-qemu10-iommufd b-viommu-qemu72-container)
want=("$@")
[ ${#want[@]} -eq 0 ] && want=("${all[@]}")
for s in "${want[@]}"; do
  case $s in
    a-qemu10-iommufd) scenario_a "$s" "$Q10" iommufd ;;
    a-qemu10-container) scenario_a "$s" "$Q10" container ;;
    a-qemu72-container) scenario_a "$s" "$Q72" container ;;
    b-viommu-qemu10-iommufd) scenario_bc "$s" "$Q10" iommufd 1 ;;
    b-viommu-qemu72-container) scenario_bc "$s" "$Q72" container 0 ;;
    *) echo "qemu: no scenario $s (have: ${all[*]})"; exit 2 ;;
  esac
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "${QEMU_TEST_KEEP:-0}" != 1 ] && rm -rf "$RUN"
[ "$failed" = 0 ]
