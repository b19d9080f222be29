//! The one definition of "the same code", shared by import parsing and fingerprinting so
//! that a code typed by a buyer, pasted by an operator or exported by Excel all hash alike.

use std::borrow::Cow;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// Trims Unicode whitespace (the White_Space property) at both ends and puts the rest in
/// Unicode NFC.
///
/// Nothing else: codes are case-sensitive and inner whitespace is kept (a code with inner
/// whitespace is the merchant's business). NFC rather than NFKC because compatibility
/// folding would merge codes that differ (full-width vs ASCII digits are distinct keys on
/// some platforms). Borrows when the input is already normal, which is almost always.
pub fn normalize_code(code: &str) -> Cow<'_, str> {
    let trimmed = code.trim();
    // The quick check answers "yes" for ASCII without touching the tables.
    if trimmed.is_ascii() || is_nfc_quick(trimmed.chars()) == IsNormalized::Yes {
        Cow::Borrowed(trimmed)
    } else {
        Cow::Owned(trimmed.nfc().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_unicode_whitespace_only() {
        assert_eq!(normalize_code(" \t\u{3000}AbC-12\u{a0}\r\n"), "AbC-12");
        assert_eq!(normalize_code("a b"), "a b");
        assert_eq!(normalize_code("ABC"), "ABC");
        assert_ne!(normalize_code("abc"), normalize_code("ABC"));
    }

    #[test]
    fn composes_to_nfc() {
        let decomposed = "e\u{301}";
        assert_eq!(normalize_code(decomposed), "\u{e9}");
        assert!(matches!(normalize_code("\u{e9}"), Cow::Borrowed(_)));
        // NFC, not NFKC: full-width digits stay distinct.
        assert_eq!(normalize_code("\u{ff11}"), "\u{ff11}");
    }
}
