-- Log lines of each run, with the block they were written in, for the API and the web UI.
CREATE TABLE IF NOT EXISTS baton_logs (
    run_id   TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    level    TEXT NOT NULL,
    block    TEXT,
    message  TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
