//! The software card core: one card's keys and entitlements, updated by its EMMs, and
//! control words out of ECMs only while it is entitled (docs/cas-formats.md, "Card rules").

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use csa::Parity;
use serde::{Deserialize, Serialize};

use crate::cas::ecm::EcmRef;
use crate::cas::emm::{open_emm, EmmHeader};
use crate::cas::types::{
    AccessCriteria, CardFile, CardSerial, Entitlements, ServiceKey, CARD_FILE_FORMAT,
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
    /// EMM sections for other cards.
    pub emm_not_for_this_card: u64,
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

    fn apply_emm(&mut self, section: &[u8], now: i64) -> Result<EmmOutcome, Refusal> {
        let h = EmmHeader::parse(section)?;
        if h.serial != self.card.serial {
            return Ok(EmmOutcome::NotForThisCard);
        }
        let part_bit = 1u64 << h.part;
        if h.sequence < self.state.last_emm_sequence {
            return Err(Refusal::Replay);
        }
        let same_sequence = h.sequence == self.state.last_emm_sequence;
        if same_sequence && self.state.emm_parts_applied & part_bit != 0 {
            return Ok(EmmOutcome::AlreadyApplied);
        }
        let part = open_emm(section, &self.card.card_key)?;
        let ent = &mut self.card.entitlements;
        let mut events = part.entitlements.events;
        if same_sequence {
            // another part of the same EMM: its events add to those already applied
            events.retain(|e| !ent.events.iter().any(|o| o.id == e.id));
            let mut all = std::mem::take(&mut ent.events);
            all.extend(events);
            events = all;
        } else {
            self.state.last_emm_sequence = h.sequence;
            self.state.emm_parts_applied = 0;
            self.state.emm_parts = h.parts;
        }
        *ent = Entitlements {
            events,
            ..part.entitlements
        };
        // an event that ended before any ECM the card would still accept is of no use
        let oldest_fresh = now.saturating_sub(self.replay_tolerance);
        ent.events.retain(|e| e.end > oldest_fresh);
        self.state.emm_parts_applied |= part_bit;
        for k in part.keys {
            let keys = &mut self.card.service_keys;
            match keys
                .iter_mut()
                .find(|o| o.bit == k.bit && o.version == k.version)
            {
                Some(o) => *o = k,
                None => keys.push(k),
            }
        }
        let complete = self.state.emm_parts_applied.count_ones() >= u32::from(self.state.emm_parts);
        if complete {
            // the whole state has arrived: drop keys of packages the card lost
            let ent = &self.card.entitlements;
            let allowed = if ent.enabled {
                ent.events
                    .iter()
                    .fold(ent.access.0, |m, e| m | AccessCriteria::single(e.bit).0)
            } else {
                0
            };
            self.card
                .service_keys
                .retain(|k| AccessCriteria(allowed).contains(k.bit));
        }
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
