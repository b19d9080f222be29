"""A small XLSX writer: one sheet of numbers and inline strings.

Neither openpyxl nor xlsxwriter is a dependency, and a statement needs none of their
features: the SpreadsheetML parts below are the minimum Excel, LibreOffice and WPS open
without repair. Inline strings (not a shared-string table) keep it one pass; nothing is
ever written as a formula.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from xml.sax.saxutils import escape

_NS = "http://schemas.openxmlformats.org"
_MAIN = f"{_NS}/spreadsheetml/2006/main"
_REL = f"{_NS}/officeDocument/2006/relationships"
_PKG_REL = f"{_NS}/package/2006/relationships"
_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
# XML 1.0 cannot carry these at all, escaped or not.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Excel's own limit on a cell's text.
_MAX_CELL = 32_767

_CONTENT_TYPES = (
    _DECL + f'<Types xmlns="{_NS}/package/2006/content-types">'
    f'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
    'relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.'
    'openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    "</Types>"
)
_ROOT_RELS = (
    _DECL + f'<Relationships xmlns="{_PKG_REL}">'
    f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/>'
    "</Relationships>"
)
_WORKBOOK_RELS = (
    _DECL + f'<Relationships xmlns="{_PKG_REL}">'
    f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
    "</Relationships>"
)


def _column(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        name = chr(65 + remainder) + name
    return name


def _cell(ref: str, value: object) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, int):
        return f'<c r="{ref}"><v>{value}</v></c>'
    text = _INVALID_XML.sub("", "" if value is None else str(value))[:_MAX_CELL]
    return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{escape(text)}</t></is></c>'


def _sheet(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = [_DECL, f'<worksheet xmlns="{_MAIN}"><sheetData>']
    for number, row in enumerate([header, *rows], start=1):
        cells = "".join(_cell(f"{_column(i)}{number}", v) for i, v in enumerate(row))
        out.append(f'<row r="{number}">{cells}</row>')
    out.append("</sheetData></worksheet>")
    return "".join(out)


def write_xlsx(sheet_name: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    name = escape(sheet_name[:31])
    workbook = (
        _DECL + f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}">'
        f'<sheets><sheet name="{name}" sheetId="1" r:id="rId1"/></sheets></workbook>'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", workbook)
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        archive.writestr("xl/worksheets/sheet1.xml", _sheet(header, rows))
    return buffer.getvalue()
