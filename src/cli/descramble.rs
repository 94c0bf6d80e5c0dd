//! `castmux descramble`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use castmux::io::{Input, InputOptions, InputUrl, Output, OutputOptions, OutputUrl};
use castmux::scramble::cw::parse_cw_pair;
use castmux::scramble::{run_descramble, DescrambleKeys, Descrambler, RunOptions};
use clap::Args;

use super::args;
use super::scramble::Scrambling;

/// Options of `castmux descramble`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("keys").required(true).args(["cw", "cw_log", "card"])))]
pub struct DescrambleArgs {
    /// Input: udp://..., srt://..., http://..., a file, or - for stdin.
    #[arg(short, long)]
    input: String,
    /// Output: udp://..., srt://..., http://ADDR:PORT/PATH, a file, or - for stdout.
    #[arg(short, long)]
    output: String,
    /// Fixed control word(s), hex: EVEN (used for both parities) or EVEN:ODD.
    #[arg(long, value_name = "EVEN[:ODD]", value_parser = args::secret_text)]
    cw: Option<args::SecretText>,
    /// A CW log (one CW per crypto period, as `castmux scramble --cw-log` and TSDuck write):
    /// line N is used for period N, moving on each time the TSC parity flips. The file is
    /// read again when the stream gets past its last line, so it can follow a live scrambler.
    #[arg(long, value_name = "FILE")]
    cw_log: Option<PathBuf>,
    /// A software card (`castmux card export-key` output): CWs come from the stream's ECMs
    /// (ECM PID from the PMT, EMM PID from the CAT, by the card's CA_system_ID) when the
    /// card is entitled; EMMs addressed to it update it, and it is saved back to FILE.
    #[arg(long, value_name = "FILE")]
    card: Option<PathBuf>,
    /// Scrambling algorithm. Default csa2.
    #[arg(long, value_enum, default_value_t = Scrambling::Csa2)]
    scrambling: Scrambling,
    /// Stop when a live input has been silent this long (100ms to 7 days). Default: run
    /// until killed.
    #[arg(long, value_name = "DURATION", value_parser = args::stream_idle_timeout)]
    idle_timeout: Option<Duration>,
    /// Print the counters as JSON on stdout at the end (stderr when the output is stdout).
    #[arg(long)]
    stats: bool,
    /// With --card: how CWs become keys, and whether packets left scrambled are an error.
    #[command(flatten)]
    card_opts: super::softcard::CardPlayOptions,
}

/// The `--stats` JSON of a descramble with fixed CWs or a CW log.
#[derive(serde::Serialize)]
struct DescrambleReport {
    counters: castmux::scramble::stats::Report,
    /// Crypto periods past the end of the CW log (their packets used the last keys).
    missing_cws: u64,
}

pub fn run(a: DescrambleArgs) -> anyhow::Result<()> {
    let input_url: InputUrl = a.input.parse().context("--input")?;
    let output_url: OutputUrl = a.output.parse().context("--output")?;
    let opts = RunOptions {
        idle_timeout: a.idle_timeout,
        stop: super::stop_flag()?,
        ..RunOptions::default()
    };
    if let Some(path) = &a.card {
        let (source, caid) = super::softcard::local_card(path, a.card_opts)?;
        return super::softcard::play_stream(
            source,
            caid,
            a.scrambling.algorithm(),
            &a.input,
            &a.output,
            &opts,
            a.stats,
            a.card_opts,
        );
    }
    let keys = match (&a.cw, &a.cw_log) {
        (Some(text), _) => match parse_cw_pair(text.expose()).context("--cw")? {
            (cw, None) => DescrambleKeys::Fixed(cw),
            (e, Some(o)) => DescrambleKeys::Pair(e, o),
        },
        (None, Some(path)) => DescrambleKeys::LogFile(path.clone()),
        (None, None) => unreachable!("clap requires --cw, --cw-log or --card"),
    };
    let mut d = Descrambler::new(a.scrambling.algorithm(), keys)?;
    let mut input = Input::open(&input_url, &InputOptions::default())
        .with_context(|| format!("opening input {}", input_url.display()))?;
    let mut output = Output::open(&output_url, &OutputOptions::default())
        .with_context(|| format!("opening output {}", output_url.display()))?;
    let res = run_descramble(&mut input, &mut output, &mut d, &opts);
    let close = output.close(Duration::from_secs(2));
    let t = d.counters().totals();
    tracing::info!(
        packets = d.counters().stream.packets_in,
        descrambled = t.scrambled,
        missing_cws = d.missing_cws,
        "done"
    );
    if a.stats {
        let report = DescrambleReport {
            counters: d.counters().report(),
            missing_cws: d.missing_cws,
        };
        super::print_stats(&report, matches!(output_url, OutputUrl::Stdout))?;
    }
    res?;
    close?;
    Ok(())
}
