#!/usr/bin/env bash
# Runs every test of the workspace. On a fresh machine it first installs what the tests use:
# PostgreSQL server binaries (a throwaway cluster per test run), sqlite3 and python3 (the
# loopback HTTP server and the independent row counts), Chromium (the web UI's tests), and the
# local cloud peers (S3, GCS and BigQuery emulators, scripts/peers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v python3 >/dev/null || missing+=(python3)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash scripts/peers.sh

cargo fmt --all --check
# Cargo decides whether a path dependency changed by its files' modification times, and every
# file of a fresh clone is new, so each clone would build polars again over the vendored crate
# (vendor/README.md). Each vendored file gets the time of the commit that last changed it: a
# warm CARGO_TARGET_DIR is reused, and a crate changed by a later commit is still rebuilt.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && git diff --quiet HEAD -- vendor; then
  git ls-files -z vendor | while IFS= read -r -d '' file; do
    touch -d "@$(git log -1 --format=%ct -- "$file")" "$file"
  done
fi
# The end-to-end tests run the pipeline binaries that `cargo build` produces. `--all-targets`
# resolves features exactly as `cargo test` does, so polars is compiled once, not twice.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast
# Coverage-guided fuzzing of the compiler's front end, 45 s per target (cargo-fuzz needs a
# nightly toolchain; the script says so and stops when there is none). A fixed seed makes the
# test run reproducible; `bash scripts/fuzz.sh` without FUZZ_SEED explores new inputs.
FUZZ_SEED=1 bash scripts/fuzz.sh 45
