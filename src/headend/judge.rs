//! What one input of a channel carries, judged as it arrives, for the choice between a
//! primary input and its backups: packets within the last N ms, the bitrate of the last
//! second, CC errors, a PMT seen since the input (re)started, and no scrambled packets on
//! the elementary streams the channel expects clear. It also keeps the input's PAT and
//! PMTs, which the continuity stage ([`super::renumber`]) maps onto the channel's own
//! numbering.

use std::time::{Duration, Instant};

use crate::ts::packet::Packet;
use crate::ts::psi::{TABLE_ID_PAT, TABLE_ID_PMT};
use crate::ts::section::{split_sections, Section};
use crate::ts::{PacketRef, Pat, PatEntry, Pid, Pmt, SectionAssembler, TableSections};

/// How the active input is judged (the spec's `input_*` settings).
#[derive(Debug, Clone)]
pub struct JudgeLimits {
    /// No packet for this long: off air.
    pub timeout: Duration,
    /// Bitrate of the last second below this (bit/s; 0: not judged): off air.
    pub min_bitrate: u64,
    /// More CC errors than this in the last second: off air (None: not judged).
    pub max_cc_errors: Option<u64>,
    /// The services whose ES must arrive clear (empty: every service).
    pub services: Vec<u16>,
}

/// More than this share (per mille) of the expected-clear ES packets of the last second
/// arrived scrambled: the input is off air (a receiver that lost its CAM sends scrambled
/// ES, which castmux must not take as a clear feed).
const MAX_SCRAMBLED_PER_MILLE: u64 = 100;
/// The judging window.
const WINDOW: Duration = Duration::from_secs(1);
/// Programs followed per input.
const MAX_PROGRAMS: usize = 64;
/// `Judge::pmt_slot` of a PID that is no PMT PID.
const NO_PMT: u8 = u8::MAX;

/// One program of an input: its PMT PID and its last good PMT section.
#[derive(Debug, Clone)]
pub struct InputProgram {
    pub number: u16,
    pub pmt_pid: Pid,
    /// The last good current PMT section (empty until one is seen).
    pub pmt: Vec<u8>,
}

/// What a packet completed: the caller regenerates that table where the input's ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Nothing,
    /// A PAT section ended in this packet.
    Pat,
    /// A PMT section of the program at this index ended in this packet.
    Pmt(usize),
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    bytes: u64,
    cc_errors: u64,
    clear_expected: u64,
    scrambled: u64,
}

/// The judge of one input.
#[derive(Debug)]
pub struct Judge {
    last_packet: Option<Instant>,
    /// When the input last started carrying packets after a silence.
    resumed: Option<Instant>,
    /// When a PMT was last completed.
    pmt_seen: Option<Instant>,
    window_start: Option<Instant>,
    window: Window,
    /// The last complete window (None: none complete since the input resumed).
    last: Option<Window>,
    /// Last CC per PID (0x10: not seen).
    cc: Box<[u8]>,
    /// ES PIDs of the expected-clear services.
    expect_clear: Box<[bool]>,
    pat_asm: SectionAssembler,
    pat_table: TableSections,
    /// The current PAT: transport_stream_id and programs.
    pub tsid: u16,
    pub programs: Vec<InputProgram>,
    pmt_asm: Vec<(Pid, SectionAssembler)>,
    /// Per PID, its index in `pmt_asm` (`NO_PMT`: none), so a packet finds it in one read.
    pmt_slot: Box<[u8]>,
    /// Bumped whenever the PAT or a PMT changes (the continuity stage remaps then).
    pub psi_generation: u64,
    on_since: Option<Instant>,
    scratch: Vec<u8>,
}

impl Default for Judge {
    fn default() -> Self {
        Judge::new()
    }
}

impl Judge {
    pub fn new() -> Judge {
        Judge {
            last_packet: None,
            resumed: None,
            pmt_seen: None,
            window_start: None,
            window: Window::default(),
            last: None,
            cc: vec![0x10; 8192].into_boxed_slice(),
            expect_clear: vec![false; 8192].into_boxed_slice(),
            pat_asm: SectionAssembler::psi(),
            pat_table: TableSections::new(),
            tsid: 0,
            programs: Vec::new(),
            pmt_asm: Vec::new(),
            pmt_slot: vec![NO_PMT; 8192].into_boxed_slice(),
            psi_generation: 0,
            on_since: None,
            scratch: Vec::new(),
        }
    }

