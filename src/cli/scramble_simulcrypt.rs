//! The SimulCrypt options of `castmux scramble`: external ECMGs (`--ecmg`, one per CAS) as
//! ECM generators, and an EMMG<->MUX port (`--emmg-listen`) whose EMMs go out on `--emm-pid`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use castmux::io::PacketBatch;
use castmux::net::AcceptLimits;
use castmux::scramble::{
    CaSystem, EcmError, EcmGenerator, EcmRequest, PacketStage, ScrambleError, Scrambler,
};
use castmux::simulcrypt::access::parse_access_criteria_hex;
use castmux::simulcrypt::{
    EcmgErrorStatus, EmmMuxConfig, EmmMuxServer, EmmMuxStats, EmmQueueSource, EmmSubscribers,
    ScsConfig, ScsError, SimulcryptEcmg,
};
use castmux::ts::Pid;
use clap::Args;

use super::args;
use super::ecmg_spec::EcmgSpec;

/// How long the ECMG gets to set up channel and stream at start.
const SETUP_WAIT: Duration = Duration::from_secs(10);

/// SimulCrypt options of `castmux scramble`.
#[derive(Debug, Args)]
pub struct SimulcryptArgs {
    /// SimulCrypt ECMG to get ECMs from (ECMG<->SCS, TS 103 197), HOST:PORT (TVCAS
    /// listens on 43000, `castmux ecmg` where told). Repeat for several CAS on the same
    /// service: every ECMG gets the same CWs and its own ECM PID and CA_descriptor.
    /// Per-ECMG settings go in a query: HOST:PORT?super_cas_id=0B000001&ecm_pid=0x1FF2
    /// (keys: super_cas_id, channel_id, stream_id, ecm_id, access_criteria, version,
    /// ecm_pid, private_data); what a query leaves out comes from the options below.
    /// ECM PIDs default to --ecm-pid, then the next free PIDs up (skipping --emm-pid), in
    /// the order of the CAS (--cas builtin first). delay_start and ECM_rep_period come from each ECMG's
    /// channel_status unless --delay-start / --ecm-repetition are given; the
    /// CA_descriptor's CA_system_ID is the top 16 bits of its Super_CAS_id.
    #[arg(long, value_name = "HOST:PORT[?KEY=VALUE&..]")]
    ecmg: Vec<EcmgSpec>,
    /// Super_CAS_id, 8 hex digits: CA_system_ID then CA_subsystem_ID (e.g. 4AE10000).
    /// Needed by each --ecmg whose query gives none.
    #[arg(long, value_name = "HEX", value_parser = args::hex_u32, requires = "ecmg")]
    super_cas_id: Option<u32>,
    /// ECM_channel_id. Default 1.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    channel_id: u16,
    /// ECM_stream_id. Default 1 (Astra's "start stream id with 1").
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    stream_id: u16,
    /// ECM_id. Default 1.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    ecm_id: u16,
    /// ECMG<->SCS protocol version, 2 or 3. Default: 3, and 2 when the ECMG refuses 3 with
    /// `unsupported protocol version` (TSDuck's tsecmg speaks 2 unless told otherwise); a
    /// version given here or in the --ecmg query is used as is, never changed.
    #[arg(long, value_name = "2|3", value_parser = clap::value_parser!(u8).range(2..=3))]
    ecmg_version: Option<u8>,
    /// Listen for SimulCrypt EMMGs (EMMG<->MUX, TCP and UDP on the same port; TVCAS's
    /// EMMG connects to 41000 in its guide); their EMMs go out on --emm-pid.
    #[arg(long, value_name = "ADDR:PORT")]
    emmg_listen: Option<SocketAddr>,
    /// EMMG connections the --emmg-listen port holds at once; one more is refused.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "emmg_listen")]
    emmg_max_connections: usize,
    /// EMMG connections from one IP address at once, so one host cannot take every slot.
    /// Default: three quarters of --emmg-max-connections (12 of 16).
    #[arg(long, value_name = "N", requires = "emmg_listen")]
    emmg_max_connections_per_address: Option<usize>,
    /// Close an EMMG connection whose channel_setup has not been accepted this long after
    /// it connected (silent sockets give their slot back).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration,
        requires = "emmg_listen")]
    emmg_handshake_timeout: Duration,
}

impl SimulcryptArgs {
    /// The `--emmg-listen` address, if given.
    pub fn emmg_listen(&self) -> Option<SocketAddr> {
        self.emmg_listen
    }

    /// The `--emmg-*` connection bounds of the EMMG<->MUX port.
    pub fn emmg_accept_limits(&self) -> anyhow::Result<AcceptLimits> {
        AcceptLimits::new(
            self.emmg_max_connections,
            self.emmg_max_connections_per_address,
            self.emmg_handshake_timeout,
        )
        .context(
            "--emmg-max-connections, --emmg-max-connections-per-address, --emmg-handshake-timeout",
        )
    }
}

/// What the SimulCrypt options started; keep it for the whole run, then call [`finish`].
///
/// [`finish`]: SimulcryptParts::finish
#[derive(Debug, Default)]
pub struct SimulcryptParts {
    ecmgs: Vec<SimulcryptEcmg>,
    emm_source: Option<EmmQueueSource>,
    mux: Option<MuxThread>,
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
    pub fn stage<'a>(&self, scrambler: &'a mut Scrambler, live: bool) -> StopOnRefusal<'a> {
        StopOnRefusal {
            scrambler,
            refusal: (!live && !self.ecmgs.is_empty()).then(|| Arc::clone(&self.refusal)),
        }
    }

    /// Whether `--emmg-listen` gives EMMs.
    pub fn has_emm(&self) -> bool {
        self.emm_source.is_some()
    }

    /// Hand the EMMG<->MUX queue to the scrambler, if `--emmg-listen` was given.
    pub fn attach_emm(&mut self, scrambler: &mut Scrambler) -> anyhow::Result<()> {
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
}

