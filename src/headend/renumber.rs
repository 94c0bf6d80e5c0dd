//! One continuous stream out of several inputs: what a channel with backup inputs sends on
//! follows the channel's own numbering whatever input is active.
//!
//! - The numbering (transport_stream_id, programs, PMT PIDs, ES PIDs, PCR PIDs) is the
//!   first input's that was taken, and follows that input's changes.
//! - Another input is mapped onto it: programs by number (or the one program onto the one
//!   program), ES by kind and order (its second audio onto the second audio), PCR PID
//!   likewise. An ES with no counterpart keeps its PID unless that PID is taken, then it
//!   is dropped (counted) and left out of the PMT; one that keeps its PID waits (dropped,
//!   counted) until the regenerated PMT naming it has gone out.
//! - Fail closed: an input whose PAT and PMT are not known (since it started, or since it
//!   came back from a silence) has its ES dropped (counted) until they are: the scrambler
//!   after us must never judge them by the PMT of another input, or of the input before.
//! - The PAT and PMTs are regenerated under castmux's own version numbers, bumped only
//!   when their content changes, and sent where the input's sections end (the input's
//!   repetition rate), on continuity counters of castmux's own.
//! - Every other PID keeps its continuity counters continuous across a switch (an offset
//!   per PID, found at its first packet from the new input), and the first PCR after a
//!   switch carries the discontinuity_indicator (a new time base).

use crate::io::PacketBatch;
use crate::ts::packet::Packet;
use crate::ts::psi_write::{write_pat, write_pmt};
use crate::ts::section::Section;
use crate::ts::{EsKind, PacketRef, PatEntry, Pid, Pmt, PmtStream};

use super::judge::{Ended, Judge};

/// `map` value of a PID whose packets are dropped.
const DROP: u16 = 0xFFFF;
/// `map` value of a PSI PID we regenerate (the PAT, the input's PMT PIDs): its input packets
/// are replaced by ours.
const OURS: u16 = 0xFFFE;
/// `map` value of an ES PID that keeps its PID but waits (dropped, counted) for our PMT
/// naming it to go out first.
const HELD: u16 = 0xFFFD;
/// `Continuity` value: not known yet.
const UNKNOWN: u8 = 0x10;

/// The channel's own numbering of one program.
#[derive(Debug, Clone)]
struct LayoutProgram {
    number: u16,
    pmt_pid: Pid,
    pcr_pid: Option<Pid>,
    streams: Vec<(Class, Pid)>,
}

#[derive(Debug, Clone)]
struct Layout {
    /// The input it was taken from (it follows that input's changes).
    source: usize,
    tsid: u16,
    programs: Vec<LayoutProgram>,
}

/// What ES are matched by: kind (video, audio, subtitles, teletext, data; one not
/// recognised, by its stream_type too), then order within it. Fail closed: a stream only
/// takes the place of one of its own kind, whose PID the operator's settings
/// (`exclude_pid`, `only_pid`) treat as that kind (a backup's unknown stream landing on
/// the teletext PID an operator leaves clear would go out clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Kind(EsKind),
    Unknown(u8),
}

fn class(s: &PmtStream<'_>) -> Class {
    match s.kind() {
        EsKind::Other => Class::Unknown(s.stream_type.0),
        k => Class::Kind(k),
    }
}

/// Output continuity counters of PIDs whose packets come from inputs that may change
/// (another input, a remap): each output PID's counters continue where they were.
#[derive(Debug)]
pub(super) struct Continuity {
    /// Last continuity counter sent per output PID.
    last: Box<[u8]>,
    /// Per output PID, what is added to the input's counters.
    fix: Box<[u8]>,
}

impl Continuity {
    pub(super) fn new() -> Continuity {
        Continuity {
            last: vec![UNKNOWN; 8192].into_boxed_slice(),
            fix: vec![UNKNOWN; 8192].into_boxed_slice(),
        }
    }

    /// Every PID's offset is found again at its next packet (another input took over).
    pub(super) fn rebase_all(&mut self) {
        self.fix.fill(UNKNOWN);
    }

