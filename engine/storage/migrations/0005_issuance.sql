-- Issuances: what an agent's API key was given, exactly once per card key.

CREATE TABLE issuances (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id        text NOT NULL UNIQUE,
    agent_id         bigint NOT NULL REFERENCES agents (id),
    api_key_id       bigint REFERENCES api_keys (id),
    -- The client's Idempotency-Key: a retry finds this row and gets the same keys back.
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    -- The pool holder the keys were taken under; the reconciler matches Redis against it.
    holder           text NOT NULL UNIQUE,
    product_id       bigint NOT NULL REFERENCES products (id),
    sku              text NOT NULL,
    quantity         integer NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    unit_price       bigint NOT NULL CHECK (unit_price >= 0),
    amount           bigint NOT NULL CHECK (amount >= 0),
    currency         char(3) NOT NULL,
    reference        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, idempotency_key)
);
CREATE INDEX issuances_agent_created ON issuances (agent_id, created_at);

-- UNIQUE (card_key_id): a key belongs to at most one issuance, ever (invariant 1).
CREATE TABLE issuance_keys (
    issuance_id  bigint NOT NULL REFERENCES issuances (id),
    position     smallint NOT NULL,
    card_key_id  bigint NOT NULL REFERENCES card_keys (id) UNIQUE,
    PRIMARY KEY (issuance_id, position)
);
