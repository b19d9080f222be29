//! Bindings for `parse`: `parse_codes`, `CodeReader`, `ParseResult`.

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::parse::{self, Format, Options, Parsed};

/// Codes read from a key file, the rows refused and how many rows were skipped.
///
/// `codes`: normalised codes in file order. `rejected`: `(row, reason)` pairs, the row
/// 1-based as a text editor or spreadsheet shows it (0: the whole file), the reason one of
/// "too_long", "control_characters", "invalid_encoding", "empty", "missing_column",
/// "unterminated_quote", "numeric_precision", "unsupported_cell", "cell_error",
/// "invalid_file". `skipped`: blank rows and the header. Refused rows are reported by
/// number only, never by content: they may be real keys.
#[pyclass(module = "engine._core", frozen)]
pub struct ParseResult {
    codes: Py<PyList>,
    rejected: Py<PyList>,
    skipped: u64,
}

impl ParseResult {
    fn from_parsed(py: Python<'_>, parsed: &Parsed) -> PyResult<Self> {
        let codes = PyList::new(py, parsed.codes.iter().map(|code| PyString::new(py, code)))?;
        let rejected = PyList::empty(py);
        for &(row, reason) in &parsed.rejected {
            rejected.append(PyTuple::new(
                py,
                [
                    row.into_pyobject(py)?.into_any(),
                    PyString::new(py, reason.code()).into_any(),
                ],
            )?)?;
        }
        Ok(Self {
            codes: codes.unbind(),
            rejected: rejected.unbind(),
            skipped: parsed.skipped,
        })
    }
}

#[pymethods]
impl ParseResult {
    /// The accepted codes, normalised (`normalize_code`), in file order.
    #[getter]
    fn codes(&self, py: Python<'_>) -> Py<PyList> {
        self.codes.clone_ref(py)
    }

    /// `(row, reason)` for every refused row, in file order.
    #[getter]
    fn rejected(&self, py: Python<'_>) -> Py<PyList> {
        self.rejected.clone_ref(py)
    }

    /// Rows skipped on purpose: blank rows and the header.
    #[getter]
    fn skipped(&self) -> u64 {
        self.skipped
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        // Counts only: the codes are secrets.
        format!(
            "ParseResult(codes={}, rejected={}, skipped={})",
            self.codes.bind(py).len(),
            self.rejected.bind(py).len(),
            self.skipped
        )
    }
}

fn options(
    format: &str,
    column: Option<usize>,
    max_length: usize,
    skip_header: bool,
) -> PyResult<(Format, Options)> {
    let format: Format = format.parse()?;
    Ok((
        format,
        Options {
            column: column.unwrap_or(0),
            max_length,
            skip_header,
        },
    ))
}

/// Parses a whole key file. `format`: "txt" (a code a line), "csv" (the 0-based `column`,
/// default 0) or "xlsx" (the first worksheet's `column`; not the old binary `.xls`, whose
/// reader cannot bound its memory: ask for XLSX or CSV).
///
/// Text is UTF-8 with or without BOM, UTF-16 with BOM, or GBK/GB18030 as Chinese Excel
/// writes it: the first row with a non-ASCII byte decides (valid UTF-8 → UTF-8, otherwise
/// GB18030). Lines end with CRLF, LF or CR. Codes are normalised (`normalize_code`); blank
/// rows are skipped; codes over `max_length` characters, with control or invisible
/// characters, or undecodable are refused with their row number. `skip_header` skips the
/// first row. A damaged spreadsheet is reported as `(0, "invalid_file")`, not raised.
/// Raises ValueError only for bad arguments. Releases the GIL while parsing.
// The default is spelt out (not `parse::DEFAULT_MAX_LENGTH`) so the text signature, and
// stubtest, see the value.
#[pyfunction]
#[pyo3(signature = (data, format, *, column = None, max_length = 512, skip_header = false))]
fn parse_codes(
    py: Python<'_>,
    data: &[u8],
    format: &str,
    column: Option<usize>,
    max_length: usize,
    skip_header: bool,
) -> PyResult<ParseResult> {
    let (format, options) = options(format, column, max_length, skip_header)?;
    let parsed = py.detach(|| parse::parse_codes(data, format, options))?;
    ParseResult::from_parsed(py, &parsed)
}

/// Parses a key file chunk by chunk, for uploads too large to hold whole: `feed` each chunk
/// as it arrives, then `finish` once. Each call returns the rows completed so far (row
/// numbers count from the start of the file); together they equal `parse_codes` of the
/// whole file. Spreadsheets can only be read whole: for "xlsx" the reader buffers and
/// `finish` returns everything. Same arguments as `parse_codes`.
#[pyclass(module = "engine._core")]
pub struct CodeReader {
    inner: parse::CodeReader,
}

#[pymethods]
impl CodeReader {
    #[new]
    #[pyo3(signature = (format, *, column = None, max_length = 512, skip_header = false))]
    fn new(
        format: &str,
        column: Option<usize>,
        max_length: usize,
        skip_header: bool,
    ) -> PyResult<Self> {
        let (format, options) = options(format, column, max_length, skip_header)?;
        Ok(Self {
            inner: parse::CodeReader::new(format, options)?,
        })
    }

    /// Parses the next chunk (any size, split anywhere) and returns the rows it completed.
    /// Raises ValueError after `finish`.
    fn feed(&mut self, py: Python<'_>, chunk: &[u8]) -> PyResult<ParseResult> {
        let inner = &mut self.inner;
        let parsed = py.detach(|| inner.feed(chunk))?;
        ParseResult::from_parsed(py, &parsed)
    }

    /// Ends the input and returns the remaining rows (the last line needs no line break).
    /// Raises ValueError if called twice.
    fn finish(&mut self, py: Python<'_>) -> PyResult<ParseResult> {
        let inner = &mut self.inner;
        let parsed = py.detach(|| inner.finish())?;
        ParseResult::from_parsed(py, &parsed)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ParseResult>()?;
    m.add_class::<CodeReader>()?;
    m.add_function(wrap_pyfunction!(parse_codes, m)?)?;
    Ok(())
}