    /// Output PID `op`'s offset is found again at its next packet (it now carries another
    /// input PID).
    pub(super) fn rebase(&mut self, op: usize) {
        self.fix[op] = UNKNOWN;
    }

    /// Set the continuity_counter of `slot`, about to go out on output PID `op`.
    pub(super) fn restamp(&mut self, slot: &mut Packet, op: usize, has_payload: bool) {
        let cc = slot[3] & 0x0F;
        let fix = self.fix[op];
        let out_cc = if has_payload {
            let fix = if fix == UNKNOWN {
                let f = match self.last[op] {
                    UNKNOWN => 0,
                    last => (last + 1).wrapping_sub(cc) & 0x0F,
                };
                self.fix[op] = f;
                f
            } else {
                fix
            };
            let c = (cc + fix) & 0x0F;
            self.last[op] = c;
            c
        } else if fix != UNKNOWN {
            (cc + fix) & 0x0F
        } else if self.last[op] != UNKNOWN {
            // an adaptation-only packet repeats the last counter
            self.last[op]
        } else {
            cc
        };
        slot[3] = (slot[3] & 0xF0) | out_cc;
    }
}

/// The packetizers of the sections we generate, one per output PID (each owns its PID's
/// continuity counter).
#[derive(Debug, Default)]
pub(super) struct PsiOut {
    packetizers: Vec<crate::ts::Packetizer>,
}

impl PsiOut {
    /// Packetize section(s) `s` on `pid` into `out`; returns the packets that found no room.
    pub(super) fn emit(&mut self, pid: Pid, s: &[u8], out: &mut PacketBatch) -> u64 {
        let k = match self.packetizers.iter().position(|p| p.pid() == pid) {
            Some(k) => k,
            None => {
                self.packetizers.push(crate::ts::Packetizer::new(pid));
                self.packetizers.len() - 1
            }
        };
        let mut lost = 0u64;
        let _ = self.packetizers[k].packetize(s, |p| {
            if !out.push(p) {
                lost += 1;
            }
        });
        lost
    }
}

/// One regenerated table: its current section and version.
#[derive(Debug, Default)]
pub(super) struct OwnTable {
    /// 0: the PAT; 1 + output program number: a PMT; above 0x10000, the caller's.
    pub(super) key: u32,
    version: u8,
    section: Vec<u8>,
}

/// The continuity stage of a channel with backup inputs.
#[derive(Debug)]
pub struct Renumber {
    layout: Option<Layout>,
    /// Input PID -> output PID (`DROP`) for the active input.
    map: Box<[u16]>,
    cc: Continuity,
    /// Output PCR PIDs whose next PCR gets the discontinuity_indicator.
    pcr_disc: Vec<Pid>,
    /// The active input's PSI generation `map` was made from.
    generation: Option<u64>,
    active: usize,
    /// Our PAT, and our PMT per input program (index of the judge's programs).
    pat: Option<Vec<u8>>,
    pmts: Vec<Option<(Pid, Vec<u8>)>>,
    /// Versions and last content, by table (0: PAT, else 1 + output program number).
    tables: Vec<OwnTable>,
    /// Continuity counters of the PSI we packetize, per output PID.
    psi_out: PsiOut,
    /// Packets dropped: a PID with no place in the numbering, or no room in the batch.
    pub dropped: u64,
    /// The active input's ES are held (dropped): its PSI is not known since it started or
    /// came back.
    held: bool,
    /// (index of the input's program, ES PID): an ES with no counterpart in the numbering
    /// keeps its PID once our PMT for its program has gone out, not before.
    held_es: Vec<(usize, Pid)>,
}

impl Default for Renumber {
    fn default() -> Self {
        Renumber::new()
    }
}

impl Renumber {
    pub fn new() -> Renumber {
        Renumber {
            layout: None,
            map: {
                let mut map = vec![0u16; 8192].into_boxed_slice();
                reset_map(&mut map);
                map
            },
            cc: Continuity::new(),
            pcr_disc: Vec::new(),
            generation: None,
            active: 0,
            pat: None,
            pmts: Vec::new(),
            tables: Vec::new(),
            psi_out: PsiOut::default(),
            dropped: 0,
            held: false,
            held_es: Vec::new(),
        }
    }

