//! `castmux headend --config FILE`: several channels in one process, as Astra runs its
//! streams, sharing one EMMG<->MUX port whose EMMs are cloned into every channel (Astra's
//! "EMM Clone: duplicate EMM packets to all streams"). TVCAS's EMMG connects to one mux
//! port; with a `castmux scramble` per channel only one of them could listen on it.
//!
//! Each channel is a `castmux scramble` command line, run on threads of its own; a channel
//! that fails is logged and the others go on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use castmux::headend::{EmmgPort, HeadendFile, PidValue};
use castmux::net::AcceptLimits;
use castmux::ts::Pid;
use clap::{Args, Parser};

use super::args;
use super::scramble::{self, ChannelExtras, ScrambleArgs};
use super::scramble_simulcrypt::MuxThread;

/// Options of `castmux headend`.
#[derive(Debug, Args)]
pub struct HeadendArgs {
    /// The head-end's TOML file: an optional `[emmg]` table (listen, emm_pid) and one
    /// `[[channel]]` table per channel (name, args = the `castmux scramble` options,
    /// emm_clone). See docs/headend.md.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Check the file and every channel's options, then exit without running.
    #[arg(long)]
    check: bool,
}

/// The connection bounds `[emmg]` asks for, checked.
fn accept_limits(port: &EmmgPort) -> anyhow::Result<AcceptLimits> {
    let defaults = castmux::simulcrypt::EmmMuxConfig::default().accept;
    let handshake = match &port.handshake_timeout {
        Some(t) => {
            args::duration(t).map_err(|e| anyhow::anyhow!("[emmg] handshake_timeout: {e}"))?
        }
        None => defaults.handshake_timeout(),
    };
    AcceptLimits::new(
        port.max_connections.unwrap_or(defaults.max_connections()),
        port.max_connections_per_address,
        handshake,
    )
    .map_err(|e| anyhow::anyhow!("[emmg]: {e}"))
}

/// A channel's options parsed as `castmux scramble`'s.
#[derive(Debug, Parser)]
#[command(name = "channel", no_binary_name = true)]
struct ChannelLine {
    #[command(flatten)]
    scramble: ScrambleArgs,
}

/// A channel ready to run.
#[derive(Debug)]
struct Channel {
    name: String,
    args: ScrambleArgs,
    emm_clone: bool,
}

/// What the file asks for, checked.
#[derive(Debug)]
struct Plan {
    emmg: Option<(SocketAddr, Pid, AcceptLimits)>,
    channels: Vec<Channel>,
}

fn plan(path: &Path) -> anyhow::Result<Plan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the head-end file {}", path.display()))?;
    let file = HeadendFile::parse(&text)
        .with_context(|| format!("{}: not a head-end file", path.display()))?;
    let emmg = match &file.emmg {
        None => None,
        Some(e) => {
            let listen = e.listen.parse().map_err(|_| {
                anyhow::anyhow!("[emmg] listen = {:?}: expected ADDR:PORT", e.listen)
            })?;
            let pid = match &e.emm_pid {
                PidValue::Number(n) => args::pid(&n.to_string()),
                PidValue::Text(t) => args::pid(t),
            }
            .map_err(|e| anyhow::anyhow!("[emmg] emm_pid: {e}"))?;
            Some((listen, pid, accept_limits(e)?))
        }
    };
    if file.channels.is_empty() {
        bail!(
            "{}: no [[channel]]; each channel needs a name and args",
            path.display()
        );
    }
    let mut channels: Vec<Channel> = Vec::with_capacity(file.channels.len());
    for c in file.channels {
        if c.name.trim().is_empty() {
            bail!("a [[channel]] has an empty name");
        }
        if channels.iter().any(|o| o.name == c.name) {
            bail!("two channels are named {:?}; names must differ", c.name);
        }
        let line = ChannelLine::try_parse_from(c.args.words())
            .map_err(|e| anyhow::anyhow!("channel {:?}: {}", c.name, e.render()))?;
        // one process has one stdin and one stdout
        let (stdin, stdout) = line.scramble.uses_stdio();
        let (stdin_taken, stdout_taken) = channels
            .iter()
            .map(|o| o.args.uses_stdio())
            .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1));
        if stdin && stdin_taken {
            bail!(
                "channel {:?}: another channel already reads stdin (-i -)",
                c.name
            );
        }
        if stdout && stdout_taken {
            bail!(
                "channel {:?}: another channel already writes stdout (-o -)",
                c.name
            );
        }
        let emm_clone = c.emm_clone.unwrap_or(emmg.is_some());
        if emm_clone && emmg.is_none() {
            bail!(
                "channel {:?}: emm_clone needs an [emmg] table (listen, emm_pid)",
                c.name
            );
        }
        channels.push(Channel {
            name: c.name,
            args: line.scramble,
            emm_clone,
        });
    }
    Ok(Plan { emmg, channels })
}

