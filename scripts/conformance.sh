#!/usr/bin/env bash
# The conformance run: the kernel's own iommufd selftests (Linux 6.12.117,
# tools/testing/selftests/iommu), built against OUR headers and run under
# `uiommufd run`. Prints each test's result, a closing
# "N passed, N failed, N skipped" line, and compares with
# tests/conformance/expected-pass.txt: a listed test that does not pass fails
# the run; a test that passes but is not listed is reported so the list can
# only grow.
#
# Usage: scripts/conformance.sh [--no-build] [--update-expected] [HARNESS ARGS...]
#   HARNESS ARGS go to the selftest binaries (e.g. -f iommufd -t cmd_length);
#   with them the expected-list comparison only covers the tests that ran.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build/conformance"
tarball=/usr/src/linux-source-6.12.tar.xz
expected="$root/tests/conformance/expected-pass.txt"
per_binary_timeout=${UIOMMUFD_CONFORMANCE_TIMEOUT:-900}

build=1
update=0
harness_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --update-expected) update=1 ;;
    *) harness_args+=("$1") ;;
  esac
  shift
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. The kernel source tarball (Debian's linux-source-6.12).
if [ ! -f "$tarball" ]; then
  echo "conformance: $tarball missing; installing linux-source-6.12" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-source-6.12 >/dev/null
fi

# 2. Only the selftests and the kselftest harness, extracted once per tarball.
src="$out/src"
stamp="$src/.extracted-from"
want_stamp="$(stat -c '%s %Y' "$tarball")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_stamp" ]; then
  rm -rf "$src"
  mkdir -p "$src"
  tar -xJf "$tarball" -C "$src" --strip-components=1 \
    --wildcards 'linux-source-6.12/tools/testing/selftests/iommu/*' \
    'linux-source-6.12/tools/testing/selftests/kselftest.h' \
    'linux-source-6.12/tools/testing/selftests/kselftest_harness.h'
  echo "$want_stamp" > "$stamp"
fi
# The tests include the mock ABI by a path relative to themselves: put OUR
# header there.
mkdir -p "$src/drivers/iommu/iommufd"
cp "$root/include/uiommufd/iommufd_test.h" "$src/drivers/iommu/iommufd/iommufd_test.h"

# 3. Build the two test programs against our include/ (first on the path).
tdir="$src/tools/testing/selftests/iommu"
bin="$out/bin"
mkdir -p "$bin"
for t in iommufd iommufd_fail_nth; do
  gcc -Wall -O2 -Wno-unused-function -D_GNU_SOURCE -pthread -I "$root/include" \
    -o "$bin/$t" "$tdir/$t.c" 2> "$out/$t.build.log" || {
      cat "$out/$t.build.log" >&2
      echo "conformance: building $t against our headers failed" >&2
      exit 1
    }
done

# 4. uiommufd itself.
if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release --quiet -p uiommufd -p uiommufd-preload)
fi
uiommufd="$root/target/release/uiommufd"

# 5. Huge pages for the hugetlb variants, restored afterwards.
old_huge=""
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
  old_huge=$(cat /proc/sys/vm/nr_hugepages)
  echo 128 > /proc/sys/vm/nr_hugepages || true
fi
restore() { if [ -n "$old_huge" ]; then echo "$old_huge" > /proc/sys/vm/nr_hugepages || true; fi; }
trap restore EXIT

# 6. Run. The harness forks one child per test and kills it after its own
# time limit (30 s by default); the whole binary is bounded as well, and a
# test that never reported counts as failed.
results="$out/results.txt"
: > "$results"
for t in iommufd iommufd_fail_nth; do
  log="$out/$t.tap"
  set +e
  (cd "$bin" && timeout --kill-after=10 "$per_binary_timeout" "$uiommufd" run --fault-injection -- "./$t" "${harness_args[@]}") > "$log" 2> "$out/$t.stderr"
  rc=$?
  set -e
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "conformance: $t hit the ${per_binary_timeout}s limit" >&2
  fi
  python3 - "$log" "$t" "$results" <<'PY'
import re, sys
log, binary, results = sys.argv[1:4]
seen = {}
for line in open(log, errors="replace"):
    m = re.match(r'^(not ok|ok) \d+ (\S+)(.*)$', line)
    if not m:
        continue
    status, name, rest = m.groups()
    if "# SKIP" in rest:
        seen[name] = "SKIP"
    else:
        seen[name] = "PASS" if status == "ok" else "FAIL"
with open(results, "a") as f:
    for name, st in seen.items():
        f.write(f"{st} {binary} {name}\n")
PY
  # Tests announced (#  RUN) but never finished crashed the whole binary.
  { grep -E '^#  RUN ' "$log" || true; } | sed 's/^#  RUN *//; s/ \.\.\.$//' | while read -r name; do
    grep -q " $t $name\$" "$results" || echo "FAIL $t $name" >> "$results"
  done
done

# 7. Report.
sort -k3 "$results" | awk '{printf "%-4s %s\n", $1, $3}'
pass=$(grep -c '^PASS' "$results" || true)
fail=$(grep -c '^FAIL' "$results" || true)
skip=$(grep -c '^SKIP' "$results" || true)
echo "$pass passed, $fail failed, $skip skipped"

if [ "$update" = 1 ]; then
  grep '^PASS' "$results" | awk '{print $3}' | sort -u | cat - "$expected" 2>/dev/null | grep -v '^#' | sort -u > "$expected.new"
  { echo "# Conformance tests that must pass (scripts/conformance.sh). Only grows."; cat "$expected.new"; } > "$expected"
  rm -f "$expected.new"
  echo "conformance: updated $expected"
fi

status=0
ran_only=$([ ${#harness_args[@]} -gt 0 ] && echo 1 || echo 0)
while read -r name; do
  case "$name" in ''|'#'*) continue ;; esac
  if grep -q " $name\$" "$results"; then
    grep -q "^PASS [^ ]* $name\$" "$results" || { echo "REGRESSION: $name is expected to pass"; status=1; }
  elif [ "$ran_only" = 0 ]; then
    echo "REGRESSION: $name is expected to pass but did not run"; status=1
  fi
done < "$expected"
grep '^PASS' "$results" | awk '{print $3}' | while read -r name; do
  grep -qx "$name" "$expected" || echo "NEW PASS: $name (add it with --update-expected)"
done
exit $status
