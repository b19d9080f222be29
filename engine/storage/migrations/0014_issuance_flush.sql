-- One group-commit flush in one statement (engine/issuance/recorder.py).
--
-- The flush used to be ten round trips inside an explicit transaction, with the hot
-- agent's account row locked from the first to the COMMIT: every round trip lengthened
-- the time the other workers waited on that lock. Called as a single statement outside a
-- transaction block, the function is its own transaction: one round trip, and the row
-- locks are held only while it runs and its commit is flushed.
--
-- Arguments are parallel arrays, one element per issuance ("item", 1-based), plus one
-- element per card key (p_key_item / p_key_id, in each issuance's key order) and one per
-- commission share (p_share_*: an ancestor's differential, credited out of the item's
-- amount to its balance or, when held for p_share_hold_days, its held account, with a
-- `commissions` row; what is left goes to p_credit_account, the platform's revenue).
--
-- Per item, in order: the debit must fit the account's credit limit (else
-- 'insufficient_balance'); an existing (agent, Idempotency-Key) is a committed retry
-- ('replay'); every key must still be available and of the item's product, else the
-- whole statement fails with SQLSTATE KM001 and the unavailable key ids in DETAIL, so
-- nothing of the flush is kept and the caller retries without those items.

CREATE FUNCTION kami_record_issuances(
    p_public_id       text[],
    p_agent_id        bigint[],
    p_api_key_id      bigint[],
    p_idempotency_key text[],
    p_request_hash    bytea[],
    p_product_id      bigint[],
    p_sku             text[],
    p_quantity        integer[],
    p_unit_price      bigint[],
    p_amount          bigint[],
    p_currency        text[],
    p_reference       text[],
    p_holder          text[],
    p_debit_account   text[],
    p_credit_account  bigint[],
    p_key_item        integer[],
    p_key_id          bigint[],
    p_share_item      integer[],
    p_share_account   bigint[],
    p_share_amount    bigint[],
    p_share_agent     bigint[],
    p_share_kind      text[],
    p_share_hold_days integer[],
    p_mode            text[]
) RETURNS TABLE (
    item        integer,
    outcome     text,
    issuance_id bigint,
    created_at  timestamptz,
    funds       bigint,
    spendable   bigint,
    expires     timestamptz[]
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n            integer := coalesce(array_length(p_public_id, 1), 0);
    codes        text[] := '{}';
    account_ids  bigint[] := '{}';
    balances     bigint[] := '{}';
    limits       bigint[] := '{}';
    result_of    text[] := array_fill(NULL::text, ARRAY[n]);
    accepted     boolean[] := array_fill(false, ARRAY[n]);
    inserted_id  bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    inserted_at  timestamptz[] := array_fill(NULL::timestamptz, ARRAY[n]);
    entry_of     bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    updated_ids  bigint[];
    updated_bats bigint[];
    expected     integer;
    bad          bigint[];
    r            record;
    j            integer;
BEGIN
    -- 1. Every account the flush touches, locked in id order: concurrent flushes and
    --    postings (which lock in the same order) cannot deadlock.
    FOR r IN
        SELECT acc.id, acc.code, acc.balance, coalesce(a.credit_limit, 0) AS credit_limit
        FROM accounts acc LEFT JOIN agents a ON a.id = acc.agent_id
        WHERE acc.code = ANY (p_debit_account)
           OR acc.id = ANY (p_credit_account)
           OR acc.id = ANY (coalesce(p_share_account, '{}'))
        ORDER BY acc.id
        FOR UPDATE OF acc
    LOOP
        IF r.code = ANY (p_debit_account) THEN
            codes := codes || r.code;
            account_ids := account_ids || r.id;
            balances := balances || r.balance;
            limits := limits || r.credit_limit;
        END IF;
    END LOOP;

    -- 2. Debits against balance and credit limit, in arrival order (debit-positive: the
    --    account's funds are -balance; never past the credit limit).
    FOR i IN 1 .. n LOOP
        j := array_position(codes, p_debit_account[i]);
        IF j IS NULL OR balances[j] + p_amount[i] > limits[j] THEN
            result_of[i] := 'insufficient_balance';
        ELSE
            balances[j] := balances[j] + p_amount[i];
            accepted[i] := true;
        END IF;
    END LOOP;

    -- 3. Issuances; a conflict on (agent, Idempotency-Key) is a committed retry.
    FOR r IN
        WITH ins AS (
            INSERT INTO issuances (public_id, agent_id, api_key_id, idempotency_key,
                request_hash, product_id, sku, quantity, unit_price, amount, currency,
                reference, holder, mode)
            SELECT u.public_id, u.agent_id, u.api_key_id, u.idempotency_key, u.request_hash,
                   u.product_id, u.sku, u.quantity, u.unit_price, u.amount, u.currency,
                   u.reference, u.holder, u.mode
            FROM unnest(p_public_id, p_agent_id, p_api_key_id, p_idempotency_key,
                        p_request_hash, p_product_id, p_sku, p_quantity, p_unit_price,
                        p_amount, p_currency, p_reference, p_holder, p_mode)
                 WITH ORDINALITY AS u(public_id, agent_id, api_key_id, idempotency_key,
                        request_hash, product_id, sku, quantity, unit_price, amount,
                        currency, reference, holder, mode, ord)
            WHERE accepted[u.ord::integer]
            ON CONFLICT DO NOTHING
            RETURNING issuances.id, issuances.public_id, issuances.created_at
        )
        SELECT ins.id, ins.created_at, p.ord::integer AS ord
        FROM ins JOIN unnest(p_public_id) WITH ORDINALITY AS p(public_id, ord)
            ON p.public_id = ins.public_id
    LOOP
        inserted_id[r.ord] := r.id;
        inserted_at[r.ord] := r.created_at;
    END LOOP;
    FOR i IN 1 .. n LOOP
        IF accepted[i] AND inserted_id[i] IS NULL THEN
            result_of[i] := 'replay';
            j := array_position(codes, p_debit_account[i]);
            balances[j] := balances[j] - p_amount[i];
        ELSIF accepted[i] THEN
            result_of[i] := 'committed';
        END IF;
    END LOOP;

    IF 'committed' = ANY (result_of) THEN
        -- 4. The guard: each key moves out of 'available' once, and only for its product.
        SELECT count(*) INTO expected
        FROM unnest(p_key_item) AS k(item) WHERE inserted_id[k.item] IS NOT NULL;
        WITH upd AS (
            UPDATE card_keys c
            SET state = 'issued', issued_to = inserted_id[k.item], issued_at = now()
            FROM unnest(p_key_item, p_key_id) AS k(item, id)
            WHERE inserted_id[k.item] IS NOT NULL
              AND c.id = k.id AND c.product_id = p_product_id[k.item]
              AND c.state = 'available'
            RETURNING c.id, c.batch_id
        )
        SELECT coalesce(array_agg(upd.id), '{}'), coalesce(array_agg(upd.batch_id), '{}')
        INTO updated_ids, updated_bats FROM upd;
        IF cardinality(updated_ids) <> expected THEN
            -- Missing from the update, or asked for twice in this flush.
            SELECT array_agg(DISTINCT k.id) INTO bad
            FROM unnest(p_key_item, p_key_id) AS k(item, id)
            WHERE inserted_id[k.item] IS NOT NULL
              AND (NOT k.id = ANY (updated_ids)
                   OR (SELECT count(*) FROM unnest(p_key_item, p_key_id) AS d(item, id)
                       WHERE inserted_id[d.item] IS NOT NULL AND d.id = k.id) > 1);
            RAISE EXCEPTION 'card keys not available at commit'
                USING ERRCODE = 'KM001', DETAIL = array_to_string(bad, ',');
        END IF;

        -- 5. Keys of each issuance, in the order they were taken.
        INSERT INTO issuance_keys (issuance_id, position, card_key_id)
        SELECT inserted_id[k.item],
               (row_number() OVER (PARTITION BY k.item ORDER BY k.ord) - 1)::smallint,
               k.id
        FROM unnest(p_key_item, p_key_id) WITH ORDINALITY AS k(item, id, ord)
        WHERE inserted_id[k.item] IS NOT NULL;

        -- 6. One balanced journal entry per paid issuance: the buyer's debit; each
        --    commission share; the rest to revenue. Account balances move with the lines.
        FOR r IN
            WITH entries AS (
                INSERT INTO journal_entries (kind, reference)
                SELECT 'issuance', p_public_id[g.i]
                FROM generate_subscripts(p_public_id, 1) AS g(i)
                WHERE inserted_id[g.i] IS NOT NULL AND p_amount[g.i] > 0
                RETURNING id, reference
            )
            SELECT e.id, p.ord::integer AS ord
            FROM entries e JOIN unnest(p_public_id) WITH ORDINALITY AS p(public_id, ord)
                ON p.public_id = e.reference
        LOOP
            entry_of[r.ord] := r.id;
        END LOOP;
        WITH paid AS (
            SELECT g.i, entry_of[g.i] AS entry_id
            FROM generate_subscripts(p_public_id, 1) AS g(i)
            WHERE entry_of[g.i] IS NOT NULL
        ), shares AS (
            SELECT s.item AS i, s.account, s.amount
            FROM unnest(p_share_item, p_share_account, p_share_amount) AS s(item, account, amount)
        ), raw_lines AS (
            SELECT paid.entry_id, account_ids[array_position(codes, p_debit_account[paid.i])]
                   AS account_id, p_amount[paid.i] AS amount
            FROM paid
            UNION ALL
            SELECT paid.entry_id, s.account, -s.amount
            FROM paid JOIN shares s ON s.i = paid.i
            UNION ALL
            SELECT paid.entry_id, p_credit_account[paid.i],
                   -(p_amount[paid.i] - coalesce((SELECT sum(s.amount) FROM shares s
                                                  WHERE s.i = paid.i), 0))
            FROM paid
        ), lines AS (
            INSERT INTO journal_lines (entry_id, account_id, amount)
            SELECT l.entry_id, l.account_id, sum(l.amount)
            FROM raw_lines l GROUP BY l.entry_id, l.account_id HAVING sum(l.amount) <> 0
            RETURNING account_id, amount
        )
        UPDATE accounts a SET balance = a.balance + d.delta
        FROM (SELECT account_id, sum(amount) AS delta FROM lines GROUP BY account_id) AS d
        WHERE a.id = d.account_id;

        INSERT INTO commissions (agent_id, source, reference, kind, amount, currency,
                                 entry_id, release_at)
        SELECT s.agent, 'issuance', p_public_id[s.item], s.kind, s.amount, p_currency[s.item],
               entry_of[s.item], CASE WHEN s.days IS NULL THEN NULL
                                      ELSE now() + make_interval(days => s.days) END
        FROM unnest(p_share_item, p_share_agent, p_share_kind, p_share_amount,
                    p_share_hold_days) AS s(item, agent, kind, amount, days)
        WHERE entry_of[s.item] IS NOT NULL;

        -- A buyer that is also an ancestor in this flush reports the funds its commissions
        -- left too (never counted in step 2: the order of a batch must not decide who may
        -- spend).
        FOR i IN 1 .. coalesce(array_length(p_share_item, 1), 0) LOOP
            j := array_position(account_ids, p_share_account[i]);
            IF j IS NOT NULL AND inserted_id[p_share_item[i]] IS NOT NULL THEN
                balances[j] := balances[j] - p_share_amount[i];
            END IF;
        END LOOP;
    END IF;

    -- 7. One row per item: its outcome, what the agent's account holds now, and the
    --    expiry of each key of a committed issuance (in key order).
    RETURN QUERY
    WITH exp AS (
        SELECT k.item AS i, array_agg(b.expires_at ORDER BY k.ord) AS expires
        FROM unnest(p_key_item, p_key_id) WITH ORDINALITY AS k(item, id, ord)
        JOIN unnest(updated_ids, updated_bats) AS u(id, batch_id) ON u.id = k.id
        JOIN batches b ON b.id = u.batch_id
        WHERE result_of[k.item] = 'committed'
        GROUP BY k.item
    )
    SELECT g.i, result_of[g.i], inserted_id[g.i], inserted_at[g.i],
           -balances[array_position(codes, p_debit_account[g.i])],
           CASE WHEN result_of[g.i] = 'insufficient_balance' THEN NULL
                ELSE limits[array_position(codes, p_debit_account[g.i])]
                     - balances[array_position(codes, p_debit_account[g.i])] END,
           exp.expires
    FROM generate_subscripts(p_public_id, 1) AS g(i) LEFT JOIN exp ON exp.i = g.i
    ORDER BY g.i;
END
$$;
