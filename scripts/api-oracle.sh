#!/usr/bin/env bash
# Regenerate crates/api/tests/expected/selftest_flows-7.3.txt: the transcript
# the real Linux 7.3.4 kernel (built with CONFIG_IOMMUFD_TEST) gives for
# uiommufd-api's `selftest_flows` example on its kernel backend.
#
# Builds the example statically linked (crt-static: the oracle's guest has no
# libc), runs it in the oracle (../shared/oracle/run.sh, or ORACLE=PATH), and
# writes the transcript when the program ran to its end. Then
# `cargo test -p uiommufd-api --test selftest_flows` (the engine in-process)
# and `cargo test -p uiommufd --test api_flows` (the kernel backend under
# `uiommufd run`) hold uiommufd to it.
#
# Usage: scripts/api-oracle.sh [--check]   (--check: compare, write nothing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# ../shared next to this checkout, or next to the main checkout of a worktree.
common=$(cd "$(git rev-parse --git-common-dir)/.." && pwd)
oracle=${ORACLE:-}
for o in "$root/../shared/oracle/run.sh" "$common/../shared/oracle/run.sh"; do
  [ -n "$oracle" ] || { [ -x "$o" ] && oracle=$o; } || true
done
[ -n "$oracle" ] && [ -x "$oracle" ] || { echo "api-oracle: no oracle at $oracle (set ORACLE=)" >&2; exit 2; }
expected=crates/api/tests/expected/selftest_flows-7.3.txt
target=x86_64-unknown-linux-gnu

RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release -p uiommufd-api --example selftest_flows --target "$target"
prog=target/$target/release/examples/selftest_flows
if readelf -l "$prog" | grep -q 'Requesting program interpreter'; then
  echo "api-oracle: $prog is not statically linked" >&2; exit 1
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$oracle" --kernel 7.3 "$prog" kernel > "$out" 2>&1
if ! grep -qx '=== oracle: exit status 0' "$out"; then
  cat "$out" >&2
  echo "api-oracle: the flows did not run to their end in the kernel" >&2
  exit 1
fi
grep -v '^=== oracle' "$out" > "$out.t"
mv "$out.t" "$out"
if [ "${1:-}" = --check ]; then
  diff -u "$expected" "$out" && echo "api-oracle: $expected matches Linux 7.3.4"
else
  cp "$out" "$expected"
  echo "api-oracle: wrote $expected ($(wc -l < "$expected") lines)"
fi
