//! Helpers for the HTTP tests: `castmux serve` as a child process, and HTTP/1.1 by hand
//! over a TcpStream (one request per connection, `Connection: close`), so the tests need
//! no HTTP client crate and can also send what a client crate would refuse to.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use crate::cli_support::{start_server, Server};

/// The key the tests' servers use.
pub const KEY: &str = "mysecretkey123";

/// The `castmux serve` command on `db` (no key given: the caller adds one).
pub fn serve_command(db: impl AsRef<std::ffi::OsStr>, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_castmux"));
    c.arg("--db")
        .arg(db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("CASTMUX_API_KEY")
        .env_remove("CASTMUX_EXPORT_KEY")
        .env("CASTMUX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Start `castmux serve` on `db` with [`KEY`] in CASTMUX_API_KEY; its address is read from
/// its log.
pub fn serve(db: impl AsRef<std::ffi::OsStr>, extra: &[&str]) -> Server {
    let mut c = serve_command(db, extra);
    c.env("CASTMUX_API_KEY", KEY);
    start_server(c)
}

/// Start `castmux headend --workers 1 --config CFG` on `db` with [`KEY`] in
/// CASTMUX_API_KEY; the file's `[http]` listens where its log says.
pub fn headend(db: impl AsRef<std::ffi::OsStr>, cfg: &Path) -> Server {
    let mut c = Command::new(env!("CARGO_BIN_EXE_castmux"));
    c.arg("--db")
        .arg(db)
        .args(["headend", "--workers", "1", "--config"])
        .arg(cfg)
        .env_remove("CASTMUX_DB")
        .env("CASTMUX_API_KEY", KEY)
        .env("CASTMUX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    start_server(c)
}

/// A store with packages `basic` (bit 0) and `sport` (bit 2) and the seed's card
/// 2100000000 (Ivan Petrov, 01010101 — bits 0, 2, 4, 6 — pair 0, 1586693700..1589285580).
pub fn seed_store(dir: &Path) -> PathBuf {
    let db = dir.join("castmux.db");
    seed_store_at(&db);
    db
}

/// [`seed_store`] at `db`: a file path or a PostgreSQL database's URL.
pub fn seed_store_at(db: impl AsRef<std::ffi::OsStr>) {
    let db = db.as_ref();
    castmux(db, &["init"]);
    castmux(db, &["package", "add", "basic", "--bit", "0"]);
    castmux(db, &["package", "add", "sport", "--bit", "2"]);
    castmux(
        db,
        &[
            "card",
            "add",
            "--serial",
            "2100000000",
            "--name",
            "Ivan Petrov",
            "--info",
            "Zeleenaya street 123-234",
            "--access-criteria",
            "01010101",
            "--start",
            "1586693700",
            "--finish",
            "1589285580",
        ],
    );
}

/// Run `castmux --db DB ARGS...` to its end; its stdout. Fails the test if it fails.
pub fn castmux(db: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env("CASTMUX_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "castmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` code of a JSON error answer.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("an error code")
            .to_owned()
    }
}

/// Send raw bytes as a request and read the answer to the end (the server closes after a
/// `Connection: close` request). Panics if no complete answer comes within 30 s.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).expect("send the request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the answer");
    parse(&buf).unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)))
}

/// Parse one HTTP/1.1 answer (Content-Length, chunked, or to the end).
pub fn parse(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        let mut body = Vec::new();
        let mut r = rest;
        loop {
            let nl = r.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&r[..nl]).ok()?.trim(), 16).ok()?;
            r = &r[nl + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(r.get(..size)?);
            r = r.get(size + 2..)?;
        }
        body
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match len {
            Some(n) => rest.get(..n)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// A request with `headers` and an optional body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    raw(addr, &bytes)
}

/// GET without a key.
pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], None)
}

/// A REST call with the key in X-API-Key and an optional JSON body.
pub fn api(addr: SocketAddr, method: &str, path: &str, body: Option<serde_json::Value>) -> Reply {
    let body = body.map(|b| b.to_string());
    let mut headers = vec![("X-API-Key", KEY)];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    request(
        addr,
        method,
        path,
        &headers,
        body.as_deref().map(str::as_bytes),
    )
}

/// Percent-encode a query value (UTF-8 bytes; unreserved characters as they are).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
