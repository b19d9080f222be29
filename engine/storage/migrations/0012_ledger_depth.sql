-- Ledger depth: commissions held T+N days, withdrawals, and what statements read.

-- Days a level's agents wait before a commission becomes spendable; 0 credits it at once.
ALTER TABLE agent_levels ADD COLUMN commission_hold_days integer NOT NULL DEFAULT 0
    CHECK (commission_hold_days BETWEEN 0 AND 365);

-- Every commission an agent earned (an ancestor's differential on an issuance, a share of a
-- sub-store sale), with where its money sits: credited to `agent:N:balance` at once
-- (release_at NULL), or to `agent:N:held` until release_at, when the release job moves it.
-- A refund reverses it from whichever account holds it then; the guards on released_at and
-- reversed_at make the release and the reversal exclusive.
CREATE TABLE commissions (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id           bigint NOT NULL REFERENCES agents (id),
    source             text NOT NULL CHECK (source IN ('issuance', 'order')),
    -- The issuance's public id or the order number.
    reference          text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('margin', 'differential', 'promoter')),
    amount             bigint NOT NULL CHECK (amount > 0),
    currency           char(3) NOT NULL,
    entry_id           bigint NOT NULL REFERENCES journal_entries (id),
    release_at         timestamptz,
    released_at        timestamptz,
    release_entry_id   bigint REFERENCES journal_entries (id),
    reversed_at        timestamptz,
    reversal_entry_id  bigint REFERENCES journal_entries (id),
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Released once at most, and only what was held; a released commission can still be
    -- reversed by a later refund (from the balance it went to).
    CHECK (released_at IS NULL OR release_at IS NOT NULL)
);
CREATE INDEX commissions_agent ON commissions (agent_id, id);
CREATE INDEX commissions_reference ON commissions (source, reference);
CREATE INDEX commissions_due ON commissions (release_at)
    WHERE release_at IS NOT NULL AND released_at IS NULL AND reversed_at IS NULL;

-- An agent's request to be paid out part of its balance. The amount moves to
-- `agent:N:withdrawing` when requested, so it cannot be spent twice; approval pays it out
-- of the bank account, rejection returns it. requested -> approved | rejected, once.
CREATE TABLE withdrawals (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id           bigint NOT NULL REFERENCES agents (id),
    amount             bigint NOT NULL CHECK (amount > 0),
    currency           char(3) NOT NULL,
    status             text NOT NULL DEFAULT 'requested'
                           CHECK (status IN ('requested', 'approved', 'rejected')),
    destination        text CHECK (length(destination) <= 200),
    note               text CHECK (length(note) <= 500),
    request_entry_id   bigint NOT NULL REFERENCES journal_entries (id),
    decision_entry_id  bigint REFERENCES journal_entries (id),
    decided_by         text,
    decided_at         timestamptz,
    reason             text CHECK (length(reason) <= 500),
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'requested') = (decided_at IS NULL)),
    CHECK ((status = 'requested') = (decision_entry_id IS NULL))
);
CREATE INDEX withdrawals_agent ON withdrawals (agent_id, id);
CREATE INDEX withdrawals_requested ON withdrawals (id) WHERE status = 'requested';

-- Statements read an agent's accounts line by line in entry order. Replaces the index on
-- account_id alone rather than adding one, so the hot path's inserts maintain no more.
CREATE INDEX journal_lines_account_entry ON journal_lines (account_id, entry_id);
DROP INDEX journal_lines_account;
CREATE INDEX accounts_agent ON accounts (agent_id) WHERE agent_id IS NOT NULL;
-- /v1/me/orders and sub-agent sales totals read by store agent.
CREATE INDEX orders_store_agent ON orders (store_agent_id, id) WHERE store_agent_id IS NOT NULL;
CREATE INDEX agents_parent ON agents (parent_id) WHERE parent_id IS NOT NULL;
