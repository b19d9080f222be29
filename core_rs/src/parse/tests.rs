use super::*;

fn parse(data: &[u8], format: Format, options: Options) -> Parsed {
    parse_codes(data, format, options).expect("valid options")
}

fn txt(data: &[u8]) -> Parsed {
    parse(data, Format::Txt, Options::default())
}

fn csv_column(data: &[u8], column: usize) -> Parsed {
    parse(
        data,
        Format::Csv,
        Options {
            column,
            ..Options::default()
        },
    )
}

fn streamed(data: &[u8], format: Format, options: Options, cuts: &[usize]) -> Parsed {
    let mut reader = CodeReader::new(format, options).expect("valid options");
    let mut parsed = Parsed::default();
    let mut start = 0;
    for &cut in cuts {
        parsed.extend(reader.feed(&data[start..cut]).expect("feed"));
        start = cut;
    }
    parsed.extend(reader.feed(&data[start..]).expect("feed"));
    parsed.extend(reader.finish().expect("finish"));
    parsed
}

fn codes(parsed: &Parsed) -> Vec<&str> {
    parsed.codes.iter().map(String::as_str).collect()
}

#[test]
fn txt_line_endings_and_blank_lines() {
    let parsed = txt(b"A1\r\nB2\nC3\rD4\r\n\r\n  \nE5");
    assert_eq!(codes(&parsed), ["A1", "B2", "C3", "D4", "E5"]);
    assert_eq!(parsed.skipped, 2);
    assert!(parsed.rejected.is_empty());
    assert_eq!(txt(b""), Parsed::default());
    assert_eq!(codes(&txt(b"\n\nX\n")), ["X"]);
    assert_eq!(txt(b"\n\nX\n").skipped, 2);
}

#[test]
fn txt_trims_and_normalises() {
    let parsed = txt(" \tABC \u{3000}\ne\u{301}\n".as_bytes());
    assert_eq!(codes(&parsed), ["ABC", "\u{e9}"]);
}

#[test]
fn utf8_bom_is_stripped() {
    let parsed = txt(b"\xef\xbb\xbfCODE-1\r\nCODE-2\r\n");
    assert_eq!(codes(&parsed), ["CODE-1", "CODE-2"]);
    assert_eq!(txt(b"\xef\xbb\xbf"), Parsed::default());
    // A BOM forces UTF-8: a GBK row after it is refused, not guessed.
    let (gbk, _, _) = GB18030.encode("卡密");
    let mut data = b"\xef\xbb\xbfOK\n".to_vec();
    data.extend_from_slice(&gbk);
    let parsed = txt(&data);
    assert_eq!(codes(&parsed), ["OK"]);
    assert_eq!(parsed.rejected, [(2, Reason::InvalidEncoding)]);
}

#[test]
fn gbk_is_detected() {
    let text = "卡号\r\n充值卡ABC-123\r\n月卡-一二三\r\n";
    let (gbk, _, unmappable) = GB18030.encode(text);
    assert!(!unmappable);
    assert!(
        std::str::from_utf8(&gbk).is_err(),
        "the sample must not be valid UTF-8"
    );
    let parsed = parse(
        &gbk,
        Format::Txt,
        Options {
            skip_header: true,
            ..Options::default()
        },
    );
    assert_eq!(codes(&parsed), ["充值卡ABC-123", "月卡-一二三"]);
    assert_eq!(parsed.skipped, 1);
    // ASCII rows before the first GBK row read the same either way.
    let mut data = b"PLAIN\n".to_vec();
    data.extend_from_slice(&gbk);
    assert_eq!(
        codes(&txt(&data)),
        ["PLAIN", "卡号", "充值卡ABC-123", "月卡-一二三"]
    );
}

#[test]
fn utf8_without_bom_is_detected() {
    let parsed = txt("卡密-1\n卡密-2\n".as_bytes());
    assert_eq!(codes(&parsed), ["卡密-1", "卡密-2"]);
    // Once UTF-8, a row that is not UTF-8 is refused instead of switching encodings.
    let parsed = txt(b"\xe5\x8d\xa1\n\xbf\xa8\n");
    assert_eq!(codes(&parsed), ["卡"]);
    assert_eq!(parsed.rejected, [(2, Reason::InvalidEncoding)]);
}

