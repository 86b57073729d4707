//! RFC 3339 timestamps in UTC from Unix time, without a time-zone database: the one place that
//! turns seconds since the epoch into a calendar date and back (logs, metrics rows, activity
//! rows and the Ollama API all print times this way; the activity query parses them).

use std::time::Duration;

/// How much of the fraction of a second to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fraction {
    /// Whole seconds: `2026-12-06T03:52:17Z`.
    None,
    /// Always three digits: `2026-12-06T03:52:17.120Z`.
    Millis,
    /// Nanoseconds with trailing zeros trimmed, nothing when zero (as Go prints `time.Time`):
    /// `2026-12-06T03:52:17.12Z`.
    TrimmedNanos,
}

/// `since_epoch` (time since 1970-01-01T00:00:00Z) as RFC 3339 in UTC.
pub fn rfc3339(since_epoch: Duration, fraction: Fraction) -> String {
    let seconds = since_epoch.as_secs();
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let seconds_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    // Digits are pushed one by one: every log line on stdout carries a timestamp, and
    // `format!` cost more than the rest of the line's formatting.
    let mut text = String::with_capacity(32);
    match u64::try_from(year) {
        Ok(year) if year <= 9999 => push_padded(&mut text, year, 4),
        _ => {
            use std::fmt::Write;
            let _ = write!(text, "{year:04}");
        }
    }
    text.push('-');
    push_padded(&mut text, u64::from(month), 2);
    text.push('-');
    push_padded(&mut text, u64::from(day), 2);
    text.push('T');
    push_padded(&mut text, seconds_of_day / 3600, 2);
    text.push(':');
    push_padded(&mut text, seconds_of_day / 60 % 60, 2);
    text.push(':');
    push_padded(&mut text, seconds_of_day % 60, 2);
    match fraction {
        Fraction::None => {}
        Fraction::Millis => {
            text.push('.');
            push_padded(&mut text, u64::from(since_epoch.subsec_millis()), 3);
        }
        Fraction::TrimmedNanos => {
            let nanos = since_epoch.subsec_nanos();
            if nanos > 0 {
                text.push('.');
                push_padded(&mut text, u64::from(nanos), 9);
                while text.ends_with('0') {
                    text.pop();
                }
            }
        }
    }
    text.push('Z');
    text
}

/// Pushes `value` in decimal, with leading zeros up to `width` (at least 1) digits.
fn push_padded(text: &mut String, value: u64, width: u32) {
    let mut place = 10u64.pow(width.max(1) - 1);
    while place <= value / 10 {
        place *= 10;
    }
    while place > 0 {
        text.push(char::from(b'0' + (value / place % 10) as u8));
        place /= 10;
    }
}

/// The current time as RFC 3339 in UTC.
pub fn now_rfc3339(fraction: Fraction) -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since_epoch, fraction)
}

/// Milliseconds since the Unix epoch now; 0 if the clock is before 1970.
pub fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, e.g. `2024-02-29T12:34:56.789Z`.
pub fn rfc3339_millis(unix_millis: u64) -> String {
    rfc3339(Duration::from_millis(unix_millis), Fraction::Millis)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    // Both values are small positive numbers by construction.
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses an RFC 3339 date-time (`2026-01-31T12:00:00Z`, with optional fraction and a `Z` or
/// `±HH:MM` offset) into Unix milliseconds; `None` for anything else or a time before 1970.
pub fn parse_rfc3339_millis(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let digits = |from: usize, count: usize| -> Option<i64> {
        let slice = bytes.get(from..from + count)?;
        slice
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| slice.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separator = |at: usize, allowed: &[u8]| bytes.get(at).is_some_and(|b| allowed.contains(b));
    if !(separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt ")
        && separator(13, b":")
        && separator(16, b":"))
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut index = 19;
    let mut millis = 0i64;
    if bytes.get(index) == Some(&b'.') {
        index += 1;
        let fraction_start = index;
        while bytes.get(index).is_some_and(u8::is_ascii_digit) {
            if index - fraction_start < 3 {
                millis = millis * 10 + i64::from(bytes[index] - b'0');
            }
            index += 1;
        }
        if index == fraction_start {
            return None;
        }
        for _ in (index - fraction_start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match bytes.get(index) {
        Some(b'Z' | b'z') if index + 1 == bytes.len() => 0,
        Some(sign @ (b'+' | b'-')) if index + 6 == bytes.len() && separator(index + 3, b":") => {
            let minutes = digits(index + 1, 2)? * 60 + digits(index + 4, 2)?;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_fractions() {
        let cases = [
            (Duration::ZERO, Fraction::None, "1970-01-01T00:00:00Z"),
            (Duration::ZERO, Fraction::Millis, "1970-01-01T00:00:00.000Z"),
            (
                Duration::ZERO,
                Fraction::TrimmedNanos,
                "1970-01-01T00:00:00Z",
            ),
            (
                Duration::from_millis(951_782_400_000),
                Fraction::Millis,
                "2000-02-29T00:00:00.000Z",
            ),
            (
                Duration::from_millis(1_709_210_096_789),
                Fraction::Millis,
                "2024-02-29T12:34:56.789Z",
            ),
            (
                Duration::from_millis(1_735_689_599_999),
                Fraction::Millis,
                "2024-12-31T23:59:59.999Z",
            ),
            (
                Duration::new(1_691_176_965, 499_127_000),
                Fraction::TrimmedNanos,
                "2023-08-04T19:22:45.499127Z",
            ),
            (
                Duration::new(951_782_400, 5),
                Fraction::TrimmedNanos,
                "2000-02-29T00:00:00.000000005Z",
            ),
            (
                Duration::from_secs(4_102_444_800),
                Fraction::None,
                "2100-01-01T00:00:00Z",
            ),
            (
                Duration::new(1_765_000_000, 120_000_000),
                Fraction::TrimmedNanos,
                "2025-12-06T05:46:40.12Z",
            ),
            (
                Duration::from_secs(253_402_300_800),
                Fraction::Millis,
                "10000-01-01T00:00:00.000Z",
            ),
        ];
        for (since_epoch, fraction, expected) in cases {
            assert_eq!(
                rfc3339(since_epoch, fraction),
                expected,
                "{since_epoch:?} {fraction:?}"
            );
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn rfc3339_forms() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1970-01-01T00:00:01.25Z", Some(1250)),
            ("1970-01-01T00:00:01.123456789Z", Some(1123)),
            ("1970-01-01T01:00:00+01:00", Some(0)),
            ("1970-01-01 00:00:00-00:30", Some(1_800_000)),
            ("2024-02-29T12:34:56.789Z", Some(1_709_210_096_789)),
            ("1969-12-31T23:59:59Z", None),
            ("2024-02-29T12:34:56", None),
            ("2024-02-29T12:34:56.Z", None),
            ("2024-02-29T24:00:00Z", None),
            ("2024-02-29T12:34:56+0100", None),
            ("2024-02-29T12:34:56Zjunk", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rfc3339_millis(text), expected, "{text}");
        }
        // The formatter and the parser agree.
        let millis = 1_767_225_600_123;
        let text = rfc3339_millis(millis);
        assert_eq!(parse_rfc3339_millis(&text), Some(millis));
    }
}
