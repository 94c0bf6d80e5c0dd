//! ECM plumbing: the [`EcmGenerator`] trait the built-in ECMG and SimulCrypt implement, and
//! the inserter that repeats the current ECM on the ECM PID.
//!
//! Timing (see the schedule in `schedule.rs`): the ECM of crypto period N carries CW(N)
//! and CW(N+1) and has table_id 0x80 when N is even, 0x81 when odd. Its content goes on air
//! at start(N) + delay_start (negative delay_start: before the key switch), so the key of
//! period N+1 is on air a whole period before it is used. The section is asked for once
//! per period and repeated every `ecm_repetition` (default 100 ms). Packets go into null
//! packets of the input where there are any, else they are added; both are counted.
//!
//! ECMs come from a prepared slot: a generator is told about a period ahead of time
//! ([`EcmGenerator::prepare`]); one that answers asynchronously (a SimulCrypt ECMG) puts the
//! answer aside, and [`EcmGenerator::generate`] only takes what is ready, so the data path
//! never waits on the control plane. Waiting ([`EcmGenerator::wait_for_ecm`]) is for where
//! it stalls nothing live: before the first packet, and runs on stream time (files, pipes).

use std::time::Duration;

use csa::Parity;

use super::cw::Cw;
use super::insert::InsertQueue;
use super::keys::CryptoPeriod;
use crate::ts::packet::Packet;
use crate::ts::psi::{TABLE_ID_ECM_EVEN, TABLE_ID_ECM_ODD};
use crate::ts::{Packetizer, Pid};

/// What an ECM is made from.
#[derive(Debug)]
pub struct EcmRequest<'a> {
    /// The crypto period the ECM belongs to.
    pub period: CryptoPeriod,
    /// Its parity (0x80 table_id for even, 0x81 for odd).
    pub parity: Parity,
    /// CW of `period`.
    pub current: &'a Cw,
    /// CW of the period after.
    pub next: &'a Cw,
    /// The ECM PID the section will be carried on.
    pub ecm_pid: Pid,
    /// CA_system_ID announced in the PMT.
    pub ca_system_id: u16,
}

impl EcmRequest<'_> {
    /// The table_id the section must carry.
    pub fn table_id(&self) -> u8 {
        match self.parity {
            Parity::Even => TABLE_ID_ECM_EVEN,
            Parity::Odd => TABLE_ID_ECM_ODD,
        }
    }
}

/// Why an ECM could not be had.
#[derive(Debug, thiserror::Error)]
pub enum EcmError {
    /// The generator (ECMG, SimulCrypt peer) cannot answer now.
    #[error("ECM generator unavailable: {0}")]
    Unavailable(String),
    /// The generator answered with something that is not an ECM section of the right parity.
    #[error("bad ECM from the generator: {0}")]
    Invalid(String),
    /// The generator answered, and its answer was no (a SimulCrypt ECMG's error_status):
    /// asking at once again would get the same answer.
    #[error("the ECM generator refused: {0}")]
    Refused(String),
}

/// Makes the ECM section of a crypto period. Called once per period (and again while it
/// fails), off the per-packet path but on the data-path thread: no method but
/// [`EcmGenerator::wait_for_ecm`] may block.
pub trait EcmGenerator: Send {
    /// Append the complete ECM section(s) for `req` to `out` (table_id [`EcmRequest::table_id`]).
    /// Must not block: a generator that answers asynchronously gives the ECM it has ready,
    /// else asks for it (if not yet asked) and answers [`EcmError::Unavailable`]; the
    /// schedule keeps the previous ECM on air and asks again on its next batch.
    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError>;

    /// `req` will be asked for next (about a crypto period from now): a generator that
    /// answers slowly (a SimulCrypt ECMG) can start on it now. Must not block.
    fn prepare(&mut self, req: &EcmRequest<'_>) {
        let _ = req;
    }

    /// Wait up to `within` until [`EcmGenerator::generate`] can answer `req` at once (with
    /// the ECM or a refusal), asking for it if need be; false if the time ran out. Only
    /// called where waiting stalls nothing live: before the first packet, and on runs whose
    /// clock is the stream's (files, pipes). Default: true at once (a generator that builds
    /// ECMs in place is always ready).
    fn wait_for_ecm(&mut self, req: &EcmRequest<'_>, within: Duration) -> bool {
        let _ = (req, within);
        true
    }
}

/// Repeats the current ECM on the ECM PID and queues its packets for insertion.
pub struct EcmInserter {
    generator: Box<dyn EcmGenerator>,
    pid: Pid,
    ca_system_id: u16,
    repetition: Duration,
    packetizer: Packetizer,
    section: Vec<u8>,
    scratch: Vec<u8>,
    section_period: Option<CryptoPeriod>,
    /// The period of the section whose packets are queued.
    queued: Option<CryptoPeriod>,
    /// The newest period whose section has gone out whole: only then can a receiver know
    /// its CWs.
    emitted: Option<CryptoPeriod>,
    next_due: Duration,
    pending: InsertQueue,
}

