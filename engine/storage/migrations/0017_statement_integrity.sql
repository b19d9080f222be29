-- Referential integrity of the issuance hot path, checked once per statement, not per row.
--
-- A foreign key is a row trigger: every inserted row runs its own lookup of the row it
-- points at, through SPI, with a FOR KEY SHARE lock. One issuance inserts an issuances row
-- (three keys), an issuance_keys row (two) and two journal_lines (two each): nine lookups,
-- measured at about half of the PostgreSQL CPU of a group-commit flush (docs/BENCHMARKS.md,
-- "PostgreSQL per issuance"). Those seven foreign keys are replaced by what gives the same
-- guarantee at one query per statement:
-- * an AFTER INSERT statement trigger per table looks every referenced id of the new rows
--   up at once (`id = ANY (...)` on the primary key, a transition table) and fails with
--   foreign_key_violation, the SQLSTATE a foreign key raises, naming a missing id;
-- * the referencing columns cannot be updated (journal_lines is append-only already);
-- * the referenced rows cannot be deleted, which is what the FOR KEY SHARE lock protected:
--   agents, API keys, accounts, issuances and card keys are never deleted (suspension,
--   revocation, refunds and revoked keys are states), and the schema now says so, as it
--   already did for products, batches and the journal.
-- Foreign keys of the cold paths (orders, withdrawals, refunds, commissions) stay.

CREATE FUNCTION kami_forbid_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are kept: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER agents_kept BEFORE DELETE OR TRUNCATE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_delete();
CREATE TRIGGER api_keys_kept BEFORE DELETE OR TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_delete();
CREATE TRIGGER accounts_kept BEFORE DELETE OR TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_delete();
CREATE TRIGGER issuances_kept BEFORE DELETE OR TRUNCATE ON issuances
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_delete();
CREATE TRIGGER card_keys_kept BEFORE DELETE OR TRUNCATE ON card_keys
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_delete();

CREATE FUNCTION kami_forbid_repointing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: the rows a row refers to cannot change', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- A missing id among `wanted` (distinct, no NULLs) that `found` ids do not cover.
CREATE FUNCTION kami_first_missing(wanted bigint[], found bigint[]) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT w FROM unnest(wanted) AS w WHERE NOT w = ANY (found) LIMIT 1
$$;

