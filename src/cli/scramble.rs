//! `castmux scramble`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use castmux::cas::live::{ChannelAccess, LiveCas};
use castmux::cas::BuiltinEcmg;
use castmux::io::{
    Input, InputOptions, InputUrl, IoStatsSnapshot, OutputOptions, OutputSet, OutputStatus,
    OutputUrl,
};
use castmux::scramble::config::{DEFAULT_ECM_PID, DEFAULT_ECM_REPETITION};

/// The EMM PID used with --cas builtin when no --emm-pid is given.
const DEFAULT_EMM_PID: u16 = 0x1FF1;
use castmux::scramble::cw::parse_cw_pair;
use castmux::scramble::{
    run_stage, CaSystem, ClockMode, CwLogWriter, EcmGenerator, KeyMode, RunOptions, ScrambleConfig,
    Scrambler,
};
use castmux::simulcrypt::EmmQueueSource;
use castmux::ts::Pid;
use clap::{Args, ValueEnum};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::args;
use super::scramble_simulcrypt::{self, CasContext, SimulcryptArgs};

/// Scrambling algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scrambling {
    /// DVB-CSA2, 8-byte CWs.
    Csa2,
    /// DVB-CISSA (AES-128-CBC), 16-byte CWs.
    Cissa,
    /// ATIS-IDSA (AES-128-CBC), 16-byte CWs.
    Idsa,
}

impl Scrambling {
    pub fn algorithm(self) -> csa::Algorithm {
        match self {
            Scrambling::Csa2 => csa::Algorithm::Csa2,
            Scrambling::Cissa => csa::Algorithm::Cissa,
            Scrambling::Idsa => csa::Algorithm::Idsa,
        }
    }
}

/// Where ECMs and EMMs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cas {
    /// castmux's own CAS: ECMs from the built-in ECMG under the store's service keys,
    /// EMMs for every card of the store (--db) on the EMM PID.
    Builtin,
}