pub fn run(a: HeadendArgs, db: &Path) -> anyhow::Result<()> {
    let plan = plan(&a.config)?;
    if a.check {
        outln!(
            "{}: {} channel(s){}",
            a.config.display(),
            plan.channels.len(),
            if plan.emmg.is_some() {
                ", shared EMMG port"
            } else {
                ""
            }
        )?;
        return Ok(());
    }
    let stop = super::stop_flag()?;
    let mut mux = None;
    let mut first_source = None;
    if let Some((listen, _, accept)) = plan.emmg {
        let (m, src) = MuxThread::start(listen, accept).context("[emmg] listen")?;
        mux = Some(m);
        first_source = Some(src);
    }
    let emm_pid = plan.emmg.map(|(_, pid, _)| pid);
    let mut threads = Vec::with_capacity(plan.channels.len());
    for ch in plan.channels {
        let emm = match (ch.emm_clone, &mux) {
            // every channel subscribes before any runs, so each gets every EMM from the start
            (true, Some(m)) => Some(
                first_source
                    .take()
                    .unwrap_or_else(|| m.subscribers.subscribe()),
            ),
            _ => None,
        };
        let extras = ChannelExtras {
            emm,
            emm_pid,
            stop: Some(Arc::clone(&stop)),
        };
        let name = ch.name.clone();
        let db = db.to_path_buf();
        let t = std::thread::Builder::new()
            .name(format!("channel-{name}"))
            .spawn(move || {
                let span = tracing::info_span!("channel", name = %ch.name);
                let _enter = span.enter();
                let res = scramble::run_channel(ch.args, &db, extras);
                if let Err(e) = &res {
                    tracing::error!(error = format!("{e:#}"), "channel failed");
                }
                res.is_ok()
            })
            .with_context(|| format!("starting channel {name:?}"))?;
        threads.push((name, t));
    }
    // the first source goes unused when no channel clones: dropping it unsubscribes
    drop(first_source);
    tracing::info!(channels = threads.len(), "headend: running");
    let mut failed = Vec::new();
    for (name, t) in threads {
        if !t.join().unwrap_or(false) {
            failed.push(name);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(m) = mux {
        m.stop();
    }
    if !failed.is_empty() {
        bail!("channel(s) failed: {} (see the log)", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(text: &str) -> anyhow::Result<Plan> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.toml");
        std::fs::write(&p, text).unwrap();
        plan(&p)
    }

    #[test]
    fn channels_parse_as_scramble_options() {
        let p = plan_of(
            r#"
            [emmg]
            listen = "127.0.0.1:41000"
            emm_pid = "0x1FF1"

            [[channel]]
            name = "sport"
            args = "-i udp://239.1.1.1:1234 -o udp://239.2.2.1:1234 --service 101"

            [[channel]]
            name = "news"
            args = ["-i", "udp://239.1.1.2:1234", "-o", "news.ts"]
            emm_clone = false
            "#,
        )
        .unwrap();
        assert_eq!(
            p.emmg,
            Some((
                "127.0.0.1:41000".parse().unwrap(),
                Pid::new(0x1FF1),
                AcceptLimits::with_max(16)
            ))
        );
        assert_eq!(p.channels.len(), 2);
        assert!(p.channels[0].emm_clone);
        assert!(!p.channels[1].emm_clone);
    }

    #[test]
    fn emmg_connection_bounds_come_from_the_table_and_are_checked() {
        let table = |extra: &str| {
            format!(
                "[emmg]\nlisten = \"127.0.0.1:0\"\nemm_pid = 0x1FF1\n{extra}\n\
                 [[channel]]\nname = \"a\"\nargs = \"-i x.ts -o y.ts\"\n"
            )
        };
        let p = plan_of(&table(
            "max_connections = 8\nmax_connections_per_address = 2\nhandshake_timeout = \"1500ms\"",
        ))
        .unwrap();
        let limits = p.emmg.unwrap().2;
        assert_eq!(
            (
                limits.max_connections(),
                limits.max_per_address(),
                limits.handshake_timeout()
            ),
            (8, 2, std::time::Duration::from_millis(1500))
        );
        let p = plan_of(&table("max_connections = 8")).unwrap();
        assert_eq!(p.emmg.unwrap().2.max_per_address(), 6);
        for (bad, says) in [
            ("max_connections = 0", "at least 1"),
            (
                "max_connections_per_address = 17",
                "above the connection limit",
            ),
            ("handshake_timeout = \"0s\"", "above zero"),
            ("handshake_timeout = \"soon\"", "handshake_timeout"),
        ] {
            let e = plan_of(&table(bad)).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains("[emmg]") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_channel_and_the_field() {
        let e = plan_of("[[channel]]\nname = \"a\"\nargs = \"-i x.ts\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("channel \"a\""), "{e:#}");
        let e = plan_of(
            "[[channel]]\nname = \"a\"\nargs = \"-i x -o y\"\n[[channel]]\nname = \"a\"\nargs = \"-i x -o y\"\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("two channels"), "{e:#}");
        let e = plan_of("[[channel]]\nname = \"a\"\nargs = \"-i x -o y\"\nemm_clone = true\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("[emmg]"), "{e:#}");
        let e = plan_of("[emmg]\nlisten = \"x\"\nemm_pid = 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("ADDR:PORT"), "{e:#}");
        let e = plan_of(
            "[[channel]]\nname = \"a\"\nargs = \"-i - -o a.ts\"\n[[channel]]\nname = \"b\"\nargs = \"-i - -o b.ts\"\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("stdin"), "{e:#}");
        let e = plan_of("colour = 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("colour"), "{e:#}");
        let e = plan_of("").unwrap_err();
        assert!(format!("{e:#}").contains("no [[channel]]"), "{e:#}");
    }
}
