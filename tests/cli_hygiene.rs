//! Operator hygiene of the binary: store backups and the WAL, key files written only as new
//! private files, bounded option values, a closed or full stdout, secrets kept off the
//! command line, and the first-run messages. Every case runs the real binary.

mod cli_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cli_support::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_castmux"));
    c.env("CASTMUX_LOG", "warn")
        .env_remove("CASTMUX_DB")
        .env_remove("CASTMUX_NEWCAMD_PASSWORD")
        .env_remove("CASTMUX_NEWCAMD_DES_KEY");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run castmux")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run and require success; returns stdout.
fn run_ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "castmux {args:?}: {:?}\n{}",
        o.status,
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Run and require a clean failure (status 1 or clap's 2, no panic); returns stderr.
fn run_fails(args: &[&str]) -> String {
    let o = run(args);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "castmux {args:?} succeeded");
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "castmux {args:?}: {:?}\n{err}",
        o.status
    );
    assert!(
        !err.contains("panicked"),
        "castmux {args:?} panicked:\n{err}"
    );
    err
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The names in `dir`, but SQLite's `-wal` and `-shm` files, which come and go with the
/// connections to a store.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    v.sort();
    v
}

/// A store in a temp dir with a package `news` and one card, 2100000000.
struct Store {
    dir: tempfile::TempDir,
    db: PathBuf,
}

impl Store {
    fn new() -> Store {
        let dir = tmp();
        let db = dir.path().join("castmux.db");
        let st = Store { dir, db };
        st.ok(&["init"]);
        st.ok(&["package", "add", "news"]);
        assert!(st
            .ok(&["card", "add", "--packages", "news"])
            .contains("2100000000"));
        st
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--db", s(&self.db)];
        v.extend_from_slice(args);
        v
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(&self.args(args))
    }

    fn fails(&self, args: &[&str]) -> String {
        run_fails(&self.args(args))
    }
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo");
    assert!(st.success());
}

// ---- the store: backup, and the WAL checkpointed on close --------------------------------

#[test]
fn backup_is_a_private_new_file_that_opens_as_a_store() {
    let st = Store::new();
    let newest = st.ok(&["card", "add", "--name", "newest"]);
    assert!(newest.contains("2100000001"), "{newest}");
    let dir = tmp();
    let bak = dir.path().join("castmux.bak");
    let said = st.ok(&["backup", s(&bak)]);
    assert!(said.contains("castmux.bak"), "{said}");
    assert_eq!(mode(&bak), 0o600, "the backup holds the root key");
    // nothing but the backup itself beside it: no temporary file, no WAL (one file is all)
    let all: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(all.len(), 1, "{all:?}");
    // the backup is a store of its own, with the newest card
    let show = run_ok(&["--db", s(&bak), "card", "show", "2100000001"]);
    assert!(show.contains("newest"), "{show}");

    // never over an existing file, a symlink or a directory; each left as it was
    std::fs::write(dir.path().join("keep"), "keep").unwrap();
    let err = st.fails(&["backup", s(&dir.path().join("keep"))]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"keep");
    let err = st.fails(&["backup", s(&bak)]);
    assert!(err.contains("already exists"), "{err}");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("link")).unwrap();
    let err = st.fails(&["backup", s(&dir.path().join("link"))]);
    assert!(err.contains("symbolic link"), "{err}");
    assert!(!dir.path().join("nowhere").exists());
    let err = st.fails(&["backup", s(dir.path())]);
    assert!(err.contains("directory"), "{err}");
    assert_eq!(names_in(dir.path()), vec!["castmux.bak", "keep", "link"]);
}

#[test]
fn the_store_file_alone_holds_the_newest_card_after_a_command() {
    let st = Store::new();
    st.ok(&["card", "add", "--name", "latest"]);
    // the WAL is folded into the store when the command closes it
    let wal = st.path("castmux.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "{} bytes left in the WAL",
        std::fs::metadata(&wal).unwrap().len()
    );
    // copying castmux.db alone (what an operator's backup script does) keeps the card
    let dir = tmp();
    let copy = dir.path().join("copy.db");
    std::fs::copy(&st.db, &copy).unwrap();
    let show = run_ok(&["--db", s(&copy), "card", "show", "2100000001"]);
    assert!(show.contains("latest"), "{show}");
}

