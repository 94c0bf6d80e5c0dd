//! The scrambling stage: packets in, packets out (scrambled ES, rewritten PMT, ECMs).
//!
//! # Crypto periods
//!
//! Period N uses CW(N) under parity N mod 2 (even: TSC 10, odd: TSC 11). The key
//! context always holds CW(N) and CW(N+1), so when period N+1 starts nothing has to be
//! computed: the slot of N is then refilled with CW(N+2). Periods are consecutive
//! whatever happens to time (a PCR jump or a stalled input starts the next period at
//! once and re-bases the schedule), because a descrambler reading the CW log counts
//! parity flips to find its line.
//!
//! With ECM generators, the ECM of period N (CW(N) current, CW(N+1) next) goes on air
//! at start(N) + delay_start of its CA system; once it is, the generator is told about
//! period N+1 ahead of time ([`EcmGenerator::prepare`]), so a SimulCrypt ECMG has a whole
//! period to answer. A switch to N+1 needs CW(N+1) on air in an ECM of *every* CA system
//! (SimulCrypt: one CW, an ECM per CAS); if a generator failed, the switch is held
//! (degraded mode: the current key stays, the hold is counted and logged once) until
//! each system has an ECM carrying it out.
//!
//! # Batches
//!
//! Each input batch is copied once into a reused output buffer (PMT packets replaced,
//! ECM packets inserted or put in null slots), each packet marked for the cipher or not;
//! the marked packets are scrambled in place in as few engine calls as possible (one per
//! batch, two when a key switch falls inside it).

use std::time::Duration;

use csa::{payload_offset, KeyContext, Parity};

use super::cat::CatWriter;
use super::clock::Clock;
use super::config::{ClockMode, ScrambleConfig, MAX_CA_SYSTEMS};
use super::cw::CwLogWriter;
use super::demux::{Demux, Role};
use super::ecm::{EcmGenerator, EcmInserter};
use super::emm::{EmmInserter, EmmSource};
use super::error::ScrambleError;
use super::keys::{CryptoPeriod, KeySource};
use super::stats::Counters;
use crate::ts::packet::{null_packet, Packet, PACKET_SIZE};
use crate::ts::{PacketRef, Pid};

/// Once-only warnings, so a repeated data-path problem is logged once.
#[derive(Debug, Default)]
struct Warned {
    degraded: bool,
    ecm_failure: bool,
    ours_in_input: bool,
    missing_services: bool,
    no_ecm_generator: bool,
    unreferenced: bool,
}

/// The ECMs of one CA system: its inserter and when its content switches.
#[derive(Debug)]
struct EcmStream {
    inserter: EcmInserter,
    delay_start_ms: i64,
}

impl EcmStream {
    /// Whether an ECM carrying the CW of `period` is on air.
    fn covers(&self, period: CryptoPeriod) -> bool {
        // the ECM of period N carries CW(N) and CW(N+1)
        self.inserter.on_air().is_some_and(|p| p.0 + 1 >= period.0)
    }
}

/// Scrambles a transport stream, batch by batch.
#[derive(Debug)]
pub struct Scrambler {
    demux: Demux,
    clock: Clock,
    keys: KeySource,
    ctx: KeyContext,
    min_payload: usize,
    period: CryptoPeriod,
    period_len: Duration,
    /// When the next period starts; None with one fixed key.
    next_switch: Option<Duration>,
    /// One ECM stream per CA system (empty without generators).
    ecms: Vec<EcmStream>,
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
}

/// The cipher work a batch left in deferred mode: the packets of the output buffer to
/// scramble (`packets`, by index; `select[i]` says whether packet i is), with `ctx` under
/// `parity`. Valid until the scrambler is next used.
#[derive(Debug)]
pub struct PendingCipher<'a> {
    pub ctx: &'a KeyContext,
    pub parity: Parity,
    pub packets: std::ops::Range<usize>,
    pub select: &'a [bool],
}

