"""Agent level changes: automatic, by the levels' rules (`run_upgrades`), or by hand.

A rule of a level reads "the agent's paid sales (or deposits) over the last N days ≥ X →
level L" when L ranks higher (an upgrade), or "< X → L" when L ranks lower (a downgrade,
applied only if the level has `auto_downgrade`, and only once the agent has held the
level for the whole window, so a newcomer is not demoted for sales it could not have
made yet). Paid sales are the agent's issuance amounts plus its sub-store orders paid in
the window (refunded ones no longer count); deposits are the `deposit` entries credited
to its balance.

Each run takes at most one step per agent: the best upgrade met (highest target rank),
else the mildest downgrade met; rules of the new level apply from the next run, so rules
that point at each other cannot loop within a run. An automatic change never breaks the
tree's order: it does not lift a sub-agent to its parent's rank or above, nor drop a
parent to a child's rank or below. Every change — automatic or manual — is a row of
`agent_level_changes` with its reason (and the rule, copied) plus an audit record, in the
transaction that changes the level. One runner at a time (a transaction advisory lock);
the level update is guarded by the level it read, so a concurrent manual change wins
cleanly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg
import orjson
import structlog

from engine import audit
from engine.distribution.service import DistributionError
from engine.errors import DomainError
from engine.storage.db import Connection, Executor

log = structlog.get_logger(__name__)

_LOCK = 0x4B414D49555047  # "KAMIUPG"
SYSTEM_ACTOR = "system:upgrades"


class ChangeKind(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


class UpgradeError(StrEnum):
    LEVEL_UNCHANGED = "level_unchanged"


@dataclass(frozen=True)
class LevelChange:
    id: int
    agent_id: int
    from_level_id: int
    to_level_id: int
    kind: ChangeKind
    actor: str
    reason: str
    rule: dict[str, Any] | None
    created_at: datetime


def _change(row: asyncpg.Record) -> LevelChange:
    return LevelChange(
        id=row["id"],
        agent_id=row["agent_id"],
        from_level_id=row["from_level_id"],
        to_level_id=row["to_level_id"],
        kind=ChangeKind(row["kind"]),
        actor=row["actor"],
        reason=row["reason"],
        rule=orjson.loads(row["rule"]) if row["rule"] is not None else None,
        created_at=row["created_at"],
    )


async def _record(
    conn: Connection,
    agent_id: int,
    from_level: int,
    to_level: int,
    *,
    kind: ChangeKind,
    actor: str,
    reason: str,
    rule: dict[str, Any] | None,
    now: datetime | None,
) -> LevelChange:
    row = await conn.fetchrow(
        "INSERT INTO agent_level_changes (agent_id, from_level_id, to_level_id, kind, actor, "
        "reason, rule, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, "
        "coalesce($8, now())) RETURNING *",
        agent_id,
        from_level,
        to_level,
        kind.value,
        actor,
        reason,
        orjson.dumps(rule).decode() if rule is not None else None,
        now,
    )
    assert row is not None
    change = _change(row)
    await audit.record(
        conn,
        actor,
        "agent.level_changed",
        f"agent:{agent_id}",
        {
            "change_id": change.id,
            "from_level_id": from_level,
            "to_level_id": to_level,
            "kind": kind.value,
            "reason": reason,
            "rule": rule,
        },
    )
    return change


async def change_level(
    conn: Connection, agent_id: int, level_id: int, *, actor: str, reason: str
) -> LevelChange:
    """An operator moves an agent to a level by hand (any level: operators restructure
    trees; sales priced out of order are refused by the split at sale time)."""
    row = await conn.fetchrow("SELECT level_id FROM agents WHERE id = $1 FOR UPDATE", agent_id)
    if row is None:
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")
    if not await conn.fetchval("SELECT 1 FROM agent_levels WHERE id = $1", level_id):
        raise DomainError(DistributionError.LEVEL_NOT_FOUND, f"No agent level {level_id}.")
    if row["level_id"] == level_id:
        raise DomainError(
            UpgradeError.LEVEL_UNCHANGED, f"Agent {agent_id} is already at level {level_id}."
        )
    await conn.execute("UPDATE agents SET level_id = $2 WHERE id = $1", agent_id, level_id)
    return await _record(
        conn,
        agent_id,
        row["level_id"],
        level_id,
        kind=ChangeKind.MANUAL,
        actor=actor,
        reason=reason,
        rule=None,
        now=None,
    )


async def list_changes(
    conn: Executor, agent_id: int, *, limit: int, before_id: int | None
) -> list[LevelChange]:
    """An agent's level changes, newest first."""
    if not await conn.fetchval("SELECT 1 FROM agents WHERE id = $1", agent_id):
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")
    rows = await conn.fetch(
        "SELECT * FROM agent_level_changes WHERE agent_id = $1 AND ($2::bigint IS NULL OR "
        "id < $2) ORDER BY id DESC LIMIT $3",
        agent_id,
        before_id,
        limit,
    )
    return [_change(r) for r in rows]


