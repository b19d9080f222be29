-- Idempotency records keep the first response sealed by the application keyring, never as
-- sent: responses carry API keys, signing secrets, lookup tokens and card keys.
--
-- Rows written before this migration hold plaintext bodies, which SQL cannot seal (the
-- master key never reaches the database). Their bodies are dropped; the rows themselves
-- stay until the sweeper forgets them (within 24 hours), so a retry with such a key is
-- still never run twice: it is answered `409 idempotency_replay_unavailable`.
--
-- The table is rebuilt rather than altered: an UPDATE or DROP COLUMN leaves the old bodies
-- in dead tuples until a vacuum, while a new table's file holds only what is copied into it
-- and the old file is removed when this transaction commits.

CREATE TABLE idempotency_records_sealed (
    owner            text NOT NULL,
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    -- NULL while the first request is still being processed.
    status           smallint,
    -- AES-256-GCM envelope (engine/idempotency.py), bound to owner, key and status; NULL
    -- while in progress, and for the completed rows of before this migration.
    response_sealed  bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    PRIMARY KEY (owner, key)
);

INSERT INTO idempotency_records_sealed
    (owner, key, request_hash, status, response_sealed, created_at, completed_at)
SELECT owner, key, request_hash, status, NULL, created_at, completed_at
FROM idempotency_records;

DROP TABLE idempotency_records;
ALTER TABLE idempotency_records_sealed RENAME TO idempotency_records;
ALTER INDEX idempotency_records_sealed_pkey RENAME TO idempotency_records_pkey;
ALTER TABLE idempotency_records
    RENAME CONSTRAINT idempotency_records_sealed_key_check TO idempotency_records_key_check;
-- The sweeper deletes records older than the retention (at least 24 hours).
CREATE INDEX idempotency_records_created ON idempotency_records (created_at);
