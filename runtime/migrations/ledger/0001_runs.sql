-- The run ledger: one row per run, per block of a run and per attempt of a block.
-- Portable between SQLite and PostgreSQL: times are milliseconds since the Unix epoch (UTC),
-- flags are integers, parameters are a JSON object in text.

CREATE TABLE IF NOT EXISTS baton_runs (
    run_id        TEXT PRIMARY KEY,
    pipeline      TEXT NOT NULL,
    partition_key TEXT,
    status        TEXT NOT NULL,
    trigger_kind  TEXT NOT NULL,
    version       TEXT NOT NULL,
    git_commit    TEXT,
    params        TEXT NOT NULL,
    resumed_from  TEXT,
    host          TEXT NOT NULL,
    pid           BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL,
    ended_at      BIGINT,
    error         TEXT
);

CREATE INDEX IF NOT EXISTS baton_runs_by_partition
    ON baton_runs (pipeline, partition_key, status);

CREATE INDEX IF NOT EXISTS baton_runs_by_start
    ON baton_runs (pipeline, started_at);

CREATE TABLE IF NOT EXISTS baton_block_runs (
    run_id      TEXT NOT NULL,
    block       TEXT NOT NULL,
    position    BIGINT NOT NULL,
    status      TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    rows_in     BIGINT,
    rows_out    BIGINT,
    bytes       BIGINT,
    started_at  BIGINT,
    ended_at    BIGINT,
    error       TEXT,
    checkpoint  TEXT,
    PRIMARY KEY (run_id, block)
);

CREATE TABLE IF NOT EXISTS baton_attempts (
    run_id      TEXT NOT NULL,
    block       TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    status      TEXT NOT NULL,
    retryable   BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT NOT NULL,
    error       TEXT,
    PRIMARY KEY (run_id, block, attempt)
);
