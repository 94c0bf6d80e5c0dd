//! The scrambling stage: packets in, packets out (scrambled ES, rewritten PMT, ECMs).
//!
//! Crypto periods, key switches, ECM content and degraded mode are the [`Schedule`]'s:
//! this stage asks it to advance to the time now (once per batch, and at each PCR with the
//! stream clock), scrambles under the parity it says is in force, and flushes the packets
//! marked so far when it says the key switches.
//!
//! # Batches
//!
//! Each input batch is copied once into a reused output buffer (PMT packets replaced,
//! ECM packets inserted or put in null slots), each packet marked for the cipher or not;
//! the marked packets are scrambled in place in as few engine calls as possible (one per
//! batch, two when a key switch falls inside it).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use csa::Parity;

use super::cat::CatWriter;
use super::clock::Clock;
use super::config::{ClockMode, ScrambleConfig, MAX_CA_SYSTEMS};
use super::cw::CwLogWriter;
use super::demux::{Demux, Role};
use super::ecm::EcmGenerator;
use super::emm::{EmmInserter, EmmSource};
use super::error::ScrambleError;
use super::keys::CryptoPeriod;
use super::schedule::{Schedule, Step, ECM_WAIT};
use super::stats::{Counters, LiveCounters, CC_UNSET};
use crate::ts::packet::{es_layout, null_packet, EsLayout, Packet, PACKET_SIZE};
use crate::ts::{PacketRef, Pid};

/// Once-only warnings, so a repeated data-path problem is logged once.
#[derive(Debug, Default)]
struct Warned {
    ours_in_input: bool,
    missing_services: bool,
    no_ecm_generator: bool,
    unreferenced: bool,
    held_before_ecm: bool,
    malformed_es: bool,
}

/// Scrambles a transport stream, batch by batch.
#[derive(Debug)]
pub struct Scrambler {
    demux: Demux,
    clock: Clock,
    /// Crypto periods, keys, ECM content (one ECM stream per CA system).
    schedule: Schedule,
    min_payload: usize,
    /// The CAT: the input's (with our EMM CA_descriptor merged when there is an EMM PID) or
    /// ours, sent once anything is scrambled (ETR 290 2.6: scrambled packets need a CAT).
    cat: CatWriter,
    emm: Option<EmmInserter>,
    emm_pid: Option<Pid>,
    counters: Counters,
    out: Vec<u8>,
    sel: Vec<bool>,
    seg_start: usize,
    /// Deferred cipher (the head-end's data plane): the last segment of a batch is left to
    /// the caller, who scrambles it together with other channels' (see [`Scrambler::set_deferred`]).
    deferred: bool,
    /// The segment left: packets `from..to` of the output, under `parity`.
    pending: Option<(usize, usize, Parity)>,
    null: Packet,
    warned: Warned,
    /// Published after each batch for a monitor, if one asked.
    live: Option<Arc<LiveCounters>>,
}

/// The cipher work a batch left in deferred mode: the packets of the output buffer to
/// scramble (`packets`, by index; `select[i]` says whether packet i is), with `ctx` under
/// `parity`. Valid until the scrambler is next used.
#[derive(Debug)]
pub struct PendingCipher<'a> {
    pub ctx: &'a csa::KeyContext,
    pub parity: Parity,
    pub packets: std::ops::Range<usize>,
    pub select: &'a [bool],
}

