//! Instants as stored (microseconds since the Unix epoch) and as FHIR writes them.

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Now, in microseconds since the Unix epoch.
#[must_use]
pub fn now_micros() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000).unwrap_or(i64::MAX)
}

/// A FHIR `instant` with microsecond precision in UTC: `2026-11-23T16:30:00.123456Z`.
#[must_use]
pub fn format_instant(micros: i64) -> String {
    let dt = to_datetime(micros);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.microsecond()
    )
}

/// An RFC 7231 HTTP date (`Last-Modified`): `Mon, 23 Nov 2026 16:30:00 GMT`.
#[must_use]
pub fn format_http_date(micros: i64) -> String {
    let dt = to_datetime(micros);
    let weekday = &dt.weekday().to_string()[..3];
    let month = &dt.month().to_string()[..3];
    format!(
        "{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT",
        dt.day(),
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Parse a FHIR instant/dateTime with a time zone (as used by `_since`).
/// A bare date counts from its start, in UTC.
///
/// # Errors
/// A message naming the expected form.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).or_else(|_| {
        time::Date::parse(
            text,
            &time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map(|d| d.midnight().assume_utc())
    });
    match parsed {
        Ok(dt) => Ok(i64::try_from(dt.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)),
        Err(_) => Err(format!(
            "'{text}' is not an instant (expected e.g. 2026-01-31T12:00:00Z or 2026-01-31)"
        )),
    }
}

fn to_datetime(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        let t = 1_795_451_400_123_456; // 2026-11-23T16:30:00.123456Z
        assert_eq!(format_instant(t), "2026-11-23T16:30:00.123456Z");
        assert_eq!(format_http_date(t), "Mon, 23 Nov 2026 16:30:00 GMT");
        assert_eq!(parse_instant("2026-11-23T16:30:00.123456Z"), Ok(t));
        assert_eq!(parse_instant("2026-11-23T17:30:00.123456+01:00"), Ok(t));
        assert_eq!(parse_instant("2026-11-23"), Ok(1_795_392_000_000_000));
        assert!(parse_instant("yesterday").is_err());
    }
}
