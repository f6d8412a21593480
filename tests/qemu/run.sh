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
  for t in sh mount cat echo poweroff sleep stty insmod grep ls readlink seq; do ln -s busybox "$ir/bin/$t"; done
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
Q11=$B/qemu11/qemu
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
    grep -qE 'VFIO_DEVICE_BIND_IOMMUFD, .*\) = 0$' "$RUN/$name/trace.log" || why="QEMU did not bind through iommufd"
  elif [ -z "$why" ]; then
    grep -qE 'VFIO_GROUP_GET_DEVICE_FD, "[^"]*"\) = [0-9]' "$RUN/$name/trace.log" || why="QEMU did not open the device through its group"
  fi
  [ -n "$why" ] && show_checks "$name"
  result "$name" "$start" "$([ -z "$why" ] && echo 0 || echo 1)" "$why"
}

# The console lines of the guest's checks, indented (for a failure).
show_checks() { grep -E '^(ok|FAIL|udma|device|mapped|mig|page)' "$RUN/$1/console.log" | tr -d '\r' | sed 's/^/    /'; }

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

# b, nested. QEMU 11's intel-iommu with first-stage translation for the
# guest (fsts=on, scalable mode; caching mode, which QEMU requires for an
# assigned device): QEMU allocates its HWPT over guest RAM as a
# NEST_PARENT, turns each first-stage PASID entry the guest programs into
# a nested HWPT (IOMMU_HWPT_ALLOC with IOMMU_HWPT_DATA_VTD_S1) attached to
# the device, and each PASID-based IOTLB invalidation of the guest into
# IOMMU_HWPT_INVALIDATE (VTD_S1). The guest's vfio-pci and udma map their
# IOVAs in the guest's first-stage table only (nothing is shadowed into
# the IOAS): DMA lands through that table walked over our stage 2, and
# the FILL to the IOVA the guest unmapped faults, since the invalidation
# reached our IOTLB. The negative control (NEG=1) answers every
# IOMMU_HWPT_INVALIDATE with success without passing it on
# (host/noinval.c): the IOTLB keeps the stale translation and the FILL
# must land in the old page, so the fault depends on the invalidation.
scenario_b_nested() {
  local name=$1 neg=$2 start=$SECONDS why="" qemu=$Q11
  local dev=(-object iommufd,id=iommufd0 -device "vfio-pci,host=0000:00:04.0,id=udma0,iommufd=iommufd0")
  if [ "$neg" = 1 ]; then
    gcc -shared -fPIC -O2 -o "$B/noinval.so" "$here/host/noinval.c" -ldl || return 1
    qemu=$B/qemu11-noinval
    cat > "$qemu" <<SH
#!/bin/sh
LD_PRELOAD="$B/noinval.so\${LD_PRELOAD:+:\$LD_PRELOAD}" exec "$Q11" "\$@"
SH
    chmod +x "$qemu"
  fi
  mkdir -p "$RUN/$name"
  local rc=0
  if ! VM_ENV="UIOMMUFD_STATUS_FILE=$RUN/$name.status" VM_APPEND="intel_iommu=on,sm_on" \
      vm_start "$name" "$qemu" "--iommu vtd --device $DEV" \
      -device intel-iommu,scalable-mode=on,fsts=on,caching-mode=on "${dev[@]}"; then
    why="the guest did not boot"
  elif ! guest "$name" bind 60 vfio_bind; then
    why="the guest's vfio-pci did not take the device"
  else
    guest "$name" b 60 udma vfio; rc=$?
  fi
  ln -sf "../$name.status" "$RUN/$name/status"
  if [ -z "$why" ] && [ "$neg" = 1 ]; then
    tr -d '\r' < "$RUN/$name/console.log" | grep -q '^FAIL: FILL to unmapped IOVA' && [ "$rc" != 124 ] ||
      why="with the invalidations dropped the guest's DMA to an unmapped IOVA still faulted (rc $rc): the check does not depend on them"
  elif [ -z "$why" ]; then
    [ "$rc" = 0 ] || why="the guest's DMA checks failed"
    # The guest's own DMA domain and VFIO's are first-stage tables: one
    # nested HWPT on the nesting parent is attached when the guest is done.
    status_is "$name" hwpt_nested 1 && status_is "$name" hwpt_paging 1 ||
      why="${why:-no nested HWPT over the nesting parent: $(status_of "$name")}"
    local t=$RUN/$name/trace.log
    grep -qE 'IOMMU_HWPT_ALLOC, \{[^}]*flags=NEST_PARENT.*\) = 0$' "$t" || why="${why:-QEMU allocated no nesting parent}"
    grep -qE 'IOMMU_HWPT_ALLOC, .*data_type=VTD_S1.*\) = 0$' "$t" || why="${why:-QEMU allocated no VTD_S1 nested HWPT}"
    # The guest's unmap of udma's destination (64 KiB at 0x56780000)
    # reached the IOMMU as a first-stage invalidation...
    grep -qE 'IOMMU_HWPT_INVALIDATE, .*addr=0x56780000, npages=16.*data_type=VTD_S1.*\) = 0$' "$t" ||
      why="${why:-the unmap in the guest did not arrive as an IOMMU_HWPT_INVALIDATE}"
    # ... and no IOVA of the guest's was shadowed into the IOAS.
    grep -E 'IOMMU_IOAS_MAP, ' "$t" | grep -qE 'iova=0x(12340000|56780000|7ff0000000)\b' &&
      why="${why:-QEMU shadowed mappings of the guest into the IOAS}"
    local w; w=$(qemu_warnings "$name")
    [ -n "$w" ] && why="${why:-QEMU warned: $w}"
  fi
  vm_stop "$name"
  [ -n "$why" ] && show_checks "$name"
  result "$name" "$start" "$([ -z "$why" ] && echo 0 || echo 1)" "$why"
}