impl Scrambler {
    /// A scrambler for `config`, logging CWs to `cw_log` (optional). `ecm` holds the ECM
    /// generators, one per entry of `config.ca_systems` in the same order, or none at all
    /// (the PMTs then name the ECM PIDs but no ECM is sent).
    ///
    /// The generators are told about period 0 here, and given up to [`ECM_WAIT`] to have
    /// its ECM ready (a SimulCrypt ECMG answers within its max_comp_time): before the first
    /// packet, so a live input never waits. With the stream clock (files, pipes) the
    /// schedule may also wait, bounded, for an ECM it needs later; with the wall clock it
    /// never does.
    pub fn new(
        config: ScrambleConfig,
        cw_log: Option<CwLogWriter>,
        ecm: Vec<Box<dyn EcmGenerator>>,
    ) -> Result<Self, ScrambleError> {
        if config.crypto_period < Duration::from_millis(100) {
            return Err(ScrambleError::Config(
                "the crypto period must be at least 100 ms".to_owned(),
            ));
        }
        for pid in config.only_pids.iter().copied() {
            if pid.is_psi_reserved() || pid == Pid::NULL {
                return Err(ScrambleError::Config(format!(
                    "PID {pid} is PSI/SI or null and is never scrambled"
                )));
            }
        }
        check_ca_config(&config, ecm.len())?;
        let no_ecm_generator = !config.ca_systems.is_empty() && ecm.is_empty();
        let mut schedule = Schedule::new(&config, cw_log, ecm)?;
        schedule.set_ecm_wait((config.clock == ClockMode::Stream).then_some(ECM_WAIT));
        schedule.start(ECM_WAIT)?;
        Ok(Scrambler {
            demux: Demux::new(&config),
            clock: Clock::new(config.clock),
            schedule,
            min_payload: config.algorithm.key_len(),
            cat: CatWriter::new(config.emm_pid.map(|pid| (config.emm_ca_system_id, pid))),
            emm: None,
            emm_pid: config.emm_pid,
            counters: Counters::default(),
            out: Vec::with_capacity(600 * PACKET_SIZE),
            sel: Vec::with_capacity(600),
            seg_start: 0,
            deferred: false,
            pending: None,
            null: null_packet(),
            warned: Warned {
                no_ecm_generator: !no_ecm_generator,
                ..Warned::default()
            },
            live: None,
        })
    }

    /// Take EMMs from `source` onto the EMM PID (the configuration must name one).
    pub fn set_emm_source(&mut self, source: Box<dyn EmmSource>) -> Result<(), ScrambleError> {
        let pid = self.emm_pid.ok_or_else(|| {
            ScrambleError::Config("an EMM source needs an EMM PID (--emm-pid)".to_owned())
        })?;
        self.emm = Some(EmmInserter::new(source, pid));
        Ok(())
    }

    /// Deferred cipher, for a caller that scrambles many channels' packets in one engine
    /// pass (CSA2 only; the AES modes run per payload anyway). A batch then leaves its last
    /// segment (everything after the last key switch in it: usually the whole batch)
    /// unscrambled in the output, described by [`Scrambler::pending_cipher`]; the caller
    /// must scramble it before the output leaves, and call [`Scrambler::cipher_done`].
    /// Segments before a key switch inside the batch are scrambled at once, as usual, so the
    /// key context the caller gets is the one in force for the pending segment.
    pub fn set_deferred(&mut self, on: bool) {
        self.deferred = on && self.schedule.key_context().algorithm() == csa::Algorithm::Csa2;
    }

