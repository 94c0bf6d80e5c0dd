//! `castmux probe` (filled in below).

use std::time::Duration;

use clap::Args;

use super::args;

/// Options of `castmux probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Input: udp://..., srt://..., a file, or - for stdin.
    input: String,
    /// How much of the stream to look at: stream time (PCR) for files, wall clock for live inputs. Default 5s.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration)]
    duration: Duration,
    /// Print JSON instead of text. Default text.
    #[arg(long)]
    json: bool,
}

pub fn run(_a: ProbeArgs) -> anyhow::Result<()> {
    anyhow::bail!("probe: not yet")
}
