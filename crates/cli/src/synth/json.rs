//! Writing FHIR JSON straight into a reused buffer: generation is the hot
//! loop, so no `serde_json::Value` trees are built. Everything written here
//! comes from the reference tables or from numbers, none of which need
//! escaping (the tests parse and validate a sample).

/// `write!` into a `String` (which cannot fail).
macro_rules! w {
    ($buf:expr, $($arg:tt)*) => {{
        let _ = write!($buf, $($arg)*);
    }};
}
pub(crate) use w;

use std::fmt::Write as _;

/// `{"system":…,"code":…,"display":…}`
pub(crate) fn coding(buf: &mut String, system: &str, code: &str, display: &str) {
    w!(
        buf,
        r#"{{"system":"{system}","code":"{code}","display":"{display}"}}"#
    );
}

/// `{"coding":[…]}` with one coding.
pub(crate) fn concept(buf: &mut String, system: &str, code: &str, display: &str) {
    buf.push_str(r#"{"coding":["#);
    coding(buf, system, code, display);
    buf.push_str("]}");
}

/// `{"reference":"Type/id"}` or with a display.
pub(crate) fn reference(buf: &mut String, ty: &str, id: &str, display: Option<&str>) {
    match display {
        Some(d) => w!(buf, r#"{{"reference":"{ty}/{id}","display":"{d}"}}"#),
        None => w!(buf, r#"{{"reference":"{ty}/{id}"}}"#),
    }
}

/// A number with a fixed count of decimals (FHIR decimals keep precision).
pub(crate) fn decimal(buf: &mut String, value: f64, decimals: usize) {
    w!(buf, "{value:.decimals$}");
}
