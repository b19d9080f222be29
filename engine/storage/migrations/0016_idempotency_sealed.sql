-- Idempotency records keep the first response sealed by the application keyring, never as
-- sent: responses carry API keys, signing secrets, lookup tokens and card keys.
--
-- `request_hash` becomes keyed (an HMAC under a key derived from the keyring's fingerprint
-- key), since some requests carry secrets too (a card-key import's codes).
--
-- Rows written before this migration hold plaintext bodies, which SQL cannot seal, and
-- plain hashes, which SQL cannot key (the keys never reach the database). Both are dropped
-- (an empty request_hash marks such a row); the rows themselves stay until the sweeper
-- forgets them (within 24 hours), so a retry with such a key is still never run twice: it
-- is answered `409 idempotency_replay_unavailable`.
--
-- The table is rebuilt rather than altered: an UPDATE or DROP COLUMN leaves the old bodies
-- in dead tuples until a vacuum, while a new table's file holds only what is copied into it
-- and the old file is removed when this transaction commits.

CREATE TABLE idempotency_records_sealed (
    owner            text NOT NULL,
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- HMAC-SHA256 of the request; empty for the rows of before this migration.
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
SELECT owner, key, '\x'::bytea, status, NULL, created_at, completed_at
FROM idempotency_records;

DROP TABLE idempotency_records;
ALTER TABLE idempotency_records_sealed RENAME TO idempotency_records;
ALTER INDEX idempotency_records_sealed_pkey RENAME TO idempotency_records_pkey;
ALTER TABLE idempotency_records
    RENAME CONSTRAINT idempotency_records_sealed_key_check TO idempotency_records_key_check;
-- The sweeper deletes records older than the retention (at least 24 hours).
CREATE INDEX idempotency_records_created ON idempotency_records (created_at);
