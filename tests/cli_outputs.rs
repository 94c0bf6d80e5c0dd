//! `castmux scramble` with several `-o`: every output carries the same stream (scrambled
//! packets, ECMs, EMMs, CAT), byte for byte, through the real binary, files and a UDP socket;
//! an output that fails (/dev/full: ENOSPC) is closed while the others go on, and so is an
//! SRT caller that cannot reach its listener at start.

mod cli_support;

use std::net::UdpSocket;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cli_support::*;

const EMM_PID: u16 = 0x1FF1;
const ECM_PID: u16 = 0x1FF0;

/// A UDP receiver on 127.0.0.1:0 collecting every datagram until 2 s of silence after the
/// first (or 60 s of nothing). The buffer is large so a file-speed sender loses nothing.
fn udp_receiver() -> (String, JoinHandle<Vec<u8>>) {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    sock.set_recv_buffer_size(4 << 20).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let sock: UdpSocket = sock.into();
    let addr = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let rx = std::thread::spawn(move || {
        let start = Instant::now();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(_) if !all.is_empty() || start.elapsed() > Duration::from_secs(60) => {
                    return all
                }
                Err(_) => {}
            }
        }
    });
    (format!("udp://{addr}"), rx)
}

/// A card store with one package and one card, for `--cas builtin`.
fn store(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("cas.db");
    let with_db = |args: &[&str]| {
        let mut v = vec!["--db", s(&db)];
        v.extend_from_slice(args);
        ok(&v);
    };
    with_db(&["init"]);
    with_db(&["package", "add", "news"]);
    with_db(&[
        "card",
        "add",
        "--serial",
        "2100000001",
        "--packages",
        "news",
        "--days",
        "30",
    ]);
    db
}

fn count_on(pkts: &[Packet], p: u16) -> usize {
    pkts.iter().filter(|x| pid(x) == p).count()
}

