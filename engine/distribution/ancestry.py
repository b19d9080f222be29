"""Who earns what above an agent when it buys through the API: the hot path's view of the
agent tree, cached per worker.

An issuance by an agent with a parent pays each ancestor its differential (级差): the
child's unit cost less the ancestor's, times the quantity (`split_sale` does the
arithmetic). The split is computed here, before the group commit, so the commit stays one
batched transaction with no per-issuance reads. An agent without a parent costs one dict
lookup: its empty chain is cached like every other.

An ancestor's cost is its quote from engine.distribution.levels (level price or discount,
quantity tiers, its parent's price for it), the same resolution every sale uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.distribution.commissions import AgentCost, Sale, ShareKind, split_sale
from engine.distribution.levels import agent_quotes
from engine.storage.db import Executor

CHAIN_TTL_S = 10.0
COST_TTL_S = 2.0
# A tree deeper than this is a cycle or a mistake; the split refuses repeated agents anyway.
MAX_DEPTH = 32
_MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class Ancestor:
    agent_id: int
    level_id: int
    # The ancestor's level holds its commissions this many days (0: spendable at once).
    hold_days: int


@dataclass(frozen=True)
class CommissionShare:
    agent_id: int
    kind: ShareKind
    amount: int
    hold_days: int


async def load_ancestors(db: Executor, agent_id: int) -> tuple[Ancestor, ...]:
    rows = await db.fetch(
        "WITH RECURSIVE chain AS ("
        " SELECT a.parent_id AS id, 1 AS depth FROM agents a WHERE a.id = $1"
        " UNION ALL SELECT a.parent_id, c.depth + 1 FROM agents a JOIN chain c ON a.id = c.id"
        " WHERE c.depth < $2) "
        "SELECT a.id, a.level_id, l.commission_hold_days FROM chain c "
        "JOIN agents a ON a.id = c.id JOIN agent_levels l ON l.id = a.level_id "
        "ORDER BY c.depth",
        agent_id,
        MAX_DEPTH,
    )
    return tuple(Ancestor(r["id"], r["level_id"], r["commission_hold_days"]) for r in rows)


class AncestryCache:
    """Each agent's ancestors (10 s) and their unit costs (2 s, like sale terms)."""

    def __init__(self, chain_ttl_s: float = CHAIN_TTL_S, cost_ttl_s: float = COST_TTL_S) -> None:
        self._chain_ttl_s = chain_ttl_s
        self._cost_ttl_s = cost_ttl_s
        self._chains: dict[int, tuple[float, tuple[Ancestor, ...]]] = {}
        # (buyer, SKU, quantity) -> what each of the buyer's ancestors pays per unit.
        self._costs: dict[tuple[int, str, int], tuple[float, tuple[int, ...]]] = {}

    async def ancestors(self, db: Executor, agent_id: int) -> tuple[Ancestor, ...]:
        now = time.monotonic()
        cached = self._chains.get(agent_id)
        if cached is None or cached[0] <= now:
            if len(self._chains) >= _MAX_ENTRIES:
                self._chains.clear()
            cached = (now + self._chain_ttl_s, await load_ancestors(db, agent_id))
            self._chains[agent_id] = cached
        return cached[1]

    async def _costs_above(
        self, db: Executor, agent_id: int, ancestors: tuple[Ancestor, ...], sku: str, quantity: int
    ) -> tuple[int, ...]:
        key = (agent_id, sku, quantity)
        now = time.monotonic()
        cached = self._costs.get(key)
        if cached is None or cached[0] <= now:
            if len(self._costs) >= _MAX_ENTRIES:
                self._costs.clear()
            quotes = await agent_quotes(db, [a.agent_id for a in ancestors], sku, quantity)
            cached = (
                now + self._cost_ttl_s,
                tuple(quotes[a.agent_id].unit_price for a in ancestors),
            )
            self._costs[key] = cached
        return cached[1]

    async def shares(
        self, db: Executor, agent_id: int, sku: str, unit_price: int, quantity: int
    ) -> tuple[CommissionShare, ...]:
        """The ancestors' differentials on `agent_id` buying `quantity` at `unit_price`;
        empty for a top-level agent. Raises the split's `DomainError` when a level's price
        is out of order along the path (an ancestor paying more than its child)."""
        ancestors = await self.ancestors(db, agent_id)
        if not ancestors:
            return ()
        costs = await self._costs_above(db, agent_id, ancestors, sku, quantity)
        chain = [AgentCost(agent_id, unit_price)]
        chain += [AgentCost(a.agent_id, cost) for a, cost in zip(ancestors, costs, strict=True)]
        split = split_sale(
            Sale(quantity=quantity, unit_price=unit_price, chain=tuple(chain), cost_basis=0)
        )
        # The split names every ancestor once, in chain order, after the seller's margin
        # (0 here: the buyer pays its own cost); zero differentials post nothing.
        differentials = [s for s in split if s.kind is ShareKind.DIFFERENTIAL]
        return tuple(
            CommissionShare(ancestor.agent_id, share.kind, share.amount, ancestor.hold_days)
            for ancestor, share in zip(ancestors, differentials, strict=True)
            if share.amount > 0
        )

    def clear(self) -> None:
        self._chains.clear()
        self._costs.clear()
