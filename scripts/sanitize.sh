#!/usr/bin/env bash
# The engine and the preload shim under AddressSanitizer, with a stable
# toolchain (RUSTC_BOOTSTRAP=1 enables -Zsanitizer=address):
#
#   scripts/sanitize.sh [engine] [shim] [soak]     (default: all three)
#
# engine  the engine's stress and randomized tests in-process, built with
#         ASan (the Rust test binaries link Rust's own ASan runtime):
#         core's stress, stress_hwpt, dma_stress, dma_engine_stress and
#         fail_nth, dispatch's fuzz_ioctl and vfio_group_pins, the devices'
#         DMA engine tests, and the fuzz corpus replay.
# shim    the shim built with ASan (a cdylib: the runtime is GCC's
#         libasan.so.8, preloaded after the shim; its interface is the same
#         compiler-rt one) serving both kernel selftest suites
#         (scripts/conformance.sh, every run compared with its expected
#         list as usual).
# soak    the soak (tests/soak: threads, forks, DMA) under the ASan shim
#         for SOAK_SECONDS (60).
#
# scripts/test.sh runs all three (the soak for 20 s) in CI. ASan options:
# SEGV handling stays with the shim (its guarded user copies turn a bad
# pointer into EFAULT through SIGSEGV); reports go to build/sanitize/asan.*;
# a step fails if it failed or wrote a report, and the script prints the
# reports, one line per step and "N passed, N failed" at the end. valgrind's memcheck is not used: the guarded copies resume
# from a SIGSEGV handler by rewriting the interrupted context, which
# valgrind does not support, and valgrind 3.19 lacks pidfd_open (the 7.3
# kselftest harness needs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=("$@")
[ ${#what[@]} -gt 0 ] || what=(engine shim soak)
export RUSTC_BOOTSTRAP=1
triple=$(rustc -vV | sed -n 's/^host: //p')
tdir=target/asan
out=build/sanitize
mkdir -p "$out"
rm -rf "$out"/asan.* "$out/reports"
libasan=$(gcc -print-file-name=libasan.so)
[ -e "$libasan" ] || { echo "sanitize: GCC's libasan.so not found (apt-get install libasan8)" >&2; exit 2; }
libasan=$(readlink -f "$libasan")
asan_opts="handle_segv=0:handle_sigbus=0:allow_user_segv_handler=1:detect_leaks=0:abort_on_error=0:log_path=$root/$out/asan"
passed=0 failed=0
step() { echo "sanitize: $*" >&2; }
# result NAME STATUS: one step's outcome, counting the reports it wrote.
result() {
  local st=$2
  if ls "$out"/asan.* >/dev/null 2>&1; then
    step "$1: AddressSanitizer reports:"
    grep -h -A40 "ERROR: AddressSanitizer" "$out"/asan.* | head -200 >&2 || true
    mkdir -p "$out/reports"
    for f in "$out"/asan.*; do mv "$f" "$out/reports/${1//[^A-Za-z0-9]/_}.${f##*/}"; done
    st=1
  fi
  if [ "$st" = 0 ]; then
    passed=$((passed + 1))
    step "PASS $1"
  else
    failed=$((failed + 1))
    step "FAIL $1"
  fi
}

asan_cargo() {
  RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes" \
    cargo "$1" --release --target "$triple" --target-dir "$tdir" "${@:2}"
}

for w in "${what[@]}"; do
  case "$w" in
    engine)
      step "engine tests under ASan"
      # (--test selects in every package named, hence two runs.)
      st=0
      ASAN_OPTIONS="$asan_opts" asan_cargo test \
        -p uiommufd-core --test stress --test stress_hwpt --test dma_stress --test dma_engine_stress --test fail_nth \
        -p uiommufd-dispatch --test fuzz_ioctl --test vfio_group_pins || st=1
      result "engine: stress, fail_nth and randomized ioctls" $st
      st=0
      ASAN_OPTIONS="$asan_opts" asan_cargo test --tests -p uiommufd-devices -p uiommufd-fuzz || st=1
      result "engine: the DMA engine's tests and the fuzz corpus" $st
      ;;
    shim|soak)
      if [ "${built:-0}" = 0 ]; then
        step "building the shim with ASan"
        asan_cargo build -p uiommufd-preload
        # (Without RUSTC_BOOTSTRAP: it is part of cargo's fingerprint, and the
        # ordinary release build must not be rebuilt for it.)
        env -u RUSTC_BOOTSTRAP cargo build --release -p uiommufd
        built=1
      fi
      export UIOMMUFD_PRELOAD="$root/$tdir/$triple/release/libuiommufd_preload.so"
      st=0
      if [ "$w" = shim ]; then
        step "both kernel selftest suites through the ASan shim"
        LD_PRELOAD="$libasan" ASAN_OPTIONS="$asan_opts:verify_asan_link_order=0" \
          scripts/conformance.sh --no-build || st=1
        result "shim: the three conformance runs" $st
      else
        step "soak through the ASan shim"
        gcc -std=gnu11 -O2 -g -pthread -I include -I examples/c -o "$out/soak" tests/soak/soak.c
        # A small quarantine: ASan's default (256 MiB of freed memory held
        # back) would show as RSS growth and fail the soak's RSS check.
        LD_PRELOAD="$libasan" \
          ASAN_OPTIONS="$asan_opts:verify_asan_link_order=0:quarantine_size_mb=4:thread_local_quarantine_size_kb=64" \
          target/release/uiommufd run --device dma-engine -- "$out/soak" "${SOAK_SECONDS:-60}" 4 || st=1
        result "soak: ${SOAK_SECONDS:-60} s" $st
      fi
      unset UIOMMUFD_PRELOAD
      ;;
    *) echo "sanitize: unknown part $w (engine, shim, soak)" >&2; exit 2 ;;
  esac
done
echo "sanitize: $passed passed, $failed failed"
[ "$failed" = 0 ]
