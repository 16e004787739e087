#!/usr/bin/env bash
# Coverage-guided fuzzing of the compiler's front end with cargo-fuzz (libFuzzer), bounded in
# time: `bash scripts/fuzz.sh [SECONDS_PER_TARGET]` (default 60). scripts/test.sh runs it.
#
# Targets (fuzz/fuzz_targets/): `front_end` compiles any text as a pipeline file (and emits and
# formats the code of those that check); `expression` parses any text as an expression. The
# corpus starts from every pipeline and fixture in the repository, including the inputs that
# once crashed the compiler (tests/fixtures/crashes/). A crash fails the run; libFuzzer prints
# the input, which belongs in tests/fixtures/crashes/ once the bug is fixed, so that the stable
# test compiler/tests/no_panic.rs keeps covering it.
#
# cargo-fuzz needs a nightly toolchain. Without one this script says so and stops: the stable
# mutation test (compiler/tests/no_panic.rs) still runs in every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
# FUZZ_SEED fixes libFuzzer's seed: the same inputs are tried on every run, so what a test run
# finds is reproducible. Without it each run explores anew.
seed=()
if [ -n "${FUZZ_SEED:-}" ]; then
  seed=(-seed="$FUZZ_SEED")
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain here, so cargo-fuzz cannot run; compiler/tests/no_panic.rs covered the front end on stable" >&2
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi

corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT
mkdir -p "$corpus/front_end" "$corpus/expression"
cp pipelines/*.toml tests/fixtures/*/*.toml "$corpus/front_end/"
# Every quoted string of those files seeds the expression target (most are expressions).
grep -ho '"[^"]*"' pipelines/*.toml tests/fixtures/*/*.toml | sed 's/^"//; s/"$//' | sort -u |
  split -l 1 - "$corpus/expression/seed_"

# Its own target folder: sanitizer flags and the nightly compiler share nothing with stable builds.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
for target in front_end expression; do
  echo "fuzz: $target for ${seconds}s" >&2
  # Without a sanitizer: the code is safe Rust, and what is looked for is a panic; a sanitizer
  # would cut the runs per second several times.
  cargo +nightly fuzz run --sanitizer none --target-dir "$target_dir" "$target" "$corpus/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 "${seed[@]}"
done
