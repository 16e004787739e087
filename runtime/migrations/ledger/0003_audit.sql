-- The audit trail: append-only and hash-chained (see runtime/src/audit.rs), and a content
-- checksum of each block's output, which the trail records.
ALTER TABLE baton_block_runs ADD COLUMN checksum TEXT;

CREATE TABLE IF NOT EXISTS baton_audit (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    pipeline   TEXT NOT NULL,
    actor      TEXT NOT NULL,
    event      TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
