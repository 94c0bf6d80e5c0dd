//! The software card core: one card's keys and entitlements, updated by its EMMs, and
//! control words out of ECMs only while it is entitled (docs/cas-formats.md, "Card rules").

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use csa::Parity;
use serde::{Deserialize, Serialize};

use crate::cas::ecm::EcmRef;
use crate::cas::emm::{open_emm, EmmHeader};
use crate::cas::emm2::{open_emm2, Emm2Header, EMM2_TABLE_ID};
use crate::cas::group_emm::{open_group_emm, GroupEmmHeader, GROUP_EMM_TABLE_ID};
use crate::cas::types::{
    key_hex_opt, AccessCriteria, CardFile, CardSerial, Entitlements, GroupId, Key128, ServiceKey,
    CARD_FILE_FORMAT,
};
use crate::cas::{Refusal, RefusalCounts};
use crate::io::private_file::{self, Existing};
use crate::scramble::Cw;

/// How far (seconds) an ECM's timestamp may lag behind the card's clock, or behind the
/// newest ECM the card accepted, before it is a replay. ECMs are made once per crypto
/// period and repeated, and a card serving several channels sees ECMs made at different
/// times, so this must exceed the longest crypto period; 10 minutes also absorbs clock skew.
pub const DEFAULT_REPLAY_TOLERANCE_SECS: i64 = 600;

/// Versions of one package's service key a card keeps: previous, current, next.
pub const KEY_VERSIONS_KEPT: usize = 3;

/// Largest `card.json` read (a card with every package and many events is a few KiB).
const MAX_CARD_FILE: u64 = 1 << 20;

/// ECM streams a card remembers the newest ECM of (see [`EcmStream`]). A newcamd card
/// serves at most a few services per client; past this the least recently used stream
/// is forgotten, and its ECMs are then only held to the time window.
pub const MAX_ECM_STREAMS: usize = 256;

/// Largest section the card copies to normalise its header (the private-section limit).
const MAX_SECTION: usize = crate::ts::section::MAX_PRIVATE_SECTION;

/// One stream of ECMs (one service of one client): the card refuses an ECM older than
/// the newest it accepted for the same parity on the same stream, so an old ECM spliced
/// into a live stream cannot replace the keys in use. `EcmStream::default()` is the one
/// stream of a card that descrambles a single service (the player).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EcmStream(pub u64);

/// How the card hands out 8-byte (CSA2) control words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CwReduction {
    /// Replace bytes 3 and 7 by the checksums of the three bytes before each (b3 = b0+b1+b2,
    /// b7 = b4+b5+b6, mod 256), as CAMs do with every CSA2 CW. A head-end that puts the full
    /// 64-bit CW into its ECMs and scrambles with the reduced one (TSDuck's default) is then
    /// descrambled right, and a CW that already has its checksums is unchanged. Default.
    #[default]
    Reduce,
    /// Hand out the CW as the ECM carries it: for streams scrambled with full 64-bit keys
    /// (`castmux scramble --no-cw-checksum`, TSDuck `--no-entropy-reduction`).
    Full,
}

/// The control words of an ECM the card was entitled to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcmAnswer {
    /// Crypto period number.
    pub period: u64,
    /// Parity of that period.
    pub parity: Parity,
    /// When the ECM was made (its authenticated timestamp), Unix seconds.
    pub timestamp: i64,
    /// CW length, 8 (CSA2) or 16 (AES modes).
    pub cw_len: usize,
    /// The even CW.
    pub even: Cw,
    /// The odd CW.
    pub odd: Cw,
}

/// What an EMM did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmmOutcome {
    /// Verified and applied: entitlements and keys updated (save the card).
    Applied,
    /// Addressed to another serial: ignored.
    NotForThisCard,
    /// The part of the last applied sequence already applied (the carousel repeats it).
    AlreadyApplied,
    /// A group EMM of the card's group, but the card has no group key yet (its unique
    /// EMM of format 2 gives it): ignored.
    NoGroupKey,
}

/// Why a card file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// Reading or writing the file failed.
    #[error("card file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a card.json of the expected shape.
    #[error("card file {path} is not a castmux card.json ({reason}); export it again with castmux card export-key SERIAL -o FILE")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A card.json format this build does not read.
    #[error("card file format {found}, this castmux reads format {CARD_FILE_FORMAT}; export it again with this version")]
    Format {
        /// The format found.
        found: u8,
    },
}

/// Counters of a card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CardCounters {
    /// ECMs answered with CWs.
    pub ecm_answered: u64,
    /// EMM sections applied.
    pub emm_applied: u64,
    /// EMM sections repeating one already applied.
    pub emm_already_applied: u64,
    /// EMM sections for other cards (or other groups).
    pub emm_not_for_this_card: u64,
    /// Group EMM sections ignored for want of the group key.
    pub emm_no_group_key: u64,
    /// Refusals of ECMs and EMMs, by kind.
    pub refusals: RefusalCounts,
}

