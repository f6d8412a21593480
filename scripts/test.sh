#!/usr/bin/env bash
# Every test of the project: the kernel sources the tests compare against
# (Linux 6.12 and 7.3, fetched by the conformance script), the Rust
# workspace tests (the ABI tests then must find both), then the three
# kernel-selftest conformance runs, then unmodified QEMU against uiommufd
# (tests/qemu/run.sh, which fetches QEMU, a kernel and busybox into build/),
# then bounded runs of the coverage-guided fuzzers and of AddressSanitizer
# (scripts/fuzz.sh --ci, scripts/sanitize.sh; UIOMMUFD_CI_FUZZ=0 skips
# them). Installs what it needs on a fresh Debian machine (gcc, g++,
# libcap-dev, linux-source-6.12) when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_pkgs=()
command -v gcc >/dev/null || need_pkgs+=(gcc libc6-dev)
command -v g++ >/dev/null || need_pkgs+=(g++)  # libfuzzer-sys compiles libFuzzer
command -v python3 >/dev/null || need_pkgs+=(python3)
[ -f /usr/src/linux-source-6.12.tar.xz ] || need_pkgs+=(linux-source-6.12)
[ -f /usr/include/linux/vfio.h ] || need_pkgs+=(linux-libc-dev)
[ -f /usr/include/sys/capability.h ] || need_pkgs+=(libcap-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "test: installing ${need_pkgs[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

scripts/conformance.sh --fetch-only
cargo build --release --workspace
# The tests run optimised with overflow checks and debug assertions on
# (Cargo.toml's "checked" profile): an overflow is a failure, not a wrap.
UIOMMUFD_REQUIRE_KSRC=1 cargo test --profile checked --workspace
# The engine's tests again with every thread entering light DMA-fence
# sections from its first (docs/ARCHITECTURE.md, the DMA fence): unmaps
# race light readers and their membarrier in every run, not only after a
# thread's 1024th request. About 20 s.
UIOMMUFD_FENCE_PROMOTE=1 cargo test --profile checked -p uiommufd-memory -p uiommufd-core -p uiommufd-devices
# The API documentation builds without a warning (docs/API.md).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
scripts/conformance.sh --no-build
tests/qemu/run.sh --no-build
# Bounded fuzzing and sanitizer runs (docs/TESTING.md), about ten minutes
# on two cores: every fuzz target for UIOMMUFD_CI_FUZZ_SECONDS (60) under
# libFuzzer with AddressSanitizer, from the committed corpus (a crash
# fails and prints the input and how to replay it); then, built with
# AddressSanitizer, the engine's stress and randomized tests in-process,
# the shim serving both kernel selftest suites, and a 20 s soak.
if [ "${UIOMMUFD_CI_FUZZ:-1}" != 0 ]; then
  start=$SECONDS
  scripts/fuzz.sh --ci "${UIOMMUFD_CI_FUZZ_SECONDS:-60}"
  SOAK_SECONDS=20 scripts/sanitize.sh engine shim soak
  echo "test: fuzzing and sanitizers took $((SECONDS - start)) s" >&2
fi