/// Start what the options ask for: connect every `--ecmg` (in parallel) and add its CA
/// system to `ca_systems`, after those already there (the built-in CAS).
pub fn start(
    a: &SimulcryptArgs,
    cx: &CasContext<'_>,
    ca_systems: &mut Vec<CaSystem>,
) -> anyhow::Result<SimulcryptParts> {
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
            anyhow::anyhow!(
                "--ecmg {}: no Super_CAS_id; give --super-cas-id HEX or {}?super_cas_id=HEX",
                spec.addr,
                spec.addr
            )
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
        let version = spec.version.or(a.ecmg_version);
        sc.version = version.unwrap_or(3);
        sc.version_fallback = version.is_none();
        sc.channel_id = spec.channel_id.unwrap_or(a.channel_id);
        sc.stream_id = spec.stream_id.unwrap_or(a.stream_id);
        sc.ecm_id = spec.ecm_id.unwrap_or(a.ecm_id);
        sc.crypto_period = cx.crypto_period;
        if let Some(text) = spec.access_criteria.as_deref().or(cx.access_criteria) {
            sc.access_criteria = parse_access_criteria_hex(text).with_context(|| {
                format!("--access-criteria {text:?}: expected up to 64 hex digits, e.g. 00000001")
            })?;
        }
        let ecmg = SimulcryptEcmg::start(sc).with_context(|| format!("--ecmg {}", spec.addr))?;
        let mut ca = CaSystem::new(ecmg.ca_system_id(), ecm_pid);
        ca.private_data = spec.private_data.clone().unwrap_or_default();
        started.push((spec, ecmg, ca));
    }
    // every link sets up at once; then each is waited for
    for (spec, ecmg, mut ca) in started {
        let status = match ecmg.wait_ready(SETUP_WAIT) {
            Ok(s) => s,
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
            Err(e) => return Err(e).with_context(|| format!("--ecmg {}", spec.addr)),
        };
        tracing::info!(
            ecmg = %spec.addr,
            super_cas_id = %format!("{:08X}", ecmg.super_cas_id()),
            version = ecmg.version(),
            ecm_pid = %ca.ecm_pid,
            delay_start_ms = status.delay_start,
            ecm_rep_period_ms = status.ecm_rep_period,
            max_comp_time_ms = status.max_comp_time,
            section_tspkt_flag = status.section_tspkt_flag,
            "simulcrypt: ECMG channel and stream set up"
        );
        ca.delay_start_ms = cx.delay_start.unwrap_or(i64::from(status.delay_start));
        ca.ecm_repetition = cx.ecm_repetition.unwrap_or(Duration::from_millis(u64::from(
            status.ecm_rep_period.max(10),
        )));
        ca_systems.push(ca);
        parts.ecmgs.push(ecmg);
    }
    if let Some(listen) = a.emmg_listen {
        if cx.emm_pid.is_none() {
            bail!("--emmg-listen needs --emm-pid (the PID the EMMs go out on)");
        }
        let (mux, source) = MuxThread::start(listen, a.emmg_accept_limits()?)?;
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
pub struct StopOnRefusal<'a> {
    scrambler: &'a mut Scrambler,
    /// Set for a file run with ECMGs.
    refusal: Option<Refusal>,
}

impl StopOnRefusal<'_> {
    fn check(&self) -> Result<(), ScrambleError> {
        let Some(r) = &self.refusal else {
            return Ok(());
        };
        match r.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(why) => Err(EcmError::Refused(why.clone()).into()),
            None => Ok(()),
        }
    }
}

impl PacketStage for StopOnRefusal<'_> {
    fn process_batch(
        &mut self,
        batch: &mut PacketBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), ScrambleError> {
        self.scrambler.process_batch(batch, out)?;
        self.check()
    }

    fn idle(&mut self) -> Result<(), ScrambleError> {
        PacketStage::idle(self.scrambler)?;
        self.check()
    }
}

/// The EMMG<->MUX server on a thread of its own.
#[derive(Debug)]
pub struct MuxThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: std::sync::Arc<EmmMuxStats>,
    /// More pipelines can take every EMM from here (EMM clone).
    pub subscribers: EmmSubscribers,
}

impl MuxThread {
    /// Listen on `listen` with the connection bounds `accept`; gives the thread and the
    /// first pipeline's EMM queue.
    pub fn start(
        listen: SocketAddr,
        accept: AcceptLimits,
    ) -> anyhow::Result<(MuxThread, EmmQueueSource)> {
        let rt = super::runtime(0).context("the EMMG<->MUX control thread")?;
        let config = EmmMuxConfig {
            accept,
            ..EmmMuxConfig::default()
        };
        let (server, source) = rt
            .block_on(EmmMuxServer::bind(listen, config))
            .with_context(|| format!("--emmg-listen {listen}: cannot listen (port in use?)"))?;
        let local = server.local_addr()?;
        let stats = server.stats();
        let subscribers = server.subscriber_handle();
        // the line a script (or a test) waits for: where EMMGs connect
        tracing::info!(listen = %local, "simulcrypt: EMMG<->MUX listening");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("simulcrypt-mux".to_owned())
            .spawn(move || {
                rt.block_on(server.run(async {
                    let _ = rx.await;
                }))
            })
            .context("starting the EMMG<->MUX thread")?;
        Ok((
            MuxThread {
                stop: Some(tx),
                thread: Some(thread),
                stats,
                subscribers,
            },
            source,
        ))
    }

    /// Stop the server and log its counters.
    pub fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        tracing::info!(stats = ?self.stats, "simulcrypt: EMMG<->MUX stopped");
    }
}
