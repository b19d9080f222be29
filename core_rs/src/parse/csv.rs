//! CSV as Excel writes it (RFC 4180): comma-separated, fields optionally in double quotes
//! with `""` for a quote, CR / LF / CRLF between records, line breaks allowed inside quotes.
//! Rows are records, numbered as a spreadsheet shows them, not physical lines.
//!
//! Lenient where Excel and hand-edited files disagree with the RFC: a quote inside an
//! unquoted field is kept as text, and text after a closing quote is appended.

use super::{MAX_ROW_BYTES, Reason, Row, Validator};

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: either the first of `""` or the closing quote.
    QuoteInQuoted,
}

// Independent flags of a byte-level state machine: folding them into `State` would
// multiply its variants without making a transition clearer.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct CsvSplitter {
    column: usize,
    state: State,
    after_cr: bool,
    /// Any byte of the current record consumed yet (a record may be `""`).
    in_record: bool,
    field_index: usize,
    record_len: usize,
    overflow: bool,
    has_content: bool,
    /// The chosen column's bytes; other columns are only counted.
    field: Vec<u8>,
}

impl CsvSplitter {
    pub(crate) fn new(column: usize) -> Self {
        Self {
            column,
            state: State::FieldStart,
            after_cr: false,
            in_record: false,
            field_index: 0,
            record_len: 0,
            overflow: false,
            has_content: false,
            field: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, data: &[u8], sink: &mut Validator) {
        for &byte in data {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            self.byte(byte, sink);
        }
    }

    pub(crate) fn finish(&mut self, sink: &mut Validator) {
        if self.state == State::Quoted {
            self.end_record(sink, Some(Reason::UnterminatedQuote));
        } else if self.in_record {
            self.end_record(sink, None);
        }
        self.after_cr = false;
    }

    fn byte(&mut self, byte: u8, sink: &mut Validator) {
        self.in_record = true;
        match (self.state, byte) {
            (State::FieldStart | State::Unquoted | State::QuoteInQuoted, b',') => {
                self.field_index += 1;
                self.state = State::FieldStart;
            }
            (State::FieldStart | State::Unquoted | State::QuoteInQuoted, b'\r' | b'\n') => {
                self.after_cr = byte == b'\r';
                self.end_record(sink, None);
            }
            (State::FieldStart, b'"') => self.state = State::Quoted,
            (State::Quoted, b'"') => self.state = State::QuoteInQuoted,
            (State::QuoteInQuoted, b'"') => {
                self.data(b'"');
                self.state = State::Quoted;
            }
            (State::Quoted, _) => self.data(byte),
            (State::FieldStart | State::Unquoted | State::QuoteInQuoted, _) => {
                self.data(byte);
                self.state = State::Unquoted;
            }
        }
    }

    fn data(&mut self, byte: u8) {
        self.record_len += 1;
        if !matches!(byte, b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c') {
            self.has_content = true;
        }
        if self.record_len > MAX_ROW_BYTES && !self.overflow {
            self.overflow = true;
            self.field = Vec::new();
        }
        if self.field_index == self.column && !self.overflow {
            self.field.push(byte);
        }
    }

    fn end_record(&mut self, sink: &mut Validator, reason: Option<Reason>) {
        let row = if let Some(reason) = reason {
            Row::Rejected(reason)
        } else if !self.has_content {
            Row::Blank
        } else if self.overflow {
            Row::Rejected(Reason::TooLong)
        } else if self.field_index < self.column {
            Row::Rejected(Reason::MissingColumn)
        } else {
            Row::Field {
                bytes: &self.field,
                empty_is_error: true,
            }
        };
        sink.row(row);
        self.state = State::FieldStart;
        self.in_record = false;
        self.field_index = 0;
        self.record_len = 0;
        self.overflow = false;
        self.has_content = false;
        self.field.clear();
    }
}
