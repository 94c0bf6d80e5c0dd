//! `castmux scramble`: the options become a [`ChannelSpec`], run as a one-channel head-end
//! (the same code path as every channel of `castmux headend`).

use castmux::cas::store::StoreLocation;
use std::path::PathBuf;
use std::time::Duration;

use castmux::headend::{spec, ChannelSpec, Controls, Headend, HeadendPlan, PlaneOptions};
use castmux::io::{IoStatsSnapshot, OutputStatus};
use castmux::ts::Pid;
use clap::{Args, ValueEnum};

use super::args;
use super::scramble_simulcrypt::SimulcryptArgs;

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
        self.spec().algorithm()
    }

    fn spec(self) -> spec::Scrambling {
        match self {
            Scrambling::Csa2 => spec::Scrambling::Csa2,
            Scrambling::Cissa => spec::Scrambling::Cissa,
            Scrambling::Idsa => spec::Scrambling::Idsa,
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

/// Which EMMs the built-in CAS sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmmFormat {
    /// A group EMM per 256 cards with the service keys, and a slim unique EMM per card
    /// (entitlements, group key), packed into TS packets.
    Grouped,
    /// One unique EMM per card carrying its keys (format 1): for software cards of castmux
    /// versions before group EMMs.
    Unique,
}

impl EmmFormat {
    pub fn spec(self) -> castmux::cas::EmmFormat {
        match self {
            EmmFormat::Grouped => castmux::cas::EmmFormat::Grouped,
            EmmFormat::Unique => castmux::cas::EmmFormat::Unique,
        }
    }
}

/// Options of `castmux scramble`.
#[derive(Debug, Args)]
pub struct ScrambleArgs {
    /// Input: udp://[SRC@]GROUP:PORT[?iface=ADDR], srt://HOST:PORT[?mode=..],
    /// http://HOST:PORT/PATH (reconnected when it ends), a file, or - for stdin.
    #[arg(short, long, required_unless_present = "programs")]
    input: Option<String>,
    /// An MPTS: a program of the multiplex, instead of --input; repeat for each.
    /// URL[,KEY=VALUE]... with program (the input's program_number; default its first),
    /// pnr (the output's; default the input's), name, provider, service_type, lcn,
    /// visible, pid_map=IN=OUT (repeat). --service then names output numbers. Values
    /// cannot hold commas (the head-end file's [[channel.program]] can). Default: none
    /// (one --input).
    #[arg(long = "program", value_name = "URL[,KEY=VALUE]...", value_parser = program)]
    programs: Vec<spec::ProgramSpec>,
    /// With --program: the multiplex's transport_stream_id (PAT, SDT, NIT). Default 1.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    tsid: u16,
    /// With --program: the original_network_id (SDT, NIT). Default 1.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    onid: u16,
    /// With --program: send a NIT for this network_id. Default: no NIT.
    #[arg(long, value_name = "N", value_parser = args::u16_number)]
    network_id: Option<u16>,
    /// With --program: the NIT's network_name and the default SDT provider name.
    /// Default: none (an empty name; provider "castmux").
    #[arg(long, value_name = "TEXT")]
    network_name: Option<String>,
    /// A backup input (udp://, rtp://, srt://, http://, with a live input); repeat for several, in priority
    /// order. The channel takes the first input judged on air (packets within
    /// --input-timeout, a PMT seen, clear ES where clear ones are expected, and the
    /// --input-min-bitrate and --input-max-cc-errors limits) and keeps its output one
    /// continuous stream in the first input's numbering (PIDs, PSI versions, CCs).
    #[arg(long = "backup", value_name = "URL")]
    backups: Vec<String>,
    /// A TS file looped in real time when no input is on air (the last resort; with a
    /// live input), paced by its PCRs, at most 64 MiB.
    #[arg(long, value_name = "FILE")]
    slate: Option<PathBuf>,
    /// With --backup: the active input off air this long hands over to the next one on air.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = args::duration)]
    backup_start_delay: Duration,
    /// With --backup: a higher input back on air this long takes over again.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::duration)]
    backup_return_delay: Duration,
    /// With --backup: an input with no packet for this long is off air.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = args::duration)]
    input_timeout: Duration,
    /// With --backup: an input below this bitrate over the last second is off air (e.g. 1M).
    #[arg(long, value_name = "BITRATE", value_parser = args::bitrate)]
    input_min_bitrate: Option<u64>,
    /// With --backup: an input with more CC errors than this in the last second is off air.
    #[arg(long, value_name = "N")]
    input_max_cc_errors: Option<u64>,
    /// Output: udp://HOST:PORT[?ttl=N&pkt=7], srt://...,
    /// http://ADDR:PORT/PATH[?max_clients=100] (served to any number of clients), a file,
    /// or - for stdout (at most once). Repeat for several: each gets the same packets; one that fails is closed and
    /// logged while the others go on, the run fails only when all have failed.
    #[arg(short, long, required = true)]
    output: Vec<String>,
    /// Send the output at this constant bitrate (e.g. 20M, with a live input): null packets
    /// fill it, every PCR is restamped for its new place (ETR 290 2.4), UDP leaves paced
    /// one datagram at a time; packets over the rate are dropped and counted.
    #[arg(long, value_name = "BITRATE", value_parser = args::bitrate)]
    cbr: Option<u64>,
    /// With --cbr: the jitter buffer; packets are due this long after the stream's clock
    /// (its PCRs) says, which absorbs a bursty sender and is the latency added.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = args::duration)]
    cbr_delay: Duration,
    /// With --cbr: a packet this late for its slot (the input is over the rate) is dropped.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = args::duration)]
    cbr_max_delay: Duration,
    /// Service (program_number) to scramble; repeat for several. Default: every service in the PAT.
    #[arg(long = "service", value_name = "ID", value_parser = args::u16_number)]
    services: Vec<u16>,
    /// Fixed control word(s), hex: EVEN (one key, BISS-style, always even parity, no ECM)
    /// or EVEN:ODD (a fixed pair, parity alternating each crypto period).
    /// Default: a fresh random CW from the OS CSPRNG every crypto period.
    #[arg(long, value_name = "EVEN[:ODD]", value_parser = args::secret_text)]
    cw: Option<args::SecretText>,
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
    /// With --cas builtin: which EMMs: `grouped` (a group EMM per 256 cards with the
    /// service keys, a slim unique EMM per card) or `unique` (one EMM per card carrying
    /// its keys, for software cards older than group EMMs). Default grouped.
    #[arg(long, value_enum, requires = "cas", default_value_t = EmmFormat::Grouped)]
    emm_format: EmmFormat,
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
    /// Packets per batch handed to the cipher, 1 to 16384. Default 2048 for a file input
    /// (fewer hand-offs between the threads), 512 otherwise.
    #[arg(long, value_name = "N", value_parser = args::batch_packets)]
    batch: Option<usize>,
    /// Stop when a live input has been silent this long (100ms to 7 days). Default: run
    /// until killed.
    #[arg(long, value_name = "DURATION", value_parser = args::stream_idle_timeout)]
    idle_timeout: Option<Duration>,
    /// Print the counters as JSON on stdout at the end (stderr when the output is stdout).
    /// Default: counters are logged only.
    #[arg(long)]
    stats: bool,
    /// Judge the output as it goes out (ETR 290 priority 1 and 2, ECM repetition, crypto
    /// period, EMM bitrate, as `castmux probe` does) and print the report on stderr at the
    /// end (in the --stats JSON as "monitor"); in a head-end, shown live by the status API
    /// and /metrics. Costs CPU. Default: off.
    #[arg(long)]
    monitor: bool,
    #[command(flatten)]
    simulcrypt: SimulcryptArgs,
}

impl ScrambleArgs {
    /// The channel these options describe.
    pub fn spec(&self) -> ChannelSpec {
        let mut s = ChannelSpec {
            input: self.input.clone().unwrap_or_default(),
            program: self.programs.clone(),
            tsid: self.tsid,
            onid: self.onid,
            network_id: self.network_id,
            network_name: self.network_name.clone(),
            backup: self.backups.clone(),
            slate: self.slate.clone(),
            backup_start_delay: self.backup_start_delay,
            backup_return_delay: self.backup_return_delay,
            input_timeout: self.input_timeout,
            input_min_bitrate: self.input_min_bitrate,
            input_max_cc_errors: self.input_max_cc_errors,
            output: self.output.clone(),
            cbr: self.cbr,
            cbr_delay: self.cbr_delay,
            cbr_max_delay: self.cbr_max_delay,
            service: self.services.clone(),
            cw: self.cw.as_ref().map(|c| c.expose().to_owned()),
            crypto_period: self.crypto_period,
            cw_log: self.cw_log.clone(),
            ecm_pid: self.ecm_pid,
            emm_pid: self.emm_pid,
            scrambling: self.scrambling.spec(),
            cas: self.cas.map(|Cas::Builtin| spec::CasKind::Builtin),
            access_criteria: self.access_criteria.clone(),
            packages: self.packages.clone(),
            emm_bitrate: self.emm_bitrate,
            emm_format: self.emm_format.spec(),
            no_audio: self.no_audio,
            only_pid: self.only_pids.clone(),
            exclude_pid: self.exclude_pids.clone(),
            allow_unscrambled: self.allow_unscrambled,
            component_level: self.component_level,
            no_cw_checksum: self.no_cw_checksum,
            ca_system_id: self.ca_system_id,
            delay_start: self.delay_start,
            ecm_repetition: self.ecm_repetition,
            wall_clock: self.wall_clock,
            batch: self.batch,
            idle_timeout: self.idle_timeout,
            monitor: self.monitor,
            ..ChannelSpec::default()
        };
        self.simulcrypt.fill(&mut s);
        s
    }
}

/// `--program`'s value.
fn program(text: &str) -> Result<spec::ProgramSpec, String> {
    text.parse()
}

pub fn run(a: ScrambleArgs, db: &StoreLocation) -> anyhow::Result<()> {
    let controls = Controls {
        stop: super::stop_flag()?,
        ..Controls::default()
    };
    let plan = HeadendPlan::single("scramble", a.spec());
    // one channel runs on threads of its own (see HeadendPlan::shared_plane)
    let headend = Headend::new(PlaneOptions::default());
    let mut reports = headend.run(plan, db, &controls, None)?;
    let Some(mut r) = reports.pop() else {
        anyhow::bail!("the channel did not run");
    };
    if let Some(m) = &r.monitor {
        eprint!("monitor of the output:\n{m}");
    }
    if a.stats && r.ran {
        let report = RunReport {
            counters: &r.counters,
            input: &r.input,
            outputs: &r.outputs,
            monitor: r.monitor.as_ref(),
            cbr: r.cbr.as_ref(),
        };
        super::print_stats(&report, r.to_stdout)?;
    }
    r.result()?;
    Ok(())
}

/// The `--stats` JSON: the scrambler's counters, the input's and each output's.
#[derive(serde::Serialize)]
struct RunReport<'a> {
    #[serde(flatten)]
    counters: &'a castmux::scramble::stats::Report,
    input: &'a IoStatsSnapshot,
    outputs: &'a [OutputStatus],
    #[serde(skip_serializing_if = "Option::is_none")]
    monitor: Option<&'a castmux::analyze::Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cbr: Option<&'a castmux::mux::cbr::CbrSnapshot>,
}
