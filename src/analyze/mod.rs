//! The transport-stream analyzer: ETSI TR 101 290 priority 1 and 2 indicators, the CA
//! checks monitors make (ECM repetition, crypto period, EMM bitrate), and the inventory
//! `castmux probe` prints (programs, PIDs, bitrates, scrambling).
//!
//! Design principles:
//! - **An independent parser.** TS packets, PSI sections, descriptors and PES headers are
//!   read with `mpeg2ts-reader`, not castmux's own `ts/`, so a bug in the layer that wrote
//!   castmux's output cannot hide itself from the tool that judges it (the load test's
//!   checker shares [`psi`] for the same reason).
//! - **Counters, not logs.** Every indicator is a [`Tally`]: a count, where it was first
//!   seen, and counts per PID; nothing is logged per packet.
//! - **One time base** ([`clock`]): stream time from PCRs for files and pipes, the wall
//!   clock for live inputs, so a file read at disk speed is judged on its own timeline.
//! - **Missing things are noticed while missing**: a table, PCR, PTS or PID that stops is
//!   counted when its limit runs out (checked after every batch), not only when it
//!   comes back; each overrun counts once ([`etr290::Repetition`]).
//! - **No allocation per packet** except for whole sections (PSI, ECM), which the reader
//!   hands over as owned bytes.

pub mod ca;
pub mod clock;
pub mod etr290;
pub mod pcr;
pub mod psi;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mpeg2ts_reader::descriptor::CoreDescriptors;
use mpeg2ts_reader::packet::Packet as TsPacket;
use mpeg2ts_reader::pes::{PesContents, PesHeader, PtsDts};
use mpeg2ts_reader::psi::pat::{PatSection, ProgramDescriptor};
use mpeg2ts_reader::psi::pmt::PmtSection;

use self::ca::{CwPeriods, DEFAULT_ECM_LIMIT};
use self::clock::TimeBase;
use self::etr290::Repetition;
pub use self::etr290::{Errors, Indicator, Position, Tally};
use self::pcr::PcrState;
use self::psi::{
    ca_descriptors, cat_ca_descriptors, Found, FoundSection, LongConsumer, ShortConsumer,
};
pub use self::report::Report;
use crate::ts::{EsKind, StreamType};

/// 1.3, 1.5: PAT and PMT at least this often.
pub const PSI_LIMIT: Duration = Duration::from_millis(500);
/// 2.5: PTS at least this often.
pub const PTS_LIMIT: Duration = Duration::from_millis(700);
/// 1.6: the default time a referenced PID may be absent.
pub const DEFAULT_PID_TIMEOUT: Duration = Duration::from_secs(5);
const NULL_PID: u16 = 0x1FFF;
const PIDS: usize = 0x2000;
/// SI PIDs whose long sections are CRC-checked (2.2): NIT, SDT/BAT, EIT.
const SI_PIDS: [u16; 3] = [0x10, 0x11, 0x12];

/// What the analyzer is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Live input (wall-clock time) or a file/pipe (stream time).
    pub live: bool,
    /// 1.6: how long a PID a PMT refers to may be absent; also how long scrambled packets
    /// may come without a CAT before 2.6 counts. Default 5 s.
    pub pid_timeout: Duration,
    /// ECM repetition limit per ECM PID. Default 500 ms.
    pub ecm_limit: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            live: false,
            pid_timeout: DEFAULT_PID_TIMEOUT,
            ecm_limit: DEFAULT_ECM_LIMIT,
        }
    }
}

/// What a PID is, by the PSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Role {
    #[default]
    Other,
    Pat,
    Cat,
    Si,
    Pmt,
    Ecm(u16),
    Emm(u16),
}

/// Everything kept per PID.
#[derive(Default)]
struct PidState {
    packets: u64,
    scrambled: u64,
    even: u64,
    odd: u64,
    clear_payload: u64,
    pcr_packets: u64,
    cc_errors: u64,
    last_cc: Option<u8>,
    /// The last packet was a duplicate (a second one is an error).
    duplicate: bool,
    role: Role,
    long: Option<Box<LongConsumer>>,
    short: Option<Box<ShortConsumer>>,
    /// PAT, PMT or ECM repetition.
    tables: Option<Repetition>,
    pcr: Option<Box<PcrState>>,
    pts: Option<Repetition>,
    /// Referenced by a PMT: 1.6.
    presence: Option<Repetition>,
    cw: Option<CwPeriods>,
}

