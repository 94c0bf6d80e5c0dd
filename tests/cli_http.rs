//! HTTP-TS through the real binary.
//!
//! - Output: `castmux scramble -o http://…/ch1 -o http://…/small -o FILE` read by ffprobe,
//!   curl and 50 raw clients at once, plus two throttled ones (one reads slowly, one not at
//!   all): the throttled ones are dropped and counted, every other client gets exactly the
//!   bytes the file got (nothing lost, nothing clear: the file is the scrambler's output).
//!   Meanwhile garbage, a huge head, a slowloris, a wrong path, a POST and one client too
//!   many are refused, none of it touching the streaming clients.
//! - Input: `castmux scramble -i http://…` from a small server that dies mid-packet and
//!   comes back on the same port: the input connects again (counted), the cut packet is
//!   dropped, and the descrambled output is every ES packet the server sent, in order.

mod cli_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cli_support::*;
use sha2::{Digest, Sha256};

/// How a test client reads the stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pace {
    /// As fast as it comes.
    Full,
    /// 1 KiB every 100 ms (10 KiB/s), far below the stream.
    Slow,
    /// Never, after the head.
    Stalled,
}

struct Got {
    head: String,
    len: u64,
    sha: Vec<u8>,
}

/// A client thread: says when its head came, then reads at `pace` until the end.
fn client(
    addr: SocketAddr,
    pace: Pace,
    ready: mpsc::Sender<String>,
    release: mpsc::Receiver<()>,
) -> JoinHandle<Got> {
    std::thread::spawn(move || {
        let (mut s, head) = http_get(addr, "/ch1", pace != Pace::Full);
        ready.send(head.clone()).unwrap();
        let mut hash = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let end = Instant::now() + Duration::from_secs(90);
        if pace == Pace::Stalled {
            // hold the socket, read nothing, until the test is over
            let _ = release.recv_timeout(Duration::from_secs(90));
        } else {
            while Instant::now() < end {
                let want = if pace == Pace::Slow { 1024 } else { buf.len() };
                match s.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        hash.update(&buf[..n]);
                        len += n as u64;
                    }
                }
                if pace == Pace::Slow {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Got {
            head,
            len,
            sha: hash.finalize().to_vec(),
        }
    })
}

/// Send `raw` to the listener and return what it answers (to its close, at most 10 s).
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn http_output_serves_ffprobe_curl_and_50_clients_while_throttled_and_bad_ones_are_dropped() {
    const CLIENTS: usize = 50;
    const LOOPS: usize = 10;
    let dir = tmp();
    let file = dir.path().join("out.ts");
    let port = free_tcp_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_castmux"));
    cmd.args([
        "scramble",
        "-i",
        "-",
        "-o",
        &format!("http://127.0.0.1:{port}/ch1?max_clients=60"),
        "-o",
        &format!("http://127.0.0.1:{port}/small?max_clients=1"),
        "-o",
        s(&file),
        "--crypto-period",
        "300ms",
        "--stats",
    ])
    .env("CASTMUX_LOG", "info")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut server = start_server(cmd);
    let addr = server.addr;
    assert_eq!(addr.port(), port);
    // every output is open once the run says it is scrambling
    let mut opened = Vec::new();
    loop {
        let line = server
            .log
            .recv_timeout(Duration::from_secs(30))
            .expect("castmux did not start scrambling");
        if line.contains("scrambling") {
            break;
        }
        opened.push(line);
    }
    assert_eq!(
        opened
            .iter()
            .filter(|l| l.contains("HTTP-TS listener started"))
            .count(),
        0,
        "both paths share the one listener: {opened:?}"
    );

    // every client is in before the first packet, so each must get the whole stream
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut releases = Vec::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS + 2 {
        let pace = match i {
            0 => Pace::Slow,
            1 => Pace::Stalled,
            _ => Pace::Full,
        };
        let (rel_tx, rel_rx) = mpsc::channel();
        releases.push(rel_tx);
        clients.push((pace, client(addr, pace, ready_tx.clone(), rel_rx)));
    }
    for _ in 0..CLIENTS + 2 {
        let head = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a client got no answer");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("Content-Type: video/mp2t"),
            "{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{head}"
        );
    }

    // the stream: the sample LOOPS times, paced at about 10 Mbit/s
    let sample = std::fs::read(sample("spts.ts")).unwrap();
    let mut stdin = server.child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for _ in 0..LOOPS {
            for chunk in sample.chunks(70 * 188) {
                stdin.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    // bad requests, while the clients stream
    let t = Instant::now();
    let mut slowloris = TcpStream::connect(addr).unwrap();
    slowloris.write_all(b"GET /ch1 HTTP/1.1\r\n").unwrap();
    let loris = std::thread::spawn(move || {
        // a header byte every 300 ms: never a complete head
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end && slowloris.write_all(b"X").is_ok() {
            std::thread::sleep(Duration::from_millis(300));
        }
        t.elapsed()
    });
    let tls = exchange(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert!(tls.starts_with("HTTP/1.1 400 "), "{tls}");
    let mut huge = b"GET /ch1 HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(20_000, b'a');
    let big = exchange(addr, &huge);
    assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
    let missing = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let post = exchange(addr, b"POST /ch1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    // /small takes one client; the second is refused with 503
    let (_first, head) = http_get(addr, "/small", false);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let (_second, head) = http_get(addr, "/small", false);
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");

    // curl and ffprobe read the stream as it flows
    let curl = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "2",
            "-o",
            s(&dir.path().join("curl.ts")),
            "-w",
            "%{http_code} %{content_type}",
            &format!("http://{addr}/ch1"),
        ])
        .output()
        .expect("curl is required: apt-get install curl");
    // curl ends by its --max-time (28): the stream has no end
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "200 video/mp2t",
        "{curl:?}"
    );
    let curl_ts = std::fs::read(dir.path().join("curl.ts")).unwrap();
    assert!(curl_ts.len() > 100_000, "curl got {} bytes", curl_ts.len());
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_programs",
            "-of",
            "json",
            &format!("http://{addr}/ch1"),
        ])
        .output()
        .expect("ffprobe is required: apt-get install ffmpeg");
    assert!(probe.status.success(), "{probe:?}");
    let programs: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let programs = programs["programs"].as_array().expect("programs");
    assert!(
        programs
            .iter()
            .any(|p| p["streams"].as_array().is_some_and(|s| s.len() >= 2)),
        "ffprobe found no program with its streams: {programs:?}"
    );

    // the slowloris is closed by the request deadline (5 s), not before and not never
    let loris_closed_after = loris.join().unwrap();
    assert!(
        loris_closed_after >= Duration::from_secs(4)
            && loris_closed_after < Duration::from_secs(12),
        "slowloris closed after {loris_closed_after:?}"
    );

    feeder.join().unwrap();
    let status = server.child.wait().unwrap();
    let mut stdout = String::new();
    server
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(status.success(), "castmux failed: {stdout}");
    for r in &releases {
        let _ = r.send(());
    }

    let sent = std::fs::read(&file).unwrap();
    assert!(sent.len() > 8_000_000, "{} bytes sent", sent.len());
    let want = Sha256::digest(&sent).to_vec();
    let mut full = 0;
    for (pace, c) in clients {
        let got = c.join().unwrap();
        match pace {
            Pace::Full => {
                assert_eq!(got.len, sent.len() as u64, "a full-rate client lost bytes");
                assert!(got.sha == want, "a full-rate client got other bytes");
                full += 1;
            }
            _ => assert!(
                got.len < sent.len() as u64 / 2,
                "{pace:?} client was not dropped ({} bytes, head {})",
                got.len,
                got.head
            ),
        }
    }
    assert_eq!(full, CLIENTS);
    // the scrambler's output only: every ES packet with a payload is scrambled
    let pkts = packets_of(&sent);
    let es: Vec<_> = pkts
        .iter()
        .filter(|p| matches!(pid(p), 0x100 | 0x101) && has_payload(p))
        .collect();
    assert!(!es.is_empty() && es.iter().all(|p| tsc(p) != 0));

    let stats: serde_json::Value = serde_json::from_str(&stdout).expect("--stats JSON");
    let ch1 = &stats["outputs"][0]["stats"];
    let small = &stats["outputs"][1]["stats"];
    assert_eq!(ch1["clients_dropped_slow"], 2, "{stats}");
    assert_eq!(ch1["clients_refused"], 0, "{stats}");
    // 52 of ours, curl and ffprobe; all gone at the end
    assert!(ch1["clients_accepted"].as_u64().unwrap() >= 54, "{stats}");
    // (counted before the outputs close: the full-rate clients were still on)
    assert!(
        ch1["clients"].as_u64().unwrap() <= CLIENTS as u64 + 2,
        "{stats}"
    );
    // the stream once (the output's own bitrate), whatever the number of clients
    assert_eq!(
        ch1["bytes_out"].as_u64().unwrap(),
        sent.len() as u64,
        "{stats}"
    );
    assert!(
        ch1["clients_bytes_out"].as_u64().unwrap() >= CLIENTS as u64 * sent.len() as u64,
        "{stats}"
    );
    assert_eq!(small["clients_refused"], 1, "{stats}");
    assert_eq!(small["clients_accepted"], 1, "{stats}");
    let log: Vec<String> = server.log.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("bad_requests=")),
        "the listener's close line counts the refusals: {log:?}"
    );
}

