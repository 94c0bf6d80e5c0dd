//! The command line: parse with clap, call the library, print. anyhow lives only here.

/// `println!` that returns a [`out::StdoutError`] instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}

use castmux::cas::store::StoreLocation;
use castmux::value as args;
mod backup;
mod card;
mod descramble;
mod ecmg;
mod emmg;
mod event;
mod headend;
mod init;
mod keys;
mod loadtest;
mod out;
mod package;
mod probe;
mod scramble;
mod scramble_simulcrypt;
mod serve;
mod softcard;
mod store;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// castmux: DVB scrambler, MPEG-TS muxer and conditional-access head-end.
#[derive(Debug, Parser)]
#[command(name = "castmux", version, about)]
pub struct Cli {
    /// The card store: a SQLite file (default ./castmux.db), or a PostgreSQL database as
    /// postgres://USER@HOST[:PORT]/DB that several castmux processes share (the password
    /// from PGPASSWORD, PGPASSFILE or ~/.pgpass rather than the URL).
    #[arg(
        long,
        global = true,
        env = "CASTMUX_DB",
        value_name = "PATH|URL",
        default_value = "castmux.db",
        hide_env_values = true
    )]
    db: StoreLocation,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scramble the services of a transport stream under rotating or fixed control words.
    Scramble(Box<scramble::ScrambleArgs>),
    /// Run several scrambling channels from a TOML file, sharing one EMMG port (EMM clone).
    Headend(headend::HeadendArgs),
    /// Descramble a transport stream with fixed control words or a CW log.
    Descramble(descramble::DescrambleArgs),
    /// Describe a transport stream: programs, PIDs, bitrates, scrambling, CA descriptors.
    Probe(probe::ProbeArgs),
    /// The software card: serve it over newcamd, or play a stream with it.
    Softcard(softcard::SoftcardArgs),
    /// Create the card store and the operator root key.
    Init(init::InitArgs),
    /// Copy the card store, consistent even while it is in use, to a new file (mode 0600).
    Backup(backup::BackupArgs),
    /// Store operations: copy a whole store into another (SQLite file into PostgreSQL).
    Store(store::StoreArgs),
    /// Packages: named access-criteria bits.
    Package(package::PackageArgs),
    /// Cards: add, list, show, set, enable/disable/remove, CSV import/export, card.json.
    Card(card::CardArgs),
    /// Pay-per-view events.
    Event(event::EventArgs),
    /// Service keys: rotate, status, schedule.
    Keys(keys::KeysArgs),
    /// Serve the built-in CAS as a SimulCrypt ECMG (ECMG<->SCS) to another mux.
    Ecmg(ecmg::EcmgArgs),
    /// Feed the built-in EMM carousel to a mux's SimulCrypt EMMG port (EMMG<->MUX).
    Emmg(emmg::EmmgArgs),
    /// Serve the card store over HTTP: TVCAS's GET /api.php and the REST API /api/v1
    /// (API key from CASTMUX_API_KEY or --api-key-file).
    Serve(serve::ServeArgs),
    /// Load tests with a verdict: `loadtest ecmg HOST:PORT` loads a SimulCrypt ECMG.
    Loadtest(loadtest::LoadtestArgs),
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

/// Set by SIGHUP: read the configuration again.
pub(crate) fn reload_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
    Ok(reload)
}

/// A tokio runtime for the control plane: `workers` threads, or just the calling thread
/// when 0.
pub(crate) fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the tokio runtime: {e}"))
}

/// Print the `--stats` counters as JSON: on stdout, or on stderr when stdout carries the
/// stream.
pub(crate) fn print_stats(
    counters: &impl serde::Serialize,
    output_is_stdout: bool,
) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(counters)?;
    text.push('\n');
    if output_is_stdout {
        // the counters are a report, not the run's result: a closed stderr does not fail it
        let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
    } else {
        out::text(&text)?;
    }
    Ok(())
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
        Command::Scramble(a) => scramble::run(*a, &cli.db),
        Command::Headend(a) => headend::run(a, &cli.db),
        Command::Descramble(a) => descramble::run(a),
        Command::Probe(a) => probe::run(a),
        Command::Softcard(a) => softcard::run(a),
        Command::Init(a) => init::run(&cli.db, a),
        Command::Backup(a) => backup::run(&cli.db, a),
        Command::Store(a) => store::run(a),
        Command::Package(a) => package::run(&cli.db, a),
        Command::Card(a) => card::run(&cli.db, a),
        Command::Event(a) => event::run(&cli.db, a),
        Command::Keys(a) => keys::run(&cli.db, a),
        Command::Ecmg(a) => ecmg::run(&cli.db, a),
        Command::Emmg(a) => emmg::run(&cli.db, a),
        Command::Serve(a) => serve::run(&cli.db, a),
        Command::Loadtest(a) => loadtest::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        // the reader of stdout went away (`| head`): what it wanted it has; end quietly
        Err(e) if out::is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // eprintln! would panic on a closed stderr; the status still says it failed
            let _ = writeln!(std::io::stderr(), "castmux: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
