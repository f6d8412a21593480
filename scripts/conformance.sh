#!/usr/bin/env bash
# The conformance runs: the kernel's own iommufd selftests
# (tools/testing/selftests/iommu: `iommufd` and `iommufd_fail_nth`), built
# against OUR headers (include/) and run under `uiommufd run`:
#
#   7.3           Linux 7.3's suite under the default kernel (7.3)
#   6.12-on-6.12  Linux 6.12's suite under --kernel 6.12
#   6.12-on-7.3   Linux 6.12's suite under the default kernel (7.3)
#
# Each run compares every case's result (PASS, FAIL, SKIP) with its list
# tests/conformance/expected-RUN.txt and prints one summary line; a case
# whose result differs from its list (or that is missing) fails the script.
# The lists hold what the real kernel gives where we match it (6.12-on-6.12
# is the real 6.12.118 kernel's result, case by case) and docs/CONFORMANCE.md
# says why any other entry is what it is.
#
# Sources: Linux 6.12 from Debian's linux-source-6.12 (/usr/src, installed
# with apt when missing); Linux 7.3 from Debian's trixie-backports, fetched
# with `apt-get download` against a private apt state under build/ that
# reuses the Debian mirror of this machine's apt sources (the machine's own
# sources are never changed). Only the selftests, the kselftest harness,
# the uAPI headers and the mock ABI header are extracted.
#
# Usage: scripts/conformance.sh [--no-build] [--update-expected] [--fetch-only]
#                               [--run NAME]... [HARNESS ARGS...]
#   --fetch-only  fetch and extract both kernel trees (for the ABI tests), then stop
#   --run NAME    only this run (repeatable)
#   HARNESS ARGS  go to the selftest binaries (e.g. -f iommufd -t cmd_length);
#                 with them only the cases that ran are compared.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build/conformance"
per_binary_timeout=${UIOMMUFD_CONFORMANCE_TIMEOUT:-900}
ALL_RUNS=(7.3 6.12-on-6.12 6.12-on-7.3)

build=1
update=0
fetch_only=0
runs=()
harness_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --update-expected) update=1 ;;
    --fetch-only) fetch_only=1 ;;
    --run) shift; runs+=("${1:?--run needs a name: ${ALL_RUNS[*]}}") ;;
    *) harness_args+=("$1") ;;
  esac
  shift
done
[ ${#runs[@]} -gt 0 ] || runs=("${ALL_RUNS[@]}")
for r in "${runs[@]}"; do
  case " ${ALL_RUNS[*]} " in *" $r "*) ;; *) echo "conformance: unknown run $r (${ALL_RUNS[*]})" >&2; exit 2 ;; esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
log() { echo "conformance: $*" >&2; }

# Files of a kernel tree we use (relative to its root).
KFILES=(
  'tools/testing/selftests/iommu/*'
  'tools/testing/selftests/kselftest.h'
  'tools/testing/selftests/kselftest_harness.h'
  'include/uapi/linux/iommufd.h'
  'include/uapi/linux/vfio.h'
  'drivers/iommu/iommufd/iommufd_test.h'
)

# extract TARBALL TOPDIR DEST STAMP: the files above, once per STAMP.
extract() {
  local tarball=$1 top=$2 dest=$3 stamp=$4
  if [ -f "$dest/.extracted-from" ] && [ "$(cat "$dest/.extracted-from")" = "$stamp" ]; then
    return 0
  fi
  rm -rf "$dest"
  mkdir -p "$dest"
  local pats=()
  for f in "${KFILES[@]}"; do pats+=("$top/$f"); done
  tar -xJf "$tarball" -C "$dest" --strip-components=1 --wildcards "${pats[@]}"
  echo "$stamp" > "$dest/.extracted-from"
}

# Linux 6.12: Debian's linux-source-6.12.
fetch_6_12() {
  local tarball=/usr/src/linux-source-6.12.tar.xz
  if [ ! -f "$tarball" ]; then
    log "$tarball missing; installing linux-source-6.12"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-source-6.12 >/dev/null
  fi
  extract "$tarball" linux-source-6.12 "$out/6.12/src" "$(stat -c '%s %Y' "$tarball")"
}

# The Debian mirror this machine's apt uses (deb822 or one-line sources).
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk '
      /^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }
      /^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) { print $i; exit } break } }
    ' "$f")
    if [ -n "$uri" ]; then echo "${uri%/}"; return 0; fi
  done
  echo http://deb.debian.org/debian
}

