-- How a sub-store order's money divides through the agent tree (engine.distribution.
-- commissions): the selling agent's margin, each ancestor's differential (级差), the
-- platform's revenue. Fixed when the order is placed, so the buyer's price and every
-- commission are what they were then; credited in the commit that records the payment,
-- reversed by a refund.
CREATE TABLE order_shares (
    order_id  bigint NOT NULL REFERENCES orders (id),
    position  smallint NOT NULL,
    -- NULL: the platform.
    agent_id  bigint REFERENCES agents (id),
    kind      text NOT NULL CHECK (kind IN ('margin', 'differential', 'promoter', 'revenue')),
    amount    bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (order_id, position)
);