# d. Reset and hot-plug (QEMU 10, iommufd backend, the device behind a
# PCIe root port): QMP system_reset resets the device (QEMU's
# VFIO_DEVICE_RESET; the rebooted guest finds its registers at power-on
# values) and the guest uses it again; device_del unplugs it (the guest
# ejects it) and uiommufd's objects go with it: no object, no device
# open, no page pinned, and QEMU's iommufd context closed too (QEMU's
# iommufd backend closes /dev/iommu with its last user)
# (UIOMMUFD_STATUS_FILE, written after every ioctl and device close);
# device_add plugs it back, with a context and its objects created again,
# and the guest uses it again.
status_is() { # status_is NAME KEY VALUE: the status file says KEY VALUE
  grep -qx "$2 $3" "$RUN/$1/status"
}
status_of() { tr '\n' ' ' < "$RUN/$1/status" 2>/dev/null; }
scenario_d() {
  local name=$1 start=$SECONDS why="" resets
  local dev=(-device pcie-root-port,id=rp1,chassis=1,slot=1 -object iommufd,id=iommufd0)
  local udma="vfio-pci,host=0000:00:04.0,id=udma0,bus=rp1,iommufd=iommufd0"
  mkdir -p "$RUN/$name"
  if ! VM_ENV="UIOMMUFD_STATUS_FILE=$RUN/$name.status" vm_start "$name" "$Q10" "--iommu vtd --device $DEV" \
      "${dev[@]}" -device "$udma"; then
    why="the guest did not boot"
  elif ! guest "$name" use1 60 udma sysfs; then
    why="the guest's DMA checks failed"
  fi
  ln -sf "../$name.status" "$RUN/$name/status"
  if [ -z "$why" ]; then
    resets=$(grep -c 'VFIO_DEVICE_RESET) = 0' "$RUN/$name/trace.log")
    local from; from=$(console_lines "$name")
    qmp "$name" '{"execute":"system_reset"}' >/dev/null || why="system_reset failed"
    [ -z "$why" ] && { wait_console "$name" '=== guest up' 90 "$from" || why="the guest did not come back after system_reset"; }
    [ -z "$why" ] && [ "$(grep -c 'VFIO_DEVICE_RESET) = 0' "$RUN/$name/trace.log")" -gt "$resets" ] ||
      why="${why:-QEMU did not reset the device}"
    [ -z "$why" ] && { guest "$name" fresh 60 udma fresh || why="the device was not reset by system_reset"; }
    [ -z "$why" ] && { guest "$name" use2 60 udma sysfs || why="the guest could not use the device after the reset"; }
  fi
  if [ -z "$why" ]; then
    status_is "$name" objects 3 && status_is "$name" device 1 && status_is "$name" vfio_devices_open 1 &&
      ! status_is "$name" pinned_pages 0 || why="before unplug, the engine holds: $(status_of "$name")"
  fi
  if [ -z "$why" ]; then
    qmp "$name" '{"execute":"device_del","arguments":{"id":"udma0"}}' >/dev/null || why="device_del failed"
    [ -z "$why" ] && { qmp_event "$name" DEVICE_DELETED 60 || why="the guest did not release the device"; }
    [ -z "$why" ] && { guest "$name" gone 60 wait_udma gone || why="the guest still sees the device"; }
    if [ -z "$why" ]; then
      status_is "$name" contexts 0 && status_is "$name" objects 0 && status_is "$name" vfio_devices_open 0 &&
        status_is "$name" pinned_pages 0 || why="after device_del, left behind: $(status_of "$name")"
    fi
  fi
  if [ -z "$why" ]; then
    qmp "$name" "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"vfio-pci\",\"host\":\"0000:00:04.0\",\"id\":\"udma0\",\"bus\":\"rp1\",\"iommufd\":\"iommufd0\"}}" >/dev/null ||
      why="device_add failed"
    [ -z "$why" ] && { guest "$name" here 60 wait_udma here || why="the guest did not see the device come back"; }
    [ -z "$why" ] && { guest "$name" fresh2 60 udma fresh || why="the replugged device is not fresh"; }
    [ -z "$why" ] && { guest "$name" use3 60 udma sysfs || why="the guest could not use the replugged device"; }
    if [ -z "$why" ]; then
      status_is "$name" contexts 1 && status_is "$name" objects 3 && status_is "$name" vfio_devices_open 1 &&
        ! status_is "$name" pinned_pages 0 || why="after device_add, the engine holds: $(status_of "$name")"
    fi
  fi
  if [ -z "$why" ]; then
    local w; w=$(qemu_warnings "$name")
    [ -n "$w" ] && why="QEMU warned: $w"
  fi
  vm_stop "$name"
  [ -n "$why" ] && show_checks "$name"
  result "$name" "$start" "$([ -z "$why" ] && echo 0 || echo 1)" "$why"
}