impl Scrambler {
    /// A scrambler for `config`, logging CWs to `cw_log` (optional). `ecm` holds the ECM
    /// generators, one per entry of `config.ca_systems` in the same order, or none at all
    /// (the PMTs then name the ECM PIDs but no ECM is sent).
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
        let mut keys = KeySource::new(
            config.keys.clone(),
            config.algorithm,
            config.cw_checksum,
            cw_log,
        )?;
        let ctx = {
            let even = keys.cw(CryptoPeriod(0))?.clone();
            let odd = keys.cw(CryptoPeriod(1))?.clone();
            KeyContext::from_bytes(config.algorithm, even.as_bytes(), odd.as_bytes())?
        };
        let no_ecm_generator = !config.ca_systems.is_empty() && ecm.is_empty();
        let ecms = ecm
            .into_iter()
            .zip(&config.ca_systems)
            .map(|(g, ca)| EcmStream {
                inserter: EcmInserter::new(g, ca.ecm_pid, ca.ca_system_id, ca.ecm_repetition),
                delay_start_ms: ca.delay_start_ms,
            })
            .collect();
        let single = keys.is_single_fixed();
        Ok(Scrambler {
            demux: Demux::new(&config),
            clock: Clock::new(config.clock),
            keys,
            ctx,
            min_payload: config.algorithm.key_len(),
            period: CryptoPeriod(0),
            period_len: config.crypto_period,
            next_switch: (!single).then_some(config.crypto_period),
            ecms,
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
        self.deferred = on && self.ctx.algorithm() == csa::Algorithm::Csa2;
    }

    /// Whether deferred cipher is on.
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// The cipher work the last batch left (deferred mode), if any.
    pub fn pending_cipher(&self) -> Option<PendingCipher<'_>> {
        let (from, to, parity) = self.pending?;
        Some(PendingCipher {
            ctx: &self.ctx,
            parity,
            packets: from..to,
            select: &self.sel[from..to],
        })
    }

