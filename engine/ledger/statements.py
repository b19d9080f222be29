"""Per-agent statements: every journal line of the agent's accounts, oldest first, with the
running balance of its account after the line.

Amounts are in the agent's view (money in positive, money out negative): an agent's
accounts are liabilities of the platform, so that is the negation of the ledger's
debit-positive amounts. Statements carry entry kinds and references (issuance ids, order
numbers, deposit references) and never a card key.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime

from engine.errors import CommonError, DomainError
from engine.ledger.xlsx import write_xlsx
from engine.storage.db import Executor

EXPORT_PAGE = 5_000
# An XLSX is built in memory; past this the export says so rather than exhaust a worker.
XLSX_MAX_ROWS = 200_000

COLUMNS = ("entry_id", "created_at", "account", "kind", "reference", "amount", "balance")


@dataclass(frozen=True)
class Period:
    """Lines from `since` (inclusive) to `until` (exclusive); the running balance still
    counts everything before, so a month's statement opens with the right balance."""

    since: datetime | None = None
    until: datetime | None = None


ALL_TIME = Period()


@dataclass(frozen=True)
class StatementLine:
    entry_id: int
    account_id: int
    # balance, held or withdrawing: the last part of the account code.
    account: str
    kind: str
    reference: str | None
    amount: int
    balance: int
    created_at: datetime

    def row(self) -> tuple[object, ...]:
        return (
            self.entry_id,
            self.created_at.isoformat(),
            self.account,
            self.kind,
            self.reference or "",
            self.amount,
            self.balance,
        )


def encode_cursor(kind: str, *position: int) -> str:
    """An opaque list cursor: the kind of list and the last row's position in it."""
    raw = ":".join([kind, *map(str, position)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, size: int) -> tuple[int, ...]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, *parts = raw.split(":")
        position = tuple(int(part) for part in parts)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        prefix, position = "", ()
    if prefix != kind or len(position) != size or not all(0 < p < 2**63 for p in position):
        raise DomainError(CommonError.INVALID_REQUEST, "The cursor is not one we issued.")
    return position


def line_cursor(line: StatementLine) -> str:
    return encode_cursor("st", line.entry_id, line.account_id)


def decode_line_cursor(cursor: str) -> tuple[int, int]:
    entry, account = decode_cursor(cursor, "st", 2)
    return entry, account


async def statement(
    conn: Executor,
    agent_id: int,
    *,
    limit: int,
    after: tuple[int, int] | None = None,
    period: Period = ALL_TIME,
    mode: str = "live",
) -> list[StatementLine]:
    """The lines of the agent's accounts of one mode: a live statement never shows the
    sandbox (`agent:N:test_balance`), and a test key's statement shows nothing else."""
    # The running balance is a window over the account's whole history, then cut to the
    # page: correct on every page without storing a balance on each append-only line.
    rows = await conn.fetch(
        "SELECT * FROM ("
        " SELECT l.entry_id, l.account_id, split_part(acc.code, ':', 3) AS account, e.kind,"
        " e.reference, e.created_at, -l.amount AS amount,"
        " sum(-l.amount) OVER (PARTITION BY l.account_id ORDER BY l.entry_id) AS balance"
        " FROM accounts acc JOIN journal_lines l ON l.account_id = acc.id"
        " JOIN journal_entries e ON e.id = l.entry_id WHERE acc.agent_id = $1 AND acc.mode = $7"
        ") s WHERE ($2::bigint IS NULL OR (entry_id, account_id) > ($2, $3::bigint)) "
        "AND ($5::timestamptz IS NULL OR created_at >= $5) "
        "AND ($6::timestamptz IS NULL OR created_at < $6) "
        "ORDER BY entry_id, account_id LIMIT $4",
        agent_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
        period.since,
        period.until,
        mode,
    )
    return [
        StatementLine(
            entry_id=r["entry_id"],
            account_id=r["account_id"],
            account=r["account"],
            kind=r["kind"],
            reference=r["reference"],
            amount=int(r["amount"]),
            balance=int(r["balance"]),
            created_at=r["created_at"],
        )
        for r in rows
    ]


async def all_lines(
    conn: Executor, agent_id: int, period: Period = ALL_TIME, mode: str = "live"
) -> AsyncIterator[StatementLine]:
    after: tuple[int, int] | None = None
    while True:
        page = await statement(
            conn, agent_id, limit=EXPORT_PAGE, after=after, period=period, mode=mode
        )
        for line in page:
            yield line
        if len(page) < EXPORT_PAGE:
            return
        after = (page[-1].entry_id, page[-1].account_id)


def _safe_cell(value: object) -> object:
    # A spreadsheet runs a cell that starts like a formula: references come from clients.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_chunk(lines: Iterable[tuple[object, ...]], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(COLUMNS)
    writer.writerows([_safe_cell(v) for v in line] for line in lines)
    return out.getvalue()


async def csv_export(
    conn: Executor, agent_id: int, period: Period = ALL_TIME, mode: str = "live"
) -> AsyncIterator[bytes]:
    """The whole statement as CSV (UTF-8 with a BOM, which spreadsheet programs need to
    read Chinese text right), in chunks."""
    yield "\ufeff".encode() + csv_chunk([], header=True).encode()
    batch: list[tuple[object, ...]] = []
    async for line in all_lines(conn, agent_id, period, mode):
        batch.append(line.row())
        if len(batch) >= EXPORT_PAGE:
            yield csv_chunk(batch, header=False).encode()
            batch = []
    if batch:
        yield csv_chunk(batch, header=False).encode()


async def xlsx_export(
    conn: Executor, agent_id: int, period: Period = ALL_TIME, mode: str = "live"
) -> bytes:
    rows: list[tuple[object, ...]] = []
    async for line in all_lines(conn, agent_id, period, mode):
        rows.append(line.row())
        if len(rows) > XLSX_MAX_ROWS:
            raise DomainError(
                CommonError.INVALID_REQUEST,
                f"The statement has more than {XLSX_MAX_ROWS} lines; export it as CSV.",
            )
    return write_xlsx("statement", COLUMNS, rows)
