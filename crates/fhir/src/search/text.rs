//! String normalisation for `string` search values, and the words that
//! `_text` (the narrative) and `_content` (the whole resource) index.

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

/// Keys whose string values are identifiers, links, codes or encoded data,
/// not content a person would search for by its words: left out of
/// `_content` (codes are searched by their token parameters; `data` is
/// base64). `meta`, the server's stamps, is left out whole.
const NOT_CONTENT: &[&str] = &[
    "resourceType",
    "id",
    "reference",
    "system",
    "url",
    "fullUrl",
    "code",
    "data",
    "contentType",
    "language",
];

/// Words shorter than this are not indexed: single letters and digits
/// match nearly everything.
const MIN_WORD: usize = 2;

/// The distinct words of the resource's narrative (`text.div`, markup and
/// character references removed), as `(normalized, as written)`.
#[must_use]
pub fn narrative_words(resource: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(div) = resource
        .get("text")
        .and_then(|t| t.get("div"))
        .and_then(serde_json::Value::as_str)
    {
        push_words(&mut out, &xhtml_text(div));
    }
    out
}

/// The distinct words of every string in the resource but identifiers,
/// links, codes and stamps ([`NOT_CONTENT`]) and dates, narrative included
/// (as text), as `(normalized, as written)`.
#[must_use]
pub fn content_words(resource: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, key: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k != "meta" {
                        walk(v, k, out);
                    }
                }
            }
            serde_json::Value::Array(a) => {
                for v in a {
                    walk(v, key, out);
                }
            }
            serde_json::Value::String(s) if key == "div" => push_words(out, &xhtml_text(s)),
            serde_json::Value::String(s) if !NOT_CONTENT.contains(&key) && !looks_like_date(s) => {
                push_words(out, s);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(resource, "", &mut out);
    out
}

/// `2021`, `2021-03`, `2021-03-04`, `2021-03-04T10:00:00Z`: a date, not words.
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 4
        && b[..4].iter().all(u8::is_ascii_digit)
        && (b.len() == 4 || b[4] == b'-')
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b':' | b'T' | b'Z' | b'+' | b'.'))
}

/// Split `text` into words (runs of letters and digits), normalise each
/// like a `string` value, and add the ones not seen yet.
fn push_words(out: &mut Vec<(String, String)>, text: &str) {
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= MIN_WORD)
    {
        let normalized = normalize(word);
        if !out.iter().any(|(n, _)| *n == normalized) {
            out.push((normalized, word.to_owned()));
        }
    }
}

/// The text of an XHTML fragment: tags dropped (as word breaks), the
/// common character references decoded.
fn xhtml_text(div: &str) -> String {
    let mut text = String::with_capacity(div.len());
    let mut rest = div;
    while let Some(open) = rest.find('<') {
        text.push_str(&rest[..open]);
        text.push(' ');
        rest = rest[open..]
            .find('>')
            .map_or("", |close| &rest[open + close + 1..]);
    }
    text.push_str(rest);
    if !text.contains('&') {
        return text;
    }
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(amp) = rest.find('&') {
        decoded.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&i| i <= 10) else {
            decoded.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                decoded.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                decoded.push('&');
                rest = &rest[1..];
            }
        }
    }
    decoded.push_str(rest);
    decoded
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

    #[test]
    fn narrative_words_drop_markup_and_decode_references() {
        let r = serde_json::json!({"resourceType": "Observation", "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Heart&nbsp;rate <b>86</b>/min &amp; Zo&#235; &#x2014; ok</p><br/>x</div>"}});
        let words: Vec<String> = narrative_words(&r).into_iter().map(|(n, _)| n).collect();
        assert_eq!(words, ["heart", "rate", "86", "min", "zoe", "ok"]);
        assert!(narrative_words(&serde_json::json!({"resourceType": "Patient"})).is_empty());
    }

    #[test]
    fn content_words_skip_links_codes_stamps_and_dates() {
        let r = serde_json::json!({
            "resourceType": "Observation", "id": "obs1",
            "meta": {"versionId": "3", "tag": [{"display": "Stamped"}]},
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                     "text": "Heart Rate"},
            "subject": {"reference": "Patient/p1", "display": "Zoë Ström"},
            "effectiveDateTime": "2022-06-25T08:13:37Z",
            "note": [{"text": "Taken after exercise; patient anxious."}],
            "text": {"div": "<div><p>Pulse</p></div>"}
        });
        let words: Vec<(String, String)> = content_words(&r);
        let normalized: Vec<&str> = words.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            normalized,
            [
                "final", "heart", "rate", "zoe", "strom", "taken", "after", "exercise", "patient",
                "anxious", "pulse"
            ]
        );
        assert!(words.contains(&("zoe".to_owned(), "Zoë".to_owned())));
    }
}
