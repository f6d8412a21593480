#!/usr/bin/env bash
# Every test of the project: the Rust workspace tests, then the kernel
# selftest conformance run. Installs what it needs on a fresh Debian machine
# (gcc, linux-source-6.12) when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_pkgs=()
command -v gcc >/dev/null || need_pkgs+=(gcc libc6-dev)
[ -f /usr/src/linux-source-6.12.tar.xz ] || need_pkgs+=(linux-source-6.12)
[ -f /usr/include/linux/vfio.h ] || need_pkgs+=(linux-libc-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "test: installing ${need_pkgs[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

cargo build --release --workspace
cargo test --release --workspace
scripts/conformance.sh --no-build
