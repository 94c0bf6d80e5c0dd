//! The EMM carousel: cycles every card's EMMs at a fixed bitrate on the EMM PID.
//!
//! Two layouts ([`EmmLayout`]):
//! - **Grouped** (what the head-end sends): cards are taken in serial order, the slim
//!   unique EMM (format 2: entitlements, events, group key) of each card of a group of
//!   256 serials, then the group's EMM (the current and next service keys of the packages
//!   its live cards watch, under the group key), so a card that learns its group key in
//!   a pass gets the keys in the same pass. Sections
//!   are packed back to back into TS packets, a chunk of up to [`CHUNK_PACKETS`] packets
//!   at a time, so about three unique EMMs share a packet. A key rotation puts every
//!   group's EMM at the head of the queue (behind changed cards): it reaches all cards in
//!   one pass over the groups, not one over the cards.
//! - **Unique** (format 1, [`EmmCarousel::new`]): one EMM per card carrying its keys, one
//!   section per poll, as before group EMMs existed.
//!
//! - Cards are visited in serial order, one after the other, forever; a card's EMM is
//!   built only when its turn comes (memory: the card records plus one card's sections).
//! - A card changed from the CLI (`urgent`) jumps the queue: it goes out right after the
//!   sections already started (grouped: followed by its group's EMM, whose packages may
//!   have changed with it), so at 50 kbit/s it is on air well within 2 s.
//! - Disabled and expired cards keep getting EMMs: that is how a card learns it was
//!   switched off or ran out. Those EMMs carry no service keys.
//! - The budget counts a section as the TS packets it occupies, `ceil((len+1)/184)*188`
//!   bytes (one pointer_field byte, no packing of two sections into one packet).
//! - Sequence numbers are Unix time at the change in units of 16 µs, shifted left by 4
//!   bits, with a random number of this carousel in the low 4 bits; kept strictly
//!   increasing, so they keep growing across restarts. A format-2 EMM's nonce is its
//!   sequence: one carousel never gives a card two contents under one sequence, and two
//!   carousels (two muxes, two processes) draw different low bits but for one in 16. A
//!   format-1 EMM carries the newer of the card's change and the last service-key change;
//!   a group EMM the newer of its group's last card change and the last key change.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::emm::build_emm;
use super::emm2::build_emm2;
use super::group_emm::build_group_emm;
use super::keyring::ServiceKeyRing;
use super::types::{AccessCriteria, CardSerial, Entitlements, GroupId, Key128, ServiceKey};
use crate::ts::Packetizer;

/// TS packets a grouped carousel fills per poll at most (3,680 bytes of sections); it
/// waits for that much budget, so only the last packet of a chunk is padded.
pub const CHUNK_PACKETS: usize = 20;

/// Which EMMs a head-end sends, as an operator chooses it (`--emm-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmmFormat {
    /// Group EMMs and unique EMMs of format 2 ([`EmmLayout::Grouped`]). Default.
    #[default]
    Grouped,
    /// Unique EMMs of format 1 only ([`EmmLayout::Unique`]), for cards of castmux
    /// versions that read nothing else.
    Unique,
}

impl EmmFormat {
    /// The carousel layout for an operator of `ca_system_id`.
    pub fn layout(self, ca_system_id: u16) -> EmmLayout {
        match self {
            EmmFormat::Grouped => EmmLayout::Grouped { ca_system_id },
            EmmFormat::Unique => EmmLayout::Unique,
        }
    }
}

/// What a carousel sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmmLayout {
    /// Unique EMMs of format 1, each carrying the card's service keys.
    Unique,
    /// Group EMMs (0x84) with the service keys, and unique EMMs of format 2 (0x83).
    Grouped {
        /// CA_system_ID written into group EMMs.
        ca_system_id: u16,
    },
}

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
    /// Cards (or groups) whose EMM could not be built (skipped for that turn).
    pub build_errors: u64,
    /// Group EMM sections emitted (included in `emitted`).
    pub group_sections: u64,
}

