#!/usr/bin/env python3
"""Side-by-side benchmark of the reference ETL: Baton against the course's baselines.

Everything runs on 127.0.0.1: a throwaway PostgreSQL cluster and an HTTP server of the real
green-taxi files (../shared/data/tlc/green). Each tool runs once to warm up, then ROUNDS times,
interleaved, so that the machine's drift hits every tool alike. Each run starts from an empty
database and an empty lake, and is verified afterwards: rows, a content fingerprint of the loaded
table (equal for every tool) and the lake's partition folders. Wall time is measured around the
process, peak RSS by GNU time (the process's own maximum resident set; see `measure`).

    python3 bench/bench.py --baton target/release/green_taxi_etl --out BENCHMARKS.md

bench/run.sh builds the binary and creates the baselines' virtual environments first.
"""

import argparse
import datetime
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared')
DATA = os.path.join(SHARED, 'data', 'tlc', 'green')
BASELINES = os.path.join(SHARED, 'bench')
MONTHS = ['2021-01', '2021-02', '2021-03']
EXPECTED_ROWS = 113_335
EXPECTED_PARTITIONS = 91


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for_port(port, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f'nothing listens on port {port} after {seconds} s')


def serve_directory(directory):
    """A loopback HTTP server of `directory`: (the process, its base URL)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1',
         '--directory', directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return server, f'http://127.0.0.1:{port}'


def pg_bin():
    versions = sorted(
        os.path.join('/usr/lib/postgresql', v, 'bin')
        for v in os.listdir('/usr/lib/postgresql')
        if os.path.exists(os.path.join('/usr/lib/postgresql', v, 'bin', 'initdb'))
    )
    if not versions:
        sys.exit('no PostgreSQL server binaries in /usr/lib/postgresql (bench/run.sh installs them)')
    return versions[-1]


class Postgres:
    """A throwaway cluster; initdb refuses root, so it runs as `postgres` then."""

    def __init__(self):
        self.bin = pg_bin()
        self.dir = tempfile.mkdtemp(prefix='baton-bench-pg-')
        os.chmod(self.dir, 0o777)
        self.data = os.path.join(self.dir, 'data')
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self.tool('initdb', '-D', self.data, '-U', 'postgres', '-A', 'trust', '--no-sync')
        options = f'-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off'
        self.tool('pg_ctl', '-D', self.data, '-o', options, '-l',
                  os.path.join(self.dir, 'log'), '-w', '-t', '60', 'start')
        wait_for_port(self.port)
        self.url = f'postgres://postgres@127.0.0.1:{self.port}/postgres'

    def tool(self, name, *args):
        command = [os.path.join(self.bin, name), *args]
        if self.as_postgres:
            command = ['runuser', '-u', 'postgres', '--', *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def psql(self, sql):
        out = subprocess.run(
            [os.path.join(self.bin, 'psql'), self.url, '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql],
            check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        try:
            self.tool('pg_ctl', '-D', self.data, '-m', 'immediate', 'stop')
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def measure(command, env, cwd):
    """Runs a command; returns (seconds, peak RSS in MB, stdout+stderr, exit code).

    The peak comes from GNU time, which forks the command from its own small process. Python
    starts a child with vfork, and Linux carries the peak RSS of the address space an exec
    replaces into the new program's (`ru_maxrss`): measured from here directly, every command
    would weigh at least what this script once held (300 MB allocated here and freed made
    `/bin/true` 317 MB).
    """
    log = tempfile.TemporaryFile()
    with tempfile.NamedTemporaryFile('r') as peak:
        started = time.perf_counter()
        process = subprocess.Popen(['/usr/bin/time', '-f', '%M', '-o', peak.name, *command],
                                   env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        process.wait()
        elapsed = time.perf_counter() - started
        # After a failure GNU time writes a line about the exit status before the number.
        peak_kb = int(peak.read().split()[-1])
    log.seek(0)
    output = log.read().decode('utf-8', 'replace')
    return elapsed, peak_kb / 1024, output, process.returncode


FINGERPRINT = (
    "SELECT count(*) || ' ' || round(sum(trip_distance)::numeric, 2) || ' ' || "
    "round(sum(total_amount)::numeric, 2) || ' ' || "
    "sum(extract(epoch from lpep_pickup_datetime))::bigint || ' ' || "
    "count(DISTINCT lpep_pickup_date) FROM mage.green_taxi"
)


def lake_partitions(lake):
    for root, dirs, _ in os.walk(lake):
        parts = [d for d in dirs if d.startswith('lpep_pickup_date=')]
        if parts:
            return len(parts)
    return 0


class Tool:
    def __init__(self, name, command, env):
        self.name, self.command, self.env = name, command, env
        self.times, self.rss = [], []
        self.failed_exits = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--baton', required=True, help='the release green_taxi_etl binary')
    ap.add_argument('--pandas-python', help='python of a venv with the pandas baseline installed')
    ap.add_argument('--polars-python', help='python of a venv with the polars baseline installed')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--baton-arg', action='append', default=[],
                    help='an extra argument for the Baton binary (repeatable), for experiments')
    ap.add_argument('--overhead', help='the release `overhead` example (tests/examples/overhead.rs)')
    ap.add_argument('--out', default=os.path.join(ROOT, 'BENCHMARKS.md'))
    ap.add_argument('--scale', default='10,100',
                    help='comma-separated data factors to run Baton and polars on besides the real '
                         'data (bench/generate.py makes N times the rows); empty for none')
    ap.add_argument('--skip-feedback', action='store_true',
                    help='do not measure the edit-build loop (it edits pipelines/ for a moment)')
    args = ap.parse_args()
    if not os.path.exists(os.path.join(DATA, 'green_tripdata_2021-03.csv.gz')):
        sys.exit(f'the benchmark needs the real NYC TLC files in {DATA}; they are absent')

    feedback = None if args.skip_feedback else feedback_loop()
    global OVERHEAD
    OVERHEAD = orchestration_overhead(args.baton, args.overhead)
    work = tempfile.mkdtemp(prefix='baton-bench-')
    pg = Postgres()
    server, base_url = serve_directory(DATA)
    try:
        run_all(args, pg, base_url, work, feedback, code_layout(args.baton))
    finally:
        server.terminate()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


OVERHEAD = None
LINK_ORDER = os.path.join(ROOT, 'generated', 'green_taxi_etl', 'link-order.txt')


def code_layout(binary):
    """How the binary's code follows its link order (compiler/src/build.rs passes the list to
    the linker): (functions listed, of them in the binary, MB of code they take, MB between the
    first and the last, MB of code in all), or None without a list. A list made before a
    dependency changed names functions the binary no longer has."""
    if not os.path.exists(LINK_ORDER):
        return None
    with open(LINK_ORDER) as f:
        listed = [line.split('#')[0].strip() for line in f]
    listed = [name for name in listed if name]
    symbols = {}
    nm = subprocess.run(['nm', '-S', '--defined-only', binary], check=True, capture_output=True,
                        text=True).stdout
    for line in nm.splitlines():
        fields = line.split(None, 3)
        if len(fields) == 4 and fields[2] in 'tT':
            symbols[fields[3]] = (int(fields[0], 16), int(fields[1], 16))
    found = [symbols[name] for name in listed if name in symbols]
    if not found:
        return len(listed), 0, 0.0, 0.0, sum(s for _, s in symbols.values()) / 1e6
    span = max(a + s for a, s in found) - min(a for a, _ in found)
    return (len(listed), len(found), sum(s for _, s in found) / 1e6, span / 1e6,
            sum(s for _, s in symbols.values()) / 1e6)


def orchestration_overhead(baton, harness, rounds=5):
    """What Baton itself costs: the executor on chains of trivial blocks (tests/examples/
    overhead.rs), and the pipeline binary starting, opening the SQLite ledger and exiting."""
    if not harness:
        return None
    import json
    results = []
    for blocks in (1, 100, 1000):
        out = subprocess.run([harness, str(blocks), str(rounds)], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
    def process_ms(command, folder):
        # The first start creates and migrates the ledger; the median is of the ones after.
        times = []
        for _ in range(rounds + 1):
            started = time.perf_counter()
            subprocess.run(command, cwd=folder, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
        return statistics.median(times[1:]) * 1000
    with tempfile.TemporaryDirectory(prefix='baton-start-') as folder:
        start_ms = process_ms([baton, 'runs', '--limit', '1'], folder)
        noop_ms = process_ms([harness, 'once', os.path.join(folder, 'noop-ledger.db')], folder)
    return results, start_ms, noop_ms


def feedback_loop(rounds=3):
    """How long a developer waits after editing the pipeline TOML, on a warm build: for an
    error until the diagnostic is printed, for a valid edit until the binary is rebuilt. The
    file is restored afterwards whatever happens."""
    toml = os.path.join(ROOT, 'pipelines', 'green_taxi_etl.toml')
    original = open(toml).read()
    build = ['cargo', 'build', '--workspace']

    def timed(text):
        with open(toml, 'w') as f:
            f.write(text)
        started = time.perf_counter()
        done = subprocess.run(build, cwd=ROOT, capture_output=True, text=True)
        return time.perf_counter() - started, done

    try:
        subprocess.run(build, cwd=ROOT, check=True, capture_output=True)
        errors, edits = [], []
        for n in range(rounds):
            seconds, done = timed(original.replace('filter = "passenger_count > 0', 'filter = "pasenger_count > 0', 1))
            if done.returncode == 0 or 'E0008' not in done.stderr:
                sys.exit(f'the broken pipeline built, or without E0008:\n{done.stderr[-3000:]}')
            errors.append(seconds)
            seconds, done = timed(original.replace(
                'description = "Drop trips without passengers',
                f'description = "({n}) Drop trips without passengers', 1))
            if done.returncode != 0:
                sys.exit(f'a valid edit did not build:\n{done.stderr[-3000:]}')
            edits.append(seconds)
    finally:
        with open(toml, 'w') as f:
            f.write(original)
        subprocess.run(build, cwd=ROOT, capture_output=True)
    return statistics.median(errors), statistics.median(edits)


def baton_backfill(baton):
    """The command line of the workload: the three months at once."""
    return [os.path.abspath(baton), 'backfill', '--from', MONTHS[0], '--to', MONTHS[-1],
            '--concurrency', '3']


def run_all(args, pg, base_url, work, feedback, layout):
    env = {k: v for k, v in os.environ.items()
           if k not in ('DATABASE_URL', 'LAKE_URL', 'BATON_LEDGER_URL', 'BATON_LOG')}
    lake = os.path.join(work, 'lake')
    tools = [Tool('Baton', [*baton_backfill(args.baton), *args.baton_arg],
                  {**env, 'TLC_BASE_URL': base_url, 'DATABASE_URL': pg.url,
                   'LAKE_URL': lake, 'BATON_LOG': 'warn'})]
    if args.polars_python:
        tools.append(Tool('polars script, psycopg binary COPY',
                          [os.path.abspath(args.polars_python), os.path.join(BASELINES, 'polars_green_taxi.py'),
                           '--pg-mode', 'psycopg-binary'],
                          {**env, 'GREEN_BASE_URL': base_url, 'PG_URI': pg.url.replace('postgres://', 'postgresql://'),
                           'LAKE_DIR': lake}))
    if args.pandas_python:
        tools.append(Tool('pandas script, COPY (as Mage)',
                          [os.path.abspath(args.pandas_python), os.path.join(BASELINES, 'pandas_green_taxi.py'),
                           '--pg-mode', 'copy'],
                          {**env, 'GREEN_BASE_URL': base_url,
                           'PG_URL': pg.url.replace('postgres://', 'postgresql+psycopg2://'),
                           'LAKE_DIR': lake}))
    fingerprints = {}
    phases = []

    def fresh():
        pg.psql('DROP SCHEMA IF EXISTS mage CASCADE')
        shutil.rmtree(lake, ignore_errors=True)
        shutil.rmtree(os.path.join(work, '.baton'), ignore_errors=True)

    def one(tool, record):
        fresh()
        seconds, rss, output, fingerprint = verified_run(pg, work, tool, tool.env, EXPECTED_ROWS)
        partitions = lake_partitions(lake)
        if partitions != EXPECTED_PARTITIONS:
            sys.exit(f'{tool.name}: {partitions} partitions, expected {EXPECTED_PARTITIONS}\n'
                     f'{output[-3000:]}')
        fingerprints[tool.name] = fingerprint
        if record:
            tool.times.append(seconds)
            tool.rss.append(rss)
            if tool.name == 'Baton':
                phases.append(baton_phases(work))
        print(f'{tool.name}: {seconds:.3f} s, {rss:.0f} MB', file=sys.stderr)

    for tool in tools:  # warm-up: page cache, Python bytecode, first connections
        one(tool, record=False)
    for _ in range(args.rounds):
        for tool in tools:
            one(tool, record=True)
    if len(set(fingerprints.values())) != 1:
        sys.exit(f'the tools loaded different data: {fingerprints}')

    copy_floor = psql_copy_floor(pg, work, args.rounds)
    factors = [int(f) for f in args.scale.split(',') if f.strip()]
    scale = scale_runs(args, pg, work, [t for t in tools if t.name != 'pandas script, COPY (as Mage)'],
                       factors, fresh)
    write_report(args.out, tools, copy_floor, fingerprints['Baton'], phases, args.rounds, feedback,
                 scale, layout)


def verified_run(pg, work, tool, env, expected_rows, label='', strict=False):
    """Runs a tool once on an empty database and lake, then checks the rows it loaded:
    (seconds, peak RSS MB, output, content fingerprint). A failed run ends the benchmark;
    `strict` fails on any non-zero exit, even one after the work was done."""
    seconds, rss, output, code = measure(tool.command, env, work)
    if code != 0 and strict:
        sys.exit(f'{tool.name} failed{label} ({code}):\n{output[-4000:]}')
    if code != 0:
        # The pandas baseline sometimes aborts in interpreter teardown (a pyarrow thread)
        # after its work is done; the row count below decides whether the run counts.
        tool.failed_exits += 1
        if tool.name == 'Baton' or 'rows_in_postgres=' not in output:
            sys.exit(f'{tool.name} failed{label} ({code}):\n{output[-4000:]}')
    fingerprint = pg.psql(FINGERPRINT)
    rows = int(fingerprint.split()[0])
    if rows != expected_rows:
        sys.exit(f'{tool.name}{label}: {rows} rows, expected {expected_rows}\n{output[-3000:]}')
    return seconds, rss, output, fingerprint


def scale_data(factor):
    """Where bench/generate.py keeps the files of `factor` times the real rows."""
    return os.path.join(os.path.expanduser('~'), '.cache', 'baton', 'bench-data', f'x{factor}')


def scale_runs(args, pg, work, tools, factors, fresh):
    """Each tool on N times the rows, twice after a warm-up, interleaved:
    [(factor, {tool: (seconds, peak RSS MB)})]. Rows and content are verified as for 1x."""
    if not factors or not args.polars_python:
        return []
    results = [(1, {t.name: (statistics.median(t.times), statistics.median(t.rss)) for t in tools})]
    for factor in factors:
        data = scale_data(factor)
        subprocess.run([args.polars_python, os.path.join(ROOT, 'bench', 'generate.py'),
                        '--factor', str(factor), '--out', data], check=True, stdout=subprocess.DEVNULL)
        server, url = serve_directory(data)
        runs, fingerprints = {t.name: [] for t in tools}, {}
        try:
            # A warm-up round (the new files' first reads are from disk), then two interleaved.
            for round_ in range(3):
                for tool in tools:
                    env = {**tool.env, 'TLC_BASE_URL': url, 'GREEN_BASE_URL': url}
                    fresh()
                    seconds, rss, _, fingerprint = verified_run(
                        pg, work, tool, env, factor * EXPECTED_ROWS, f' at {factor}x', strict=True)
                    fingerprints[tool.name] = fingerprint
                    if round_ > 0:
                        runs[tool.name].append((seconds, rss))
                    print(f'{tool.name} at {factor}x: {seconds:.3f} s, {rss:.0f} MB', file=sys.stderr)
        finally:
            server.terminate()
        measured = {name: (statistics.median(s for s, _ in r), statistics.median(m for _, m in r))
                    for name, r in runs.items()}
        if len(set(fingerprints.values())) != 1:
            sys.exit(f'the tools loaded different data at {factor}x: {fingerprints}')
        results.append((factor, measured))
    return results


def scale_svg(path, scale):
    """Time and peak RSS against the data factor, one line per tool, as a small SVG."""
    tools = list(scale[0][1].keys())
    colors = ['#1f77b4', '#ff7f0e', '#2ca02c']
    width, height, pad = 360, 240, 48
    factors = [f for f, _ in scale]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height + 40}" '
             'font-family="sans-serif" font-size="11">']
    for panel, (title, index, unit) in enumerate([('wall time', 0, 's'), ('peak RSS', 1, 'MB')]):
        x0 = panel * width
        top = max(m[name][index] for _, m in scale for name in tools) * 1.1
        def point(i, value):
            x = x0 + pad + i * (width - 2 * pad) / max(1, len(factors) - 1)
            y = height - pad + 20 - value / top * (height - 2 * pad)
            return x, y
        parts.append(f'<text x="{x0 + width / 2}" y="16" text-anchor="middle">{title} ({unit})</text>')
        parts.append(f'<line x1="{x0 + pad}" y1="{height - pad + 20}" x2="{x0 + width - pad}" '
                     f'y2="{height - pad + 20}" stroke="black"/>')
        parts.append(f'<line x1="{x0 + pad}" y1="{pad - 8}" x2="{x0 + pad}" y2="{height - pad + 20}" stroke="black"/>')
        parts.append(f'<text x="{x0 + pad - 4}" y="{pad - 4}" text-anchor="end">{top:.3g}</text>')
        for i, factor in enumerate(factors):
            x, _ = point(i, 0)
            parts.append(f'<text x="{x}" y="{height - pad + 34}" text-anchor="middle">{factor}x</text>')
        for t, name in enumerate(tools):
            points = ' '.join('%.1f,%.1f' % point(i, m[name][index]) for i, (_, m) in enumerate(scale))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colors[t % 3]}" stroke-width="2"/>')
            if panel == 0:
                parts.append(f'<text x="{pad + 8}" y="{pad + 8 + 14 * t}" fill="{colors[t % 3]}">{name}</text>')
    parts.append('</svg>')
    with open(path, 'w') as f:
        f.write('\n'.join(parts) + '\n')


def baton_phases(work):
    """Per block, the time of its last run in the backfill, from the ledger."""
    ledger = sqlite3.connect(os.path.join(work, '.baton', 'ledger.db'))
    rows = ledger.execute(
        'SELECT block, avg(ended_at - started_at) FROM baton_block_runs '
        "WHERE status = 'succeeded' GROUP BY block ORDER BY min(position)").fetchall()
    ledger.close()
    return dict(rows)


def psql_copy_floor(pg, work, rounds):
    """`psql \\copy` of the already-clean rows: what Postgres ingest alone costs."""
    csv_path = os.path.join(work, 'clean.csv')
    pg.psql(f"\\copy mage.green_taxi TO '{csv_path}' CSV")
    times = []
    for _ in range(rounds):
        pg.psql('DROP TABLE IF EXISTS mage.copy_floor; '
                'CREATE TABLE mage.copy_floor (LIKE mage.green_taxi)')
        seconds, _, _, _ = measure(
            [os.path.join(pg.bin, 'psql'), pg.url, '-v', 'ON_ERROR_STOP=1', '-c',
             f"\\copy mage.copy_floor FROM '{csv_path}' CSV"], os.environ.copy(), work)
        times.append(seconds)
    return statistics.median(times)


def machine():
    cpu = 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    return f'{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB, {platform.system()} {platform.release()}'


def write_report(path, tools, copy_floor, fingerprint, phases, rounds, feedback, scale, layout):
    baton = statistics.median(tools[0].times)
    lines = [
        '# Benchmarks',
        '',
        'Generated by `bash bench/run.sh` (bench/bench.py); do not edit by hand.',
        '',
        f'Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}.',
        f'Workload: the reference ETL, green taxi 2021-01..03 over HTTP (loopback) -> clean -> '
        f'Postgres `mage.green_taxi` + Parquet lake partitioned by pickup date; '
        f'{EXPECTED_ROWS:,} rows loaded in {EXPECTED_PARTITIONS} partitions. '
        f'Median of {rounds} interleaved runs after a warm-up, each from an empty database and lake.',
        '',
        '| tool | wall s (median) | min | max | peak RSS MB | time vs Baton | RSS vs Baton |',
        '|---|---|---|---|---|---|---|',
    ]
    baton_rss = statistics.median(tools[0].rss)
    for tool in tools:
        median = statistics.median(tool.times)
        rss = statistics.median(tool.rss)
        lines.append(
            f'| {tool.name} | {median:.3f} | {min(tool.times):.3f} | {max(tool.times):.3f} | '
            f'{rss:.0f} | {median / baton:.2f}x | {rss / baton_rss:.2f}x |')
    lines.append(f'| `psql \\copy` of the clean rows (load floor) | {copy_floor:.3f} | | | | '
                 f'{copy_floor / baton:.2f}x | |')
    for tool in tools:
        if tool.failed_exits:
            lines.append(f'\n{tool.name} exited non-zero {tool.failed_exits} time(s) after '
                         'finishing its work (verified rows and content); those runs count.')
    lines += [
        '',
        f'Every run loaded the same content: `{fingerprint}` '
        '(rows, sum of trip_distance, sum of total_amount, sum of pickup epochs, pickup dates).',
        '',
        '## Where Baton\'s time goes',
        '',
        'Mean time per block and partition, from the run ledger (the three months run concurrently,',
        'so the blocks of different months overlap; rows stream, so the blocks of one month overlap',
        'too: a block\'s time runs from its start until its last batch has passed):',
        '',
        '| block | ms per partition |',
        '|---|---|',
    ]
    blocks = phases[0].keys() if phases else []
    for block in blocks:
        mean = statistics.mean(p[block] for p in phases)
        lines.append(f'| {block} | {mean:.0f} |')
    if layout:
        listed, found, size_mb, span_mb, text_mb = layout
        lines += [
            '',
            '## Code layout',
            '',
            f'{found:,} of the {listed:,} functions that '
            '`generated/green_taxi_etl/link-order.txt` lists (`bench/link_order.py`: the functions a '
            'callgrind run of this workload executes) are in the binary, '
            f'{size_mb:.1f} MB of code laid out over {span_mb:.1f} MB of its {text_mb:.0f} MB, '
            'so that the pages of code a run touches, and keeps resident, are few.',
        ]
    if len(scale) > 1:
        # Beside the report it belongs to, where the report's link finds it.
        svg = os.path.join(os.path.dirname(os.path.abspath(path)), 'bench', 'scale.svg')
        os.makedirs(os.path.dirname(svg), exist_ok=True)
        scale_svg(svg, scale)
        names = list(scale[0][1].keys())
        lines += [
            '',
            '## Scale',
            '',
            'The same run on N times the rows (`bench/generate.py`: each real row N times, '
            'timestamps shifted by 37 s per copy), median of 2 interleaved runs after a warm-up; '
            '1x is the median above. Rows and content are verified as for 1x. Issue 7\'s target: time '
            'growing linearly, peak RSS flat.',
            '',
            '| data | rows loaded | ' + ' | '.join(f'{n}: s | {n}: peak RSS MB' for n in names) + ' |',
            '|---|---|' + '---|---|' * len(names),
        ]
        for factor, measured in scale:
            cells = ' | '.join(f'{measured[n][0]:.2f} | {measured[n][1]:.0f}' for n in names)
            lines.append(f'| {factor}x | {factor * EXPECTED_ROWS:,} | {cells} |')
        lines += ['', '![time and peak RSS against data size](bench/scale.svg)']
    if OVERHEAD:
        results, start_ms, noop_ms = OVERHEAD
        lines += [
            '',
            '## Orchestration overhead',
            '',
            'The executor on a chain of trivial blocks (each passes its input on; '
            '`tests/examples/overhead.rs`), median of 5 runs after a warm-up. '
            'Issue 7\'s target: 1,000 blocks planned and run in under 50 ms.',
            '',
            '| blocks | no ledger, ms | SQLite ledger, ms |',
            '|---|---|---|',
        ]
        for r in results:
            lines.append(f"| {r['blocks']:,} | {r['no_ledger_ms']:.1f} | {r['sqlite_ledger_ms']:.1f} |")
        lines += [
            '',
            f'The release binary starting, opening the SQLite ledger, reading it and exiting '
            f'(`runs --limit 1`): {start_ms:.1f} ms (median of 5). Recording a run costs three '
            'ledger writes per block (start, attempt, outcome), which is what the SQLite column '
            'above adds.',
            '',
            f'A no-op pipeline as a process (`overhead once`: start, open the SQLite ledger, run one '
            f'trivial block, record the run and its block, exit): {noop_ms:.1f} ms (median of 5). '
            'Issue 7\'s target: under 20 ms (Mage: 3.9 s).',
        ]
    if feedback:
        lines += [
            '',
            '## Feedback loop (warm dev build, `cargo build --workspace`)',
            '',
            '| edit of pipelines/green_taxi_etl.toml | median s |',
            '|---|---|',
            f'| a misspelled column: until the E0008 diagnostic is printed | {feedback[0]:.2f} |',
            f'| a valid edit: until the rebuilt binary is ready | {feedback[1]:.2f} |',
        ]
    lines.append('')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
