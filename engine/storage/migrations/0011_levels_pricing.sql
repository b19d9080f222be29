-- Agent levels priced in depth (engine/pricing, engine/distribution/levels.py): a discount
-- off the retail price, quantity tiers (价格阶梯), who may create sub-agents, the prices a
-- parent sets for its children, and upgrade rules with a history of level changes.

-- discount_bp: a level-wide discount off each product's retail price, in basis points,
-- for SKUs without an absolute price in agent_level_prices. NULL: no discount (retail).
ALTER TABLE agent_levels
    ADD COLUMN discount_bp integer CHECK (discount_bp BETWEEN 0 AND 10000),
    ADD COLUMN can_create_sub_agents boolean NOT NULL DEFAULT false,
    -- Downgrade rules of this level are applied only when this is on.
    ADD COLUMN auto_downgrade boolean NOT NULL DEFAULT false,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- From min_quantity units in one purchase, the unit price is `price` (quantity 1 pays the
-- level's base price). Validated in order when configured: thresholds rise, prices fall.
CREATE TABLE agent_level_tiers (
    level_id      bigint NOT NULL REFERENCES agent_levels (id) ON DELETE CASCADE,
    product_id    bigint NOT NULL REFERENCES products (id),
    min_quantity  integer NOT NULL CHECK (min_quantity >= 2),
    price         bigint NOT NULL CHECK (price >= 0),
    PRIMARY KEY (level_id, product_id, min_quantity)
);

-- What a parent agent charges one of its children for a SKU: the child pays
-- max(its level's price, this). Never below the parent's own cost when it was set.
CREATE TABLE agent_price_overrides (
    agent_id    bigint NOT NULL REFERENCES agents (id),
    product_id  bigint NOT NULL REFERENCES products (id),
    price       bigint NOT NULL CHECK (price >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, product_id)
);
-- The terms cache asks, per (level, product), whether any agent of the level has one.
CREATE INDEX agent_price_overrides_product ON agent_price_overrides (product_id);

-- "Paid sales (or deposits) >= threshold over the last window_days -> to_level_id" for an
-- upgrade (a higher-ranked target); "< threshold" for a downgrade (a lower-ranked target),
-- applied only when the level allows automatic downgrades.
CREATE TABLE agent_level_rules (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    level_id     bigint NOT NULL REFERENCES agent_levels (id) ON DELETE CASCADE,
    metric       text NOT NULL CHECK (metric IN ('sales', 'deposits')),
    threshold    bigint NOT NULL CHECK (threshold >= 0),
    window_days  integer NOT NULL CHECK (window_days BETWEEN 1 AND 3660),
    to_level_id  bigint NOT NULL REFERENCES agent_levels (id),
    CHECK (to_level_id <> level_id)
);
CREATE INDEX agent_level_rules_level ON agent_level_rules (level_id);

-- Every change of an agent's level, automatic or by hand, with its reason. History:
-- append-only, and the rule that fired is copied in (rules are replaced when edited).
CREATE TABLE agent_level_changes (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id       bigint NOT NULL REFERENCES agents (id),
    from_level_id  bigint NOT NULL REFERENCES agent_levels (id),
    to_level_id    bigint NOT NULL REFERENCES agent_levels (id),
    kind           text NOT NULL CHECK (kind IN ('automatic', 'manual')),
    actor          text NOT NULL,
    reason         text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    rule           jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_level_changes_agent ON agent_level_changes (agent_id, id);

CREATE TRIGGER agent_level_changes_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON agent_level_changes
    FOR EACH STATEMENT EXECUTE FUNCTION kami_forbid_change();

-- run_upgrades sums an agent's sales and deposits over a window.
CREATE INDEX orders_store_agent_paid ON orders (store_agent_id, paid_at)
    WHERE store_agent_id IS NOT NULL AND paid_at IS NOT NULL;