// ---- key files: export-key, the CW log ---------------------------------------------------

#[test]
fn export_key_writes_a_new_0600_file_and_never_through_other_paths() {
    let st = Store::new();
    // an existing world-readable card.json is replaced by a new private file
    let out = st.path("card.json");
    std::fs::write(&out, "old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    st.ok(&["card", "export-key", "2100000000", "-o", s(&out)]);
    assert_eq!(mode(&out), 0o600);
    let card: castmux::cas::CardFile =
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(card.serial, castmux::cas::CardSerial(2_100_000_000));

    // a symlink to another file, a directory, a FIFO: refused with what it is, untouched
    let victim = st.path("victim");
    std::fs::write(&victim, "victim").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = st.path("link.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let dir = st.path("dir.json");
    std::fs::create_dir(&dir).unwrap();
    let fifo = st.path("fifo.json");
    mkfifo(&fifo);
    let before = names_in(st.dir.path());
    for (target, what) in [
        (&link, "symbolic link"),
        (&dir, "directory"),
        (&fifo, "FIFO"),
    ] {
        let err = st.fails(&["card", "export-key", "2100000000", "-o", s(target)]);
        assert!(
            err.contains(what) && err.contains("not a regular file"),
            "{}: {err}",
            target.display()
        );
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    assert_eq!(mode(&victim), 0o644);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(names_in(&dir).len(), 0);
    assert_eq!(names_in(st.dir.path()), before, "no file left behind");

    // a card that does not exist: its error, and no file
    let none = st.path("none.json");
    let err = st.fails(&["card", "export-key", "2100000099", "-o", s(&none)]);
    assert!(err.contains("SMARTCARD_NOT_FOUND"), "{err}");
    assert_eq!(names_in(st.dir.path()), before, "no file left behind");
}

#[test]
fn cw_log_is_a_new_private_file_or_a_fifo_written_as_it_is() {
    let dir = tmp();
    let scramble = |log: &Path| {
        run(&[
            "scramble",
            "-i",
            s(&sample("spts.ts")),
            "-o",
            s(&dir.path().join("out.ts")),
            "--crypto-period",
            "1s",
            "--cw-log",
            s(log),
        ])
    };
    let log = dir.path().join("cw.log");
    std::fs::write(&log, "old\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = scramble(&log);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(mode(&log), 0o600, "the CW log holds keys");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(lines.lines().count() >= 4, "{lines}");
    assert!(!lines.contains("old"));

    // a symlink is refused and its target left alone
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "victim").unwrap();
    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let o = scramble(&link);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("symbolic link"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");

    // a FIFO is the reader the operator chose: written to, its mode kept
    let fifo = dir.path().join("cw.fifo");
    mkfifo(&fifo);
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o640)).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let o = scramble(&fifo);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let got = reader.join().unwrap();
    assert_eq!(got.lines().count(), lines.lines().count(), "{got}");
    assert!(got.lines().all(|l| l.len() == 16), "{got}");
    assert_eq!(mode(&fifo), 0o640);
}

// ---- numbers: every option bounded, no panic ---------------------------------------------

#[test]
fn out_of_range_numbers_are_refused_with_the_option_and_its_range() {
    let dir = tmp();
    let input = sample("spts.ts");
    let out = dir.path().join("out.ts");
    let scr_base = ["scramble", "-i", s(&input), "-o", s(&out)];
    let scr = |extra: &[&'static str]| [&scr_base[..], extra].concat();
    let serve_base = [
        "softcard",
        "serve",
        "--card",
        "card.json",
        "--des-key",
        "0102030405060708091011121314",
        "--user",
        "u:p",
    ];
    let serve = |extra: &[&'static str]| [&serve_base[..], extra].concat();
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            scr(&["--crypto-period", "6000000000000000h"]),
            "--crypto-period",
            "30 days",
        ),
        (
            scr(&["--crypto-period", "10ms"]),
            "--crypto-period",
            "100ms to 1h",
        ),
        (scr(&["--batch", "4000000000"]), "--batch", "1 to 16384"),
        (scr(&["--batch", "0"]), "--batch", "1 to 16384"),
        (
            scr(&["--ecm-repetition", "1h"]),
            "--ecm-repetition",
            "10ms to 10s",
        ),
        (
            scr(&["--delay-start", "-1h"]),
            "--delay-start",
            "-30s to 30s",
        ),
        (
            scr(&["--idle-timeout", "0"]),
            "--idle-timeout",
            "100ms to 168h",
        ),
        (
            scr(&["--cas", "builtin", "--emm-bitrate", "1G"]),
            "--emm-bitrate",
            "1k to 65535k",
        ),
        (
            vec!["probe", s(&input), "--duration", "100000000000h"],
            "--duration",
            "30 days",
        ),
        (
            vec![
                "descramble",
                "-i",
                s(&input),
                "-o",
                s(&out),
                "--cw",
                "0102030405060708",
                "--idle-timeout",
                "100000h",
            ],
            "--idle-timeout",
            "30 days",
        ),
        (serve(&["--max-services", "0"]), "--max-services", "1 to 64"),
        (
            serve(&["--max-clients", "99999999999999999999"]),
            "--max-clients",
            "1 to 65536",
        ),
        (
            serve(&["--service-idle", "25h"]),
            "--service-idle",
            "100ms to 24h",
        ),
        (
            serve(&["--idle-timeout", "0"]),
            "--idle-timeout",
            "1s to 24h",
        ),
        (
            serve(&["--login-fail-delay", "2m"]),
            "--login-fail-delay",
            "0s to 1m",
        ),
        (
            serve(&["--ecm-cache-ttl", "2h"]),
            "--ecm-cache-ttl",
            "0s to 1h",
        ),
        (
            vec!["emmg", "--mux", "127.0.0.1:1", "--bandwidth", "1G"],
            "--bandwidth",
            "1k to 65535k",
        ),
    ];
    for (args, option, range) in &cases {
        let err = run_fails(args);
        assert!(
            err.contains(option) && err.contains(range),
            "{args:?}: expected {option} and {range:?} in: {err}"
        );
    }
    assert!(!out.exists(), "no refused command wrote its output");

    // the store's intervals
    let db = dir.path().join("castmux.db");
    let err = run_fails(&["--db", s(&db), "init", "--rotate-every", "99999d"]);
    assert!(
        err.contains("ROTATE_ERROR") && err.contains("1s to 3650d"),
        "{err}"
    );
    assert!(!db.exists());
    run_ok(&["--db", s(&db), "init"]);
    let err = run_fails(&["--db", s(&db), "keys", "schedule", "4000d"]);
    assert!(
        err.contains("ROTATE_ERROR") && err.contains("1s to 3650d"),
        "{err}"
    );
}

// ---- stdout: closed by its reader, or full -----------------------------------------------

/// Run with stdout on a pipe whose reader is already gone: every write gets EPIPE.
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    bin()
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run castmux")
}

/// Run with stdout on /dev/full: every write gets ENOSPC. (Only opened for writing, as
/// a shell's `> /dev/full` does; nothing about the device changes.)
fn run_into_full_device(args: &[&str]) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    bin()
        .args(args)
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("run castmux")
}