    /// The caller has scrambled the pending segment.
    pub fn cipher_done(&mut self) {
        self.pending = None;
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
        self.period
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
                self.pending = Some((from, to, self.period.parity()));
            }
            self.seg_start = to;
        } else {
            self.flush_segment()?;
        }
        let n_out = (self.out.len() / PACKET_SIZE) as u64;
        self.counters.stream.packets_out += n_out;
        self.counters.stream.random_failures = self.keys.random_failures;
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
        {
            let c = self.counters.pid_mut(pid);
            c.input += 1;
            if p.tei() {
                c.errors += 1;
            }
        }
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
            Role::Scrambled => {
                let tsc = pkt[3] >> 6;
                let c = self.counters.pid_mut(pid);
                let scramble = if tsc != 0 {
                    c.already_scrambled += 1;
                    false
                } else {
                    match payload_offset(pkt) {
                        None => {
                            c.no_payload += 1;
                            false
                        }
                        Some(start) => {
                            if PACKET_SIZE - start < self.min_payload {
                                c.short_payload += 1;
                            } else {
                                c.scrambled += 1;
                            }
                            true
                        }
                    }
                };
                self.push(pkt, scramble);
            }
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
        for i in 0..self.ecms.len() {
            while let Some(e) = self.ecms[i].inserter.take_to_add(now) {
                self.push(&e, false);
                let ecm_pid = self.ecms[i].inserter.pid();
                self.count_ecm(ecm_pid, false);
            }
        }
        while let Some(m) = self.take_mux_packet(now, false) {
            self.push(&m, false);
        }
        Ok(())
    }

    fn tick_inserters(&mut self, now: Duration) {
        for ecm in &mut self.ecms {
            ecm.inserter.tick(now);
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
        self.ecms.iter_mut().find_map(|e| {
            let pid = e.inserter.pid();
            e.inserter.take_for_null(now).map(|p| (p, pid))
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
            let parity = self.period.parity();
            let sel = &self.sel[from..to];
            self.ctx
                .scramble_selected(&mut self.out[from * PACKET_SIZE..to * PACKET_SIZE], |i| {
                    sel[i].then_some(parity)
                })?;
        }
        self.seg_start = to;
        Ok(())
    }

    /// Bring ECM content and the key period up to `now`.
    fn advance(&mut self, now: Duration) -> Result<(), ScrambleError> {
        loop {
            self.update_ecm(now)?;
            let Some(switch_at) = self.next_switch else {
                return Ok(());
            };
            if now < switch_at || self.pending.is_some() {
                // (a deferred segment still to scramble needs the key in force for it)
                return Ok(());
            }
            let next = self.period.next();
            if self.ecms.iter().any(|e| !e.covers(next)) {
                self.counters.stream.degraded_holds += 1;
                if !self.warned.degraded {
                    self.warned.degraded = true;
                    tracing::warn!(
                        period = next.0,
                        "degraded mode: the ECM with the next CW is not on air for every CA system; \
                         holding the current CW"
                    );
                }
                return Ok(());
            }
            // packets so far in this batch belong to the old period
            self.flush_segment()?;
            self.period = next;
            self.counters.stream.key_switches += 1;
            let after = self.period.next();
            let cw = self.keys.cw(after)?.clone();
            self.ctx.set_key(after.parity(), cw.as_bytes())?;
            if self.period.0 >= 1 {
                self.keys.forget_before(CryptoPeriod(self.period.0 - 1));
            }
            self.next_switch = Some(if now >= switch_at + self.period_len {
                now + self.period_len
            } else {
                switch_at + self.period_len
            });
        }
    }

    /// Put the ECM of the right period on air (start(N) + delay_start) for each CA system.
    fn update_ecm(&mut self, now: Duration) -> Result<(), ScrambleError> {
        for i in 0..self.ecms.len() {
            self.update_one_ecm(i, now)?;
        }
        Ok(())
    }

    fn update_one_ecm(&mut self, i: usize, now: Duration) -> Result<(), ScrambleError> {
        let delay_start_ms = self.ecms[i].delay_start_ms;
        let delay = Duration::from_millis(delay_start_ms.unsigned_abs());
        let mut target = self.period;
        if let Some(switch_at) = self.next_switch {
            if delay_start_ms < 0 && now + delay >= switch_at {
                target = self.period.next();
            } else if delay_start_ms > 0 && self.period.0 > 0 {
                let period_start = switch_at.saturating_sub(self.period_len);
                if now < period_start + delay {
                    target = CryptoPeriod(self.period.0 - 1);
                }
            }
        }
        if self.ecms[i].inserter.on_air().is_some_and(|p| p >= target) {
            return Ok(());
        }
        let current = self.keys.cw(target)?.clone();
        let next = self.keys.cw(target.next())?.clone();
        let ecm = &mut self.ecms[i];
        match ecm.inserter.set_period(target, &current, &next, now) {
            Ok(()) => {
                self.counters.stream.ecms_generated += 1;
                // announce the period after while this one is on air (once: the period on
                // air only moves forward, so each success is a new period)
                let ahead = target.next();
                let after = self.keys.cw(ahead.next())?.clone();
                self.ecms[i].inserter.prepare(ahead, &next, &after);
            }
            Err(e) => {
                self.counters.stream.ecm_failures += 1;
                if !self.warned.ecm_failure {
                    self.warned.ecm_failure = true;
                    let pid = self.ecms[i].inserter.pid();
                    tracing::warn!(error = %e, period = target.0, ecm_pid = %pid, "ECM generator failed");
                }
            }
        }
        Ok(())
    }

    /// Wall-clock mode: call between batches when no packet came, so periods and ECMs go on.
    pub fn idle(&mut self) -> Result<(), ScrambleError> {
        if !self.clock.is_stream() {
            let now = self.clock.now();
            self.advance(now)?;
        }
        Ok(())
    }

    /// Parity in use now.
    pub fn parity(&self) -> Parity {
        self.period.parity()
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
