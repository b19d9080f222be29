-- API keys: the sandbox (test) mode, a rate limit per key, rotation with a grace period;
-- promoters (推广员) and the attribution of orders to them.

-- A rotated key stays valid until `expires_at` (the grace period), next to its successor,
-- which names it in `rotated_from`. NULL `rate_limit_per_s`: the deployment's default.
ALTER TABLE api_keys
    ADD COLUMN rate_limit_per_s integer CHECK (rate_limit_per_s BETWEEN 1 AND 1000000),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN rotated_from bigint REFERENCES api_keys (id);
CREATE UNIQUE INDEX api_keys_one_successor ON api_keys (rotated_from);

-- Test stock: batches imported in test mode feed a pool of their own, so live keys never
-- see it and test keys see nothing else.
ALTER TABLE batches
    ADD COLUMN mode text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test'));

-- Test issuances live beside the live ones, told apart by mode; an Idempotency-Key used
-- once with each mode is two requests, not a retry.
ALTER TABLE issuances
    ADD COLUMN mode text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test'));
ALTER TABLE issuances DROP CONSTRAINT issuances_agent_id_idempotency_key_key;
CREATE UNIQUE INDEX issuances_agent_mode_key ON issuances (agent_id, mode, idempotency_key);

-- Accounts of the sandbox (`agent:N:test_balance`, `platform:test_…`) balance among
-- themselves, so each mode has its own trial balance.
ALTER TABLE accounts
    ADD COLUMN mode text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test'));

-- A promoter is an agent (it signs in with its API key and is paid into its balance)
-- with a link code and a commission: a rate in basis points of the sale, or a fixed
-- amount per unit. Scoped to one store when `store_agent_id` is set (that store pays the
-- commission from its margin); otherwise valid on any order.
CREATE TABLE promoters (
    agent_id        bigint PRIMARY KEY REFERENCES agents (id),
    code            text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_-]{4,32}$'),
    rate_bp         integer CHECK (rate_bp BETWEEN 0 AND 10000),
    per_unit        bigint CHECK (per_unit >= 0),
    store_agent_id  bigint REFERENCES agents (id),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate_bp IS NULL) <> (per_unit IS NULL))
);

ALTER TABLE orders ADD COLUMN promoter_agent_id bigint REFERENCES agents (id);
-- A storefront testing with a test key places test orders: test stock, the sandbox
-- provider only, and the sandbox's accounts.
ALTER TABLE orders
    ADD COLUMN mode text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'test'));
CREATE INDEX orders_promoter ON orders (promoter_agent_id, id) WHERE promoter_agent_id IS NOT NULL;
