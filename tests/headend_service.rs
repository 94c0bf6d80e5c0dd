//! The systemd unit, `contrib/systemd/castmux-headend@.service`: `systemd-analyze verify`
//! accepts it (Debian package `systemd`), and its ExecStart, run the way systemd runs it
//! (Type=notify under a NOTIFY_SOCKET and WATCHDOG_USEC read from the unit, Restart=
//! on-failure after RestartSec), survives `kill -9` in the middle of card updates over
//! its TVCAS API: the supervisor starts it again, READY comes again, the channel goes back
//! on air, and the store opens sound with the card's last acknowledged change or a later
//! one.

mod cli_support;
mod http_support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cli_support::gen::{pat_sections, pmt_section, Es, Writer};
use cli_support::*;
use http_support::*;

const UNIT: &str = "contrib/systemd/castmux-headend@.service";

/// The `[Service]` settings of the unit (the last value of a key wins, as in systemd).
fn service_section(text: &str) -> BTreeMap<String, String> {
    let mut in_service = false;
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

/// A systemd time span as the unit writes it ("2s", "10s", "500ms").
fn span(v: &str) -> Duration {
    if let Some(ms) = v.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap())
    } else {
        Duration::from_secs(v.strip_suffix('s').unwrap_or(v).parse().unwrap())
    }
}

fn unit_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(UNIT)).unwrap()
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let dir = tmp();
    // the unit as installed, with the binary where this build put it
    let text = unit_text().replace("/usr/bin/castmux", env!("CARGO_BIN_EXE_castmux"));
    let path = dir.path().join("castmux-headend@.service");
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("castmux-headend@main.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed by this test");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{out:?}");
    let s = service_section(&unit_text());
    for (k, v) in [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("StateDirectory", "castmux"),
        ("UMask", "0077"),
        ("User", "castmux"),
    ] {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(s["LimitNOFILE"].parse::<u64>().unwrap() >= 65536);
}

/// The channel's input: PAT, PMT, video and audio in 7-packet datagrams.
fn stream() -> Vec<Vec<u8>> {
    let pat = &pat_sections(1, 0, &[(1, 0x1000)], 64)[0];
    let pmt = pmt_section(1, 0, 0x100, &[Es::new(0x1B, 0x100), Es::new(0x0F, 0x101)]);
    let mut w = Writer::new();
    for k in 0..7 * 2000 {
        if k % 40 == 0 {
            w.section(0, pat);
            w.section(0x1000, &pmt);
        }
        w.es(if k % 4 == 3 { 0x101 } else { 0x100 }, k % 25 == 0, k as u8);
    }
    w.packets
        .chunks(7)
        .map(|d| d.iter().flat_map(|p| p.iter().copied()).collect())
        .collect()
}

/// One run of the unit's ExecStart: the child and its log lines.
struct Run {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Run {
    /// Wait for the log line holding `what`; gives it.
    fn wait_for(&self, what: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("no {what:?} within {within:?}"),
            }
        }
    }
}

/// Run `argv` as systemd would run the unit's ExecStart.
fn exec_start(argv: &[String], env: &BTreeMap<&str, String>) -> Run {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .env_remove("CASTMUX_DB")
        .env_remove("CASTMUX_API_KEY")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("ExecStart");
    let log = log_lines(&mut child);
    Run { child, log }
}

/// The notifications on `sock` until `stop`, with their times.
fn notes(
    sock: UnixDatagram,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, String)>> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        got
    })
}

/// TVCAS api.php set[name]=`name` on the card; true when acknowledged.
fn set_name(addr: SocketAddr, name: &str) -> bool {
    let r = std::panic::catch_unwind(|| {
        get(
            addr,
            &format!("/api.php?api_key={KEY}&serial_no=2100000000&set[name]={name}"),
        )
    });
    matches!(r, Ok(reply) if reply.status == 200 && reply.text().contains(name))
}

