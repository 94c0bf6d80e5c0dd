//! A channel's SimulCrypt parts: external ECMGs (`ecmg`, one per CAS) as ECM generators, and
//! an EMMG<->MUX port (`emmg_listen`, or the head-end's shared `[emmg]`) whose EMMs go out on
//! the EMM PID. The links and the port run on the process's one control plane.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::io::PacketBatch;
use crate::net::AcceptLimits;
use crate::scramble::config::DEFAULT_ECM_REPETITION;
use crate::scramble::{
    CaSystem, EcmError, EcmGenerator, EcmRequest, PacketStage, ScrambleError, Scrambler,
};
use crate::simulcrypt::access::parse_access_criteria_hex;
use crate::simulcrypt::{
    EcmgErrorStatus, EmmMuxConfig, EmmMuxServer, EmmMuxStats, EmmQueueSource, EmmSubscribers,
    ScsConfig, ScsError, SimulcryptEcmg,
};
use crate::ts::Pid;

use super::error::{bail, Context, HeadendError};
use super::spec::ChannelSpec;
use crate::net::ControlPlane;

/// How long the ECMG gets to set up channel and stream at start.
const SETUP_WAIT: Duration = Duration::from_secs(10);
/// The same for a live channel, which starts without its ECMG after this (holding its
/// scrambled services until the first ECM) rather than fail.
const LIVE_SETUP_WAIT: Duration = Duration::from_secs(3);

/// What the SimulCrypt options started; keep it for the whole run, then call [`finish`].
///
/// [`finish`]: SimulcryptParts::finish
#[derive(Debug, Default)]
pub struct SimulcryptParts {
    ecmgs: Vec<SimulcryptEcmg>,
    emm_source: Option<EmmQueueSource>,
    mux: Option<EmmPort>,
    /// The first refusal an ECMG gave the scrambler (see [`StopOnRefusal`]).
    refusal: Refusal,
}

/// What an ECMG said when it refused a crypto period the scrambler needed.
type Refusal = Arc<Mutex<Option<String>>>;

impl SimulcryptParts {
    /// The ECM generators for `Scrambler::new`, one per `--ecmg`, in the order of the CA
    /// systems [`start`] added.
    pub fn ecm_generators(&self) -> impl Iterator<Item = Box<dyn EcmGenerator>> + '_ {
        self.ecmgs.iter().map(|g| {
            Box::new(NoteRefusal {
                inner: g.clone(),
                refusal: Arc::clone(&self.refusal),
            }) as Box<dyn EcmGenerator>
        })
    }

    /// The scrambler as the run's stage. A file or pipe run (`live` false) stops with the
    /// ECMG's message when an ECMG refuses a crypto period: its packets cannot wait, and
    /// holding the key would only scramble the rest of the file under the last CW with no
    /// ECM for it. A live run holds the key (degraded, counted) and the ECMG is asked again.
    pub fn stage(&self, scrambler: Scrambler, live: bool) -> StopOnRefusal {
        StopOnRefusal {
            scrambler,
            refusal: (!live && !self.ecmgs.is_empty()).then(|| Arc::clone(&self.refusal)),
        }
    }

    /// The ECMG links, for a monitor (clones share the connection).
    pub fn ecmg_handles(&self) -> Vec<SimulcryptEcmg> {
        self.ecmgs.clone()
    }

    /// Whether `--emmg-listen` gives EMMs.
    pub fn has_emm(&self) -> bool {
        self.emm_source.is_some()
    }

    /// Hand the EMMG<->MUX queue to the scrambler, if `--emmg-listen` was given.
    pub fn attach_emm(&mut self, scrambler: &mut Scrambler) -> Result<(), HeadendError> {
        if let Some(src) = self.emm_source.take() {
            scrambler
                .set_emm_source(Box::new(src))
                .context("--emmg-listen")?;
        }
        Ok(())
    }

    /// Stop the EMMG<->MUX server and log the SimulCrypt counters.
    pub fn finish(self) {
        for g in &self.ecmgs {
            let s = g.stats();
            let lat = g.latency();
            tracing::info!(
                ecmg = %g.addr(),
                setups = s.setups.load(Relaxed),
                link_failures = s.link_failures.load(Relaxed),
                provisions_sent = s.provisions_sent.load(Relaxed),
                ecms_received = s.ecms_received.load(Relaxed),
                ecms_delivered = s.ecms_delivered.load(Relaxed),
                unavailable = s.unavailable.load(Relaxed),
                late = s.late.load(Relaxed),
                timeouts = s.timeouts.load(Relaxed),
                bad_ecms = s.bad_ecms.load(Relaxed),
                errors_received = s.errors_received.load(Relaxed),
                refused = s.refused.load(Relaxed),
                version = g.version(),
                version_fallbacks = s.version_fallbacks.load(Relaxed),
                failovers = s.failovers.load(Relaxed),
                returns = s.returns.load(Relaxed),
                active = %g.active_addr(),
                latency_p99_us = lat.value_at_quantile(0.99),
                "simulcrypt ECMG link"
            );
        }
        if let Some(m) = self.mux {
            m.stop();
        }
    }
}

