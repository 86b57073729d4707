//! RFC 3339 timestamps in UTC from Unix time, without a time-zone database: the one place that
//! turns seconds since the epoch into a calendar date (logs, metrics rows and the Ollama API all
//! print times this way).

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
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    );
    match fraction {
        Fraction::None => {}
        Fraction::Millis => text.push_str(&format!(".{:03}", since_epoch.subsec_millis())),
        Fraction::TrimmedNanos => {
            let nanos = since_epoch.subsec_nanos();
            if nanos > 0 {
                let digits = format!("{nanos:09}");
                text.push('.');
                text.push_str(digits.trim_end_matches('0'));
            }
        }
    }
    text.push('Z');
    text
}

/// The current time as RFC 3339 in UTC.
pub fn now_rfc3339(fraction: Fraction) -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since_epoch, fraction)
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
}
