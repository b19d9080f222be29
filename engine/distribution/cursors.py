"""Opaque list cursors of the distribution area: the last id seen, tagged by list."""

from __future__ import annotations

import base64

from engine.errors import CommonError, DomainError


def encode(tag: str, last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{tag}:{last_id}".encode()).decode().rstrip("=")


def decode(tag: str, cursor: str | None) -> int | None:
    """The id a cursor of list `tag` stands for; a cursor of another list, or none we made,
    is `422 invalid_request`."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        name, _, value = text.partition(":")
        last_id = int(value) if name == tag else 0
    except (ValueError, UnicodeDecodeError):
        last_id = 0
    if not 0 < last_id < 2**63:
        raise DomainError(CommonError.INVALID_REQUEST, "The cursor is not valid.")
    return last_id