/// What the rest of the command line says about the CA systems the ECMGs join.
#[derive(Debug)]
pub struct CasContext<'a> {
    /// The shared `--access-criteria`: sent to each ECMG as the bytes of its hex digits,
    /// like Astra's "ACCESS CRITERIA (HEX)" (TVCAS: one nibble per package, rightmost =
    /// package 1), unless the ECMG's query gives its own.
    pub access_criteria: Option<&'a str>,
    /// `--cas builtin` is given (it uses `--access-criteria` too).
    pub builtin_cas: bool,
    /// The ECM PID of the first CA system (`--ecm-pid`, or the default when CWs rotate).
    pub first_ecm_pid: Option<Pid>,
    /// `--delay-start` and `--ecm-repetition`, which override every ECMG's channel_status.
    pub delay_start: Option<i64>,
    pub ecm_repetition: Option<Duration>,
    pub crypto_period: Duration,
    /// Whether an EMM PID is configured (`--emmg-listen` needs one).
    pub emm_pid: Option<Pid>,
    /// Where the ECMG links and the EMMG port run.
    pub control: &'a ControlPlane,
    /// A live input: the channel starts even when an ECMG is not up yet.
    pub live: bool,
}

/// Start what the options ask for: connect every `--ecmg` (in parallel) and add its CA
/// system to `ca_systems`, after those already there (the built-in CAS).
pub fn start(
    a: &ChannelSpec,
    cx: &CasContext<'_>,
    ca_systems: &mut Vec<CaSystem>,
) -> Result<SimulcryptParts, HeadendError> {
    let mut parts = SimulcryptParts::default();
    if cx.access_criteria.is_some() && !cx.builtin_cas && a.ecmg.is_empty() {
        bail!("--access-criteria goes with --cas builtin or --ecmg");
    }
    let mut started = Vec::with_capacity(a.ecmg.len());
    for spec in &a.ecmg {
        let Some(first_ecm_pid) = cx.first_ecm_pid else {
            bail!("--ecmg needs an ECM PID: give --ecm-pid, or drop --cw so CWs rotate");
        };
        let super_cas_id = spec.super_cas_id.or(a.super_cas_id).ok_or_else(|| {
            HeadendError::Config(format!(
                "--ecmg {}: no Super_CAS_id; give --super-cas-id HEX or {}?super_cas_id=HEX",
                spec.addr, spec.addr
            ))
        })?;
        let ecm_pid = match spec.ecm_pid {
            Some(p) => p,
            None => {
                // the lowest PID from --ecm-pid up that no other CA stream uses
                let taken = |v: u16| {
                    let pid = Pid::new(v);
                    cx.emm_pid == Some(pid)
                        || ca_systems.iter().any(|c| c.ecm_pid == pid)
                        || started
                            .iter()
                            .any(|(_, _, c): &(_, _, CaSystem)| c.ecm_pid == pid)
                        || a.ecmg.iter().any(|e| e.ecm_pid == Some(pid))
                };
                let free = (first_ecm_pid.value()..Pid::NULL.value()).find(|v| !taken(*v));
                match free {
                    Some(v) => Pid::new(v),
                    None => bail!(
                        "--ecmg {}: no ECM PID left from --ecm-pid {first_ecm_pid} up; give ?ecm_pid=PID",
                        spec.addr
                    ),
                }
            }
        };
        let mut sc = ScsConfig::new(spec.addr.clone(), super_cas_id);
        sc.backups = spec.backup.clone();
        let version = spec.version.or(a.ecmg_version);
        sc.version = version.unwrap_or(3);
        sc.version_fallback = version.is_none();
        sc.channel_id = spec.channel_id.unwrap_or(a.channel_id);
        sc.stream_id = spec.stream_id.unwrap_or(a.stream_id);
        sc.ecm_id = spec.ecm_id.unwrap_or(a.ecm_id);
        sc.crypto_period = cx.crypto_period;
        if let Some(text) = spec.access_criteria.as_deref().or(cx.access_criteria) {
            let Some(bytes) = parse_access_criteria_hex(text) else {
                bail!("--access-criteria {text:?}: expected up to 64 hex digits, e.g. 00000001");
            };
            sc.access_criteria = bytes;
        }
        let ecmg = SimulcryptEcmg::spawn(sc, cx.control.handle());
        let mut ca = CaSystem::new(ecmg.ca_system_id(), ecm_pid);
        ca.private_data = spec.private_data.clone().unwrap_or_default();
        started.push((spec, ecmg, ca));
    }
    // every link sets up at once; then each is waited for
    let wait = if cx.live { LIVE_SETUP_WAIT } else { SETUP_WAIT };
    for (spec, ecmg, mut ca) in started {
        let status = match ecmg.wait_ready(wait) {
            Ok(s) => Some(s),
            // a version chosen by the operator is never changed behind their back: say how
            Err(e @ ScsError::Refused { .. })
                if e.to_string()
                    .contains(EcmgErrorStatus::UnsupportedProtocolVersion.name()) =>
            {
                return Err(e).with_context(|| {
                    format!(
                        "--ecmg {}: version {} as given; for an ECMG that speaks version 2 give \
                         --ecmg-version 2 (or ?version=2), or neither to let castmux fall back",
                        spec.addr,
                        ecmg.version()
                    )
                });
            }
            // live: on air without it; the link keeps trying, and the scrambled services
            // are held until its first ECM (never clear)
            Err(e @ ScsError::NotReady { .. }) if cx.live => {
                tracing::warn!(ecmg = %spec.addr, error = %e,
                    "ECMG not up: the channel starts without it and holds its scrambled \
                     services until the first ECM; delay_start and the ECM repetition are \
                     the options' or the defaults, not the ECMG's channel_status");
                None
            }
            Err(e) => return Err(e).with_context(|| format!("--ecmg {}", spec.addr)),
        };
        if let Some(status) = status {
            tracing::info!(
                ecmg = %ecmg.active_addr(),
                super_cas_id = %format!("{:08X}", ecmg.super_cas_id()),
                version = ecmg.version(),
                ecm_pid = %ca.ecm_pid,
                delay_start_ms = status.delay_start,
                ecm_rep_period_ms = status.ecm_rep_period,
                max_comp_time_ms = status.max_comp_time,
                section_tspkt_flag = status.section_tspkt_flag,
                "simulcrypt: ECMG channel and stream set up"
            );
        }
        ca.delay_start_ms = cx
            .delay_start
            .or(status.map(|s| i64::from(s.delay_start)))
            .unwrap_or(0);
        ca.ecm_repetition = cx.ecm_repetition.unwrap_or(match status {
            Some(s) => Duration::from_millis(u64::from(s.ecm_rep_period.max(10))),
            None => DEFAULT_ECM_REPETITION,
        });
        ca_systems.push(ca);
        parts.ecmgs.push(ecmg);
    }
    if let Some(listen) = a.emmg_listen {
        if cx.emm_pid.is_none() {
            bail!("--emmg-listen needs --emm-pid (the PID the EMMs go out on)");
        }
        let (mux, source) = EmmPort::start(cx.control, listen, a.emmg_accept_limits()?)?;
        parts.mux = Some(mux);
        parts.emm_source = Some(source);
    }
    Ok(parts)
}

