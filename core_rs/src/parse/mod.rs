//! Parsing of uploaded key files: TXT (a key a line), CSV (a chosen column) and
//! spreadsheets, into normalised codes plus the rows that were refused and why.
//!
//! Text formats are parsed as a stream (`CodeReader::feed`), so a large upload never has to
//! sit in memory whole, and `parse_codes` is the same reader fed once: the two cannot
//! disagree. The pipeline is: byte-order mark sniffing (and UTF-16 transcoding) → row
//! splitting on raw bytes → decoding and validation of one field per row.
//!
//! Splitting before decoding is sound for UTF-8 and GB18030 alike: in both, the bytes of
//! CR, LF, `"` and `,` never occur inside a multi-byte character (GBK trail bytes are
//! 0x40–0xFE, GB18030 four-byte sequences use 0x30–0x39 in even positions).

mod csv;
mod sheet;
mod text;

use std::fmt;
use std::str::FromStr;

use encoding_rs::{CoderResult, Decoder, GB18030, UTF_16BE, UTF_16LE};

use crate::error::{CoreError, CoreResult};
use crate::normalize::normalize_code;

/// A row longer than this is refused (`too_long`) without being kept: memory stays bounded
/// whatever the upload, e.g. a binary file with no line breaks.
pub const MAX_ROW_BYTES: usize = 1 << 20;
/// Default longest accepted code, in characters.
pub const DEFAULT_MAX_LENGTH: usize = 512;

/// The file formats `parse_codes` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Txt,
    Csv,
    /// XLSX only; see `sheet` for why not XLS or ODS.
    Xlsx,
}

impl FromStr for Format {
    type Err = CoreError;

    fn from_str(s: &str) -> CoreResult<Self> {
        match s.to_ascii_lowercase().as_str() {
            "txt" => Ok(Self::Txt),
            "csv" => Ok(Self::Csv),
            "xlsx" => Ok(Self::Xlsx),
            _ => Err(CoreError::InvalidArgument(format!(
                "unknown format {s:?}: expected \"txt\", \"csv\" or \"xlsx\""
            ))),
        }
    }
}

/// Why a row was refused. The `code()` strings are a stable contract with the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Longer than `max_length` characters, or the row exceeds `MAX_ROW_BYTES`.
    TooLong,
    /// C0/C1 control characters or invisible format characters (zero-width, bidi controls,
    /// BOM) inside the code: they would make a key that looks like another.
    ControlCharacters,
    /// Neither valid in the file's encoding nor decodable, or contains U+FFFD (a lossy
    /// conversion happened before the file reached us).
    InvalidEncoding,
    /// The row has content but the chosen column is blank.
    Empty,
    /// The row has fewer columns than the chosen one.
    MissingColumn,
    /// A quoted CSV field was still open at the end of the file.
    UnterminatedQuote,
    /// A spreadsheet number too large to hold every digit (Excel keeps 15 significant
    /// digits): the code was damaged before export. Format the column as text.
    NumericPrecision,
    /// A spreadsheet cell that is not text or a number (boolean, date, duration).
    UnsupportedCell,
    /// A spreadsheet error cell (`#N/A`, `#REF!`, ...).
    CellError,
    /// The spreadsheet could not be read at all (reported on row 0).
    InvalidFile,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::ControlCharacters => "control_characters",
            Self::InvalidEncoding => "invalid_encoding",
            Self::Empty => "empty",
            Self::MissingColumn => "missing_column",
            Self::UnterminatedQuote => "unterminated_quote",
            Self::NumericPrecision => "numeric_precision",
            Self::UnsupportedCell => "unsupported_cell",
            Self::CellError => "cell_error",
            Self::InvalidFile => "invalid_file",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// 0-based column for CSV and spreadsheets; must be 0 for TXT.
    pub column: usize,
    /// Longest accepted code in characters (Unicode scalar values), after normalisation.
    pub max_length: usize,
    /// Skip the first row read (a header).
    pub skip_header: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            column: 0,
            max_length: DEFAULT_MAX_LENGTH,
            skip_header: false,
        }
    }
}

/// Codes, refused rows (1-based row number, reason) and the number of rows skipped on
/// purpose (blank rows and the header). `codes + rejected + skipped` counts every row read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub codes: Vec<String>,
    pub rejected: Vec<(u64, Reason)>,
    pub skipped: u64,
}

impl Parsed {
    pub fn extend(&mut self, other: Self) {
        self.codes.extend(other.codes);
        self.rejected.extend(other.rejected);
        self.skipped += other.skipped;
    }
}

/// One row as the splitters see it, before decoding.
#[derive(Clone, Copy)]
pub(crate) enum Row<'a> {
    /// Nothing but whitespace: skipped silently.
    Blank,
    /// The chosen field's raw bytes. `empty_is_error`: the row had other content, so an
    /// empty field is worth telling the merchant about.
    Field {
        bytes: &'a [u8],
        empty_is_error: bool,
    },
    /// Refused before decoding.
    Rejected(Reason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// Every row so far was ASCII, which reads the same in UTF-8 and GB18030.
    Undecided,
    Utf8,
    Gb18030,
}

