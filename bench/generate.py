#!/usr/bin/env python3
"""Scale data for the benchmark: the real green-taxi months, N times as many rows.

Each output month holds N copies of the real month's rows; copy k has its pickup and dropoff
times shifted by k * 37 seconds, so rows stay real (every value comes from a real trip) while
timestamps, and so Postgres and Parquet contents, differ from copy to copy. Text is kept as the
TLC writes it (the same column order, number formatting and `YYYY-MM-DD HH:MM:SS` timestamps),
gzip-compressed like the originals. The filter of the reference ETL keeps exactly N times the
rows it keeps from the real month, which is what the benchmark verifies.

    bench/.venv-polars/bin/python bench/generate.py --factor 10 --out ~/.cache/baton/bench-data/x10

Needs polars (the benchmark's polars venv has it). Files that exist already are kept.
"""

import argparse
import gzip
import io
import os
import subprocess
import sys

import polars as pl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, '..', 'shared', 'data', 'tlc', 'green')
MONTHS = ['2021-01', '2021-02', '2021-03']
TIMESTAMPS = ['lpep_pickup_datetime', 'lpep_dropoff_datetime']
FORMAT = '%Y-%m-%d %H:%M:%S'


def month(name, factor, out):
    target = os.path.join(out, f'green_tripdata_{name}.csv.gz')
    if os.path.exists(target):
        return target
    with gzip.open(os.path.join(DATA, f'green_tripdata_{name}.csv.gz'), 'rb') as f:
        # Every column as text: values are written back exactly as they were read.
        real = pl.read_csv(io.BytesIO(f.read()), infer_schema_length=0)
    parsed = real.with_columns(pl.col(c).str.strptime(pl.Datetime, FORMAT) for c in TIMESTAMPS)
    copies = [
        parsed.with_columns(
            (pl.col(c) + pl.duration(seconds=37 * k)).dt.strftime(FORMAT) for c in TIMESTAMPS)
        for k in range(factor)
    ]
    partial = target + '.partial'
    # gzip -1 in a pipe: a large month compresses at disk speed, and a cut run leaves no file
    # that looks finished.
    with open(partial, 'wb') as sink:
        gz = subprocess.Popen(['gzip', '-1', '-c'], stdin=subprocess.PIPE, stdout=sink)
        pl.concat(copies).write_csv(gz.stdin)
        gz.stdin.close()
        if gz.wait() != 0:
            sys.exit('gzip failed')
    os.replace(partial, target)
    return target


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--factor', type=int, required=True, help='copies of each real row')
    ap.add_argument('--out', required=True, help='the folder of the generated months')
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in MONTHS:
        print(month(name, args.factor, args.out))


if __name__ == '__main__':
    main()
