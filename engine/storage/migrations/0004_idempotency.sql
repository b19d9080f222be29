-- Idempotency records: the first response to (owner, key) is the answer to every retry.

CREATE TABLE idempotency_records (
    owner         text NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea NOT NULL,
    -- NULL while the first request is still being processed.
    status        smallint,
    response      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    PRIMARY KEY (owner, key)
);
-- The sweeper deletes records older than the retention (at least 24 hours).
CREATE INDEX idempotency_records_created ON idempotency_records (created_at);
