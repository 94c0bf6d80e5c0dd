//! `castmux loadtest`: load tests with a verdict (issue 13). `loadtest ecmg HOST:PORT` loads a
//! SimulCrypt ECMG with TSDuck `tstestecmg`'s knobs; the work and the report are
//! `castmux::loadtest`, this file parses, calls and prints.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use castmux::loadtest::ecmg::{self, EcmgLoadConfig, Event, Limits};
use castmux::loadtest::headend::{self, Fault, HeadendLimits, HeadendLoad};
use castmux::loadtest::report::{write_json, Outcome, Plot, Progress, Table, Verdict};
use castmux::simulcrypt::access::parse_access_criteria_hex;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::args;

/// Options of `castmux loadtest`.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    #[command(subcommand)]
    test: LoadtestCommand,
}

#[derive(Debug, Subcommand)]
enum LoadtestCommand {
    /// Load a SimulCrypt ECMG (castmux ecmg, TSDuck tsecmg, a vendor's): channels x streams
    /// x crypto period, every answer timed; exits non-zero when a pass criterion fails.
    Ecmg(EcmgArgs),
    /// Run N synthetic channels through a real `castmux headend` over loopback UDP and
    /// check every output packet: never clear, each descrambled by the key its ECM carried
    /// and equal to what was sent; exits non-zero when a pass criterion fails.
    Headend(HeadendArgs),
}

/// Options of `castmux loadtest headend`.
#[derive(Debug, Args)]
pub struct HeadendArgs {
    /// Channels, each its own input and output (1..=4096).
    #[arg(long, short, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    channels: u16,
    /// Input bitrate of each channel (`2M`, `500k`).
    #[arg(long, value_name = "RATE", default_value = "2M", value_parser = args::bitrate)]
    bitrate: u64,
    /// The head-end's crypto period (100ms..1h).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = args::crypto_period)]
    crypto_period: Duration,
    /// How long the inputs are fed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = args::duration)]
    duration: Duration,
    /// ECMs from a `castmux ecmg` over SimulCrypt (started by the test, behind a proxy the
    /// faults use) instead of the head-end's built-in CAS.
    #[arg(long)]
    ecmg: bool,
    /// The head-end's data-plane worker threads (`headend --workers`). Default: its own.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// A fault to play, repeatable: kill-ecmg@AT+DOWN, slow-ecmg@AT+FOR:DELAY,
    /// stop-input:CHANNEL@AT+FOR, emmg-flood@AT+FOR[:RATE] (e.g. kill-ecmg@30s+5s,
    /// emmg-flood@10s+5s:2M). An emmg-flood (needs --ecmg, FOR at least 2s) gives the
    /// head-end an [emmg] port every channel clones, and sends EMMs to it at RATE bit/s
    /// (default: as fast as the link takes) after asking for 64 kbit/s.
    #[arg(long, value_name = "FAULT", value_parser = Fault::parse)]
    fault: Vec<Fault>,
    /// The castmux binary to run as the head-end and ECMG. Default: this one.
    #[arg(long, value_name = "PATH")]
    castmux: Option<PathBuf>,
    /// Where the store, the head-end file and the logs go. Default: a new directory under
    /// the temp dir, removed after a passing run.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// One line of counts per interval (100ms..1h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = stats_interval)]
    stats_interval: Duration,
    /// Pass criterion: clear ES payloads at most this many.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_clear: u64,
    /// Pass criterion: undecryptable packets at most this many.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_undecryptable: u64,
    /// Pass criterion: lost packets at most this many.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_lost: u64,
    /// Pass criterion: the largest ECM interval of any ECM PID, ms (monitors alarm at 500).
    #[arg(long, value_name = "MS", default_value_t = 500.0)]
    max_ecm_interval_ms: f64,
    /// Pass criterion (runs with an emmg-flood): the EMM bitrate on air of the worst
    /// channel, from a second into the flood to its end, over the bandwidth the head-end
    /// allocated the flooder, at most this ratio.
    #[arg(long, value_name = "RATIO", default_value_t = 1.2)]
    max_emm_flood_ratio: f64,
    #[command(flatten)]
    report: ReportArgs,
}

/// Where and how a load test reports (every load test takes these).
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the whole report (settings, every interval, the total, the verdict) as JSON
    /// to FILE. Default: none.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the intervals over time to FILE.svg or FILE.png (needs a TrueType font: Debian
    /// fonts-dejavu-core, or CASTMUX_PLOT_FONT=path). Default: none.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// No progress bar (it is drawn on stderr only when stderr is a terminal).
    #[arg(long, short)]
    quiet: bool,
}

