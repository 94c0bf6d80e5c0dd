//! The API key (and the card key export's key, held the same way) and how a request proves
//! it holds it; the per-peer slow-down after failures.
//!
//! Only the key's SHA-256 digest is kept: there is no key text in memory after loading to
//! leak through `Debug`, a log line or a core dump, and comparing two digests of equal length
//! in constant time says nothing about the key through timing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest key accepted. TVCAS's own example key (`mysecretkey123`) has 14 characters; a
/// billing system's existing key must keep working, so the bar is low but not absent.
pub const MIN_KEY_CHARS: usize = 8;

/// Longest key accepted (it travels in a URL and a header line).
pub const MAX_KEY_CHARS: usize = 512;

/// Why a key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// The key file could not be read.
    #[error("reading the key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The key is unusable; the message says why (never what it is).
    #[error("the key {0}")]
    Bad(&'static str),
}

/// The API key every change (and every REST read) must present. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl ApiKey {
    /// A key from its text: [`MIN_KEY_CHARS`]..=[`MAX_KEY_CHARS`] printable characters, no
    /// spaces (it is given in URLs, headers and basic auth, where spaces do not survive).
    pub fn new(text: &str) -> Result<ApiKey, ApiKeyError> {
        let n = text.chars().count();
        if n == 0 {
            return Err(ApiKeyError::Bad("is empty"));
        }
        if n < MIN_KEY_CHARS {
            return Err(ApiKeyError::Bad("is shorter than 8 characters"));
        }
        if n > MAX_KEY_CHARS {
            return Err(ApiKeyError::Bad("is longer than 512 characters"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiKeyError::Bad(
                "holds a space or a control character; use printable characters only",
            ));
        }
        Ok(ApiKey {
            digest: digest(text),
        })
    }

    /// The key in `path`: its text with the trailing line break (and spaces) removed. A file
    /// others can read is accepted with a warning: the key is as safe as the file.
    pub fn from_file(path: &Path) -> Result<ApiKey, ApiKeyError> {
        let read = |source| ApiKeyError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > 4096 {
            return Err(ApiKeyError::Bad(
                "file is larger than 4 KiB; it should hold the key alone",
            ));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(),
                    "the key file can be read by other users; chmod 600 it");
            }
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        ApiKey::new(text.trim_end())
    }

    /// Whether two keys are the same key (so one cannot stand in for the other).
    pub fn same_as(&self, other: &ApiKey) -> bool {
        self.digest.ct_eq(&other.digest).into()
    }

    /// Whether `given` is the key (constant time in the key's content).
    pub fn matches(&self, given: &str) -> bool {
        digest(given).ct_eq(&self.digest).into()
    }
}

/// What a request presented as its key.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// No `X-API-Key` and no usable `Authorization` header.
    Missing,
    /// A key to check (from `X-API-Key`, `Authorization: Bearer` or the password of basic auth).
    Key(String),
}

/// The key a REST request presents: `X-API-Key: KEY`, `Authorization: Bearer KEY`, or
/// `Authorization: Basic` with the key as the password (any user name).
pub fn presented(headers: &HeaderMap) -> Presented {
    if let Some(v) = headers.get("x-api-key") {
        return match v.to_str() {
            Ok(k) => Presented::Key(k.trim().to_owned()),
            // not visible ASCII: cannot be the key, but it was an attempt
            Err(_) => Presented::Key(String::new()),
        };
    }
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Presented::Missing;
    };
    let (scheme, rest) = auth.trim().split_once(' ').unwrap_or((auth, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Key(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let password = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(_, p)| p.to_owned()));
        return Presented::Key(password.unwrap_or_default());
    }
    Presented::Missing
}

/// Peers remembered at most; past this, an unknown peer gets the longest delay (so a flood
/// from many addresses cannot grow memory, and cannot make its failures cheap either).
const MAX_PEERS: usize = 4096;

/// A peer's failure count is forgotten this long after its last failure.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The delay grows by the base delay per recent failure, up to this many times the base.
const MAX_STEPS: u32 = 15;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Slows down failed authentications per peer: the n-th recent failure of an address is
/// answered after n x `base` (at most 15 x). Only failing requests wait, so a client with
/// the right key is never slowed by an attacker on the same address; a peer's record is
/// forgotten 10 minutes after its last failure. IPv6 peers count per /64, the block one
/// host usually holds.
#[derive(Debug)]
pub struct FailureGate {
    base: Duration,
    peers: Mutex<HashMap<IpAddr, Failures>>,
}

fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl FailureGate {
    /// A gate adding `base` per failure (zero turns the delay off).
    pub fn new(base: Duration) -> FailureGate {
        FailureGate {
            base,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Record a failure of `ip` now; returns how long to hold its answer.
    pub fn fail(&self, ip: IpAddr) -> Duration {
        self.fail_at(ip, Instant::now())
    }

    fn fail_at(&self, ip: IpAddr, now: Instant) -> Duration {
        let key = peer_key(ip);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if !peers.contains_key(&key) && peers.len() >= MAX_PEERS {
            peers.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
            if peers.len() >= MAX_PEERS {
                return self.base * MAX_STEPS;
            }
        }
        let f = peers.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        self.base * f.count.min(MAX_STEPS)
    }

    /// Peers remembered now.
    pub fn peers(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn key_rules() {
        assert!(ApiKey::new("").is_err());
        assert!(ApiKey::new("short").is_err());
        assert!(ApiKey::new("has a space").is_err());
        assert!(ApiKey::new(&"k".repeat(513)).is_err());
        let k = ApiKey::new("mysecretkey123").unwrap();
        assert!(k.matches("mysecretkey123"));
        assert!(!k.matches("mysecretkey124"));
        assert!(!k.matches(""));
        assert_eq!(format!("{k:?}"), "ApiKey(..)");
    }

    #[test]
    fn key_file_drops_the_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "mysecretkey123\n").unwrap();
        assert!(ApiKey::from_file(&p).unwrap().matches("mysecretkey123"));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(ApiKey::from_file(&p), Err(ApiKeyError::Bad(_))));
        assert!(matches!(
            ApiKey::from_file(&dir.path().join("none")),
            Err(ApiKeyError::Read { .. })
        ));
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_three_ways_to_present_a_key() {
        let k = |s: &str| Presented::Key(s.to_owned());
        assert_eq!(presented(&HeaderMap::new()), Presented::Missing);
        assert_eq!(presented(&headers("x-api-key", "abc")), k("abc"));
        assert_eq!(presented(&headers("authorization", "Bearer abc")), k("abc"));
        // "user:pa:ss" -> password "pa:ss" (only the first colon splits)
        assert_eq!(
            presented(&headers("authorization", "Basic dXNlcjpwYTpzcw==")),
            k("pa:ss")
        );
        assert_eq!(presented(&headers("authorization", "Basic !!")), k(""));
        assert_eq!(
            presented(&headers("authorization", "Digest x")),
            Presented::Missing
        );
    }

    #[test]
    fn failures_slow_the_failing_peer_only_and_are_forgotten() {
        let g = FailureGate::new(Duration::from_millis(100));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        assert_eq!(g.fail_at(a, t), Duration::from_millis(100));
        assert_eq!(g.fail_at(a, t), Duration::from_millis(200));
        assert_eq!(g.fail_at(b, t), Duration::from_millis(100));
        for _ in 0..30 {
            g.fail_at(a, t);
        }
        assert_eq!(g.fail_at(a, t), Duration::from_millis(1500), "capped");
        let later = t + FORGET_AFTER;
        assert_eq!(g.fail_at(a, later), Duration::from_millis(100), "forgotten");
    }

    #[test]
    fn memory_is_bounded() {
        let g = FailureGate::new(Duration::from_millis(10));
        let t = Instant::now();
        for i in 0..MAX_PEERS as u32 {
            g.fail_at(IpAddr::V4(i.into()), t);
        }
        assert_eq!(g.peers(), MAX_PEERS);
        // a new peer when full and nothing is old: not remembered, longest delay
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(g.fail_at(x, t), Duration::from_millis(150));
        assert_eq!(g.peers(), MAX_PEERS);
        // once the old records age out they make room
        g.fail_at(x, t + FORGET_AFTER);
        assert_eq!(g.peers(), 1);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let g = FailureGate::new(Duration::from_millis(10));
        let t = Instant::now();
        g.fail_at("2001:db8:1:2::1".parse().unwrap(), t);
        assert_eq!(
            g.fail_at("2001:db8:1:2::ffff".parse().unwrap(), t),
            Duration::from_millis(20)
        );
        assert_eq!(g.peers(), 1);
    }
}