/// Decodes and validates rows, numbering them and collecting the result.
struct Validator {
    max_length: usize,
    header_pending: bool,
    encoding: Encoding,
    row: u64,
    out: Parsed,
}

impl Validator {
    fn new(options: &Options) -> Self {
        Self {
            max_length: options.max_length,
            header_pending: options.skip_header,
            encoding: Encoding::Undecided,
            row: 0,
            out: Parsed::default(),
        }
    }

    fn take(&mut self) -> Parsed {
        std::mem::take(&mut self.out)
    }

    fn row(&mut self, row: Row<'_>) {
        self.row += 1;
        if self.header_pending {
            self.header_pending = false;
            self.out.skipped += 1;
            return;
        }
        match row {
            Row::Blank => self.out.skipped += 1,
            Row::Rejected(reason) => self.out.rejected.push((self.row, reason)),
            Row::Field {
                bytes,
                empty_is_error,
            } => match self.decode(bytes) {
                Some(text) => self.check(&text, empty_is_error),
                None => self.out.rejected.push((self.row, Reason::InvalidEncoding)),
            },
        }
    }

    /// The first row with a non-ASCII byte decides the file's encoding: valid UTF-8 means
    /// UTF-8, otherwise GB18030 (a superset of GBK, what Chinese Excel writes). Deciding
    /// once keeps one damaged row from switching the whole file to mojibake, and works on a
    /// stream. A row that fits neither is refused and leaves the question open.
    fn decode<'a>(&mut self, bytes: &'a [u8]) -> Option<std::borrow::Cow<'a, str>> {
        if bytes.is_ascii() {
            return std::str::from_utf8(bytes)
                .ok()
                .map(std::borrow::Cow::Borrowed);
        }
        let gb18030 =
            |bytes: &'a [u8]| GB18030.decode_without_bom_handling_and_without_replacement(bytes);
        match self.encoding {
            Encoding::Utf8 => std::str::from_utf8(bytes)
                .ok()
                .map(std::borrow::Cow::Borrowed),
            Encoding::Gb18030 => gb18030(bytes),
            Encoding::Undecided => {
                if let Ok(text) = std::str::from_utf8(bytes) {
                    self.encoding = Encoding::Utf8;
                    Some(std::borrow::Cow::Borrowed(text))
                } else {
                    let text = gb18030(bytes)?;
                    self.encoding = Encoding::Gb18030;
                    Some(text)
                }
            }
        }
    }

    fn check(&mut self, text: &str, empty_is_error: bool) {
        let code = normalize_code(text);
        let verdict = if code.is_empty() {
            if empty_is_error {
                Err(Some(Reason::Empty))
            } else {
                Err(None)
            }
        } else if code.contains('\u{fffd}') {
            Err(Some(Reason::InvalidEncoding))
        } else if code.chars().any(is_hidden) {
            Err(Some(Reason::ControlCharacters))
        } else if code.len() > self.max_length && code.chars().count() > self.max_length {
            Err(Some(Reason::TooLong))
        } else {
            Ok(())
        };
        match verdict {
            Ok(()) => self.out.codes.push(code.into_owned()),
            Err(Some(reason)) => self.out.rejected.push((self.row, reason)),
            Err(None) => self.out.skipped += 1,
        }
    }
}

/// Control characters (Unicode Cc) and the invisible format characters (Cf) that show up
/// in pasted keys: soft hyphen, zero-width and joiner characters, bidi controls, word
/// joiners, BOM, interlinear annotation and tag characters.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// What the first bytes of a text file say about its encoding.
enum Prefix {
    /// Fewer than three bytes seen: a BOM may still be coming.
    Sniffing(Vec<u8>),
    Plain,
    /// UTF-16 (Excel's "Unicode text" export), transcoded to UTF-8 before splitting.
    Utf16(Box<Decoder>),
}

enum Splitter {
    Lines(text::LineSplitter),
    Csv(csv::CsvSplitter),
}

impl Splitter {
    fn push(&mut self, data: &[u8], sink: &mut Validator) {
        match self {
            Self::Lines(s) => s.push(data, sink),
            Self::Csv(s) => s.push(data, sink),
        }
    }

    fn finish(&mut self, sink: &mut Validator) {
        match self {
            Self::Lines(s) => s.finish(sink),
            Self::Csv(s) => s.finish(sink),
        }
    }
}

struct TextReader {
    prefix: Prefix,
    splitter: Splitter,
    validator: Validator,
}

