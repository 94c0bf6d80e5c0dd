//! One channel: a [`ChannelSpec`] made into its parts (input, scrambler with its CAS and
//! SimulCrypt generators, outputs), run, and reported. `castmux scramble` is one channel;
//! `castmux headend` runs many.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use super::error::{bail, Context, HeadendError};
use super::inputs::{BackupOptions, ChannelInput};
use super::judge::JudgeLimits;
use super::monitor::{Monitor, MonitorShared};
use super::mpts::{Mpts, MptsOptions};
use super::simulcrypt::{self, CasContext, SimulcryptParts, StopOnRefusal};
use super::spec::{CasKind, ChannelSpec};
use crate::cas::live::{ChannelAccess, LiveCas};
use crate::cas::BuiltinEcmg;
use crate::io::{
    InputUrl, IoError, IoResult, IoStats, IoStatsSnapshot, OutputOptions, OutputSet, OutputStatus,
    OutputUrl, PacketSink, PacketSource,
};
use crate::mux::cbr::{CbrSettings, CbrStats};
use crate::mux::paced::Paced;
use crate::net::ControlPlane;
use crate::scramble::config::{DEFAULT_ECM_PID, DEFAULT_ECM_REPETITION};
use crate::scramble::cw::parse_cw_pair;
use crate::scramble::{
    run_stage, CaSystem, ClockMode, CwLogWriter, EcmGenerator, KeyMode, RunEnd, RunOptions,
    ScrambleConfig, Scrambler,
};
use crate::simulcrypt::EmmQueueSource;
use crate::ts::Pid;

/// The EMM PID used with the built-in CAS when the spec names none.
pub const DEFAULT_EMM_PID: u16 = 0x1FF1;

/// What the process gives a channel on top of its spec.
#[derive(Debug)]
pub struct ChannelEnv<'a> {
    /// The card store (`--db`), for the built-in CAS.
    pub db: &'a crate::cas::store::StoreLocation,
    /// Where SimulCrypt links and EMMG ports run.
    pub control: &'a ControlPlane,
    /// EMMs cloned from the head-end's EMMG<->MUX port (Astra's "EMM Clone").
    pub emm: Option<EmmQueueSource>,
    /// The EMM PID for them when the spec names none.
    pub emm_pid: Option<Pid>,
}

