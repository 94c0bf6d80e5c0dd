//! The SCS side of ECMG<->SCS: the mux asks an external ECMG (TVCAS on port 43000, castmux's
//! own `castmux ecmg`, ...) for the ECMs of its crypto periods.
//!
//! The data path never waits on the network. A control task on tokio owns the connection:
//! channel_setup/stream_setup, channel_test keepalive, CW_provision for every period the
//! pipeline announces, ECM_responses stored as "ready" (the prepared slot). The pipeline's
//! [`EcmGenerator::generate`] (once per crypto period) takes the ready ECM without waiting;
//! when there is none yet it announces the period if it is new and returns
//! [`EcmError::Unavailable`] (counted) and the previous ECM and key stay on air — the
//! scrambler holds the current CW until an ECM with the next one is out (fail closed), and
//! asks again on its next batch. [`EcmGenerator::prepare`] / [`SimulcryptEcmg::provision`]
//! announce a period ahead of time so the ECM is ready when asked for;
//! [`EcmGenerator::wait_for_ecm`] waits for it where waiting stalls nothing live (before the
//! first packet, or a file run).
//!
//! On a lost link the task reconnects with exponential backoff and replays the CW_provisions
//! of the latest periods, so ECMs resume without the pipeline doing anything.
//!
//! What the ECMG says is passed on, never hidden behind a timeout:
//! - a channel_setup or stream_setup answered with an error ends [`SimulcryptEcmg::wait_ready`]
//!   at once with [`ScsError::Refused`] naming the error_status, when the status cannot change
//!   by trying again (unknown Super_CAS_id, a malformed message, ...); otherwise the wait goes
//!   on and a timeout names the last refusal or link error;
//! - version 3 refused with `unsupported protocol version` (0x0002) sets the channel up again
//!   at once in version 2, when [`ScsConfig::version_fallback`] allows it (the version was not
//!   chosen by the operator): TSDuck's `tsecmg` speaks version 2 unless told otherwise. The
//!   version found is kept for every reconnection;
//! - a CW_provision answered with a channel_error/stream_error marks its crypto period
//!   refused: [`EcmGenerator::generate`] then answers [`EcmError::Refused`] with the ECMG's
//!   error_status by name (counted in `refused`), so a file run can stop with that message
//!   while a live run holds the key and asks again after a while.
//!
//! Several CAS on one service: one `SimulcryptEcmg` per ECMG connection, each feeding its own
//! ECM PID (the pipeline builds one `EcmInserter` per instance; `ca_system_id()` is the
//! CA_descriptor's id). Every instance receives the same CWs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::conn::{connect, FrameReader, FrameWriter, LinkError};
use super::datagram::{check_sections, packets_to_sections};
use super::ecmg_messages::{ChannelStatus, CpCw, CwProvision, EcmgMessage};
use super::tlv::error_information;
use super::types::{error_status_names, EcmgErrorStatus};
use crate::cas::ecm::ecm_table_id;
use crate::scramble::ecm::{EcmError, EcmGenerator, EcmRequest};
use crate::scramble::Cw;