    /// Input `active` takes over: counters continue, the next PCR starts a new time base.
    pub fn switch(&mut self, active: usize) {
        self.active = active;
        self.cc.rebase_all();
        // the next packet remaps (and regenerates the PAT and PMTs) for this input
        self.generation = None;
        self.pcr_disc = self
            .layout
            .iter()
            .flat_map(|l| l.programs.iter().filter_map(|p| p.pcr_pid))
            .collect();
    }

    /// Send one packet of the active input (whose judge saw it and said what it ended)
    /// into `out`, renumbered.
    pub fn process(&mut self, pkt: &Packet, ended: Ended, judge: &Judge, out: &mut PacketBatch) {
        // a new PSI, or the input's PMT seen again after a silence (or not since it)
        if self.generation != Some(judge.psi_generation)
            || self.held == judge.pmt_seen_since_resume()
        {
            self.remap(judge);
        }
        let r = PacketRef::new(pkt);
        let pid = r.pid();
        let o = self.map[usize::from(pid.value())];
        if o == OURS {
            match ended {
                Ended::Pat => {
                    if let Some(s) = self.pat.take() {
                        self.emit(Pid::PAT, &s, out);
                        self.pat = Some(s);
                    }
                }
                Ended::Pmt(i) => {
                    if let Some(Some((out_pid, s))) = self.pmts.get_mut(i).map(Option::take) {
                        self.emit(out_pid, &s, out);
                        self.pmts[i] = Some((out_pid, s));
                        // the ES it names that kept their PIDs may follow it now
                        let map = &mut self.map;
                        self.held_es.retain(|&(k, pid)| {
                            if k == i {
                                map[usize::from(pid.value())] = pid.value();
                            }
                            k != i
                        });
                    }
                }
                Ended::Nothing => {}
            }
            return;
        }
        if o == DROP || o == HELD {
            self.dropped += 1;
            return;
        }
        let Some(slot) = out.push_slot() else {
            self.dropped += 1;
            return;
        };
        *slot = *pkt;
        let op = usize::from(o);
        if o != pid.value() {
            slot[1] = (slot[1] & 0xE0) | (o >> 8) as u8;
            slot[2] = o as u8;
        }
        self.cc.restamp(slot, op, r.has_payload());
        if !self.pcr_disc.is_empty() {
            if let Some(k) = self.pcr_disc.iter().position(|p| p.value() == o) {
                if PacketRef::new(slot).pcr().is_some() {
                    // flags byte of the adaptation field (a PCR means one is there)
                    slot[5] |= 0x80;
                    self.pcr_disc.swap_remove(k);
                }
            }
        }
    }

    /// Packetize our section `s` on `pid` into `out`, on our own counters.
    fn emit(&mut self, pid: Pid, s: &[u8], out: &mut PacketBatch) {
        self.dropped += self.psi_out.emit(pid, s, out);
    }

