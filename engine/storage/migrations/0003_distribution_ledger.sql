-- Agents, their levels and API keys; a double-entry ledger in integer minor units.

CREATE TABLE agent_levels (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    rank          integer NOT NULL CHECK (rank >= 0),
    -- NULL: every SKU is visible.
    visible_skus  text[],
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agent_level_prices (
    level_id    bigint NOT NULL REFERENCES agent_levels (id) ON DELETE CASCADE,
    product_id  bigint NOT NULL REFERENCES products (id),
    price       bigint NOT NULL CHECK (price >= 0),
    PRIMARY KEY (level_id, product_id)
);

CREATE TABLE agents (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    level_id      bigint NOT NULL REFERENCES agent_levels (id),
    parent_id     bigint REFERENCES agents (id),
    credit_limit  bigint NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id     bigint NOT NULL REFERENCES agents (id),
    mode         text NOT NULL CHECK (mode IN ('live', 'test')),
    -- The first characters of the key, to recognise it in lists; not enough to use it.
    prefix       text NOT NULL,
    secret_hash  bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_agent ON api_keys (agent_id);

-- Accounts keep a running balance in the account's normal direction, updated in the same
-- transaction as the journal lines that move it; the lines are the truth.
CREATE TABLE accounts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code         text NOT NULL UNIQUE,
    kind         text NOT NULL CHECK (kind IN ('asset', 'liability', 'equity', 'revenue', 'expense')),
    currency     char(3) NOT NULL DEFAULT 'CNY',
    agent_id     bigint REFERENCES agents (id),
    balance      bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE journal_entries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    reference   text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One line per account touched: a positive amount is a debit, a negative one a credit.
CREATE TABLE journal_lines (
    entry_id    bigint NOT NULL REFERENCES journal_entries (id),
    account_id  bigint NOT NULL REFERENCES accounts (id),
    amount      bigint NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, account_id)
);
CREATE INDEX journal_lines_account ON journal_lines (account_id);

CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_change();
CREATE TRIGGER journal_lines_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal_lines
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_change();

-- Every entry balances. Lines of one entry are inserted by one statement, so the check runs
-- once per statement over the new lines (a transition table), not once per row.
CREATE FUNCTION kami_check_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced bigint;
BEGIN
    SELECT l.entry_id INTO unbalanced
    FROM journal_lines l
    WHERE l.entry_id IN (SELECT DISTINCT entry_id FROM new_lines)
    GROUP BY l.entry_id
    HAVING sum(l.amount) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER journal_lines_balanced AFTER INSERT ON journal_lines
    REFERENCING NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION kami_check_entries_balanced();