/// Settings of one ECMG connection. [`ScsConfig::new`] fills the documented defaults.
#[derive(Debug, Clone)]
pub struct ScsConfig {
    /// The ECMG, `host:port` (the primary when there are backups).
    pub ecmg: String,
    /// Backup ECMGs of the same CAS, tried in order when the link to the one in use is
    /// lost; the primary comes back once it has accepted connections for `primary_check`
    /// twice in a row. Default none.
    pub backups: Vec<String>,
    /// How often the primary is probed while a backup is in use. Default 3 s.
    pub primary_check: Duration,
    /// Protocol version (2 or 3). Default 3.
    pub version: u8,
    /// Set up again in version 2 when the ECMG refuses version 3 with `unsupported protocol
    /// version`. Default true; turn it off when the operator chose the version.
    pub version_fallback: bool,
    /// Super_CAS_id (CA_system_id << 16 | CA_subsystem_id).
    pub super_cas_id: u32,
    /// ECM_channel_id. Default 1.
    pub channel_id: u16,
    /// ECM_stream_id. Default 1 (Astra's "start stream id with 1").
    pub stream_id: u16,
    /// ECM_id. Default 1.
    pub ecm_id: u16,
    /// access_criteria bytes sent with every CW_provision. Default none.
    pub access_criteria: Vec<u8>,
    /// Crypto period (nominal_CP_duration, CP_duration). Default 10 s.
    pub crypto_period: Duration,
    /// channel_test interval. Default 5 s; the link is dropped after 3 silent intervals.
    pub keepalive: Duration,
    /// Time allowed for connecting and each setup answer. Default 5 s.
    pub setup_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`. Default 200 ms.
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default 10 s.
    pub backoff_max: Duration,
}

impl ScsConfig {
    /// Settings for `ecmg` and `super_cas_id` with the defaults above.
    pub fn new(ecmg: impl Into<String>, super_cas_id: u32) -> Self {
        ScsConfig {
            ecmg: ecmg.into(),
            backups: Vec::new(),
            primary_check: Duration::from_secs(3),
            version: 3,
            version_fallback: true,
            super_cas_id,
            channel_id: 1,
            stream_id: 1,
            ecm_id: 1,
            access_criteria: Vec::new(),
            crypto_period: Duration::from_secs(10),
            keepalive: Duration::from_secs(5),
            setup_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }

    /// CP_duration in 100 ms units (at least 1).
    fn cp_units(&self) -> u16 {
        (self.crypto_period.as_millis() / 100).clamp(1, u128::from(u16::MAX)) as u16
    }
}

/// Counters of one ECMG connection (live).
#[derive(Debug, Default)]
pub struct ScsStats {
    /// Successful channel+stream setups (1 + reconnections).
    pub setups: AtomicU64,
    /// Connections lost or refused.
    pub link_failures: AtomicU64,
    /// CW_provisions sent (replays and retries included).
    pub provisions_sent: AtomicU64,
    /// ECM_responses accepted.
    pub ecms_received: AtomicU64,
    /// ECMs handed to the pipeline.
    pub ecms_delivered: AtomicU64,
    /// `generate` calls answered Unavailable (no ECM ready): the previous ECM stayed on air.
    pub unavailable: AtomicU64,
    /// ECM_responses that came after max_comp_time.
    pub late: AtomicU64,
    /// CW_provisions with no answer in time (resent up to twice, then given up).
    pub timeouts: AtomicU64,
    /// ECM_responses that were not sections of the right table_id, or for no asked period.
    pub bad_ecms: AtomicU64,
    /// channel_error/stream_error from the ECMG.
    pub errors_received: AtomicU64,
    /// CW_provisions the ECMG answered with an error instead of an ECM (also in
    /// `errors_received`); their periods are asked again after a while.
    pub refused: AtomicU64,
    /// Setups done again in version 2 after the ECMG refused version 3.
    pub version_fallbacks: AtomicU64,
    /// Links moved to the next ECMG of the list (primary -> backup, or on) after a failure.
    pub failovers: AtomicU64,
    /// Links moved back to the primary once it answered again.
    pub returns: AtomicU64,
    /// Period announcements dropped because the control queue was full.
    pub queue_full: AtomicU64,
}

/// A crypto period to get an ECM for.
#[derive(Debug, Clone)]
struct Provision {
    period: u64,
    current: Cw,
    next: Cw,
}

impl Provision {
    fn cp(&self) -> u16 {
        (self.period & 0xFFFF) as u16
    }
}

struct ReadyEcm {
    period: u64,
    current: Cw,
    next: Cw,
    sections: Vec<u8>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<ReadyEcm>,
    /// Periods announced, with when (re-announced after a while if still missing).
    asked: VecDeque<(u64, Instant)>,
    /// Periods whose CW_provision the ECMG answered with an error, and what it said.
    refused: VecDeque<(u64, String)>,
    status: Option<ChannelStatus>,
    /// Why the last link attempt failed (for the message of a failed `wait_ready`).
    last_failure: Option<String>,
    /// The ECMG refused the setup with an error_status that trying again cannot change.
    setup_refused: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    stats: ScsStats,
    connected: AtomicBool,
    /// The protocol version in use: the configured one, or 2 after a fallback.
    version: AtomicU8,
    /// The ECMG in use: 0 the primary, then the backups in order.
    active: std::sync::atomic::AtomicUsize,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
}

/// Why the client could not be started or got no channel.
#[derive(Debug, thiserror::Error)]
pub enum ScsError {
    /// The runtime thread could not be started.
    #[error("cannot start the SimulCrypt control thread: {0}")]
    Runtime(std::io::Error),
    /// No channel_status in time; `detail` says what the last attempt got.
    #[error("no channel with the ECMG at {ecmg} within {waited:?}; {detail}")]
    NotReady {
        /// The ECMG.
        ecmg: String,
        /// How long it was given.
        waited: Duration,
        /// The last refusal or link error, or a hint when there was none.
        detail: String,
    },
    /// The ECMG answered the setup with an error that trying again cannot change.
    #[error("the ECMG at {ecmg} refused the channel: {reason}")]
    Refused {
        /// The ECMG.
        ecmg: String,
        /// Its error_status, by name.
        reason: String,
    },
}

const READY_KEPT: usize = 4;
const ASKED_KEPT: usize = 8;
const REPLAYED: usize = 2;
const QUEUE: usize = 32;
const MAX_ATTEMPTS: u32 = 3;

/// A SimulCrypt ECMG client; an [`EcmGenerator`] for the scrambler. Cheap to clone (all
/// clones share one connection).
#[derive(Clone)]
pub struct SimulcryptEcmg {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Provision>,
    config: Arc<ScsConfig>,
}

impl std::fmt::Debug for SimulcryptEcmg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulcryptEcmg")
            .field("ecmg", &self.config.ecmg)
            .field("connected", &self.shared.connected.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl SimulcryptEcmg {
    /// Start the control task on `rt`.
    pub fn spawn(config: ScsConfig, rt: &tokio::runtime::Handle) -> SimulcryptEcmg {
        let (me, fut) = Self::parts(config);
        rt.spawn(fut);
        me
    }

    /// Start the control task on a runtime of its own (one thread); it stops when every
    /// clone is dropped.
    pub fn start(config: ScsConfig) -> Result<SimulcryptEcmg, ScsError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ScsError::Runtime)?;
        let (me, fut) = Self::parts(config);
        std::thread::Builder::new()
            .name("simulcrypt-scs".to_owned())
            .spawn(move || rt.block_on(fut))
            .map_err(ScsError::Runtime)?;
        Ok(me)
    }

    fn parts(
        config: ScsConfig,
    ) -> (
        SimulcryptEcmg,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            stats: ScsStats::default(),
            connected: AtomicBool::new(false),
            version: AtomicU8::new(config.version),
            active: Default::default(),
            latency: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("static histogram bounds are valid"),
            ),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let config = Arc::new(config);
        let me = SimulcryptEcmg {
            shared: shared.clone(),
            tx,
            config: config.clone(),
        };
        (me, control(shared, config, rx))
    }

    /// The counters.
    pub fn stats(&self) -> &ScsStats {
        &self.shared.stats
    }

    /// CW_provision -> ECM_response latency so far (µs).
    pub fn latency(&self) -> hdrhistogram::Histogram<u64> {
        lock(&self.shared.latency).clone()
    }

    /// Whether channel and stream are set up now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Relaxed)
    }

    /// The ECMG's channel_status (delay_start, ECM_rep_period, ...), once known.
    pub fn channel_status(&self) -> Option<ChannelStatus> {
        lock(&self.shared.state).status
    }

    /// The ECMG's address as configured (the primary).
    pub fn addr(&self) -> &str {
        &self.config.ecmg
    }

    /// The ECMG in use now: the primary or a backup.
    pub fn active_addr(&self) -> &str {
        match self.shared.active.load(Relaxed) {
            0 => &self.config.ecmg,
            i => self.config.backups.get(i - 1).unwrap_or(&self.config.ecmg),
        }
    }

    /// The ECMG<->SCS version in use (2 after a fallback from 3).
    pub fn version(&self) -> u8 {
        self.shared.version.load(Relaxed)
    }

    /// The Super_CAS_id the channel is set up with.
    pub fn super_cas_id(&self) -> u32 {
        self.config.super_cas_id
    }

    /// CA_system_ID for the CA_descriptor (high 16 bits of Super_CAS_id).
    pub fn ca_system_id(&self) -> u16 {
        (self.config.super_cas_id >> 16) as u16
    }

    /// Wait (blocking) until the channel is set up; gives its channel_status. Use it before
    /// configuring the scrambler so delay_start and ECM_rep_period come from the ECMG.
    pub fn wait_ready(&self, timeout: Duration) -> Result<ChannelStatus, ScsError> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.state);
        loop {
            if let (Some(s), true) = (st.status, self.is_connected()) {
                return Ok(s);
            }
            if let Some(reason) = &st.setup_refused {
                return Err(ScsError::Refused {
                    ecmg: self.config.ecmg.clone(),
                    reason: reason.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                let detail = match &st.last_failure {
                    Some(f) => format!("the last attempt: {f}"),
                    None => "is it running and reachable?".to_owned(),
                };
                return Err(ScsError::NotReady {
                    ecmg: self.config.ecmg.clone(),
                    waited: timeout,
                    detail,
                });
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(50)))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Announce crypto period `period` (CW `current`, next CW `next`) ahead of time, without
    /// waiting. The pipeline knows CW(N+1) a period early, so it can call this for N+1 while N
    /// is on air.
    pub fn provision(&self, period: u64, current: &Cw, next: &Cw) {
        let mut st = lock(&self.shared.state);
        self.ask(&mut st, period, current, next);
    }

    fn ask(&self, st: &mut State, period: u64, current: &Cw, next: &Cw) {
        let retry_after = self.config.setup_timeout.max(Duration::from_secs(1));
        let now = Instant::now();
        if let Some((_, at)) = st.asked.iter_mut().find(|(p, _)| *p == period) {
            if now.duration_since(*at) < retry_after {
                return;
            }
            *at = now;
        } else {
            if st.asked.len() >= ASKED_KEPT {
                st.asked.pop_front();
            }
            st.asked.push_back((period, now));
        }
        let p = Provision {
            period,
            current: current.clone(),
            next: next.clone(),
        };
        if self.tx.try_send(p).is_err() {
            self.shared.stats.queue_full.fetch_add(1, Relaxed);
        } else {
            // asked again: only the new answer counts
            st.refused.retain(|(p, _)| *p != period);
        }
    }

    /// Whether `generate` can answer `req` at once: its ECM is ready, or it was refused.
    fn answered(st: &State, req: &EcmRequest<'_>) -> bool {
        let period = req.period.0;
        st.refused.iter().any(|(p, _)| *p == period)
            || st
                .ready
                .iter()
                .any(|e| e.period == period && e.current == *req.current && e.next == *req.next)
    }

    /// The ready ECM of `period` with exactly these CWs, appended to `out`.
    fn take_ready(st: &State, period: u64, current: &Cw, next: &Cw, out: &mut Vec<u8>) -> bool {
        match st
            .ready
            .iter()
            .find(|e| e.period == period && e.current == *current && e.next == *next)
        {
            Some(e) => {
                out.extend_from_slice(&e.sections);
                true
            }
            None => false,
        }
    }
}

impl EcmGenerator for SimulcryptEcmg {
    /// Never waits: the ready ECM, else the ECMG's refusal, else Unavailable (the period
    /// asked for, if it was not lately).
    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
        let period = req.period.0;
        let mut st = lock(&self.shared.state);
        if Self::take_ready(&st, period, req.current, req.next, out) {
            self.shared.stats.ecms_delivered.fetch_add(1, Relaxed);
            return Ok(());
        }
        self.ask(&mut st, period, req.current, req.next);
        if let Some((_, why)) = st.refused.iter().find(|(p, _)| *p == period) {
            return Err(EcmError::Refused(format!(
                "the ECMG at {} answered the CW_provision of crypto period {period} with {why}",
                self.config.ecmg
            )));
        }
        self.shared.stats.unavailable.fetch_add(1, Relaxed);
        Err(EcmError::Unavailable(format!(
            "no ECM from the ECMG at {} for crypto period {period} yet",
            self.config.ecmg
        )))
    }

    fn prepare(&mut self, req: &EcmRequest<'_>) {
        self.provision(req.period.0, req.current, req.next);
    }

    fn wait_for_ecm(&mut self, req: &EcmRequest<'_>, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut st = lock(&self.shared.state);
        if Self::answered(&st, req) {
            return true;
        }
        self.ask(&mut st, req.period.0, req.current, req.next);
        loop {
            if Self::answered(&st, req) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // a panic elsewhere must not take the ECM path down with it
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The control task: sessions with reconnect and backoff until every handle is dropped.
async fn control(shared: Arc<Shared>, config: Arc<ScsConfig>, mut rx: mpsc::Receiver<Provision>) {
    let addrs: Vec<&str> = std::iter::once(config.ecmg.as_str())
        .chain(config.backups.iter().map(String::as_str))
        .collect();
    let mut active = 0usize;
    // ECMGs of the list tried since the last working link
    let mut tried = 0usize;
    let mut latest: VecDeque<Provision> = VecDeque::with_capacity(REPLAYED + 1);
    let mut backoff = config.backoff_min;
    let mut warned_at: Option<Instant> = None;
    loop {
        shared.active.store(active, Relaxed);
        let mut session = Session {
            shared: &shared,
            config: &config,
            addr: addrs[active],
            pending: HashMap::new(),
            established: false,
            fell_back: false,
            primary_back: false,
        };
        let res = session.run(&mut rx, &mut latest).await;
        let (established, fell_back, primary_back) =
            (session.established, session.fell_back, session.primary_back);
        shared.connected.store(false, Relaxed);
        if let Err(e) = &res {
            if !primary_back {
                lock(&shared.state).last_failure = Some(e.to_string());
            }
        }
        shared.cond.notify_all();
        match res {
            Ok(()) => return, // every handle dropped
            // the ECMG refused version 3: set up again in version 2 at once
            Err(_) if fell_back => continue,
            // the primary answers again: back to it at once (the latest CWs replayed)
            Err(_) if primary_back => {
                shared.stats.returns.fetch_add(1, Relaxed);
                tracing::info!(ecmg = %addrs[0], backup = %addrs[active],
                    "the primary ECMG answers again; the link moves back to it");
                active = 0;
                tried = 0;
                continue;
            }
            Err(e) => {
                shared.stats.link_failures.fetch_add(1, Relaxed);
                if established {
                    backoff = config.backoff_min;
                    tried = 0;
                }
                tried += 1;
                if addrs.len() > 1 {
                    let from = active;
                    active = (active + 1) % addrs.len();
                    shared.stats.failovers.fetch_add(1, Relaxed);
                    tracing::warn!(ecmg = %addrs[from], error = %e, next = %addrs[active],
                        "SimulCrypt ECMG link down; the next ECMG of the list takes over");
                    // every ECMG of the list gets a try before the backoff
                    if tried < addrs.len() {
                        continue;
                    }
                    tried = 0;
                }
                // one line per failure streak, then at most one a minute
                if established || warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    warned_at = Some(Instant::now());
                    tracing::warn!(ecmg = %addrs[active], error = %e, retry_in = ?backoff,
                        "SimulCrypt ECMG link down; ECMs hold until it is back");
                }
            }
        }
        // wait out the backoff, keeping the latest periods for the replay
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                p = rx.recv() => match p {
                    Some(p) => remember(&mut latest, p),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Whether `addr` accepts a TCP connection within `within` (the primary's health probe
/// while a backup is in use; the connection is closed at once).
async fn accepts(addr: &str, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

fn remember(latest: &mut VecDeque<Provision>, p: Provision) {
    latest.retain(|q| q.period != p.period);
    latest.push_back(p);
    while latest.len() > REPLAYED {
        latest.pop_front();
    }
}

/// The writing half of a session's link.
type Writer = FrameWriter<OwnedWriteHalf>;

struct Pending {
    provision: Provision,
    sent: Instant,
    attempts: u32,
}

struct Session<'a> {
    shared: &'a Shared,
    config: &'a ScsConfig,
    /// The ECMG of this session (the primary or a backup).
    addr: &'a str,
    /// CP_number -> what was asked.
    pending: HashMap<u16, Pending>,
    established: bool,
    /// This session ended because the ECMG refused version 3 and the next one uses 2.
    fell_back: bool,
    /// This session (on a backup) ended because the primary answers again.
    primary_back: bool,
}

/// error_status values of a refused setup that trying again cannot change: the ECMG does
/// not serve this Super_CAS_id, or cannot read what castmux sends. Busy or in-use answers
/// (too many channels, an id in use, out of resources, unknown error) may clear.
const FINAL_SETUP_REFUSALS: [EcmgErrorStatus; 9] = [
    EcmgErrorStatus::InvalidMessage,
    EcmgErrorStatus::UnsupportedProtocolVersion,
    EcmgErrorStatus::UnknownMessageType,
    EcmgErrorStatus::UnknownSuperCasId,
    EcmgErrorStatus::UnknownParameterType,
    EcmgErrorStatus::InconsistentLength,
    EcmgErrorStatus::MissingParameter,
    EcmgErrorStatus::InvalidValue,
    EcmgErrorStatus::UnrecoverableError,
];

impl Session<'_> {
    async fn run(
        &mut self,
        rx: &mut mpsc::Receiver<Provision>,
        latest: &mut VecDeque<Provision>,
    ) -> Result<(), LinkError> {
        let c = self.config;
        let (mut reader, mut wr) =
            connect(self.addr, c.setup_timeout, "the TCP connection to the ECMG").await?;

        self.send(
            &mut wr,
            &EcmgMessage::ChannelSetup {
                channel_id: c.channel_id,
                super_cas_id: c.super_cas_id,
            },
        )
        .await?;
        let status = loop {
            match self.expect(&mut reader, "channel_status").await? {
                EcmgMessage::ChannelStatus(s) => break s,
                EcmgMessage::ChannelError { status, .. } if self.may_fall_back(&status) => {
                    self.shared.stats.errors_received.fetch_add(1, Relaxed);
                    self.shared.stats.version_fallbacks.fetch_add(1, Relaxed);
                    self.shared.version.store(2, Relaxed);
                    self.fell_back = true;
                    tracing::info!(ecmg = %self.addr, error = %describe(&status),
                        "the ECMG refused ECMG<->SCS version 3; setting up again in version 2");
                    return Err(LinkError::Peer(format!(
                        "the ECMG refused version 3: {}",
                        describe(&status)
                    )));
                }
                other => self.unexpected(other)?,
            }
        };
        if status.lead_cw > 1 || status.cw_per_msg > 2 {
            tracing::warn!(
                lead_cw = status.lead_cw,
                cw_per_msg = status.cw_per_msg,
                "ECMG asks for more CWs per message than castmux sends (current and next)"
            );
        }
        self.send(
            &mut wr,
            &EcmgMessage::StreamSetup {
                channel_id: c.channel_id,
                stream_id: c.stream_id,
                ecm_id: c.ecm_id,
                nominal_cp_duration: c.cp_units(),
            },
        )
        .await?;
        loop {
            match self.expect(&mut reader, "stream_status").await? {
                EcmgMessage::StreamStatus { .. } => break,
                other => self.unexpected(other)?,
            }
        }
        {
            let mut st = lock(&self.shared.state);
            st.status = Some(status);
            st.last_failure = None;
            st.setup_refused = None;
        }
        self.established = true;
        self.shared.connected.store(true, Relaxed);
        self.shared.stats.setups.fetch_add(1, Relaxed);
        self.shared.cond.notify_all();
        tracing::info!(ecmg = %self.addr, channel_id = c.channel_id, stream_id = c.stream_id,
            version = self.shared.version.load(Relaxed), delay_start = status.delay_start,
            ecm_rep_period = status.ecm_rep_period, max_comp_time = status.max_comp_time, "SimulCrypt ECMG channel and stream set up");

        // replay the latest periods so ECMs resume at once
        let replay: Vec<Provision> = latest.iter().cloned().collect();
        for p in replay {
            self.provide(&mut wr, p, 1).await?;
        }

        let max_comp = Duration::from_millis(u64::from(status.max_comp_time.max(1)));
        let timeout = max_comp * 2 + Duration::from_millis(100);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut last_test = Instant::now();
        // on a backup: probes of the primary, one at a time, every primary_check
        let on_backup = self.addr != c.ecmg;
        let mut probe: Option<tokio::task::JoinHandle<bool>> = None;
        let mut last_probe = Instant::now();
        let mut primary_ok = 0u32;
        loop {
            tokio::select! {
                p = rx.recv() => {
                    let Some(p) = p else {
                        // every handle dropped: close politely
                        let _ = self.send(&mut wr, &EcmgMessage::StreamCloseRequest {
                            channel_id: c.channel_id, stream_id: c.stream_id }).await;
                        let _ = self.send(&mut wr, &EcmgMessage::ChannelClose {
                            channel_id: c.channel_id }).await;
                        return Ok(());
                    };
                    remember(latest, p.clone());
                    self.provide(&mut wr, p, 1).await?;
                }
                frame = reader.next() => {
                    let frame = frame?.ok_or_else(|| LinkError::Peer("the ECMG closed the connection".to_owned()))?;
                    last_rx = Instant::now();
                    self.on_message(&mut wr, &frame, max_comp).await?;
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_rx) > c.keepalive * 3 {
                        return Err(LinkError::Timeout("any message from the ECMG (keepalive)"));
                    }
                    if now.duration_since(last_test) >= c.keepalive {
                        last_test = now;
                        self.send(&mut wr, &EcmgMessage::ChannelTest { channel_id: c.channel_id }).await?;
                    }
                    self.retry(&mut wr, now, timeout).await?;
                    if on_backup {
                        if probe.as_ref().is_some_and(|p| p.is_finished()) {
                            let up = probe
                                .take()
                                .and_then(|p| p.now_or_never())
                                .and_then(Result::ok)
                                .unwrap_or(false);
                            primary_ok = if up { primary_ok + 1 } else { 0 };
                            if primary_ok >= 2 {
                                self.primary_back = true;
                                return Err(LinkError::Peer("the primary ECMG answers again".to_owned()));
                            }
                        }
                        if probe.is_none() && now.duration_since(last_probe) >= c.primary_check {
                            last_probe = now;
                            let primary = c.ecmg.clone();
                            let within = c.setup_timeout;
                            probe = Some(tokio::spawn(async move { accepts(&primary, within).await }));
                        }
                    }
                }
            }
        }
    }

    async fn expect<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        what: &'static str,
    ) -> Result<EcmgMessage, LinkError> {
        let frame = reader
            .expect(self.config.setup_timeout, "the ECMG", what)
            .await?;
        EcmgMessage::decode(&frame)
            .map(|(_, m)| m)
            .map_err(LinkError::Codec)
    }

    /// Whether a channel_error answering channel_setup is the ECMG refusing version 3 and
    /// version 2 may be tried.
    fn may_fall_back(&self, status: &[u16]) -> bool {
        self.config.version_fallback
            && self.shared.version.load(Relaxed) == 3
            && status.contains(&EcmgErrorStatus::UnsupportedProtocolVersion.value())
    }

    /// A message that ends the setup (error) or is ignored there. A refusal that trying
    /// again cannot change is kept for `wait_ready`.
    fn unexpected(&self, m: EcmgMessage) -> Result<(), LinkError> {
        match m {
            EcmgMessage::ChannelError { status, .. } | EcmgMessage::StreamError { status, .. } => {
                self.shared.stats.errors_received.fetch_add(1, Relaxed);
                let mut said = describe(&status);
                if status.contains(&EcmgErrorStatus::UnsupportedProtocolVersion.value()) {
                    said = format!(
                        "{said} to ECMG<->SCS version {}",
                        self.shared.version.load(Relaxed)
                    );
                }
                let is_final = status
                    .iter()
                    .any(|s| FINAL_SETUP_REFUSALS.iter().any(|f| f.value() == *s));
                if is_final {
                    lock(&self.shared.state).setup_refused = Some(said.clone());
                    self.shared.cond.notify_all();
                }
                Err(LinkError::Peer(format!(
                    "the ECMG refused the setup: {said}"
                )))
            }
            other => {
                tracing::debug!(message = ?other.message_type(), "ignored during setup");
                Ok(())
            }
        }
    }

    async fn provide(
        &mut self,
        wr: &mut Writer,
        p: Provision,
        attempts: u32,
    ) -> Result<(), LinkError> {
        let c = self.config;
        let cp = p.cp();
        let msg = EcmgMessage::CwProvision(CwProvision {
            channel_id: c.channel_id,
            stream_id: c.stream_id,
            cp_number: cp,
            cw_encryption: None,
            cp_cw: vec![
                CpCw {
                    cp_number: cp,
                    cw: p.current.clone(),
                },
                CpCw {
                    cp_number: cp.wrapping_add(1),
                    cw: p.next.clone(),
                },
            ],
            cp_duration: Some(c.cp_units()),
            access_criteria: Some(c.access_criteria.clone()),
        });
        self.send(wr, &msg).await?;
        self.shared.stats.provisions_sent.fetch_add(1, Relaxed);
        self.pending.insert(
            cp,
            Pending {
                provision: p,
                sent: Instant::now(),
                attempts,
            },
        );
        Ok(())
    }

    async fn retry(
        &mut self,
        wr: &mut Writer,
        now: Instant,
        timeout: Duration,
    ) -> Result<(), LinkError> {
        let overdue: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) > timeout)
            .map(|(cp, _)| *cp)
            .collect();
        for cp in overdue {
            let Some(p) = self.pending.remove(&cp) else {
                continue;
            };
            self.shared.stats.timeouts.fetch_add(1, Relaxed);
            if p.attempts < MAX_ATTEMPTS {
                tracing::debug!(
                    cp,
                    attempt = p.attempts + 1,
                    "no ECM_response in time; resending"
                );
                self.provide(wr, p.provision, p.attempts + 1).await?;
            } else {
                tracing::warn!(ecmg = %self.config.ecmg, period = p.provision.period,
                    "the ECMG never answered this CW_provision; the previous ECM stays on air");
            }
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        wr: &mut Writer,
        frame: &[u8],
        max_comp: Duration,
    ) -> Result<(), LinkError> {
        let msg = match EcmgMessage::decode(frame) {
            Ok((_, m)) => m,
            Err(e) => {
                // tell the ECMG, keep the link if the framing is intact
                tracing::warn!(error = %e, "bad message from the ECMG");
                let m = EcmgMessage::ChannelError {
                    channel_id: self.config.channel_id,
                    status: vec![e.ecmg_status().value()],
                    info: error_information(e.parameter()),
                };
                self.send(wr, &m).await?;
                return Ok(());
            }
        };
        match msg {
            EcmgMessage::EcmResponse {
                stream_id,
                cp_number,
                datagram,
                ..
            } if stream_id == self.config.stream_id => self.on_ecm(cp_number, &datagram, max_comp),
            EcmgMessage::ChannelStatus(s) => {
                lock(&self.shared.state).status = Some(s);
            }
            EcmgMessage::StreamStatus { .. } => {}
            // the ECMG checking the link: receiving it already shows the link is alive, and
            // answering with a test of our own could loop with some peers
            EcmgMessage::ChannelTest { .. } => {}
            EcmgMessage::ChannelError { status, .. } | EcmgMessage::StreamError { status, .. } => {
                self.shared.stats.errors_received.fetch_add(1, Relaxed);
                tracing::warn!(ecmg = %self.config.ecmg, error = %describe(&status),
                    "the ECMG reported an error");
                let fatal = [
                    EcmgErrorStatus::UnknownChannelId,
                    EcmgErrorStatus::UnknownStreamId,
                    EcmgErrorStatus::UnrecoverableError,
                ];
                if status.iter().any(|s| fatal.iter().any(|f| f.value() == *s)) {
                    return Err(LinkError::Peer(format!(
                        "the ECMG lost our channel or stream: {}",
                        describe(&status)
                    )));
                }
                self.refuse_oldest(&status);
            }
            EcmgMessage::ChannelClose { .. } | EcmgMessage::StreamCloseRequest { .. } => {
                return Err(LinkError::Peer("the ECMG closed the channel".to_owned()));
            }
            other => {
                tracing::debug!(message = ?other.message_type(), "ignored message from the ECMG");
            }
        }
        Ok(())
    }

    /// An error that is not about the link answers the oldest CW_provision still waiting
    /// (the ECMG answers in order, and an error names no CP_number): its period is refused,
    /// not resent; `generate` reports it and asks again after a while.
    fn refuse_oldest(&mut self, status: &[u16]) {
        let Some(cp) = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.sent)
            .map(|(cp, _)| *cp)
        else {
            return;
        };
        let Some(p) = self.pending.remove(&cp) else {
            return;
        };
        self.shared.stats.refused.fetch_add(1, Relaxed);
        let mut st = lock(&self.shared.state);
        st.refused.retain(|(q, _)| *q != p.provision.period);
        if st.refused.len() >= ASKED_KEPT {
            st.refused.pop_front();
        }
        st.refused.push_back((p.provision.period, describe(status)));
        drop(st);
        self.shared.cond.notify_all();
    }

    fn on_ecm(&mut self, cp: u16, datagram: &[u8], max_comp: Duration) {
        let Some(p) = self.pending.remove(&cp) else {
            self.shared.stats.bad_ecms.fetch_add(1, Relaxed);
            tracing::debug!(
                cp,
                "ECM_response for a CP_number not asked (or already answered)"
            );
            return;
        };
        let elapsed = p.sent.elapsed();
        if elapsed > max_comp {
            self.shared.stats.late.fetch_add(1, Relaxed);
        }
        let _ = lock(&self.shared.latency).record(elapsed.as_micros().max(1) as u64);
        let tspkt = lock(&self.shared.state)
            .status
            .is_some_and(|s| s.section_tspkt_flag);
        let mut sections = Vec::with_capacity(datagram.len());
        let ok = if tspkt {
            packets_to_sections(datagram, &mut sections).map_err(|e| e.to_string())
        } else {
            sections.extend_from_slice(datagram);
            check_sections(&sections)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let want = ecm_table_id(p.provision.period);
        let ok = ok.and_then(|()| {
            if sections.first() == Some(&want) {
                Ok(())
            } else {
                Err(format!(
                    "table_id {:#04x}, expected {want:#04x}",
                    sections[0]
                ))
            }
        });
        if let Err(e) = ok {
            self.shared.stats.bad_ecms.fetch_add(1, Relaxed);
            tracing::warn!(ecmg = %self.config.ecmg, cp, error = %e, "unusable ECM from the ECMG");
            return;
        }
        self.shared.stats.ecms_received.fetch_add(1, Relaxed);
        let mut st = lock(&self.shared.state);
        st.refused.retain(|(q, _)| *q != p.provision.period);
        st.ready.retain(|e| e.period != p.provision.period);
        if st.ready.len() >= READY_KEPT {
            st.ready.pop_front();
        }
        st.ready.push_back(ReadyEcm {
            period: p.provision.period,
            current: p.provision.current,
            next: p.provision.next,
            sections,
        });
        drop(st);
        self.shared.cond.notify_all();
    }

    async fn send(&mut self, wr: &mut Writer, m: &EcmgMessage) -> Result<(), LinkError> {
        wr.send(self.shared.version.load(Relaxed), m).await
    }
}

fn describe(status: &[u16]) -> String {
    error_status_names(true, status)
}