    /// The active input's PSI changed (or it just took over): take or follow the numbering,
    /// map the input onto it, and regenerate the PAT and PMTs.
    fn remap(&mut self, judge: &Judge) {
        self.generation = Some(judge.psi_generation);
        // nothing of the last input's mapping carries over
        reset_map(&mut self.map);
        self.pat = None;
        self.pmts.clear();
        self.held_es.clear();
        // fail closed: nothing is known of this input's ES yet (a pinned input, the slate's
        // first loop, an input back from a silence, whose layout may have changed), and the
        // scrambler after us would judge them by the PSI it last saw, which may call their
        // PIDs clear: they are dropped (counted) until its PAT and a PMT are in
        self.held = !judge.psi_known() || !judge.pmt_seen_since_resume();
        if self.held {
            map_held(&mut self.map);
            return;
        }
        let follows = self.layout.as_ref().is_none_or(|l| l.source == self.active);
        if follows {
            self.layout = Some(layout_of(judge, self.active));
        }
        let Some(layout) = self.layout.clone() else {
            return;
        };
        // what each input program becomes: (output number, output PMT PID, layout program)
        let single = layout.programs.len() == 1 && judge.programs.len() == 1;
        let mut explicit = vec![false; 8192];
        let mut targets = vec![false; 8192];
        let mut out_programs: Vec<(u16, Pid)> = Vec::with_capacity(judge.programs.len());
        for ip in &judge.programs {
            let lp = layout
                .programs
                .iter()
                .find(|p| p.number == ip.number)
                .or_else(|| single.then(|| &layout.programs[0]));
            let Some(lp) = lp else {
                out_programs.push((ip.number, ip.pmt_pid));
                continue;
            };
            set(
                &mut self.map,
                &mut explicit,
                &mut targets,
                ip.pmt_pid,
                lp.pmt_pid,
            );
            out_programs.push((lp.number, lp.pmt_pid));
            let Ok(s) = Section::parse(&ip.pmt, ip.pmt.len()) else {
                continue;
            };
            let Ok(pmt) = Pmt::parse(&s) else {
                continue;
            };
            let mut taken = Vec::new();
            for st in pmt.streams() {
                let c = class(&st);
                let k = taken.iter().filter(|t| **t == c).count();
                taken.push(c);
                if let Some((_, to)) = lp.streams.iter().filter(|(lc, _)| *lc == c).nth(k) {
                    set(
                        &mut self.map,
                        &mut explicit,
                        &mut targets,
                        st.elementary_pid,
                        *to,
                    );
                }
            }
            if let Some(to) = lp.pcr_pid {
                if !explicit[usize::from(pmt.pcr_pid.value())] {
                    set(&mut self.map, &mut explicit, &mut targets, pmt.pcr_pid, to);
                }
            }
        }
        // a PID left as it is must not land on one another PID was mapped to
        for k in 0..8192 {
            if !explicit[k] && targets[k] && k != usize::from(Pid::NULL.value()) {
                self.map[k] = DROP;
            }
        }
        // our PAT
        let mut entries: Vec<PatEntry> = Vec::new();
        for (number, pid) in &out_programs {
            if !entries.iter().any(|e| e.program_number == *number) {
                entries.push(PatEntry {
                    program_number: *number,
                    pid: *pid,
                });
            }
        }
        let tsid = layout.tsid;
        self.pat = own_table(&mut self.tables, 0, |out, v| {
            write_pat(out, tsid, v, &entries).is_ok()
        });
        // our PMTs
        for (i, (ip, (number, pmt_pid))) in judge.programs.iter().zip(&out_programs).enumerate() {
            let Ok(s) = Section::parse(&ip.pmt, ip.pmt.len()) else {
                self.pmts.push(None);
                continue;
            };
            let Ok(pmt) = Pmt::parse(&s) else {
                self.pmts.push(None);
                continue;
            };
            let map = &self.map;
            let pcr = out_pid(map, pmt.pcr_pid).unwrap_or(Pid::NULL);
            let section = own_table(&mut self.tables, 1 + u32::from(*number), |out, v| {
                let streams = pmt.streams().filter_map(|st| {
                    out_pid(map, st.elementary_pid).map(|p| PmtStream {
                        elementary_pid: p,
                        ..st
                    })
                });
                write_pmt(out, *number, v, pcr, &pmt.descriptors, streams).is_ok()
            });
            self.pmts.push(section.map(|s| (*pmt_pid, s)));
            // fail closed: an ES of another input that keeps its PID (no counterpart in
            // the numbering, or a program the numbering lacks) waits for this PMT naming
            // it; until then the scrambler after us would judge its PID by the last PMT it
            // saw, which may call it clear. (The input that gives the numbering maps every
            // ES itself.)
            for pid in pmt.streams().map(|st| st.elementary_pid) {
                let k = usize::from(pid.value());
                if !explicit[k]
                    && self.map[k] == pid.value()
                    && pid.value() > 0x1F
                    && pid != Pid::NULL
                {
                    self.map[k] = HELD;
                    self.held_es.push((i, pid));
                }
            }
        }
        // the input's PMT PIDs carry our PMTs from now on
        for ip in &judge.programs {
            self.map[usize::from(ip.pmt_pid.value())] = OURS;
        }
    }
}

