//! The crypto-period schedule: which key is in force, when it switches, and which ECM
//! each CA system has on air.
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
//! ```text
//!  time        start(N)                        start(N+1)
//!  key          CW(N-1) | CW(N)                   | CW(N+1)
//!  ECM, ds<0    ECM(N) ...............  | ECM(N+1) ........
//!  ECM, ds>0    ECM(N-1)  ...  | ECM(N) ...................  | ECM(N+1)
//! ```
//!
//! The ECM of period N carries CW(N) (current) and CW(N+1) (next) and goes on air at
//! start(N) + delay_start of its CA system (SimulCrypt delay_start: negative = before the
//! key switch, so ECM(N) may be out while CW(N-1) is still in use; positive = after, so
//! ECM(N-1), which carries CW(N) as its next CW, covers the first moments of N). Once
//! ECM(N) is on air the generator is told about N+1 ahead of time
//! ([`EcmGenerator::prepare`]), so a SimulCrypt ECMG has a whole period to answer.
//!
//! # Degraded mode
//!
//! A switch to N+1 needs CW(N+1) on air in an ECM of *every* CA system (SimulCrypt: one
//! CW, an ECM per CAS). If a generator failed, the switch is held: the current key stays
//! in force (the service stays scrambled, never clear). That is degraded mode. Each
//! episode is logged when it starts (a warning naming the ECM PIDs without the next CW)
//! and when it ends (the held switch happens once every system has an ECM carrying the
//! next CW), and counted: `degraded_episodes` once per episode, `degraded_holds` at each
//! time the schedule found the switch due and held it.
//!
//! With several CA systems, [`CasPolicy::Any`] lets the switch go once *one* system has
//! the next CW on air: a dead CAS then no longer holds the others. Its PID keeps its last
//! ECM (which still carries the key of the period after it, so its cards lose the service
//! one period later); each such switch is counted in `lagging_cas_switches`. With none on
//! air, the switch is held as above: never clear because a CAS failed.
//!
//! # ECMs from prepared slots
//!
//! The schedule never waits on a generator on a live run: it announces a period ahead
//! ([`EcmGenerator::prepare`]; period 0 in [`Schedule::start`], before the first packet),
//! and at the period's content switch it takes the ECM if it is ready ([`EcmGenerator::generate`]
//! never blocks); if not, the previous ECM stays on air, the failure is counted, and it
//! asks again at the next advance. An ECM that comes late only delays the key switch
//! (degraded mode above), never lets a packet out clear.
//!
//! Where time is the stream's (a file or a pipe, processed faster than real time), the
//! ECMG's answer time would otherwise hold every switch: there the schedule may wait
//! ([`Schedule::set_ecm_wait`]) up to a bound for an ECM it needs, as long as the generator
//! has been answering (after a wait that ran out it stops waiting until an ECM comes again,
//! so a dead ECMG costs one wait, not one per batch).
//!
//! # Use
//!
//! The owner (the scrambling stage) calls [`Schedule::advance`] with the time now; when
//! it answers [`Step::Switch`], the packets so far belong to the current key: the owner
//! scrambles them under [`Schedule::parity`], then calls [`Schedule::switch`] and
//! advances again.

use std::time::Duration;

use super::config::CasPolicy;
use super::stats::monotonic_ms;

use csa::{KeyContext, Parity};

use super::config::ScrambleConfig;
use super::cw::CwLogWriter;
use super::ecm::{EcmGenerator, EcmInserter};
use super::error::ScrambleError;
use super::keys::{CryptoPeriod, KeySource};
use crate::ts::Pid;

/// How long the ECMs of period 0 are waited for in [`Schedule::start`], and the bound of
/// each wait on a run that may wait ([`Schedule::set_ecm_wait`]). An ECMG answers within
/// its max_comp_time (typically well under a second).
pub const ECM_WAIT: Duration = Duration::from_secs(2);

/// What the schedule says after [`Schedule::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The key in force stays.
    Steady,
    /// The key switches now: scramble what is pending under the current parity, then call
    /// [`Schedule::switch`].
    Switch,
}