/// The inputs as logs show them (passphrases masked).
fn inputs_display(urls: &[InputUrl]) -> String {
    urls.iter()
        .map(InputUrl::display)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The outputs as logs show them (SRT passphrases masked).
fn outputs_display(urls: &[OutputUrl]) -> String {
    urls.iter()
        .map(OutputUrl::display)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A channel ready to run.
#[derive(Debug)]
pub struct Channel {
    name: String,
    spec: ChannelSpec,
    stage: StopOnRefusal,
    input: ChannelInput,
    /// The input as logs and the status API show it (an SRT passphrase masked).
    input_display: String,
    output: ChannelOutput,
    sc: SimulcryptParts,
    /// Kept for the run: its thread follows the store.
    live_cas: Option<LiveCas>,
    to_stdout: bool,
    /// (CA_system_ID, ECM PID) of each CA system, in the PMT's order.
    ca_systems: Vec<(u16, u16)>,
    /// Cloned EMM chunks this channel's queue dropped (EMM clone only).
    emm_clone_dropped: Option<Arc<AtomicU64>>,
}

impl Channel {
    /// Check `spec`, start its CAS and SimulCrypt parts, open its input and outputs.
    pub fn open(
        name: &str,
        spec: &ChannelSpec,
        env: ChannelEnv<'_>,
    ) -> Result<Channel, HeadendError> {
        spec.check().map_err(HeadendError::Config)?;
        let a = spec;
        let algorithm = a.scrambling.algorithm();
        let keys = match &a.cw {
            None => KeyMode::Rotating,
            Some(text) => match parse_cw_pair(text).context("--cw")? {
                (even, None) => KeyMode::Fixed(even),
                (even, Some(odd)) => KeyMode::FixedPair(even, odd),
            },
        };
        // the checks that cost nothing come before the store is opened and the ECMGs
        // connected (the batch size and the durations are bounded by their parsers)
        // an MPTS channel: every program's input, parsed (they are live inputs)
        let mut program_urls = Vec::with_capacity(a.program.len());
        for (k, p) in a.program.iter().enumerate() {
            let u: InputUrl = p.input.parse().with_context(|| {
                format!(
                    "program {}: input {}",
                    k + 1,
                    crate::io::url::mask(&p.input)
                )
            })?;
            if !matches!(u, InputUrl::Udp(_) | InputUrl::Srt(_) | InputUrl::Http(_)) {
                bail!(
                    "program {}: the inputs of an MPTS channel are live inputs (udp://, rtp://, srt://, http://), read together",
                    k + 1
                );
            }
            program_urls.push(u);
        }
        let mpts = !program_urls.is_empty();
        let input_url: InputUrl = match program_urls.first() {
            Some(u) => u.clone(),
            None => a.input.parse().context("--input")?,
        };
        let mut input_urls = vec![input_url.clone()];
        for b in &a.backup {
            let u: InputUrl = b
                .parse()
                .with_context(|| format!("--backup {}", crate::io::url::mask(b)))?;
            input_urls.push(u);
        }
        let failover = input_urls.len() > 1 || a.slate.is_some();
        if failover
            && !input_urls
                .iter()
                .all(|u| matches!(u, InputUrl::Udp(_) | InputUrl::Srt(_) | InputUrl::Http(_)))
        {
            bail!(
                "with backup inputs or a slate, the input and every backup are live inputs (udp://, rtp://, srt://, http://), read all the time and judged on air; a file belongs in slate"
            );
        }
        let output_urls = a
            .output
            .iter()
            .map(|o| {
                o.parse()
                    .with_context(|| format!("--output {}", crate::io::url::mask(o)))
            })
            .collect::<Result<Vec<OutputUrl>, HeadendError>>()?;
        let live_input = matches!(
            input_url,
            InputUrl::Udp(_) | InputUrl::Srt(_) | InputUrl::Http(_)
        );
        if a.cbr.is_some() && !(live_input || a.wall_clock) {
            bail!(
                "cbr sends the output in real time, on the wall clock, and {} is read as fast as it can be: give a live input (udp://, rtp://, srt://, http://), or a real-time pipe on stdin with --wall-clock",
                input_url.display()
            );
        }
        let mut live_cas = match a.cas {
            Some(CasKind::Builtin) => {
                let access = if !a.packages.is_empty() {
                    ChannelAccess::Packages(a.packages.clone())
                } else {
                    let Some(text) = a.access_criteria.as_deref() else {
                        bail!(
                            "--cas builtin needs the channel's packages: --packages NAME[,NAME] or --access-criteria 00000001"
                        );
                    };
                    ChannelAccess::Criteria(text.parse().context("--access-criteria")?)
                };
                let cas = LiveCas::start(env.db, access, Some(a.emm_bitrate), a.emm_format)
                    .with_context(|| format!("the card store {}", env.db))?;
                if cas.access.is_empty() {
                    bail!("the channel's access criteria name no package");
                }
                tracing::info!(
                    access = %cas.access,
                    cards = cas.cards,
                    ca_system_id = format_args!("{:#06x}", cas.ca_system_id),
                    "built-in CAS"
                );
                Some(cas)
            }
            None => None,
        };
        let first_ecm_pid = match (&a.ecm_pid, &keys) {
            (Some(p), _) => Some(*p),
            (None, KeyMode::Rotating) => Some(Pid::new(DEFAULT_ECM_PID)),
            (None, _) => None,
        };
        let emm_pid = match (&live_cas, a.emm_pid) {
            (Some(_), None) => Some(Pid::new(DEFAULT_EMM_PID)),
            (_, None) if env.emm.is_some() => env.emm_pid,
            (_, pid) => pid,
        };
        // castmux's own CA_descriptor entry: ecm_repetition and delay_start, else the defaults
        let own_ca_system = |ca_system_id, pid| CaSystem {
            ecm_repetition: a.ecm_repetition.unwrap_or(DEFAULT_ECM_REPETITION),
            delay_start_ms: a.delay_start.unwrap_or(0),
            ..CaSystem::new(ca_system_id, pid)
        };
        // the CA systems in order: the built-in CAS first, then each ECMG
        let mut ca_systems: Vec<CaSystem> = Vec::new();
        let mut ecm_generators: Vec<Box<dyn EcmGenerator>> = Vec::new();
        if let (Some(c), Some(pid)) = (&live_cas, first_ecm_pid) {
            ca_systems.push(own_ca_system(c.ca_system_id, pid));
            ecm_generators.push(Box::new(BuiltinEcmg::new(
                Arc::clone(&c.ring),
                c.access,
                c.ca_system_id,
            )));
        }
        let mut sc = simulcrypt::start(
            a,
            &CasContext {
                access_criteria: a.access_criteria.as_deref(),
                builtin_cas: a.cas.is_some(),
                first_ecm_pid,
                delay_start: a.delay_start,
                ecm_repetition: a.ecm_repetition,
                crypto_period: a.crypto_period,
                emm_pid,
                control: env.control,
                // a pipe paced in real time (ffmpeg -re … | castmux -i - --wall-clock) is live
                live: live_input || a.wall_clock,
            },
            &mut ca_systems,
        )?;
        ecm_generators.extend(sc.ecm_generators());
        // the CAT's EMM descriptor belongs to the CAS whose EMMs flow: the built-in one,
        // else the (first) ECMG's system, whose EMMG feeds the EMMG port
        let emm_ca_system_id = ca_systems
            .first()
            .map_or(a.ca_system_id, |c| c.ca_system_id);
        if ca_systems.is_empty() {
            // no CAS: the PMT still names the ECM PID (a CAS may be added later, probe sees it)
            if let Some(pid) = first_ecm_pid {
                ca_systems.push(own_ca_system(a.ca_system_id, pid));
            }
        }
        let ca_list: Vec<(u16, u16)> = ca_systems
            .iter()
            .map(|c| (c.ca_system_id, c.ecm_pid.value()))
            .collect();
        let config = ScrambleConfig {
            algorithm,
            keys,
            crypto_period: a.crypto_period,
            cw_checksum: !a.no_cw_checksum,
            services: a.service.clone(),
            scramble_audio: !a.no_audio,
            only_pids: a.only_pid.clone(),
            exclude_pids: a.exclude_pid.clone(),
            component_level: a.component_level,
            ca_systems,
            emm_pid,
            emm_ca_system_id,
            clock: if live_input || a.wall_clock {
                ClockMode::Wall
            } else {
                ClockMode::Stream
            },
            cas_policy: a.cas_policy,
        };
        let cw_log = a
            .cw_log
            .as_deref()
            .map(CwLogWriter::create)
            .transpose()
            .context("--cw-log")?;
        let mut scrambler = Scrambler::new(config, cw_log, ecm_generators)?;
        if let Some(emm) = live_cas.as_mut().and_then(LiveCas::take_emm_source) {
            if sc.has_emm() {
                bail!("--cas builtin and --emmg-listen both send EMMs; give one");
            }
            scrambler.set_emm_source(Box::new(emm))?;
        }
        sc.attach_emm(&mut scrambler)?;
        let emm_clone_dropped = env.emm.as_ref().map(EmmQueueSource::dropped_counter);
        if let Some(clone) = env.emm {
            if live_cas.is_some() || a.emmg_listen.is_some() {
                bail!(
                    "this channel makes its own EMMs (--cas builtin or --emmg-listen): set emm_clone = false for it"
                );
            }
            scrambler
                .set_emm_source(Box::new(clone))
                .context("the cloned EMMs")?;
        }
        let backup_opts = failover.then(|| BackupOptions {
            limits: JudgeLimits {
                timeout: a.input_timeout,
                min_bitrate: a.input_min_bitrate.unwrap_or(0),
                max_cc_errors: a.input_max_cc_errors,
                services: a.service.clone(),
            },
            start_delay: a.backup_start_delay,
            return_delay: a.backup_return_delay,
        });
        let input = if mpts {
            let scrambles = a.cw.is_some() || a.cas.is_some() || !a.ecmg.is_empty();
            let opts = MptsOptions {
                tsid: a.tsid,
                onid: a.onid,
                network: a
                    .network_id
                    .map(|id| (id, a.network_name.clone().unwrap_or_default())),
                provider: a
                    .network_name
                    .clone()
                    .unwrap_or_else(|| "castmux".to_owned()),
                scrambled: a
                    .program
                    .iter()
                    .map(|p| {
                        scrambles
                            && (a.service.is_empty()
                                || p.out_number().is_some_and(|n| a.service.contains(&n)))
                    })
                    .collect(),
                programs: a.program.clone(),
                limits: JudgeLimits {
                    timeout: a.input_timeout,
                    min_bitrate: 0,
                    max_cc_errors: None,
                    services: Vec::new(),
                },
            };
            Mpts::open(opts, &program_urls, a.batch_packets())
                .map(|m| ChannelInput::Mpts(Box::new(m)))
                .with_context(|| {
                    format!("opening the inputs of {}", inputs_display(&program_urls))
                })?
        } else {
            ChannelInput::open(
                &input_urls,
                a.slate.as_deref(),
                backup_opts,
                a.batch_packets(),
            )
            .with_context(|| format!("opening input {}", inputs_display(&input_urls)))?
        };
        let output = OutputSet::open(&output_urls, &OutputOptions::default())
            .with_context(|| format!("opening output {}", outputs_display(&output_urls)))?;
        tracing::info!(
            input = %input_url.display(),
            output = %outputs_display(&output_urls),
            scrambling = algorithm.name(),
            "scrambling"
        );
        let stage = sc.stage(scrambler, live_input);
        let on_air = OnAir {
            set: output,
            // a paced pipe (--wall-clock) is judged on the wall clock like a live input
            monitor: a.monitor.then(|| Monitor::new(live_input || a.wall_clock)),
        };
        let output = ChannelOutput::new(name, on_air, a.cbr_settings())?;
        Ok(Channel {
            name: name.to_owned(),
            spec: spec.clone(),
            stage,
            input,
            input_display: if mpts {
                inputs_display(&program_urls)
            } else {
                input_url.display()
            },
            output,
            sc,
            live_cas,
            to_stdout: output_urls.iter().any(|u| matches!(u, OutputUrl::Stdout)),
            ca_systems: ca_list,
            emm_clone_dropped,
        })
    }

    /// The live parts a monitor reads while the channel runs (the data path publishes its
    /// counters into them from now on).
    pub fn live(&mut self) -> super::status::ChannelLive {
        super::status::ChannelLive {
            input_url: self.input_display.clone(),
            input: Arc::clone(self.input.stats()),
            inputs: self.input.shared(),
            mpts: self.input.mpts_shared(),
            outputs: self.output.outputs.clone(),
            counters: self.stage.scrambler_mut().live_counters(),
            ecmgs: self.sc.ecmg_handles(),
            ca_systems: self.ca_systems.clone(),
            emm_clone_dropped: self.emm_clone_dropped.clone(),
            store_follower: self.live_cas.as_ref().map(LiveCas::follower_stats),
            monitor: self.output.monitor.clone(),
            cbr: self.output.cbr_stats(),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scrambler (counters, PIDs).
    pub fn scrambler(&self) -> &Scrambler {
        self.stage.scrambler()
    }

    /// Whether the shared data plane serves it (a UDP input, or inputs with backups).
    pub fn plane_served(&self) -> bool {
        self.input.plane_served()
    }

    /// Whether an output is stdout (a report then goes to stderr).
    pub fn writes_stdout(&self) -> bool {
        self.to_stdout
    }

    /// The run loop's settings from the spec, with `stop`.
    pub fn run_options(&self, stop: Arc<AtomicBool>) -> RunOptions {
        RunOptions {
            batch_packets: self.spec.batch_packets(),
            idle_timeout: self.spec.idle_timeout,
            stop,
            ..RunOptions::default()
        }
    }

    /// Run on threads of the channel's own (input, cipher, output) until the input ends,
    /// idles out or `stop` is set.
    pub fn run(&mut self, stop: Arc<AtomicBool>) -> Result<RunEnd, HeadendError> {
        let opts = self.run_options(stop);
        Ok(run_stage(
            &mut self.input,
            &mut self.output,
            &mut self.stage,
            &opts,
        )?)
    }

    /// The parts the shared data plane drives.
    pub(crate) fn parts_mut(
        &mut self,
    ) -> (&mut ChannelInput, &mut StopOnRefusal, &mut ChannelOutput) {
        (&mut self.input, &mut self.stage, &mut self.output)
    }

    /// Close the outputs, stop the SimulCrypt parts, log the counters and report.
    pub fn finish(self, end: Result<RunEnd, HeadendError>) -> ChannelReport {
        if let Ok(end) = &end {
            tracing::info!(?end, "run ended");
        }
        let cbr_stats = self.output.cbr_stats();
        let (set, monitor) = match self.output.finish() {
            Some(OnAir { set, monitor }) => (Some(set), monitor.map(Monitor::finish)),
            None => (None, None),
        };
        if let Some(m) = &monitor {
            let e = &m.etr290;
            tracing::info!(
                packets = m.packets,
                priority1_errors = e.priority1_errors,
                priority2_errors = e.priority2_errors,
                "monitor"
            );
        }
        let outputs = set.as_ref().map_or_else(Vec::new, OutputSet::status);
        for o in &outputs {
            tracing::info!(output = %o.name, packets_out = o.stats.packets_out,
                send_errors = o.stats.send_errors, queue_drops = o.stats.queue_drops,
                failed = o.error.as_deref().unwrap_or("no"), "output");
        }
        let cbr = cbr_stats.map(|(bitrate, c)| c.snapshot(bitrate));
        if let Some(c) = &cbr {
            tracing::info!(
                bitrate = c.bitrate,
                packets = c.packets,
                nulls = c.nulls,
                dropped_late = c.dropped_late,
                dropped_full = c.dropped_full,
                input_nulls = c.input_nulls,
                pcr_restamped = c.pcr_restamped,
                pcr_inserted = c.pcr_inserted,
                pcr_restarts = c.pcr_restarts,
                pcr_unfollowed = c.pcr_unfollowed,
                dating_restarts = c.dating_restarts,
                "cbr"
            );
        }
        let close = match set {
            Some(set) => set.close(Duration::from_secs(2)),
            None => Err(IoError::Closed {
                url: self.name.clone(),
                reason: "the constant-bitrate thread panicked".to_owned(),
            }),
        };
        let io = self.input.stats().snapshot();
        tracing::info!(
            datagrams_in = io.datagrams_in,
            sync_losses = io.sync_losses,
            dropped_bytes = io.dropped_bytes,
            rtp_gaps = io.rtp_gaps,
            queue_drops = io.queue_drops,
            "input"
        );
        self.sc.finish();
        let s = self.stage.scrambler();
        let c = s.counters();
        let t = c.totals();
        let st = &c.stream;
        let pids: Vec<String> = s.scrambled_pids().iter().map(|p| p.to_string()).collect();
        tracing::info!(
            packets_in = st.packets_in,
            packets_out = st.packets_out,
            scrambled = t.scrambled,
            already_scrambled = t.already_scrambled,
            inserted = t.inserted,
            dropped = t.dropped,
            key_switches = st.key_switches,
            psi_errors = st.psi_errors,
            scrambled_pids = %pids.join(","),
            "done"
        );
        for r in c.report().pids {
            tracing::debug!(pid = r.pid, counters = ?r.counters, "pid");
        }
        ChannelReport {
            name: self.name,
            unscrambled: (!self.spec.allow_unscrambled)
                .then(|| nothing_scrambled(s))
                .flatten(),
            counters: c.report(),
            input: io,
            outputs,
            end,
            close,
            to_stdout: self.to_stdout,
            ran: true,
            monitor,
            cbr,
        }
    }
}

/// A channel's outputs and, with `monitor = true`, the analyzer of what goes to them: the
/// one place the own-thread run loop and the shared data plane both hand their packets.
/// With `cbr`, both go to a thread that sends them at the constant bitrate.
#[derive(Debug)]
pub struct ChannelOutput {
    sink: Sink,
    /// Each output's counters, for the status API (live whichever thread writes).
    outputs: Vec<(String, Arc<IoStats>)>,
    monitor: Option<Arc<MonitorShared>>,
}

#[derive(Debug)]
enum Sink {
    Direct(Box<OnAir>),
    Paced(Paced<OnAir>),
}

/// The outputs and the monitor of what they get.
#[derive(Debug)]
pub struct OnAir {
    set: OutputSet,
    monitor: Option<Monitor>,
}

impl PacketSink for OnAir {
    fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()> {
        let res = self.set.write_batch(bytes);
        // after the write: the analysis never delays a datagram
        if let Some(m) = &mut self.monitor {
            m.observe(bytes);
        }
        res
    }

    fn flush(&mut self) -> IoResult<()> {
        self.set.flush()
    }
}

impl ChannelOutput {
    /// Write to `on_air` directly, or at `cbr`'s constant bitrate from a thread.
    fn new(name: &str, on_air: OnAir, cbr: Option<CbrSettings>) -> Result<Self, HeadendError> {
        let outputs = on_air.set.stats_handles();
        let monitor = on_air.monitor.as_ref().map(Monitor::shared);
        let sink = match cbr {
            None => Sink::Direct(Box::new(on_air)),
            Some(settings) => {
                Sink::Paced(Paced::start(name, settings, on_air).context("starting cbr")?)
            }
        };
        Ok(ChannelOutput {
            sink,
            outputs,
            monitor,
        })
    }

    /// UDP outputs written directly gather `burst` datagrams per send, holding none past
    /// `max_hold` (a constant-bitrate output keeps its own schedule).
    pub(crate) fn set_udp_coalesce(&mut self, burst: usize, max_hold: Duration) {
        if let Sink::Direct(o) = &mut self.sink {
            o.set.set_udp_coalesce(burst, max_hold);
        }
    }

    /// The constant-bitrate counters, with the bitrate.
    fn cbr_stats(&self) -> Option<(u64, Arc<CbrStats>)> {
        match &self.sink {
            Sink::Direct(_) => None,
            Sink::Paced(p) => Some((p.settings().bitrate, p.stats().clone())),
        }
    }

    /// Send what is left and give the outputs back (None: the sending thread panicked).
    fn finish(self) -> Option<OnAir> {
        match self.sink {
            Sink::Direct(o) => Some(*o),
            Sink::Paced(p) => p.finish(),
        }
    }
}

impl PacketSink for ChannelOutput {
    fn write_batch(&mut self, bytes: &[u8]) -> IoResult<()> {
        match &mut self.sink {
            Sink::Direct(o) => o.write_batch(bytes),
            Sink::Paced(p) => p.write_batch(bytes),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match &mut self.sink {
            Sink::Direct(o) => o.flush(),
            Sink::Paced(p) => p.flush(),
        }
    }
}

/// How a channel's run went.
#[derive(Debug)]
pub struct ChannelReport {
    pub name: String,
    /// The scrambler's counters.
    pub counters: crate::scramble::stats::Report,
    pub input: IoStatsSnapshot,
    pub outputs: Vec<OutputStatus>,
    /// Why the run ended, or its error.
    pub end: Result<RunEnd, HeadendError>,
    /// Closing the outputs.
    pub close: Result<(), IoError>,
    /// Why a run that was to scramble did not (unless the spec allows it).
    pub unscrambled: Option<String>,
    /// Whether an output was stdout.
    pub to_stdout: bool,
    /// Whether the channel started (false: it failed while opening).
    pub ran: bool,
    /// What the monitor found on the output over the run (`monitor = true`).
    pub monitor: Option<crate::analyze::Report>,
    /// The constant-bitrate output's counters (`cbr`).
    pub cbr: Option<crate::mux::cbr::CbrSnapshot>,
}

impl ChannelReport {
    /// The run's outcome: its error, the outputs' close error, or an unscrambled run.
    pub fn result(&mut self) -> Result<(), HeadendError> {
        std::mem::replace(&mut self.end, Ok(RunEnd::EndOfStream))?;
        if let Err(e) = std::mem::replace(&mut self.close, Ok(())) {
            return Err(HeadendError::Failed {
                what: "closing the outputs".to_owned(),
                source: Box::new(e),
            });
        }
        match self.unscrambled.take() {
            Some(why) => Err(HeadendError::Config(why)),
            None => Ok(()),
        }
    }
}

impl ChannelReport {
    /// The report of a channel that could not start.
    pub fn failed(name: &str, e: HeadendError) -> ChannelReport {
        ChannelReport {
            name: name.to_owned(),
            counters: crate::scramble::stats::Counters::default().report(),
            input: Default::default(),
            outputs: Vec::new(),
            end: Err(e),
            close: Ok(()),
            unscrambled: None,
            to_stdout: false,
            ran: false,
            monitor: None,
            cbr: None,
        }
    }

    /// Whether the run ended without an error.
    pub fn ok(&self) -> bool {
        self.end.is_ok() && self.close.is_ok() && self.unscrambled.is_none()
    }
}

/// Why a run scrambled nothing, or was asked for a service the PAT lacks: an operator who
/// asked for scrambling must not get a clear stream and a status of 0.
fn nothing_scrambled(s: &Scrambler) -> Option<String> {
    let missing = s.missing_services();
    if !missing.is_empty() {
        return Some(format!(
            "service(s) {missing:?} asked for with --service are not in the input's PAT \
             (castmux probe INPUT lists the programs; --allow-unscrambled accepts this)"
        ));
    }
    let c = s.counters();
    if c.totals().scrambled > 0 {
        return None;
    }
    let why = if c.stream.held_before_ecm > 0 {
        "no ECM was ever on air for the key, so the scrambled services were held back (see \
         the ECMG's log lines above)"
    } else if c.stream.packets_in == 0 {
        "no packet came in"
    } else if !s.pat_known() {
        "no complete PAT was found in the input"
    } else if s.scrambled_pids().is_empty() {
        "the selected services have no elementary stream to scramble (see --only-pid, \
         --exclude-pid, --no-audio)"
    } else {
        "the elementary streams carried no clear payload (already scrambled, or no payload)"
    };
    Some(format!(
        "nothing was scrambled: {why} (--allow-unscrambled accepts this)"
    ))
}
