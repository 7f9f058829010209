//! The scalar grammars of module.yaml: durations (Flink's `TimeUtils` grammar, which StateFun
//! uses), startup dates, Kafka topic names, and the "did you mean" hint for misspelt words.

use std::time::Duration;

/// Flink's duration units and their labels (Flink accepts exactly these, in any case).
const UNITS: &[(&[&str], u64)] = &[
    (&["d", "day", "days"], 86_400_000_000_000),
    (&["h", "hour", "hours"], 3_600_000_000_000),
    (&["min", "m", "minute", "minutes"], 60_000_000_000),
    (&["s", "sec", "secs", "second", "seconds"], 1_000_000_000),
    (
        &["ms", "milli", "millis", "millisecond", "milliseconds"],
        1_000_000,
    ),
    (
        &["µs", "micro", "micros", "microsecond", "microseconds"],
        1_000,
    ),
    (&["ns", "nano", "nanos", "nanosecond", "nanoseconds"], 1),
];

/// A duration as Flink writes it: a whole number, optional spaces, an optional unit (`500ms`,
/// `2 s`, `1min`, `15min`, `1 m`, `3h`, `1d`, or long forms like `seconds`); no unit means ms.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let digits = trimmed.len()
        - trimmed
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    let (number, unit) = trimmed.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a duration: it must start with a whole number, as in `1min`, `15 s` or `500ms`"
        ));
    }
    let unit = unit.trim().to_lowercase();
    let nanos_per_unit = if unit.is_empty() {
        1_000_000
    } else {
        let found = UNITS
            .iter()
            .find(|(labels, _)| labels.contains(&unit.as_str()));
        let Some(&(_, nanos)) = found else {
            let labels = UNITS.iter().flat_map(|(labels, _)| labels.iter().copied());
            let hint = did_you_mean(&unit, labels)
                .map(|label| format!(" (did you mean `{number}{label}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "`{text}` is not a duration: unknown unit `{unit}`{hint}; use ms, s, min, h or d \
                 (or a long form such as `seconds`, `minutes`); a bare number means milliseconds"
            ));
        };
        nanos
    };
    let too_large = || format!("`{text}` is too large for a duration");
    let count: u128 = number.parse().map_err(|_| too_large())?;
    let nanos = count
        .checked_mul(u128::from(nanos_per_unit))
        .ok_or_else(too_large)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    let subsec = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}

/// A startup date, `yyyy-MM-dd HH:mm:ss.SSS` then an optional UTC offset (`+0000`, `-08:00`,
/// `Z`), as milliseconds since the Unix epoch. StateFun's pattern is `yyyy-MM-dd HH:mm:ss.SSS Z`;
/// we also take a missing offset (UTC) and 0 to 9 fraction digits (its docs' example has two).
pub(super) fn parse_date_millis(text: &str) -> Result<i64, String> {
    let bad = |why: &str| {
        format!(
            "`{text}` is not a startup date ({why}): expected `yyyy-MM-dd HH:mm:ss.SSS` and an \
             optional UTC offset, as in `2020-02-01 04:15:00.000 +0000` (no offset means UTC)"
        )
    };
    let mut parts = text.split_whitespace();
    let (Some(date), Some(time)) = (parts.next(), parts.next()) else {
        return Err(bad("it needs a date and a time"));
    };
    let offset_minutes = match parts.next() {
        None => 0,
        Some(zone) => parse_offset(zone).ok_or_else(|| bad("bad UTC offset"))?,
    };
    if parts.next().is_some() {
        return Err(bad("extra text after the offset"));
    }

    let number = |field: &str, digits: usize| -> Option<i64> {
        (field.len() == digits && field.bytes().all(|b| b.is_ascii_digit()))
            .then(|| field.parse().ok())
            .flatten()
    };
    let date: Vec<&str> = date.split('-').collect();
    let [year, month, day] = date[..] else {
        return Err(bad("the date is not yyyy-MM-dd"));
    };
    let (Some(year), Some(month), Some(day)) = (number(year, 4), number(month, 2), number(day, 2))
    else {
        return Err(bad("the date is not yyyy-MM-dd"));
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such day"));
    }

    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let clock: Vec<&str> = clock.split(':').collect();
    let [hour, minute, second] = clock[..] else {
        return Err(bad("the time is not HH:mm:ss.SSS"));
    };
    let (Some(hour), Some(minute), Some(second)) =
        (number(hour, 2), number(minute, 2), number(second, 2))
    else {
        return Err(bad("the time is not HH:mm:ss.SSS"));
    };
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("no such time of day"));
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the fraction of a second is not digits"));
    }
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().unwrap_or(0);

    let days = days_since_epoch(year, month, day);
    let seconds = ((days * 24 + hour) * 60 + minute - offset_minutes) * 60 + second;
    Ok(seconds * 1000 + millis)
}

/// A UTC offset in minutes from `Z`, `+HH`, `+HHMM` or `+HH:MM` (or `-`).
fn parse_offset(zone: &str) -> Option<i64> {
    if zone.eq_ignore_ascii_case("z") || zone.eq_ignore_ascii_case("utc") {
        return Some(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = zone[1..].replace(':', "");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits
        .get(2..)
        .filter(|m| !m.is_empty())
        .map_or(Some(0), |m| m.parse().ok())?;
    (hours <= 18 && minutes < 60).then_some(sign * (hours * 60 + minutes))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date, counting in 400-year eras that start
/// on March 1st so that the leap day ends each year.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    const DAYS_PER_ERA: i64 = 146_097;
    const EPOCH_FROM_ERA_0: i64 = 719_468;
    era * DAYS_PER_ERA + day_of_era - EPOCH_FROM_ERA_0
}

/// Checks a Kafka topic name: 1 to 249 of letters, digits, `.`, `_` and `-`, not `.` or `..`.
pub(super) fn check_topic(name: &str) -> Result<(), String> {
    let legal = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 249 || !legal || name == "." || name == ".." {
        return Err(format!(
            "`{name}` is not a Kafka topic name: use 1 to 249 letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// The candidate closest to `word` (ignoring case), if it is close enough to be a typo.
pub(super) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&word, &candidate.to_lowercase()), candidate))
        .filter(|&(distance, candidate)| distance <= 2.max(candidate.chars().count() / 3))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Appends a "did you mean" to serde's "unknown field `x`, expected one of `a`, `b`" (and
/// "unknown variant") messages when one of the expected words is close to `x`.
pub(super) fn with_suggestion(message: String) -> String {
    for marker in ["unknown field `", "unknown variant `"] {
        let Some(start) = message.find(marker) else {
            continue;
        };
        let rest = &message[start + marker.len()..];
        let Some((word, expected)) = rest.split_once('`') else {
            continue;
        };
        let candidates = expected.split('`').skip(1).step_by(2);
        if let Some(suggestion) = did_you_mean(word, candidates) {
            return format!("{message}; did you mean `{suggestion}`?");
        }
    }
    message
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}