/// Counters of the schedule (copied into the stream counters of a run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduleCounters {
    /// Crypto periods started (after the first).
    pub key_switches: u64,
    /// Times a key switch was held back because the ECM naming the next CW was not on air.
    pub degraded_holds: u64,
    /// Times degraded mode was entered (each episode ends with the held key switch).
    pub degraded_episodes: u64,
    /// Key switches under [`CasPolicy::Any`] past a CA system whose ECM lacked the new CW
    /// (one per lagging system per switch).
    pub lagging_cas_switches: u64,
    /// ECM sections obtained from the generators.
    pub ecms_generated: u64,
    /// ECM generator failures.
    pub ecm_failures: u64,
    /// Random CW generation failures (the previous CW was held).
    pub random_failures: u64,
}

/// The ECMs of one CA system: its inserter and when its content switches.
#[derive(Debug)]
struct EcmStream {
    inserter: EcmInserter,
    delay_start_ms: i64,
    /// Its generator's last answer was an ECM (or none asked yet), and no wait for it ran
    /// out since: on a run that may wait, the next one is waited for.
    answering: bool,
    /// When its content last changed ([`monotonic_ms`]), 0 = never.
    changed_ms: u64,
}

impl EcmStream {
    /// Whether an ECM carrying the CW of `period` has gone out (whole, into the stream).
    fn covers(&self, period: CryptoPeriod) -> bool {
        // the ECM of period N carries CW(N) and CW(N+1)
        self.inserter.emitted().is_some_and(|p| p.0 + 1 >= period.0)
    }
}

/// Once-only warnings.
#[derive(Debug, Default)]
struct Warned {
    ecm_failure: bool,
}

/// A degraded-mode episode: a key switch held since `since`.
#[derive(Debug, Clone, Copy)]
struct Degraded {
    since: Duration,
    /// `degraded_holds` when the episode started.
    holds_before: u64,
}

/// The crypto-period state machine of one scrambled stream.
#[derive(Debug)]
pub struct Schedule {
    keys: KeySource,
    ctx: KeyContext,
    period: CryptoPeriod,
    period_len: Duration,
    /// When the next period starts; None with one fixed key.
    next_switch: Option<Duration>,
    /// Set by `advance` when the switch is due and allowed; `switch` acts only then.
    switch_due: bool,
    /// One ECM stream per CA system (empty without generators).
    ecms: Vec<EcmStream>,
    /// How long a needed ECM may be waited for; None (live runs): never.
    ecm_wait: Option<Duration>,
    /// The degraded-mode episode under way, if any.
    degraded: Option<Degraded>,
    /// What a key switch waits for.
    policy: CasPolicy,
    /// CA systems left behind by a switch under [`CasPolicy::Any`] (logged once each
    /// until they catch up).
    lagging: Vec<bool>,
    counters: ScheduleCounters,
    warned: Warned,
}

impl Schedule {
    /// The schedule of `config` (its keys, crypto period and CA systems), logging CWs to
    /// `cw_log`. `ecm` holds the ECM generators, one per entry of `config.ca_systems` in the
    /// same order, or none at all (the caller has checked that).
    pub fn new(
        config: &ScrambleConfig,
        cw_log: Option<CwLogWriter>,
        ecm: Vec<Box<dyn EcmGenerator>>,
    ) -> Result<Self, ScrambleError> {
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
        let ecms = ecm
            .into_iter()
            .zip(&config.ca_systems)
            .map(|(g, ca)| EcmStream {
                inserter: EcmInserter::new(g, ca.ecm_pid, ca.ca_system_id, ca.ecm_repetition),
                delay_start_ms: ca.delay_start_ms,
                answering: true,
                changed_ms: 0,
            })
            .collect();
        let single = keys.is_single_fixed();
        Ok(Schedule {
            keys,
            ctx,
            period: CryptoPeriod(0),
            period_len: config.crypto_period,
            next_switch: (!single).then_some(config.crypto_period),
            switch_due: false,
            ecms,
            ecm_wait: None,
            degraded: None,
            policy: config.cas_policy,
            lagging: vec![false; config.ca_systems.len()],
            counters: ScheduleCounters::default(),
            warned: Warned::default(),
        })
    }

    /// Let the schedule wait up to `wait` for an ECM it needs (None: never wait). For runs
    /// whose clock is the stream's: waiting there delays output, not the schedule.
    pub fn set_ecm_wait(&mut self, wait: Option<Duration>) {
        self.ecm_wait = wait;
    }

