//! `castmux headend --config FILE`: several channels in one process, as Astra runs its
//! streams, sharing one EMMG<->MUX port whose EMMs are cloned into every channel (Astra's
//! "EMM Clone: duplicate EMM packets to all streams"), and one data plane for the UDP
//! channels. The file is read by the head-end library; a channel written as `args = "…"`
//! is parsed here, as `castmux scramble`'s options.

use castmux::cas::store::StoreLocation;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use castmux::headend::{ChannelSpec, Controls, Headend, HeadendPlan, HttpSetup, PlaneOptions};
use castmux::http::HttpLimits;
use clap::{Args, Parser};

use super::scramble::ScrambleArgs;

/// Options of `castmux headend`.
#[derive(Debug, Args)]
pub struct HeadendArgs {
    /// The head-end's TOML file: an optional `[emmg]` table (listen, emm_pid) and one
    /// `[[channel]]` table per channel (name; input, output and the other `castmux scramble`
    /// settings as typed fields, or args = the `castmux scramble` options; emm_clone).
    /// See docs/headend.md.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Check the file and every channel's options, then exit without running.
    #[arg(long)]
    check: bool,
    /// Data-plane worker threads serving the UDP channels. Default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// Whole UDP datagrams a channel's output gathers per send (one UDP GSO send), none
    /// held past the 2 ms flush interval. Default 1: the whole datagrams of each write go
    /// at once (with `--read-interval 0`, 2 saves CPU for up to a datagram's spacing).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=32))]
    udp_burst: Option<u8>,
    /// While traffic flows, a worker reads its UDP inputs once per this interval, not at
    /// every datagram: fewer, fuller receive calls and cipher passes, up to this much added
    /// latency. 0 reads at every arrival. Default 3ms.
    #[arg(long, value_name = "DURATION", value_parser = super::args::read_interval)]
    read_interval: Option<std::time::Duration>,
}

/// A channel's options parsed as `castmux scramble`'s.
#[derive(Debug, Parser)]
#[command(name = "channel", no_binary_name = true)]
struct ChannelLine {
    #[command(flatten)]
    scramble: ScrambleArgs,
}

/// An `args` channel's words as a spec.
fn parse_args(words: &[String]) -> Result<ChannelSpec, String> {
    ChannelLine::try_parse_from(words)
        .map(|l| l.scramble.spec())
        .map_err(|e| masked_error(&e, words))
}

/// clap's message for an `args` channel, which quotes the words it stumbled on, with the
/// words that may be keys shown as `***`: the value of `--cw`, anything made of hex key
/// digits (half a mistyped `--cw E O`), a URL with a passphrase or a password. A secret
/// too short to be found safely in the message leaves clap's summary only.
fn masked_error(e: &clap::Error, words: &[String]) -> String {
    let mut secrets = Vec::new();
    let mut after_cw = false;
    for w in words {
        let hex_digits = w.chars().filter(char::is_ascii_hexdigit).count();
        let key_like = hex_digits >= 8 && w.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
        if after_cw || w.starts_with("--cw=") || key_like || castmux::io::url::mask(w) != *w {
            secrets.push(w.as_str());
        }
        after_cw = w == "--cw";
    }
    if secrets.iter().any(|w| w.len() < 4) {
        return format!(
            "{} (the words are not shown: a --cw is among them)",
            e.kind()
        );
    }
    secrets
        .iter()
        .fold(e.render().to_string(), |text, w| text.replace(w, "***"))
}

fn read_plan(path: &Path) -> anyhow::Result<HeadendPlan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the head-end file {}", path.display()))?;
    HeadendPlan::from_file(&text, &parse_args).with_context(|| format!("{}", path.display()))
}

