#!/usr/bin/env bash
# Coverage-guided fuzzing of the targets of fuzz/ under libFuzzer, built
# with AddressSanitizer:
#
#   scripts/fuzz.sh TARGET [SECONDS]    run TARGET (default 60 s) from the
#                                       committed corpus and what earlier
#                                       runs found (build/fuzz/corpus/TARGET)
#   scripts/fuzz.sh --ci [SECONDS]      every target for SECONDS (default 60),
#                                       $(nproc) at a time, from the committed
#                                       corpus only (what scripts/test.sh runs)
#   scripts/fuzz.sh --repro TARGET FILE|HEX    run one input, a file or its hex
#   scripts/fuzz.sh --tmin TARGET FILE  minimise a crashing input
#   scripts/fuzz.sh --cmin TARGET       minimise what was found plus the
#                                       committed corpus into fuzz/corpus/TARGET.hex
#   scripts/fuzz.sh --build             build the fuzzers only
#   scripts/fuzz.sh --list              the targets
#
# Targets: ioctl_seq, walker, dma_engine, vfio_cdev (see fuzz/src/lib.rs).
# The fuzzers are built from fuzz/libfuzzer (libfuzzer-sys, which compiles
# libFuzzer with the machine's g++) by cargo itself with the flags
# cargo-fuzz 0.13 passes (SanitizerCoverage with 8-bit counters, PC table,
# compare tracing and stack depth; --cfg fuzzing; -Zsanitizer=address),
# into target/fuzz/SANITIZER; stable Rust takes the -Z flags through
# RUSTC_BOOTSTRAP=1, and nothing needs installing. (`cargo fuzz` works on
# the same crate too, for whoever has it.)
#
# The committed corpus is one file per target, fuzz/corpus/TARGET.hex, an
# input per line in hex (fuzz/tests/corpus.rs replays it in `cargo test`).
# A run unpacks it into build/fuzz/seed/TARGET. A crash (a panic of the
# target's checks, an AddressSanitizer or LeakSanitizer report, a timeout,
# running out of memory) fails the script, is saved under
# build/fuzz/artifacts/TARGET/ and printed in hex with the command that
# replays it. Make every crash a regression test: minimise it (--tmin),
# fix the bug, and append the input's hex to fuzz/corpus/TARGET.hex.
#
# Options through the environment: FUZZ_SANITIZER (address, the default, or
# none: faster, for long runs hunting panics), FUZZ_JOBS (parallel fuzzer
# processes of a single-target run, through -fork; default 1), FUZZ_TIMEOUT
# (seconds one input may take, default 60), FUZZ_ARGS (more libFuzzer
# flags, e.g. -seed=N).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fuzz_dir=fuzz/libfuzzer
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$fuzz_dir/Cargo.toml" | grep -v '^uiommufd')
sanitizer=${FUZZ_SANITIZER:-address}
case "$sanitizer" in address | none) ;; *) echo "fuzz: FUZZ_SANITIZER is address or none" >&2; exit 2 ;; esac
triple=$(rustc -vV | sed -n 's/^host: //p')
tdir=target/fuzz/$sanitizer
bindir=$tdir/$triple/release
log() { echo "fuzz: $*" >&2; }

build() {
  log "building the fuzzers ($sanitizer)"
  local flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    -Cllvm-args=-sanitizer-coverage-stack-depth
    --cfg fuzzing
  )
  [ "$sanitizer" = none ] || flags+=("-Zsanitizer=$sanitizer")
  flags+=(-Cforce-frame-pointers=yes)
  # --target keeps these flags away from build scripts and proc macros.
  # The crate's release profile keeps overflow checks and debug assertions.
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="${flags[*]} ${RUSTFLAGS:-}" \
    cargo build --manifest-path "$fuzz_dir/Cargo.toml" --target "$triple" --release --bins --target-dir "$tdir"
}

# The environment a fuzzer runs in. LeakSanitizer stays on: libFuzzer
# reports an input after which memory stays allocated.
fuzzer() {
  ASAN_OPTIONS="detect_odr_violation=0:${ASAN_OPTIONS:-}" "$bindir/$1" "${@:2}"
}

# unpack TARGET DIR: the committed corpus of TARGET, a file per input.
unpack() {
  rm -rf "$2"
  mkdir -p "$2"
  python3 - "fuzz/corpus/$1.hex" "$2" <<'PY'
import hashlib, sys
for line in open(sys.argv[1]):
    data = bytes.fromhex(line.strip())
    open(f"{sys.argv[2]}/{hashlib.sha1(data).hexdigest()}", "wb").write(data)
PY
}

check_target() {
  echo "$targets" | grep -qx "$1" || { log "no target $1 (--list: $(echo $targets))"; exit 2; }
}

