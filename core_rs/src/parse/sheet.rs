//! Spreadsheets (XLSX, and XLS / XLSB / ODS as calamine detects them): the first worksheet,
//! one column. Row numbers are the sheet's own, as Excel shows them.

use std::io::Cursor;

use calamine::{Data, Reader, open_workbook_auto_from_rs};

use super::{Encoding, Options, Parsed, Reason, Row, Validator};

/// Excel keeps 15 significant digits: an integer this large may already have lost some.
const EXACT_INTEGER_LIMIT: f64 = 1e15;

pub(crate) fn parse(data: &[u8], options: &Options) -> Parsed {
    let mut validator = Validator::new(options);
    // Cell text is already Unicode; decoding must not guess.
    validator.encoding = Encoding::Utf8;
    let range = match open_workbook_auto_from_rs(Cursor::new(data))
        .map(|mut book| book.worksheet_range_at(0))
    {
        Ok(Some(Ok(range))) => range,
        Ok(None) => return Parsed::default(),
        // calamine's messages can quote cell content; the reason code is all we pass on.
        Ok(Some(Err(_))) | Err(_) => {
            return Parsed {
                rejected: vec![(0, Reason::InvalidFile)],
                ..Parsed::default()
            };
        }
    };
    let Some((first_row, first_col)) = range.start() else {
        return Parsed::default();
    };
    validator.row = u64::from(first_row);
    let column = options.column.checked_sub(first_col as usize);
    for cells in range.rows() {
        // Owns the text of a numeric cell for the duration of `validator.row`.
        let number: String;
        let has_content = cells.iter().any(|cell| !matches!(cell, Data::Empty));
        let cell = column.and_then(|c| cells.get(c)).unwrap_or(&Data::Empty);
        let row = match cell {
            _ if !has_content => Row::Blank,
            Data::String(text) => Row::Field {
                bytes: text.as_bytes(),
                empty_is_error: true,
            },
            Data::Int(value) => {
                number = value.to_string();
                Row::Field {
                    bytes: number.as_bytes(),
                    empty_is_error: true,
                }
            }
            Data::Float(value) => match float_text(*value) {
                Ok(text) => {
                    number = text;
                    Row::Field {
                        bytes: number.as_bytes(),
                        empty_is_error: true,
                    }
                }
                Err(reason) => Row::Rejected(reason),
            },
            Data::Empty => Row::Field {
                bytes: b"",
                empty_is_error: true,
            },
            Data::Bool(_) | Data::DateTime(_) | Data::DateTimeIso(_) | Data::DurationIso(_) => {
                Row::Rejected(Reason::UnsupportedCell)
            }
            Data::Error(_) => Row::Rejected(Reason::CellError),
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