#[test]
fn a_closed_stdout_ends_quietly_and_a_full_one_fails_clearly() {
    let st = Store::new();
    let dir = tmp();
    let scr_out = dir.path().join("out.ts");
    let spts = sample("spts.ts");
    let probe = ["probe", s(&spts)];
    let probe_json = ["probe", s(&spts), "--json"];
    let list = st.args(&["card", "list"]);
    let list_json = st.args(&["card", "list", "--json"]);
    let show = st.args(&["card", "show", "2100000000"]);
    let stats = ["scramble", "-i", s(&spts), "-o", s(&scr_out), "--stats"];
    let commands: [&[&str]; 6] = [&probe, &probe_json, &list, &list_json, &show, &stats];
    for args in commands {
        let o = run_into_closed_pipe(args);
        let err = text(&o.stderr);
        assert!(o.status.success(), "{args:?} | true: {:?}\n{err}", o.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("error"), "{args:?} ends quietly: {err}");

        let o = run_into_full_device(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?} > /dev/full: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains("writing to stdout") && err.contains("No space left"),
            "{args:?}: {err}"
        );
    }

    // the stream itself on stdout (`-o - | head -c ...`): the same two rules
    let descramble = [
        "descramble",
        "-i",
        s(&spts),
        "-o",
        "-",
        "--cw",
        "0102030405060708",
    ];
    let scramble = ["scramble", "-i", s(&spts), "-o", "-"];
    for args in [&descramble[..], &scramble[..]] {
        let o = run_into_closed_pipe(args);
        let err = text(&o.stderr);
        assert!(o.status.success(), "{args:?} | true: {:?}\n{err}", o.status);
        assert!(err.is_empty(), "{args:?} ends quietly: {err}");

        let o = run_into_full_device(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?} > /dev/full: {err}");
        assert!(err.contains("No space left"), "{args:?}: {err}");
    }
}