/// A program as its PMT describes it.
#[derive(Debug, Clone, Default)]
pub struct Program {
    pub program_number: u16,
    pub pmt_pid: u16,
    pub pcr_pid: Option<u16>,
    pub version: Option<u8>,
    /// Program-level CA descriptors: (CA_system_ID, ECM PID).
    pub ca: Vec<(u16, u16)>,
    pub streams: Vec<Stream>,
}

/// One elementary stream of a PMT.
#[derive(Debug, Clone)]
pub struct Stream {
    pub pid: u16,
    pub stream_type: u8,
    pub kind: EsKind,
    pub ca: Vec<(u16, u16)>,
}

/// All descriptors as (tag, payload), for the stream kind.
mod raw {
    mpeg2ts_reader::descriptor_enum! {
        /// Any descriptor, undecoded.
        Raw {
            Any 0..=255 => UnknownDescriptor,
        }
    }
    pub use mpeg2ts_reader::descriptor::UnknownDescriptor;
}

/// The analyzer. Feed it packets with [`Analyzer::process`], then [`Analyzer::finish`]
/// and [`Analyzer::report`].
pub struct Analyzer {
    settings: Settings,
    time: TimeBase,
    /// Packets seen (the next packet's number).
    index: u64,
    pids: Vec<PidState>,
    errors: Errors,
    transport_stream_id: Option<u16>,
    /// program_number -> PMT PID, from the PAT.
    pat: BTreeMap<u16, u16>,
    programs: BTreeMap<u16, Program>,
    /// The CAT's CA descriptors (EMM PIDs).
    cat: Vec<(u16, u16)>,
    cat_seen: bool,
    /// Since when scrambled packets have come with no CAT known, and whether 2.6 counted it.
    scrambled_without_cat: Option<Duration>,
    cat_error_counted: bool,
    /// PIDs referenced by the PMTs (1.6).
    referenced: BTreeSet<u16>,
    /// PIDs with something to check for overruns.
    watched: BTreeSet<u16>,
    /// Input sync losses already counted.
    sync_losses: u64,
    found: Found,
}

impl Analyzer {
    /// An analyzer that starts now (wall clock) or at the first PCR (stream time).
    pub fn new(settings: Settings) -> Analyzer {
        let mut pids: Vec<PidState> = (0..PIDS).map(|_| PidState::default()).collect();
        pids[0].role = Role::Pat;
        pids[0].long = Some(Box::default());
        pids[0].tables = Some(Repetition::from(Duration::ZERO));
        pids[1].role = Role::Cat;
        pids[1].long = Some(Box::default());
        for pid in SI_PIDS {
            pids[usize::from(pid)].role = Role::Si;
            pids[usize::from(pid)].long = Some(Box::default());
        }
        Analyzer {
            time: if settings.live {
                TimeBase::wall()
            } else {
                TimeBase::stream()
            },
            settings,
            index: 0,
            pids,
            errors: Errors::default(),
            transport_stream_id: None,
            pat: BTreeMap::new(),
            programs: BTreeMap::new(),
            cat: Vec::new(),
            cat_seen: false,
            scrambled_without_cat: None,
            cat_error_counted: false,
            referenced: BTreeSet::new(),
            watched: BTreeSet::from([0]),
            sync_losses: 0,
            found: Vec::new(),
        }
    }

    /// Time of the next packet from the start.
    pub fn now(&self) -> Duration {
        self.time.at(self.index)
    }

    /// Packets analysed.
    pub fn packets(&self) -> u64 {
        self.index
    }

    /// The tallies so far.
    pub fn errors(&self) -> &Errors {
        &self.errors
    }

    /// Analyse a batch of packets (arrived together, for the wall clock); stops before
    /// the first packet at or after `stop_at` and returns how many it took.
    pub fn process(&mut self, packets: &[[u8; 188]], stop_at: Option<Duration>) -> usize {
        self.time.tick();
        let mut taken = 0;
        for p in packets {
            if stop_at.is_some_and(|l| self.now() >= l) {
                break;
            }
            self.packet(p);
            taken += 1;
        }
        self.check_overruns();
        taken
    }

    /// The input's resynchroniser lost sync `total` times so far (1.1; each loss began at
    /// a wrong sync byte, so it is a 1.2 too: the resynchroniser drops such packets
    /// before they get here).
    pub fn input_sync_losses(&mut self, total: u64) {
        let new = total.saturating_sub(self.sync_losses);
        self.sync_losses = self.sync_losses.max(total);
        let at = self.position(None);
        self.errors.add_n(Indicator::TsSyncLoss, at, new);
        self.errors.add_n(Indicator::SyncByteError, at, new);
    }

    fn position(&self, pid: Option<u16>) -> Position {
        let index = self.index.saturating_sub(1);
        Position {
            packet: index,
            time_s: self.time.at(index).as_secs_f64(),
            pid,
        }
    }