    /// Whether a PMT has come since the input started or came back after a silence (what
    /// it sent before the silence says nothing of what it sends now).
    pub fn pmt_seen_since_resume(&self) -> bool {
        self.pmt_seen.is_some()
    }

    /// Whether the input's PAT and at least one PMT are known.
    pub fn psi_known(&self) -> bool {
        self.programs.iter().any(|p| !p.pmt.is_empty())
    }

    /// Take one packet of the input.
    pub fn observe(&mut self, pkt: &Packet, now: Instant, limits: &JudgeLimits) -> Ended {
        if self
            .last_packet
            .is_none_or(|t| now.duration_since(t) >= limits.timeout)
        {
            // (re)started after a silence: judged afresh, its PMT must be seen again
            self.resumed = Some(now);
            self.pmt_seen = None;
            self.window_start = Some(now);
            self.window = Window::default();
            self.last = None;
            self.cc.fill(0x10);
            // whatever came before the silence says nothing about the sections to come
            self.pat_asm.reset();
            self.pmt_asm.iter_mut().for_each(|(_, a)| a.reset());
        }
        self.last_packet = Some(now);
        if self
            .window_start
            .is_some_and(|t| now.duration_since(t) >= WINDOW)
        {
            self.last = Some(self.window);
            self.window = Window::default();
            self.window_start = Some(now);
        }
        self.window.bytes += pkt.len() as u64;
        let r = PacketRef::new(pkt);
        let pid = r.pid();
        let p = usize::from(pid.value());
        if r.has_payload() && pid != Pid::NULL {
            let cc = r.cc().value();
            let last = self.cc[p];
            if last != 0x10 && cc != last && cc != (last + 1) & 0x0F && !r.discontinuity() {
                self.window.cc_errors += 1;
            }
            self.cc[p] = cc;
            if self.expect_clear[p] {
                self.window.clear_expected += 1;
                if r.tsc() != crate::ts::TransportScramblingControl::Clear {
                    self.window.scrambled += 1;
                }
            }
        }
        if pid == Pid::PAT {
            return self.on_pat(pkt, limits);
        }
        match self.pmt_slot[p] {
            NO_PMT => Ended::Nothing,
            k => self.on_pmt(usize::from(k), pkt, now, limits),
        }
    }

    fn on_pat(&mut self, pkt: &Packet, limits: &JudgeLimits) -> Ended {
        let mut sections = std::mem::take(&mut self.scratch);
        sections.clear();
        let mut ended = false;
        self.pat_asm.push(pkt, |r| {
            if let Ok(s) = r {
                if s.table_id() == TABLE_ID_PAT {
                    sections.extend_from_slice(s.bytes());
                }
            }
        });
        let mut complete = false;
        for bytes in split_sections(&sections) {
            let Ok(s) = Section::parse(bytes, bytes.len()) else {
                continue;
            };
            if Pat::parse(&s).is_ok() {
                ended = true;
                complete |= self.pat_table.push(&s);
            }
        }
        self.scratch = sections;
        if complete {
            self.apply_pat(limits);
        }
        if ended {
            Ended::Pat
        } else {
            Ended::Nothing
        }
    }

    fn apply_pat(&mut self, limits: &JudgeLimits) {
        let mut tsid = 0;
        let mut entries: Vec<PatEntry> = Vec::new();
        for b in self.pat_table.sections() {
            let Ok(s) = Section::parse(b, b.len()) else {
                continue;
            };
            if let Ok(pat) = Pat::parse(&s) {
                tsid = pat.transport_stream_id();
                entries.extend(pat.entries().filter(|e| e.program_number != 0));
            }
        }
        entries.truncate(MAX_PROGRAMS);
        let old = std::mem::take(&mut self.programs);
        for e in &entries {
            if self.programs.iter().any(|p| p.number == e.program_number) {
                continue;
            }
            // a program that kept its PMT PID keeps its PMT
            let pmt = old
                .iter()
                .find(|p| p.number == e.program_number && p.pmt_pid == e.pid)
                .map(|p| p.pmt.clone())
                .unwrap_or_default();
            self.programs.push(InputProgram {
                number: e.program_number,
                pmt_pid: e.pid,
                pmt,
            });
        }
        self.tsid = tsid;
        self.pmt_asm
            .retain(|(pid, _)| entries.iter().any(|e| e.pid == *pid));
        for e in &entries {
            if !self.pmt_asm.iter().any(|(p, _)| *p == e.pid) {
                self.pmt_asm.push((e.pid, SectionAssembler::psi()));
            }
        }
        self.pmt_slot.fill(NO_PMT);
        for (k, (pid, _)) in self.pmt_asm.iter().enumerate() {
            // at most MAX_PROGRAMS (64) PMT PIDs: the index fits
            self.pmt_slot[usize::from(pid.value())] = k as u8;
        }
        self.psi_generation += 1;
        self.update_expected(limits);
    }

