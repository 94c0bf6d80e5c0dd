//! The EMM carousel: cycles every card's unique EMM at a fixed bitrate on the EMM PID.
//!
//! - Cards are visited in serial order, one after the other, forever; a card's EMM is
//!   built only when its turn comes (memory: the card records plus one card's sections).
//! - A card changed from the CLI (`urgent`) jumps the queue: it goes out right after the
//!   sections already started, so at 50 kbit/s it is on air well within 2 s.
//! - Disabled and expired cards keep getting EMMs: that is how a card learns it was
//!   switched off or ran out. Those EMMs carry no service keys.
//! - The budget counts a section as the TS packets it occupies, `ceil((len+1)/184)*188`
//!   bytes (one pointer_field byte, no packing of two sections into one packet).
//! - Sequence numbers are Unix microseconds at the change, kept strictly increasing, so
//!   they keep growing across restarts; a card's EMM carries the newer of its own change
//!   and the last service-key change.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::emm::build_emm;
use super::keyring::ServiceKeyRing;
use super::types::{AccessCriteria, CardSerial, Entitlements, Key128, ServiceKey};

/// Bytes a section occupies on air: whole TS packets, one pointer_field byte.
pub fn section_air_bytes(len: usize) -> u64 {
    ((len + 1).div_ceil(184) * 188) as u64
}

/// Counters of the carousel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmmCounters {
    /// Sections emitted.
    pub emitted: u64,
    /// Of those, sections of urgent cards.
    pub urgent: u64,
    /// Complete passes over all cards.
    pub cycles: u64,
    /// Bytes on air (TS packets) of the emitted sections.
    pub air_bytes: u64,
    /// Cards whose EMM could not be built (skipped for that turn).
    pub build_errors: u64,
}

#[derive(Debug)]
struct CardEntry {
    key: Key128,
    ent: Entitlements,
    seq: u64,
    urgent_queued: bool,
}

/// The EMM carousel of one EMM PID.
pub struct EmmCarousel {
    bitrate_bps: u64,
    cards: BTreeMap<CardSerial, CardEntry>,
    cursor: Option<CardSerial>,
    urgent: VecDeque<CardSerial>,
    ring: ServiceKeyRing,
    keys_seq: u64,
    last_seq: u64,
    pending: Vec<u8>,
    pending_pos: usize,
    pending_urgent: bool,
    /// Budget in bit-nanoseconds (bits x 1e9), refilled at `bitrate_bps` and capped.
    credit: u128,
    last_now: Option<Duration>,
    counters: EmmCounters,
    warned: bool,
}

const NANOS: u128 = 1_000_000_000;