// ---- secrets off the command line --------------------------------------------------------

const DES_KEY: &str = "0102030405060708091011121314";

/// `softcard serve` with its DES key and users from files; its address from its log.
struct Serve {
    child: std::process::Child,
    addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_from_files(card: &Path, des_key_file: &Path, users_file: &Path) -> Serve {
    let mut child = bin()
        .args(["softcard", "serve", "--card", s(card), "--read-only-card"])
        .args(["--listen", "127.0.0.1:0", "--des-key-file", s(des_key_file)])
        .args(["--users-file", s(users_file)])
        .env("CASTMUX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start castmux softcard serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("castmux softcard serve did not report its address");
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    Serve { child, addr }
}

#[test]
fn newcamd_secrets_come_from_files_and_the_environment() {
    let st = Store::new();
    let card = st.path("card.json");
    st.ok(&["card", "export-key", "2100000000", "-o", s(&card)]);
    let scrambled = st.path("scrambled.ts");
    st.ok(&[
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(&scrambled),
        "--cas",
        "builtin",
        "--packages",
        "news",
        "--crypto-period",
        "1s",
    ]);
    let key_file = st.path("des.key");
    std::fs::write(&key_file, format!("{DES_KEY}\n")).unwrap();
    let users = st.path("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nname = \"alice\"\npassword = \"s3cret pass\"\nau = false\n",
    )
    .unwrap();
    let srv = serve_from_files(&card, &key_file, &users);

    let play = |password_file: &Path| {
        bin()
            .args(["softcard", "play", "-i", s(&scrambled)])
            .args(["-o", s(&st.path("clear.ts")), "--stats"])
            .args(["--newcamd", &srv.addr, "--user", "alice"])
            .args(["--password-file", s(password_file)])
            .env("CASTMUX_NEWCAMD_DES_KEY", DES_KEY)
            .output()
            .expect("run castmux softcard play")
    };
    // the password file's first line, spaces kept, newline not
    let pw = st.path("password");
    std::fs::write(&pw, "s3cret pass\n").unwrap();
    let o = play(&pw);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(stats["answers"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["descrambled"].as_u64().unwrap() > 0, "{stats}");

    // a wrong password in the file is a failed login: the file is what was used
    let wrong = st.path("wrong");
    std::fs::write(&wrong, "s3cret\n").unwrap();
    let o = play(&wrong);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("logging in"),
        "{}",
        text(&o.stderr)
    );

    // the password from the environment, the key from a file
    let o = bin()
        .args(["softcard", "play", "-i", s(&scrambled)])
        .args(["-o", s(&st.path("clear2.ts")), "--stats"])
        .args(["--newcamd", &srv.addr, "--user", "alice"])
        .args(["--des-key-file", s(&key_file)])
        .env("CASTMUX_NEWCAMD_PASSWORD", "s3cret pass")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));

    // none given: the error says where a password can come from
    let err = run_fails(&[
        "softcard",
        "play",
        "-i",
        s(&scrambled),
        "-o",
        s(&st.path("clear3.ts")),
        "--newcamd",
        &srv.addr,
        "--user",
        "alice",
        "--des-key-file",
        s(&key_file),
    ]);
    assert!(err.contains("--password-file"), "{err}");
    assert!(err.contains("CASTMUX_NEWCAMD_PASSWORD"), "{err}");
}

// ---- first-run friction ------------------------------------------------------------------

#[test]
fn the_quickstart_command_prints_no_warning() {
    let dir = tmp();
    let out = dir.path().join("scrambled.ts");
    let o = run(&[
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(&out),
        "--cw-log",
        s(&dir.path().join("cw.log")),
    ]);
    assert!(o.status.success());
    let err = text(&o.stderr);
    assert!(!err.contains("WARN"), "{err}");
    // the PMT still names the ECM PID, as the README says
    let p = psi(&packets(&out));
    assert_eq!(
        p.program_ca.get(&1),
        Some(&vec![(
            castmux::scramble::config::DEFAULT_CA_SYSTEM_ID,
            0x1FF0
        )]),
        "{p:?}"
    );
}