pub fn run(a: HeadendArgs, db: &StoreLocation) -> anyhow::Result<()> {
    let plan = read_plan(&a.config)?;
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
    let controls = Controls {
        stop: super::stop_flag()?,
        reload: super::reload_flag()?,
    };
    let mut opts = PlaneOptions::default();
    if let Some(n) = a.workers {
        opts.workers = usize::from(n);
    }
    if let Some(n) = a.udp_burst {
        opts.udp_burst = usize::from(n);
    }
    if let Some(d) = a.read_interval {
        opts.read_interval = d;
    }
    // SIGHUP: the file read again; a bad one is refused and the running set kept
    let reloader = || {
        read_plan(&a.config).map_err(|e| castmux::headend::HeadendError::Config(format!("{e:#}")))
    };
    let mut headend = Headend::new(opts);
    if let Some(h) = &plan.http {
        let key =
            super::serve::api_key(h.api_key_file.as_deref()).context("[http] needs the API key")?;
        let export_key =
            super::serve::export_key(h.export_key_file.as_deref(), "[http] export_key_file", &key)?;
        let limits = HttpLimits::new(h.max_connections, h.max_connections_per_address)?;
        headend = headend.with_http(HttpSetup {
            listen: h.listen,
            key,
            export_key,
            limits,
            auth_fail_delay: castmux::http::DEFAULT_AUTH_FAIL_DELAY,
        });
    }
    let reports = headend.run(plan, db, &controls, Some(&reloader))?;
    // a channel that scrambled nothing fails the run, as `castmux scramble` does (unless
    // its spec allows it)
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.ok())
        .map(
            |r| match (&r.unscrambled, r.end.is_ok() && r.close.is_ok()) {
                (Some(why), true) => format!("{} ({why})", r.name),
                _ => r.name.clone(),
            },
        )
        .collect();
    if !failed.is_empty() {
        bail!("channel(s) failed: {} (see the log)", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use castmux::headend::EmmgPlan;
    use castmux::net::AcceptLimits;
    use castmux::ts::Pid;

    fn plan_of(text: &str) -> anyhow::Result<HeadendPlan> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.toml");
        std::fs::write(&p, text).unwrap();
        read_plan(&p)
    }

    #[test]
    fn a_bad_args_line_never_quotes_a_key() {
        let even = "0102030405060708";
        for args in [
            // a space for the colon: the odd half is an unexpected argument
            format!("-i udp://:5000 -o x.ts --cw {even} 1112131415161718"),
            format!("-i udp://:5000 -o x.ts --cw={even} --colour"),
            format!("-i udp://:5000 -o srt://h:1?passphrase=sesame12345 --cw {even} -z"),
            "-i udp://:5000 -o x.ts --cw ab --colour".to_owned(),
        ] {
            let text = format!("[[channel]]\nname = \"a\"\nargs = \"{args}\"\n");
            let e = format!("{:#}", plan_of(&text).unwrap_err());
            assert!(e.contains("channel \"a\""), "{e}");
            for secret in [even, "1112131415161718", "sesame", " ab "] {
                assert!(!e.contains(secret), "{args}: {e}");
            }
        }
        // without a secret, clap's message is whole
        let text = "[[channel]]\nname = \"a\"\nargs = \"-i udp://:5000 -o x.ts --colour\"\n";
        let e = format!("{:#}", plan_of(text).unwrap_err());
        assert!(e.contains("--colour"), "{e}");
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
            Some(EmmgPlan {
                listen: "127.0.0.1:41000".parse().unwrap(),
                emm_pid: Pid::new(0x1FF1),
                accept: AcceptLimits::with_max(16)
            })
        );
        assert_eq!(p.channels[0].spec.service, [101]);
        assert_eq!(p.channels.len(), 2);
        assert!(p.channels[0].emm_clone);
        assert!(!p.channels[1].emm_clone);
    }

    #[test]
    fn an_mpts_channel_reads_from_args_as_from_typed_fields() {
        let p = plan_of(
            r#"
            [[channel]]
            name = "mux"
            args = "--program udp://239.0.0.1:1234,pnr=101,name=News,lcn=1 --program udp://239.0.0.2:1234,program=2 --tsid 10 --network-id 1 --network-name net -o out.ts"

            [[channel]]
            name = "mux2"
            output = "out2.ts"
            tsid = 10
            network_id = 1
            network_name = "net"
            [[channel.program]]
            input = "udp://239.0.0.1:1234"
            pnr = 101
            name = "News"
            lcn = 1
            [[channel.program]]
            input = "udp://239.0.0.2:1234"
            program = 2
            "#,
        )
        .unwrap();
        let (a, b) = (&p.channels[0].spec, &p.channels[1].spec);
        assert_eq!(a.program, b.program);
        assert_eq!(
            (a.tsid, a.onid, a.network_id, a.network_name.as_deref()),
            (10, 1, Some(1), Some("net"))
        );
        assert!(a.input.is_empty());
        // neither an input nor a program: clap says what is missing
        let e = plan_of("[[channel]]\nname = \"x\"\nargs = \"-o y.ts\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("--input"), "{e:#}");
        // both: the spec's check names them
        let e = plan_of(
            "[[channel]]\nname = \"x\"\nargs = \"-i udp://239.0.0.9:1 --program udp://239.0.0.1:1 -o y.ts\"\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("input and program"), "{e:#}");
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
        let limits = p.emmg.unwrap().accept;
        assert_eq!(
            (
                limits.max_connections(),
                limits.max_per_address(),
                limits.handshake_timeout()
            ),
            (8, 2, std::time::Duration::from_millis(1500))
        );
        let p = plan_of(&table("max_connections = 8")).unwrap();
        assert_eq!(p.emmg.unwrap().accept.max_per_address(), 6);
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