#[test]
fn utf16_with_bom() {
    for (bom, big_endian) in [(&b"\xff\xfe"[..], false), (&b"\xfe\xff"[..], true)] {
        let mut data = bom.to_vec();
        for unit in "AB-1\r\n卡密\r\n".encode_utf16() {
            let bytes = if big_endian {
                unit.to_be_bytes()
            } else {
                unit.to_le_bytes()
            };
            data.extend_from_slice(&bytes);
        }
        assert_eq!(codes(&txt(&data)), ["AB-1", "卡密"]);
        for cut in 0..=data.len() {
            assert_eq!(
                streamed(&data, Format::Txt, Options::default(), &[cut]),
                txt(&data),
                "cut {cut}"
            );
        }
    }
    // Shorter than the sniffing window, or an odd byte at the end: no panic, U+FFFD refused.
    assert_eq!(txt(b"\xff\xfe"), Parsed::default());
    assert_eq!(
        txt(b"\xfe\xff\x00").rejected,
        [(1, Reason::InvalidEncoding)]
    );
    assert_eq!(codes(&txt(b"\xff\xfeA\x00")), ["A"]);
    // A lone surrogate decodes to U+FFFD and is refused.
    let parsed = txt(b"\xff\xfeA\x00\n\x00\x00\xd8\n\x00");
    assert_eq!(codes(&parsed), ["A"]);
    assert_eq!(parsed.rejected, [(2, Reason::InvalidEncoding)]);
}

#[test]
fn rejected_rows_carry_numbers_and_reasons() {
    let long = "X".repeat(9);
    let data = format!("GOOD\nBAD\u{7}CODE\n\nzero\u{200b}width\n{long}\nOK-2\n\u{fffd}\n");
    let parsed = parse(
        data.as_bytes(),
        Format::Txt,
        Options {
            max_length: 8,
            ..Options::default()
        },
    );
    assert_eq!(codes(&parsed), ["GOOD", "OK-2"]);
    assert_eq!(
        parsed.rejected,
        [
            (2, Reason::ControlCharacters),
            (4, Reason::ControlCharacters),
            (5, Reason::TooLong),
            (7, Reason::InvalidEncoding)
        ]
    );
    assert_eq!(parsed.skipped, 1);
    // The limit counts characters, not bytes.
    let parsed = parse(
        "卡密卡密".as_bytes(),
        Format::Txt,
        Options {
            max_length: 4,
            ..Options::default()
        },
    );
    assert_eq!(codes(&parsed), ["卡密卡密"]);
    // Invalid in both encodings.
    assert_eq!(
        txt(b"\xff\xff\xff\xff\nok").rejected,
        [(1, Reason::InvalidEncoding)]
    );
}

#[test]
fn huge_rows_are_refused_without_being_kept() {
    let mut data = vec![b'A'; MAX_ROW_BYTES + 1];
    data.extend_from_slice(b"\nNEXT\n");
    let expected = Parsed {
        codes: vec!["NEXT".into()],
        rejected: vec![(1, Reason::TooLong)],
        skipped: 0,
    };
    assert_eq!(txt(&data), expected);
    assert_eq!(
        streamed(&data, Format::Txt, Options::default(), &[10, MAX_ROW_BYTES]),
        expected
    );
    let mut csv = vec![b'B'; MAX_ROW_BYTES + 1];
    csv.extend_from_slice(b"\nNEXT\n");
    assert_eq!(csv_column(&csv, 0), expected);
}

#[test]
fn csv_quoting() {
    let data = b"code,note\r\n\"A,1\",x\r\n\"B\"\"2\",\"multi\r\nline\"\r\nC3\r\n\"\",nonblank\r\n,,\r\n\"D\"4,y\r\nE\"5,z";
    let parsed = parse(
        data,
        Format::Csv,
        Options {
            skip_header: true,
            ..Options::default()
        },
    );
    assert_eq!(codes(&parsed), ["A,1", "B\"2", "C3", "D4", "E\"5"]);
    assert_eq!(parsed.rejected, [(5, Reason::Empty)]);
    assert_eq!(parsed.skipped, 2, "the header and the ,, row");
}

