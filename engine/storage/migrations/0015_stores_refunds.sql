-- Sub-store identity and markup rules; issuance refunds.

-- A store's contact (free named fields, e.g. email, phone, qq, wechat) is shown on its
-- public page. Its markup over the agent's own cost applies where the store sets no
-- absolute price for a SKU: a rate in basis points or a fixed amount per unit, not both.
ALTER TABLE agents ADD COLUMN store_contact jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(store_contact) = 'object');
ALTER TABLE agents ADD COLUMN store_markup_bp integer
    CHECK (store_markup_bp BETWEEN 0 AND 100000);
ALTER TABLE agents ADD COLUMN store_markup_amount bigint
    CHECK (store_markup_amount BETWEEN 0 AND 1000000000000);
ALTER TABLE agents ADD CONSTRAINT agents_store_one_markup
    CHECK (store_markup_bp IS NULL OR store_markup_amount IS NULL);

-- An issuance is refunded at most once: the refund sets these in the transaction that
-- revokes its keys and posts the reversing entry, guarded by `refunded_at IS NULL`.
ALTER TABLE issuances ADD COLUMN refunded_at timestamptz;
ALTER TABLE issuances ADD COLUMN refund_entry_id bigint REFERENCES journal_entries (id);
ALTER TABLE issuances ADD COLUMN refund_reason text CHECK (length(refund_reason) <= 200);