/// Build table `key` (0: the PAT; 1 + program number: a PMT; the caller's own keys above
/// 0x10000) with `write(out, version)`: the last version when the content is the same, the
/// next one (mod 32) when it changed.
pub(super) fn own_table(
    tables: &mut Vec<OwnTable>,
    key: u32,
    write: impl Fn(&mut Vec<u8>, u8) -> bool,
) -> Option<Vec<u8>> {
    let k = match tables.iter().position(|t| t.key == key) {
        Some(k) => k,
        None => {
            tables.push(OwnTable {
                key,
                version: 0,
                section: Vec::new(),
            });
            tables.len() - 1
        }
    };
    let t = &mut tables[k];
    let mut s = Vec::new();
    if !write(&mut s, t.version) {
        return None;
    }
    if s != t.section {
        if !t.section.is_empty() {
            t.version = (t.version + 1) & 0x1F;
            s.clear();
            if !write(&mut s, t.version) {
                return None;
            }
        }
        t.section = s.clone();
    }
    Some(s)
}

/// What input PID `pid` goes out as, while the PMTs are written (before the input's PMT
/// PIDs are marked ours): None when it is dropped.
fn out_pid(map: &[u16], pid: Pid) -> Option<Pid> {
    match map[usize::from(pid.value())] {
        DROP => None,
        // only the PAT's PID is ours at this point
        OURS => Some(Pid::PAT),
        // (an ES another program's PMT names too: it keeps its PID)
        HELD => Some(pid),
        p => Some(Pid::new(p)),
    }
}

/// Every PID as it is, but the PAT, which is ours.
fn reset_map(map: &mut [u16]) {
    map.iter_mut().enumerate().for_each(|(k, m)| *m = k as u16);
    map[usize::from(Pid::PAT.value())] = OURS;
}

/// Every PID but the PSI range and the null PID dropped.
fn map_held(map: &mut [u16]) {
    for (k, m) in map.iter_mut().enumerate() {
        if k > 0x1F && k != usize::from(Pid::NULL.value()) {
            *m = DROP;
        }
    }
}

/// Map input PID `from` to output PID `to`.
fn set(map: &mut [u16], explicit: &mut [bool], targets: &mut [bool], from: Pid, to: Pid) {
    let f = usize::from(from.value());
    if explicit[f] {
        return;
    }
    map[f] = to.value();
    explicit[f] = true;
    targets[usize::from(to.value())] = true;
}