#[test]
fn csv_column_choice() {
    let data = "序号,卡密,备注\n1,KEY-1,a\n2,\"KEY-2\"\n3\n4,\"multi\nline\",b\n5,KEY-5".as_bytes();
    let parsed = parse(
        data,
        Format::Csv,
        Options {
            column: 1,
            skip_header: true,
            ..Options::default()
        },
    );
    assert_eq!(codes(&parsed), ["KEY-1", "KEY-2", "KEY-5"]);
    assert_eq!(
        parsed.rejected,
        [(4, Reason::MissingColumn), (5, Reason::ControlCharacters)]
    );
    let parsed = csv_column(data, 7);
    assert!(parsed.codes.is_empty());
    assert_eq!(parsed.rejected.len(), 6);
}

#[test]
fn csv_gbk_and_unterminated_quote() {
    let (gbk, _, _) = GB18030.encode("卡密,备注\r\n甲-1,一\r\n\"乙,2\",二\r\n\"open");
    let parsed = csv_column(&gbk, 0);
    assert_eq!(codes(&parsed), ["卡密", "甲-1", "乙,2"]);
    assert_eq!(parsed.rejected, [(4, Reason::UnterminatedQuote)]);
}

#[test]
fn chunk_boundaries_do_not_matter() {
    let (gbk, _, _) = GB18030.encode("卡密\r\n");
    let mut samples: Vec<(Vec<u8>, Format, Options)> = vec![
        (
            b"\xef\xbb\xbfA\r\n\r\nB\rC\n\n  D  \r".to_vec(),
            Format::Txt,
            Options::default(),
        ),
        (
            "卡\u{7}x\r\nE\u{301}\n\nlonger-than-8".as_bytes().to_vec(),
            Format::Txt,
            Options {
                max_length: 8,
                ..Options::default()
            },
        ),
        (
            b"h,c\r\n\"a\r\nb\",1\r\n\"q\"\"x\",2\r\n,,\r\n3\r\"open".to_vec(),
            Format::Csv,
            Options {
                column: 0,
                skip_header: true,
                ..Options::default()
            },
        ),
        (
            b"1,A\n2,\"B\"\r\n3\r\n4,C\r".to_vec(),
            Format::Csv,
            Options {
                column: 1,
                ..Options::default()
            },
        ),
    ];
    let mut with_gbk = b"X\r\n".to_vec();
    with_gbk.extend_from_slice(&gbk);
    with_gbk.extend_from_slice(&gbk);
    samples.push((with_gbk.clone(), Format::Txt, Options::default()));
    samples.push((with_gbk, Format::Csv, Options::default()));
    for (data, format, options) in samples {
        let whole = parse(&data, format, options);
        for cut in 0..=data.len() {
            assert_eq!(
                streamed(&data, format, options, &[cut]),
                whole,
                "{format:?} cut at {cut}"
            );
            for second in cut..=data.len() {
                assert_eq!(
                    streamed(&data, format, options, &[cut, second]),
                    whole,
                    "{format:?} cuts {cut} {second}"
                );
            }
        }
        let every_byte: Vec<usize> = (1..data.len()).collect();
        assert_eq!(
            streamed(&data, format, options, &every_byte),
            whole,
            "{format:?} byte by byte"
        );
    }
}

#[test]
fn reader_lifecycle_and_options() {
    let mut reader = CodeReader::new(Format::Txt, Options::default()).expect("reader");
    assert_eq!(codes(&reader.feed(b"A\nB").expect("feed")), ["A"]);
    assert_eq!(codes(&reader.finish().expect("finish")), ["B"]);
    assert!(reader.feed(b"C").is_err());
    assert!(reader.finish().is_err());
    assert!(
        CodeReader::new(
            Format::Txt,
            Options {
                max_length: 0,
                ..Options::default()
            }
        )
        .is_err()
    );
    assert!(
        CodeReader::new(
            Format::Txt,
            Options {
                column: 1,
                ..Options::default()
            }
        )
        .is_err()
    );
    assert!("pdf".parse::<Format>().is_err());
    assert_eq!("CSV".parse::<Format>().expect("format"), Format::Csv);
}