# --- the job ------------------------------------------------------------------------------

# Live money only: sandbox sales (test keys, test orders) are not sales, and test
# deposits credit `agent:N:test_balance`, never the `:balance` account counted here.
_SALES = (
    "coalesce((SELECT sum(i.amount) FROM issuances i WHERE i.agent_id = a.id "
    "AND i.mode = 'live' AND i.refunded_at IS NULL "
    "AND i.created_at > $2 AND i.created_at <= $3), 0) + "
    "coalesce((SELECT sum(o.amount) FROM orders o WHERE o.store_agent_id = a.id "
    "AND o.mode = 'live' AND o.status IN ('paid', 'delivered') "
    "AND o.paid_at > $2 AND o.paid_at <= $3), 0)"
)
_DEPOSITS = (
    "coalesce((SELECT -sum(jl.amount) FROM accounts acc "
    "JOIN journal_lines jl ON jl.account_id = acc.id "
    "JOIN journal_entries je ON je.id = jl.entry_id "
    "WHERE acc.code = 'agent:' || a.id || ':balance' AND je.kind = 'deposit' "
    "AND je.created_at > $2 AND je.created_at <= $3), 0)"
)


@dataclass(frozen=True)
class _Rule:
    id: int
    level_id: int
    metric: str
    threshold: int
    window_days: int
    to_level_id: int
    to_rank: int
    from_rank: int
    auto_downgrade: bool

    @property
    def upgrade(self) -> bool:
        return self.to_rank > self.from_rank

    @property
    def downgrade(self) -> bool:
        # A rank changed since the rule was set can leave it pointing at an equal rank:
        # neither, so it does nothing.
        return self.to_rank < self.from_rank

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "metric": self.metric,
            "threshold": self.threshold,
            "window_days": self.window_days,
            "to_level_id": self.to_level_id,
        }


