-- Storefront orders: a buyer orders keys, pays through a provider, and gets them.
--
-- An order holds its keys in the pool (Redis) while it waits for payment; PostgreSQL
-- records which keys it was given only when they are delivered (order_keys, one order per
-- key ever). Every status change is one transaction guarded by the current status.

-- A sub-store: an agent's own storefront, found by its slug, with its retail prices.
ALTER TABLE agents ADD COLUMN store_slug text UNIQUE
    CHECK (store_slug ~ '^[a-z0-9][a-z0-9-]{1,62}$');
ALTER TABLE agents ADD COLUMN store_title text CHECK (length(store_title) <= 200);

CREATE TABLE store_prices (
    agent_id    bigint NOT NULL REFERENCES agents (id),
    product_id  bigint NOT NULL REFERENCES products (id),
    price       bigint NOT NULL CHECK (price >= 0),
    PRIMARY KEY (agent_id, product_id)
);

CREATE TABLE orders (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_no         text NOT NULL UNIQUE,
    -- sha256 of the buyer's lookup token: the token itself is shown once, never stored.
    lookup_hash      bytea NOT NULL CHECK (length(lookup_hash) = 32),
    status           text NOT NULL DEFAULT 'pending_payment' CHECK (status IN (
                         'pending_payment', 'paid', 'delivered', 'review',
                         'cancelled', 'expired', 'refunded')),
    product_id       bigint NOT NULL REFERENCES products (id),
    sku              text NOT NULL,
    quantity         integer NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    unit_price       bigint NOT NULL CHECK (unit_price >= 0),
    amount           bigint NOT NULL CHECK (amount >= 0),
    currency         char(3) NOT NULL,
    -- The sub-store's agent and what it pays the platform per unit (its cost).
    store_agent_id   bigint REFERENCES agents (id),
    agent_unit_cost  bigint CHECK (agent_unit_cost >= 0),
    contact_kind     text NOT NULL CHECK (contact_kind IN ('email', 'phone')),
    contact          text NOT NULL CHECK (length(contact) BETWEEN 3 AND 254),
    -- Reservation caps count unpaid orders per contact, IP and device.
    contact_hash     bytea NOT NULL,
    client_ip        inet,
    device           text CHECK (length(device) <= 128),
    locale           text NOT NULL DEFAULT 'zh-CN' CHECK (locale IN ('zh-CN', 'en')),
    payment_method   text NOT NULL,
    pay_url          text,
    qr_code          text,
    -- The pool holder of the order's keys.
    holder           text NOT NULL UNIQUE,
    expires_at       timestamptz NOT NULL,
    -- Paid, but its keys could not be delivered (the order expired and the stock is gone):
    -- the money must go back; operators see these until refunded.
    refund_due       boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    paid_at          timestamptz,
    delivered_at     timestamptz,
    closed_at        timestamptz
);
CREATE INDEX orders_unpaid_expiry ON orders (expires_at) WHERE status = 'pending_payment';
CREATE INDEX orders_unpaid_contact ON orders (contact_hash) WHERE status = 'pending_payment';
CREATE INDEX orders_unpaid_ip ON orders (client_ip) WHERE status = 'pending_payment';
CREATE INDEX orders_unpaid_device ON orders (device) WHERE status = 'pending_payment';
CREATE INDEX orders_refund_due ON orders (id) WHERE refund_due;

-- UNIQUE (card_key_id): a key is delivered to at most one order, ever.
CREATE TABLE order_keys (
    order_id     bigint NOT NULL REFERENCES orders (id),
    position     smallint NOT NULL,
    card_key_id  bigint NOT NULL REFERENCES card_keys (id) UNIQUE,
    PRIMARY KEY (order_id, position)
);

-- Payments received, one per (provider, trade no): a replayed callback finds its row.
CREATE TABLE payments (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id     bigint NOT NULL REFERENCES orders (id),
    provider     text NOT NULL,
    trade_no     text NOT NULL CHECK (length(trade_no) BETWEEN 1 AND 128),
    amount       bigint NOT NULL CHECK (amount >= 0),
    currency     char(3) NOT NULL,
    -- applied: paid for the order; refund_due: money the order cannot use (a second
    -- payment, or one that came too late to deliver); refunded: given back.
    status       text NOT NULL CHECK (status IN ('applied', 'refund_due', 'refunded')),
    refund_no    text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    refunded_at  timestamptz,
    UNIQUE (provider, trade_no)
);
CREATE INDEX payments_order ON payments (order_id);

-- One-time links that reveal an order's keys (sent by email instead of the keys).
CREATE TABLE reveal_links (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    order_id    bigint NOT NULL REFERENCES orders (id),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
