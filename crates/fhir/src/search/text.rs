//! String normalisation for `string` search values.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Lower-case with accents (combining marks) removed and whitespace runs
/// collapsed to one space: `Ström` → `strom`, `  Zoë  Ann ` → `zoe ann`.
/// This is the form `string` search compares against for its default
/// (starts-with) and `:contains` matches.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    if s.is_ascii() {
        // Fast path: nothing to decompose.
        for w in s.split_ascii_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.extend(w.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        }
        return out;
    }
    let mut pending_space = false;
    for c in s.nfd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        // Letters that do not decompose but are commonly written unaccented.
        match c {
            'ø' | 'Ø' => out.push('o'),
            'æ' | 'Æ' => out.push_str("ae"),
            'œ' | 'Œ' => out.push_str("oe"),
            'ß' => out.push_str("ss"),
            'đ' | 'Đ' => out.push('d'),
            'ł' | 'Ł' => out.push('l'),
            _ => out.extend(c.to_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        for (input, want) in [
            ("Ström", "strom"),
            ("CHALMERS", "chalmers"),
            ("Zoë", "zoe"),
            ("  Zoë  Ann ", "zoe ann"),
            ("Ångström", "angstrom"),
            ("Müller-Lüdenscheidt", "muller-ludenscheidt"),
            ("Søren Ærø", "soren aero"),
            ("Straße", "strasse"),
            ("O'Brien", "o'brien"),
            ("José", "jose"),
            ("", ""),
        ] {
            assert_eq!(normalize(input), want, "{input}");
        }
        // precomposed and decomposed forms agree
        assert_eq!(normalize("e\u{301}"), normalize("\u{e9}"));
    }
}
