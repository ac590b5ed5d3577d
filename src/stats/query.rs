//! Calendar arithmetic for statistics reads: UTC offsets, dates, RFC 3339 times, and folding
//! hourly rows into the days and hours of a client's time zone.
//!
//! Pure. Buckets are whole UTC hours, so any whole-hour offset maps each bucket to exactly one
//! local day; for offsets with minutes (+05:30) a bucket is attributed to the local day its start
//! falls in.

use std::collections::HashMap;

use crate::store::entities::{StatsCounters, StatsRow};

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` of a day count.
pub fn format_date(days: i64) -> String {
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Parses `YYYY-MM-DD` into a day count.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&month) || day == 0 || text.len() != 10 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    (civil_from_days(days) == (year, month, day)).then_some(days)
}

/// Parses a UTC offset `+HH:MM`, `-HH:MM` or `Z` into seconds east of UTC.
pub fn parse_utc_offset(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let hours: i64 = hours.parse().ok()?;
    let minutes: i64 = minutes.parse().ok()?;
    (hours <= 14 && minutes < 60).then_some(sign * (hours * 3_600 + minutes * 60))
}

/// Parses an RFC 3339 time (`2026-12-04T10:00:00Z`, fractions and offsets allowed) into Unix
/// seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    if text.len() < 20 || !text.is_char_boundary(10) || !text.is_char_boundary(19) {
        return None;
    }
    let days = parse_date(&text[..10])?;
    if !matches!(text.as_bytes()[10], b'T' | b't' | b' ') {
        return None;
    }
    let clock = &text[11..19];
    let mut parts = clock.split(':');
    let hour: i64 = parts.next()?.parse().ok()?;
    let minute: i64 = parts.next()?.parse().ok()?;
    let second: i64 = parts.next()?.parse().ok()?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = parse_utc_offset(rest)?;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second - offset)
}

/// Folds hourly rows into `days` local days ending with the local day holding `now_seconds`:
/// `(day number, counters)` oldest first, one entry per day including empty ones.
pub fn fold_days(rows: &[StatsRow], days: i64, offset_seconds: i64, now_seconds: i64) -> Vec<(i64, StatsCounters)> {
    let today = (now_seconds + offset_seconds).div_euclid(86_400);
    let first = today - days + 1;
    let mut by_day: HashMap<i64, StatsCounters> = HashMap::new();
    for row in rows {
        let day = (row.key.hour + offset_seconds).div_euclid(86_400);
        by_day.entry(day).or_default().add(&row.counters);
    }
    (first..=today).map(|day| (day, by_day.get(&day).copied().unwrap_or_default())).collect()
}

/// The UTC hour range `[from, to)` covering the local days `first_day..=last_day`.
pub fn hour_range_of_days(first_day: i64, last_day: i64, offset_seconds: i64) -> (i64, i64) {
    let from = first_day * 86_400 - offset_seconds;
    let to = (last_day + 1) * 86_400 - offset_seconds;
    // Widen to whole hours so offsets with minutes still cover every bucket that starts inside.
    (from.div_euclid(3_600) * 3_600, (to + 3_599).div_euclid(3_600) * 3_600)
}

/// Folds hourly rows into the 24 local hours of `day`.
pub fn fold_hours(rows: &[StatsRow], day: i64, offset_seconds: i64) -> Vec<StatsCounters> {
    let mut hours = vec![StatsCounters::default(); 24];
    for row in rows {
        let local = row.key.hour + offset_seconds;
        if local.div_euclid(86_400) == day {
            hours[(local.rem_euclid(86_400) / 3_600) as usize].add(&row.counters);
        }
    }
    hours
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::entities::StatsKey;

    #[test]
    fn dates_round_trip() {
        for days in [-800_000, -1, 0, 1, 10_957, 20_000, 20_791, 2_000_000] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-13-01"), None);
    }

    #[test]
    fn offsets_and_times_parse() {
        assert_eq!(parse_utc_offset("+08:00"), Some(28_800));
        assert_eq!(parse_utc_offset("-05:30"), Some(-19_800));
        assert_eq!(parse_utc_offset("08:00"), None);
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00Z"), Some(3_600));
        assert_eq!(parse_rfc3339("1970-01-01T08:00:00.5+08:00"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01"), None);
        assert_eq!(parse_rfc3339("1970-01-01T25:00:00Z"), None);
    }

    fn row(hour: i64, requests: i64) -> StatsRow {
        StatsRow { key: StatsKey { hour, ..StatsKey::default() }, counters: StatsCounters { requests, ..StatsCounters::default() } }
    }

    #[test]
    fn hours_fold_into_local_days_and_hours() {
        // 23:00 UTC on day 1 is 07:00 on day 2 at +08:00.
        let rows = [row(86_400 + 23 * 3_600, 5), row(86_400, 2)];
        let days = fold_days(&rows, 3, 28_800, 2 * 86_400 + 100);
        assert_eq!(days.iter().map(|(day, counters)| (*day, counters.requests)).collect::<Vec<_>>(), [(0, 0), (1, 2), (2, 5)]);
        let hours = fold_hours(&rows, 2, 28_800);
        assert_eq!(hours[7].requests, 5);
        assert_eq!(hours.iter().map(|counters| counters.requests).sum::<i64>(), 5);
        assert_eq!(hour_range_of_days(2, 2, 28_800), (2 * 86_400 - 28_800, 3 * 86_400 - 28_800));
    }
}