#[test]
fn two_files_and_udp_get_the_same_stream_with_ecms_and_emms() {
    let dir = tmp();
    let d = dir.path();
    let db = store(d);
    let (a, b) = (d.join("a.ts"), d.join("b.ts"));
    let (udp, rx) = udp_receiver();
    let input = sample("spts.ts");
    ok(&[
        "--db",
        s(&db),
        "scramble",
        "-i",
        s(&input),
        "-o",
        s(&a),
        "-o",
        &udp,
        "-o",
        s(&b),
        "--cas",
        "builtin",
        "--packages",
        "news",
        "--crypto-period",
        "1s",
        "--emm-bitrate",
        "100k",
    ]);
    let got_udp = rx.join().unwrap();
    let (fa, fb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let n_in = packets(&input).len();
    assert!(
        fa.len() / 188 >= n_in,
        "{} packets of {n_in}",
        fa.len() / 188
    );
    assert!(fa == fb, "the two files differ");
    assert_eq!(got_udp.len(), fa.len(), "UDP got a different length");
    assert!(got_udp == fa, "UDP differs from the files");
    for (name, data) in [("a.ts", &fa), ("b.ts", &fb), ("udp", &got_udp)] {
        let pkts = packets_of(data);
        assert!(count_on(&pkts, EMM_PID) > 0, "{name}: no EMM packet");
        assert!(count_on(&pkts, ECM_PID) > 0, "{name}: no ECM packet");
        assert_eq!(psi(&pkts).cat_ca, vec![(0x5510, EMM_PID)], "{name}: CAT");
        let av = av_pids(&psi(&pkts));
        assert!(
            on_pids(&pkts, &av)
                .iter()
                .filter(|p| has_payload(p))
                .all(|p| tsc(p) != 0),
            "{name}: clear A/V packet"
        );
    }
}

#[test]
fn a_failing_output_is_closed_and_the_others_finish() {
    let dir = tmp();
    let a = dir.path().join("a.ts");
    let (udp, rx) = udp_receiver();
    let input = sample("spts.ts");
    // /dev/full takes the open, then fails the first write out of its 256 KiB buffer: after
    // about a quarter of this 1 MB sample, mid-run
    let out = castmux(&[
        "scramble",
        "-i",
        s(&input),
        "-o",
        "/dev/full",
        "-o",
        s(&a),
        "-o",
        &udp,
        "--emm-pid",
        "0x1FF1",
        "--stats",
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    // --stats has each output's counters and state, and the input's
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--stats JSON");
    let outputs = stats["outputs"].as_array().expect("outputs in --stats");
    assert_eq!(outputs.len(), 3, "{stats}");
    assert!(outputs[0]["error"].is_string(), "/dev/full failed: {stats}");
    assert!(
        outputs[1]["error"].is_null() && outputs[2]["error"].is_null(),
        "{stats}"
    );
    assert_eq!(
        outputs[1]["stats"]["packets_out"], stats["stream"]["packets_out"],
        "{stats}"
    );
    assert!(stats["input"]["bytes_in"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        log.contains("output failed and was closed") && log.contains("/dev/full"),
        "the failure is logged with the output's name: {log}"
    );
    let fa = std::fs::read(&a).unwrap();
    let n_in = packets(&input).len();
    assert!(
        fa.len() / 188 >= n_in,
        "a.ts is complete: {} of {n_in}",
        fa.len() / 188
    );
    assert!(rx.join().unwrap() == fa, "UDP got the same as a.ts");
    // the CAT naming the EMM PID reaches the survivors
    assert_eq!(psi(&packets_of(&fa)).cat_ca, vec![(0x5510, EMM_PID)]);
}

#[test]
fn an_srt_output_that_cannot_connect_at_start_fails_alone() {
    let dir = tmp();
    let a = dir.path().join("a.ts");
    let input = sample("spts.ts");
    let srt = format!("srt://127.0.0.1:{}?mode=caller", free_udp_port());
    let out = castmux(&[
        "scramble",
        "-i",
        s(&input),
        "-o",
        &srt,
        "-o",
        s(&a),
        "--stats",
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--stats JSON");
    let outputs = stats["outputs"].as_array().expect("outputs in --stats");
    assert_eq!(outputs.len(), 2, "{stats}");
    let srt_error = outputs[0]["error"].as_str().unwrap_or_default();
    assert!(srt_error.contains("SRT connection"), "{stats}");
    assert_eq!(outputs[0]["stats"]["packets_out"], 0, "{stats}");
    assert!(outputs[1]["error"].is_null(), "{stats}");
    assert!(
        log.contains("output failed and was closed") && log.contains(&srt),
        "the failure is logged with the output's name: {log}"
    );
    let n_in = packets(&input).len();
    let got = std::fs::read(&a).unwrap().len() / 188;
    assert!(got >= n_in, "a.ts is complete: {got} of {n_in}");
    assert_eq!(
        outputs[1]["stats"]["packets_out"], stats["stream"]["packets_out"],
        "{stats}"
    );

    // alone, it is still the run's error, as before
    let out = castmux(&["scramble", "-i", s(&input), "-o", &srt]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("SRT connection"), "{log}");
}

#[test]
fn the_run_fails_when_every_output_has_failed() {
    let input = sample("spts.ts");
    let out = castmux(&[
        "scramble",
        "-i",
        s(&input),
        "-o",
        "/dev/full",
        "-o",
        "/dev/./full",
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("every one of the 2 outputs failed"), "{log}");
}

#[test]
fn stdout_at_most_once_and_an_output_is_required() {
    let input = sample("spts.ts");
    let out = castmux(&["scramble", "-i", s(&input), "-o", "-", "-o", "-"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(log.contains("stdout `-` at most once"), "{log}");
    assert!(out.stdout.is_empty(), "nothing written to stdout");
    let out = castmux(&["scramble", "-i", s(&input)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--output"),
        "clap names the missing option"
    );
}

/// A castmux process with its log lines on a channel.
struct Proc {
    child: std::process::Child,
    log: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(db: &Path, args: &[&str], stdin: bool) -> Proc {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_castmux"))
            .arg("--db")
            .arg(db)
            .args(args)
            .env("CASTMUX_LOG", "info")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn castmux");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, log }
    }

    /// The first log line containing `what` (60 s at most).
    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no {what:?} in the log:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn emms_from_an_emmg_reach_every_output() {
    use std::io::Write;
    let dir = tmp();
    let d = dir.path();
    let db = store(d);
    let (a, b) = (d.join("a.ts"), d.join("b.ts"));
    let (udp, rx) = udp_receiver();
    let mut scr = Proc::spawn(
        &db,
        &[
            "scramble",
            "-i",
            "-",
            "-o",
            s(&a),
            "-o",
            s(&b),
            "-o",
            &udp,
            "--cw",
            "0102030405060708",
            "--emm-pid",
            "0x1FF1",
            "--emmg-listen",
            "127.0.0.1:0",
        ],
        true,
    );
    let line = scr.wait_for("EMMG<->MUX listening");
    let mux = line[line.find("listen=").expect("listen=") + 7..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let emmg = Proc::spawn(&db, &["emmg", "--mux", &mux, "--bandwidth", "200k"], false);
    emmg.wait_for("EMMG stream set up");
    // feed over ~2 s so the EMMG's EMMs (paced at 200 kbit/s) meet the packets
    let data = std::fs::read(sample("spts.ts")).unwrap();
    let mut stdin = scr.child.stdin.take().unwrap();
    for c in data.chunks(188 * 100) {
        stdin.write_all(c).unwrap();
        std::thread::sleep(Duration::from_millis(35));
    }
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = scr.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "scramble did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let (fa, fb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let got_udp = rx.join().unwrap();
    assert!(fa == fb, "the two files differ");
    assert!(got_udp == fa, "UDP differs from the files");
    let emms = count_on(&packets_of(&fa), EMM_PID);
    assert!(emms > 0, "no EMM packet from the EMMG");
}
