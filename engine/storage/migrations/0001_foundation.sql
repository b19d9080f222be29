-- Operators, encryption keys and the audit log: what every later area relies on.

CREATE TABLE operator_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('owner', 'operator')),
    -- SHA-256 of the token; the token itself is shown once and never stored.
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Data keys for envelope encryption, each wrapped by the master key (which is never
-- stored here). Ciphertext headers carry the key id, so old keys stay for decryption
-- after rotation; exactly one key is active for new writes.
CREATE TABLE data_keys (
    id          integer PRIMARY KEY CHECK (id > 0),
    purpose     text NOT NULL DEFAULT 'card_keys',
    wrapped     bytea NOT NULL,
    active      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX data_keys_one_active ON data_keys (purpose) WHERE active;

-- Secrets the service derives its blind indexes from, stored encrypted under a data key.
CREATE TABLE sealed_secrets (
    name        text PRIMARY KEY,
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    subject     text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_id  text
);
CREATE INDEX audit_log_subject ON audit_log (subject, at);

-- The audit log and the journal are append-only for every role, the owner's included.
CREATE FUNCTION kami_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_change();
