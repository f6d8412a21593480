#!/usr/bin/env bash
# Every test of the project: the kernel sources the tests compare against
# (Linux 6.12 and 7.3, fetched by the conformance script), the Rust
# workspace tests (the ABI tests then must find both), then the three
# kernel-selftest conformance runs, then unmodified QEMU against uiommufd
# (tests/qemu/run.sh, which fetches QEMU, a kernel and busybox into build/). Installs what it needs on a fresh Debian
# machine (gcc, libcap-dev, linux-source-6.12) when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_pkgs=()
command -v gcc >/dev/null || need_pkgs+=(gcc libc6-dev)
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
# The API documentation builds without a warning (docs/API.md).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
scripts/conformance.sh --no-build
tests/qemu/run.sh --no-build