/// Options of `castmux scramble`.
#[derive(Debug, Args)]
pub struct ScrambleArgs {
    /// Input: udp://[SRC@]GROUP:PORT[?iface=ADDR], srt://HOST:PORT[?mode=..], a file, or - for stdin.
    #[arg(short, long)]
    input: String,
    /// Output: udp://HOST:PORT[?ttl=N&pkt=7], srt://..., a file, or - for stdout (at most
    /// once). Repeat for several: each gets the same packets; one that fails is closed and
    /// logged while the others go on, the run fails only when all have failed.
    #[arg(short, long, required = true)]
    output: Vec<String>,
    /// Service (program_number) to scramble; repeat for several. Default: every service in the PAT.
    #[arg(long = "service", value_name = "ID", value_parser = args::u16_number)]
    services: Vec<u16>,
    /// Fixed control word(s), hex: EVEN (one key, BISS-style, always even parity, no ECM)
    /// or EVEN:ODD (a fixed pair, parity alternating each crypto period).
    /// Default: a fresh random CW from the OS CSPRNG every crypto period.
    #[arg(long, value_name = "EVEN[:ODD]")]
    cw: Option<String>,
    /// Crypto period length (10s, 500ms, 2m). Stream time (PCR of the first scrambled
    /// program) for files and stdin, wall-clock time for live inputs. 100ms to 1h.
    /// Default 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::crypto_period)]
    crypto_period: Duration,
    /// Write every CW in use to FILE, one line per crypto period in order (16 hex digits,
    /// 32 for AES): the format of TSDuck's descrambler --cw-file and of `castmux descramble
    /// --cw-log`. Default: no log.
    #[arg(long, value_name = "FILE")]
    cw_log: Option<PathBuf>,
    /// ECM PID named in the CA_descriptor of the scrambled PMTs. Default: 0x1FF0 when CWs
    /// rotate (no --cw), none with --cw (then the PMT is passed unchanged).
    /// No ECM content is sent until an ECM generator (CAS, SimulCrypt) is configured.
    /// With several CAS (--cas builtin and --ecmg, or several --ecmg) this is the first
    /// one's; the others take the next PIDs up unless their --ecmg query names one.
    #[arg(long, value_name = "PID", value_parser = args::pid)]
    ecm_pid: Option<Pid>,
    /// EMM PID named in the CAT's CA_descriptor (the CAT is made if the input has none,
    /// merged if it has one). EMMs flow on it when an EMM source is configured.
    /// Default: none (the CAT is passed unchanged).
    #[arg(long, value_name = "PID", value_parser = args::pid)]
    emm_pid: Option<Pid>,
    /// Scrambling algorithm. Default csa2.
    #[arg(long, value_enum, default_value_t = Scrambling::Csa2)]
    scrambling: Scrambling,
    /// Conditional access: `builtin` puts ECMs for the channel's packages and EMMs for
    /// every card of the store (--db) on air. Default: none (CW log only).
    #[arg(long, value_enum, conflicts_with = "cw")]
    cas: Option<Cas>,
    /// With --cas builtin: the packages the channel belongs to, as access criteria
    /// (TVCAS form: 0/1 digits, rightmost = first package, e.g. 00000001; or 0x + hex).
    /// With --ecmg: sent to the ECMG as the bytes of these hex digits (Astra's form).
    #[arg(long, value_name = "BITS", conflicts_with = "packages")]
    access_criteria: Option<String>,
    /// With --cas builtin: the packages the channel belongs to, by name (comma-separated).
    #[arg(long, value_name = "NAMES", requires = "cas", value_delimiter = ',')]
    packages: Vec<String>,
    /// With --cas builtin: EMM bandwidth on the EMM PID (50k, 1M), 1k to 65535k.
    /// Default 50k.
    #[arg(long, value_name = "RATE", requires = "cas", default_value = "50k", value_parser = args::emm_bandwidth)]
    emm_bitrate: u64,
    /// Leave audio PIDs clear. Default: audio is scrambled.
    #[arg(long)]
    no_audio: bool,
    /// Scramble only this ES PID (any stream kind); repeat for several. Default: every ES
    /// PID of the selected services, whatever its stream type.
    #[arg(long = "only-pid", value_name = "PID", value_parser = args::pid)]
    only_pids: Vec<Pid>,
    /// Leave this ES PID of a selected service clear; repeat for several. Default: none
    /// (every ES is scrambled, whatever its stream type).
    #[arg(long = "exclude-pid", value_name = "PID", value_parser = args::pid, conflicts_with = "only_pids")]
    exclude_pids: Vec<Pid>,
    /// Exit 0 even when nothing was scrambled or a --service is not in the PAT. Default: such
    /// a run fails (status 1) with the reason.
    #[arg(long)]
    allow_unscrambled: bool,
    /// Put the CA_descriptor in the ES_info loop of each scrambled component instead of
    /// the program_info loop. Default: program level.
    #[arg(long)]
    component_level: bool,
    /// Do not set the CSA2 checksum bytes (3 and 7) of random CWs. Default: set.
    #[arg(long)]
    no_cw_checksum: bool,
    /// CA_system_ID of the CA_descriptor when no CAS is configured (and of the CAT's EMM
    /// descriptor when neither --cas builtin nor --ecmg gives one), hex.
    /// Default 0x5510 (castmux's default; a store's own id with --cas builtin).
    #[arg(long, value_name = "HEX", value_parser = args::hex_u16, default_value = "0x5510")]
    ca_system_id: u16,
    /// When ECM content switches relative to the key switch (SimulCrypt delay_start), e.g.
    /// -500ms to send it earlier; -30s to 30s. Default 0 (with --ecmg: the ECMG's).
    #[arg(long, value_name = "DURATION", value_parser = args::signed_millis, allow_hyphen_values = true)]
    delay_start: Option<i64>,
    /// ECM repetition interval, 10ms to 10s. Default 100ms (with --ecmg: the ECMG's
    /// ECM_rep_period).
    #[arg(long, value_name = "DURATION", value_parser = args::ecm_repetition)]
    ecm_repetition: Option<Duration>,
    /// Use wall-clock crypto periods even for a file or stdin input. Default: stream time
    /// for files and stdin, wall clock for udp and srt.
    #[arg(long)]
    wall_clock: bool,
    /// Packets per batch handed to the cipher, 1 to 16384. Default 512.
    #[arg(long, value_name = "N", default_value = "512", value_parser = args::batch_packets)]
    batch: usize,
    /// Stop when a live input has been silent this long (100ms to 7 days). Default: run
    /// until killed.
    #[arg(long, value_name = "DURATION", value_parser = args::stream_idle_timeout)]
    idle_timeout: Option<Duration>,
    /// Print the counters as JSON on stdout at the end (stderr when the output is stdout).
    /// Default: counters are logged only.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    simulcrypt: SimulcryptArgs,
}

impl ScrambleArgs {
    /// Whether the channel reads stdin / writes stdout (`-`): one process has one of each.
    pub fn uses_stdio(&self) -> (bool, bool) {
        (self.input == "-", self.output.iter().any(|o| o == "-"))
    }
}

