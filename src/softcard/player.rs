//! The software card's player: a descrambling stage whose control words come from the
//! ECMs in the stream, answered by a card ([`CwSource`]: the local [`SoftCard`] or a
//! newcamd server). It finds the ECM PID in the PMTs and the EMM PID in the CAT (the
//! CA_descriptors of the card's CA_system_ID), hands new ECM and EMM sections to the
//! source, and descrambles with whatever keys it has; a packet whose key it does not have
//! stays scrambled and is counted. Nothing is ever sent in clear that was not descrambled.
//!
//! # Which key goes where
//!
//! An ECM of period N carries CW(N) and CW(N+1). When it arrives while period N-1 is still
//! on air (a scrambler with negative delay_start sends it early), its CW(N+1) would land
//! in the key slot still in use, so only the slot of the ECM's own parity is set then;
//! the other is set when the stream's parity flips to the ECM's parity.
//!
//! # Start-up hold
//!
//! A remote card answers after a network round trip, so the first scrambled packets would
//! go out still scrambled and a viewer would lose the stream's first GOP (its SPS/PPS).
//! Until the card's first answer or refusal, the stage ([`PacketStage`]) holds its output
//! back, at most [`HOLD_MAX_TIME`] and [`HOLD_MAX_BYTES`]; on the answer, the held packets
//! of the run of the current parity are descrambled with the key now known and sent.
//! Packets of an earlier period stay scrambled: the answer's keys are not theirs.
//!
//! # Inputs that are not live
//!
//! A file or a pipe is read as fast as it goes, far faster than a remote card answers;
//! the player would reach the next crypto period before the answer for it came. With
//! [`CardPlayer::wait_for_answers`] (set for every input that is not live) the player
//! stops at each ECM it hands over until the card answers it, at most [`ANSWER_WAIT`].
//! A live input cannot wait; what it could not descramble is counted in `no_key`.
//!
//! # CW reduction
//!
//! CAMs use CSA2 CWs with bytes 3 and 7 set to the checksums of the bytes before them,
//! whatever the ECM carried ([`CwReduction`]); the player does the same to every answer
//! (a CW that has its checksums is unchanged), unless told to use full 64-bit keys.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use csa::{Algorithm, KeyContext, Parity};
use serde::Serialize;

use super::card::{CwReduction, EmmOutcome, SoftCard};
use crate::cas::Refusal;
use crate::io::PacketBatch;
use crate::scramble::cw::Cw;
use crate::scramble::{PacketStage, ScrambleError};
use crate::ts::packet::{Packet, PACKET_SIZE};
use crate::ts::psi::{TABLE_ID_PAT, TABLE_ID_PMT};
use crate::ts::section::split_sections;
use crate::ts::{Cat, PacketRef, Pat, Pid, Pmt, Section, SectionAssembler};

/// Longest the output is held back waiting for the card's first answer.
pub const HOLD_MAX_TIME: Duration = Duration::from_secs(2);
/// Most bytes held back waiting for the card's first answer.
pub const HOLD_MAX_BYTES: usize = 4 << 20;
/// Longest a player on a non-live input waits for the card's answer to one ECM: longer
/// than a newcamd reconnect (login within 5 s), short enough that a dead server is
/// reported instead of hanging the run.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// What a card said about an ECM.
#[derive(Debug)]
pub enum CwAnswer {
    /// The control words of the ECM's period (`parity`) and the next.
    Cws {
        /// Parity of the ECM's crypto period.
        parity: Parity,
        /// The even CW.
        even: Cw,
        /// The odd CW.
        odd: Cw,
    },
    /// The card refused (not entitled, expired, ...).
    Refused {
        /// Why, for the log.
        why: String,
        /// The card took the ECM for a replay (an older ECM than the one it holds).
        replay: bool,
    },
}

impl CwAnswer {
    /// A refusal that is not a replay.
    pub fn refused(why: impl Into<String>) -> CwAnswer {
        CwAnswer::Refused {
            why: why.into(),
            replay: false,
        }
    }
}

