-- Bulk imports at a million keys a run.
--
-- Every index entry and trigger call is paid a million times per run, so card_keys keeps
-- only what reads need (measured with 1M keys on PostgreSQL 15, 2 cores):
--
-- * The two foreign keys are checked by a trigger call per inserted row: ~15 s of a ~30 s
--   insert. Even a set-based check per statement over the inserted rows costs ~1.2 s. Keys
--   are inserted by one path only (`add_codes`), in the transaction that creates their
--   batch of that product; what the keys protected afterwards is kept by triggers: a key's
--   product and batch cannot change, and products and batches cannot be deleted — they are
--   history that issuances, journal entries and audits point at.
-- * (product_id, state) indexed every key while almost all of them are 'available'; it now
--   holds only the others (held, issued, revoked). Available stock is the batches'
--   accepted total minus those.
-- * A batch's keys are inserted together, so their batch ids follow the heap order: a
--   block range index finds them at a fraction of a B-tree's upkeep (~3 s for the two).

ALTER TABLE card_keys
    DROP CONSTRAINT card_keys_product_id_fkey,
    DROP CONSTRAINT card_keys_batch_id_fkey;

CREATE FUNCTION kami_card_keys_fixed_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'card_keys: product_id and batch_id cannot change'
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER card_keys_owner_fixed BEFORE UPDATE OF product_id, batch_id ON card_keys
    FOR EACH ROW WHEN (OLD.product_id IS DISTINCT FROM NEW.product_id
                       OR OLD.batch_id IS DISTINCT FROM NEW.batch_id)
    EXECUTE FUNCTION kami_card_keys_fixed_owner();

CREATE TRIGGER products_kept BEFORE DELETE OR TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_change();
CREATE TRIGGER batches_kept BEFORE DELETE OR TRUNCATE ON batches
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_change();

DROP INDEX card_keys_product_state;
CREATE INDEX card_keys_product_state ON card_keys (product_id, state) WHERE state <> 'available';

DROP INDEX card_keys_batch;
CREATE INDEX card_keys_batch ON card_keys USING brin (batch_id);