# Linux 7.3: linux-source-7.3 from trixie-backports, through a private apt
# state under build/ (lists, cache, sources), never the machine's.
fetch_7_3() {
  local dest="$out/7.3/src" apt="$out/apt"
  if [ -f "$dest/.extracted-from" ] && [ -f "$dest/tools/testing/selftests/iommu/iommufd.c" ]; then
    return 0
  fi
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc/sources.list.d" "$apt/deb"
  local mirror
  mirror=$(debian_mirror)
  cat > "$apt/etc/sources.list.d/trixie-backports.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  local opts=(-o "Dir::State::Lists=$apt/lists" -o Dir::Etc::SourceList=/dev/null
              -o "Dir::Etc::SourceParts=$apt/etc/sources.list.d" -o "Dir::Cache=$apt/cache"
              -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")
  log "fetching linux-source-7.3 from $mirror trixie-backports (private apt state in $apt)"
  apt-get -qq "${opts[@]}" update
  rm -f "$apt/deb"/*.deb
  (cd "$apt/deb" && apt-get -qq "${opts[@]}" download linux-source-7.3)
  local deb
  deb=$(ls "$apt/deb"/linux-source-7.3_*.deb)
  # The .deb holds usr/src/linux-source-7.3.tar.xz; keep only our files.
  local tarball="$apt/linux-source-7.3.tar.xz"
  dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/linux-source-7.3.tar.xz > "$tarball"
  extract "$tarball" linux-source-7.3 "$dest" "$(basename "$deb")"
  rm -f "$tarball" "$deb"
}

need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
[ -f /usr/include/sys/capability.h ] || need+=(libcap-dev)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

want_6_12=0 want_7_3=0
for r in "${runs[@]}"; do case "$r" in 7.3) want_7_3=1 ;; *) want_6_12=1 ;; esac; done
if [ "$fetch_only" = 1 ]; then want_6_12=1 want_7_3=1; fi
[ "$want_6_12" = 1 ] && fetch_6_12
[ "$want_7_3" = 1 ] && fetch_7_3
if [ "$fetch_only" = 1 ]; then
  log "kernel trees in $out/6.12/src and $out/7.3/src"
  exit 0
fi

# build_suite VERSION: both programs against our include/ (first on the
# path); the tests include the mock ABI by a path relative to themselves,
# where our header goes, in a copy of the tree (src/ stays the kernel's).
build_suite() {
  local v=$1 suite="$out/$1/suite" bin="$out/$1/bin"
  rm -rf "$suite"
  mkdir -p "$suite/drivers/iommu/iommufd" "$bin"
  cp -r "$out/$v/src/tools" "$suite/"
  cp "$root/include/uiommufd/iommufd_test.h" "$suite/drivers/iommu/iommufd/iommufd_test.h"
  local tdir="$suite/tools/testing/selftests/iommu" extra=()
  # 7.3 includes "kselftest_harness.h" from the selftests root and uses libcap.
  [ "$v" = 7.3 ] && extra=(-I "$suite/tools/testing/selftests")
  for t in iommufd iommufd_fail_nth; do
    gcc -Wall -O2 -Wno-unused-function -D_GNU_SOURCE -pthread -I "$root/include" "${extra[@]}" \
      -o "$bin/$t" "$tdir/$t.c" $([ "$v" = 7.3 ] && echo -lcap) 2> "$out/$v/$t.build.log" || {
        cat "$out/$v/$t.build.log" >&2
        log "building Linux $v's $t against our headers failed"
        exit 1
      }
  done
}
[ "$want_6_12" = 1 ] && build_suite 6.12
[ "$want_7_3" = 1 ] && build_suite 7.3

if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release --quiet -p uiommufd -p uiommufd-preload)
fi
uiommufd="$root/target/release/uiommufd"

# Huge pages for the hugetlb variants, restored afterwards.
old_huge=""
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
  old_huge=$(cat /proc/sys/vm/nr_hugepages)
  echo 128 > /proc/sys/vm/nr_hugepages || true
fi
restore() { if [ -n "$old_huge" ]; then echo "$old_huge" > /proc/sys/vm/nr_hugepages || true; fi; }
trap restore EXIT

# run_suite RUN SUITE KERNEL: results in $out/runs/RUN/results.txt as
# "STATUS BINARY CASE" lines.
run_suite() {
  local run=$1 v=$2 kernel=$3 dir="$out/runs/$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  local results="$dir/results.txt"
  : > "$results"
  for t in iommufd iommufd_fail_nth; do
    local tap="$dir/$t.tap" rc
    set +e
    (cd "$out/$v/bin" && timeout --kill-after=10 "$per_binary_timeout" \
      "$uiommufd" run --kernel "$kernel" --fault-injection -- "./$t" "${harness_args[@]}") > "$tap" 2> "$dir/$t.stderr"
    rc=$?
    set -e
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      log "$run: $t hit the ${per_binary_timeout}s limit"
    fi
    python3 - "$tap" "$t" "$results" <<'PY'
import re, sys
tap, binary, results = sys.argv[1:4]
seen = {}
for line in open(tap, errors="replace"):
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
    # Cases announced (#  RUN) but never finished crashed the whole binary.
    { grep -E '^#  RUN ' "$tap" || true; } | sed 's/^#  RUN *//; s/ \.\.\.$//' | while read -r name; do
      grep -q " $t $name\$" "$results" || echo "FAIL $t $name" >> "$results"
    done
  done
}