# fuzz TARGET SECONDS WORKDIR [libFuzzer flags...]: one run from the
# committed corpus (and WORKDIR, where new inputs go). On a crash, print
# the input and how to replay it, and fail.
fuzz() {
  local t=$1 seconds=$2 work=$3 seed=build/fuzz/seed/$1 art=build/fuzz/artifacts/$1
  mkdir -p "$work" "$art"
  unpack "$t" "$seed"
  local before
  before=$(ls "$art")
  # -rss_limit_mb: the targets pin and map memory; a leak shows up as growth.
  # shellcheck disable=SC2086
  if fuzzer "$t" "$work" "$seed" -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-60}" \
    -rss_limit_mb=4096 -max_len=4096 -print_final_stats=1 -artifact_prefix="$art/" "${@:4}" ${FUZZ_ARGS:-}; then
    return 0
  fi
  local found
  found=$(comm -13 <(echo "$before") <(ls "$art") | head -1)
  log "$t FAILED (libFuzzer's report above)"
  if [ -n "$found" ]; then
    log "$t: the input, $art/$found, in hex:"
    python3 -c 'import sys; print(open(sys.argv[1], "rb").read().hex())' "$art/$found"
    log "$t: replay it with: scripts/fuzz.sh --repro $t HEX  (or FILE); once fixed, append the hex line to fuzz/corpus/$t.hex"
  fi
  return 1
}

# A one-line summary of a fuzzer's log.
summary() {
  local inited done_ cov
  inited=$(grep -m1 -o 'INITED cov: [0-9]*' "$2" | grep -o '[0-9]*$' || true)
  cov=$(grep -o 'cov: [0-9]*' "$2" | tail -1 | grep -o '[0-9]*$' || true)
  done_=$(grep -m1 -o 'Done [0-9]* runs in [0-9]* second' "$2" || true)
  echo "fuzz: $1: ${done_:-no final stats}s, coverage ${inited:-?} -> ${cov:-?} edges"
}

mode=run
case "${1:-}" in
  --list | "") echo "$targets"; exit 0 ;;
  --ci | --cmin | --tmin | --repro | --build) mode=${1#--}; shift ;;
esac

build
case "$mode" in
  build) ;;
  run)
    target=${1:?TARGET}
    check_target "$target"
    jobs=()
    [ "${FUZZ_JOBS:-1}" = 1 ] || jobs=(-fork="$FUZZ_JOBS")
    fuzz "$target" "${2:-60}" "build/fuzz/corpus/$target" "${jobs[@]}"
    ;;
  ci)
    # Every target from the committed corpus alone (new inputs go to a
    # fresh build/fuzz/ci/TARGET), as many at once as there are cores;
    # the end of a failed run's log is printed.
    seconds=${1:-60}
    par=$(nproc)
    mkdir -p build/fuzz/ci
    running=0
    for t in $targets; do
      if [ "$running" -ge "$par" ]; then
        wait -n || true
        running=$((running - 1))
      fi
      rm -rf "build/fuzz/ci/$t" "build/fuzz/ci/$t.rc"
      log "$t for ${seconds}s"
      (
        rc=0
        fuzz "$t" "$seconds" "build/fuzz/ci/$t" >"build/fuzz/ci/$t.log" 2>&1 || rc=$?
        echo $rc >"build/fuzz/ci/$t.rc"
      ) &
      running=$((running + 1))
    done
    wait
    passed=0 failed=0
    for t in $targets; do
      if [ "$(cat "build/fuzz/ci/$t.rc" 2>/dev/null)" = 0 ]; then
        passed=$((passed + 1))
        summary "$t" "build/fuzz/ci/$t.log"
      else
        failed=$((failed + 1))
        tail -n 150 "build/fuzz/ci/$t.log" >&2
        summary "$t" "build/fuzz/ci/$t.log"
        log "FAIL $t (the whole log: build/fuzz/ci/$t.log)"
      fi
    done
    echo "fuzz: $passed passed, $failed failed"
    [ "$failed" = 0 ]
    ;;
  repro)
    target=${1:?TARGET}
    check_target "$target"
    input=${2:?FILE or HEX}
    if [ ! -f "$input" ]; then
      mkdir -p build/fuzz
      python3 -c 'import sys; open(sys.argv[2], "wb").write(bytes.fromhex(sys.argv[1]))' "$input" build/fuzz/repro.bin
      input=build/fuzz/repro.bin
    fi
    fuzzer "$target" "$input"
    ;;
  tmin)
    target=${1:?TARGET}
    check_target "$target"
    mkdir -p "build/fuzz/artifacts/$target"
    fuzzer "$target" -minimize_crash=1 -runs=10000 -artifact_prefix="build/fuzz/artifacts/$target/" "${2:?FILE}"
    ;;
  cmin)
    # Everything found so far plus the committed corpus, minimised, becomes
    # the committed corpus.
    target=${1:?TARGET}
    check_target "$target"
    seed=build/fuzz/seed/$target
    unpack "$target" "$seed"
    merged=build/fuzz/merged/$target
    rm -rf "$merged"
    mkdir -p "$merged" "build/fuzz/corpus/$target"
    fuzzer "$target" -merge=1 -rss_limit_mb=4096 -max_len=4096 "$merged" "build/fuzz/corpus/$target" "$seed"
    python3 - "$merged" "fuzz/corpus/$target.hex" <<'PY'
import os, sys
inputs = {open(os.path.join(sys.argv[1], f), "rb").read() for f in os.listdir(sys.argv[1])}
with open(sys.argv[2], "w") as out:
    for data in sorted(inputs, key=lambda b: (len(b), b)):
        out.write(data.hex() + "\n")
print(f"fuzz: {sys.argv[2]} has {len(inputs)} inputs", file=sys.stderr)
PY
    ;;
esac