    fn packet(&mut self, raw: &[u8; 188]) {
        let index = self.index;
        self.index += 1;
        let Some(pk) = TsPacket::try_new(&raw[..]) else {
            let at = self.position(None);
            self.errors.add(Indicator::SyncByteError, at);
            return;
        };
        let pid = u16::from(pk.pid());
        let af = pk.adaptation_field();
        let pcr = af.as_ref().and_then(|a| a.pcr().ok()).map(u64::from);
        let discontinuity = af.as_ref().is_some_and(|a| a.discontinuity_indicator());
        if let (Some(pcr), TimeBase::Stream(t)) = (pcr, &mut self.time) {
            if !pk.transport_error_indicator() {
                t.on_pcr(pid, index, pcr);
            }
        }
        let now = self.time.at(index);
        let at = Position {
            packet: index,
            time_s: now.as_secs_f64(),
            pid: Some(pid),
        };
        let limit = self.settings.pid_timeout;
        let st = &mut self.pids[usize::from(pid)];
        st.packets += 1;
        if pid != NULL_PID && continuity_error(st, &pk, discontinuity) {
            st.cc_errors += 1;
            self.errors.add(Indicator::ContinuityCountError, at);
        }
        if pk.transport_error_indicator() {
            // the rest of the packet cannot be trusted
            self.errors.add(Indicator::TransportError, at);
            return;
        }
        if let Some(r) = &mut st.presence {
            if r.occur(now, limit) {
                self.errors.add(Indicator::PidError, at);
            }
        }
        let tsc = pk.transport_scrambling_control();
        let payload = pk.payload();
        if tsc.is_scrambled() {
            let bits = tsc.scheme().map_or(0, |s| s.get());
            if payload.is_some() {
                st.scrambled += 1;
                match bits {
                    2 => st.even += 1,
                    3 => st.odd += 1,
                    _ => {}
                }
            }
            if matches!(bits, 2 | 3) {
                st.cw
                    .get_or_insert_with(CwPeriods::default)
                    .on_scrambled(bits, now, at);
            }
            match st.role {
                Role::Pat => self.errors.add(Indicator::PatError, at),
                Role::Pmt => self.errors.add(Indicator::PmtError, at),
                _ => {}
            }
            // its PES headers are hidden now: 2.5 can no longer be judged on it
            st.pts = None;
            if !self.cat_seen && self.scrambled_without_cat.is_none() {
                self.scrambled_without_cat = Some(now);
            }
        } else if payload.is_some() {
            st.clear_payload += 1;
        }
        if let Some(pcr) = pcr {
            st.pcr_packets += 1;
            let state = st.pcr.get_or_insert_with(Box::default);
            let ev = state.on_pcr(at, index, pcr, discontinuity, now, self.time.is_stream());
            if ev.repetition {
                self.errors.add(Indicator::PcrRepetitionError, at);
            }
            if ev.discontinuity {
                self.errors
                    .add(Indicator::PcrDiscontinuityIndicatorError, at);
            }
            self.watched.insert(pid);
        }
        if tsc.is_scrambled() {
            return;
        }
        match st.role {
            Role::Pat | Role::Cat | Role::Si | Role::Pmt => {
                if let Some(c) = &mut st.long {
                    c.consume(&mut self.found, &pk);
                }
                if !self.found.is_empty() {
                    self.sections(pid, now, at);
                }
            }
            Role::Ecm(_) => {
                if let Some(c) = &mut st.short {
                    c.consume(&mut self.found, &pk);
                }
                let limit = self.settings.ecm_limit;
                for s in self.found.drain(..) {
                    if let (0x80 | 0x81, Some(r)) = (s.table_id, &mut st.tables) {
                        r.occur(now, limit);
                    }
                }
            }
            Role::Emm(_) => {}
            Role::Other => {
                if let Some(p) = payload.filter(|_| pk.payload_unit_start_indicator()) {
                    if has_pts(p)
                        && st
                            .pts
                            .get_or_insert_with(Repetition::default)
                            .occur(now, PTS_LIMIT)
                    {
                        self.errors.add(Indicator::PtsError, at);
                    }
                    if st.pts.is_some() {
                        self.watched.insert(pid);
                    }
                }
            }
        }
    }

