"""The operator's management of agents: the list, changes to one agent, and the rule that
an agent's sandbox (test) key cannot act on its live business."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.distribution.service import Agent, DistributionError
from engine.errors import DomainError
from engine.storage.db import Connection, Executor


class AgentAdminError(StrEnum):
    # A test key (kami_test_…) tried something that moves real money or changes the
    # live business: withdrawals, sub-agents, their prices.
    LIVE_KEY_REQUIRED = "live_key_required"
    AGENT_UNCHANGED = "agent_unchanged"


class AgentStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


# The columns of `Agent`, with its balances; one statement for a whole page.
_SELECT = (
    "SELECT a.id, a.name, a.level_id, a.parent_id, a.credit_limit, a.status, a.created_at, "
    "coalesce(-acc.balance, 0) AS balance, coalesce(acc.currency, 'CNY') AS currency, "
    "coalesce(-h.balance, 0) AS held, coalesce((SELECT sum(c.amount) FROM commissions c "
    "WHERE c.agent_id = a.id AND c.reversed_at IS NULL), 0)::bigint AS commission_total, "
    "coalesce(-tst.balance, 0) AS test_balance "
    "FROM agents a LEFT JOIN accounts acc ON acc.code = 'agent:' || a.id || ':balance' "
    "LEFT JOIN accounts h ON h.code = 'agent:' || a.id || ':held' "
    "LEFT JOIN accounts tst ON tst.code = 'agent:' || a.id || ':test_balance' "
)


def require_live(mode: str) -> None:
    """Refuse a sandbox key: what it would do is real."""
    if mode != "live":
        raise DomainError(
            AgentAdminError.LIVE_KEY_REQUIRED,
            "A test key cannot do this: it moves real money or changes the live business. "
            "Use a live key (kami_live_…).",
        )


async def list_agents(
    conn: Executor,
    *,
    limit: int,
    after_id: int | None = None,
    parent_id: int | None = None,
    level_id: int | None = None,
    status: AgentStatus | None = None,
) -> list[Agent]:
    """Agents oldest first, optionally only the children of `parent_id`, the agents of a
    level, or those of a status."""
    rows = await conn.fetch(
        _SELECT + "WHERE a.id > $1 AND ($2::bigint IS NULL OR a.parent_id = $2) "
        "AND ($3::bigint IS NULL OR a.level_id = $3) AND ($4::text IS NULL OR a.status = $4) "
        "ORDER BY a.id LIMIT $5",
        after_id or 0,
        parent_id,
        level_id,
        status.value if status is not None else None,
        limit,
    )
    return [Agent(**dict(r)) for r in rows]


async def read_agent(conn: Executor, agent_id: int) -> Agent:
    row = await conn.fetchrow(_SELECT + "WHERE a.id = $1", agent_id)
    if row is None:
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")
    return Agent(**dict(row))


async def require_agent(conn: Executor, agent_id: int) -> None:
    if not await conn.fetchval("SELECT 1 FROM agents WHERE id = $1", agent_id):
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")


@dataclass(frozen=True)
class AgentUpdate:
    """The fields to change; None leaves a field as it is."""

    name: str | None = None
    credit_limit: int | None = None
    status: AgentStatus | None = None


@dataclass(frozen=True)
class UpdatedAgent:
    agent: Agent
    # Each changed field as {"from": old, "to": new}: the audit detail.
    changes: dict[str, dict[str, Any]]


async def update_agent(conn: Connection, agent_id: int, update: AgentUpdate) -> UpdatedAgent:
    """Change an agent's name, credit limit or status, under its row lock so two
    concurrent changes are recorded in the order they apply.

    A change that changes nothing is `409 agent_unchanged`, so an audit record always
    says something happened."""
    row = await conn.fetchrow(
        "SELECT name, credit_limit, status FROM agents WHERE id = $1 FOR UPDATE", agent_id
    )
    if row is None:
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")
    wanted: dict[str, Any] = {
        "name": update.name,
        "credit_limit": update.credit_limit,
        "status": update.status.value if update.status is not None else None,
    }
    changes = {
        field: {"from": row[field], "to": value}
        for field, value in wanted.items()
        if value is not None and value != row[field]
    }
    if not changes:
        raise DomainError(AgentAdminError.AGENT_UNCHANGED, f"Agent {agent_id} is already so.")
    await conn.execute(
        "UPDATE agents SET name = coalesce($2, name), credit_limit = coalesce($3, credit_limit), "
        "status = coalesce($4, status) WHERE id = $1",
        agent_id,
        wanted["name"],
        wanted["credit_limit"],
        wanted["status"],
    )
    return UpdatedAgent(await read_agent(conn, agent_id), changes)


async def agent_key_ids(conn: Executor, agent_id: int) -> list[int]:
    rows = await conn.fetch("SELECT id FROM api_keys WHERE agent_id = $1", agent_id)
    return [r["id"] for r in rows]