# e. Live migration between two QEMUs, each under its own `uiommufd run`:
# the guest's DMA engine fills PAGES pages round after round while the VM
# migrates; QEMU takes the device through PRE_COPY and STOP_COPY on the
# source and RESUMING on the destination (the engine's registers, ring
# position and work in flight travel in the device state), and finds the
# pages the device wrote in the IOMMU's dirty bitmap
# (IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP). On the
# destination the guest checks that every page holds its last completed
# write, then DMA goes on. The negative control (NEG=1) clears every
# bitmap uiommufd returns to the source QEMU (host/nodirty.c): the guest
# must then find stale pages, which shows the check depends on the bitmap.
MIG_PAGES=512
scenario_e() {
  local name=$1 neg=$2 start=$SECONDS why=""
  local src=$name-src dst=$name-dst sock=$RUN/$name.sock qsrc=$Q10
  local dev=(-object iommufd,id=iommufd0 -device "vfio-pci,host=0000:00:04.0,id=udma0,iommufd=iommufd0")
  if [ "$neg" = 1 ]; then
    gcc -shared -fPIC -O2 -o "$B/nodirty.so" "$here/host/nodirty.c" -ldl || return 1
    qsrc=$B/qemu10-nodirty
    cat > "$qsrc" <<SH
#!/bin/sh
LD_PRELOAD="$B/nodirty.so\${LD_PRELOAD:+:\$LD_PRELOAD}" exec "$Q10" "\$@"
SH
    chmod +x "$qsrc"
  fi
  local status="" rc
  if ! vm_start "$src" "$qsrc" "--iommu vtd --device $DEV" "${dev[@]}"; then
    why="the source guest did not boot"
  elif ! VM_INCOMING=1 vm_start "$dst" "$Q10" "--iommu vtd --device $DEV" "${dev[@]}" -incoming defer -S; then
    why="the destination QEMU did not start"
  elif ! qmp "$dst" "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"unix:$sock\"}}" >/dev/null; then
    why="migrate-incoming failed"
  else
    guest_input "$src" "run mig udma mig $MIG_PAGES"
    if ! wait_console "$src" 'DMA running' 60; then
      why="the guest's DMA loop did not start"
    else
      sleep 1
      qmp "$src" '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":33554432,"downtime-limit":1000}}' >/dev/null
      qmp "$src" "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"unix:$sock\"}}" >/dev/null || why="migrate failed"
      local end=$((SECONDS + 180))
      while [ -z "$why" ] && [ $SECONDS -lt $end ]; do
        status=$(qmp "$src" '{"execute":"query-migrate"}' | sed -n 's/.*"status": *"\([a-z-]*\)".*/\1/p')
        case $status in completed) break ;; failed|cancelled) why="migration $status" ;; esac
        sleep 0.5
      done
      [ -z "$why" ] && [ "$status" != completed ] && why="migration did not complete ($status)"
    fi
  fi
  # The destination stays paused (-S) until the guest has its "go": the
  # first thing it does on resuming is to stop queueing DMA and check what
  # arrived, before the destination's device writes those pages again.
  if [ -z "$why" ]; then
    local end=$((SECONDS + 60))
    until qmp "$dst" '{"execute":"query-migrate"}' | grep -q '"status": *"completed"'; do
      [ $SECONDS -lt $end ] || { why="the destination did not take the migration"; break; }
      sleep 0.3
    done
  fi
  if [ -z "$why" ]; then
    guest_input "$dst" go
    sleep 0.5
    qmp "$dst" '{"execute":"cont"}' >/dev/null || why="the destination did not resume"
  fi
  if [ -z "$why" ]; then
    if ! wait_console "$dst" '^=== mig rc=' 180; then
      why="the guest did not finish its checks on the destination"
    else
      rc=$(tr -d '\r' < "$RUN/$dst/console.log" | sed -n 's/^=== mig rc=\([0-9]*\).*/\1/p' | tail -1)
      local stale; stale=$(tr -d '\r' < "$RUN/$dst/console.log" | sed -n 's/.*(\([0-9]*\) of [0-9]* stale.*/\1/p' | tail -1)
      if [ "$neg" = 1 ]; then
        [ "${stale:-0}" -gt 0 ] || why="with the dirty bitmap cleared the guest still found every page (${stale:-?} stale): the check does not depend on the bitmap"
      else
        [ "$rc" = 0 ] || why="the guest's checks failed on the destination"
        grep -qE 'IOMMU_HWPT_SET_DIRTY_TRACKING, .*\) = 0$' "$RUN/$src/trace.log" || why="${why:-QEMU did not start IOMMU dirty tracking}"
        grep -qE 'IOMMU_HWPT_GET_DIRTY_BITMAP, .*\) = 0$' "$RUN/$src/trace.log" || why="${why:-QEMU did not read the dirty bitmap}"
        local w; w=$(qemu_warnings "$src"; qemu_warnings "$dst")
        [ -n "$w" ] && why="${why:-QEMU warned: $w}"
      fi
    fi
  fi
  vm_stop "$src"; vm_stop "$dst"
  [ -n "$why" ] && { show_checks "$src"; show_checks "$dst"; }
  result "$name" "$start" "$([ -z "$why" ] && echo 0 || echo 1)" "$why"
}