    fn sections(&mut self, pid: u16, now: Duration, at: Position) {
        let role = self.pids[usize::from(pid)].role;
        for s in std::mem::take(&mut self.found) {
            match (role, s.table_id) {
                (Role::Pat, id) if id != 0x00 => self.errors.add(Indicator::PatError, at),
                (Role::Cat, id) if id != 0x01 => self.errors.add(Indicator::CatError, at),
                _ => {}
            }
            if !s.crc_ok {
                self.errors.add(Indicator::CrcError, at);
                continue;
            }
            match (role, s.table_id) {
                (Role::Pat, 0x00) => {
                    if self.repeat(pid, now, PSI_LIMIT) {
                        self.errors.add(Indicator::PatError, at);
                    }
                    self.pat_section(&s, now);
                }
                (Role::Cat, 0x01) => self.cat_section(&s),
                (Role::Pmt, 0x02) => {
                    if self.repeat(pid, now, PSI_LIMIT) {
                        self.errors.add(Indicator::PmtError, at);
                    }
                    self.pmt_section(pid, &s, now);
                }
                _ => {}
            }
        }
    }

    fn repeat(&mut self, pid: u16, now: Duration, limit: Duration) -> bool {
        self.pids[usize::from(pid)]
            .tables
            .get_or_insert_with(|| Repetition::from(now))
            .occur(now, limit)
    }

    fn pat_section(&mut self, s: &FoundSection, now: Duration) {
        let Some(body) = s.body() else { return };
        self.transport_stream_id = Some(u16::from_be_bytes([s.data[3], s.data[4]]));
        let whole_table = s.data[6] == 0 && s.data[7] == 0;
        let mut pat: BTreeMap<u16, u16> = if whole_table {
            BTreeMap::new()
        } else {
            self.pat.clone()
        };
        for p in PatSection::new(body).programs() {
            if let ProgramDescriptor::Program {
                program_number,
                pid,
            } = p
            {
                pat.insert(program_number, u16::from(pid));
            }
        }
        if pat == self.pat {
            return;
        }
        for (program, pmt) in &self.pat {
            if pat.get(program) != Some(pmt) {
                self.programs.remove(program);
                let st = &mut self.pids[usize::from(*pmt)];
                if st.role == Role::Pmt {
                    st.role = Role::Other;
                    st.long = None;
                    st.tables = None;
                }
            }
        }
        for pmt in pat.values() {
            let st = &mut self.pids[usize::from(*pmt)];
            if st.role != Role::Pmt {
                st.role = Role::Pmt;
                st.long = Some(Box::default());
                st.tables = Some(Repetition::from(now));
                self.watched.insert(*pmt);
            }
        }
        self.pat = pat;
        self.update_references(now);
    }

    fn cat_section(&mut self, s: &FoundSection) {
        let Some(body) = s.body() else { return };
        self.cat_seen = true;
        self.scrambled_without_cat = None;
        self.cat_error_counted = false;
        self.cat = cat_ca_descriptors(body).collect();
        for &(caid, pid) in &self.cat {
            let st = &mut self.pids[usize::from(pid)];
            if st.role == Role::Other {
                st.role = Role::Emm(caid);
            }
        }
    }