/// The ECMG client, keeping the first refusal for [`StopOnRefusal`]. (The first ECM is
/// waited for by the scrambler's schedule, before the first packet.)
struct NoteRefusal {
    inner: SimulcryptEcmg,
    refusal: Refusal,
}

impl EcmGenerator for NoteRefusal {
    fn prepare(&mut self, req: &EcmRequest<'_>) {
        self.inner.prepare(req);
    }

    fn wait_for_ecm(&mut self, req: &EcmRequest<'_>, within: Duration) -> bool {
        self.inner.wait_for_ecm(req, within)
    }

    fn generate(&mut self, req: &EcmRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmError> {
        let res = self.inner.generate(req, out);
        if let Err(EcmError::Refused(why)) = &res {
            let mut r = self.refusal.lock().unwrap_or_else(|e| e.into_inner());
            r.get_or_insert_with(|| why.clone());
        }
        res
    }
}

/// The scrambler, stopping a file run at an ECMG's refusal ([`SimulcryptParts::stage`]).
#[derive(Debug)]
pub struct StopOnRefusal {
    scrambler: Scrambler,
    /// Set for a file run with ECMGs.
    refusal: Option<Refusal>,
}

impl StopOnRefusal {
    fn check(&self) -> Result<(), ScrambleError> {
        let Some(r) = &self.refusal else {
            return Ok(());
        };
        match r.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(why) => Err(EcmError::Refused(why.clone()).into()),
            None => Ok(()),
        }
    }