/// Options of `castmux loadtest ecmg`.
#[derive(Debug, Args)]
pub struct EcmgArgs {
    /// The ECMG to load, HOST:PORT.
    #[arg(value_name = "HOST:PORT")]
    ecmg: String,
    /// Super_CAS_id of every channel (CA_system_ID << 16 | CA_subsystem_ID), hex.
    #[arg(long, value_name = "HEX", value_parser = args::hex_u32)]
    super_cas_id: u32,
    /// ECM channels, one TCP connection each (1..=4096).
    #[arg(long, short, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    channels: u16,
    /// ECM streams on each channel (1..=1024).
    #[arg(long, short, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    streams_per_channel: u16,
    /// Crypto period: every stream sends a CW_provision this often (100ms..1h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::crypto_period)]
    crypto_period: Duration,
    /// Bytes per control word: 8 (DVB-CSA2) or 16 (AES: DVB-CISSA, ATIS-IDSA).
    #[arg(long, value_name = "BYTES", default_value_t = 8, value_parser = cw_size)]
    cw_size: usize,
    /// ECMG<->SCS protocol version, 2 or 3.
    #[arg(long, value_name = "2|3", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(2..=3))]
    ecmg_version: u8,
    /// access_criteria sent with every CW_provision, hex digits sent as bytes (Astra's
    /// "ACCESS CRITERIA (HEX)"; castmux ecmg reads 00000001 as package 1). Default none.
    #[arg(long, short, value_name = "HEX")]
    access_criteria: Option<String>,
    /// ECM_channel_id of the first channel; the others follow.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    first_channel_id: u16,
    /// ECM_stream_id of the first stream of each channel; the others follow.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    first_stream_id: u16,
    /// ECM_id of the first stream of the run; every stream gets its own.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = args::u16_number)]
    first_ecm_id: u16,
    /// How long to send requests; 0 runs until Ctrl-C. Then the answers still due are
    /// waited for (at most the answer timeout, 10 s) and every stream and channel closed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = args::duration)]
    duration: Duration,
    /// One line of counts and response times per interval (100ms..1h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = stats_interval)]
    stats_interval: Duration,
    /// A request not answered this long counts as unanswered (an error). Default: the
    /// crypto period, at least 1s.
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    answer_timeout: Option<Duration>,
    /// Pass criterion: response time p99 over the run at most this many ms (a usual
    /// max_comp_time, castmux ecmg's default).
    #[arg(long, value_name = "MS", default_value_t = 100.0)]
    max_p99_ms: f64,
    /// Pass criterion: at most this many errors (error_status received, unanswered, bad
    /// ECMs or messages, unexpected answers, connection errors).
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_errors: u64,
    /// Pass criterion: at most this many answers slower than the max_comp_time the ECMG
    /// announced.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_late: u64,
    #[command(flatten)]
    report: ReportArgs,
}

impl ReportArgs {
    /// Print the headline, the summary and the verdict, then write the JSON and the plot
    /// asked for.
    fn publish(
        &self,
        headline: &str,
        summary: &Table,
        report: &impl Serialize,
        verdict: &Verdict,
        plot: impl FnOnce() -> Plot,
    ) -> anyhow::Result<()> {
        super::out::text(&format!("\n{headline}\n\n{summary}\n{}", verdict.table()))?;
        if let Some(path) = &self.json {
            write_json(path, &Outcome { report, verdict })?;
        }
        if let Some(path) = &self.plot {
            plot().write(path)?;
        }
        Ok(())
    }
}

fn cw_size(s: &str) -> Result<usize, String> {
    match s.trim() {
        "8" => Ok(8),
        "16" => Ok(16),
        _ => Err(format!("'{s}': a control word is 8 or 16 bytes")),
    }
}

fn stats_interval(s: &str) -> Result<Duration, String> {
    let d = args::duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("'{s}' is out of range; allowed 100ms to 1h"));
    }
    Ok(d)
}

pub fn run(a: LoadtestArgs) -> anyhow::Result<()> {
    match a.test {
        LoadtestCommand::Ecmg(a) => run_ecmg(a),
        LoadtestCommand::Headend(a) => run_headend(a),
    }
}