async def run_upgrades(conn: Connection, now: datetime) -> list[LevelChange]:
    """Apply every level's rules as of `now`; returns the changes made."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
            return []
        rows = await conn.fetch(
            "SELECT r.id, r.level_id, r.metric, r.threshold, r.window_days, r.to_level_id, "
            "t.rank AS to_rank, l.rank AS from_rank, l.auto_downgrade FROM agent_level_rules r "
            "JOIN agent_levels l ON l.id = r.level_id JOIN agent_levels t ON t.id = r.to_level_id "
            "ORDER BY r.level_id, r.id"
        )
        rules = [_Rule(**dict(r)) for r in rows]
        by_level: dict[int, list[_Rule]] = {}
        for rule in rules:
            if rule.upgrade or (rule.downgrade and rule.auto_downgrade):
                by_level.setdefault(rule.level_id, []).append(rule)
        changes = []
        for level_id, level_rules in by_level.items():
            changes.extend(await _run_level(conn, level_id, level_rules, now))
        return changes


async def _run_level(
    conn: Connection, level_id: int, rules: Sequence[_Rule], now: datetime
) -> list[LevelChange]:
    agents = await conn.fetch(
        "SELECT a.id, pl.rank AS parent_rank, "
        "(SELECT max(cl.rank) FROM agents c JOIN agent_levels cl ON cl.id = c.level_id "
        " WHERE c.parent_id = a.id) AS child_rank, "
        "coalesce((SELECT max(ch.created_at) FROM agent_level_changes ch "
        " WHERE ch.agent_id = a.id), a.created_at) AS level_since "
        "FROM agents a LEFT JOIN agents p ON p.id = a.parent_id "
        "LEFT JOIN agent_levels pl ON pl.id = p.level_id "
        "WHERE a.level_id = $1 AND a.status = 'active' ORDER BY a.id",
        level_id,
    )
    if not agents:
        return []
    ids = [a["id"] for a in agents]
    totals: dict[tuple[int, int], int] = {}
    for rule in rules:
        metric = _SALES if rule.metric == "sales" else _DEPOSITS
        since = now - timedelta(days=rule.window_days)
        for row in await conn.fetch(
            f"SELECT a.id, {metric} AS total FROM agents a WHERE a.id = ANY($1::bigint[])",  # noqa: S608 (constant fragments)
            ids,
            since,
            now,
        ):
            totals[(rule.id, row["id"])] = int(row["total"])

    changes = []
    for agent in agents:
        chosen = _choose(agent, rules, totals, now)
        if chosen is None:
            continue
        rule, total = chosen
        moved = await conn.fetchval(
            "UPDATE agents SET level_id = $3 WHERE id = $1 AND level_id = $2 RETURNING id",
            agent["id"],
            level_id,
            rule.to_level_id,
        )
        if moved is None:
            continue
        word = "≥" if rule.upgrade else "<"
        days = f"{rule.window_days} day" + ("s" if rule.window_days != 1 else "")
        reason = f"{rule.metric} of {total} over the last {days} {word} {rule.threshold}"
        changes.append(
            await _record(
                conn,
                agent["id"],
                level_id,
                rule.to_level_id,
                kind=ChangeKind.AUTOMATIC,
                actor=SYSTEM_ACTOR,
                reason=reason,
                rule={**rule.snapshot(), "total": total},
                now=now,
            )
        )
    return changes


def _choose(
    agent: asyncpg.Record,
    rules: Sequence[_Rule],
    totals: dict[tuple[int, int], int],
    now: datetime,
) -> tuple[_Rule, int] | None:
    parent_rank, child_rank = agent["parent_rank"], agent["child_rank"]
    upgrades, downgrades = [], []
    for rule in rules:
        total = totals[(rule.id, agent["id"])]
        if parent_rank is not None and rule.to_rank >= parent_rank:
            continue
        if child_rank is not None and rule.to_rank <= child_rank:
            continue
        if rule.upgrade and total >= rule.threshold:
            upgrades.append((rule, total))
        elif (
            rule.downgrade
            and total < rule.threshold
            and agent["level_since"] <= now - timedelta(days=rule.window_days)
        ):
            downgrades.append((rule, total))
    if upgrades:
        return max(upgrades, key=lambda c: (c[0].to_rank, -c[0].id))
    if downgrades:
        return max(downgrades, key=lambda c: (c[0].to_rank, -c[0].id))
    return None


async def upgrades_forever(db: asyncpg.Pool, interval_s: float) -> None:
    """Run the rules every `interval_s` (every worker starts one; the lock lets one run).
    The first run waits an interval too: upgrades are not urgent at start-up."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with db.acquire() as conn:
                changes = await run_upgrades(conn, datetime.now(UTC))
            if changes:
                log.info("agent_levels_changed", count=len(changes))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("agent_upgrades_failed", error=type(exc).__name__)
