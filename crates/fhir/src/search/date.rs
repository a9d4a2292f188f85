//! FHIR date/dateTime/instant values as inclusive instant ranges at their precision.

/// Microseconds per second / minute / day.
const US_PER_S: i64 = 1_000_000;
const US_PER_MIN: i64 = 60 * US_PER_S;
const US_PER_DAY: i64 = 86_400 * US_PER_S;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
}

/// Parse a FHIR `date`, `dateTime` or `instant` into the inclusive range of
/// instants it denotes, in microseconds since the Unix epoch.
///
/// `1980` covers the whole year, `1980-03` the month, `1980-03-04` the day,
/// `1980-03-04T10:20:30+01:00` the second, `…30.25Z` the hundredth of a second.
/// A time without a zone is taken as UTC (FHIR requires a zone when a time is
/// given; servers commonly assume their local zone, ours is UTC).
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    let b = s.trim().as_bytes();
    if b.len() < 4 {
        return None;
    }
    let year = digits(&b[0..4])?;
    if year < 1 {
        return None;
    }
    let rest = &b[4..];
    if rest.is_empty() {
        let lo = days_from_civil(year, 1, 1) * US_PER_DAY;
        let hi = days_from_civil(year + 1, 1, 1) * US_PER_DAY - 1;
        return Some((lo, hi));
    }
    if rest.len() < 3 || rest[0] != b'-' {
        return None;
    }
    let month = digits(&rest[1..3])?;
    if !(1..=12).contains(&month) {
        return None;
    }
    let rest = &rest[3..];
    if rest.is_empty() {
        let lo = days_from_civil(year, month, 1) * US_PER_DAY;
        let hi = lo + days_in_month(year, month) * US_PER_DAY - 1;
        return Some((lo, hi));
    }
    if rest.len() < 3 || rest[0] != b'-' {
        return None;
    }
    let day = digits(&rest[1..3])?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let day_start = days_from_civil(year, month, day) * US_PER_DAY;
    let rest = &rest[3..];
    if rest.is_empty() {
        return Some((day_start, day_start + US_PER_DAY - 1));
    }
    if rest[0] != b'T' || rest.len() < 6 || rest[3] != b':' {
        return None;
    }
    let hour = digits(&rest[1..3])?;
    let minute = digits(&rest[4..6])?;
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &rest[6..];
    let mut start = day_start + hour * 3600 * US_PER_S + minute * US_PER_MIN;
    // Width of the precision interval, in microseconds.
    let mut width = US_PER_MIN;
    if rest.first() == Some(&b':') {
        if rest.len() < 3 {
            return None;
        }
        let sec = digits(&rest[1..3])?;
        if sec > 60 {
            return None;
        }
        // A leap second folds into the last second of the minute.
        start += sec.min(59) * US_PER_S;
        width = US_PER_S;
        rest = &rest[3..];
        if rest.first() == Some(&b'.') {
            let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            let frac = &rest[1..1 + n];
            let used = n.min(6);
            let mut micros = digits(&frac[..used])?;
            for _ in used..6 {
                micros *= 10;
            }
            start += micros;
            width = 10i64.pow(6 - used as u32);
            rest = &rest[1 + n..];
        }
    }
    let offset = match rest {
        [] | b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 14 || m > 59 {
                return None;
            }
            let off = h * 3600 * US_PER_S + m * US_PER_MIN;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let lo = start - offset;
    Some((lo, lo + width - 1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Microseconds of a UTC timestamp, via the `time` crate as an independent check.
    fn us(s: &str) -> i64 {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
        (t.unix_timestamp_nanos() / 1000) as i64
    }

    #[test]
    fn precision_ranges() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "1980",
                "1980-01-01T00:00:00Z",
                "1980-12-31T23:59:59.999999Z",
            ),
            (
                "1980-03",
                "1980-03-01T00:00:00Z",
                "1980-03-31T23:59:59.999999Z",
            ),
            (
                "1980-02",
                "1980-02-01T00:00:00Z",
                "1980-02-29T23:59:59.999999Z",
            ),
            (
                "1900-02",
                "1900-02-01T00:00:00Z",
                "1900-02-28T23:59:59.999999Z",
            ),
            (
                "1974-12-25",
                "1974-12-25T00:00:00Z",
                "1974-12-25T23:59:59.999999Z",
            ),
            (
                "2013-04-02T09:30:10+01:00",
                "2013-04-02T08:30:10Z",
                "2013-04-02T08:30:10.999999Z",
            ),
            (
                "2013-04-02T09:30:10-05:30",
                "2013-04-02T15:00:10Z",
                "2013-04-02T15:00:10.999999Z",
            ),
            (
                "2015-02-07T13:28:17.239+02:00",
                "2015-02-07T11:28:17.239Z",
                "2015-02-07T11:28:17.239999Z",
            ),
            (
                "2015-02-07T13:28:17.2Z",
                "2015-02-07T13:28:17.2Z",
                "2015-02-07T13:28:17.299999Z",
            ),
            (
                "2015-02-07T13:28:17.123456789Z",
                "2015-02-07T13:28:17.123456Z",
                "2015-02-07T13:28:17.123456Z",
            ),
            // no zone: UTC
            (
                "2012-12-01T10:00:00",
                "2012-12-01T10:00:00Z",
                "2012-12-01T10:00:00.999999Z",
            ),
            // minute precision (not valid FHIR, tolerated)
            (
                "2012-12-01T10:00Z",
                "2012-12-01T10:00:00Z",
                "2012-12-01T10:00:59.999999Z",
            ),
            (
                "1969-12-31",
                "1969-12-31T00:00:00Z",
                "1969-12-31T23:59:59.999999Z",
            ),
            (
                "0001-01-01",
                "0001-01-01T00:00:00Z",
                "0001-01-01T23:59:59.999999Z",
            ),
        ];
        for (input, lo, hi) in cases {
            assert_eq!(date_range(input), Some((us(lo), us(hi))), "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "19",
            "198O",
            "1980-13",
            "1980-02-30",
            "1980-1",
            "1980-01-01T",
            "1980-01-01T25:00:00Z",
            "1980-01-01T10:00:00+15:00",
            "1980-01-01T10:00:00.Z",
            "1980-01-01 10:00",
            "0000",
            "10:00:00",
        ] {
            assert_eq!(date_range(bad), None, "{bad:?}");
        }
    }
}