    fn on_pmt(&mut self, k: usize, pkt: &Packet, now: Instant, limits: &JudgeLimits) -> Ended {
        let pid = self.pmt_asm[k].0;
        let mut sections = std::mem::take(&mut self.scratch);
        sections.clear();
        self.pmt_asm[k].1.push(pkt, |r| {
            if let Ok(s) = r {
                if s.table_id() == TABLE_ID_PMT {
                    sections.extend_from_slice(s.bytes());
                }
            }
        });
        let mut ended = Ended::Nothing;
        let mut changed = false;
        for bytes in split_sections(&sections) {
            let Ok(s) = Section::parse(bytes, bytes.len()) else {
                continue;
            };
            let Ok(pmt) = Pmt::parse(&s) else {
                continue;
            };
            if !pmt.header.current_next {
                continue;
            }
            let Some(i) = self
                .programs
                .iter()
                .position(|p| p.number == pmt.program_number() && p.pmt_pid == pid)
            else {
                continue;
            };
            self.pmt_seen = Some(now);
            ended = Ended::Pmt(i);
            if self.programs[i].pmt != bytes {
                self.programs[i].pmt.clear();
                self.programs[i].pmt.extend_from_slice(bytes);
                changed = true;
            }
        }
        self.scratch = sections;
        if changed {
            self.psi_generation += 1;
            self.update_expected(limits);
        }
        ended
    }

    /// Mark the ES of the expected-clear services.
    fn update_expected(&mut self, limits: &JudgeLimits) {
        self.expect_clear.fill(false);
        for p in &self.programs {
            if !limits.services.is_empty() && !limits.services.contains(&p.number) {
                continue;
            }
            let Ok(s) = Section::parse(&p.pmt, p.pmt.len()) else {
                continue;
            };
            let Ok(pmt) = Pmt::parse(&s) else {
                continue;
            };
            for st in pmt.streams() {
                self.expect_clear[usize::from(st.elementary_pid.value())] = true;
            }
        }
    }

    /// Whether the input is on air now, and since when.
    pub fn on_air(&mut self, now: Instant, limits: &JudgeLimits) -> bool {
        let on = self.judge(now, limits);
        match (on, self.on_since) {
            (true, None) => self.on_since = Some(now),
            (false, Some(_)) => self.on_since = None,
            _ => {}
        }
        on
    }

    /// How long the input has been on air (as of the last [`Judge::on_air`]).
    pub fn on_air_for(&self, now: Instant) -> Duration {
        self.on_since
            .map_or(Duration::ZERO, |t| now.duration_since(t))
    }

