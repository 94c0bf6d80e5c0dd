//! Shared by the benches that drive castmux's HTTP side (`http`, `store`): the binary started
//! on core 0 with an API key, and a keep-alive HTTP/1.1 client by hand (no client crate:
//! what is timed is castmux's answer, not a client library).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Start `castmux ARGS` on core 0 with the API key; its HTTP address once it logs it.
pub fn start(
    db: impl AsRef<std::ffi::OsStr>,
    key: &str,
    args: &[&str],
    ready: &str,
) -> (Child, SocketAddr) {
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(env!("CARGO_BIN_EXE_castmux"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env("CASTMUX_API_KEY", key)
        .env("CASTMUX_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taskset castmux (util-linux taskset, cargo build --release)");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        let mut addr = None;
        let mut said = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if addr.is_none() && line.contains("http: serving") {
                addr = line
                    .split("listen=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok());
            }
            if let (Some(a), false) = (addr, said) {
                if line.contains(&ready) || ready.is_empty() {
                    said = true;
                    let _ = tx.send(a);
                }
            }
            if line.contains("ERROR") {
                eprintln!("castmux: {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("castmux did not start serving HTTP within 120 s");
    (child, addr)
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Conn {
            sock,
            buf: Vec::with_capacity(1 << 16),
        }
    }

    /// GET `path`; the status and the body.
    pub fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(self.sock, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").expect("send");
        loop {
            if let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status line");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().expect("content-length"))
                    .expect("an answer with content-length (no chunked bodies here)");
                let total = head_end + 4 + len;
                while self.buf.len() < total {
                    self.fill();
                }
                let body = self.buf[head_end + 4..total].to_vec();
                self.buf.drain(..total);
                return (status, body);
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.sock.read(&mut chunk).expect("read");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// What [`tvcas_updates`] did.
pub struct UpdateRun {
    /// Updates answered.
    pub updates: u64,
    /// Seconds the run took.
    pub elapsed: f64,
    /// Answer times, µs.
    pub hist: Histogram<u64>,
    /// Per card, the round of the last name set on it (`bench ROUND I`; 0: none).
    pub last: Vec<u64>,
}

/// The TVCAS set-name path of card `i` (serial `serial`) in round `round`.
pub fn set_name_path(key: &str, serial: u64, i: usize, round: u64) -> String {
    format!("/api.php?api_key={key}&serial_no={serial}&set%5Bname%5D=bench%20{round}%20{i}")
}

/// CLIENTS keep-alive connections, client k to `nodes[k % nodes.len()]`, each setting the
/// name of its share of the cards (every CLIENTS-th from k; card i has serial `serial(i)`)
/// round after round for SECS seconds, each waiting for its answer.
pub fn tvcas_updates(
    nodes: &[SocketAddr],
    key: &str,
    serial: &(dyn Fn(usize) -> u64 + Sync),
    cards: usize,
    clients: usize,
    secs: f64,
) -> UpdateRun {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let results: Vec<(u64, Histogram<u64>, Vec<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|k| {
                s.spawn(move || {
                    let mut conn = Conn::open(nodes[k % nodes.len()]);
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mut last = vec![0u64; cards];
                    let (mut n, mut round) = (0u64, 1u64);
                    while Instant::now() < end {
                        for i in (k..cards).step_by(clients) {
                            let t = Instant::now();
                            let (status, body) = conn.get(&set_name_path(key, serial(i), i, round));
                            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                            hist.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                            last[i] = round;
                            n += 1;
                            if Instant::now() >= end {
                                break;
                            }
                        }
                        round += 1;
                    }
                    (n, hist, last)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let mut run = UpdateRun {
        updates: 0,
        elapsed,
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
        last: vec![0u64; cards],
    };
    for (k, (n, h, l)) in results.into_iter().enumerate() {
        run.updates += n;
        run.hist.add(&h).unwrap();
        for i in (k..cards).step_by(clients) {
            run.last[i] = l[i];
        }
    }
    run
}
