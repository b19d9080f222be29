//! XLSX: the first worksheet, one column. Row numbers are the sheet's own, as Excel shows
//! them.
//!
//! Cells are streamed and only the chosen column is kept. calamine's `Range` would be
//! simpler but allocates the whole bounding box: two cells at A1 and XFD1048576 in a
//! few-kilobyte upload would ask for 17 billion cells. For the same reason only XLSX is
//! read (calamine's XLS reader builds every sheet's range when the file is opened).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use calamine::{DataRef, Reader, Xlsx, open_workbook_from_rs};

use super::{Encoding, Options, Parsed, Reason, Row, Validator};

/// Excel keeps 15 significant digits: an integer this large may already have lost some.
const EXACT_INTEGER_LIMIT: f64 = 1e15;

/// The chosen column's cell in a row that has content somewhere.
enum Cell {
    Missing,
    Text(String),
    Rejected(Reason),
}

pub(crate) fn parse(data: &[u8], options: &Options) -> Parsed {
    // A panic in a third-party reader on a hostile file must not take the worker down;
    // the file is reported as unreadable like any other damage.
    match catch_unwind(AssertUnwindSafe(|| read_column(data, options.column))) {
        Ok(Ok(rows)) => validate(rows, options),
        Ok(Err(())) | Err(_) => Parsed {
            rejected: vec![(0, Reason::InvalidFile)],
            ..Parsed::default()
        },
    }
}

/// Rows with any non-empty cell (0-based row index), with the chosen column's cell.
/// calamine's errors can quote cell content, so they are dropped, not passed on.
fn read_column(data: &[u8], column: usize) -> Result<BTreeMap<u32, Cell>, ()> {
    let mut book: Xlsx<_> = open_workbook_from_rs(Cursor::new(data)).map_err(drop)?;
    let Some(name) = book.sheet_names().first().cloned() else {
        return Ok(BTreeMap::new());
    };
    let mut cells = book.worksheet_cells_reader(&name).map_err(drop)?;
    let mut rows = BTreeMap::new();
    while let Some(cell) = cells.next_cell().map_err(drop)? {
        let value = cell.get_value();
        if matches!(value, DataRef::Empty) {
            continue;
        }
        let (row, col) = cell.get_position();
        let entry = rows.entry(row).or_insert(Cell::Missing);
        if usize::try_from(col).is_ok_and(|col| col == column) {
            *entry = cell_text(value);
        }
    }
    Ok(rows)
}

fn cell_text(value: &DataRef<'_>) -> Cell {
    match value {
        DataRef::String(text) => Cell::Text(text.clone()),
        DataRef::SharedString(text) => Cell::Text((*text).to_owned()),
        DataRef::Int(value) => Cell::Text(value.to_string()),
        DataRef::Float(value) => match float_text(*value) {
            Ok(text) => Cell::Text(text),
            Err(reason) => Cell::Rejected(reason),
        },
        DataRef::Empty => Cell::Missing,
        DataRef::Bool(_)
        | DataRef::DateTime(_)
        | DataRef::DateTimeIso(_)
        | DataRef::DurationIso(_) => Cell::Rejected(Reason::UnsupportedCell),
        DataRef::Error(_) => Cell::Rejected(Reason::CellError),
    }
}

fn validate(rows: BTreeMap<u32, Cell>, options: &Options) -> Parsed {
    let mut validator = Validator::new(options);
    // Cell text is already Unicode; decoding must not guess.
    validator.encoding = Encoding::Utf8;
    let Some(&first) = rows.keys().next() else {
        return Parsed::default();
    };
    // Rows before the first used one do not count, as in Excel's used range.
    validator.row = u64::from(first);
    for (row, cell) in rows {
        // Empty rows between used ones are blank rows, counted without visiting each.
        let gap = u64::from(row) - validator.row;
        validator.row += gap;
        validator.out.skipped += gap;
        let row = match &cell {
            Cell::Missing => Row::Field {
                bytes: b"",
                empty_is_error: true,
            },
            Cell::Text(text) => Row::Field {
                bytes: text.as_bytes(),
                empty_is_error: true,
            },
            Cell::Rejected(reason) => Row::Rejected(*reason),
        };
        validator.row(row);
    }
    validator.take()
}

/// A numeric cell as the digits the merchant typed: integers without a fraction or
/// exponent, other values in the shortest form that reads back the same.
fn float_text(value: f64) -> Result<String, Reason> {
    if !value.is_finite() {
        return Err(Reason::UnsupportedCell);
    }
    if value.fract() == 0.0 {
        if value.abs() >= EXACT_INTEGER_LIMIT {
            return Err(Reason::NumericPrecision);
        }
        return Ok(format!("{value:.0}"));
    }
    Ok(value.to_string())
}