fn xlsx(build: impl FnOnce(&mut rust_xlsxwriter::Worksheet)) -> Vec<u8> {
    let mut book = rust_xlsxwriter::Workbook::new();
    build(book.add_worksheet());
    book.save_to_buffer().expect("xlsx")
}

#[test]
fn xlsx_column_numbers_and_cells() {
    let data = xlsx(|sheet| {
        let cells: &[(u32, u16, &str)] = &[
            (0, 0, "序号"),
            (0, 1, "卡密"),
            (1, 1, " KEY-1 "),
            (2, 1, "KEY\u{7}2"),
            (4, 1, "卡密-三"),
            (5, 0, "only the first column"),
        ];
        for &(row, col, text) in cells {
            sheet.write_string(row, col, text).expect("write");
        }
        sheet.write_number(6, 1, 123_456_789.0).expect("write");
        sheet.write_number(7, 1, 1.25).expect("write");
        sheet
            .write_number(8, 1, 123_456_789_012_345_678.0)
            .expect("write");
        sheet.write_boolean(9, 1, true).expect("write");
    });
    let parsed = parse(
        &data,
        Format::Xlsx,
        Options {
            column: 1,
            skip_header: true,
            ..Options::default()
        },
    );
    assert_eq!(codes(&parsed), ["KEY-1", "卡密-三", "123456789", "1.25"]);
    assert_eq!(
        parsed.rejected,
        [
            (3, Reason::ControlCharacters),
            (6, Reason::Empty),
            (9, Reason::NumericPrecision),
            (10, Reason::UnsupportedCell)
        ]
    );
    assert_eq!(parsed.skipped, 2, "the header and the blank row 4");
    let whole = streamed(
        &data,
        Format::Xlsx,
        Options {
            column: 1,
            skip_header: true,
            ..Options::default()
        },
        &[100],
    );
    assert_eq!(whole, parsed);
}

#[test]
fn xlsx_rows_start_where_the_sheet_does() {
    let data = xlsx(|sheet| {
        sheet.write_string(2, 3, "C-1").expect("write");
        sheet.write_string(3, 3, "C-2").expect("write");
    });
    let parsed = parse(
        &data,
        Format::Xlsx,
        Options {
            column: 3,
            ..Options::default()
        },
    );
    assert_eq!(codes(&parsed), ["C-1", "C-2"]);
    let parsed = parse(&data, Format::Xlsx, Options::default());
    assert_eq!(parsed.rejected, [(3, Reason::Empty), (4, Reason::Empty)]);
    assert_eq!(
        parse(&xlsx(|_| {}), Format::Xlsx, Options::default()),
        Parsed::default()
    );
}

#[test]
fn a_huge_bounding_box_costs_nothing() {
    // A1 and the last cell of a sheet: a dense range would be 17 billion cells.
    let data = xlsx(|sheet| {
        sheet.write_string(0, 0, "A").expect("write");
        sheet.write_string(1_048_575, 16_383, "far").expect("write");
    });
    let parsed = parse(&data, Format::Xlsx, Options::default());
    assert_eq!(codes(&parsed), ["A"]);
    assert_eq!(parsed.rejected, [(1_048_576, Reason::Empty)]);
    assert_eq!(parsed.skipped, 1_048_574);
}

#[test]
fn broken_spreadsheets_are_reported_not_raised() {
    for data in [&b""[..], b"not a zip", b"PK\x03\x04garbage"] {
        let parsed = parse(data, Format::Xlsx, Options::default());
        assert_eq!(parsed.rejected, [(0, Reason::InvalidFile)]);
    }
    let mut truncated = xlsx(|sheet| {
        sheet.write_string(0, 0, "A").expect("write");
    });
    truncated.truncate(truncated.len() / 2);
    assert_eq!(
        parse(&truncated, Format::Xlsx, Options::default()).rejected,
        [(0, Reason::InvalidFile)]
    );
}
