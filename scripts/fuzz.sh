#!/usr/bin/env bash
# Coverage-guided fuzzing of one target of fuzz/ (cargo-fuzz + libFuzzer):
#
#   scripts/fuzz.sh TARGET [SECONDS]     # run TARGET (default 60 s)
#   scripts/fuzz.sh --list               # the targets
#   scripts/fuzz.sh --cmin TARGET        # minimise what was found plus the
#                                        # committed corpus into fuzz/corpus/TARGET.hex
#
# Targets: ioctl_seq, walker, dma_engine, vfio_cdev (see fuzz/src/lib.rs).
# Works with a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass
# its -Z flags; cargo-fuzz itself is installed from crates.io when missing.
# The committed corpus is one file per target, fuzz/corpus/TARGET.hex, an
# input per line in hex (fuzz/tests/corpus.rs replays it in `cargo test`).
# The fuzzer starts from it (unpacked into build/fuzz/seed/TARGET) and
# writes what it finds to build/fuzz/corpus/TARGET; a crash is saved under
# fuzz/libfuzzer/artifacts/TARGET/ and the script exits non-zero. Make
# every crash a regression test: minimise it (cargo fuzz tmin), fix the
# bug, and append `xxd -p -c 100000 CRASH` to fuzz/corpus/TARGET.hex.
#
# Options through the environment: FUZZ_SANITIZER (none, the default, or
# address), FUZZ_JOBS (parallel fuzzer processes, default 1), FUZZ_ARGS
# (more libFuzzer flags).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export RUSTC_BOOTSTRAP=1
fuzz_dir=fuzz/libfuzzer
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$fuzz_dir/Cargo.toml" | grep -v '^uiommufd')

if [ "${1:-}" = --list ] || [ $# -eq 0 ]; then
  echo "$targets"
  exit 0
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

mode=run
if [ "$1" = --cmin ]; then
  mode=cmin
  shift
fi
target=$1
seconds=${2:-60}
echo "$targets" | grep -qx "$target" || { echo "fuzz: no target $target (--list)" >&2; exit 2; }
work=build/fuzz/corpus/$target
seed=build/fuzz/seed/$target
mkdir -p "$work"
rm -rf "$seed"
mkdir -p "$seed"
python3 - fuzz/corpus/"$target".hex "$seed" <<'PY'
import hashlib, sys
for line in open(sys.argv[1]):
    data = bytes.fromhex(line.strip())
    open(f"{sys.argv[2]}/{hashlib.sha1(data).hexdigest()}", "wb").write(data)
PY
build_flags=(--fuzz-dir "$fuzz_dir" -O -a -s "${FUZZ_SANITIZER:-none}")

if [ "$mode" = cmin ]; then
  # Everything found so far plus the committed corpus, minimised, becomes
  # the committed corpus.
  cp -n "$seed"/* "$work"/ 2>/dev/null || true
  cargo fuzz cmin "${build_flags[@]}" "$target" "$work"
  python3 - "$work" fuzz/corpus/"$target".hex <<'PY'
import os, sys
inputs = {open(os.path.join(sys.argv[1], f), "rb").read() for f in os.listdir(sys.argv[1])}
with open(sys.argv[2], "w") as out:
    for data in sorted(inputs, key=lambda b: (len(b), b)):
        out.write(data.hex() + "\n")
print(f"fuzz: {sys.argv[2]} has {len(inputs)} inputs", file=sys.stderr)
PY
  exit 0
fi

# -rss_limit_mb: the targets pin and map memory; a leak shows up as growth.
# shellcheck disable=SC2086
cargo fuzz run "${build_flags[@]}" --jobs "${FUZZ_JOBS:-1}" "$target" "$work" "$seed" -- \
  -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=4096 -print_final_stats=1 ${FUZZ_ARGS:-}