/// What the card remembers besides its personalization, saved alongside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CardState {
    /// Sequence of the last EMM applied.
    #[serde(default)]
    last_emm_sequence: u64,
    /// Parts of that EMM applied (bit i = part i).
    #[serde(default)]
    emm_parts_applied: u64,
    /// Part count of that EMM.
    #[serde(default)]
    emm_parts: u8,
    /// Newest ECM timestamp accepted.
    #[serde(default)]
    newest_ecm_time: Option<i64>,
    /// The key of the card's group, from its unique EMM of format 2.
    #[serde(default, with = "key_hex_opt", skip_serializing_if = "Option::is_none")]
    group_key: Option<Key128>,
    /// Sequence of the last group EMM applied.
    #[serde(default)]
    last_group_sequence: u64,
    /// Parts of that group EMM applied (bit i = part i).
    #[serde(default)]
    group_parts_applied: u64,
}

/// The newest ECM a stream got accepted, per parity: (timestamp, period number).
#[derive(Debug, Clone, Copy, Default)]
struct StreamState {
    held: [Option<(i64, u64)>; 2],
    /// When the stream was last used (the card's use counter), for eviction.
    used: u64,
}

/// The saved card: `card.json` plus the card's state (readers of plain `CardFile` ignore it).
#[derive(Serialize, Deserialize)]
struct SavedCard {
    #[serde(flatten)]
    card: CardFile,
    #[serde(default)]
    state: CardState,
}

/// One software card.
pub struct SoftCard {
    card: CardFile,
    state: CardState,
    replay_tolerance: i64,
    cw_reduction: CwReduction,
    streams: Vec<(EcmStream, StreamState)>,
    uses: u64,
    replay_logged: bool,
    counters: CardCounters,
}