/// A stand-in HTTP-TS server: answers each GET with `answer` and then sends `body` paced,
/// closing at its end. Returns the request head it got.
fn serve_one(listener: &TcpListener, answer: &str, body: &[u8]) -> String {
    let (mut s, _) = listener.accept().unwrap();
    let mut head = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    s.write_all(answer.as_bytes()).unwrap();
    for chunk in body.chunks(70 * 188) {
        if s.write_all(chunk).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    head
}

#[test]
fn http_input_reads_scrambles_and_comes_back_after_the_server_restarts() {
    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n";
    let dir = tmp();
    let port = free_tcp_port();

    // a non-200 is an error at start that names the URL and the status
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = std::thread::spawn(move || {
        serve_one(
            &listener,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            b"",
        );
    });
    let out = castmux(&[
        "scramble",
        "-i",
        &format!("http://bob:s3cr3t@127.0.0.1:{port}/missing"),
        "-o",
        s(&dir.path().join("none.ts")),
    ]);
    server.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("http://bob:***@127.0.0.1:{port}/missing"))
            && err.contains("404 Not Found"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "{err}");

    // the stream, cut 100 bytes into a packet, then the server restarts on the same port
    let input = std::fs::read(sample("spts.ts")).unwrap();
    let cut = 2000 * 188 + 100;
    let first = input[..cut].to_vec();
    let again = input.clone();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = std::thread::spawn(move || {
        let head = serve_one(&listener, OK, &first);
        drop(listener);
        std::thread::sleep(Duration::from_millis(600));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let head2 = serve_one(&listener, OK, &again);
        (head, head2)
    });
    let scrambled = dir.path().join("scrambled.ts");
    const CW: &str = "0102030609080718";
    let out = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args([
            "scramble",
            "-i",
            &format!("http://bob:s3cr3t@127.0.0.1:{port}/x?k=v"),
            "-o",
            s(&scrambled),
            // a fixed CW: the descrambler follows a CW log by parity flips, and periods
            // that pass while the server is away (no packet) would leave no flip
            "--cw",
            CW,
            "--idle-timeout",
            "4s",
            "--stats",
        ])
        .env("CASTMUX_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("connecting again") && !err.contains("s3cr3t"),
        "{err}"
    );
    let (head, head2) = server.join().unwrap();
    for h in [&head, &head2] {
        // the query goes to the server; the credentials as Basic authentication
        assert!(h.starts_with("GET /x?k=v HTTP/1.1\r\n"), "{h}");
        assert!(h.contains("Authorization: Basic Ym9iOnMzY3IzdA=="), "{h}");
    }
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--stats JSON");
    assert_eq!(stats["input"]["reconnects"], 1, "{stats}");
    assert_eq!(stats["input"]["dropped_bytes"], 100, "{stats}");
    assert_eq!(
        stats["input"]["packets_in"].as_u64().unwrap(),
        2000 + input.len() as u64 / 188,
        "{stats}"
    );

    // every ES packet the server sent comes back after descrambling, in order
    let clear = dir.path().join("clear.ts");
    ok(&[
        "descramble",
        "-i",
        s(&scrambled),
        "-o",
        s(&clear),
        "--cw",
        CW,
    ]);
    let pkts = packets_of(&input);
    let sent: Vec<Packet> = pkts[..2000].iter().chain(&pkts).copied().collect();
    let es = std::collections::BTreeSet::from([0x100u16, 0x101]);
    let got = on_pids(&packets(&clear), &es);
    let want = on_pids(&sent, &es);
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        got.len(),
        want.len(),
        "ES packets lost (first difference at {first_diff:?})"
    );
    if let Some(i) = first_diff {
        let n = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        let kept = dir.keep();
        panic!(
            "descrambled ES differs from what the server sent: {n} packets, the first at {i} \
             (tsc {} there; files kept in {})",
            tsc(&got[i]),
            kept.display()
        );
    }
    let scrambled_es = on_pids(&packets(&scrambled), &es);
    assert!(scrambled_es
        .iter()
        .filter(|p| has_payload(p))
        .all(|p| tsc(p) != 0));
}