    fn judge(&self, now: Instant, limits: &JudgeLimits) -> bool {
        let Some(last) = self.last_packet else {
            return false;
        };
        if now.duration_since(last) >= limits.timeout {
            return false;
        }
        // a PMT since it resumed, and its layout known
        if self.pmt_seen.is_none() || !self.psi_known() {
            return false;
        }
        let w = match self.last {
            Some(w) => w,
            // the first second: judged on what came so far, the bitrate not yet
            None if limits.min_bitrate == 0 => self.window,
            None => return false,
        };
        if limits.min_bitrate > 0 && w.bytes * 8 < limits.min_bitrate {
            return false;
        }
        if limits.max_cc_errors.is_some_and(|max| w.cc_errors > max) {
            return false;
        }
        if w.clear_expected > 0 && w.scrambled * 1000 > w.clear_expected * MAX_SCRAMBLED_PER_MILLE {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::psi_write::{write_pat, write_pmt};
    use crate::ts::{Descriptors, Packetizer, PmtStream, StreamType};

    fn limits() -> JudgeLimits {
        JudgeLimits {
            timeout: Duration::from_millis(200),
            min_bitrate: 0,
            max_cc_errors: Some(5),
            services: Vec::new(),
        }
    }

    fn psi() -> Vec<Packet> {
        let mut pat = Vec::new();
        write_pat(
            &mut pat,
            1,
            0,
            &[PatEntry {
                program_number: 7,
                pid: Pid::new(0x100),
            }],
        )
        .unwrap();
        let mut pmt = Vec::new();
        let none = Descriptors::new(&[]).unwrap();
        write_pmt(
            &mut pmt,
            7,
            0,
            Pid::new(0x101),
            &none,
            [PmtStream {
                stream_type: StreamType(0x1B),
                elementary_pid: Pid::new(0x101),
                descriptors: none,
            }],
        )
        .unwrap();
        let mut out = Vec::new();
        Packetizer::new(Pid::PAT)
            .packetize(&pat, |p| out.push(*p))
            .unwrap();
        Packetizer::new(Pid::new(0x100))
            .packetize(&pmt, |p| out.push(*p))
            .unwrap();
        out
    }

    fn es(cc: u8, scrambled: bool) -> Packet {
        let mut p = [0xFFu8; 188];
        p[..4].copy_from_slice(&[0x47, 0x01, 0x01, 0x10 | (cc & 0xF)]);
        if scrambled {
            p[3] |= 0x80;
        }
        p
    }

    #[test]
    fn on_air_needs_packets_and_a_pmt() {
        let l = limits();
        let mut j = Judge::new();
        let t0 = Instant::now();
        assert!(!j.on_air(t0, &l));
        j.observe(&es(0, false), t0, &l);
        assert!(!j.on_air(t0, &l), "no PMT yet");
        let mut ends = Vec::new();
        for p in psi() {
            ends.push(j.observe(&p, t0, &l));
        }
        assert_eq!(ends, [Ended::Pat, Ended::Pmt(0)]);
        assert!(j.on_air(t0, &l));
        assert_eq!(j.programs[0].number, 7);
        // silent for the timeout: off air, and on its return the PMT must come again
        let t1 = t0 + Duration::from_millis(300);
        assert!(!j.on_air(t1, &l));
        j.observe(&es(1, false), t1, &l);
        assert!(!j.on_air(t1, &l));
        for p in psi() {
            j.observe(&p, t1, &l);
        }
        assert!(j.on_air(t1, &l));
        assert_eq!(
            j.on_air_for(t1 + Duration::from_millis(50)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn scrambled_es_and_cc_errors_take_it_off_air() {
        let l = limits();
        let t0 = Instant::now();
        let mut j = Judge::new();
        for p in psi() {
            j.observe(&p, t0, &l);
        }
        for k in 0..20u8 {
            j.observe(&es(k, true), t0, &l);
        }
        assert!(!j.on_air(t0, &l), "its clear ES arrive scrambled");
        let mut j = Judge::new();
        for p in psi() {
            j.observe(&p, t0, &l);
        }
        // every other packet lost: a CC error each time
        for k in 0..20u8 {
            j.observe(&es(k * 2, false), t0, &l);
        }
        assert!(!j.on_air(t0, &l), "too many CC errors");
        let mut j = Judge::new();
        for p in psi() {
            j.observe(&p, t0, &l);
        }
        for k in 0..20u8 {
            j.observe(&es(k, false), t0, &l);
        }
        assert!(j.on_air(t0, &l));
    }

    #[test]
    fn a_minimum_bitrate_is_judged_on_a_whole_second() {
        let l = JudgeLimits {
            min_bitrate: 100_000,
            ..limits()
        };
        let t0 = Instant::now();
        let mut j = Judge::new();
        for p in psi() {
            j.observe(&p, t0, &l);
        }
        // 188 * 8 * 100 = 150 kbit in the first second, then a packet of the next
        for k in 0..100u8 {
            j.observe(
                &es(k, false),
                t0 + Duration::from_millis(u64::from(k) * 9),
                &l,
            );
        }
        assert!(!j.on_air(t0, &l), "no whole second yet");
        j.observe(&es(100, false), t0 + Duration::from_millis(1001), &l);
        assert!(j.on_air(t0 + Duration::from_millis(1001), &l));
        let l = JudgeLimits {
            min_bitrate: 1_000_000,
            ..l
        };
        assert!(!j.on_air(t0 + Duration::from_millis(1001), &l));
    }
}