/// Answers ECMs and takes EMMs. Must not block: a remote card answers later, through
/// [`CwSource::poll`].
pub trait CwSource: Send {
    /// A new ECM section arrived. True if it was taken: exactly one answer will follow.
    /// False if it was dropped (a full queue): no answer comes for it.
    fn submit_ecm(&mut self, section: &[u8], now: i64) -> bool;
    /// An EMM section arrived.
    fn submit_emm(&mut self, section: &[u8], now: i64);
    /// The next answer, if one is ready.
    fn poll(&mut self) -> Option<CwAnswer>;
    /// The next answer, waiting at most `timeout` for it.
    fn wait(&mut self, timeout: Duration) -> Option<CwAnswer> {
        let _ = timeout;
        self.poll()
    }
    /// The service (program_number) whose ECMs follow (a card server limits services).
    fn set_service(&mut self, _service_id: u16) {}
}

/// The card in this process: answers at once.
#[derive(Debug)]
pub struct LocalCard {
    card: SoftCard,
    /// Where to save the card after an EMM changed it.
    save_to: Option<PathBuf>,
    answers: VecDeque<CwAnswer>,
    /// EMMs applied, and refused.
    pub emms_applied: u64,
    /// EMMs the card refused.
    pub emms_refused: u64,
}

impl LocalCard {
    /// Use `card`, saving it to `save_to` after each EMM that changes it.
    pub fn new(card: SoftCard, save_to: Option<PathBuf>) -> Self {
        LocalCard {
            card,
            save_to,
            answers: VecDeque::with_capacity(4),
            emms_applied: 0,
            emms_refused: 0,
        }
    }

    /// The card.
    pub fn card(&self) -> &SoftCard {
        &self.card
    }
}

impl CwSource for LocalCard {
    fn submit_ecm(&mut self, section: &[u8], now: i64) -> bool {
        let answer = match self.card.process_ecm(section, now) {
            Ok(a) => CwAnswer::Cws {
                parity: a.parity,
                even: a.even,
                odd: a.odd,
            },
            Err(r) => CwAnswer::Refused {
                why: r.to_string(),
                replay: r == Refusal::Replay,
            },
        };
        // the player takes the answer right after submitting; the bound is a guard
        if self.answers.len() >= 4 {
            self.answers.pop_front();
        }
        self.answers.push_back(answer);
        true
    }

    fn submit_emm(&mut self, section: &[u8], now: i64) {
        match self
            .card
            .process_emm_and_save(section, now, self.save_to.as_deref())
        {
            Ok(EmmOutcome::Applied) => self.emms_applied += 1,
            Ok(_) => {}
            Err(r) => {
                self.emms_refused += 1;
                if !matches!(r, Refusal::Replay) {
                    tracing::debug!(refusal = %r, "EMM refused");
                }
            }
        }
    }

    fn poll(&mut self) -> Option<CwAnswer> {
        self.answers.pop_front()
    }
}

/// Counters of the player.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlayerCounters {
    /// Packets in.
    pub packets: u64,
    /// Scrambled packets descrambled.
    pub descrambled: u64,
    /// Scrambled packets left scrambled: no key for their parity.
    pub no_key: u64,
    /// Clear packets passed.
    pub clear: u64,
    /// New ECM sections handed to the card.
    pub ecms: u64,
    /// EMM sections handed to the card.
    pub emms: u64,
    /// CW answers applied.
    pub answers: u64,
    /// ECMs the card refused.
    pub refusals: u64,
    /// Of those, ECMs refused as replays (older than the ECM the card holds for their
    /// parity, or outside its time window): the keys in use were kept.
    pub replays_refused: u64,
    /// ECMs handed to the card and dropped on the way (its queue was full): never answered.
    pub ecms_dropped: u64,
    /// ECMs a non-live input waited [`ANSWER_WAIT`] for without an answer.
    pub answer_timeouts: u64,
    /// The last refusal, if any.
    pub last_refusal: Option<String>,
    /// Parity flips seen on the scrambled PIDs.
    pub parity_flips: u64,
    /// The service whose ECMs are followed.
    pub service: Option<u16>,
    /// The ECM PID found.
    pub ecm_pid: Option<u16>,
    /// The EMM PID found.
    pub emm_pid: Option<u16>,
    /// Packets held back at start-up and descrambled once the first answer came (they
    /// are also in `descrambled`).
    pub held_descrambled: u64,
    /// 1 if the start-up hold gave up (no answer within its time or size) and sent the
    /// held packets as they were.
    pub hold_timeouts: u64,
}

