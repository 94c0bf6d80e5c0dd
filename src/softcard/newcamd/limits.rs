//! Per-card limits of the newcamd server: how many services may be decrypted at once
//! (TVCAS cards allow 2), and the ECM cache that answers a repeated ECM without the card.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::backend::EcmStamp;
use super::messages::CwPair;

/// At most `max` service ids active at once; a service stays active until it has sent
/// no ECM for `idle`.
#[derive(Debug)]
pub struct ServiceLimiter {
    max: usize,
    idle: Duration,
    active: HashMap<u16, Instant>,
}

/// The limiter's verdict on one ECM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceVerdict {
    /// The service is (now) one of the active ones.
    Allowed,
    /// All slots are taken by other services that are still active.
    Refused,
}

impl ServiceLimiter {
    /// A limiter for `max` services, freed after `idle` without ECMs.
    pub fn new(max: usize, idle: Duration) -> ServiceLimiter {
        ServiceLimiter {
            max,
            idle,
            active: HashMap::new(),
        }
    }

    /// Record an ECM for `service_id` at `now`.
    pub fn check(&mut self, service_id: u16, now: Instant) -> ServiceVerdict {
        if let Some(seen) = self.active.get_mut(&service_id) {
            *seen = now;
            return ServiceVerdict::Allowed;
        }
        let idle = self.idle;
        self.active
            .retain(|_, seen| now.saturating_duration_since(*seen) < idle);
        if self.active.len() >= self.max {
            return ServiceVerdict::Refused;
        }
        self.active.insert(service_id, now);
        ServiceVerdict::Allowed
    }

    /// Service ids active now.
    pub fn active(&self) -> usize {
        self.active.len()
    }
}

/// A cached ECM answer: the CWs, and the card's stamp of the ECM if it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAnswer {
    /// The CWs.
    pub cws: CwPair,
    /// When and for which period the ECM was made.
    pub stamp: Option<EcmStamp>,
}

/// A bounded cache of ECM answers keyed by the SHA-256 of the ECM bytes. Only answers
/// with CWs are kept (a refusal may turn into an answer after an EMM), each with the
/// card's stamp of the ECM so the card's replay rule can still be applied to a hit.
#[derive(Debug)]
pub struct EcmCache {
    ttl: Duration,
    cap: usize,
    map: HashMap<[u8; 32], (CachedAnswer, Instant)>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl EcmCache {
    /// A cache of at most `cap` answers, each kept for `ttl`.
    pub fn new(cap: usize, ttl: Duration) -> EcmCache {
        EcmCache {
            ttl,
            cap: cap.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The key of an ECM.
    pub fn key(ecm: &[u8]) -> [u8; 32] {
        Sha256::digest(ecm).into()
    }

    /// A cached answer for `key` that is younger than the TTL.
    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<CachedAnswer> {
        self.map
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(cw, _)| cw.clone())
    }

    /// Keep `cws` as the answer for `key`, dropping expired and (when full) the oldest entries.
    pub fn insert(&mut self, key: [u8; 32], cws: CachedAnswer, now: Instant) {
        while let Some((k, at)) = self.order.front().copied() {
            let expired = now.saturating_duration_since(at) >= self.ttl;
            if !expired && self.map.len() < self.cap {
                break;
            }
            self.order.pop_front();
            // only drop the map entry if it was not refreshed later
            if self.map.get(&k).is_some_and(|(_, t)| *t == at) {
                self.map.remove(&k);
            }
        }
        self.map.insert(key, (cws, now));
        self.order.push_back((key, now));
    }

    /// Forget every answer (the card's entitlements changed).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn third_service_waits_until_one_is_idle() {
        let t0 = Instant::now();
        let mut l = ServiceLimiter::new(2, Duration::from_secs(10));
        assert_eq!(l.check(1, t0), ServiceVerdict::Allowed);
        assert_eq!(l.check(2, t0), ServiceVerdict::Allowed);
        assert_eq!(l.check(3, t0), ServiceVerdict::Refused);
        assert_eq!(
            l.check(1, t0 + Duration::from_secs(9)),
            ServiceVerdict::Allowed
        );
        // service 2 idle for 10 s: its slot goes to 3; 1 stays
        let t = t0 + Duration::from_secs(10);
        assert_eq!(l.check(3, t), ServiceVerdict::Allowed);
        assert_eq!(l.check(2, t), ServiceVerdict::Refused);
        assert_eq!(l.check(1, t), ServiceVerdict::Allowed);
        assert_eq!(l.active(), 2);
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let cw = CachedAnswer {
            cws: CwPair::from_bytes(&[7; 16]),
            stamp: None,
        };
        let mut c = EcmCache::new(3, Duration::from_secs(5));
        let k = |i: u8| EcmCache::key(&[0x80, 0, 1, i]);
        c.insert(k(1), cw.clone(), t0);
        assert_eq!(c.get(&k(1), t0 + Duration::from_secs(4)), Some(cw.clone()));
        assert_eq!(c.get(&k(1), t0 + Duration::from_secs(5)), None);
        assert_eq!(c.get(&k(2), t0), None);
        for i in 0..10 {
            c.insert(k(i), cw.clone(), t0 + Duration::from_millis(u64::from(i)));
            assert!(c.len() <= 3);
        }
        assert!(c.get(&k(9), t0).is_some());
        assert!(c.get(&k(0), t0).is_none());
        // everything expired is dropped on the next insert
        c.insert(k(20), cw, t0 + Duration::from_secs(60));
        assert_eq!(c.len(), 1);
    }
}