CREATE FUNCTION kami_raise_missing(what text, id bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'insert refers to a missing %: %', what, id
        USING ERRCODE = 'foreign_key_violation';
END
$$;

-- issuances: agent_id -> agents, api_key_id -> api_keys, product_id -> products.
ALTER TABLE issuances
    DROP CONSTRAINT issuances_agent_id_fkey,
    DROP CONSTRAINT issuances_api_key_id_fkey,
    DROP CONSTRAINT issuances_product_id_fkey;

CREATE FUNCTION kami_issuances_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint[];
    found  bigint[];
BEGIN
    SELECT coalesce(array_agg(DISTINCT agent_id), '{}') INTO wanted FROM new_rows;
    found := ARRAY(SELECT id FROM agents WHERE id = ANY (wanted));
    IF cardinality(found) <> cardinality(wanted) THEN
        PERFORM kami_raise_missing('agent', kami_first_missing(wanted, found));
    END IF;
    SELECT coalesce(array_agg(DISTINCT api_key_id), '{}') INTO wanted
    FROM new_rows WHERE api_key_id IS NOT NULL;
    found := ARRAY(SELECT id FROM api_keys WHERE id = ANY (wanted));
    IF cardinality(found) <> cardinality(wanted) THEN
        PERFORM kami_raise_missing('API key', kami_first_missing(wanted, found));
    END IF;
    SELECT coalesce(array_agg(DISTINCT product_id), '{}') INTO wanted FROM new_rows;
    found := ARRAY(SELECT id FROM products WHERE id = ANY (wanted));
    IF cardinality(found) <> cardinality(wanted) THEN
        PERFORM kami_raise_missing('product', kami_first_missing(wanted, found));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER issuances_references AFTER INSERT ON issuances
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kami_issuances_references();
CREATE TRIGGER issuances_references_fixed BEFORE UPDATE OF agent_id, api_key_id, product_id
    ON issuances
    FOR EACH ROW WHEN (OLD.agent_id IS DISTINCT FROM NEW.agent_id
                       OR OLD.api_key_id IS DISTINCT FROM NEW.api_key_id
                       OR OLD.product_id IS DISTINCT FROM NEW.product_id)
    EXECUTE FUNCTION kami_forbid_repointing();

-- issuance_keys: issuance_id -> issuances, card_key_id -> card_keys.
ALTER TABLE issuance_keys
    DROP CONSTRAINT issuance_keys_issuance_id_fkey,
    DROP CONSTRAINT issuance_keys_card_key_id_fkey;

CREATE FUNCTION kami_issuance_keys_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint[];
    found  bigint[];
BEGIN
    SELECT coalesce(array_agg(DISTINCT issuance_id), '{}') INTO wanted FROM new_rows;
    found := ARRAY(SELECT id FROM issuances WHERE id = ANY (wanted));
    IF cardinality(found) <> cardinality(wanted) THEN
        PERFORM kami_raise_missing('issuance', kami_first_missing(wanted, found));
    END IF;
    -- card_key_id is unique in issuance_keys: no DISTINCT needed.
    SELECT coalesce(array_agg(card_key_id), '{}') INTO wanted FROM new_rows;
    found := ARRAY(SELECT id FROM card_keys WHERE id = ANY (wanted));
    IF cardinality(found) <> cardinality(wanted) THEN
        PERFORM kami_raise_missing('card key', kami_first_missing(wanted, found));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER issuance_keys_references AFTER INSERT ON issuance_keys
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kami_issuance_keys_references();
CREATE TRIGGER issuance_keys_references_fixed BEFORE UPDATE OF issuance_id, card_key_id
    ON issuance_keys
    FOR EACH ROW WHEN (OLD.issuance_id IS DISTINCT FROM NEW.issuance_id
                       OR OLD.card_key_id IS DISTINCT FROM NEW.card_key_id)
    EXECUTE FUNCTION kami_forbid_repointing();

-- journal_lines: entry_id -> journal_entries, account_id -> accounts (lines are append-only).
ALTER TABLE journal_lines
    DROP CONSTRAINT journal_lines_entry_id_fkey,
    DROP CONSTRAINT journal_lines_account_id_fkey;

CREATE FUNCTION kami_journal_lines_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint[];
    found  bigint[];
BEGIN
    SELECT coalesce(array_agg(DISTINCT entry_id), '{}') INTO wanted FROM new_rows;
    found := ARRAY(SELECT id FROM journal_entries WHERE id = ANY (wanted));
    IF cardinality(found) <> cardinality(wanted) THEN
        PERFORM kami_raise_missing('journal entry', kami_first_missing(wanted, found));
    END IF;
    SELECT coalesce(array_agg(DISTINCT account_id), '{}') INTO wanted FROM new_rows;
    found := ARRAY(SELECT id FROM accounts WHERE id = ANY (wanted));
    IF cardinality(found) <> cardinality(wanted) THEN
        PERFORM kami_raise_missing('account', kami_first_missing(wanted, found));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER journal_lines_references AFTER INSERT ON journal_lines
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kami_journal_lines_references();

-- Every entry balances (0003): the lines of each entry of the statement are summed by
-- primary-key lookups, one per entry. The query it replaces left the join to the planner,
-- which picked a sequential scan of all journal lines whenever the table's statistics were
-- older than its growth: a flush's check then cost milliseconds, growing with the journal.
CREATE OR REPLACE FUNCTION kami_check_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced bigint;
BEGIN
    SELECT n.entry_id INTO unbalanced
    FROM (SELECT DISTINCT entry_id FROM new_lines) AS n
    CROSS JOIN LATERAL (SELECT sum(l.amount) AS total FROM journal_lines l
                        WHERE l.entry_id = n.entry_id) AS s
    WHERE s.total <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