/// What `castmux headend` gives one of its channels on top of the channel's own options.
#[derive(Debug, Default)]
pub struct ChannelExtras {
    /// EMMs cloned from the head-end's EMMG<->MUX port (Astra's "EMM Clone").
    pub emm: Option<EmmQueueSource>,
    /// The EMM PID for them when the channel's options name none.
    pub emm_pid: Option<Pid>,
    /// The head-end's stop flag (a lone `scramble` installs its own signal handlers).
    pub stop: Option<Arc<AtomicBool>>,
}

pub fn run(a: ScrambleArgs, db: &std::path::Path) -> anyhow::Result<()> {
    run_channel(a, db, ChannelExtras::default())
}

/// `castmux scramble`, or one channel of `castmux headend` with `extras`.
pub fn run_channel(
    a: ScrambleArgs,
    db: &std::path::Path,
    extras: ChannelExtras,
) -> anyhow::Result<()> {
    let algorithm = a.scrambling.algorithm();
    let keys = match &a.cw {
        None => KeyMode::Rotating,
        Some(text) => match parse_cw_pair(text).context("--cw")? {
            (even, None) => KeyMode::Fixed(even),
            (even, Some(odd)) => KeyMode::FixedPair(even, odd),
        },
    };
    // the checks that cost nothing come before the store is opened and the ECMGs connected
    // (--batch and the durations are bounded by their parsers)
    let input_url: InputUrl = a.input.parse().context("--input")?;
    let output_urls = a
        .output
        .iter()
        .map(|o| o.parse().with_context(|| format!("--output {o}")))
        .collect::<anyhow::Result<Vec<OutputUrl>>>()?;
    let live_input = matches!(input_url, InputUrl::Udp(_) | InputUrl::Srt(_));
    let mut live_cas = match a.cas {
        Some(Cas::Builtin) => {
            let access = if !a.packages.is_empty() {
                ChannelAccess::Packages(a.packages.clone())
            } else {
                let text = a.access_criteria.as_deref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--cas builtin needs the channel's packages: --packages NAME[,NAME] or --access-criteria 00000001"
                    )
                })?;
                ChannelAccess::Criteria(text.parse().context("--access-criteria")?)
            };
            let cas = LiveCas::start(db, access, Some(a.emm_bitrate))
                .with_context(|| format!("the card store {}", db.display()))?;
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
        (_, None) if extras.emm.is_some() => extras.emm_pid,
        (_, pid) => pid,
    };
    // castmux's own CA_descriptor entry: --ecm-repetition and --delay-start, else the defaults
    let own_ca_system = |ca_system_id, pid| CaSystem {
        ecm_repetition: a.ecm_repetition.unwrap_or(DEFAULT_ECM_REPETITION),
        delay_start_ms: a.delay_start.unwrap_or(0),
        ..CaSystem::new(ca_system_id, pid)
    };
    // the CA systems in order: the built-in CAS first, then each --ecmg
    let mut ca_systems: Vec<CaSystem> = Vec::new();
    let mut ecm_generators: Vec<Box<dyn EcmGenerator>> = Vec::new();
    if let (Some(c), Some(pid)) = (&live_cas, first_ecm_pid) {
        ca_systems.push(own_ca_system(c.ca_system_id, pid));
        ecm_generators.push(Box::new(BuiltinEcmg::new(
            std::sync::Arc::clone(&c.ring),
            c.access,
            c.ca_system_id,
        )));
    }
    let mut sc = scramble_simulcrypt::start(
        &a.simulcrypt,
        &CasContext {
            access_criteria: a.access_criteria.as_deref(),
            builtin_cas: a.cas.is_some(),
            first_ecm_pid,
            delay_start: a.delay_start,
            ecm_repetition: a.ecm_repetition,
            crypto_period: a.crypto_period,
            emm_pid,
        },
        &mut ca_systems,
    )?;
    ecm_generators.extend(sc.ecm_generators());
    // the CAT's EMM descriptor belongs to the CAS whose EMMs flow: the built-in one, else
    // the (first) ECMG's system, whose EMMG feeds --emmg-listen
    let emm_ca_system_id = ca_systems
        .first()
        .map_or(a.ca_system_id, |c| c.ca_system_id);
    if ca_systems.is_empty() {
        // no CAS: the PMT still names the ECM PID (a CAS may be added later, probe sees it)
        if let Some(pid) = first_ecm_pid {
            ca_systems.push(own_ca_system(a.ca_system_id, pid));
        }
    }
    let config = ScrambleConfig {
        algorithm,
        keys,
        crypto_period: a.crypto_period,
        cw_checksum: !a.no_cw_checksum,
        services: a.services.clone(),
        scramble_audio: !a.no_audio,
        only_pids: a.only_pids.clone(),
        exclude_pids: a.exclude_pids.clone(),
        component_level: a.component_level,
        ca_systems,
        emm_pid,
        emm_ca_system_id,
        clock: if live_input || a.wall_clock {
            ClockMode::Wall
        } else {
            ClockMode::Stream
        },
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
    if let Some(clone) = extras.emm {
        if live_cas.is_some() || a.simulcrypt.emmg_listen().is_some() {
            bail!(
                "this channel makes its own EMMs (--cas builtin or --emmg-listen): set emm_clone = false for it"
            );
        }
        scrambler
            .set_emm_source(Box::new(clone))
            .context("the cloned EMMs")?;
    }
    let mut input = Input::open(&input_url, &InputOptions::default())
        .with_context(|| format!("opening input {}", a.input))?;
    let mut output = OutputSet::open(&output_urls, &OutputOptions::default())
        .with_context(|| format!("opening output {}", a.output.join(", ")))?;
    let opts = RunOptions {
        batch_packets: a.batch,
        idle_timeout: a.idle_timeout,
        stop: match extras.stop {
            Some(stop) => stop,
            None => super::stop_flag()?,
        },
        ..RunOptions::default()
    };
    tracing::info!(
        input = %a.input,
        output = %a.output.join(", "),
        scrambling = algorithm.name(),
        "scrambling"
    );
    let res = run_stage(
        &mut input,
        &mut output,
        &mut sc.stage(&mut scrambler, live_input),
        &opts,
    );
    if let Ok(end) = &res {
        tracing::info!(?end, "run ended");
    }
    let outputs = output.status();
    for o in &outputs {
        tracing::info!(output = %o.name, packets_out = o.stats.packets_out,
            send_errors = o.stats.send_errors, queue_drops = o.stats.queue_drops,
            failed = o.error.as_deref().unwrap_or("no"), "output");
    }
    let close = output.close(Duration::from_secs(2));
    let io = input.stats().snapshot();
    tracing::info!(
        datagrams_in = io.datagrams_in,
        sync_losses = io.sync_losses,
        dropped_bytes = io.dropped_bytes,
        rtp_gaps = io.rtp_gaps,
        queue_drops = io.queue_drops,
        "input"
    );
    sc.finish();
    let to_stdout = output_urls.iter().any(|u| matches!(u, OutputUrl::Stdout));
    report(&scrambler, a.stats.then_some((io, &outputs[..])), to_stdout)?;
    res?;
    close?;
    if !a.allow_unscrambled {
        nothing_scrambled(&scrambler)?;
    }
    Ok(())
}