    /// Before the first packet: announce period 0 to every generator and give them up to
    /// `within` (together) to have its ECM ready, so that the first scrambled packet finds
    /// it on air. The data path has not started, so this wait stalls nothing.
    pub fn start(&mut self, within: Duration) -> Result<(), ScrambleError> {
        if self.ecms.is_empty() {
            return Ok(());
        }
        let first = self.period;
        let current = self.keys.cw(first)?.clone();
        let next = self.keys.cw(first.next())?.clone();
        for e in &mut self.ecms {
            e.inserter.prepare(first, &current, &next);
        }
        let deadline = std::time::Instant::now() + within;
        for e in &mut self.ecms {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            e.answering = e.inserter.wait_for(first, &current, &next, left);
        }
        Ok(())
    }

    /// The crypto period in force.
    pub fn period(&self) -> CryptoPeriod {
        self.period
    }

    /// The parity of the key in force.
    pub fn parity(&self) -> Parity {
        self.period.parity()
    }

    /// The keys: CW(N) and CW(N+1) under their parities.
    pub fn key_context(&self) -> &KeyContext {
        &self.ctx
    }

    /// Whether an ECM carrying the key in force is on air for some CA system (always, with
    /// no ECM stream). Before that, a receiver has nothing to open the service with.
    pub fn ecm_on_air(&self) -> bool {
        self.ecms.is_empty() || self.ecms.iter().any(|e| e.covers(self.period))
    }

