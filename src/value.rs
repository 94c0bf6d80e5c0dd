//! Parsers for option values: durations, PIDs, hex numbers.

use std::time::Duration;

use crate::ts::Pid;

/// The longest duration any option takes (30 days); larger numbers are refused here, before
/// `Duration` arithmetic could overflow.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A secret given as an option value (a CW, a password, a key). Its Debug does not show
/// it, so an options struct that derives Debug cannot print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    /// The text itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// Any text, kept as a [`SecretText`].
pub fn secret_text(s: &str) -> Result<SecretText, String> {
    Ok(SecretText(s.to_owned()))
}

/// `10s`, `500ms`, `2m`, `1.5s`, or a bare number of seconds, at most 30 days.
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
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "'{s}' is too long; no duration option takes more than 30 days (720h)"
        )),
    }
}

/// `d` as an option value is written: `100ms`, `10s`, `1h`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A duration between `min` and `max` (inclusive); the error gives the range.
fn duration_between(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < min || d > max {
        return Err(format!(
            "'{s}' is out of range; allowed {} to {}",
            show_duration(min),
            show_duration(max)
        ));
    }
    Ok(d)
}

const fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

const fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// `--crypto-period`: 100ms to 1h. Below 100 ms an ECM cannot be on air before its key is
/// used; SimulCrypt's CP_duration (100 ms units in 16 bits) ends at about 1.8 h.
pub fn crypto_period(s: &str) -> Result<Duration, String> {
    duration_between(s, ms(100), secs(3600))
}

/// `--ecm-repetition`: 10ms to 10s (SimulCrypt's ECM_rep_period is 16-bit milliseconds;
/// a receiver waits at most one repetition for its key).
pub fn ecm_repetition(s: &str) -> Result<Duration, String> {
    duration_between(s, ms(10), secs(10))
}

/// `--idle-timeout` of a stream run: 100ms to 7 days.
pub fn stream_idle_timeout(s: &str) -> Result<Duration, String> {
    duration_between(s, ms(100), secs(7 * 24 * 3600))
}

/// `probe --duration`: 10ms to 30 days.
pub fn probe_duration(s: &str) -> Result<Duration, String> {
    duration_between(s, ms(10), MAX_DURATION)
}

/// `probe --pid-timeout` (ETR 290 1.6): 100ms to 1 hour.
pub fn pid_timeout(s: &str) -> Result<Duration, String> {
    duration_between(s, ms(100), secs(3600))
}

/// `probe --ecm-limit`: 10ms to 1 hour.
pub fn ecm_limit(s: &str) -> Result<Duration, String> {
    duration_between(s, ms(10), secs(3600))
}

/// `softcard serve --service-idle`: 100ms to 1 day.
pub fn service_idle(s: &str) -> Result<Duration, String> {
    duration_between(s, ms(100), secs(24 * 3600))
}

/// `softcard serve --idle-timeout`: 1s to 1 day (newcamd clients keep alive every 30 s or so).
pub fn session_idle_timeout(s: &str) -> Result<Duration, String> {
    duration_between(s, secs(1), secs(24 * 3600))
}

/// `softcard serve --login-fail-delay`: 0 to 60s.
pub fn login_fail_delay(s: &str) -> Result<Duration, String> {
    duration_between(s, Duration::ZERO, secs(60))
}

/// `headend --read-interval`: 0 (read at every arrival) to 50ms (a packet's added
/// latency is up to this).
pub fn read_interval(s: &str) -> Result<Duration, String> {
    duration_between(s, Duration::ZERO, ms(50))
}

/// `softcard serve --ecm-cache-ttl`: 0 (no cache) to 1h.
pub fn ecm_cache_ttl(s: &str) -> Result<Duration, String> {
    duration_between(s, Duration::ZERO, secs(3600))
}

/// The largest `--delay-start`, either way: SimulCrypt's delay_start is a signed 16-bit
/// number of milliseconds.
const MAX_DELAY_START_MS: i64 = 30_000;

/// A signed duration in milliseconds: `-500ms`, `1s`, `0`; -30s to 30s (`--delay-start`).
pub fn signed_millis(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (neg, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let d = duration(rest)?;
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if ms > MAX_DELAY_START_MS {
        return Err(format!("'{s}' is out of range; allowed -30s to 30s"));
    }
    Ok(if neg { -ms } else { ms })
}

/// `scramble --batch`: 1 to 16384 packets (3 MB). The batch buffer is allocated up front.
pub fn batch_packets(s: &str) -> Result<usize, String> {
    count_between(s, 1, 16_384)
}

/// `softcard serve --max-services`: 1 to 64.
pub fn max_services(s: &str) -> Result<usize, String> {
    count_between(s, 1, 64)
}

/// `softcard serve --max-clients`: 1 to 65536.
pub fn max_clients(s: &str) -> Result<usize, String> {
    count_between(s, 1, 65_536)
}

/// A whole number between `min` and `max` (inclusive); the error gives the range.
fn count_between(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let range = || format!("allowed {min} to {max}");
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number; {}", range()))?;
    match usize::try_from(v) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is out of range; {}", range())),
    }
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

/// An EMM bandwidth: `50k`, `1.5M`, `64000` bit/s, 1k to 65535k (what SimulCrypt's
/// EMMG bandwidth field holds; the built-in carousel takes the same range).
pub fn emm_bandwidth(s: &str) -> Result<u64, String> {
    let bps = bitrate(s)?;
    if !(1000..=65_535_000).contains(&bps) {
        return Err(format!("'{s}' is out of range; allowed 1k to 65535k"));
    }
    Ok(bps)
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

    #[test]
    fn numbers_out_of_range_are_refused_not_panicked_on() {
        assert!(duration("6000000000000000h").is_err());
        assert!(duration("1e300s").is_err());
        assert_eq!(duration("720h").unwrap(), MAX_DURATION);
        assert!(duration("721h").is_err());
        let e = crypto_period("50ms").unwrap_err();
        assert!(e.contains("allowed 100ms to 1h"), "{e}");
        assert!(crypto_period("1h").is_ok());
        assert!(crypto_period("61m").is_err());
        assert!(signed_millis("-30s").is_ok());
        assert!(signed_millis("-31s").is_err());
        assert!(signed_millis("9999999999999h").is_err());
        assert_eq!(batch_packets("16384").unwrap(), 16_384);
        let e = batch_packets("4000000000").unwrap_err();
        assert!(e.contains("allowed 1 to 16384"), "{e}");
        assert!(batch_packets("0").is_err());
        assert!(batch_packets("99999999999999999999999").is_err());
        assert!(emm_bandwidth("999").is_err());
        assert!(emm_bandwidth("65535k").is_ok());
        assert!(login_fail_delay("0").is_ok());
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
    }
}