    fn pmt_section(&mut self, pid: u16, s: &FoundSection, now: Duration) {
        let Some(body) = s.body() else { return };
        let Ok(pmt) = PmtSection::from_bytes(body) else {
            return;
        };
        let program_number = u16::from_be_bytes([s.data[3], s.data[4]]);
        if self.pat.get(&program_number) != Some(&pid) {
            return;
        }
        let program = Program {
            program_number,
            pmt_pid: pid,
            pcr_pid: Some(u16::from(pmt.pcr_pid())),
            version: s.version(),
            ca: ca_descriptors(pmt.descriptors::<CoreDescriptors<'_>>()).collect(),
            streams: pmt
                .streams()
                .map(|st| {
                    let stream_type = st.stream_type().0;
                    let kind = StreamType(stream_type).es_kind_from(
                        st.descriptors::<raw::Raw<'_>>()
                            .filter_map(Result::ok)
                            .map(|raw::Raw::Any(d)| (d.tag, d.payload)),
                    );
                    Stream {
                        pid: u16::from(st.elementary_pid()),
                        stream_type,
                        kind,
                        ca: ca_descriptors(st.descriptors::<CoreDescriptors<'_>>()).collect(),
                    }
                })
                .collect(),
        };
        let ecms: Vec<(u16, u16)> = program
            .ca
            .iter()
            .chain(program.streams.iter().flat_map(|s| s.ca.iter()))
            .copied()
            .collect();
        for (caid, ecm) in ecms {
            let st = &mut self.pids[usize::from(ecm)];
            if st.role == Role::Other {
                st.role = Role::Ecm(caid);
                st.short = Some(Box::default());
                st.tables = Some(Repetition::from(now));
                self.watched.insert(ecm);
            }
        }
        self.programs.insert(program_number, program);
        self.update_references(now);
    }

    /// 1.6 watches the elementary PIDs of the current PMTs.
    fn update_references(&mut self, now: Duration) {
        let referenced: BTreeSet<u16> = self
            .programs
            .values()
            .flat_map(|p| p.streams.iter().map(|s| s.pid))
            .collect();
        for gone in self.referenced.difference(&referenced) {
            self.pids[usize::from(*gone)].presence = None;
        }
        for new in referenced.difference(&self.referenced) {
            self.pids[usize::from(*new)].presence = Some(Repetition::from(now));
            self.watched.insert(*new);
        }
        self.referenced = referenced;
    }

    /// Count what has been missing for too long (each overrun once).
    fn check_overruns(&mut self) {
        let now = self.now();
        let at = |pid| Position {
            packet: self.index,
            time_s: now.as_secs_f64(),
            pid: Some(pid),
        };
        // PCRs that come back are judged on their own steps; one that stays away is
        // noticed on the clock, whose placement of packets between two PCRs of a
        // variable-bitrate stream may be tens of ms off: twice the limit
        let pcr_missing = if self.time.is_stream() {
            2 * pcr::PCR_LIMIT
        } else {
            pcr::PCR_LIMIT
        };
        for &pid in &self.watched {
            let st = &mut self.pids[usize::from(pid)];
            let tables = match st.role {
                Role::Pat => Some((PSI_LIMIT, Some(Indicator::PatError))),
                Role::Pmt => Some((PSI_LIMIT, Some(Indicator::PmtError))),
                Role::Ecm(_) => Some((self.settings.ecm_limit, None)),
                _ => None,
            };
            if let (Some((limit, which)), Some(r)) = (tables, &mut st.tables) {
                if r.check(now, limit) {
                    if let Some(w) = which {
                        self.errors.add(w, at(pid));
                    }
                }
            }
            if let Some(p) = &mut st.pcr {
                if p.repetition.check(now, pcr_missing) {
                    self.errors.add(Indicator::PcrRepetitionError, at(pid));
                }
            }
            if let Some(r) = &mut st.pts {
                if r.check(now, PTS_LIMIT) {
                    self.errors.add(Indicator::PtsError, at(pid));
                }
            }
            if let Some(r) = &mut st.presence {
                if r.check(now, self.settings.pid_timeout) {
                    self.errors.add(Indicator::PidError, at(pid));
                }
            }
        }
        if let Some(since) = self.scrambled_without_cat {
            if !self.cat_error_counted && now.saturating_sub(since) > self.settings.pid_timeout {
                self.cat_error_counted = true;
                self.errors.add(Indicator::CatError, self.position(None));
            }
        }
    }

    /// The end of the input: what is still missing is counted, and scrambled packets
    /// never followed by a CAT are a 2.6 however short the input was.
    pub fn finish(&mut self) {
        self.check_overruns();
        if self.scrambled_without_cat.is_some() && !self.cat_error_counted {
            self.cat_error_counted = true;
            self.errors.add(Indicator::CatError, self.position(None));
        }
    }
}

/// 1.4, by ISO/IEC 13818-1 2.4.3.3: the counter steps with each packet that has a
/// payload and stays put on one without; one duplicate (same counter, with payload) is
/// allowed; a discontinuity_indicator excuses a jump.
fn continuity_error(st: &mut PidState, pk: &TsPacket<'_>, discontinuity: bool) -> bool {
    let cc = pk.continuity_counter().count();
    let payload = pk.adaptation_control().has_payload();
    let Some(last) = st.last_cc.replace(cc) else {
        return false;
    };
    let was_duplicate = std::mem::take(&mut st.duplicate);
    if discontinuity {
        return false;
    }
    if !payload {
        return cc != last;
    }
    if cc == (last + 1) & 0x0F {
        return false;
    }
    if cc == last && !was_duplicate {
        st.duplicate = true;
        return false;
    }
    true
}

/// A PES header with a PTS at the start of this payload.
fn has_pts(payload: &[u8]) -> bool {
    // the reader logs a line for a payload that is not PES; data PIDs carry plenty
    if !payload.starts_with(&[0, 0, 1]) || payload.len() < 9 {
        return false;
    }
    let Some(h) = PesHeader::from_bytes(payload) else {
        return false;
    };
    match h.contents() {
        PesContents::Parsed(Some(c)) => matches!(
            c.pts_dts(),
            Ok(PtsDts::PtsOnly(Ok(_)) | PtsDts::Both { pts: Ok(_), .. })
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