#[test]
fn kill_9_under_the_units_restart_policy_brings_the_head_end_back() {
    let unit = service_section(&unit_text());
    assert_eq!(unit["Restart"], "on-failure");
    let restart_sec = span(&unit["RestartSec"]);
    let watchdog = span(&unit["WatchdogSec"]);

    let dir = tmp();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let db = seed_store(&state);
    assert_eq!(db, state.join("castmux.db"), "the unit's store path");
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let input = free_udp_port();
    let out = UdpSocket::bind("127.0.0.1:0").unwrap();
    out.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::fs::write(
        etc.join("main.toml"),
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[[channel]]\nname = \"tv\"\n\
             input = \"udp://127.0.0.1:{input}\"\noutput = \"udp://127.0.0.1:{}\"\n\
             cas = \"builtin\"\npackages = [\"sport\"]\ncrypto_period = \"2s\"\n",
            out.local_addr().unwrap().port()
        ),
    )
    .unwrap();

    // ExecStart as systemd expands it for instance "main"
    let exec = unit["ExecStart"]
        .replace("/usr/bin/castmux", env!("CARGO_BIN_EXE_castmux"))
        .replace("${STATE_DIRECTORY}", state.to_str().unwrap())
        .replace(
            "/etc/castmux/%i.toml",
            etc.join("main.toml").to_str().unwrap(),
        );
    assert!(!exec.contains('%') && !exec.contains('$'), "{exec}");
    let argv: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut env: BTreeMap<&str, String> = BTreeMap::new();
    env.insert("NOTIFY_SOCKET", notify_path.to_str().unwrap().to_owned());
    env.insert("WATCHDOG_USEC", watchdog.as_micros().to_string());
    env.insert("CASTMUX_API_KEY", KEY.to_owned());
    env.insert("STATE_DIRECTORY", state.to_str().unwrap().to_owned());
    for e in unit.get("Environment").into_iter() {
        let (k, v) = e.split_once('=').unwrap();
        assert_eq!(k, "CASTMUX_LOG");
        env.insert("CASTMUX_LOG", v.to_owned());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let notes = notes(notify, Arc::clone(&stop));
    let feeder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let s = stream();
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut r = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = tx.send_to(&s[r % s.len()], ("127.0.0.1", input));
                r += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let on_air = |what: &str| {
        let end = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 2048];
        let mut scrambled = 0;
        while scrambled < 200 {
            assert!(Instant::now() < end, "{what}: the channel is not on air");
            if let Ok(n) = out.recv(&mut buf) {
                scrambled += buf[..n]
                    .chunks_exact(188)
                    .filter(|p| {
                        (u16::from(p[1] & 0x1F) << 8 | u16::from(p[2])) == 0x100 && p[3] >> 6 != 0
                    })
                    .count();
            }
        }
    };

    let first = exec_start(&argv, &env);
    let line = first.wait_for("listen=", Duration::from_secs(30));
    let addr: SocketAddr = line
        .split("listen=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    on_air("first run");

    // card updates over the API, while the process is killed under them
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (acked, stop) = (Arc::clone(&acked), Arc::new(AtomicBool::new(false)));
        let stop2 = Arc::clone(&stop);
        let h = std::thread::spawn(move || {
            let mut k = 1u64;
            while !stop2.load(Ordering::Relaxed) {
                if set_name(addr, &format!("n{k}")) {
                    acked.store(k, Ordering::Relaxed);
                }
                k += 1;
            }
            k
        });
        (h, stop)
    };
    std::thread::sleep(Duration::from_millis(1500));
    let mut first = first;
    let killed = Instant::now();
    first.child.kill().unwrap(); // SIGKILL
    let status = first.child.wait().unwrap();
    writer.1.store(true, Ordering::Relaxed);
    let sent = writer.0.join().unwrap();
    let last_acked = acked.load(Ordering::Relaxed);
    assert!(
        last_acked > 10,
        "{last_acked} updates acknowledged before the kill"
    );

    // systemd's side: killed by a signal is a failure, restarted after RestartSec
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    std::thread::sleep(restart_sec.saturating_sub(killed.elapsed()));
    let second = exec_start(&argv, &env);
    second.wait_for("listen=", Duration::from_secs(30));
    on_air("after the restart");
    let back = killed.elapsed();

    // the store: sound, with the last acknowledged name or one sent after it
    let (status, stdout) = {
        let o = Command::new(env!("CARGO_BIN_EXE_castmux"))
            .arg("--db")
            .arg(&db)
            .args(["card", "show", "2100000000"])
            .env_remove("CASTMUX_DB")
            .output()
            .unwrap();
        (o.status, String::from_utf8_lossy(&o.stdout).into_owned())
    };
    assert!(status.success(), "{stdout}");
    let name: u64 = stdout
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("name").map(|r| {
                r.trim()
                    .trim_start_matches(':')
                    .trim()
                    .trim_start_matches('n')
                    .to_owned()
            })
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no name in {stdout}"));
    assert!(
        (last_acked..sent).contains(&name),
        "name n{name}, acknowledged n{last_acked}, sent up to n{sent}"
    );
    let backup = dir.path().join("copy.db");
    http_support::castmux(&db, &["backup", backup.to_str().unwrap()]);

    // a watchdog ping of the second run (at half of WatchdogSec)
    std::thread::sleep(watchdog / 2 + Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let mut second = second;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = second.child.wait().unwrap();
    assert!(status.success(), "a clean stop: {status:?}");
    let notes = notes.join().unwrap();
    let ready: Vec<_> = notes.iter().filter(|n| n.1.contains("READY=1")).collect();
    assert_eq!(ready.len(), 2, "READY once per run: {notes:?}");
    assert!(ready[1].0 > killed, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.0 > ready[1].0 && n.1.contains("WATCHDOG=1")),
        "{notes:?}"
    );
    assert!(
        back < restart_sec + Duration::from_secs(10),
        "back on air {back:?} after the kill"
    );
}