fn run_headend(a: HeadendArgs) -> anyhow::Result<()> {
    let castmux = match a.castmux {
        Some(p) => p,
        None => std::env::current_exe()?,
    };
    let (work_dir, temporary) = match a.work_dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("castmux-loadtest-{}", std::process::id())),
            true,
        ),
    };
    let cfg = HeadendLoad {
        castmux,
        channels: usize::from(a.channels),
        bitrate: a.bitrate,
        crypto_period: a.crypto_period,
        duration: a.duration,
        workers: a.workers,
        ecmg: a.ecmg,
        faults: a.fault,
        work_dir: work_dir.clone(),
        interval: a.stats_interval,
    };
    let limits = HeadendLimits {
        max_clear: a.max_clear,
        max_undecryptable: a.max_undecryptable,
        max_lost: a.max_lost,
        max_ecm_interval_ms: a.max_ecm_interval_ms,
        max_emm_flood_ratio: a.max_emm_flood_ratio,
    };
    let progress = Progress::new(Some(a.duration), a.report.quiet);
    let mut printed: anyhow::Result<()> = Ok(());
    let report = headend::run(&cfg, |s| {
        progress.update(
            Duration::from_secs_f64(s.t),
            format!(
                "proven {} clear {} undecryptable {}  CPU {:.2}",
                s.verified, s.clear, s.undecryptable, s.headend_cpu
            ),
        );
        let res = progress.println(|| {
            outln!(
                "t={:.0}s proven {} clear {} undecryptable {} ECM max {:.0} ms latency p99 {:.1} ms \
                 head-end CPU {:.2} RSS {:.0} MB",
                s.t,
                s.verified,
                s.clear,
                s.undecryptable,
                s.ecm_interval_max_ms,
                s.latency_p99_ms,
                s.headend_cpu,
                s.headend_rss_mb
            )
        });
        if printed.is_ok() {
            printed = res.map_err(Into::into);
        }
    });
    progress.finish();
    let report = report.map_err(|e| {
        anyhow::anyhow!(
            "{e} (the store, head-end file and logs are in {})",
            work_dir.display()
        )
    })?;
    printed?;
    let verdict = report.verdict(&limits);
    a.report.publish(
        &report.headline(),
        &report.summary(),
        &report,
        &verdict,
        || report.plot(),
    )?;
    if !verdict.passed {
        anyhow::bail!(
            "loadtest headend failed: {} (logs in {})",
            verdict.reason(),
            work_dir.display()
        );
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    Ok(())
}

fn run_ecmg(a: EcmgArgs) -> anyhow::Result<()> {
    if a.max_p99_ms.is_nan() || a.max_p99_ms < 0.0 {
        anyhow::bail!("--max-p99-ms is a number of milliseconds, 0 or more");
    }
    let duration = (!a.duration.is_zero()).then_some(a.duration);
    let access_criteria = match &a.access_criteria {
        Some(s) => parse_access_criteria_hex(s).ok_or_else(|| {
            anyhow::anyhow!("--access-criteria '{s}' is not hex digits (at most 32 bytes)")
        })?,
        None => Vec::new(),
    };
    let config = EcmgLoadConfig {
        channels: a.channels,
        streams_per_channel: a.streams_per_channel,
        crypto_period: a.crypto_period,
        cw_size: a.cw_size,
        version: a.ecmg_version,
        access_criteria,
        first_channel_id: a.first_channel_id,
        first_stream_id: a.first_stream_id,
        first_ecm_id: a.first_ecm_id,
        duration,
        stats_interval: a.stats_interval,
        answer_timeout: a
            .answer_timeout
            .unwrap_or(a.crypto_period)
            .max(Duration::from_secs(1)),
        ..EcmgLoadConfig::new(a.ecmg.clone(), a.super_cas_id)
    };
    config.check()?;
    let limits = Limits {
        max_p99_ms: a.max_p99_ms,
        max_errors: a.max_errors,
        max_late: a.max_late,
    };
    let stop = super::stop_flag()?;
    let rt = super::runtime(2)?;
    tracing::info!(ecmg = %a.ecmg, channels = a.channels, streams_per_channel = a.streams_per_channel,
        crypto_period = %args::show_duration(a.crypto_period), "loadtest ecmg: starting");
    let progress = Progress::new(duration, a.report.quiet);
    let mut printed: anyhow::Result<()> = Ok(());
    let stopped = async {
        while !stop.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let report = rt.block_on(ecmg::run(config, stopped, |e| match e {
        Event::Tick { elapsed, live } => progress.update(
            elapsed,
            format!(
                "requests {} ecms {} errors {} late {}  channels {} streams {}",
                live.requests, live.ecms, live.errors, live.late, live.channels_up, live.streams_up
            ),
        ),
        Event::Interval(s) => {
            let res = progress.println(|| outln!("{}", s.line()));
            if printed.is_ok() {
                printed = res.map_err(Into::into);
            }
        }
    }));
    progress.finish();
    let report = report?;
    printed?;
    let verdict = report.verdict(&limits);
    a.report.publish(
        &report.headline(),
        &report.summary(),
        &report,
        &verdict,
        || report.plot(),
    )?;
    if !verdict.passed {
        anyhow::bail!("loadtest ecmg failed: {}", verdict.reason());
    }
    Ok(())
}
