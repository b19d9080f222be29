"""Reading codes from uploads: files streamed through the Rust parser, JSON lists screened
by the same rules.

A row the parser refuses for its content (too long, control characters, a spreadsheet
cell that is not text) is counted as rejected and the rest of the batch goes in. A file
that is malformed as a whole (damaged spreadsheet, unterminated quote, bytes that decode
as nothing, the chosen column missing) is refused with the rows at fault and nothing is
loaded: importing half of a file the operator cannot see is worse than importing none.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from engine._core import CodeReader, ParseResult, parse_codes
from engine.errors import DomainError

CHUNK_BYTES = 1 << 20
MAX_CODE_LENGTH = 512
FORMATS = ("txt", "csv", "xlsx")
_MALFORMED = frozenset({"invalid_file", "unterminated_quote", "invalid_encoding", "missing_column"})
# Spreadsheets (XLSX, and the XLS/ODS the parser also reads) are zip or OLE containers.
_SPREADSHEET_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")


class InventoryError(StrEnum):
    INVALID_FILE = "invalid_file"


class Readable(Protocol):
    @property
    def filename(self) -> str | None: ...

    async def read(self, size: int = -1) -> bytes: ...


def _format_for(filename: str | None, declared: str | None, head: bytes) -> str:
    if declared is not None:
        if declared not in FORMATS:
            raise DomainError(
                InventoryError.INVALID_FILE, f"format must be one of {', '.join(FORMATS)}."
            )
        return declared
    suffix = (filename or "").rsplit(".", 1)[-1].lower()
    if suffix in {"xlsx", "xls", "xlsm", "xlsb", "ods"} or head.startswith(_SPREADSHEET_MAGIC):
        return "xlsx"
    return "csv" if suffix == "csv" else "txt"


def _collect(result: ParseResult, codes: list[str], rejected: list[tuple[int, str]]) -> None:
    codes.extend(result.codes)
    rejected.extend(result.rejected)


def _refuse_malformed(rejected: Sequence[tuple[int, str]]) -> None:
    malformed = [(row, reason) for row, reason in rejected if reason in _MALFORMED]
    if malformed:
        rows = ", ".join(f"{row} ({reason})" for row, reason in malformed[:20])
        raise DomainError(
            InventoryError.INVALID_FILE,
            f"The file is malformed at rows {rows}; nothing was loaded.",
            errors=[{"line": row, "reason": reason} for row, reason in malformed[:1000]],
        )


async def read_codes_file(
    upload: Readable, *, declared_format: str | None = None, column: int | None = None
) -> tuple[list[str], list[tuple[int, str]]]:
    """Stream an uploaded file through the parser; returns (codes, rejected rows)."""
    head = await upload.read(CHUNK_BYTES)
    file_format = _format_for(upload.filename, declared_format, head)
    try:
        reader = CodeReader(file_format, column=column, max_length=MAX_CODE_LENGTH)
    except (ValueError, OverflowError) as exc:
        # The parser's own words ("a TXT file has one column ...") name the problem.
        raise DomainError(
            InventoryError.INVALID_FILE, str(exc).removeprefix("invalid argument: ")
        ) from None
    codes: list[str] = []
    rejected: list[tuple[int, str]] = []
    chunk = head
    while chunk:
        _collect(reader.feed(chunk), codes, rejected)
        chunk = await upload.read(CHUNK_BYTES)
    _collect(reader.finish(), codes, rejected)
    _refuse_malformed(rejected)
    return codes, rejected


def screen_codes(raw: Sequence[str]) -> tuple[list[str], list[tuple[int, str]]]:
    """Apply the file rules to a JSON list of codes; rows are 1-based list positions."""
    rejected: list[tuple[int, str]] = []
    positions: list[int] = []
    lines: list[str] = []
    for position, code in enumerate(raw, start=1):
        # A line break inside one code would split it in two below: refuse it here.
        if "\n" in code or "\r" in code:
            rejected.append((position, "control_characters"))
        else:
            positions.append(position)
            lines.append(code)
    result = parse_codes("\n".join(lines).encode(), "txt", max_length=MAX_CODE_LENGTH)
    rejected.extend((positions[row - 1], reason) for row, reason in result.rejected)
    rejected.sort()
    return list(result.codes), rejected
