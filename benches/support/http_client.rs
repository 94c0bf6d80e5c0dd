//! Shared by the benches that drive castmux's HTTP side (`http`, `store`): the binary started
//! on core 0 with an API key, and a keep-alive HTTP/1.1 client by hand (no client crate:
//! what is timed is castmux's answer, not a client library).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
