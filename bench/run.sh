#!/usr/bin/env bash
# The benchmark command: builds the release binary, creates the baselines' virtual environments
# (pinned by ../shared/bench/*_constraints.txt), then runs bench/bench.py, which starts its own
# PostgreSQL cluster and HTTP server on 127.0.0.1 and writes BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

baselines=../shared/bench
venv() {
  local dir=$1 constraints=$2
  shift 2
  if [ ! -x "$dir/bin/python" ]; then
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q -c "$constraints" "$@"
  fi
}
venv bench/.venv-polars "$baselines/polars_constraints.txt" polars pyarrow adbc-driver-postgresql "psycopg[binary]"
venv bench/.venv-pandas "$baselines/pandas_constraints.txt" pandas pyarrow sqlalchemy psycopg2-binary

# The same build as the README's main command, and the orchestration-overhead harness.
cargo build --release -p green_taxi_etl
cargo build --release -p baton-tests --example overhead
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

python3 bench/bench.py \
  --baton "$target_dir/release/green_taxi_etl" \
  --overhead "$target_dir/release/examples/overhead" \
  --polars-python bench/.venv-polars/bin/python \
  --pandas-python bench/.venv-pandas/bin/python \
  "$@"
