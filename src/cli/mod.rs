//! The command line: parse with clap, call the library, print. anyhow lives only here.

mod args;
mod descramble;
mod probe;
mod scramble;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// castmux: DVB scrambler, MPEG-TS muxer and conditional-access head-end.
#[derive(Debug, Parser)]
#[command(name = "castmux", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scramble the services of a transport stream under rotating or fixed control words.
    Scramble(scramble::ScrambleArgs),
    /// Descramble a transport stream with fixed control words or a CW log.
    Descramble(descramble::DescrambleArgs),
    /// Describe a transport stream: programs, PIDs, bitrates, scrambling, CA descriptors.
    Probe(probe::ProbeArgs),
}

/// A flag set by the first SIGINT/SIGTERM, so a run stops cleanly and reports its
/// counters; a second signal exits at once (status 130).
pub(crate) fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // the conditional shutdown is registered first so it sees the flag set by the
        // first signal only when a second one comes
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// Run the command line; errors are printed here.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CASTMUX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let res = match cli.command {
        Command::Scramble(a) => scramble::run(a),
        Command::Descramble(a) => descramble::run(a),
        Command::Probe(a) => probe::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("castmux: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
