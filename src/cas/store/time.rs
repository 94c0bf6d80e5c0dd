//! Times as the CLI and CSV take them: Unix seconds (TVCAS), `YYYY-MM-DD`, or
//! `YYYY-MM-DDTHH:MM[:SS]Z`, all UTC; and the ISO form for display. Years 1970..=9999.

/// Seconds in a day.
pub const DAY: i64 = 86_400;

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Leap years in 1..=y.
fn leaps_through(y: i64) -> i64 {
    y / 4 - y / 100 + y / 400
}

/// Days from 1970-01-01 to January 1st of `y` (y >= 1970).
fn days_before_year(y: i64) -> i64 {
    365 * (y - 1970) + leaps_through(y - 1) - leaps_through(1969)
}

fn month_lengths(y: i64) -> [i64; 12] {
    let feb = if is_leap(y) { 29 } else { 28 };
    [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
}

fn num(s: &str, len: usize) -> Option<i64> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse a time; `None` when it is none of the accepted forms or not a real date.
pub fn parse_time(text: &str) -> Option<i64> {
    let t = text.trim();
    if !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().ok();
    }
    let (date, clock) = match t.split_once(['T', 't', ' ']) {
        Some((d, c)) => (d, Some(c.strip_suffix(['Z', 'z'])?)),
        None => (t, None),
    };
    let mut parts = date.split('-');
    let y = num(parts.next()?, 4)?;
    let m = num(parts.next()?, 2)?;
    let d = num(parts.next()?, 2)?;
    if parts.next().is_some() || y < 1970 || !(1..=12).contains(&m) {
        return None;
    }
    let lengths = month_lengths(y);
    if d < 1 || d > lengths[(m - 1) as usize] {
        return None;
    }
    let mut days = days_before_year(y) + d - 1;
    days += lengths[..(m - 1) as usize].iter().sum::<i64>();
    let mut secs = days * DAY;
    if let Some(c) = clock {
        let mut f = c.split(':');
        let hh = num(f.next()?, 2)?;
        let mm = num(f.next()?, 2)?;
        let ss = match f.next() {
            Some(s) => num(s, 2)?,
            None => 0,
        };
        if f.next().is_some() || hh > 23 || mm > 59 || ss > 59 {
            return None;
        }
        secs += hh * 3600 + mm * 60 + ss;
    }
    Some(secs)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for display; times outside 1970..=9999 print as plain seconds.
pub fn format_time(secs: i64) -> String {
    if !(0..253_402_300_800).contains(&secs) {
        return secs.to_string();
    }
    let days = secs / DAY;
    let rem = secs % DAY;
    // estimate the year from the mean Gregorian year, then correct by at most one
    let mut y = 1970 + days * 400 / 146_097;
    while days_before_year(y) > days {
        y -= 1;
    }
    while days_before_year(y + 1) <= days {
        y += 1;
    }
    let mut doy = days - days_before_year(y);
    let mut m = 0;
    for len in month_lengths(y) {
        if doy < len {
            break;
        }
        doy -= len;
        m += 1;
    }
    format!(
        "{y:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        m + 1,
        doy + 1,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now, Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A rotation interval: `30d`, `12h`, `90m`, `3600s`, or bare seconds; `0`/`off` = never.
pub fn parse_interval(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("never") {
        return Some(0);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    if n.is_empty() || n.len() > 12 {
        return None;
    }
    let n: i64 = n.parse().ok()?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => DAY,
        "w" => 7 * DAY,
        _ => return None,
    };
    Some(n * mul)
}

/// `30d`, `12h`, `45s` for display.
pub fn format_interval(secs: i64) -> String {
    match secs {
        0 => "off".to_owned(),
        s if s % DAY == 0 => format!("{}d", s / DAY),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        // values checked with `date -u -d ... +%s`
        assert_eq!(parse_time("1970-01-01"), Some(0));
        assert_eq!(parse_time("2000-03-01"), Some(951_868_800));
        assert_eq!(parse_time("2020-04-12T12:15:00Z"), Some(1_586_693_700));
        assert_eq!(parse_time("2024-02-29T23:59:59Z"), Some(1_709_251_199));
        assert_eq!(parse_time("2100-03-01T00:00Z"), Some(4_107_542_400));
        assert_eq!(parse_time("1586693700"), Some(1_586_693_700));
        for bad in [
            "",
            "2023-02-29",
            "2024-13-01",
            "2024-1-01",
            "2024-01-01T25:00Z",
            "2024-01-01T10:00",
            "1969-12-31",
            "yesterday",
            "-5",
            "9999999999999",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in [
            0,
            951_868_800,
            1_586_693_700,
            1_709_251_199,
            4_107_542_400,
            253_402_300_799,
        ] {
            assert_eq!(parse_time(&format_time(s)), Some(s), "{s}");
        }
        assert_eq!(format_time(1_586_693_700), "2020-04-12T12:15:00Z");
        // every day boundary for a few leap cycles
        for d in 0..(366 * 12) {
            let s = 946_684_800 + d * DAY + 1;
            assert_eq!(parse_time(&format_time(s)), Some(s));
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30d"), Some(30 * DAY));
        assert_eq!(parse_interval("12h"), Some(43_200));
        assert_eq!(parse_interval("off"), Some(0));
        assert_eq!(parse_interval("3600"), Some(3600));
        assert_eq!(parse_interval("3x"), None);
        assert_eq!(format_interval(30 * DAY), "30d");
    }
}