# compare RUN: every case against tests/conformance/expected-RUN.txt.
compare() {
  local run=$1 results="$out/runs/$1/results.txt"
  local expected="$root/tests/conformance/expected-$run.txt"
  if [ "$update" = 1 ]; then
    local header
    header=$(grep '^#' "$expected" 2>/dev/null || echo "# Expected results of the conformance run $run (scripts/conformance.sh).")
    { echo "$header"; awk '{print $1, $3}' "$results" | sort -k2; } > "$expected"
    log "$run: updated $expected"
  fi
  python3 - "$results" "$expected" "$run" "${#harness_args[@]}" <<'PY'
import sys
results, expected, run, partial = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] != "0"
got = {}
for line in open(results):
    st, _binary, name = line.split()
    got[name] = st
want = {}
try:
    for line in open(expected):
        line = line.strip()
        if line and not line.startswith("#"):
            st, name = line.split()
            want[name] = st
except FileNotFoundError:
    pass
bad = []
for name, st in sorted(want.items()):
    if name not in got:
        if not partial:
            bad.append(f"MISSING {name}: expected {st}, did not run")
    elif got[name] != st:
        kind = "REGRESSION" if st == "PASS" else "DIFFERENT"
        bad.append(f"{kind} {name}: expected {st}, got {got[name]}")
for name, st in sorted(got.items()):
    if name not in want:
        bad.append(f"UNLISTED {name}: got {st}")
for b in bad:
    print(f"conformance {run}: {b}")
n = {s: sum(1 for v in got.values() if v == s) for s in ("PASS", "FAIL", "SKIP")}
verdict = "as expected" if not bad else f"{len(bad)} differ from {expected.split('/')[-1]}"
print(f"conformance {run}: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped of {len(got)}; {verdict}")
sys.exit(1 if bad else 0)
PY
}

# table RUN: the per-fixture table docs/CONFORMANCE.md shows, in
# $out/runs/RUN/table.md.
table() {
  python3 - "$out/runs/$1/results.txt" > "$out/runs/$1/table.md" <<'PY'
import sys, collections
rows = collections.OrderedDict()
for line in sorted(open(sys.argv[1]), key=lambda l: l.split()[2]):
    st, binary, name = line.split()
    parts = name.split(".")
    fixture = parts[0]
    variants = rows.setdefault(fixture, [set(), collections.Counter()])
    if len(parts) == 3:
        variants[0].add(parts[1])
    variants[1][st] += 1
print("| fixture | cases | pass | fail | skip |")
print("| --- | ---: | ---: | ---: | ---: |")
for fixture, (variants, n) in rows.items():
    label = f"`{fixture}`" + (f" × {len(variants)} variants" if len(variants) > 1 else "")
    print(f"| {label} | {sum(n.values())} | {n['PASS']} | {n['FAIL']} | {n['SKIP']} |")
PY
}

status=0
summaries=()
for r in "${runs[@]}"; do
  case "$r" in
    7.3) run_suite "$r" 7.3 7.3 ;;
    6.12-on-6.12) run_suite "$r" 6.12 6.12 ;;
    6.12-on-7.3) run_suite "$r" 6.12 7.3 ;;
  esac
  sort -k3 "$out/runs/$r/results.txt" | awk -v r="$r" '{printf "%-4s %s %s\n", $1, r, $3}'
  table "$r"
  set +e
  line=$(compare "$r")
  rc=$?
  set -e
  printf '%s\n' "$line" | grep -v ' passed, ' || true
  summaries+=("$(printf '%s\n' "$line" | grep ' passed, ')")
  [ $rc -eq 0 ] || status=1
done
printf '%s\n' "${summaries[@]}"
exit $status
