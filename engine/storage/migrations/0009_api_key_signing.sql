-- Optional HMAC request signing per API key (docs/SIGNING.md).
--
-- The signing secret is a second secret, separate from the bearer key, that never travels
-- with a request. The server must recompute HMACs with it, so a hash will not do: it is
-- stored sealed (AES-256-GCM under a data key wrapped by the master key, bound to the
-- key's id), like the card keys. A database dump alone does not reveal it; the API shows
-- it once, when it is created.
ALTER TABLE api_keys
    ADD COLUMN require_signature boolean NOT NULL DEFAULT false,
    ADD COLUMN signing_secret_sealed bytea,
    ADD CONSTRAINT api_keys_signature_needs_secret
        CHECK (NOT require_signature OR signing_secret_sealed IS NOT NULL);