all=(a-qemu10-iommufd a-qemu10-container a-qemu72-container b-viommu-qemu10-iommufd b-viommu-qemu72-container
     b-nested-qemu11-iommufd b-nested-qemu11-without-invalidation d-reset-hotplug e-migration e-migration-without-dirty-bitmap)
want=("$@")
[ ${#want[@]} -eq 0 ] && want=("${all[@]}")
for s in "${want[@]}"; do
  case $s in
    a-qemu10-iommufd) scenario_a "$s" "$Q10" iommufd ;;
    a-qemu10-container) scenario_a "$s" "$Q10" container ;;
    a-qemu72-container) scenario_a "$s" "$Q72" container ;;
    b-viommu-qemu10-iommufd) scenario_bc "$s" "$Q10" iommufd 1 ;;
    b-viommu-qemu72-container) scenario_bc "$s" "$Q72" container 0 ;;
    b-nested-qemu11-iommufd) scenario_b_nested "$s" 0 ;;
    b-nested-qemu11-without-invalidation) scenario_b_nested "$s" 1 ;;
    d-reset-hotplug) scenario_d "$s" ;;
    e-migration) scenario_e "$s" 0 ;;
    e-migration-without-dirty-bitmap) scenario_e "$s" 1 ;;
    *) echo "qemu: no scenario $s (have: ${all[*]})"; exit 2 ;;
  esac
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "${QEMU_TEST_KEEP:-0}" != 1 ] && rm -rf "$RUN"
[ "$failed" = 0 ]