    /// When each CA system's ECM content last changed ([`monotonic_ms`], 0 = never).
    pub fn ecm_changed_ms(&self) -> impl Iterator<Item = u64> + '_ {
        self.ecms.iter().map(|e| e.changed_ms)
    }

    /// Whether a key switch is being held (degraded mode).
    pub fn is_degraded(&self) -> bool {
        self.degraded.is_some()
    }

    /// The counters so far.
    pub fn counters(&self) -> ScheduleCounters {
        ScheduleCounters {
            random_failures: self.keys.random_failures,
            ..self.counters
        }
    }

    /// How many CA systems have an ECM stream.
    pub fn ecm_streams(&self) -> usize {
        self.ecms.len()
    }

    /// The inserter of ECM stream `i` (the mux repeats and inserts its packets).
    pub fn ecm_inserter(&mut self, i: usize) -> &mut EcmInserter {
        &mut self.ecms[i].inserter
    }

    /// The ECM inserters, in the order of the CA systems.
    pub fn ecm_inserters(&mut self) -> impl Iterator<Item = &mut EcmInserter> {
        self.ecms.iter_mut().map(|e| &mut e.inserter)
    }

    /// Bring ECM content up to `now` and say whether the key switches now.
    pub fn advance(&mut self, now: Duration) -> Result<Step, ScrambleError> {
        self.switch_due = false;
        self.update_ecm(now)?;
        let Some(switch_at) = self.next_switch else {
            return Ok(Step::Steady);
        };
        if now < switch_at {
            return Ok(Step::Steady);
        }
        let next = self.period.next();
        let held = match self.policy {
            CasPolicy::All => self.ecms.iter().any(|e| !e.covers(next)),
            CasPolicy::Any => !self.ecms.is_empty() && !self.ecms.iter().any(|e| e.covers(next)),
        };
        if held {
            if self.degraded.is_none() {
                self.degraded = Some(Degraded {
                    since: now,
                    holds_before: self.counters.degraded_holds,
                });
                self.counters.degraded_episodes += 1;
                let missing: Vec<String> = self
                    .ecms
                    .iter()
                    .filter(|e| !e.covers(next))
                    .map(|e| e.inserter.pid().to_string())
                    .collect();
                tracing::warn!(
                    period = next.0,
                    ecm_pids = %missing.join(","),
                    "degraded mode entered: the ECM with the next CW is not on air for every CA \
                     system; holding the current CW (the service stays scrambled)"
                );
            }
            self.counters.degraded_holds += 1;
            return Ok(Step::Steady);
        }
        if self.policy == CasPolicy::Any {
            for (i, e) in self.ecms.iter().enumerate() {
                let behind = !e.covers(next);
                if behind {
                    self.counters.lagging_cas_switches += 1;
                    if !self.lagging[i] {
                        tracing::warn!(
                            period = next.0,
                            ecm_pid = %e.inserter.pid(),
                            "CAS policy any: the key switches without this CA system's ECM; \
                             its PID keeps its last ECM and its cards lose the service until it \
                             is back"
                        );
                    }
                } else if self.lagging[i] {
                    tracing::info!(ecm_pid = %e.inserter.pid(), "CA system caught up: its ECM carries the key again");
                }
                self.lagging[i] = behind;
            }
        }
        self.switch_due = true;
        Ok(Step::Switch)
    }

    /// Start the next period (after [`Schedule::advance`] answered [`Step::Switch`] and the
    /// packets under the current key were scrambled); does nothing otherwise.
    pub fn switch(&mut self, now: Duration) -> Result<(), ScrambleError> {
        let (true, Some(switch_at)) = (self.switch_due, self.next_switch) else {
            return Ok(());
        };
        self.switch_due = false;
        self.period = self.period.next();
        self.counters.key_switches += 1;
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
        if let Some(d) = self.degraded.take() {
            tracing::info!(
                period = self.period.0,
                held_ms = now.saturating_sub(d.since).as_millis() as u64,
                holds = self.counters.degraded_holds - d.holds_before,
                "degraded mode left: every CA system has the ECM with the new CW on air; \
                 key switched"
            );
        }
        Ok(())
    }

    /// Put the ECM of the right period on air (start(N) + delay_start) for each CA system.
    fn update_ecm(&mut self, now: Duration) -> Result<(), ScrambleError> {
        for i in 0..self.ecms.len() {
            self.update_one_ecm(i, now)?;
        }
        Ok(())
    }

    /// The period whose ECM stream `i` should carry at `now`.
    fn ecm_target(&self, i: usize, now: Duration) -> CryptoPeriod {
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
        target
    }

    fn update_one_ecm(&mut self, i: usize, now: Duration) -> Result<(), ScrambleError> {
        let target = self.ecm_target(i, now);
        if self.ecms[i].inserter.on_air().is_some_and(|p| p >= target) {
            return Ok(());
        }
        let current = self.keys.cw(target)?.clone();
        let next = self.keys.cw(target.next())?.clone();
        let ecm = &mut self.ecms[i];
        if let (Some(within), true) = (self.ecm_wait, ecm.answering) {
            ecm.answering = ecm.inserter.wait_for(target, &current, &next, within);
        }
        let res = ecm.inserter.set_period(target, &current, &next, now);
        ecm.answering = res.is_ok();
        match res {
            Ok(()) => {
                self.counters.ecms_generated += 1;
                self.ecms[i].changed_ms = monotonic_ms();
                // announce the period after while this one is on air (once: the period on
                // air only moves forward, so each success is a new period)
                let ahead = target.next();
                let after = self.keys.cw(ahead.next())?.clone();
                self.ecms[i].inserter.prepare(ahead, &next, &after);
            }
            Err(e) => {
                self.counters.ecm_failures += 1;
                if !self.warned.ecm_failure {
                    self.warned.ecm_failure = true;
                    let pid: Pid = self.ecms[i].inserter.pid();
                    tracing::warn!(error = %e, period = target.0, ecm_pid = %pid, "ECM generator failed");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The schedule driven by a fake clock (times in ms handed to `advance`) and fake ECM
    //! generators whose answers are scripted per period against the same clock.

    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::scramble::config::{CaSystem, KeyMode};
    use crate::scramble::ecm::{EcmError, EcmRequest};
    use crate::scramble::Cw;
    use crate::ts::psi_write::write_private_section;

    /// What a fake generator answers for a period.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        /// The ECM, from this time (ms) on; before it, Unavailable (still coming).
        ReadyAt(u64),
        /// Never an ECM (a dead ECMG).
        Never,
        /// A section with the wrong table_id (a confused ECMG).
        Bad,
    }

    /// A call the schedule made: ('p'repare, 'w'ait, 'g'enerate answered, 'u'navailable), period.
    type Calls = Arc<Mutex<Vec<(char, u64)>>>;

    struct Fake {
        now: Arc<AtomicU64>,
        answer: fn(u64) -> Answer,
        calls: Calls,
    }

    impl EcmGenerator for Fake {
        fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
            let period = req.period.0;
            let table_id = match (self.answer)(period) {
                Answer::ReadyAt(t) if self.now.load(Relaxed) >= t => req.table_id(),
                Answer::Bad => 0x42,
                Answer::ReadyAt(_) | Answer::Never => {
                    self.calls.lock().unwrap().push(('u', period));
                    return Err(EcmError::Unavailable("not yet".into()));
                }
            };
            self.calls.lock().unwrap().push(('g', period));
            write_private_section(out, table_id, &period.to_be_bytes())
                .map_err(|e| EcmError::Invalid(e.to_string()))?;
            Ok(())
        }

        fn prepare(&mut self, req: &EcmRequest<'_>) {
            self.calls.lock().unwrap().push(('p', req.period.0));
        }

        /// Waits no time: ready or not now.
        fn wait_for_ecm(&mut self, req: &EcmRequest<'_>, _within: Duration) -> bool {
            self.calls.lock().unwrap().push(('w', req.period.0));
            match (self.answer)(req.period.0) {
                Answer::ReadyAt(t) => self.now.load(Relaxed) >= t,
                Answer::Bad => true,
                Answer::Never => false,
            }
        }
    }

    /// A CA system of the harness: its delay_start (ms) and its generator's script.
    type System = (i64, fn(u64) -> Answer);

    fn on_time(_: u64) -> Answer {
        Answer::ReadyAt(0)
    }

    /// A schedule of 1 s periods with one fake generator per `(delay_start_ms, answer)`.
    struct Harness {
        s: Schedule,
        now: Arc<AtomicU64>,
        calls: Vec<Calls>,
    }

    impl Harness {
        fn new(systems: &[System]) -> Harness {
            let now = Arc::new(AtomicU64::new(0));
            let calls: Vec<Calls> = systems.iter().map(|_| Calls::default()).collect();
            let config = ScrambleConfig {
                crypto_period: Duration::from_secs(1),
                keys: KeyMode::FixedPair(
                    Cw::from_hex("0102030604050615").unwrap(),
                    Cw::from_hex("1112131614151655").unwrap(),
                ),
                ca_systems: systems
                    .iter()
                    .enumerate()
                    .map(|(i, (delay_start_ms, _))| CaSystem {
                        delay_start_ms: *delay_start_ms,
                        ..CaSystem::new(0x5510 + i as u16, Pid::new(0x1FF0 + i as u16))
                    })
                    .collect(),
                ..ScrambleConfig::default()
            };
            let generators = systems
                .iter()
                .zip(&calls)
                .map(|((_, answer), calls)| {
                    Box::new(Fake {
                        now: now.clone(),
                        answer: *answer,
                        calls: calls.clone(),
                    }) as Box<dyn EcmGenerator>
                })
                .collect();
            let mut s = Schedule::new(&config, None, generators).unwrap();
            s.start(ECM_WAIT).unwrap();
            let mut h = Harness { s, now, calls };
            h.emit(Duration::ZERO);
            h
        }

        /// Send the ECM packets due, as the scrambler does after each packet.
        fn emit(&mut self, t: Duration) {
            for e in self.s.ecm_inserters() {
                e.tick(t);
                while e.take_to_add(t).is_some() {}
            }
        }

        /// Advance to `t_ms` as the scrambler does; the periods switched to.
        fn at(&mut self, t_ms: u64) -> Vec<u64> {
            self.now.store(t_ms, Relaxed);
            let t = Duration::from_millis(t_ms);
            let mut switched = Vec::new();
            while self.s.advance(t).unwrap() == Step::Switch {
                switched.push(self.s.period().0 + 1);
                self.s.switch(t).unwrap();
            }
            self.emit(t);
            switched
        }

        /// Advance every 10 ms over `from..to`; (time, period switched to) of each switch.
        fn run(&mut self, from: u64, to: u64) -> Vec<(u64, u64)> {
            (from..to)
                .step_by(10)
                .flat_map(|t| self.at(t).into_iter().map(move |p| (t, p)))
                .collect()
        }

        fn on_air(&mut self, i: usize) -> Option<u64> {
            self.s.ecm_inserter(i).on_air().map(|p| p.0)
        }

        /// Advance every 10 ms over `from..to`; (time, period) whenever ECM stream `i` changes.
        fn ecm_changes(&mut self, i: usize, from: u64, to: u64) -> Vec<(u64, u64)> {
            let mut last = self.on_air(i);
            let mut v = Vec::new();
            for t in (from..to).step_by(10) {
                self.at(t);
                let now = self.on_air(i);
                if now != last {
                    v.push((t, now.unwrap()));
                    last = now;
                }
            }
            v
        }

        fn calls(&self, i: usize, kind: char) -> Vec<u64> {
            let calls = self.calls[i].lock().unwrap();
            calls.iter().filter(|c| c.0 == kind).map(|c| c.1).collect()
        }
    }

    /// Log lines written while `f` runs (this thread only).
    fn logs(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn periods_switch_on_time_and_each_ecm_goes_out_once() {
        let mut h = Harness::new(&[(0, on_time)]);
        let switches = h.run(0, 5005);
        assert_eq!(
            switches,
            vec![(1000, 1), (2000, 2), (3000, 3), (4000, 4), (5000, 5)]
        );
        assert_eq!(h.s.parity(), Parity::Odd);
        // period 0 was announced before the first packet, and waited for there
        assert_eq!(h.calls(0, 'p')[0], 0);
        assert_eq!(h.calls(0, 'w'), vec![0], "start only: the schedule is live");
        // each period's ECM asked once, and announced before it was asked for
        assert_eq!(h.calls(0, 'g'), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(h.calls(0, 'p'), vec![0, 1, 2, 3, 4, 5, 6]);
        let c = h.s.counters();
        assert_eq!(
            (c.key_switches, c.ecms_generated, c.ecm_failures),
            (5, 6, 0)
        );
        assert_eq!((c.degraded_holds, c.degraded_episodes), (0, 0));
    }

    #[test]
    fn a_late_start_or_a_stall_starts_the_next_period_at_once_and_rebases() {
        let mut h = Harness::new(&[(0, on_time)]);
        h.at(0);
        // the input stalls 3.5 s: one switch (periods stay consecutive), the next a period on
        assert_eq!(h.at(3500), vec![1]);
        assert_eq!(h.run(3510, 5000), vec![(4500, 2)]);
    }

    #[test]
    fn negative_delay_start_puts_the_next_ecm_on_air_before_the_switch() {
        let mut h = Harness::new(&[(-300, on_time)]);
        // ECM(N) at start(N) - 300 ms, while CW(N-1) is still in force
        assert_eq!(
            h.ecm_changes(0, 0, 3005),
            vec![(0, 0), (700, 1), (1700, 2), (2700, 3)]
        );
        let mut h = Harness::new(&[(-300, on_time)]);
        assert_eq!(h.run(0, 3005), vec![(1000, 1), (2000, 2), (3000, 3)]);
    }

    #[test]
    fn positive_delay_start_keeps_the_previous_ecm_after_the_switch() {
        let mut h = Harness::new(&[(300, on_time)]);
        // ECM(N) at start(N) + 300 ms; ECM(N-1) (next CW = CW(N)) covers the switch
        assert_eq!(
            h.ecm_changes(0, 0, 3005),
            vec![(0, 0), (1300, 1), (2300, 2)]
        );
        let mut h = Harness::new(&[(300, on_time)]);
        assert_eq!(h.run(0, 3005), vec![(1000, 1), (2000, 2), (3000, 3)]);
        assert_eq!(h.s.counters().degraded_holds, 0);
    }

    #[test]
    fn an_ecm_that_comes_after_the_switch_time_holds_the_switch_then_it_happens() {
        // ECM(2), needed for the switch to 3 at 3 s, comes at 3.4 s
        let mut h = Harness::new(&[(0, |p| Answer::ReadyAt(if p == 2 { 3400 } else { 0 }))]);
        let mut parity_during_hold = Vec::new();
        let mut switches = h.run(0, 3000);
        for t in (3000..3400).step_by(10) {
            switches.extend(h.at(t).into_iter().map(|p| (t, p)));
            parity_during_hold.push(h.s.parity());
        }
        switches.extend(h.run(3400, 5005));
        // held from 3 s to 3.4 s: still period 2's key (scrambled, never clear); ECM(2) goes
        // out at 3.4 s, the switch follows at the next advance (never before the ECM that
        // carries its key), and the next one on its own time
        assert!(parity_during_hold.iter().all(|p| *p == Parity::Even));
        assert_eq!(
            switches,
            vec![(1000, 1), (2000, 2), (3410, 3), (4000, 4), (5000, 5)]
        );
        let c = h.s.counters();
        assert_eq!(c.degraded_holds, 41, "one per advance from 3.0 to 3.40 s");
        assert_eq!(c.degraded_episodes, 1);
        // ECM(2) was asked for at each advance from its content switch (2 s) until it came
        assert_eq!(c.ecm_failures, 140);
        assert!(!h.s.is_degraded());
    }

    #[test]
    fn degraded_mode_is_logged_and_counted_once_per_episode() {
        // two late ECMs: two episodes, each entered and left once
        let mut h = Harness::new(&[(0, |p| match p {
            2 => Answer::ReadyAt(3400),
            5 => Answer::ReadyAt(6200),
            _ => Answer::ReadyAt(0),
        })]);
        let log = logs(|| {
            h.run(0, 8005);
        });
        assert_eq!(log.matches("degraded mode entered").count(), 2, "{log}");
        assert_eq!(log.matches("degraded mode left").count(), 2, "{log}");
        assert!(log.contains("period=3 ecm_pids=0x1ff0\n"), "{log}");
        assert!(log.contains("period=6 ecm_pids=0x1ff0\n"), "{log}");
        assert!(log.contains("held_ms=410"), "{log}");
        assert!(log.contains("held_ms=210"), "{log}");
        let c = h.s.counters();
        assert_eq!(c.degraded_episodes, 2);
        assert_eq!(c.degraded_holds, 41 + 21);
        assert_eq!(c.key_switches, 8);
        // the ECM failures are logged once per run
        assert_eq!(log.matches("ECM generator failed").count(), 1, "{log}");
    }

    #[test]
    fn an_ecmg_that_never_answers_holds_the_key_forever() {
        let mut h = Harness::new(&[(0, |p| {
            if p >= 2 {
                Answer::Never
            } else {
                Answer::ReadyAt(0)
            }
        })]);
        let switches = h.run(0, 20_000);
        assert_eq!(switches, vec![(1000, 1), (2000, 2)]);
        // period 2's key stays in force: the service stays scrambled, never clear
        assert_eq!(h.s.period(), CryptoPeriod(2));
        assert_eq!(h.s.parity(), Parity::Even);
        assert!(h.s.is_degraded());
        assert_eq!(h.on_air(0), Some(1), "the last good ECM stays on air");
        let c = h.s.counters();
        assert_eq!(c.degraded_episodes, 1);
        assert_eq!(c.degraded_holds, 1700, "every advance from 3 s to 20 s");
        // a live schedule never waits on the generator; it asks again each advance
        assert_eq!(h.calls(0, 'w'), vec![0]);
        assert_eq!(h.calls(0, 'u').len(), 1800);
    }

    #[test]
    fn a_bad_ecm_is_refused_and_the_previous_one_stays_on_air() {
        let mut h = Harness::new(&[(0, |p| {
            if p == 3 {
                Answer::Bad
            } else {
                Answer::ReadyAt(0)
            }
        })]);
        let switches = h.run(0, 6000);
        assert_eq!(switches, vec![(1000, 1), (2000, 2), (3000, 3)]);
        assert_eq!(
            h.on_air(0),
            Some(2),
            "ECM(2) stays; the bad section never goes out"
        );
        let c = h.s.counters();
        assert_eq!(c.ecm_failures, 300, "counted at every try from 3 s");
        assert_eq!(c.degraded_episodes, 1);
        assert!(h.s.is_degraded());
    }

    #[test]
    fn the_switch_waits_for_every_ca_system() {
        // the second CAS has no ECM(2) until 4.5 s: the first is ready, the key still waits;
        // held longer than a period, the schedule re-bases on the late switch
        let mut h = Harness::new(&[
            (0, on_time),
            (0, |p| Answer::ReadyAt(if p == 2 { 4500 } else { 0 })),
        ]);
        let log = logs(|| {
            let switches = h.run(0, 6005);
            assert_eq!(switches, vec![(1000, 1), (2000, 2), (4510, 3), (5510, 4)]);
        });
        // only the failing system is named
        assert!(log.contains("period=3 ecm_pids=0x1ff1\n"), "{log}");
        assert_eq!(log.matches("degraded mode entered").count(), 1, "{log}");
        assert!(log.contains("degraded mode left"), "{log}");
        let c = h.s.counters();
        assert_eq!(c.degraded_episodes, 1);
        assert_eq!(c.degraded_holds, 151);
        // both carry ECM(N) of the period in force again
        assert_eq!((h.on_air(0), h.on_air(1)), (Some(4), Some(4)));
    }

    #[test]
    fn a_schedule_that_may_wait_waits_for_a_needed_ecm_until_a_wait_runs_out() {
        // the fake "waits" without effect: ECM(2) comes at 3.4 s, ECM(4) never
        let mut h = Harness::new(&[(0, |p| match p {
            2 => Answer::ReadyAt(3400),
            4.. => Answer::Never,
            _ => Answer::ReadyAt(0),
        })]);
        h.s.set_ecm_wait(Some(Duration::from_millis(50)));
        h.run(0, 6000);
        // 0 at start and at its content switch (ready: at once); 1; 2 once: the wait runs
        // out and the schedule stops waiting until the ECMG answers again (3.4 s); 3; 4 once
        assert_eq!(h.calls(0, 'w'), vec![0, 0, 1, 2, 3, 4]);
        assert_eq!(h.s.period(), CryptoPeriod(4));
    }

    /// The scrambler flushes its segment exactly where the schedule switches, inside a
    /// batch: the output is the same for batches of 1, 7 and the whole stream, and every
    /// parity flip on the ES comes right at a PCR of the clock.
    #[test]
    fn a_switch_inside_a_batch_flushes_exactly_there() {
        use crate::scramble::Scrambler;
        use crate::ts::packet::{Packet, PACKET_SIZE};
        use crate::ts::PacketRef;

        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let data = std::fs::read(root.join("samples/spts.ts")).unwrap();
        let (input, _) = data.as_chunks::<PACKET_SIZE>();
        let config = || ScrambleConfig {
            crypto_period: Duration::from_millis(200),
            keys: KeyMode::FixedPair(
                Cw::from_hex("0102030604050615").unwrap(),
                Cw::from_hex("1112131614151655").unwrap(),
            ),
            ..ScrambleConfig::default()
        };
        let scramble = |batch: usize| {
            let mut s = Scrambler::new(config(), None, Vec::new()).unwrap();
            let mut out = Vec::new();
            for b in input.chunks(batch) {
                out.extend_from_slice(s.process(b).unwrap());
            }
            (out, s.counters().stream.key_switches)
        };
        let (whole, switches) = scramble(input.len());
        assert!(switches > 10, "{switches}");
        assert!(scramble(1).0 == whole, "batches of 1 differ from one batch");
        assert!(scramble(7).0 == whole, "batches of 7 differ from one batch");

        let (out, _) = whole.as_chunks::<PACKET_SIZE>();
        let pcr_pid = input
            .iter()
            .map(|p: &Packet| PacketRef::new(p))
            .filter(|p| p.pcr().is_some())
            .map(|p| p.pid())
            .next()
            .unwrap();
        let (mut flips, mut last_tsc, mut pcr_since_last) = (0, None, false);
        for p in out.iter().map(|p: &Packet| PacketRef::new(p)) {
            if p.pid() == pcr_pid && p.pcr().is_some() {
                pcr_since_last = true;
            }
            let tsc = p.bytes()[3] >> 6;
            if tsc < 2 || !p.has_payload() {
                continue;
            }
            if last_tsc.is_some_and(|l| l != tsc) {
                flips += 1;
                assert!(
                    pcr_since_last,
                    "a parity flip with no PCR since the last ES packet"
                );
            }
            last_tsc = Some(tsc);
            pcr_since_last = false;
        }
        assert_eq!(flips, switches);
    }
}