impl std::fmt::Debug for EmmCarousel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmmCarousel")
            .field("bitrate_bps", &self.bitrate_bps)
            .field("cards", &self.cards.len())
            .field("urgent_queued", &self.urgent.len())
            .field("pending_bytes", &self.pending_bytes())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl EmmCarousel {
    /// A carousel sending at most `bitrate_bps` bits per second of TS packets.
    pub fn new(bitrate_bps: u64) -> Self {
        EmmCarousel {
            bitrate_bps: bitrate_bps.max(1),
            cards: BTreeMap::new(),
            cursor: None,
            urgent: VecDeque::new(),
            ring: ServiceKeyRing::new(),
            keys_seq: 0,
            last_seq: 0,
            pending: Vec::with_capacity(1024),
            pending_pos: 0,
            pending_urgent: false,
            credit: 0,
            last_now: None,
            counters: EmmCounters::default(),
            warned: false,
        }
    }

    /// The bitrate.
    pub fn bitrate_bps(&self) -> u64 {
        self.bitrate_bps
    }

    /// Add or change a card; `urgent` puts it at the head of the queue (a CLI change).
    pub fn upsert_card(
        &mut self,
        serial: CardSerial,
        card_key: Key128,
        entitlements: Entitlements,
        urgent: bool,
    ) {
        let seq = self.next_seq();
        let entry = match self.cards.entry(serial) {
            Entry::Occupied(o) => {
                let e = o.into_mut();
                e.key = card_key;
                e.ent = entitlements;
                e.seq = seq;
                e
            }
            Entry::Vacant(v) => v.insert(CardEntry {
                key: card_key,
                ent: entitlements,
                seq,
                urgent_queued: false,
            }),
        };
        if urgent && !entry.urgent_queued {
            entry.urgent_queued = true;
            self.urgent.push_back(serial);
        }
    }

    /// Stop sending a card's EMMs.
    pub fn remove_card(&mut self, serial: CardSerial) {
        if let Some(e) = self.cards.remove(&serial) {
            if e.urgent_queued {
                self.urgent.retain(|s| *s != serial);
            }
        }
    }

    /// New service keys (the store's versions; see [`ServiceKeyRing::from_keys`]). Every
    /// card's next EMM carries them under a new sequence.
    pub fn set_service_keys(&mut self, keys: Vec<ServiceKey>) {
        self.set_key_ring(ServiceKeyRing::from_keys(keys));
    }

    /// New service keys as a ring.
    pub fn set_key_ring(&mut self, ring: ServiceKeyRing) {
        self.ring = ring;
        self.keys_seq = self.next_seq();
    }

    /// Number of cards.
    pub fn card_count(&self) -> usize {
        self.cards.len()
    }

    /// Counters.
    pub fn counters(&self) -> EmmCounters {
        self.counters
    }

    /// Bytes of built sections held (at most one card's EMM).
    pub fn pending_bytes(&self) -> usize {
        self.pending.len() - self.pending_pos
    }

    /// Append the next EMM section to `out` if the bitrate allows at `now` (any monotonic
    /// clock); false when nothing is due. Call it until it returns false.
    pub fn poll(&mut self, now: Duration, out: &mut Vec<u8>) -> bool {
        self.refill(now);
        if self.pending_pos >= self.pending.len() && !self.load_next_card() {
            return false;
        }
        let rest = &self.pending[self.pending_pos..];
        let Some(len) = crate::ts::section::section_total_len(rest) else {
            self.pending.clear();
            self.pending_pos = 0;
            return false;
        };
        let cost = section_air_bytes(len);
        let cost_credit = u128::from(cost) * 8 * NANOS;
        if self.credit < cost_credit {
            return false;
        }
        self.credit -= cost_credit;
        out.extend_from_slice(&rest[..len]);
        self.pending_pos += len;
        self.counters.emitted += 1;
        self.counters.air_bytes += cost;
        if self.pending_urgent {
            self.counters.urgent += 1;
        }
        true
    }

    fn refill(&mut self, now: Duration) {
        let last = *self.last_now.get_or_insert(now);
        if now > last {
            let dt = (now - last).as_nanos();
            // at most half a second of budget, and always enough for the largest section
            let cap = (u128::from(self.bitrate_bps) * NANOS / 2)
                .max(u128::from(section_air_bytes(super::emm::MAX_EMM_SECTION)) * 8 * NANOS);
            self.credit = (self.credit + dt * u128::from(self.bitrate_bps)).min(cap);
            self.last_now = Some(now);
        }
    }

    /// Build the EMM of the next card (urgent first) into `pending`.
    fn load_next_card(&mut self) -> bool {
        self.pending.clear();
        self.pending_pos = 0;
        // a card that fails to build is skipped; try a bounded number of others
        for _ in 0..16 {
            let Some((serial, urgent)) = self.next_card() else {
                return false;
            };
            if self.build_for(serial) {
                self.pending_urgent = urgent;
                return true;
            }
        }
        false
    }

    fn next_card(&mut self) -> Option<(CardSerial, bool)> {
        while let Some(s) = self.urgent.pop_front() {
            if let Some(e) = self.cards.get_mut(&s) {
                e.urgent_queued = false;
                return Some((s, true));
            }
        }
        let after = match self.cursor {
            Some(c) => self
                .cards
                .range((Bound::Excluded(c), Bound::Unbounded))
                .next()
                .map(|(s, _)| *s),
            None => self.cards.keys().next().copied(),
        };
        let serial = match after {
            Some(s) => s,
            None => {
                let first = *self.cards.keys().next()?;
                self.counters.cycles += 1;
                first
            }
        };
        self.cursor = Some(serial);
        Some((serial, false))
    }

    fn build_for(&mut self, serial: CardSerial) -> bool {
        let Some(e) = self.cards.get(&serial) else {
            return false;
        };
        let now = unix_now();
        let live = e.ent.enabled && now < e.ent.finish;
        let bits = if live {
            AccessCriteria(
                e.ent
                    .events
                    .iter()
                    .fold(e.ent.access.0, |m, ev| m | AccessCriteria::single(ev.bit).0),
            )
        } else {
            AccessCriteria::NONE
        };
        let seq = e.seq.max(self.keys_seq);
        match build_emm(
            serial,
            &e.key,
            seq,
            &e.ent,
            self.ring.keys_for(bits),
            &mut self.pending,
        ) {
            Ok(_) => true,
            Err(err) => {
                self.counters.build_errors += 1;
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(card = %serial, error = %err, "EMM not built; the card is skipped (further failures only counted)");
                }
                false
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_seq = micros.max(self.last_seq + 1);
        self.last_seq
    }
}

fn unix_now() -> i64 {
    super::ecmg::unix_now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::emm::{open_emm, EmmHeader};
    use crate::cas::types::PackageBit;

    fn ent(enabled: bool) -> Entitlements {
        Entitlements {
            access: AccessCriteria(0b1),
            start: 0,
            finish: i64::MAX,
            pair: 0,
            enabled,
            events: vec![],
        }
    }

    fn key(serial: u64) -> Key128 {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&serial.to_be_bytes());
        Key128::from_bytes(b)
    }

    fn split(mut bytes: &[u8]) -> Vec<&[u8]> {
        let mut v = Vec::new();
        while let Some(len) = crate::ts::section::section_total_len(bytes) {
            v.push(&bytes[..len]);
            bytes = &bytes[len..];
        }
        v
    }

    #[test]
    fn air_bytes_are_whole_packets() {
        assert_eq!(section_air_bytes(183), 188);
        assert_eq!(section_air_bytes(184), 376);
        assert_eq!(section_air_bytes(1024), 6 * 188);
    }

    #[test]
    fn cycles_every_card_and_skips_removed_ones() {
        let mut c = EmmCarousel::new(1_000_000);
        c.set_service_keys(vec![ServiceKey {
            bit: PackageBit::new(0).unwrap(),
            version: 1,
            key: Key128::from_bytes([9; 16]),
        }]);
        for s in 1..=5 {
            c.upsert_card(CardSerial(s), key(s), ent(s != 3), false);
        }
        c.remove_card(CardSerial(4));
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        while c.counters().emitted < 8 {
            t += Duration::from_millis(10);
            while c.poll(t, &mut out) {}
        }
        let secs = split(&out);
        let serials: Vec<u64> = secs[..8]
            .iter()
            .map(|s| EmmHeader::parse(s).unwrap().serial.0)
            .collect();
        assert_eq!(serials, [1, 2, 3, 5, 1, 2, 3, 5]);
        assert!(c.counters().cycles >= 1);
        // the disabled card is told so, and gets no key
        let p = open_emm(secs[2], &key(3)).unwrap();
        assert!(!p.entitlements.enabled);
        assert!(p.keys.is_empty());
        let p = open_emm(secs[0], &key(1)).unwrap();
        assert_eq!(p.keys.len(), 1);
    }
}
