"""The agent tree's depth limit (KAMI_AGENT_MAX_DEPTH).

A top-level agent is at depth 1, its children at 2, and so on. An agent's parent never
changes once it is created, so checking at creation keeps the whole tree within the
limit; the walk up is bounded anyway, so a corrupted tree cannot loop it.
"""

from __future__ import annotations

from enum import StrEnum

from engine.errors import DomainError
from engine.storage.db import Executor

# Beyond any configurable limit (Settings.agent_max_depth), so the walk always ends.
_WALK_LIMIT = 64


class TreeError(StrEnum):
    AGENT_TREE_TOO_DEEP = "agent_tree_too_deep"


async def agent_depth(conn: Executor, agent_id: int) -> int:
    depth: int = await conn.fetchval(
        "WITH RECURSIVE up AS ("
        " SELECT id, parent_id, 1 AS depth FROM agents WHERE id = $1"
        " UNION ALL SELECT a.id, a.parent_id, up.depth + 1 FROM agents a"
        " JOIN up ON a.id = up.parent_id WHERE up.depth < $2) "
        "SELECT coalesce(max(depth), 0) FROM up",
        agent_id,
        _WALK_LIMIT,
    )
    return depth


async def check_child_depth(conn: Executor, parent_id: int, max_depth: int) -> None:
    """Refuse a new child of `parent_id` that would sit deeper than `max_depth`."""
    if await agent_depth(conn, parent_id) + 1 > max_depth:
        raise DomainError(
            TreeError.AGENT_TREE_TOO_DEEP,
            f"The agent tree is limited to {max_depth} levels; agent {parent_id} cannot "
            "have children.",
            max_depth=max_depth,
        )