    /// Whether deferred cipher is on.
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// The cipher work the last batch left (deferred mode), if any.
    pub fn pending_cipher(&self) -> Option<PendingCipher<'_>> {
        let (from, to, parity) = self.pending?;
        Some(PendingCipher {
            ctx: self.schedule.key_context(),
            parity,
            packets: from..to,
            select: &self.sel[from..to],
        })
    }

    /// The caller has scrambled the pending segment.
    pub fn cipher_done(&mut self) {
        self.pending = None;
    }

    /// Counters a monitor reads while the run goes on, published after every batch.
    pub fn live_counters(&mut self) -> Arc<LiveCounters> {
        let ecm_streams = self.schedule.ecm_streams();
        let live = self
            .live
            .get_or_insert_with(|| Arc::new(LiveCounters::new(ecm_streams)));
        Arc::clone(live)
    }

    fn publish(&self) {
        let Some(l) = &self.live else {
            return;
        };
        let st = &self.counters.stream;
        for (a, v) in [
            (&l.packets_in, st.packets_in),
            (&l.packets_out, st.packets_out),
            (&l.scrambled, st.es_scrambled),
            (&l.already_scrambled, st.es_already_scrambled),
            (&l.held_before_ecm, st.held_before_ecm),
            (&l.key_switches, st.key_switches),
            (&l.degraded_holds, st.degraded_holds),
            (&l.degraded_episodes, st.degraded_episodes),
            (&l.lagging_cas_switches, st.lagging_cas_switches),
            (&l.ecms_generated, st.ecms_generated),
            (&l.ecm_failures, st.ecm_failures),
            (&l.psi_errors, st.psi_errors),
            (&l.pcr_discontinuities, st.pcr_discontinuities),
            (&l.cc_errors, st.cc_errors),
            (&l.emm_packets, st.emm.packets),
            (&l.period, self.schedule.period().0),
        ] {
            a.store(v, Relaxed);
        }
        for (a, v) in l.ecm_changed_ms.iter().zip(self.schedule.ecm_changed_ms()) {
            a.store(v, Relaxed);
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The PIDs being scrambled.
    pub fn scrambled_pids(&self) -> Vec<Pid> {
        self.demux.scrambled_pids()
    }

    /// Services asked for that the (complete) PAT does not list.
    pub fn missing_services(&self) -> Vec<u16> {
        self.demux.missing_services()
    }

    /// Whether a complete PAT has been seen.
    pub fn pat_known(&self) -> bool {
        self.demux.pat_known()
    }

    /// The current crypto period.
    pub fn period(&self) -> CryptoPeriod {
        self.schedule.period()
    }

    /// Whether the clock follows the wall clock.
    pub fn clock_mode(&self) -> ClockMode {
        if self.clock.is_stream() {
            ClockMode::Stream
        } else {
            ClockMode::Wall
        }
    }

    /// Scramble `packets`; returns the output packets (valid until the next call).
    pub fn process(&mut self, packets: &[Packet]) -> Result<&[u8], ScrambleError> {
        self.process_batch(packets)?;
        Ok(&self.out)
    }

    /// Scramble `packets` into `out` (its contents replaced), without the copy out of the
    /// scrambler's own buffer that [`Scrambler::process`] leaves to its caller: `out` is
    /// swapped in as the working buffer, and the previous working buffer is kept for reuse.
    /// On an error `out` is left empty.
    pub fn process_into(
        &mut self,
        packets: &[Packet],
        out: &mut Vec<u8>,
    ) -> Result<(), ScrambleError> {
        std::mem::swap(&mut self.out, out);
        let res = self.process_batch(packets);
        std::mem::swap(&mut self.out, out);
        if res.is_err() {
            out.clear();
        }
        res
    }

    /// Process `packets` into `self.out`.
    fn process_batch(&mut self, packets: &[Packet]) -> Result<(), ScrambleError> {
        if self.pending.is_some() {
            // fail closed: the previous batch's packets were handed out unscrambled and
            // nobody said they were scrambled since; that output must not be trusted
            return Err(ScrambleError::Config(
                "deferred cipher: the previous batch was not scrambled (cipher_done not called)"
                    .to_owned(),
            ));
        }
        self.out.clear();
        self.sel.clear();
        self.seg_start = 0;
        if !self.warned.no_ecm_generator {
            self.warned.no_ecm_generator = true;
            tracing::info!(
                "an ECM PID is set but no ECM generator is configured: the PMT names the \
                 ECM PID, no ECM is sent"
            );
        }
        let batch_now = self.clock.now();
        self.advance(batch_now)?;
        for pkt in packets {
            self.one_packet(pkt, batch_now)?;
        }
        if self.deferred {
            let (from, to) = (self.seg_start, self.sel.len());
            if to > from && self.sel[from..to].iter().any(|s| *s) {
                self.pending = Some((from, to, self.schedule.parity()));
            }
            self.seg_start = to;
        } else {
            self.flush_segment()?;
        }
        let n_out = (self.out.len() / PACKET_SIZE) as u64;
        self.counters.stream.packets_out += n_out;
        self.sync_schedule_counters();
        self.counters.stream.pcr_discontinuities = self.clock.discontinuities();
        self.counters.stream.cat = self.cat.counters();
        if let Some(emm) = &self.emm {
            self.counters.stream.emm = emm.counters();
        }
        if !self.warned.missing_services && self.demux.ready() {
            self.warned.missing_services = true;
            let missing = self.demux.missing_services();
            if !missing.is_empty() {
                tracing::warn!(?missing, "services asked for are not in the PAT");
            }
            if !self.demux.any_scrambled() {
                // a head-end channel in this state is not on air as a scrambled service
                tracing::warn!(
                    "not on air: PSI is complete and the selected services have no \
                     elementary stream to scramble"
                );
            }
        }
        Ok(())
    }

    fn push(&mut self, pkt: &Packet, scramble: bool) {
        self.out.extend_from_slice(pkt);
        self.sel.push(scramble);
    }

    /// Whether `pkt` breaks its PID's continuity counter, `last` (the null PID has none; a
    /// packet without payload keeps the counter; one repeat is allowed; a discontinuity
    /// flag starts over). `last` becomes `pkt`'s.
    fn cc_breaks(pkt: &Packet, pid: Pid, last: &mut u8) -> bool {
        if pid == Pid::NULL {
            return false;
        }
        let cc = pkt[3] & 0x0F;
        let has_payload = pkt[3] & 0x10 != 0;
        let discontinuity = pkt[3] & 0x20 != 0 && pkt[4] > 0 && pkt[5] & 0x80 != 0;
        let error = if *last == CC_UNSET || discontinuity {
            false
        } else if has_payload {
            cc != (*last + 1) & 0x0F && cc != *last
        } else {
            cc != *last
        };
        *last = cc;
        error
    }

    /// `batch_now`: the clock read at the start of the batch.
    fn one_packet(&mut self, pkt: &Packet, batch_now: Duration) -> Result<(), ScrambleError> {
        let p = PacketRef::new(pkt);
        self.counters.stream.packets_in += 1;
        if !p.sync_ok() {
            // io resyncs byte streams, so this is a damaged packet: never passed
            self.counters.pid_mut(Pid::NULL).errors += 1;
            return Ok(());
        }
        let pid = p.pid();
        let cc_error = {
            let (c, last_cc) = self.counters.pid_and_cc_mut(pid);
            let cc_error = Self::cc_breaks(pkt, pid, last_cc);
            c.input += 1;
            if p.tei() {
                c.errors += 1;
            }
            c.cc_errors += u64::from(cc_error);
            cc_error
        };
        self.counters.stream.cc_errors += u64::from(cc_error);
        let now = if self.clock.is_stream() {
            if self.clock.pcr_pid().is_none() {
                if let Some(pcr_pid) = self.demux.first_pcr_pid() {
                    self.clock.set_pcr_pid(pcr_pid);
                }
            }
            if Some(pid) == self.clock.pcr_pid() {
                if let Some(pcr) = p.pcr() {
                    self.clock.on_pcr(pcr);
                    let now = self.clock.now();
                    self.advance(now)?;
                }
            }
            self.clock.now()
        } else {
            // wall clock: read once per batch (the batch is at most a few ms)
            batch_now
        };
        match self.demux.role(pid) {
            Role::Null => {
                if let Some((e, ecm_pid)) = self.take_ecm_for_null(now) {
                    self.push(&e, false);
                    self.count_ecm(ecm_pid, true);
                    self.counters.pid_mut(pid).replaced_null += 1;
                } else if let Some(m) = self.take_mux_packet(now, true) {
                    self.push(&m, false);
                    self.counters.pid_mut(pid).replaced_null += 1;
                } else {
                    self.push(pkt, false);
                    self.counters.pid_mut(pid).passed += 1;
                }
            }
            Role::Psi if pid == Pid::CAT => {
                let mut n = 0u64;
                let out = &mut self.out;
                let sel = &mut self.sel;
                let changed = self.cat.on_input_packet(pkt, now, &mut |pk: &Packet| {
                    out.extend_from_slice(pk);
                    sel.push(false);
                    n += 1;
                });
                if changed {
                    self.demux.set_input_emm_pids(self.cat.input_ca_pids());
                }
                let c = self.counters.pid_mut(pid);
                c.dropped += 1;
                c.inserted += n;
            }
            Role::Psi => {
                if pid == Pid::PAT {
                    self.demux.on_pat_packet(pkt, &mut self.counters.stream);
                }
                self.push(pkt, false);
                self.counters.pid_mut(pid).passed += 1;
            }
            Role::Pmt | Role::PmtPass => {
                let out = &mut self.out;
                let sel = &mut self.sel;
                let mut n = 0u64;
                let pass =
                    self.demux
                        .on_pmt_packet(pkt, &mut self.counters.stream, &mut |pk: &Packet| {
                            out.extend_from_slice(pk);
                            sel.push(false);
                            n += 1;
                        });
                let c = self.counters.pid_mut(pid);
                c.inserted += n;
                if pass {
                    self.push(pkt, false);
                    self.counters.pid_mut(pid).passed += 1;
                } else {
                    c.dropped += 1;
                }
            }
            Role::Scrambled if !self.schedule.ecm_on_air() => {
                // fail closed, and useless to a receiver: no ECM carries this key yet (an
                // ECMG down at start), so the packet is held back as a null
                let null = self.null;
                self.push(&null, false);
                self.counters.pid_mut(pid).dropped += 1;
                self.counters.stream.held_before_ecm += 1;
                if !self.warned.held_before_ecm {
                    self.warned.held_before_ecm = true;
                    tracing::warn!(
                        %pid,
                        "no ECM on air for the key in force: the scrambled services' packets \
                         are held (nulled) until one is (logged once; counted as held_before_ecm)"
                    );
                }
            }
            Role::Scrambled => self.es_packet(pid, pkt),
            Role::Clear => {
                self.push(pkt, false);
                self.counters.pid_mut(pid).passed += 1;
            }
            Role::Unknown => {
                // fail closed: a PID no current PSI names may be an ES of a selected service
                // whose PMT is still to come (at start, or moved mid-stream)
                let null = self.null;
                self.push(&null, false);
                self.counters.pid_mut(pid).dropped += 1;
                if self.demux.ready() {
                    self.counters.stream.nulled_unreferenced += 1;
                    if !self.warned.unreferenced {
                        self.warned.unreferenced = true;
                        tracing::warn!(
                            %pid,
                            "a PID that no PMT names: its packets are nulled until a PMT names it \
                             (logged once; counted as nulled_unreferenced)"
                        );
                    }
                } else {
                    self.counters.stream.nulled_before_psi += 1;
                }
            }
            Role::Ours => {
                if !self.warned.ours_in_input {
                    self.warned.ours_in_input = true;
                    tracing::warn!(%pid, "the input uses our ECM/EMM PID; its packets are dropped");
                }
                self.counters.pid_mut(pid).dropped += 1;
            }
        }
        // mux packets start once PSI is known, so a receiver that reads the stream from
        // its start finds the PMT (naming the ECM PID) before the first ECM, and that ECM
        // before the first scrambled packet
        if self.demux.ready() {
            self.tick_inserters(now);
        }
        for i in 0..self.schedule.ecm_streams() {
            while let Some(e) = self.schedule.ecm_inserter(i).take_to_add(now) {
                self.push(&e, false);
                let ecm_pid = self.schedule.ecm_inserter(i).pid();
                self.count_ecm(ecm_pid, false);
            }
        }
        while let Some(m) = self.take_mux_packet(now, false) {
            self.push(&m, false);
        }
        Ok(())
    }

    /// An ES packet of a scrambled service, its key's ECM on air: its payload goes to the
    /// cipher; it passes as it is when it has none or came scrambled; what is not
    /// understood (reserved values, an adaptation field past the packet) is nulled, and
    /// bytes after an adaptation-only packet's field become stuffing. Fail closed: any of
    /// those could carry the ES in clear.
    fn es_packet(&mut self, pid: Pid, pkt: &Packet) {
        let tsc = pkt[3] >> 6;
        let layout = es_layout(pkt);
        if tsc == 0b01 || layout == EsLayout::Invalid {
            self.counters.pid_mut(pid).dropped += 1;
            self.counters.stream.malformed_es += 1;
            if !self.warned.malformed_es {
                self.warned.malformed_es = true;
                tracing::warn!(
                    %pid,
                    "an ES packet of a scrambled service with a reserved \
                     transport_scrambling_control or adaptation_field_control, or an \
                     adaptation field past the packet's end: nulled (logged once; counted \
                     as malformed_es)"
                );
            }
            let null = self.null;
            self.push(&null, false);
            return;
        }
        if tsc != 0 {
            self.counters.pid_mut(pid).already_scrambled += 1;
            self.counters.stream.es_already_scrambled += 1;
            self.push(pkt, false);
            return;
        }
        match layout {
            EsLayout::Payload(start) => {
                if PACKET_SIZE - start >= self.min_payload {
                    self.counters.pid_mut(pid).scrambled += 1;
                    self.counters.stream.es_scrambled += 1;
                } else {
                    self.counters.pid_mut(pid).short_payload += 1;
                }
                self.push(pkt, true);
            }
            EsLayout::StrayAfter(at) if pkt[at..].iter().any(|b| *b != 0xFF) => {
                self.counters.pid_mut(pid).no_payload += 1;
                self.counters.stream.malformed_es += 1;
                let mut stuffed = *pkt;
                stuffed[at..].fill(0xFF);
                self.push(&stuffed, false);
            }
            _ => {
                self.counters.pid_mut(pid).no_payload += 1;
                self.push(pkt, false);
            }
        }
    }

    fn tick_inserters(&mut self, now: Duration) {
        for ecm in self.schedule.ecm_inserters() {
            ecm.tick(now);
        }
        if self.demux.any_scrambled() {
            self.cat.tick(now);
        }
        if let Some(emm) = &mut self.emm {
            emm.tick(now);
        }
    }

    /// A CAT or EMM packet waiting, for a null slot (`for_null`) or to add; counted on its PID.
    fn take_mux_packet(&mut self, now: Duration, for_null: bool) -> Option<Packet> {
        let cat = match for_null {
            true => self.cat.take_for_null(now),
            false => self.cat.take_to_add(now),
        };
        let emm = match (&cat, self.emm.as_mut()) {
            (None, Some(e)) => match for_null {
                true => e.take_for_null(now),
                false => e.take_to_add(now),
            }
            .map(|p| (p, e.pid())),
            _ => None,
        };
        let (pkt, pid) = cat.map(|p| (p, Pid::CAT)).or(emm)?;
        self.counters.pid_mut(pid).inserted += 1;
        Some(pkt)
    }

    /// An ECM packet waiting for a null slot, with its PID (the systems take turns in order).
    fn take_ecm_for_null(&mut self, now: Duration) -> Option<(Packet, Pid)> {
        self.schedule.ecm_inserters().find_map(|e| {
            let pid = e.pid();
            e.take_for_null(now).map(|p| (p, pid))
        })
    }

    fn count_ecm(&mut self, ecm_pid: Pid, replacing_null: bool) {
        self.counters.pid_mut(ecm_pid).inserted += 1;
        if replacing_null {
            self.counters.stream.ecm_packets_replacing_null += 1;
        } else {
            self.counters.stream.ecm_packets_added += 1;
        }
    }

    /// Scramble the marked packets since the last flush under the current parity.
    fn flush_segment(&mut self) -> Result<(), ScrambleError> {
        let from = self.seg_start;
        let to = self.sel.len();
        if to > from && self.sel[from..to].iter().any(|s| *s) {
            let parity = self.schedule.parity();
            let sel = &self.sel[from..to];
            self.schedule
                .key_context()
                .scramble_selected(&mut self.out[from * PACKET_SIZE..to * PACKET_SIZE], |i| {
                    sel[i].then_some(parity)
                })?;
        }
        self.seg_start = to;
        Ok(())
    }

    /// Bring ECM content and the key period up to `now`: packets marked so far are
    /// scrambled under the old key when the schedule switches.
    fn advance(&mut self, now: Duration) -> Result<(), ScrambleError> {
        if self.pending.is_some() {
            // a deferred segment still to scramble needs the key in force for it
            return Ok(());
        }
        while self.schedule.advance(now)? == Step::Switch {
            // packets so far in this batch belong to the old period
            self.flush_segment()?;
            self.schedule.switch(now)?;
        }
        Ok(())
    }

    /// Copy the schedule's counters into the stream counters.
    fn sync_schedule_counters(&mut self) {
        let c = self.schedule.counters();
        let st = &mut self.counters.stream;
        st.key_switches = c.key_switches;
        st.degraded_holds = c.degraded_holds;
        st.degraded_episodes = c.degraded_episodes;
        st.lagging_cas_switches = c.lagging_cas_switches;
        st.ecms_generated = c.ecms_generated;
        st.ecm_failures = c.ecm_failures;
        st.random_failures = c.random_failures;
        self.publish();
    }

    /// Wall-clock mode: call between batches when no packet came, so periods and ECMs go on.
    pub fn idle(&mut self) -> Result<(), ScrambleError> {
        if !self.clock.is_stream() {
            let now = self.clock.now();
            self.advance(now)?;
            self.sync_schedule_counters();
        }
        Ok(())
    }

    /// Parity in use now.
    pub fn parity(&self) -> Parity {
        self.schedule.parity()
    }
}

/// Check the CA systems of `config` against `generators` ECM generators.
fn check_ca_config(config: &ScrambleConfig, generators: usize) -> Result<(), ScrambleError> {
    let cas = &config.ca_systems;
    if cas.len() > MAX_CA_SYSTEMS {
        return Err(ScrambleError::Config(format!(
            "{} CA systems asked for; at most {MAX_CA_SYSTEMS} are supported",
            cas.len()
        )));
    }
    if generators != 0 && generators != cas.len() {
        return Err(ScrambleError::Config(format!(
            "{generators} ECM generators for {} CA systems: give one per CA system (each needs an ECM PID)",
            cas.len()
        )));
    }
    let ecm_pids = cas.iter().map(|c| c.ecm_pid);
    for (i, pid) in ecm_pids.clone().chain(config.emm_pid).enumerate() {
        if pid.is_psi_reserved() || pid == Pid::NULL {
            return Err(ScrambleError::Config(format!(
                "PID {pid} cannot carry ECM/EMM (reserved or null)"
            )));
        }
        if ecm_pids.clone().take(i).any(|p| p == pid) {
            return Err(ScrambleError::Config(format!(
                "PID {pid} is given to two CA streams: each CA system needs its own ECM PID, apart from the EMM PID"
            )));
        }
    }
    for c in cas {
        if c.delay_start_ms.unsigned_abs() as u128 >= config.crypto_period.as_millis() {
            return Err(ScrambleError::Config(format!(
                "delay_start {} ms of CA system {:#06x} must be shorter than the crypto period",
                c.delay_start_ms, c.ca_system_id
            )));
        }
        if c.private_data.len() > 200 {
            return Err(ScrambleError::Config(
                "CA_descriptor private data is at most 200 bytes".to_owned(),
            ));
        }
    }
    Ok(())
}
