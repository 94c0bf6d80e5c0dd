//! `castmux probe`: programs, PIDs with stream types, bitrates, scrambling state per PID,
//! CA descriptors with ECM/EMM PIDs, ETR 290 priority 1 and 2, and the CA checks (ECM
//! interval, CW period, EMM bitrate). The analysis is [`castmux::analyze`]; this reads the
//! input, feeds it, and prints.

use std::time::{Duration, Instant};

use anyhow::Context;
use castmux::analyze::{Analyzer, Report, Settings, DEFAULT_PID_TIMEOUT};
use castmux::io::{Input, InputOptions, InputUrl, PacketBatch, ReadStatus};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::args;

/// How long stdin and live inputs are probed when no --duration is given.
const DEFAULT_LIVE_DURATION: Duration = Duration::from_secs(5);

/// Which ETR 290 errors make `probe` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FailOn {
    /// Any priority 1 error.
    P1,
    /// Any priority 1 or priority 2 error.
    P2,
}

/// Options of `castmux probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Input: udp://..., srt://..., http://..., a file, or - for stdin.
    input: String,
    /// How much of the stream to look at: stream time (PCR) for files and stdin, wall
    /// clock for live inputs (udp, srt). Default: the whole file; 5s for stdin and live
    /// inputs. The output says which it was.
    #[arg(long, value_name = "DURATION", value_parser = args::probe_duration)]
    duration: Option<Duration>,
    /// Print JSON instead of text. Default text.
    #[arg(long)]
    json: bool,
    /// Exit with status 1 when the ETR 290 analysis found errors: `p1` for priority 1
    /// errors, `p2` for priority 1 or 2. Default: the status only says whether the
    /// input could be read.
    #[arg(long, value_name = "PRIORITY")]
    fail_on: Option<FailOn>,
    /// ETR 290 1.6 (PID_error): how long a PID a PMT refers to may be absent; also how
    /// long scrambled packets may come with no CAT before 2.6 (CAT_error) counts.
    /// Default 5s.
    #[arg(long, value_name = "DURATION", value_parser = args::pid_timeout)]
    pid_timeout: Option<Duration>,
    /// ECM repetition limit per ECM PID: gaps longer than this are counted. Default
    /// 500ms (the figure CA monitors alarm on).
    #[arg(long, value_name = "DURATION", value_parser = args::ecm_limit)]
    ecm_limit: Option<Duration>,
}

#[derive(Serialize)]
struct ProbeReport<'a> {
    input: &'a str,
    /// What was read: "whole file", or the limit that stopped the read.
    read: String,
    #[serde(flatten)]
    report: &'a Report,
}

pub fn run(a: ProbeArgs) -> anyhow::Result<()> {
    let url: InputUrl = a.input.parse().context("input")?;
    let mut input = Input::open(&url, &InputOptions::default())
        .with_context(|| format!("opening input {}", url.display()))?;
    let live = input.is_live();
    // a file is read to its end unless told otherwise; a pipe or a live input may never end
    let limit = match (a.duration, &url) {
        (Some(d), _) => Some(d),
        (None, InputUrl::File(_)) => None,
        (None, _) => Some(DEFAULT_LIVE_DURATION),
    };
    let mut analyzer = Analyzer::new(Settings {
        live,
        pid_timeout: a.pid_timeout.unwrap_or(DEFAULT_PID_TIMEOUT),
        ecm_limit: a
            .ecm_limit
            .unwrap_or(castmux::analyze::ca::DEFAULT_ECM_LIMIT),
    });
    let mut stopped_by_limit = false;
    let started = Instant::now();
    let mut batch = PacketBatch::with_capacity(512);
    loop {
        match input.read_batch(&mut batch, Duration::from_millis(50))? {
            ReadStatus::Packets(_) => {}
            ReadStatus::TimedOut => {
                if limit.is_some_and(|l| started.elapsed() >= l) {
                    stopped_by_limit = true;
                    break;
                }
                continue;
            }
            ReadStatus::EndOfStream => break,
        }
        let packets = batch.packets();
        let taken = analyzer.process(packets, limit);
        analyzer.input_sync_losses(input.stats().snapshot().sync_losses);
        if taken < packets.len() {
            stopped_by_limit = true;
            break;
        }
    }
    analyzer.finish();
    let report = analyzer.report();
    let read = match (stopped_by_limit, limit) {
        (true, Some(l)) => format!(
            "the first {} of {} time (--duration{}); give --duration to read more",
            format_duration(l),
            if live { "wall-clock" } else { "stream" },
            if a.duration.is_none() {
                ", the default for stdin and live inputs"
            } else {
                ""
            }
        ),
        _ if matches!(url, InputUrl::File(_)) => "whole file".to_owned(),
        _ => "to the end of the input".to_owned(),
    };
    if a.json {
        let out = ProbeReport {
            input: &a.input,
            read,
            report: &report,
        };
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        outln!("input: {} (read: {})", a.input, read)?;
        super::out::text(&report.to_string())?;
    }
    let (p1, p2) = (
        report.etr290.priority1_errors,
        report.etr290.priority2_errors,
    );
    match a.fail_on {
        Some(FailOn::P1) if p1 > 0 => anyhow::bail!("ETR 290: {p1} priority 1 errors"),
        Some(FailOn::P2) if p1 + p2 > 0 => {
            anyhow::bail!("ETR 290: {p1} priority 1 and {p2} priority 2 errors")
        }
        _ => Ok(()),
    }
}

/// `5s`, `1.5s`, `250ms`: a limit as the user would write it.
fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}
