//! How `keyflow deadletters` prints: record times as RFC 3339 (and `--since` parsed from
//! it), values as UTF-8 or base64, reasons cut to one line. No date crate for three
//! functions: the conversions are Howard Hinnant's civil-date algorithms.

pub(super) fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

pub(super) fn truncate(s: &str, width: usize) -> String {
    let one_line = s.replace('\n', " ");
    match one_line.char_indices().nth(width) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// UTF-8 as it is, anything else as `base64:<...>`.
pub(super) fn bytes_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => format!("base64:{}", base64(b)),
    }
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub(super) use keyflow_engine::ingress_mode::rfc3339;

/// Unix milliseconds of `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`.
pub(super) fn parse_rfc3339(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if s.get(4..5)? != "-" || !matches!(s.get(10..11)?, "T" | "t" | " ") {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.chars().take_while(char::is_ascii_digit).count();
        let f = frac.get(..digits.min(3))?;
        millis = format!("{f:0<3}").parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let oh = rest.get(1..3)?.parse::<i64>().ok()?;
            let om = rest.get(4..6)?.parse::<i64>().ok()?;
            sign * (oh * 60 + om)
        }
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + sec * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_and_parse_as_rfc3339() {
        let ms = 1_796_529_600_123; // 2026-12-06T04:00:00.123Z
        assert_eq!(rfc3339(ms), "2026-12-06T04:00:00.123Z");
        assert_eq!(parse_rfc3339("2026-12-06T04:00:00.123Z"), Some(ms));
        assert_eq!(parse_rfc3339("2026-12-06T05:00:00.123+01:00"), Some(ms));
        assert_eq!(parse_rfc3339("2026-12-06"), None);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn binary_values_print_as_base64_and_reasons_are_cut() {
        assert_eq!(bytes_text(&[0xff, 0x00, 0x10]), "base64:/wAQ");
        assert_eq!(bytes_text(b"plain"), "plain");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(truncate("abcdef", 3), "abc...");
        assert_eq!(or_dash(""), "-");
    }
}