    /// The scrambler (counters, PIDs).
    pub fn scrambler(&self) -> &Scrambler {
        &self.scrambler
    }

    /// The scrambler, to drive its deferred cipher.
    pub fn scrambler_mut(&mut self) -> &mut Scrambler {
        &mut self.scrambler
    }
}

impl PacketStage for StopOnRefusal {
    fn process_batch(
        &mut self,
        batch: &mut PacketBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), ScrambleError> {
        self.scrambler.process_batch(batch, out)?;
        self.check()
    }

    fn idle(&mut self) -> Result<(), ScrambleError> {
        PacketStage::idle(&mut self.scrambler)?;
        self.check()
    }
}

/// The EMMG<->MUX server, running on the control plane until it shuts down.
#[derive(Debug)]
pub struct EmmPort {
    stats: Arc<EmmMuxStats>,
    /// More pipelines can take every EMM from here (EMM clone).
    pub subscribers: EmmSubscribers,
}

impl EmmPort {
    /// Listen on `listen` with the connection bounds `accept`; gives the port and the
    /// first pipeline's EMM queue.
    pub fn start(
        control: &ControlPlane,
        listen: SocketAddr,
        accept: AcceptLimits,
    ) -> Result<(EmmPort, EmmQueueSource), HeadendError> {
        let config = EmmMuxConfig {
            accept,
            ..EmmMuxConfig::default()
        };
        let (server, source) = control
            .block_on(EmmMuxServer::bind(listen, config))
            .with_context(|| format!("--emmg-listen {listen}: cannot listen (port in use?)"))?;
        let local = server
            .local_addr()
            .with_context(|| format!("--emmg-listen {listen}"))?;
        let stats = server.stats();
        let subscribers = server.subscriber_handle();
        // the line a script (or a test) waits for: where EMMGs connect
        tracing::info!(listen = %local, "simulcrypt: EMMG<->MUX listening");
        let signal = control.shutdown_signal();
        control.spawn("EMMG<->MUX port", server.run(signal.wait()));
        Ok((EmmPort { stats, subscribers }, source))
    }

    /// The port's counters (live).
    pub fn stats(&self) -> &Arc<EmmMuxStats> {
        &self.stats
    }

    /// Log the port's counters (it stops with the control plane).
    pub fn stop(self) {
        tracing::info!(stats = ?self.stats, "simulcrypt: EMMG<->MUX stopped");
    }
}
