"""engine._core parsing of key files: TXT, CSV, spreadsheets, streaming."""

import io
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import CodeReader, ParseResult, parse_codes

Summary = tuple[list[str], list[tuple[int, str]], int]
Case = tuple[bytes, str, dict[str, object], list[int]]


def summary(result: ParseResult) -> Summary:
    return result.codes, result.rejected, result.skipped


def streamed(data: bytes, format: str, cuts: list[int], **options: object) -> Summary:
    reader = CodeReader(format, **options)  # type: ignore[arg-type]
    codes: list[str] = []
    rejected: list[tuple[int, str]] = []
    skipped = 0
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        part = reader.feed(data[start:cut])
        codes += part.codes
        rejected += part.rejected
        skipped += part.skipped
        start = cut
    last = reader.finish()
    return codes + last.codes, rejected + last.rejected, skipped + last.skipped


def test_txt_lines_bom_and_blank_lines() -> None:
    result = parse_codes(b"\xef\xbb\xbfA-1\r\n\r\n  B-2  \nC-3\rD-4", "txt")
    assert summary(result) == (["A-1", "B-2", "C-3", "D-4"], [], 1)
    assert repr(result) == "ParseResult(codes=4, rejected=0, skipped=1)"


def test_gbk_as_chinese_excel_writes_it() -> None:
    data = "卡密\r\n充值卡-甲1\r\n月卡二\r\n".encode("gbk")
    result = parse_codes(data, "txt", skip_header=True)
    assert summary(result) == (["充值卡-甲1", "月卡二"], [], 1)
    assert parse_codes("卡密\n".encode("gb18030"), "txt").codes == ["卡密"]
    assert parse_codes("卡密\n".encode(), "txt").codes == ["卡密"]
    assert parse_codes("卡密\n".encode("utf-16"), "txt").codes == ["卡密"]


def test_rejected_rows_have_numbers_and_reasons() -> None:
    data = "OK-1\nBAD\x00CODE\n\n" + "L" * 20 + "\nzero\u200bwidth\nOK-2\n"
    result = parse_codes(data.encode(), "txt", max_length=16)
    assert result.codes == ["OK-1", "OK-2"]
    assert result.rejected == [
        (2, "control_characters"),
        (4, "too_long"),
        (5, "control_characters"),
    ]
    assert result.skipped == 1
    assert parse_codes(b"\xff\xff\xff\n", "txt").rejected == [(1, "invalid_encoding")]


def test_csv_column_and_quoting() -> None:
    data = b'id,code,note\r\n1,"A,1",x\r\n2,"B""2","multi\r\nline"\r\n3\r\n4,,y\r\n,,\r\n5,C-3'
    result = parse_codes(data, "csv", column=1, skip_header=True)
    assert result.codes == ["A,1", 'B"2', "C-3"]
    assert result.rejected == [(4, "missing_column"), (5, "empty")]
    assert result.skipped == 2


NS = "http://schemas.openxmlformats.org"
PACKAGE_RELS = f"{NS}/package/2006/relationships"
OFFICE_RELS = f"{NS}/officeDocument/2006/relationships"
MAIN = f"{NS}/spreadsheetml/2006/main"
MEDIA = "application/vnd.openxmlformats-"


def relationships(kind: str, target: str) -> str:
    return (
        f'<Relationships xmlns="{PACKAGE_RELS}">'
        f'<Relationship Id="rId1" Type="{OFFICE_RELS}/{kind}" Target="{target}"/>'
        "</Relationships>"
    )


def minimal_xlsx(rows: list[list[str]]) -> bytes:
    """A one-sheet workbook with inline strings, written by hand: no spreadsheet library."""
    cells = "".join(
        f'<row r="{r}">'
        + "".join(
            f'<c r="{chr(65 + c)}{r}" t="inlineStr"><is><t>{text}</t></is></c>'
            for c, text in enumerate(row)
        )
        + "</row>"
        for r, row in enumerate(rows, start=1)
    )
    sheet_media = f"{MEDIA}officedocument.spreadsheetml"
    files = {
        "[Content_Types].xml": (
            f'<Types xmlns="{NS}/package/2006/content-types">'
            f'<Default Extension="rels" ContentType="{MEDIA}package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml"'
            f' ContentType="{sheet_media}.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml"'
            f' ContentType="{sheet_media}.worksheet+xml"/>'
            "</Types>"
        ),
        "_rels/.rels": relationships("officeDocument", "xl/workbook.xml"),
        "xl/workbook.xml": (
            f'<workbook xmlns="{MAIN}" xmlns:r="{OFFICE_RELS}"><sheets>'
            '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": relationships("worksheet", "worksheets/sheet1.xml"),
        "xl/worksheets/sheet1.xml": (
            f'<worksheet xmlns="{MAIN}"><sheetData>{cells}</sheetData></worksheet>'
        ),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def test_xlsx() -> None:
    data = minimal_xlsx([["序号", "卡密"], ["1", " KEY-1 "], ["2", ""], ["3", "卡密-二"]])
    result = parse_codes(data, "xlsx", column=1, skip_header=True)
    assert summary(result) == (["KEY-1", "卡密-二"], [(3, "empty")], 1)
    reader = CodeReader("xlsx", column=1, skip_header=True)
    assert summary(reader.feed(data[:100])) == ([], [], 0)
    reader.feed(data[100:])
    assert summary(reader.finish()) == summary(result)


def test_broken_spreadsheet_is_a_result_not_an_exception() -> None:
    assert parse_codes(b"PK\x03\x04 not really", "xlsx").rejected == [(0, "invalid_file")]


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        parse_codes(b"", "pdf")
    with pytest.raises(ValueError, match="column must be 0"):
        parse_codes(b"", "txt", column=2)
    with pytest.raises(ValueError, match="max_length"):
        CodeReader("txt", max_length=0)
    reader = CodeReader("csv")
    reader.finish()
    with pytest.raises(ValueError, match="finished"):
        reader.feed(b"x")
    with pytest.raises(ValueError, match="finished"):
        reader.finish()


ROW_TEXT = st.text(
    alphabet=st.sampled_from(list('ab Z9-,"\t\r\n\x00卡密é\u0301\u3000\u200b')),
    max_size=12,
)


@st.composite
def files(draw: st.DrawFn) -> Case:
    text = "".join(draw(st.lists(ROW_TEXT, max_size=12)))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "gb18030", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    format = draw(st.sampled_from(["txt", "csv"]))
    options: dict[str, object] = {
        "max_length": draw(st.integers(1, 8)),
        "skip_header": draw(st.booleans()),
    }
    if format == "csv":
        options["column"] = draw(st.integers(0, 2))
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=6))
    return data, format, options, cuts


@given(files())
def test_streaming_equals_whole_parse(case: Case) -> None:
    data, format, options, cuts = case
    whole = parse_codes(data, format, **options)  # type: ignore[arg-type]
    assert streamed(data, format, cuts, **options) == summary(whole)


@given(st.binary(max_size=300), st.sampled_from(["txt", "csv", "xlsx"]))
def test_any_bytes_parse_without_error(data: bytes, format: str) -> None:
    result = parse_codes(data, format)
    rows = [row for row, _ in result.rejected]
    assert rows == sorted(rows)
    for code in result.codes:
        assert code
        assert code == code.strip()
