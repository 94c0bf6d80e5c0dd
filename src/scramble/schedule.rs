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
    /// Its generator's last answer was an ECM (or none asked yet): on a run that may wait,
    /// the next one is waited for.
    answering: bool,
}

impl EcmStream {
    /// Whether an ECM carrying the CW of `period` is on air.
    fn covers(&self, period: CryptoPeriod) -> bool {
        // the ECM of period N carries CW(N) and CW(N+1)
        self.inserter.on_air().is_some_and(|p| p.0 + 1 >= period.0)
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
            e.inserter.wait_for(first, &current, &next, left);
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
        if self.ecms.iter().any(|e| !e.covers(next)) {
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
            ecm.inserter.wait_for(target, &current, &next, within);
        }
        let res = ecm.inserter.set_period(target, &current, &next, now);
        ecm.answering = res.is_ok();
        match res {
            Ok(()) => {
                self.counters.ecms_generated += 1;
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