#[test]
fn probe_reads_a_whole_file_by_default_and_says_what_it_read() {
    let mpts = sample("mpts.ts");
    let in_file = std::fs::metadata(&mpts).unwrap().len() / 188;
    let v: serde_json::Value =
        serde_json::from_str(&run_ok(&["probe", s(&mpts), "--json"])).unwrap();
    assert_eq!(v["packets"], in_file, "every packet of the file");
    assert_eq!(v["read"], "whole file");
    let t = run_ok(&["probe", s(&mpts)]);
    assert!(t.contains("(read: whole file)"), "{t}");

    // a limit that stops the read is named in the output
    let v: serde_json::Value =
        serde_json::from_str(&run_ok(&["probe", s(&mpts), "--json", "--duration", "1s"])).unwrap();
    assert!(v["packets"].as_u64().unwrap() < in_file);
    let read = v["read"].as_str().unwrap();
    assert!(read.contains("the first 1s of stream time"), "{read}");

    // stdin may never end: 5 s by default, and the output says so
    let data = std::fs::read(&mpts).unwrap();
    let mut child = bin()
        .args(["probe", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let t = text(&o.stdout);
    assert!(o.status.success());
    // the sample holds more than 5 s of stream time
    assert!(
        t.contains("(read: the first 5s of stream time (--duration, the default for stdin"),
        "{t}"
    );
}

#[test]
fn a_bad_csv_row_is_reported_once() {
    let st = Store::new();
    let csv = st.path("cards.csv");
    std::fs::write(
        &csv,
        "serial_no,name,info,access_criteria,pair,start,finish\n\
         2100000100,a,b,0000000201,0,1700000000,1900000000\n",
    )
    .unwrap();
    let err = st.fails(&["card", "import", s(&csv)]);
    assert_eq!(err.matches("ACCESS_CRITERIA_ERROR").count(), 1, "{err}");
    assert!(err.contains("CSV line 2"), "{err}");
}

/// An SRT passphrase is a secret: no log line, error or status shows it, whether the URL
/// opens (a listener waiting for its caller) or fails (a caller nobody answers).
#[test]
fn an_srt_passphrase_never_appears_in_a_log_or_an_error() {
    const SECRET: &str = "castmux-hygiene-passphrase";
    let dir = tmp();
    let out = dir.path().join("out.ts");
    // a caller to a port nobody listens on: the open fails, the error names the URL
    let caller = format!("srt://127.0.0.1:9?latency=20&passphrase={SECRET}");
    for args in [
        vec![
            "scramble",
            "-i",
            &caller,
            "-o",
            s(&out),
            "--cw-log",
            s(&dir.path().join("a.cw")),
        ],
        vec![
            "descramble",
            "-i",
            &caller,
            "-o",
            s(&out),
            "--cw",
            "0011223344556677",
        ],
        vec!["probe", &caller, "--duration", "1s"],
    ] {
        let o = bin()
            .env("CASTMUX_LOG", "debug")
            .args(&args)
            .output()
            .unwrap();
        let all = text(&o.stdout) + &text(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {all}");
        assert!(
            all.contains("passphrase=***"),
            "{args:?} names the URL, masked: {all}"
        );
        assert!(
            !all.contains(SECRET),
            "{args:?} shows the passphrase: {all}"
        );
    }
    // a listener opens and logs what it scrambles
    let port = free_udp_port();
    let listener = format!("srt://127.0.0.1:{port}?mode=listener&passphrase={SECRET}");
    let mut child = bin()
        .env("CASTMUX_LOG", "debug")
        .args(["scramble", "-i", &listener, "-o", s(&out), "--cw-log"])
        .arg(dir.path().join("b.cw"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = log_lines(&mut child);
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("scrambling") && std::time::Instant::now() < deadline {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&l);
            seen.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(5)) {
        seen.push_str(&l);
    }
    assert!(seen.contains("scrambling"), "the start line: {seen}");
    assert!(seen.contains("passphrase=***"), "{seen}");
    assert!(!seen.contains(SECRET), "{seen}");
}