/// Fail a run that scrambled nothing, or that was asked for a service the PAT lacks: an
/// operator who asked for scrambling must not get a clear stream and a status of 0.
fn nothing_scrambled(s: &Scrambler) -> anyhow::Result<()> {
    let missing = s.missing_services();
    if !missing.is_empty() {
        bail!(
            "service(s) {missing:?} asked for with --service are not in the input's PAT \
             (castmux probe INPUT lists the programs; --allow-unscrambled accepts this)"
        );
    }
    let c = s.counters();
    if c.totals().scrambled > 0 {
        return Ok(());
    }
    let why = if c.stream.packets_in == 0 {
        "no packet came in"
    } else if !s.pat_known() {
        "no complete PAT was found in the input"
    } else if s.scrambled_pids().is_empty() {
        "the selected services have no elementary stream to scramble (see --only-pid, \
         --exclude-pid, --no-audio)"
    } else {
        "the elementary streams carried no clear payload (already scrambled, or no payload)"
    };
    bail!("nothing was scrambled: {why} (--allow-unscrambled accepts this)")
}

/// The `--stats` JSON: the scrambler's counters, the input's and each output's.
#[derive(serde::Serialize)]
struct RunReport<'a> {
    #[serde(flatten)]
    counters: castmux::scramble::stats::Report,
    input: IoStatsSnapshot,
    outputs: &'a [OutputStatus],
}

/// Log the counters; print them as JSON when `json` gives the I/O counters.
fn report(
    s: &Scrambler,
    json: Option<(IoStatsSnapshot, &[OutputStatus])>,
    output_is_stdout: bool,
) -> anyhow::Result<()> {
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
    if let Some((input, outputs)) = json {
        let r = RunReport {
            counters: c.report(),
            input,
            outputs,
        };
        super::print_stats(&r, output_is_stdout)?;
    }
    Ok(())
}
