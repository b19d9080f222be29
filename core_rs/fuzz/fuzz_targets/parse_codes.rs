//! Any bytes, any format, any chunking: no panic, and the streaming reader agrees with the
//! whole-file parse.

#![no_main]

use kami_core::parse::{CodeReader, Format, Options, Parsed, parse_codes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let format = match control % 3 {
        0 => Format::Txt,
        1 => Format::Csv,
        _ => Format::Xlsx,
    };
    let options = Options {
        column: if format == Format::Txt { 0 } else { usize::from(control >> 6) },
        max_length: usize::from((control >> 2) & 0x0f) + 1,
        skip_header: control & 0x80 != 0,
    };
    let Ok(whole) = parse_codes(data, format, options) else {
        return;
    };
    for code in &whole.codes {
        assert!(!code.is_empty() && code.chars().count() <= options.max_length);
    }
    if format == Format::Xlsx {
        return;
    }
    // Chunk sizes derived from the data itself, so the fuzzer explores boundaries.
    let mut reader = CodeReader::new(format, options).expect("options were accepted above");
    let mut streamed = Parsed::default();
    let mut rest = data;
    let mut step = usize::from(control % 7) + 1;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(step.min(rest.len()));
        streamed.extend(reader.feed(chunk).expect("feed before finish"));
        rest = tail;
        step = step * 3 % 11 + 1;
    }
    streamed.extend(reader.finish().expect("first finish"));
    assert_eq!(streamed, whole);
});
