-- Cancellations asked of a replica other than the one running the run: the replica running it
-- reads its requests here every second.
CREATE TABLE IF NOT EXISTS baton_cancel_requests (
    run_id        TEXT PRIMARY KEY,
    reason        TEXT NOT NULL,
    requested_at  BIGINT NOT NULL
);