/// Descrambles with CWs from a card.
pub struct CardPlayer {
    source: Box<dyn CwSource>,
    ca_system_id: u16,
    ctx: KeyContext,
    have: [bool; 2],
    last: Option<(Parity, Cw, Cw)>,
    parity: Option<Parity>,
    pat: SectionAssembler,
    pmt_pids: Vec<(Pid, SectionAssembler)>,
    cat: SectionAssembler,
    ecm_pid: Option<Pid>,
    ecm: SectionAssembler,
    last_ecm: Vec<u8>,
    emm_pid: Option<Pid>,
    emm: SectionAssembler,
    sections: Vec<u8>,
    sel: Vec<bool>,
    counters: PlayerCounters,
    /// Still in the start-up hold (see the module docs).
    holding: bool,
    held: Vec<u8>,
    held_since: Option<Instant>,
    /// Wait for the answer to each ECM (inputs that are not live).
    wait: bool,
    /// ECMs handed over whose answer has not come yet.
    pending: u32,
    reduction: CwReduction,
    algorithm: Algorithm,
}

impl std::fmt::Debug for CardPlayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardPlayer")
            .field("ca_system_id", &self.ca_system_id)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn parity_index(p: Parity) -> usize {
    match p {
        Parity::Even => 0,
        Parity::Odd => 1,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl CardPlayer {
    /// A player for `algorithm` taking CWs from `source` for ECMs of `ca_system_id`.
    pub fn new(
        algorithm: Algorithm,
        ca_system_id: u16,
        source: Box<dyn CwSource>,
    ) -> Result<Self, ScrambleError> {
        let zero = vec![0u8; algorithm.key_len()];
        Ok(CardPlayer {
            source,
            ca_system_id,
            ctx: KeyContext::from_bytes(algorithm, &zero, &zero)?,
            have: [false; 2],
            last: None,
            parity: None,
            pat: SectionAssembler::psi(),
            pmt_pids: Vec::new(),
            cat: SectionAssembler::psi(),
            ecm_pid: None,
            ecm: SectionAssembler::private(),
            last_ecm: Vec::new(),
            emm_pid: None,
            emm: SectionAssembler::private(),
            sections: Vec::with_capacity(4096),
            sel: Vec::with_capacity(1024),
            counters: PlayerCounters::default(),
            holding: true,
            held: Vec::new(),
            held_since: None,
            wait: false,
            pending: 0,
            reduction: CwReduction::default(),
            algorithm,
        })
    }

    /// Wait for the card's answer to each ECM before going on (for inputs that are not
    /// live; see the module docs). Default off.
    pub fn wait_for_answers(&mut self, wait: bool) {
        self.wait = wait;
    }

    /// How CSA2 CWs from the card become keys (default [`CwReduction::Reduce`]).
    pub fn set_cw_reduction(&mut self, r: CwReduction) {
        self.reduction = r;
    }

    /// The counters so far.
    pub fn counters(&self) -> &PlayerCounters {
        &self.counters
    }

    /// The parity of the scrambled packets now.
    pub fn parity(&self) -> Option<Parity> {
        self.parity
    }

    /// Whether the key of `parity` is known.
    pub fn has_key(&self, parity: Parity) -> bool {
        self.have[parity_index(parity)]
    }

    /// Collect the complete sections of `pkt` from `asm` into `self.sections`.
    fn assemble(asm: &mut SectionAssembler, pkt: &Packet, out: &mut Vec<u8>) {
        out.clear();
        asm.push(pkt, |r| {
            if let Ok(s) = r {
                out.extend_from_slice(s.bytes());
            }
        });
    }

    fn on_section_packet(&mut self, pid: Pid, pkt: &Packet) -> Result<(), ScrambleError> {
        let mut sections = std::mem::take(&mut self.sections);
        if pid == Pid::PAT {
            Self::assemble(&mut self.pat, pkt, &mut sections);
            self.each_section(&sections, |me, s| me.on_pat(s));
        } else if pid == Pid::CAT {
            Self::assemble(&mut self.cat, pkt, &mut sections);
            self.each_section(&sections, |me, s| me.on_cat(s));
        } else if Some(pid) == self.ecm_pid {
            Self::assemble(&mut self.ecm, pkt, &mut sections);
            let now = unix_now();
            self.each_section(&sections, |me, s| {
                if (0x80..=0x81).contains(&s.table_id()) && s.bytes() != me.last_ecm {
                    me.last_ecm.clear();
                    me.last_ecm.extend_from_slice(s.bytes());
                    me.counters.ecms += 1;
                    if me.source.submit_ecm(s.bytes(), now) {
                        me.pending = me.pending.saturating_add(1);
                    } else {
                        me.counters.ecms_dropped += 1;
                    }
                }
            });
        } else if Some(pid) == self.emm_pid {
            Self::assemble(&mut self.emm, pkt, &mut sections);
            let now = unix_now();
            self.each_section(&sections, |me, s| {
                if (0x82..=0x8F).contains(&s.table_id()) {
                    me.counters.emms += 1;
                    me.source.submit_emm(s.bytes(), now);
                }
            });
        } else if let Some(i) = self.pmt_pids.iter().position(|(p, _)| *p == pid) {
            Self::assemble(&mut self.pmt_pids[i].1, pkt, &mut sections);
            self.each_section(&sections, |me, s| me.on_pmt(s));
        }
        self.sections = sections;
        Ok(())
    }

    fn each_section(&mut self, bytes: &[u8], mut f: impl FnMut(&mut Self, &Section<'_>)) {
        for one in split_sections(bytes) {
            if let Ok(s) = Section::parse(one, one.len()) {
                f(self, &s);
            }
        }
    }

    fn on_pat(&mut self, s: &Section<'_>) {
        if s.table_id() != TABLE_ID_PAT {
            return;
        }
        let Ok(pat) = Pat::parse(s) else {
            return;
        };
        for e in pat.entries() {
            if e.program_number != 0 && !self.pmt_pids.iter().any(|(p, _)| *p == e.pid) {
                self.pmt_pids.push((e.pid, SectionAssembler::psi()));
            }
        }
    }

    fn on_pmt(&mut self, s: &Section<'_>) {
        if s.table_id() != TABLE_ID_PMT || self.ecm_pid.is_some() {
            return;
        }
        let Ok(pmt) = Pmt::parse(s) else {
            return;
        };
        let ca = pmt
            .descriptors
            .ca_descriptors()
            .chain(pmt.streams().flat_map(|st| st.descriptors.ca_descriptors()))
            .find(|c| c.ca_system_id == self.ca_system_id);
        if let Some(c) = ca {
            self.ecm_pid = Some(c.ca_pid);
            self.counters.ecm_pid = Some(c.ca_pid.value());
            self.counters.service = Some(pmt.program_number());
            self.source.set_service(pmt.program_number());
            tracing::info!(ecm_pid = %c.ca_pid, program = pmt.program_number(), "ECM PID found");
        }
    }

    fn on_cat(&mut self, s: &Section<'_>) {
        if self.emm_pid.is_some() {
            return;
        }
        let Ok(cat) = Cat::parse(s) else {
            return;
        };
        if let Some(c) = cat
            .descriptors
            .ca_descriptors()
            .find(|c| c.ca_system_id == self.ca_system_id)
        {
            self.emm_pid = Some(c.ca_pid);
            self.counters.emm_pid = Some(c.ca_pid.value());
            tracing::info!(emm_pid = %c.ca_pid, "EMM PID found");
        }
    }

    /// The next answer: waiting for it when the input is not live and one is due.
    fn next_answer(&mut self) -> Option<CwAnswer> {
        if let Some(a) = self.source.poll() {
            return Some(a);
        }
        if !self.wait || self.pending == 0 {
            return None;
        }
        let a = self.source.wait(ANSWER_WAIT);
        if a.is_none() {
            // the answer may still come, late; no ECM waits for it twice
            self.pending = 0;
            self.counters.answer_timeouts += 1;
            if self.counters.answer_timeouts == 1 {
                tracing::warn!(
                    wait = ?ANSWER_WAIT,
                    "no answer from the card to an ECM: its period stays scrambled"
                );
            }
        }
        a
    }

    /// Take the card's answers; true if keys changed.
    fn take_answers(&mut self) -> Result<bool, ScrambleError> {
        let mut changed = false;
        while let Some(a) = self.next_answer() {
            self.pending = self.pending.saturating_sub(1);
            match a {
                CwAnswer::Cws {
                    parity,
                    mut even,
                    mut odd,
                } => {
                    self.counters.answers += 1;
                    if self.reduction == CwReduction::Reduce && self.algorithm == Algorithm::Csa2 {
                        even.apply_checksum();
                        odd.apply_checksum();
                    }
                    self.last = Some((parity, even, odd));
                    changed |= self.apply_last()?;
                }
                CwAnswer::Refused { why, replay } => {
                    self.counters.refusals += 1;
                    if replay {
                        self.counters.replays_refused += 1;
                    }
                    if self.counters.last_refusal.as_deref() != Some(why.as_str()) {
                        tracing::warn!(refusal = %why, "the card refused the ECM");
                        self.counters.last_refusal = Some(why);
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Put the last answer's keys in the slots it may fill now (see the module docs).
    fn apply_last(&mut self) -> Result<bool, ScrambleError> {
        let Some((ecm_parity, even, odd)) = &self.last else {
            return Ok(false);
        };
        let both = match self.parity {
            None => true,
            Some(p) => p == *ecm_parity,
        };
        for (slot, cw) in [(Parity::Even, even), (Parity::Odd, odd)] {
            if both || slot == *ecm_parity {
                self.ctx.set_key(slot, cw.as_bytes())?;
                self.have[parity_index(slot)] = true;
            }
        }
        Ok(true)
    }

    fn descramble_segment(
        &mut self,
        flat: &mut [u8],
        from: usize,
        to: usize,
    ) -> Result<(), ScrambleError> {
        if to > from && self.sel[from..to].iter().any(|s| *s) {
            let sel = &self.sel[from..to];
            self.ctx
                .descramble_selected(&mut flat[from * PACKET_SIZE..to * PACKET_SIZE], |i| sel[i])?;
        }
        Ok(())
    }

    /// Descramble `packets` in place.
    pub fn process(&mut self, packets: &mut [Packet]) -> Result<(), ScrambleError> {
        self.sel.clear();
        let mut seg = 0;
        for i in 0..packets.len() {
            let pkt = packets[i];
            let p = PacketRef::new(&pkt);
            self.counters.packets += 1;
            if !p.sync_ok() {
                self.sel.push(false);
                continue;
            }
            let pid = p.pid();
            let tsc = pkt[3] >> 6;
            if tsc == 0 || pid.is_psi_reserved() || pid == Pid::NULL {
                self.sel.push(false);
                self.counters.clear += 1;
                let is_section_pid = pid == Pid::PAT
                    || pid == Pid::CAT
                    || Some(pid) == self.ecm_pid
                    || Some(pid) == self.emm_pid
                    || self.pmt_pids.iter().any(|(q, _)| *q == pid);
                if is_section_pid && tsc == 0 {
                    self.on_section_packet(pid, &pkt)?;
                    if self.take_answers()? {
                        // packets before this one used the old keys
                        let flat = packets.as_flattened_mut();
                        self.descramble_segment(flat, seg, i)?;
                        seg = i;
                    }
                }
                continue;
            }
            let parity = if tsc == 0b11 {
                Parity::Odd
            } else {
                Parity::Even
            };
            if self.parity != Some(parity) {
                let flat = packets.as_flattened_mut();
                self.descramble_segment(flat, seg, i)?;
                seg = i;
                if self.parity.is_some() {
                    self.counters.parity_flips += 1;
                }
                self.parity = Some(parity);
                self.apply_last()?;
            }
            let ok = tsc != 0b01 && self.has_key(parity);
            if ok {
                self.counters.descrambled += 1;
            } else {
                self.counters.no_key += 1;
            }
            self.sel.push(ok);
        }
        let n = packets.len();
        let flat = packets.as_flattened_mut();
        self.descramble_segment(flat, seg, n)?;
        Ok(())
    }
}

impl CardPlayer {
    /// The start-up hold: keep `batch` (already processed) back until the card first
    /// answers; then descramble what the answer's keys can and move it all to `out`.
    fn hold_or_send(&mut self, batch: &[u8], out: &mut Vec<u8>) -> Result<(), ScrambleError> {
        if !self.holding {
            out.extend_from_slice(batch);
            return Ok(());
        }
        if self.counters.answers > 0 || self.counters.refusals > 0 {
            self.holding = false;
            self.held.extend_from_slice(batch);
            self.descramble_held()?;
            out.append(&mut self.held);
            self.held = Vec::new();
            return Ok(());
        }
        if self.held.is_empty() && self.counters.no_key == 0 {
            // nothing is waiting for a key
            out.extend_from_slice(batch);
            return Ok(());
        }
        let since = *self.held_since.get_or_insert_with(Instant::now);
        self.held.extend_from_slice(batch);
        if self.held.len() > HOLD_MAX_BYTES || since.elapsed() > HOLD_MAX_TIME {
            self.holding = false;
            self.counters.hold_timeouts += 1;
            tracing::warn!(
                held_bytes = self.held.len(),
                "no answer from the card yet: sending the held packets as they are"
            );
            out.append(&mut self.held);
            self.held = Vec::new();
        }
        Ok(())
    }

    /// Descramble the held packets of the last run of the current parity, with the key
    /// of that parity if the first answer gave it; earlier runs belong to other periods.
    fn descramble_held(&mut self) -> Result<(), ScrambleError> {
        let Some(parity) = self.parity else {
            return Ok(());
        };
        if !self.has_key(parity) {
            return Ok(());
        }
        let want_tsc = match parity {
            Parity::Even => 0b10,
            Parity::Odd => 0b11,
        };
        let n = self.held.len() / PACKET_SIZE;
        let pkt_tsc = |held: &[u8], i: usize| held[i * PACKET_SIZE + 3] >> 6;
        let is_es = |held: &[u8], i: usize| {
            let p = &held[i * PACKET_SIZE..(i + 1) * PACKET_SIZE];
            let pid = Pid::new(u16::from_be_bytes([p[1], p[2]]) & 0x1FFF);
            p[0] == 0x47 && !pid.is_psi_reserved() && pid != Pid::NULL
        };
        let mut start = n;
        while start > 0 {
            let i = start - 1;
            let tsc = pkt_tsc(&self.held, i);
            if is_es(&self.held, i) && (tsc == 0b10 || tsc == 0b11) && tsc != want_tsc {
                break;
            }
            start = i;
        }
        let held = &mut self.held[start * PACKET_SIZE..n * PACKET_SIZE];
        let pick: Vec<bool> = (0..n - start)
            .map(|i| is_es(held, i) && pkt_tsc(held, i) == want_tsc)
            .collect();
        let done = pick.iter().filter(|b| **b).count() as u64;
        if done > 0 {
            self.ctx.descramble_selected(held, |i| pick[i])?;
            self.counters.no_key = self.counters.no_key.saturating_sub(done);
            self.counters.descrambled += done;
            self.counters.held_descrambled += done;
        }
        Ok(())
    }

    /// The input ended: send what the start-up hold still keeps.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.holding = false;
        out.append(&mut self.held);
    }
}

impl PacketStage for CardPlayer {
    fn process_batch(
        &mut self,
        batch: &mut PacketBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), ScrambleError> {
        self.process(batch.packets_mut())?;
        self.hold_or_send(batch.as_bytes(), out)
    }

    fn idle(&mut self) -> Result<(), ScrambleError> {
        // a remote card's answer may arrive while the input is quiet
        self.take_answers().map(|_| ())
    }
}