/// The numbering of `judge`'s input.
fn layout_of(judge: &Judge, source: usize) -> Layout {
    let programs = judge
        .programs
        .iter()
        .map(|ip| {
            let parsed = Section::parse(&ip.pmt, ip.pmt.len()).ok().and_then(|s| {
                Pmt::parse(&s).ok().map(|p| {
                    (
                        p.pcr_pid,
                        p.streams()
                            .map(|st| (class(&st), st.elementary_pid))
                            .collect(),
                    )
                })
            });
            let (pcr_pid, streams) = match parsed {
                Some((pcr, streams)) => (Some(pcr), streams),
                None => (None, Vec::new()),
            };
            LayoutProgram {
                number: ip.number,
                pmt_pid: ip.pmt_pid,
                pcr_pid,
                streams,
            }
        })
        .collect();
    Layout {
        source,
        tsid: judge.tsid,
        programs,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::headend::judge::JudgeLimits;
    use crate::ts::psi_write::{write_pat, write_pmt};
    use crate::ts::{Descriptors, Packetizer, Pat, StreamType};

    fn limits() -> JudgeLimits {
        JudgeLimits {
            timeout: Duration::from_secs(1),
            min_bitrate: 0,
            max_cc_errors: None,
            services: Vec::new(),
        }
    }

    /// The PAT (program `number` on `pmt`, transport_stream_id 77) and PMT (PCR on `pcr`,
    /// `streams` as (stream_type, PID, ES_info descriptors)) of an input, in packets whose
    /// counters start at `cc0`.
    fn psi(
        number: u16,
        pmt: u16,
        pcr: u16,
        streams: &[(u8, u16, &[u8])],
        version: u8,
        cc0: u8,
    ) -> Vec<Packet> {
        let none = Descriptors::new(&[]).unwrap();
        let mut pat = Vec::new();
        let entry = PatEntry {
            program_number: number,
            pid: Pid::new(pmt),
        };
        write_pat(&mut pat, 77, version, &[entry]).unwrap();
        let mut pmt_s = Vec::new();
        write_pmt(
            &mut pmt_s,
            number,
            version,
            Pid::new(pcr),
            &none,
            streams.iter().map(|(t, pid, desc)| PmtStream {
                stream_type: StreamType(*t),
                elementary_pid: Pid::new(*pid),
                descriptors: Descriptors::new(desc).unwrap(),
            }),
        )
        .unwrap();
        let mut out = Vec::new();
        Packetizer::with_cc(Pid::PAT, crate::ts::ContinuityCounter::new(cc0))
            .packetize(&pat, |p| out.push(*p))
            .unwrap();
        Packetizer::with_cc(Pid::new(pmt), crate::ts::ContinuityCounter::new(cc0))
            .packetize(&pmt_s, |p| out.push(*p))
            .unwrap();
        out
    }

    /// An input: PAT (program `number` on `pmt`), PMT (video `v`, audio `a`, PCR on the
    /// video), then `n` ES packets alternating video/audio with a PCR on every fourth,
    /// counters starting at `cc0`.
    fn input(number: u16, pmt: u16, v: u16, a: u16, version: u8, cc0: u8, n: usize) -> Vec<Packet> {
        let mut out = psi(
            number,
            pmt,
            v,
            &[(0x02, v, &[]), (0x03, a, &[])],
            version,
            cc0,
        );
        for k in 0..n {
            let pid = if k % 2 == 0 { v } else { a };
            let cc = (cc0 as usize + k / 2) as u8 & 0x0F;
            let mut p = [0xAAu8; 188];
            if k % 8 == 0 {
                // adaptation field with a PCR, then payload
                p[..4].copy_from_slice(&[0x47, (pid >> 8) as u8, pid as u8, 0x30 | cc]);
                p[4] = 7;
                p[5] = 0x10;
                p[6..12].copy_from_slice(&[0, 0, 0, 1, 0x7E, 0]);
            } else {
                p[..4].copy_from_slice(&[0x47, (pid >> 8) as u8, pid as u8, 0x10 | cc]);
            }
            out.push(p);
        }
        out
    }

    fn run(r: &mut Renumber, j: &mut Judge, pkts: &[Packet], out: &mut Vec<Packet>) {
        let now = Instant::now();
        let mut batch = PacketBatch::with_capacity(pkts.len() + 16);
        for p in pkts {
            let e = j.observe(p, now, &limits());
            r.process(p, e, j, &mut batch);
        }
        out.extend_from_slice(batch.packets());
    }

    fn pid_of(p: &Packet) -> u16 {
        PacketRef::new(p).pid().value()
    }

    #[test]
    fn a_backup_is_mapped_onto_the_primary_numbering_with_continuous_counters() {
        let mut r = Renumber::new();
        let (mut j0, mut j1) = (Judge::new(), Judge::new());
        let mut out = Vec::new();
        run(
            &mut r,
            &mut j0,
            &input(1, 0x1000, 0x100, 0x101, 3, 5, 40),
            &mut out,
        );
        // the backup: another program number, PMT PID, ES PIDs (swapped), versions, counters
        let backup = input(9, 0x1200, 0x101, 0x300, 17, 11, 40);
        r.switch(1);
        run(&mut r, &mut j1, &backup, &mut out);
        r.switch(0);
        run(
            &mut r,
            &mut j0,
            &input(1, 0x1000, 0x100, 0x101, 3, 9, 40),
            &mut out,
        );

        let pids: std::collections::BTreeSet<u16> = out.iter().map(pid_of).collect();
        assert_eq!(
            pids.into_iter().collect::<Vec<_>>(),
            [0, 0x100, 0x101, 0x1000]
        );
        // every PID's counters continue across both switches
        let mut last = [None::<u8>; 8192];
        for p in &out {
            let r = PacketRef::new(p);
            let pid = usize::from(r.pid().value());
            let cc = r.cc().value();
            if let Some(l) = last[pid] {
                assert_eq!(cc, (l + 1) & 0x0F, "PID {pid:#x}");
            }
            last[pid] = Some(cc);
        }
        // the backup's video (0x101 there) went out on the primary's video PID with its
        // payload, its audio on the primary's audio PID
        let first_backup_es = out.iter().position(|p| p[4..] == backup[2][4..]).unwrap();
        assert_eq!(pid_of(&out[first_backup_es]), 0x100);
        // one PAT and one PMT content and version throughout
        let mut pats = std::collections::BTreeSet::new();
        let mut pmts = std::collections::BTreeSet::new();
        let mut asm = (
            crate::ts::SectionAssembler::psi(),
            crate::ts::SectionAssembler::psi(),
        );
        for p in &out {
            match pid_of(p) {
                0 => asm.0.push(p, |s| {
                    let s = s.unwrap();
                    let pat = Pat::parse(&s).unwrap();
                    assert_eq!(pat.transport_stream_id(), 77);
                    pats.insert(s.bytes().to_vec());
                }),
                0x1000 => asm.1.push(p, |s| {
                    let s = s.unwrap();
                    let pmt = Pmt::parse(&s).unwrap();
                    assert_eq!(pmt.program_number(), 1);
                    assert_eq!(pmt.pcr_pid, Pid::new(0x100));
                    pmts.insert(s.bytes().to_vec());
                }),
                _ => {}
            }
        }
        assert_eq!(
            (pats.len(), pmts.len()),
            (1, 1),
            "one PAT and one PMT, same version"
        );
        // a new time base after each switch, on the PCR PID
        let disc = out
            .iter()
            .filter(|p| PacketRef::new(p).discontinuity())
            .map(pid_of)
            .collect::<Vec<_>>();
        assert_eq!(disc, [0x100, 0x100]);
        assert_eq!(r.dropped, 0);
    }

    #[test]
    fn an_es_that_keeps_its_pid_waits_for_our_pmt_naming_it() {
        let mut r = Renumber::new();
        let (mut j0, mut j1) = (Judge::new(), Judge::new());
        let mut out = Vec::new();
        run(
            &mut r,
            &mut j0,
            &input(1, 0x1000, 0x100, 0x101, 0, 0, 4),
            &mut out,
        );
        // the backup: video 0x200, audio 0x201 and a second audio 0x202 with no
        // counterpart in the numbering; its judge has seen its PSI
        let backup = input(1, 0x1000, 0x200, 0x201, 0, 0, 2);
        let three: &[(u8, u16, &[u8])] =
            &[(0x02, 0x200, &[]), (0x03, 0x201, &[]), (0x03, 0x202, &[])];
        // the PMT twice, on counters that go on
        let first_pmt = psi(1, 0x1000, 0x200, three, 0, 0)[1..].to_vec();
        let pmt_pkts = psi(1, 0x1000, 0x200, three, 0, 1)[1..].to_vec();
        let now = Instant::now();
        j1.observe(&backup[0], now, &limits());
        for p in &first_pmt {
            j1.observe(p, now, &limits());
        }
        r.switch(1);
        let mut second_audio = [0xAAu8; 188];
        second_audio[..4].copy_from_slice(&[0x47, 0x02, 0x02, 0x10]);
        let mut got = Vec::new();
        // before our PMT goes out: held (the video and first audio map onto ours)
        run(&mut r, &mut j1, &[second_audio, backup[2]], &mut got);
        assert_eq!(got.iter().map(pid_of).collect::<Vec<_>>(), [0x100]);
        // the backup's PMT ends: ours goes out naming 0x202, and 0x202 follows it
        got.clear();
        run(&mut r, &mut j1, &pmt_pkts, &mut got);
        run(&mut r, &mut j1, &[second_audio], &mut got);
        assert_eq!(got.iter().map(pid_of).collect::<Vec<_>>(), [0x1000, 0x202]);
        let ours = Section::parse(&got[0][5..], 183).unwrap();
        let pmt = Pmt::parse(&ours).unwrap();
        let pids: Vec<u16> = pmt.streams().map(|s| s.elementary_pid.value()).collect();
        assert_eq!(pids, [0x100, 0x101, 0x202]);
    }

    #[test]
    fn a_stream_takes_the_place_of_one_of_its_own_kind_only() {
        // the primary: video 0x100 and teletext 0x102; the backup: video 0x200 and an AV1
        // stream (0x06, registration AV01: a kind castmux does not know) on 0x202
        let pmt_pkts = |pmt_pid: u16, v: u16, other: u16, other_desc: &[u8], cc: u8| {
            psi(
                1,
                pmt_pid,
                v,
                &[(0x02, v, &[]), (0x06, other, other_desc)],
                0,
                cc,
            )
        };
        let teletext = [0x56, 5, b'e', b'n', b'g', 0x09, 0x00];
        let av1 = [0x05, 4, b'A', b'V', b'0', b'1'];
        let mut r = Renumber::new();
        let (mut j0, mut j1) = (Judge::new(), Judge::new());
        let mut out = Vec::new();
        run(
            &mut r,
            &mut j0,
            &pmt_pkts(0x1000, 0x100, 0x102, &teletext, 0),
            &mut out,
        );
        let backup = pmt_pkts(0x1000, 0x200, 0x202, &av1, 0);
        let now = Instant::now();
        for p in &backup {
            j1.observe(p, now, &limits());
        }
        r.switch(1);
        let mut av1_pkt = [0xAAu8; 188];
        av1_pkt[..4].copy_from_slice(&[0x47, 0x02, 0x02, 0x10]);
        let mut got = Vec::new();
        run(&mut r, &mut j1, &[av1_pkt], &mut got);
        // not on the teletext PID (an operator may leave it clear); it keeps its own PID,
        // once our PMT names it
        assert!(
            got.iter().all(|p| pid_of(p) != 0x102),
            "{:x?}",
            got.iter().map(pid_of).collect::<Vec<_>>()
        );
        assert!(got.is_empty());
    }

    #[test]
    fn an_input_with_no_psi_yet_is_not_mapped_by_the_last_ones_map() {
        let mut r = Renumber::new();
        let (mut j0, mut j1, mut j2) = (Judge::new(), Judge::new(), Judge::new());
        let mut out = Vec::new();
        run(
            &mut r,
            &mut j0,
            &input(1, 0x1000, 0x100, 0x101, 0, 0, 4),
            &mut out,
        );
        // the backup maps its 0x101 onto the primary's 0x100
        r.switch(1);
        run(
            &mut r,
            &mut j1,
            &input(1, 0x1000, 0x101, 0x300, 0, 0, 4),
            &mut out,
        );
        // a third input, pinned before its PSI came: its ES are dropped (counted) until
        // its PAT and PMT are in, not sent under the last input's PSI; then mapped
        r.switch(2);
        let third = input(1, 0x1000, 0x101, 0x300, 0, 0, 2);
        let dropped = r.dropped;
        let mut got = Vec::new();
        run(&mut r, &mut j2, &third[2..], &mut got);
        assert!(
            got.is_empty(),
            "{:x?}",
            got.iter().map(pid_of).collect::<Vec<_>>()
        );
        assert_eq!(r.dropped, dropped + 2);
        run(&mut r, &mut j2, &third, &mut got);
        let es: Vec<u16> = got
            .iter()
            .map(pid_of)
            .filter(|p| *p >= 0x100 && *p < 0x1000)
            .collect();
        assert_eq!(es, [0x100, 0x101]);

        // the input falls silent past the judge's timeout and comes back: its ES wait for
        // its PMT again (its layout may have changed meanwhile)
        let later = Instant::now() + Duration::from_secs(3);
        let mut batch = PacketBatch::with_capacity(16);
        let dropped = r.dropped;
        for p in &third[2..] {
            let e = j2.observe(p, later, &limits());
            r.process(p, e, &j2, &mut batch);
        }
        assert_eq!(batch.packets().len(), 0);
        assert_eq!(r.dropped, dropped + 2);
        for p in &third {
            let e = j2.observe(p, later, &limits());
            r.process(p, e, &j2, &mut batch);
        }
        let es: Vec<u16> = batch
            .packets()
            .iter()
            .map(pid_of)
            .filter(|p| *p >= 0x100 && *p < 0x1000)
            .collect();
        assert_eq!(es, [0x100, 0x101]);
    }
}
