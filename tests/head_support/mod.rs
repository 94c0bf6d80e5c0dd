//! Real processes around a card store: `castmux` subcommands run against a store in a temp
//! dir (`Head`), long-running ones with their log lines collected (`Proc`), the sample fed
//! paced as a live input, and the output checked by descrambling it with the store's card.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli_support::*;

/// How long a process gets to say what a test waits for.
pub const WAIT: Duration = Duration::from_secs(60);

/// A card store in a temp dir with package `sport` (bit 0) and one card for it, exported.
pub struct Head {
    pub dir: tempfile::TempDir,
    /// The store's file; with [`Head::on`] a PostgreSQL URL, a path that is never made.
    pub db: PathBuf,
    /// What `--db` is given: `db`, or the PostgreSQL URL.
    pub at: String,
    pub card: PathBuf,
    pub serial: String,
}

impl Head {
    pub fn new() -> Head {
        Head::with_ca_system_id("0x4AE1")
    }

    /// A store whose cards and ECMs carry `ca_system_id` (hex).
    pub fn with_ca_system_id(ca_system_id: &str) -> Head {
        Head::on(ca_system_id, None)
    }

    /// The store at `at` (a PostgreSQL URL), or in a file of the temp dir when `None`.
    pub fn on(ca_system_id: &str, at: Option<String>) -> Head {
        let dir = tmp();
        let db = dir.path().join("castmux.db");
        let card = dir.path().join("card.json");
        let at = at.unwrap_or_else(|| s(&db).to_owned());
        let mut h = Head {
            dir,
            db,
            at,
            card,
            serial: String::new(),
        };
        h.ok(&["init", "--ca-system-id", ca_system_id]);
        h.ok(&["package", "add", "sport"]);
        let out = h.ok(&["card", "add", "--packages", "sport"]);
        let serial = out
            .split_whitespace()
            .find(|w| w.len() == 10 && w.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or_else(|| panic!("no serial in {out:?}"))
            .to_owned();
        h.ok(&["card", "export-key", &serial, "-o", s(&h.card)]);
        h.serial = serial;
        h
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_castmux"));
        c.arg("--db").arg(&self.at).env_remove("CASTMUX_DB");
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self
            .cmd()
            .args(args)
            .env("CASTMUX_LOG", "warn")
            .output()
            .expect("run castmux");
        assert!(
            out.status.success(),
            "castmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// A long-running castmux with its log lines collected.
    pub fn spawn(&self, args: &[&str], stdin: bool) -> Proc {
        let child = self
            .cmd()
            .args(args)
            .env("CASTMUX_LOG", "info")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn castmux");
        Proc::from_child(child)
    }

    /// `castmux ecmg` on `listen`; gives it and the address it listens on.
    pub fn ecmg(&self, listen: &str) -> (Proc, String) {
        let mut p = self.spawn(&["ecmg", "--listen", listen], false);
        let line = p.wait_for("ecmg: serving");
        (p, field(&line, "listen="))
    }
}

/// The value of `key` (`listen=`) in a log line.
pub fn field(line: &str, key: &str) -> String {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    line[at + key.len()..]
        .split_whitespace()
        .next()
        .expect("value")
        .to_owned()
}

pub struct Proc {
    pub child: Child,
    pub log: mpsc::Receiver<String>,
    pub stdout: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    /// A spawned castmux whose stdout and stderr are piped: its log lines collected.
    pub fn from_child(mut child: Child) -> Proc {
        let rx = log_lines(&mut child);
        let mut stdout = child.stdout.take().expect("stdout");
        let (otx, orx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            let _ = otx.send(s);
        });
        Proc {
            child,
            log: rx,
            stdout: orx,
            seen: Vec::new(),
        }
    }

    pub fn wait_for(&mut self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what:?} in the log:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Wait until every one of `what` has appeared in the log, in any order.
    pub fn wait_for_all(&mut self, what: &[&str]) {
        let deadline = Instant::now() + WAIT;
        while !what.iter().all(|w| self.seen.iter().any(|l| l.contains(w))) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("not all of {what:?} in the log:\n{}", self.seen.join("\n")),
            }
        }
    }

    pub fn stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin")
    }

    /// Wait for the exit (must succeed); gives stdout and the whole log.
    pub fn finish(self) -> (String, String) {
        let (status, out, log) = self.finish_any();
        assert!(status.success(), "castmux failed: {status:?}\n{log}");
        (out, log)
    }

    /// Wait for the exit, whatever it is; gives the status, stdout and the whole log.
    pub fn finish_any(mut self) -> (std::process::ExitStatus, String, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            assert!(Instant::now() < deadline, "castmux did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = self.stdout.recv_timeout(WAIT).unwrap_or_default();
        while let Ok(l) = self.log.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status, out, self.seen.join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write the sample to `stdin` in chunks spread over `over`, then close it.
pub fn feed_paced(
    mut stdin: ChildStdin,
    data: &[u8],
    over: Duration,
    mut at: impl FnMut(Duration),
) {
    let chunks: Vec<&[u8]> = data.chunks(188 * 50).collect();
    let step = over / chunks.len() as u32;
    let start = Instant::now();
    for (i, c) in chunks.iter().enumerate() {
        let due = step * i as u32;
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        at(start.elapsed());
        stdin.write_all(c).expect("feed the scrambler");
    }
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
}

/// Descramble with the exported card; require every ES packet back, byte for byte.
pub fn check_descrambles(h: &Head, scrambled: &Path) -> serde_json::Value {
    let clear = h.path("clear.ts");
    check_descrambles_with(h, &h.card, scrambled, &clear)
}

/// [`check_descrambles`] with the card file `card`, writing the clear stream to `clear`.
pub fn check_descrambles_with(
    h: &Head,
    card: &Path,
    scrambled: &Path,
    clear: &Path,
) -> serde_json::Value {
    let stats = h.ok(&[
        "descramble",
        "--card",
        s(card),
        "-i",
        s(scrambled),
        "-o",
        s(clear),
        "--stats",
    ]);
    let input = packets(&sample("spts.ts"));
    let es: BTreeSet<u16> = psi(&input).es.keys().copied().collect();
    let want = on_pids(&input, &es);
    let got = on_pids(&packets(clear), &es);
    assert_eq!(got.len(), want.len(), "ES packet count");
    let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "descrambled ES differs; player: {stats}");
    json(&stats)
}

/// No ES packet with payload leaves the scrambler in clear.
pub fn assert_no_clear_es(out: &[Packet]) -> usize {
    let av = av_pids(&psi(&packets(&sample("spts.ts"))));
    let es = on_pids(out, &av);
    for p in &es {
        if has_payload(p) {
            assert_ne!(tsc(p), 0, "clear packet on PID {:#x}", pid(p));
        }
    }
    es.len()
}

/// `scramble` of stdin (paced, `--wall-clock`) to `out` under ECMs from `ecmg` (a list with
/// backups after commas), Super_CAS_id 4AE10000, access criteria 00000001, 1 s periods,
/// `--stats`; then `extra`.
pub fn ecmg_scramble_args<'a>(out: &'a str, ecmg: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "scramble",
        "-i",
        "-",
        "-o",
        out,
        "--ecmg",
        ecmg,
        "--super-cas-id",
        "4AE10000",
        "--access-criteria",
        "00000001",
        "--crypto-period",
        "1s",
        "--wall-clock",
        "--stats",
    ];
    v.extend_from_slice(extra);
    v
}