impl TextReader {
    fn feed(&mut self, data: &[u8]) {
        match &mut self.prefix {
            Prefix::Plain => self.splitter.push(data, &mut self.validator),
            Prefix::Utf16(decoder) => transcode(
                decoder,
                data,
                false,
                &mut self.splitter,
                &mut self.validator,
            ),
            Prefix::Sniffing(seen) => {
                seen.extend_from_slice(data);
                if seen.len() >= 3 {
                    let seen = std::mem::take(seen);
                    self.sniff(&seen);
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Prefix::Sniffing(seen) = &mut self.prefix {
            let seen = std::mem::take(seen);
            self.sniff(&seen);
        }
        // The one call with `last`: a decoder must not be used after it.
        if let Prefix::Utf16(decoder) = &mut self.prefix {
            transcode(decoder, &[], true, &mut self.splitter, &mut self.validator);
        }
        self.splitter.finish(&mut self.validator);
    }

    fn sniff(&mut self, seen: &[u8]) {
        let (prefix, rest) = if let Some(rest) = seen.strip_prefix(b"\xef\xbb\xbf") {
            self.validator.encoding = Encoding::Utf8;
            (Prefix::Plain, rest)
        } else if let Some(rest) = seen.strip_prefix(b"\xff\xfe") {
            (
                Prefix::Utf16(Box::new(UTF_16LE.new_decoder_without_bom_handling())),
                rest,
            )
        } else if let Some(rest) = seen.strip_prefix(b"\xfe\xff") {
            (
                Prefix::Utf16(Box::new(UTF_16BE.new_decoder_without_bom_handling())),
                rest,
            )
        } else {
            (Prefix::Plain, seen)
        };
        if matches!(prefix, Prefix::Utf16(_)) {
            self.validator.encoding = Encoding::Utf8;
        }
        self.prefix = prefix;
        match &mut self.prefix {
            Prefix::Utf16(decoder) => {
                transcode(
                    decoder,
                    rest,
                    false,
                    &mut self.splitter,
                    &mut self.validator,
                );
            }
            _ => self.splitter.push(rest, &mut self.validator),
        }
    }
}

fn transcode(
    decoder: &mut Decoder,
    mut src: &[u8],
    last: bool,
    splitter: &mut Splitter,
    sink: &mut Validator,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // Malformed UTF-16 (a lone surrogate) becomes U+FFFD, which the validator refuses.
        let (result, read, written, _) = decoder.decode_to_utf8(src, &mut buf, last);
        splitter.push(&buf[..written], sink);
        src = &src[read..];
        if result == CoderResult::InputEmpty {
            break;
        }
    }
}

enum State {
    Text(Box<TextReader>),
    /// Spreadsheets are zip archives with the directory at the end: nothing can be read
    /// before the last byte arrives.
    Sheet(Vec<u8>, Options),
    Finished,
}

/// A streaming parser: `feed` chunks as they arrive, then `finish`. Each call returns the
/// rows completed so far; together they equal `parse_codes` of the whole input.
pub struct CodeReader {
    state: State,
}

impl fmt::Debug for CodeReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeReader(..)")
    }
}

impl CodeReader {
    pub fn new(format: Format, options: Options) -> CoreResult<Self> {
        if options.max_length == 0 {
            return Err(CoreError::InvalidArgument(
                "max_length must be at least 1".into(),
            ));
        }
        if format == Format::Txt && options.column != 0 {
            return Err(CoreError::InvalidArgument(
                "a TXT file has one column: column must be 0".into(),
            ));
        }
        let validator = Validator::new(&options);
        let state = match format {
            Format::Txt => State::Text(Box::new(TextReader {
                prefix: Prefix::Sniffing(Vec::new()),
                splitter: Splitter::Lines(text::LineSplitter::default()),
                validator,
            })),
            Format::Csv => State::Text(Box::new(TextReader {
                prefix: Prefix::Sniffing(Vec::new()),
                splitter: Splitter::Csv(csv::CsvSplitter::new(options.column)),
                validator,
            })),
            Format::Xlsx => State::Sheet(Vec::new(), options),
        };
        Ok(Self { state })
    }

    pub fn feed(&mut self, chunk: &[u8]) -> CoreResult<Parsed> {
        match &mut self.state {
            State::Text(reader) => {
                reader.feed(chunk);
                Ok(reader.validator.take())
            }
            State::Sheet(buf, _) => {
                buf.extend_from_slice(chunk);
                Ok(Parsed::default())
            }
            State::Finished => Err(finished()),
        }
    }

    pub fn finish(&mut self) -> CoreResult<Parsed> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Text(mut reader) => {
                reader.finish();
                Ok(reader.validator.take())
            }
            State::Sheet(buf, options) => Ok(sheet::parse(&buf, &options)),
            State::Finished => Err(finished()),
        }
    }
}

fn finished() -> CoreError {
    CoreError::InvalidArgument("the reader is already finished".into())
}

/// Parses a whole file.
pub fn parse_codes(data: &[u8], format: Format, options: Options) -> CoreResult<Parsed> {
    if format == Format::Xlsx {
        // Same checks as the reader, without copying the file into its buffer.
        CodeReader::new(format, options)?;
        return Ok(sheet::parse(data, &options));
    }
    let mut reader = CodeReader::new(format, options)?;
    let mut parsed = reader.feed(data)?;
    parsed.extend(reader.finish()?);
    Ok(parsed)
}

#[cfg(test)]
mod tests;