impl std::fmt::Debug for EcmInserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcmInserter")
            .field("pid", &self.pid)
            .field("section_period", &self.section_period)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl EcmInserter {
    /// An inserter on `pid` asking `generator` for ECMs.
    pub fn new(
        generator: Box<dyn EcmGenerator>,
        pid: Pid,
        ca_system_id: u16,
        repetition: Duration,
    ) -> Self {
        EcmInserter {
            generator,
            pid,
            ca_system_id,
            repetition,
            packetizer: Packetizer::new(pid),
            section: Vec::with_capacity(256),
            scratch: Vec::with_capacity(256),
            section_period: None,
            queued: None,
            emitted: None,
            next_due: Duration::ZERO,
            // a section is at most 1024 bytes: 6 packets; the window is one repetition
            pending: InsertQueue::new(16, repetition).add_before_first_null(),
        }
    }

    /// The ECM PID.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The period whose ECM is on air (set as the content repeated), if any.
    pub fn on_air(&self) -> Option<CryptoPeriod> {
        self.section_period
    }

    /// The newest period whose ECM has been handed out whole ([`Self::take_for_null`],
    /// [`Self::take_to_add`]): what a receiver can know. A key switch waits for this, not
    /// for [`Self::on_air`], so no packet under a new key precedes the ECM that carries it.
    pub fn emitted(&self) -> Option<CryptoPeriod> {
        self.emitted
    }

    /// Switch the ECM content to `period` (asks the generator). On failure the previous
    /// ECM stays on air and the error is returned for counting.
    pub fn set_period(
        &mut self,
        period: CryptoPeriod,
        current: &Cw,
        next: &Cw,
        now: Duration,
    ) -> Result<(), EcmError> {
        let req = self.request(period, current, next);
        self.scratch.clear();
        let res = self.generator.generate(&req, &mut self.scratch);
        res.and_then(|()| check_sections(&self.scratch, req.table_id()))?;
        // the previous section stays on air unless the new one is good
        std::mem::swap(&mut self.section, &mut self.scratch);
        self.section_period = Some(period);
        self.next_due = now; // new content goes out at once
        Ok(())
    }

    /// Tell the generator that `period` (CWs `current`, `next`) comes next.
    pub fn prepare(&mut self, period: CryptoPeriod, current: &Cw, next: &Cw) {
        let req = self.request(period, current, next);
        self.generator.prepare(&req);
    }

    /// Give the generator up to `within` to have the ECM of `period` ready (blocks; see
    /// [`EcmGenerator::wait_for_ecm`] for where that is allowed); false if the time ran out.
    pub fn wait_for(
        &mut self,
        period: CryptoPeriod,
        current: &Cw,
        next: &Cw,
        within: Duration,
    ) -> bool {
        let req = self.request(period, current, next);
        self.generator.wait_for_ecm(&req, within)
    }

    fn request<'a>(&self, period: CryptoPeriod, current: &'a Cw, next: &'a Cw) -> EcmRequest<'a> {
        EcmRequest {
            period,
            parity: period.parity(),
            current,
            next,
            ecm_pid: self.pid,
            ca_system_id: self.ca_system_id,
        }
    }

    /// Queue a repetition if one is due at `now`.
    pub fn tick(&mut self, now: Duration) {
        if self.section_period.is_none() || self.section.is_empty() || now < self.next_due {
            return;
        }
        // a repetition still waiting for a null slot is superseded
        self.pending.clear();
        let pending = &mut self.pending;
        if self
            .packetizer
            .packetize(&self.section, |p| {
                pending.push(p, now);
            })
            .is_err()
        {
            self.pending.clear();
        }
        self.queued = self.section_period;
        self.next_due = now + self.repetition;
    }

    /// The input has a null packet here: take it for an ECM packet if one is pending.
    pub fn take_for_null(&mut self, now: Duration) -> Option<Packet> {
        let p = self.pending.take_for_null(now);
        self.note_taken(p.is_some());
        p
    }

    /// Pending packets to add now because the input gives no null packets to replace
    /// (none seen within one repetition interval).
    pub fn take_to_add(&mut self, now: Duration) -> Option<Packet> {
        let p = self.pending.take_to_add(now);
        self.note_taken(p.is_some());
        p
    }

    fn note_taken(&mut self, took: bool) {
        if took && self.pending.is_empty() {
            self.emitted = self.emitted.max(self.queued);
        }
    }
}

/// Check that `bytes` are whole sections of `table_id`.
fn check_sections(bytes: &[u8], table_id: u8) -> Result<(), EcmError> {
    if bytes.is_empty() {
        return Err(EcmError::Invalid("empty ECM".to_owned()));
    }
    crate::ts::section::check_sections(bytes, table_id..=table_id)
        .map(|_| ())
        .map_err(|e| EcmError::Invalid(e.to_string()))
}
