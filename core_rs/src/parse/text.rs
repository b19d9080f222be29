//! TXT: one code a line; CR, LF and CRLF all end a line (CRLF counts once).

use memchr::memchr2;

use super::{MAX_ROW_BYTES, Reason, Row, Validator};

#[derive(Default)]
pub(crate) struct LineSplitter {
    /// The start of a line whose end is in a later chunk.
    line: Vec<u8>,
    /// The current line passed `MAX_ROW_BYTES`; its bytes are dropped until its end.
    overflow: bool,
    /// The previous chunk ended with CR: an LF first in the next chunk belongs to it.
    after_cr: bool,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, mut data: &[u8], sink: &mut Validator) {
        if self.after_cr && !data.is_empty() {
            self.after_cr = false;
            if data[0] == b'\n' {
                data = &data[1..];
            }
        }
        while let Some(end) = memchr2(b'\r', b'\n', data) {
            let (head, terminator) = (&data[..end], data[end]);
            if self.line.is_empty() && !self.overflow {
                // The common case, a whole line inside this chunk: no copy.
                emit(head, sink);
            } else {
                self.append(head);
                self.emit_buffered(sink);
            }
            data = &data[end + 1..];
            if terminator == b'\r' {
                match data.first() {
                    Some(b'\n') => data = &data[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.append(data);
    }

    pub(crate) fn finish(&mut self, sink: &mut Validator) {
        if !self.line.is_empty() || self.overflow {
            self.emit_buffered(sink);
        }
        self.after_cr = false;
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.line.len() + bytes.len() > MAX_ROW_BYTES {
            self.overflow = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn emit_buffered(&mut self, sink: &mut Validator) {
        if self.overflow {
            sink.row(Row::Rejected(Reason::TooLong));
        } else {
            emit(&self.line, sink);
        }
        self.line.clear();
        self.overflow = false;
    }
}

fn emit(line: &[u8], sink: &mut Validator) {
    if line.len() > MAX_ROW_BYTES {
        sink.row(Row::Rejected(Reason::TooLong));
    } else {
        sink.row(Row::Field {
            bytes: line,
            empty_is_error: false,
        });
    }
}