#[derive(Debug)]
struct CardEntry {
    key: Key128,
    ent: Entitlements,
    seq: u64,
    urgent_queued: bool,
}

#[derive(Debug)]
struct GroupEntry {
    key: Option<Key128>,
    seq: u64,
    urgent_queued: bool,
}

/// What is sent next.
#[derive(Debug, Clone, Copy)]
enum Item {
    Card(CardSerial),
    Group(GroupId),
}

/// The EMM carousel of one EMM PID.
pub struct EmmCarousel {
    bitrate_bps: u64,
    layout: EmmLayout,
    cards: BTreeMap<CardSerial, CardEntry>,
    groups: BTreeMap<GroupId, GroupEntry>,
    cursor: Option<CardSerial>,
    /// The group of the cards the cursor is passing: its EMM goes out after them.
    entered: Option<GroupId>,
    urgent: VecDeque<CardSerial>,
    urgent_groups: VecDeque<GroupId>,
    ring: ServiceKeyRing,
    keys_seq: u64,
    last_tick: u64,
    instance: u64,
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
            .field("layout", &self.layout)
            .field("cards", &self.cards.len())
            .field("groups", &self.groups.len())
            .field("urgent_queued", &self.urgent.len())
            .field("pending_bytes", &self.pending_bytes())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl EmmCarousel {
    /// A carousel of unique EMMs of format 1 sending at most `bitrate_bps` bits per second
    /// of TS packets.
    pub fn new(bitrate_bps: u64) -> Self {
        Self::with_layout(bitrate_bps, EmmLayout::Unique)
    }

    /// A carousel of group EMMs and unique EMMs of format 2 (see the module docs); give it
    /// the key of each group with [`EmmCarousel::set_group_key`].
    pub fn grouped(bitrate_bps: u64, ca_system_id: u16) -> Self {
        Self::with_layout(bitrate_bps, EmmLayout::Grouped { ca_system_id })
    }

    /// A carousel of `layout`.
    pub fn with_layout(bitrate_bps: u64, layout: EmmLayout) -> Self {
        let mut instance = [0u8; 1];
        // the instance only separates two carousels' sequences; a fixed one if the OS
        // generator fails still leaves each carousel's own sequences unique
        let _ = super::codec::random_bytes(&mut instance);
        EmmCarousel {
            bitrate_bps: bitrate_bps.max(1),
            layout,
            cards: BTreeMap::new(),
            groups: BTreeMap::new(),
            cursor: None,
            entered: None,
            urgent: VecDeque::new(),
            urgent_groups: VecDeque::new(),
            ring: ServiceKeyRing::new(),
            keys_seq: 0,
            last_tick: 0,
            instance: u64::from(instance[0] & 0x0F),
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

    /// The layout.
    pub fn layout(&self) -> EmmLayout {
        self.layout
    }

    /// The key of `group` ([`super::types::derive_group_key`]); a grouped carousel needs it
    /// for every group that has cards. A unique carousel ignores it.
    pub fn set_group_key(&mut self, group: GroupId, key: Key128) {
        if self.layout == EmmLayout::Unique {
            return;
        }
        let seq = self.next_seq();
        match self.groups.entry(group) {
            Entry::Occupied(o) => {
                let g = o.into_mut();
                if g.key.as_ref() != Some(&key) {
                    g.key = Some(key);
                    g.seq = seq;
                    // the cards' EMMs carry the key: a new content, a new sequence (the
                    // sequence is their nonce)
                    for (_, c) in self
                        .cards
                        .range_mut(group.first_serial()..=group.last_serial())
                    {
                        c.seq = seq;
                    }
                }
            }
            Entry::Vacant(v) => {
                v.insert(GroupEntry {
                    key: Some(key),
                    seq,
                    urgent_queued: false,
                });
            }
        }
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
        self.group_changed(GroupId::of(serial), seq, urgent);
    }

    /// A card of `group` changed: its group EMM gets a new sequence (its packages may have
    /// changed), and follows the card's EMM when the card is urgent.
    fn group_changed(&mut self, group: GroupId, seq: u64, urgent: bool) {
        if self.layout == EmmLayout::Unique {
            return;
        }
        let g = self.groups.entry(group).or_insert(GroupEntry {
            key: None,
            seq,
            urgent_queued: false,
        });
        g.seq = seq;
        if urgent && !g.urgent_queued {
            g.urgent_queued = true;
            self.urgent_groups.push_back(group);
        }
    }

    /// Stop sending a card's EMMs.
    pub fn remove_card(&mut self, serial: CardSerial) {
        if let Some(e) = self.cards.remove(&serial) {
            if e.urgent_queued {
                self.urgent.retain(|s| *s != serial);
            }
            let seq = self.next_seq();
            self.group_changed(GroupId::of(serial), seq, false);
        }
    }

    /// New service keys (the store's versions; see [`ServiceKeyRing::from_keys`]). Every
    /// card's next EMM carries them under a new sequence.
    pub fn set_service_keys(&mut self, keys: Vec<ServiceKey>) {
        self.set_key_ring(ServiceKeyRing::from_keys(keys));
    }

    /// New service keys as a ring. A grouped carousel sends every group's EMM first.
    pub fn set_key_ring(&mut self, ring: ServiceKeyRing) {
        self.ring = ring;
        self.keys_seq = self.next_seq();
        for (g, e) in self.groups.iter_mut() {
            if !e.urgent_queued {
                e.urgent_queued = true;
                self.urgent_groups.push_back(*g);
            }
        }
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

    /// Append the next EMM section (grouped: the next chunk of packed sections) to `out`
    /// if the bitrate allows at `now` (any monotonic clock); false when nothing is due.
    /// Call it until it returns false.
    pub fn poll(&mut self, now: Duration, out: &mut Vec<u8>) -> bool {
        self.refill(now);
        match self.layout {
            EmmLayout::Unique => self.poll_one(out),
            EmmLayout::Grouped { .. } => self.poll_chunk(out),
        }
    }

    /// The next section, when the budget covers it.
    fn poll_one(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(len) = self.next_section_len() else {
            return false;
        };
        let cost = section_air_bytes(len);
        let cost_credit = u128::from(cost) * 8 * NANOS;
        if self.credit < cost_credit {
            return false;
        }
        self.credit -= cost_credit;
        self.emit_pending(len, out);
        self.counters.air_bytes += cost;
        true
    }

    /// Once the budget covers [`CHUNK_PACKETS`] packets: as many whole sections as fill
    /// them, back to back (the packetizer packs them; only the last packet is padded).
    fn poll_chunk(&mut self, out: &mut Vec<u8>) -> bool {
        let chunk_credit = (CHUNK_PACKETS * 188) as u128 * 8 * NANOS;
        if self.credit < chunk_credit {
            return false;
        }
        let start = out.len();
        let mut packets = 0;
        while let Some(len) = self.next_section_len() {
            // would the chunk with this section still fit?
            out.extend_from_slice(&self.pending[self.pending_pos..self.pending_pos + len]);
            let n = Packetizer::packet_count(&out[start..]);
            out.truncate(out.len() - len);
            match n {
                Ok(n) if n <= CHUNK_PACKETS => packets = n,
                _ => break,
            }
            self.emit_pending(len, out);
        }
        if packets == 0 {
            return false;
        }
        let cost = (packets * 188) as u64;
        self.credit -= u128::from(cost) * 8 * NANOS;
        self.counters.air_bytes += cost;
        true
    }

    /// Length of the next pending section, building the next item's when none is left.
    fn next_section_len(&mut self) -> Option<usize> {
        if self.pending_pos >= self.pending.len() && !self.load_next() {
            return None;
        }
        let len = crate::ts::section::section_total_len(&self.pending[self.pending_pos..]);
        if len.is_none() {
            self.pending.clear();
            self.pending_pos = 0;
        }
        len
    }

    fn emit_pending(&mut self, len: usize, out: &mut Vec<u8>) {
        let section = &self.pending[self.pending_pos..self.pending_pos + len];
        if section.first() == Some(&super::group_emm::GROUP_EMM_TABLE_ID) {
            self.counters.group_sections += 1;
        }
        out.extend_from_slice(section);
        self.pending_pos += len;
        self.counters.emitted += 1;
        if self.pending_urgent {
            self.counters.urgent += 1;
        }
    }

    fn refill(&mut self, now: Duration) {
        let last = *self.last_now.get_or_insert(now);
        if now > last {
            let dt = (now - last).as_nanos();
            // at most half a second of budget, and always enough for the largest section
            let largest = match self.layout {
                EmmLayout::Unique => section_air_bytes(super::emm::MAX_EMM_SECTION),
                EmmLayout::Grouped { .. } => (CHUNK_PACKETS * 188) as u64,
            };
            let cap =
                (u128::from(self.bitrate_bps) * NANOS / 2).max(u128::from(largest) * 8 * NANOS);
            self.credit = (self.credit + dt * u128::from(self.bitrate_bps)).min(cap);
            self.last_now = Some(now);
        }
    }

    /// Build the EMM of the next card or group (urgent first) into `pending`.
    fn load_next(&mut self) -> bool {
        self.pending.clear();
        self.pending_pos = 0;
        // a card that fails to build is skipped; try a bounded number of others
        for _ in 0..16 {
            let Some((item, urgent)) = self.next_item() else {
                return false;
            };
            let built = match item {
                Item::Card(serial) => self.build_for(serial),
                Item::Group(group) => self.build_group(group),
            };
            if built && !self.pending.is_empty() {
                self.pending_urgent = urgent;
                return true;
            }
        }
        false
    }

    fn next_item(&mut self) -> Option<(Item, bool)> {
        while let Some(s) = self.urgent.pop_front() {
            if let Some(e) = self.cards.get_mut(&s) {
                e.urgent_queued = false;
                return Some((Item::Card(s), true));
            }
        }
        while let Some(g) = self.urgent_groups.pop_front() {
            if let Some(e) = self.groups.get_mut(&g) {
                e.urgent_queued = false;
                return Some((Item::Group(g), true));
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
        if let Some(group) = self.entered {
            if after.map(GroupId::of) != Some(group) {
                // past the group's last card: its EMM, so a card that just got the
                // group key in its unique EMM gets the keys in the same pass
                self.entered = None;
                return Some((Item::Group(group), false));
            }
        }
        let serial = match after {
            Some(s) => s,
            None => {
                let first = *self.cards.keys().next()?;
                self.counters.cycles += 1;
                first
            }
        };
        if self.layout != EmmLayout::Unique {
            self.entered = Some(GroupId::of(serial));
        }
        self.cursor = Some(serial);
        Some((Item::Card(serial), false))
    }

    fn build_for(&mut self, serial: CardSerial) -> bool {
        let Some(e) = self.cards.get(&serial) else {
            return false;
        };
        let result = match self.layout {
            EmmLayout::Unique => {
                let now = unix_now();
                let live = e.ent.enabled && now < e.ent.finish;
                let bits = if live {
                    watched(&e.ent)
                } else {
                    AccessCriteria::NONE
                };
                let seq = e.seq.max(self.keys_seq);
                build_emm(
                    serial,
                    &e.key,
                    seq,
                    &e.ent,
                    self.ring.keys_for(bits),
                    &mut self.pending,
                )
                .map_err(|e| e.to_string())
            }
            EmmLayout::Grouped { .. } => {
                let group = GroupId::of(serial);
                let group_key = self.groups.get(&group).and_then(|g| g.key.as_ref());
                match (e.ent.enabled, group_key) {
                    (true, None) => Err(format!("no key for group {group}")),
                    // a switched-off card is given no group key
                    (enabled, key) => build_emm2(
                        serial,
                        &e.key,
                        e.seq,
                        &e.ent,
                        key.filter(|_| enabled),
                        &mut self.pending,
                    )
                    .map_err(|e| e.to_string()),
                }
            }
        };
        self.built(result, || serial.to_string())
    }

    /// The group's EMM: the keys of the packages its live cards watch (nothing when none).
    fn build_group(&mut self, group: GroupId) -> bool {
        let EmmLayout::Grouped { ca_system_id } = self.layout else {
            return false;
        };
        let Some(g) = self.groups.get(&group) else {
            return false;
        };
        let now = unix_now();
        let bits = self
            .cards
            .range(group.first_serial()..=group.last_serial())
            .filter(|(_, c)| c.ent.enabled && now < c.ent.finish)
            .fold(AccessCriteria::NONE, |m, (_, c)| {
                AccessCriteria(m.0 | watched(&c.ent).0)
            });
        let keys: Vec<&ServiceKey> = self.ring.keys_for(bits).collect();
        if keys.is_empty() {
            return true;
        }
        let Some(key) = g.key.as_ref() else {
            let r: Result<(), String> = Err(format!("no key for group {group}"));
            return self.built(r, || format!("group {group}"));
        };
        let seq = g.seq.max(self.keys_seq);
        let r = build_group_emm(ca_system_id, group, key, seq, keys, &mut self.pending)
            .map_err(|e| e.to_string());
        self.built(r, || format!("group {group}"))
    }

    fn built<T>(&mut self, r: Result<T, String>, what: impl FnOnce() -> String) -> bool {
        match r {
            Ok(_) => true,
            Err(err) => {
                self.pending.clear();
                self.counters.build_errors += 1;
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(emm = %what(), error = %err, "EMM not built; skipped this turn (further failures only counted)");
                }
                false
            }
        }
    }

    /// The next sequence (see the module docs): strictly increasing, about Unix µs.
    fn next_seq(&mut self) -> u64 {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_tick = (micros >> 4).max(self.last_tick + 1);
        (self.last_tick << 4) | self.instance
    }
}

/// The packages a card watches: its subscriptions and its events' bits.
fn watched(ent: &Entitlements) -> AccessCriteria {
    AccessCriteria(
        ent.events
            .iter()
            .fold(ent.access.0, |m, ev| m | AccessCriteria::single(ev.bit).0),
    )
}

fn unix_now() -> i64 {
    super::ecmg::unix_now()
}

/// The carousel feeds the mux's EMM PID directly (one section per poll, when due).
impl crate::scramble::EmmSource for EmmCarousel {
    fn poll(&mut self, now: Duration, out: &mut Vec<u8>) -> Option<crate::scramble::EmmData> {
        EmmCarousel::poll(self, now, out).then_some(crate::scramble::EmmData::Sections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::emm::{open_emm, EmmHeader};
    use crate::cas::emm2::{open_emm2, Emm2Header};
    use crate::cas::group_emm::{open_group_emm, GroupEmmHeader};
    use crate::cas::types::{derive_group_key, PackageBit};

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

    fn grouped_with(cards: &[(u64, u64, bool)]) -> EmmCarousel {
        let root = Key128::from_bytes([5; 16]);
        let mut c = EmmCarousel::grouped(1_000_000, 0x4AE1);
        c.set_service_keys(
            (0..4)
                .flat_map(|b| {
                    [1, 2].map(|v| ServiceKey {
                        bit: PackageBit::new(b).unwrap(),
                        version: v,
                        key: Key128::from_bytes([(b * 16 + v) as u8; 16]),
                    })
                })
                .collect(),
        );
        for &(s, access, enabled) in cards {
            let g = GroupId::of(CardSerial(s));
            c.set_group_key(g, derive_group_key(&root, g));
            let mut e = ent(enabled);
            e.access = AccessCriteria(access);
            c.upsert_card(CardSerial(s), key(s), e, false);
        }
        c
    }

    /// (table_id, serial or group) of each section polled over `secs` seconds.
    fn run(c: &mut EmmCarousel, from: &mut Duration, secs: u64) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let end = *from + Duration::from_secs(secs);
        while *from < end {
            *from += Duration::from_millis(5);
            let mut out = Vec::new();
            while c.poll(*from, &mut out) {
                let n = Packetizer::packet_count(&out).unwrap();
                assert!(n <= CHUNK_PACKETS, "{n} packets");
                got.extend(split(&out).into_iter().map(<[u8]>::to_vec));
                out.clear();
            }
        }
        got
    }

    fn who(s: &[u8]) -> (u8, u64) {
        match s[0] {
            0x83 => (0x83, Emm2Header::parse(s).unwrap().serial.0),
            0x84 => (0x84, GroupEmmHeader::parse(s).unwrap().group.0),
            t => panic!("table {t:#x}"),
        }
    }

    #[test]
    fn grouped_sends_each_group_emm_before_its_cards() {
        let root = Key128::from_bytes([5; 16]);
        let (a, b) = (0x1_0000u64, 0x1_0100u64);
        let mut c = grouped_with(&[
            (a, 0b1, true),
            (a + 7, 0b100, true),
            (a + 9, 0b10, false),
            (b, 0b1000, true),
        ]);
        let mut t = Duration::ZERO;
        let secs = run(&mut c, &mut t, 1);
        let order: Vec<(u8, u64)> = secs.iter().map(|s| who(s)).collect();
        // a pass: group a's three cards, group a, group b's card, group b, and again
        let pass = [
            (0x83, a),
            (0x83, a + 7),
            (0x83, a + 9),
            (0x84, a >> 8),
            (0x83, b),
            (0x84, b >> 8),
        ];
        let start = order.iter().position(|w| *w == pass[0]).unwrap();
        assert_eq!(&order[start..start + 6], &pass);
        assert_eq!(&order[start + 6..start + 12], &pass);
        assert!(c.counters().cycles >= 1);
        assert!(c.counters().group_sections >= 2);
        // group a's EMM: packages 0 and 2 (its live cards'), not 1 (the disabled card's)
        let gk = derive_group_key(&root, GroupId(a >> 8));
        let g = open_group_emm(&secs[start + 3], &gk).unwrap();
        let bits: Vec<(u8, u32)> = g.keys.iter().map(|k| (k.bit.get(), k.version)).collect();
        assert_eq!(bits, [(0, 1), (0, 2), (2, 1), (2, 2)]);
        // the cards: the group key for enabled ones, none for the disabled one
        let u = open_emm2(&secs[start], &key(a)).unwrap();
        assert_eq!(u.group_key.as_ref(), Some(&gk));
        let off = open_emm2(&secs[start + 2], &key(a + 9)).unwrap();
        assert!(!off.entitlements.enabled && off.group_key.is_none());
        // a repeat of a card's EMM is the same bytes (one content per sequence)
        assert_eq!(secs[start + 6], secs[start]);
    }

    #[test]
    fn grouped_sends_a_changed_card_then_its_group_first() {
        let cards: Vec<(u64, u64, bool)> = (0..2000).map(|s| (s, 0b1, true)).collect();
        let mut c = grouped_with(&cards);
        let mut t = Duration::ZERO;
        run(&mut c, &mut t, 1);
        let mut e = ent(true);
        e.access = AccessCriteria(0b1001);
        c.upsert_card(CardSerial(1500), key(1500), e, true);
        let secs = run(&mut c, &mut t, 1);
        // after the section already built, if any
        let i = secs.iter().position(|s| who(s) == (0x83, 1500)).unwrap();
        assert!(i <= 1, "{i}");
        assert_eq!(who(&secs[i + 1]), (0x84, 1500 >> 8));
        let gk = derive_group_key(&Key128::from_bytes([5; 16]), GroupId(1500 >> 8));
        let g = open_group_emm(&secs[i + 1], &gk).unwrap();
        assert!(
            g.keys.iter().any(|k| k.bit.get() == 3),
            "the new package's keys"
        );
        assert_eq!(c.counters().urgent, 2);
        // a rotation: every group's EMM goes first, each with a newer sequence
        let before = g.header.sequence;
        c.set_service_keys(vec![]);
        let secs = run(&mut c, &mut t, 1);
        assert!(c.counters().build_errors == 0);
        // no keys at all: group EMMs are empty, so none is sent; keys again:
        assert!(secs.iter().skip(1).all(|s| s[0] == 0x83));
        c.set_service_keys(vec![ServiceKey {
            bit: PackageBit::new(0).unwrap(),
            version: 9,
            key: Key128::from_bytes([9; 16]),
        }]);
        let secs = run(&mut c, &mut t, 1);
        // after the section already built, if any: every group (0..8), in order
        let first = secs.iter().position(|s| s[0] == 0x84).unwrap();
        assert!(first <= 1, "{first}");
        let groups: Vec<(u8, u64)> = secs[first..first + 8].iter().map(|s| who(s)).collect();
        assert_eq!(groups, (0..8).map(|g| (0x84, g)).collect::<Vec<_>>());
        assert!(GroupEmmHeader::parse(&secs[first]).unwrap().sequence > before);
    }

    #[test]
    fn a_new_group_key_gives_the_group_s_cards_a_new_sequence() {
        let mut c = grouped_with(&[(0x200, 0b1, true), (0x201, 0b1, true)]);
        let mut t = Duration::ZERO;
        let before = run(&mut c, &mut t, 1);
        let seq = |secs: &[Vec<u8>], serial: u64| {
            secs.iter()
                .rev()
                .find(|s| who(s) == (0x83, serial))
                .map(|s| Emm2Header::parse(s).unwrap().sequence)
                .unwrap()
        };
        let old = seq(&before, 0x201);
        // the same key again changes nothing; another key, a new sequence for each card
        let g = GroupId(2);
        c.set_group_key(g, derive_group_key(&Key128::from_bytes([5; 16]), g));
        assert_eq!(seq(&run(&mut c, &mut t, 1), 0x201), old);
        c.set_group_key(g, Key128::from_bytes([6; 16]));
        let after = run(&mut c, &mut t, 1);
        assert!(seq(&after, 0x201) > old);
        let u = open_emm2(
            after
                .iter()
                .rev()
                .find(|s| who(s) == (0x83, 0x201))
                .unwrap(),
            &key(0x201),
        )
        .unwrap();
        assert_eq!(u.group_key, Some(Key128::from_bytes([6; 16])));
    }

    #[test]
    fn grouped_urgent_card_is_on_air_within_two_seconds_at_50k() {
        let cards: Vec<(u64, u64, bool)> = (0..10_000).map(|s| (s, 0b1, true)).collect();
        let mut c = grouped_with(&cards);
        c.bitrate_bps = 50_000;
        let mut t = Duration::ZERO;
        run(&mut c, &mut t, 5);
        c.upsert_card(CardSerial(9_999), key(9_999), ent(false), true);
        let asked = t;
        let mut out = Vec::new();
        'wait: loop {
            t += Duration::from_millis(10);
            while c.poll(t, &mut out) {
                if split(&out).iter().any(|s| who(s) == (0x83, 9_999)) {
                    break 'wait;
                }
                out.clear();
            }
            assert!(t - asked < Duration::from_secs(2), "not on air in 2 s");
        }
        // a chunk's budget (20 packets) at 50 kbit/s is 0.6 s
        assert!(
            t - asked <= Duration::from_millis(700),
            "took {:?}",
            t - asked
        );
    }

    #[test]
    fn grouped_packs_about_three_cards_a_packet_at_the_bitrate() {
        let cards: Vec<(u64, u64, bool)> = (0..5000).map(|s| (s, 0b1111, true)).collect();
        let mut c = grouped_with(&cards);
        let mut t = Duration::ZERO;
        let secs = run(&mut c, &mut t, 10);
        let got = c.counters();
        let rate = got.air_bytes as f64 * 8.0 / 10.0;
        assert!((rate - 1e6).abs() < 1e6 * 0.05, "{rate} bit/s");
        let section_bytes: usize = secs.iter().map(Vec::len).sum();
        // 67-byte unique EMMs and 221-byte group EMMs: over 95% of the air is sections
        let efficiency = section_bytes as f64 / got.air_bytes as f64;
        assert!(efficiency > 0.95 * 184.0 / 188.0, "{efficiency}");
        assert_eq!(got.emitted as usize, secs.len());
    }
}
