//! Parsers for option values: durations, PIDs, hex numbers.

use std::time::Duration;

use castmux::ts::Pid;

/// `10s`, `500ms`, `2m`, `1.5s`, or a bare number of seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 10s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}' is not a duration"));
    }
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A signed duration in milliseconds: `-500ms`, `1s`, `0`.
pub fn signed_millis(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (neg, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let d = duration(rest)?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| "too long".to_owned())?;
    Ok(if neg { -ms } else { ms })
}

/// A u16 in decimal or `0x` hex.
pub fn u16_number(s: &str) -> Result<u16, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| format!("'{s}' is not a number (decimal or 0x hex, up to 65535)"))
}

/// `s` trimmed and without a leading `0x` / `0X`: the digits of a hex value.
pub fn hex_digits(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t)
}

/// A u16 in hex, with or without `0x` (CA_system_ID).
pub fn hex_u16(s: &str) -> Result<u16, String> {
    let h = hex_digits(s);
    u16::from_str_radix(h, 16).map_err(|_| format!("'{s}' is not a 16-bit hex number"))
}

/// A u32 in hex, with or without `0x` (Super_CAS_id, client_id).
pub fn hex_u32(s: &str) -> Result<u32, String> {
    let h = hex_digits(s);
    if h.is_empty() || h.len() > 8 {
        return Err(format!(
            "'{s}' is not a 32-bit hex number (up to 8 hex digits)"
        ));
    }
    u32::from_str_radix(h, 16).map_err(|_| format!("'{s}' is not a 32-bit hex number"))
}

/// A PID in decimal or `0x` hex, 0..=8191.
pub fn pid(s: &str) -> Result<Pid, String> {
    let v = u16_number(s)?;
    Pid::try_new(v).ok_or_else(|| format!("PID {v} is over 8191 (0x1FFF)"))
}

/// A bitrate in bit/s: `50000`, `50k`, `1.5M`, `1G` (k = 1000).
pub fn bitrate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a bitrate; write 50000, 50k, 1.5M"))?;
    let bps = v * mult;
    if !(1.0..=1e11).contains(&bps) {
        return Err(format!(
            "{s:?}: a bitrate is between 1 bit/s and 100 Gbit/s"
        ));
    }
    Ok(bps as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        assert!(duration("x").is_err());
        assert_eq!(signed_millis("-250ms").unwrap(), -250);
        assert_eq!(pid("0x100").unwrap().value(), 256);
        assert!(pid("9000").is_err());
        assert_eq!(hex_u16("4AE1").unwrap(), 0x4AE1);
    }

    #[test]
    fn hex_u32_parses_super_cas_ids() {
        assert_eq!(hex_u32("4AE10000").unwrap(), 0x4AE1_0000);
        assert_eq!(hex_u32("0x0B000001").unwrap(), 0x0B00_0001);
        assert!(hex_u32("123456789").is_err());
        assert!(hex_u32("").is_err());
        assert!(hex_u32("xyz").is_err());
    }
}