impl fmt::Debug for SoftCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftCard")
            .field("serial", &self.card.serial)
            .field(
                "ca_system_id",
                &format_args!("{:#06x}", self.card.ca_system_id),
            )
            .field("entitlements", &self.card.entitlements)
            .field("service_keys", &self.card.service_keys.len())
            .field("group_key", &self.state.group_key.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl SoftCard {
    /// A card from its personalization.
    pub fn from_card_file(card: CardFile) -> Result<SoftCard, CardError> {
        if card.format != CARD_FILE_FORMAT {
            return Err(CardError::Format { found: card.format });
        }
        let mut c = SoftCard {
            card,
            state: CardState::default(),
            replay_tolerance: DEFAULT_REPLAY_TOLERANCE_SECS,
            cw_reduction: CwReduction::default(),
            streams: Vec::new(),
            uses: 0,
            replay_logged: false,
            counters: CardCounters::default(),
        };
        c.trim_keys();
        Ok(c)
    }

    /// Load a `card.json` (as exported, or as saved by [`SoftCard::save`]).
    pub fn load(path: &Path) -> Result<SoftCard, CardError> {
        let io = |source| CardError::Io {
            path: path.to_owned(),
            source,
        };
        let len = fs::metadata(path).map_err(io)?.len();
        if len > MAX_CARD_FILE {
            return Err(CardError::Shape {
                path: path.to_owned(),
                reason: format!("{len} bytes, more than any card"),
            });
        }
        let text = fs::read(path).map_err(io)?;
        let saved: SavedCard = serde_json::from_slice(&text).map_err(|e| CardError::Shape {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut card = SoftCard::from_card_file(saved.card)?;
        card.state = saved.state;
        Ok(card)
    }

    /// Write the card (personalization, current entitlements and keys, replay state) to
    /// `path` atomically: a temporary file beside it, synced, then renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), CardError> {
        let io = |source| CardError::Io {
            path: path.to_owned(),
            source,
        };
        let json = serde_json::to_vec_pretty(&SavedCardRef {
            card: &self.card,
            state: &self.state,
        })
        .map_err(|e| io(std::io::Error::other(e)))?;
        // a new 0600 file beside it, renamed over it: never written through a symlink or
        // into a device, never a chmod of someone else's file
        private_file::write(path, &json, Existing::Replace)
            .map_err(|e| io(std::io::Error::other(e)))?;
        Ok(())
    }

    /// The card's serial.
    pub fn serial(&self) -> CardSerial {
        self.card.serial
    }

    /// CA_system_ID of the card's operator.
    pub fn ca_system_id(&self) -> u16 {
        self.card.ca_system_id
    }

    /// Current entitlements.
    pub fn entitlements(&self) -> &Entitlements {
        &self.card.entitlements
    }

    /// The personalization as updated by EMMs.
    pub fn card_file(&self) -> &CardFile {
        &self.card
    }

    /// The (package bit, version) of every service key held, ascending.
    pub fn key_versions(&self) -> Vec<(u8, u32)> {
        let mut v: Vec<(u8, u32)> = self
            .card
            .service_keys
            .iter()
            .map(|k| (k.bit.get(), k.version))
            .collect();
        v.sort_unstable();
        v
    }

    /// Counters.
    pub fn counters(&self) -> CardCounters {
        self.counters
    }

    /// Change the replay tolerance (seconds; see [`DEFAULT_REPLAY_TOLERANCE_SECS`]).
    pub fn set_replay_tolerance(&mut self, secs: i64) {
        self.replay_tolerance = secs.max(0);
    }

    /// Choose how 8-byte CWs are handed out (default [`CwReduction::Reduce`]).
    pub fn set_cw_reduction(&mut self, r: CwReduction) {
        self.cw_reduction = r;
    }

    /// Answer an ECM section of the card's single stream at card time `now` (Unix seconds).
    pub fn process_ecm(&mut self, section: &[u8], now: i64) -> Result<EcmAnswer, Refusal> {
        self.process_ecm_on(EcmStream::default(), section, now)
    }

    /// Answer an ECM section of `stream` at card time `now` (Unix seconds).
    pub fn process_ecm_on(
        &mut self,
        stream: EcmStream,
        section: &[u8],
        now: i64,
    ) -> Result<EcmAnswer, Refusal> {
        let r = with_castmux_header(section, |s| self.check_ecm(stream, s, now));
        match &r {
            Ok(_) => self.counters.ecm_answered += 1,
            Err(e) => self.count_refusal(e),
        }
        r
    }

    /// Apply an EMM section at card time `now` (Unix seconds).
    pub fn process_emm(&mut self, section: &[u8], now: i64) -> Result<EmmOutcome, Refusal> {
        let r = with_castmux_header(section, |s| self.apply_emm(s, now));
        match &r {
            Ok(EmmOutcome::Applied) => self.counters.emm_applied += 1,
            Ok(EmmOutcome::AlreadyApplied) => self.counters.emm_already_applied += 1,
            Ok(EmmOutcome::NotForThisCard) => self.counters.emm_not_for_this_card += 1,
            Ok(EmmOutcome::NoGroupKey) => self.counters.emm_no_group_key += 1,
            Err(e) => self.counters.refusals.count(e),
        }
        r
    }

    /// [`SoftCard::process_emm`], then save the card to `save_to` (if given) when the EMM
    /// changed it, so the change survives a restart. A failed save is logged: the card in
    /// memory is current either way.
    pub fn process_emm_and_save(
        &mut self,
        section: &[u8],
        now: i64,
        save_to: Option<&Path>,
    ) -> Result<EmmOutcome, Refusal> {
        let r = self.process_emm(section, now);
        if let (Ok(EmmOutcome::Applied), Some(path)) = (&r, save_to) {
            if let Err(e) = self.save(path) {
                tracing::warn!(path = %path.display(), error = %e, "EMM applied but the card could not be saved");
            }
        }
        r
    }

    fn check_ecm(
        &mut self,
        stream: EcmStream,
        section: &[u8],
        now: i64,
    ) -> Result<EcmAnswer, Refusal> {
        let ecm = EcmRef::parse(section)?;
        if ecm.ca_system_id() != self.card.ca_system_id {
            return Err(Refusal::WrongCaSystem {
                got: ecm.ca_system_id(),
                card: self.card.ca_system_id,
            });
        }
        let ent = &self.card.entitlements;
        if !ent.enabled {
            return Err(Refusal::Disabled);
        }
        let subscribed = ecm.access().0 & ent.access.0;
        let by_event = ent
            .events
            .iter()
            .filter(|e| ecm.access().contains(e.bit))
            .fold(0u64, |m, e| m | AccessCriteria::single(e.bit).0);
        let candidates = AccessCriteria(subscribed | by_event);
        if candidates.is_empty() {
            return Err(Refusal::NotEntitled);
        }
        let mut missing = None;
        let mut opened = None;
        for w in ecm.wraps().filter(|w| candidates.contains(w.bit)) {
            let key = self
                .card
                .service_keys
                .iter()
                .find(|k| k.bit == w.bit && k.version == w.version);
            match key {
                Some(k) => {
                    opened = Some(ecm.open(&w, &k.key)?);
                    break;
                }
                None => {
                    missing.get_or_insert(Refusal::UnknownKeyVersion {
                        bit: w.bit.get(),
                        version: w.version,
                    });
                }
            }
        }
        let Some(content) = opened else {
            return Err(missing.unwrap_or(Refusal::NotEntitled));
        };

        let ts = content.timestamp;
        let slot = self.fresh(stream, content.parity, ts, content.period, now)?;
        let ent = &self.card.entitlements;
        if ts < ent.start {
            return Err(Refusal::NotYetValid);
        }
        if ts >= ent.finish {
            return Err(Refusal::Expired);
        }
        if subscribed == 0 {
            // entitled only through events: one of them must cover the ECM's time
            let events = || ent.events.iter().filter(|e| ecm.access().contains(e.bit));
            if !events().any(|e| e.start <= ts && ts < e.end) {
                return Err(if events().all(|e| ts < e.start) {
                    Refusal::NotYetValid
                } else {
                    Refusal::Expired
                });
            }
        }
        self.hold(stream, slot, ts, content.period);
        let (mut even, mut odd) = (content.even, content.odd);
        if self.cw_reduction == CwReduction::Reduce {
            // a no-op on 16-byte CWs
            even.apply_checksum();
            odd.apply_checksum();
        }
        Ok(EcmAnswer {
            period: content.period,
            parity: content.parity,
            timestamp: ts,
            cw_len: even.len(),
            even,
            odd,
        })
    }

    /// The replay rules (docs/cas-formats.md, card rule 7) for an authentic ECM of
    /// `stream` made at `ts` for `period`: its slot (parity index) if it may be answered.
    fn fresh(
        &mut self,
        stream: EcmStream,
        parity: Parity,
        ts: i64,
        period: u64,
        now: i64,
    ) -> Result<usize, Refusal> {
        let oldest_fresh = now.saturating_sub(self.replay_tolerance);
        let newest = self.state.newest_ecm_time;
        if ts < oldest_fresh || newest.is_some_and(|n| ts < n.saturating_sub(self.replay_tolerance))
        {
            return Err(Refusal::Replay);
        }
        // Per stream and parity, never go back: an ECM made before the one whose keys are
        // in use is a recording played again. Timestamps are whole seconds, so within one
        // second (a file scrambled faster than real time) the period number decides; a
        // repeat of the held ECM is equal, and answered.
        let slot = match parity {
            Parity::Even => 0,
            Parity::Odd => 1,
        };
        if self.stream(stream).held[slot].is_some_and(|held| (ts, period) < held) {
            return Err(Refusal::Replay);
        }
        Ok(slot)
    }

    /// Remember an answered ECM as the newest of its stream and parity.
    fn hold(&mut self, stream: EcmStream, slot: usize, ts: i64, period: u64) {
        let newest = self.state.newest_ecm_time;
        self.state.newest_ecm_time = Some(newest.map_or(ts, |n| n.max(ts)));
        let held = &mut self.stream(stream).held[slot];
        *held = Some(held.map_or((ts, period), |h| h.max((ts, period))));
    }

    /// Apply the replay rules to an ECM this card answered before (made at `timestamp`
    /// for `period`), now asked again on `stream`: a server's answer cache calls this so
    /// a cached answer never bypasses them. Refusals are counted as for
    /// [`SoftCard::process_ecm_on`].
    pub fn admit_answered(
        &mut self,
        stream: EcmStream,
        parity: Parity,
        timestamp: i64,
        period: u64,
        now: i64,
    ) -> Result<(), Refusal> {
        let r = self
            .fresh(stream, parity, timestamp, period, now)
            .map(|slot| self.hold(stream, slot, timestamp, period));
        if let Err(e) = &r {
            self.count_refusal(e);
        }
        r
    }

    fn count_refusal(&mut self, e: &Refusal) {
        self.counters.refusals.count(e);
        if *e == Refusal::Replay && !self.replay_logged {
            // counted every time; one line is enough to tell the operator
            self.replay_logged = true;
            tracing::warn!(
                serial = %self.card.serial,
                "ECM refused as a replay (older than the one the card holds for its \
                 parity, or outside the time window); the keys in use are kept"
            );
        }
    }

    /// The state of `stream`, made (evicting the least recently used) if new.
    fn stream(&mut self, stream: EcmStream) -> &mut StreamState {
        self.uses += 1;
        let uses = self.uses;
        let i = match self.streams.iter().position(|(s, _)| *s == stream) {
            Some(i) => i,
            None => {
                if self.streams.len() >= MAX_ECM_STREAMS {
                    if let Some(oldest) =
                        (0..self.streams.len()).min_by_key(|&i| self.streams[i].1.used)
                    {
                        self.streams.swap_remove(oldest);
                    }
                }
                self.streams.push((stream, StreamState::default()));
                self.streams.len() - 1
            }
        };
        let st = &mut self.streams[i].1;
        st.used = uses;
        st
    }

    /// Card rules (EMM): a unique EMM of format 1 (0x82) or 2 (0x83), or a group EMM (0x84).
    fn apply_emm(&mut self, section: &[u8], now: i64) -> Result<EmmOutcome, Refusal> {
        match section.first() {
            Some(&EMM2_TABLE_ID) => self.apply_emm2(section, now),
            Some(&GROUP_EMM_TABLE_ID) => self.apply_group_emm(section),
            // 0x82, and anything else for the format-1 parser to refuse
            _ => self.apply_emm1(section, now),
        }
    }

    fn apply_emm1(&mut self, section: &[u8], now: i64) -> Result<EmmOutcome, Refusal> {
        let h = EmmHeader::parse(section)?;
        if h.serial != self.card.serial {
            return Ok(EmmOutcome::NotForThisCard);
        }
        if let Some(outcome) = self.unique_seen(h.sequence, h.part)? {
            return Ok(outcome);
        }
        let part = open_emm(section, &self.card.card_key)?;
        self.apply_unique(
            h.sequence,
            h.part,
            h.parts,
            part.entitlements,
            part.keys,
            now,
        );
        Ok(EmmOutcome::Applied)
    }

    fn apply_emm2(&mut self, section: &[u8], now: i64) -> Result<EmmOutcome, Refusal> {
        let h = Emm2Header::parse(section)?;
        if h.serial != self.card.serial {
            return Ok(EmmOutcome::NotForThisCard);
        }
        if let Some(outcome) = self.unique_seen(h.sequence, h.part)? {
            return Ok(outcome);
        }
        let part = open_emm2(section, &self.card.card_key)?;
        match part.group_key {
            Some(k) => self.state.group_key = Some(k),
            // a switched-off card is given no group key, and forgets the one it had
            None if !part.entitlements.enabled => self.state.group_key = None,
            None => {}
        }
        self.apply_unique(
            h.sequence,
            h.part,
            h.parts,
            part.entitlements,
            Vec::new(),
            now,
        );
        Ok(EmmOutcome::Applied)
    }

    /// Replay rules of a unique EMM (card rule 3): `Some` when nothing is to be done.
    fn unique_seen(&self, sequence: u64, part: u8) -> Result<Option<EmmOutcome>, Refusal> {
        if sequence < self.state.last_emm_sequence {
            return Err(Refusal::Replay);
        }
        if sequence == self.state.last_emm_sequence
            && self.state.emm_parts_applied & (1u64 << part) != 0
        {
            return Ok(Some(EmmOutcome::AlreadyApplied));
        }
        Ok(None)
    }

    /// Apply an authentic part of a unique EMM (card rule 5).
    fn apply_unique(
        &mut self,
        sequence: u64,
        part: u8,
        parts: u8,
        entitlements: Entitlements,
        keys: Vec<ServiceKey>,
        now: i64,
    ) {
        let same_sequence = sequence == self.state.last_emm_sequence;
        let ent = &mut self.card.entitlements;
        let mut events = entitlements.events;
        if same_sequence {
            // another part of the same EMM: its events add to those already applied
            events.retain(|e| !ent.events.iter().any(|o| o.id == e.id));
            let mut all = std::mem::take(&mut ent.events);
            all.extend(events);
            events = all;
        } else {
            self.state.last_emm_sequence = sequence;
            self.state.emm_parts_applied = 0;
            self.state.emm_parts = parts;
        }
        *ent = Entitlements {
            events,
            ..entitlements
        };
        // an event that ended before any ECM the card would still accept is of no use
        let oldest_fresh = now.saturating_sub(self.replay_tolerance);
        ent.events.retain(|e| e.end > oldest_fresh);
        self.state.emm_parts_applied |= 1u64 << part;
        self.merge_keys(keys);
        let complete = self.state.emm_parts_applied.count_ones() >= u32::from(self.state.emm_parts);
        if complete {
            // the whole state has arrived: drop keys of packages the card lost
            let allowed = self.allowed();
            self.card.service_keys.retain(|k| allowed.contains(k.bit));
        }
        self.trim_keys();
    }

    /// The packages whose keys the card may hold: its subscriptions and events while it
    /// is enabled, none when it is not.
    fn allowed(&self) -> AccessCriteria {
        let ent = &self.card.entitlements;
        if !ent.enabled {
            return AccessCriteria::NONE;
        }
        AccessCriteria(
            ent.events
                .iter()
                .fold(ent.access.0, |m, e| m | AccessCriteria::single(e.bit).0),
        )
    }

    fn merge_keys(&mut self, keys: Vec<ServiceKey>) {
        for k in keys {
            let held = &mut self.card.service_keys;
            match held
                .iter_mut()
                .find(|o| o.bit == k.bit && o.version == k.version)
            {
                Some(o) => *o = k,
                None => held.push(k),
            }
        }
    }

    /// Card rules (group EMM): shape, operator, group, group key held, replay, tag; then
    /// only the keys of packages the card is entitled to are taken.
    fn apply_group_emm(&mut self, section: &[u8]) -> Result<EmmOutcome, Refusal> {
        let h = GroupEmmHeader::parse(section)?;
        if h.ca_system_id != self.card.ca_system_id {
            return Err(Refusal::WrongCaSystem {
                got: h.ca_system_id,
                card: self.card.ca_system_id,
            });
        }
        if h.group != GroupId::of(self.card.serial) {
            return Ok(EmmOutcome::NotForThisCard);
        }
        let Some(group_key) = &self.state.group_key else {
            return Ok(EmmOutcome::NoGroupKey);
        };
        let part_bit = 1u64 << h.part;
        if h.sequence < self.state.last_group_sequence {
            return Err(Refusal::Replay);
        }
        let same_sequence = h.sequence == self.state.last_group_sequence;
        if same_sequence && self.state.group_parts_applied & part_bit != 0 {
            return Ok(EmmOutcome::AlreadyApplied);
        }
        let part = open_group_emm(section, group_key)?;
        if !same_sequence {
            self.state.last_group_sequence = h.sequence;
            self.state.group_parts_applied = 0;
        }
        self.state.group_parts_applied |= part_bit;
        let allowed = self.allowed();
        let mut keys = part.keys;
        keys.retain(|k| allowed.contains(k.bit));
        self.merge_keys(keys);
        self.trim_keys();
        Ok(EmmOutcome::Applied)
    }

    /// Keep the [`KEY_VERSIONS_KEPT`] highest versions of each package.
    fn trim_keys(&mut self) {
        let keys = &mut self.card.service_keys;
        keys.sort_unstable_by(|a, b| (a.bit, b.version).cmp(&(b.bit, a.version)));
        keys.dedup_by(|a, b| a.bit == b.bit && a.version == b.version);
        let mut kept: Vec<ServiceKey> = Vec::with_capacity(keys.len());
        for k in keys.drain(..) {
            let same_bit = kept.iter().rev().take_while(|o| o.bit == k.bit).count();
            if same_bit < KEY_VERSIONS_KEPT {
                kept.push(k);
            }
        }
        *keys = kept;
    }
}

/// Run `f` on `section` with the top four bits of byte 1 set as castmux writes them
/// (`0111`: no section_syntax_indicator, private_indicator set, reserved bits set).
///
/// newcamd carries only the 12 length bits of that byte, and clients differ in what they
/// put above them (Cesbo Astra 4 clears them, OSCam and tvheadend keep them). The AEAD
/// covers the section as castmux wrote it, so the card checks it in that form; the four
/// bits carry nothing a castmux card reads. Oversized input is left as it is, for the
/// parser to refuse.
fn with_castmux_header<T>(section: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    match section.get(1) {
        Some(&b) if b & 0xF0 != 0x70 && section.len() <= MAX_SECTION => {
            let mut buf = [0u8; MAX_SECTION];
            let copy = &mut buf[..section.len()];
            copy.copy_from_slice(section);
            copy[1] = 0x70 | (b & 0x0F);
            f(copy)
        }
        _ => f(section),
    }
}

/// Borrowing twin of [`SavedCard`] for writing.
#[derive(Serialize)]
struct SavedCardRef<'a> {
    #[serde(flatten)]
    card: &'a CardFile,
    state: &'a CardState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::types::{derive_card_key, derive_group_key, Key128, PackageBit};
    use crate::cas::{build_emm, build_emm2, build_group_emm};

    const CAID: u16 = 0x4AE1;
    const SERIAL: u64 = 2_100_000_005;
    const NOW: i64 = 1_700_000_000;

    fn root() -> Key128 {
        Key128::from_bytes([9; 16])
    }

    fn ent(access: u64, enabled: bool) -> Entitlements {
        Entitlements {
            access: AccessCriteria(access),
            start: 0,
            finish: i64::MAX,
            pair: 0,
            enabled,
            events: vec![],
        }
    }

    fn sk(bit: u32, version: u32) -> ServiceKey {
        ServiceKey {
            bit: PackageBit::new(bit).unwrap(),
            version,
            key: Key128::from_bytes([bit as u8 ^ version as u8; 16]),
        }
    }

    fn card() -> SoftCard {
        SoftCard::from_card_file(CardFile {
            format: CARD_FILE_FORMAT,
            serial: CardSerial(SERIAL),
            ca_system_id: CAID,
            card_key: derive_card_key(&root(), CardSerial(SERIAL)),
            entitlements: ent(0, true),
            service_keys: vec![],
            issued_at: NOW,
        })
        .unwrap()
    }

    fn group() -> GroupId {
        GroupId::of(CardSerial(SERIAL))
    }

    fn unique2(root: &Key128, serial: u64, seq: u64, e: &Entitlements) -> Vec<u8> {
        let s = CardSerial(serial);
        let gk = e.enabled.then(|| derive_group_key(root, GroupId::of(s)));
        let mut out = Vec::new();
        build_emm2(s, &derive_card_key(root, s), seq, e, gk.as_ref(), &mut out).unwrap();
        out
    }

    fn group_emm(caid: u16, g: GroupId, gk: &Key128, seq: u64, keys: &[ServiceKey]) -> Vec<u8> {
        let mut out = Vec::new();
        build_group_emm(caid, g, gk, seq, keys, &mut out).unwrap();
        out
    }

    fn gk() -> Key128 {
        derive_group_key(&root(), group())
    }

    #[test]
    fn unique_emm_of_format_2_gives_entitlements_and_the_group_key() {
        let mut c = card();
        let e = ent(0b101, true);
        let m = unique2(&root(), SERIAL, 100, &e);
        assert_eq!(c.process_emm(&m, NOW), Ok(EmmOutcome::Applied));
        assert_eq!(c.entitlements(), &e);
        assert_eq!(c.state.group_key.as_ref(), Some(&gk()));
        // repeated by the carousel
        assert_eq!(c.process_emm(&m, NOW), Ok(EmmOutcome::AlreadyApplied));
        // another card of the same group: not for this one
        let other = unique2(&root(), SERIAL + 1, 200, &ent(u64::MAX, true));
        assert_eq!(c.process_emm(&other, NOW), Ok(EmmOutcome::NotForThisCard));
        // forged: a changed byte
        let mut forged = unique2(&root(), SERIAL, 300, &ent(u64::MAX, true));
        let last = forged.len() - 20;
        forged[last] ^= 1;
        assert_eq!(c.process_emm(&forged, NOW), Err(Refusal::BadMac));
        // another operator (another root): the card key differs
        let foreign = unique2(
            &Key128::from_bytes([1; 16]),
            SERIAL,
            400,
            &ent(u64::MAX, true),
        );
        assert_eq!(c.process_emm(&foreign, NOW), Err(Refusal::BadMac));
        // switched off: no group key, and the one held is forgotten
        let off = unique2(&root(), SERIAL, 500, &ent(0b101, false));
        assert_eq!(c.process_emm(&off, NOW), Ok(EmmOutcome::Applied));
        assert!(c.state.group_key.is_none());
        // the old EMM replayed does not switch it back on
        assert_eq!(c.process_emm(&m, NOW), Err(Refusal::Replay));
        assert!(!c.entitlements().enabled);
        assert_eq!(c.counters().refusals.bad_mac, 2);
        assert_eq!(c.counters().refusals.replay, 1);
    }

    #[test]
    fn group_emm_gives_only_the_keys_of_entitled_packages() {
        let mut c = card();
        let keys = [sk(0, 1), sk(0, 2), sk(1, 1), sk(1, 2), sk(2, 7)];
        let g = group_emm(CAID, group(), &gk(), 10, &keys);
        // no group key yet: ignored, not refused
        assert_eq!(c.process_emm(&g, NOW), Ok(EmmOutcome::NoGroupKey));
        assert_eq!(c.counters().emm_no_group_key, 1);
        let u = unique2(&root(), SERIAL, 5, &ent(0b101, true));
        assert_eq!(c.process_emm(&u, NOW), Ok(EmmOutcome::Applied));
        assert_eq!(c.process_emm(&g, NOW), Ok(EmmOutcome::Applied));
        // package 1 is in the group EMM, but not the card's
        assert_eq!(c.key_versions(), [(0, 1), (0, 2), (2, 7)]);
        assert_eq!(c.process_emm(&g, NOW), Ok(EmmOutcome::AlreadyApplied));
        // a rotation: a newer group EMM adds the new version
        let g2 = group_emm(CAID, group(), &gk(), 11, &[sk(0, 2), sk(0, 3)]);
        assert_eq!(c.process_emm(&g2, NOW), Ok(EmmOutcome::Applied));
        assert_eq!(c.key_versions(), [(0, 1), (0, 2), (0, 3), (2, 7)]);
        // a later unique EMM (no keys in it) keeps the keys of packages still entitled
        let u2 = unique2(&root(), SERIAL, 6, &ent(0b001, true));
        assert_eq!(c.process_emm(&u2, NOW), Ok(EmmOutcome::Applied));
        assert_eq!(c.key_versions(), [(0, 1), (0, 2), (0, 3)]);
    }

    #[test]
    fn group_emm_refusals() {
        let mut c = card();
        let u = unique2(&root(), SERIAL, 5, &ent(0b1, true));
        assert_eq!(c.process_emm(&u, NOW), Ok(EmmOutcome::Applied));
        let keys = [sk(0, 1)];
        // forged: every byte changed in turn is refused (or not for this card), never
        // applied (the top bits of byte 1 are set as castmux writes them: flip a length bit)
        let g = group_emm(CAID, group(), &gk(), 20, &keys);
        for i in 0..g.len() {
            let mut bad = g.clone();
            bad[i] ^= if i == 1 { 0x01 } else { 0x40 };
            let r = c.process_emm(&bad, NOW);
            assert!(
                matches!(
                    r,
                    Err(_) | Ok(EmmOutcome::NotForThisCard) | Ok(EmmOutcome::NoGroupKey)
                ),
                "byte {i}: {r:?}"
            );
        }
        assert!(c.key_versions().is_empty());
        assert_eq!(
            c.process_emm(
                &group_emm(CAID, group(), &Key128::from_bytes([3; 16]), 20, &keys),
                NOW
            ),
            Err(Refusal::BadMac)
        );
        // another operator with the same CA_system_ID: its group key differs
        let other_root = derive_group_key(&Key128::from_bytes([1; 16]), group());
        assert_eq!(
            c.process_emm(&group_emm(CAID, group(), &other_root, 20, &keys), NOW),
            Err(Refusal::BadMac)
        );
        // another operator
        assert_eq!(
            c.process_emm(&group_emm(0x0B00, group(), &gk(), 20, &keys), NOW),
            Err(Refusal::WrongCaSystem {
                got: 0x0B00,
                card: CAID
            })
        );
        // another group, even sealed under this group's key
        let next = GroupId(group().0 + 1);
        assert_eq!(
            c.process_emm(&group_emm(CAID, next, &gk(), 20, &keys), NOW),
            Ok(EmmOutcome::NotForThisCard)
        );
        assert!(c.key_versions().is_empty());
        // the real one, then an older one replayed
        assert_eq!(c.process_emm(&g, NOW), Ok(EmmOutcome::Applied));
        let old = group_emm(CAID, group(), &gk(), 19, &[sk(0, 9)]);
        assert_eq!(c.process_emm(&old, NOW), Err(Refusal::Replay));
        assert_eq!(c.key_versions(), [(0, 1)]);
        // malformed
        assert!(matches!(
            c.process_emm(&g[..g.len() - 1], NOW),
            Err(Refusal::Malformed(_))
        ));
        let r = c.counters().refusals;
        // the byte flips above count too: two in the CA_system_ID, many in the sealed part
        assert_eq!((r.replay, r.wrong_ca_system), (1, 3));
        assert!(r.bad_mac >= 2, "{r:?}");
    }

    #[test]
    fn a_disabled_card_takes_no_key_from_a_group_emm() {
        let mut c = card();
        let u = unique2(&root(), SERIAL, 5, &ent(0b1, true));
        assert_eq!(c.process_emm(&u, NOW), Ok(EmmOutcome::Applied));
        // switched off, but (say) it kept the group key from a saved state
        let kept = c.state.group_key.clone();
        let off = unique2(&root(), SERIAL, 6, &ent(0b1, false));
        assert_eq!(c.process_emm(&off, NOW), Ok(EmmOutcome::Applied));
        c.state.group_key = kept;
        let g = group_emm(CAID, group(), &gk(), 30, &[sk(0, 1)]);
        assert_eq!(c.process_emm(&g, NOW), Ok(EmmOutcome::Applied));
        assert!(c.key_versions().is_empty());
    }

    #[test]
    fn format_1_unique_emms_still_apply() {
        let mut c = card();
        let s = CardSerial(SERIAL);
        let mut m = Vec::new();
        build_emm(
            s,
            &derive_card_key(&root(), s),
            7,
            &ent(0b10, true),
            &[sk(1, 4)],
            &mut m,
        )
        .unwrap();
        assert_eq!(c.process_emm(&m, NOW), Ok(EmmOutcome::Applied));
        assert_eq!(c.key_versions(), [(1, 4)]);
        // and a format-2 EMM of an older sequence is a replay of the card's state
        let old = unique2(&root(), SERIAL, 6, &ent(0, true));
        assert_eq!(c.process_emm(&old, NOW), Err(Refusal::Replay));
    }

    #[test]
    fn the_group_key_survives_a_restart_and_stays_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.json");
        let mut c = card();
        let u = unique2(&root(), SERIAL, 5, &ent(0b1, true));
        assert_eq!(c.process_emm(&u, NOW), Ok(EmmOutcome::Applied));
        let g = group_emm(CAID, group(), &gk(), 40, &[sk(0, 1)]);
        assert_eq!(c.process_emm(&g, NOW), Ok(EmmOutcome::Applied));
        c.save(&path).unwrap();
        let mut again = SoftCard::load(&path).unwrap();
        assert_eq!(again.state.group_key.as_ref(), Some(&gk()));
        assert_eq!(again.process_emm(&g, NOW), Ok(EmmOutcome::AlreadyApplied));
        let hex = gk().expose_hex();
        assert!(!format!("{again:?}").contains(&hex));
    }
}
