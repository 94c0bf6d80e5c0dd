//! HTTP-TS input: `http://HOST:PORT/PATH` fetched with GET on a thread of its own.
//!
//! Opening makes the first connection (so a wrong URL, a refused connection or a non-200
//! answer is an error at once, naming the URL and the status). From then on the thread
//! reads the body into a [`ByteBridge`] and the data path resynchronises it like any byte
//! stream. When the server closes, fails or goes silent for [`IDLE_TIMEOUT`], the thread
//! connects again with a backoff from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`] (the
//! head-end's channel restart values), counting `reconnects` and logging each loss and
//! recovery; the bytes of the new connection start a new stream for the resynchroniser.
//!
//! Redirects (301, 302, 303, 307, 308) are followed up to [`MAX_REDIRECTS`] times, to
//! `http://` only. `USER:PASS@` in the URL is sent as Basic authentication and never shown.
//! Bodies may be plain or chunked (Transfer-Encoding: chunked, as proxies send them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::io::batch::PacketBatch;
use crate::io::bridge::{BridgeReader, ByteBridge};
use crate::io::error::{IoError, IoResult};
use crate::io::stats::IoStats;
use crate::io::url::{HttpInputUrl, InputUrl};
use crate::io::ReadStatus;

/// Time to connect, and to get the whole response head.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A stream that sends nothing for this long is taken as dead and connected again.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before connecting again.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Redirects followed, at most.
pub const MAX_REDIRECTS: usize = 3;
/// Bytes gathered for the data path before it reads them: 4 MiB, as an SRT input.
const BRIDGE_BYTES: usize = 4 * 1024 * 1024;
/// The longest response head read.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Bytes per read() of the body.
const READ_CHUNK: usize = 64 * 1024;
/// How often a blocked read looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// An HTTP-TS source.
#[derive(Debug)]
pub struct HttpInput {
    reader: BridgeReader,
    url: String,
    stats: Arc<IoStats>,
    peer: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpInput {
    /// Connect and check the answer (200), then stream on a thread of its own.
    pub fn open(u: &HttpInputUrl, stats: Arc<IoStats>) -> IoResult<HttpInput> {
        let stop = Arc::new(AtomicBool::new(false));
        let conn = Connection::open(u, &stop)?;
        let peer = conn.peer;
        tracing::info!(url = %u.url, %peer, "HTTP input connected");
        let bridge = ByteBridge::new(BRIDGE_BYTES).map_err(|source| IoError::Thread {
            url: u.url.clone(),
            source,
        })?;
        let (t_bridge, t_stats, t_stop, t_url) =
            (bridge.clone(), stats.clone(), stop.clone(), u.clone());
        let thread = std::thread::Builder::new()
            .name("http-in".to_owned())
            .spawn(move || pump(conn, &t_url, &t_bridge, &t_stats, &t_stop))
            .map_err(|source| IoError::Thread {
                url: u.url.clone(),
                source,
            })?;
        Ok(HttpInput {
            reader: BridgeReader::new(bridge),
            url: u.url.clone(),
            stats,
            peer,
            stop,
            thread: Some(thread),
        })
    }

    /// The counters this input updates.
    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }

    /// What to wait on for its bytes (the head-end's epoll).
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.reader.wake_fd()
    }

    /// The server's address at the first connection.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Fill `batch` (cleared first), waiting up to `timeout` for the first bytes.
    pub fn read_batch(
        &mut self,
        batch: &mut PacketBatch,
        timeout: Duration,
    ) -> IoResult<ReadStatus> {
        self.reader
            .read_batch(batch, timeout, &self.stats)
            .map_err(|reason| IoError::HttpConnect {
                url: self.url.clone(),
                reason,
            })
    }
}

impl Drop for HttpInput {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // the thread looks at the flag every POLL (or after a connect attempt): not joined,
        // so closing never waits on the network
        drop(self.thread.take());
    }
}

/// Read the body into the bridge; connect again whenever the stream ends.
fn pump(
    mut conn: Connection,
    u: &HttpInputUrl,
    bridge: &ByteBridge,
    stats: &IoStats,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let why = conn.stream_into(&mut buf, bridge, stats, stop);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        tracing::warn!(url = %u.url, reason = %why, "HTTP input lost; connecting again");
        let mut backoff = BACKOFF_MIN;
        conn = loop {
            if sleep_unless_stopped(backoff, stop) {
                return;
            }
            match Connection::open(u, stop) {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?(backoff * 2).min(BACKOFF_MAX),
                        "HTTP input: cannot connect again");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        IoStats::add(&stats.reconnects, 1);
        bridge.restart();
        tracing::info!(url = %u.url, peer = %conn.peer,
            reconnects = stats.reconnects.load(Ordering::Relaxed), "HTTP input connected again");
    }
}

/// Sleep `d`, looking at `stop`; true when it was raised.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(POLL));
    }
}

/// One GET whose answer was 200: the socket, the body bytes read with the head, and how
/// the body is framed.
struct Connection {
    sock: TcpStream,
    peer: SocketAddr,
    early: Vec<u8>,
    chunked: Option<Dechunk>,
}

/// What a response head says.
struct Response {
    status: u16,
    reason: String,
    location: Option<String>,
    chunked: bool,
    /// Where the body starts in the bytes read.
    body_at: usize,
}

impl Connection {
    /// GET `u`, following redirects; Ok only for a 200.
    fn open(u: &HttpInputUrl, stop: &AtomicBool) -> IoResult<Connection> {
        let mut target = u.clone();
        for _ in 0..=MAX_REDIRECTS {
            if stop.load(Ordering::Relaxed) {
                return Err(IoError::HttpConnect {
                    url: u.url.clone(),
                    reason: "input closed".to_owned(),
                });
            }
            let (sock, peer, head, resp) = get(&target)?;
            match resp.status {
                200 => {
                    return Ok(Connection {
                        sock,
                        peer,
                        early: head[resp.body_at..].to_vec(),
                        chunked: resp.chunked.then(Dechunk::default),
                    })
                }
                301 | 302 | 303 | 307 | 308 => {
                    let Some(loc) = resp.location else {
                        return Err(IoError::HttpRedirect {
                            url: target.url.clone(),
                            what: format!("redirect {} without a Location", resp.status),
                        });
                    };
                    target = redirect(&target, &loc)?;
                    tracing::info!(from = %u.url, to = %target.url, "HTTP input redirected");
                }
                status => {
                    return Err(IoError::HttpStatus {
                        url: target.url.clone(),
                        status,
                        reason: resp.reason,
                        hint: if matches!(status, 401 | 403) {
                            " and the USER:PASS@ in the URL"
                        } else {
                            ""
                        },
                    })
                }
            }
        }
        Err(IoError::HttpRedirect {
            url: u.url.clone(),
            what: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Read the body into `bridge` until the connection ends (or `stop`); why it ended.
    fn stream_into(
        &mut self,
        buf: &mut [u8],
        bridge: &ByteBridge,
        stats: &IoStats,
        stop: &AtomicBool,
    ) -> String {
        let early = std::mem::take(&mut self.early);
        if let Err(why) = self.deliver(&early, bridge, stats) {
            return why;
        }
        let _ = self.sock.set_read_timeout(Some(POLL));
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match self.sock.read(buf) {
                Ok(0) => return "the server closed the connection".to_owned(),
                Ok(n) => {
                    last = Instant::now();
                    if let Err(why) = self.deliver(&buf[..n], bridge, stats) {
                        return why;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if last.elapsed() >= IDLE_TIMEOUT {
                        return format!("nothing received for {IDLE_TIMEOUT:?}");
                    }
                }
                Err(e) => return e.to_string(),
            }
        }
        "input closed".to_owned()
    }

    /// Hand body bytes on (de-chunked when they are chunked).
    fn deliver(&mut self, data: &[u8], bridge: &ByteBridge, stats: &IoStats) -> Result<(), String> {
        IoStats::add(&stats.bytes_in, data.len() as u64);
        match &mut self.chunked {
            None => {
                bridge.push(data, stats);
                Ok(())
            }
            Some(d) => d.feed(data, |part| bridge.push(part, stats)),
        }
    }
}

/// The URL a `Location` points to: absolute `http://…`, or a path on the same server.
fn redirect(from: &HttpInputUrl, location: &str) -> IoResult<HttpInputUrl> {
    let loc = location.trim();
    if loc.starts_with('/') && !loc.starts_with("//") {
        return Ok(HttpInputUrl {
            url: format!("{}{loc}", origin_of(from)),
            target: loc.to_owned(),
            ..from.clone()
        });
    }
    match InputUrl::parse(loc) {
        Ok(InputUrl::Http(mut to)) => {
            // credentials go only where they were given
            if to.credentials.is_none() && to.host == from.host && to.port == from.port {
                to.credentials = from.credentials.clone();
            }
            Ok(to)
        }
        _ => Err(IoError::HttpRedirect {
            url: from.url.clone(),
            what: format!(
                "redirected to `{}`, which is not an http:// URL castmux can follow",
                crate::io::url::mask(loc)
            ),
        }),
    }
}

/// `http://[USER:***@]HOST:PORT` of `u.url` (already masked).
fn origin_of(u: &HttpInputUrl) -> String {
    let rest = u.url.split_once("://").map_or(u.url.as_str(), |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    format!("http://{}", &rest[..end])
}

/// Connect, send the GET and read the response head.
fn get(u: &HttpInputUrl) -> IoResult<(TcpStream, SocketAddr, Vec<u8>, Response)> {
    let fail = |reason: String| IoError::HttpConnect {
        url: u.url.clone(),
        reason,
    };
    let addrs: Vec<SocketAddr> = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| IoError::Resolve {
            url: u.url.clone(),
            host: u.host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last_err = "no address".to_owned();
    let mut conn = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                conn = Some((s, *a));
                break;
            }
            Err(e) => last_err = format!("{a}: {e}"),
        }
    }
    let (mut sock, peer) = conn.ok_or_else(|| fail(last_err))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let _ = sock.set_nodelay(true);
    let _ = sock.set_write_timeout(Some(CONNECT_TIMEOUT));
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: castmux/{}\r\nAccept: */*\r\n\
         Icy-MetaData: 0\r\nConnection: close\r\n",
        u.target,
        u.port,
        env!("CARGO_PKG_VERSION")
    );
    if let Some((user, pass)) = &u.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes())
        .map_err(|e| fail(format!("sending the request: {e}")))?;
    let mut head = Vec::with_capacity(4096);
    let mut b = [0u8; 4096];
    loop {
        if let Some(resp) = parse_response(&head).map_err(|e| fail(e.to_owned()))? {
            return Ok((sock, peer, head, resp));
        }
        if head.len() > MAX_RESPONSE_HEAD {
            return Err(fail(format!(
                "the response head is longer than {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(format!("no response within {CONNECT_TIMEOUT:?}")));
        }
        let _ = sock.set_read_timeout(Some(left));
        match sock.read(&mut b) {
            Ok(0) => {
                return Err(fail(
                    "the server closed the connection before answering".to_owned(),
                ))
            }
            Ok(n) => head.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(format!("reading the response: {e}"))),
        }
    }
}

/// Check then parse a response head: None while incomplete.
fn parse_response(buf: &[u8]) -> Result<Option<Response>, &'static str> {
    let Some(end) = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err("the answer is not HTTP (no status line)");
    };
    if !(version.starts_with("HTTP/1.") || version == "ICY") {
        return Err("the answer is not HTTP/1.x");
    }
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or("the answer's status code is not a number")?;
    let reason = parts.next().unwrap_or("").trim().to_owned();
    let mut location = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(Some(Response {
        status,
        reason,
        location,
        chunked,
        body_at: end,
    }))
}

/// A `Transfer-Encoding: chunked` body decoder, fed in pieces of any size.
#[derive(Debug, Default)]
struct Dechunk {
    state: DechunkState,
    size: u64,
    /// Hex digits read of the current size line (bounded).
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DechunkState {
    /// Reading the chunk size's hex digits.
    #[default]
    Size,
    /// Skipping chunk extensions up to the line's LF.
    SizeLine,
    /// In the chunk's data: `size` bytes left.
    Data,
    /// The CRLF after the data.
    DataEnd,
    /// The last chunk (size 0) came: the body is over.
    Done,
}

impl Dechunk {
    /// Hand the data bytes of `input` to `out`; Err when the framing is broken or over.
    fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8])) -> Result<(), String> {
        while let Some((&b, rest)) = input.split_first() {
            match self.state {
                DechunkState::Size => {
                    if let Some(d) = (b as char).to_digit(16) {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("a chunk size is too long".to_owned());
                        }
                        self.size = self.size * 16 + u64::from(d);
                    } else if self.digits == 0 {
                        return Err("a chunk does not start with its size".to_owned());
                    } else {
                        self.state = DechunkState::SizeLine;
                        continue;
                    }
                }
                DechunkState::SizeLine => {
                    if b == b'\n' {
                        self.digits = 0;
                        self.state = if self.size == 0 {
                            DechunkState::Done
                        } else {
                            DechunkState::Data
                        };
                    }
                }
                DechunkState::Data => {
                    let n = (self.size.min(input.len() as u64)) as usize;
                    out(&input[..n]);
                    self.size -= n as u64;
                    input = &input[n..];
                    if self.size == 0 {
                        self.state = DechunkState::DataEnd;
                    }
                    continue;
                }
                DechunkState::DataEnd => {
                    if b == b'\n' {
                        self.state = DechunkState::Size;
                    } else if b != b'\r' {
                        return Err("a chunk is longer than its size".to_owned());
                    }
                }
                DechunkState::Done => return Err("the server ended the stream".to_owned()),
            }
            input = rest;
        }
        if self.state == DechunkState::Done {
            return Err("the server ended the stream".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_once_complete() {
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n")
                .unwrap()
                .is_none()
        );
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.chunked, r.body_at), (200, true, 47));
        let r = parse_response(b"HTTP/1.0 302 Found\r\nlocation: /b\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.location.as_deref()), (302, Some("/b")));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_in_any_pieces() {
        let body = b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n";
        for split in 1..body.len() {
            let mut d = Dechunk::default();
            let mut got = Vec::new();
            let a = d.feed(&body[..split], |p| got.extend_from_slice(p));
            let b = a.and_then(|()| d.feed(&body[split..], |p| got.extend_from_slice(p)));
            assert_eq!(got, b"abcdefg", "split at {split}");
            assert!(b.is_err(), "the last chunk ends the stream");
        }
        let mut d = Dechunk::default();
        assert!(d.feed(b"zz\r\n", |_| {}).is_err());
        let mut d = Dechunk::default();
        assert!(d.feed(b"2\r\nabc\r\n", |_| {}).is_err());
        let mut d = Dechunk::default();
        assert!(d.feed(b"ffffffffffffffff\r\n", |_| {}).is_err());
    }

    #[test]
    fn redirects_stay_on_http_and_keep_credentials_only_on_the_same_server() {
        let InputUrl::Http(from) = InputUrl::parse("http://u:pw@a:81/x?y").unwrap() else {
            panic!()
        };
        let to = redirect(&from, "/z?1").unwrap();
        assert_eq!(
            (to.host.as_str(), to.port, to.target.as_str()),
            ("a", 81, "/z?1")
        );
        assert_eq!(to.url, "http://u:***@a:81/z?1");
        assert!(to.credentials.is_some());
        let to = redirect(&from, "http://b:82/w").unwrap();
        assert_eq!((to.host.as_str(), to.credentials), ("b", None));
        let e = redirect(&from, "https://a/x").unwrap_err().to_string();
        assert!(
            e.contains("https://a/x") && e.contains("http://u:***@a:81/x?y"),
            "{e}"
        );
    }
}

/// castmux's own HTTP-TS output read by its own input, through an output restart.
#[cfg(test)]
mod round_trip {
    use super::*;
    use crate::io::http::HttpOutput;
    use crate::io::url::OutputUrl;
    use crate::io::{TS_PACKET_SIZE, TS_SYNC_BYTE};

    fn packets(from: u32, n: u32) -> Vec<u8> {
        (from..from + n)
            .flat_map(|i| {
                let mut p = [0u8; TS_PACKET_SIZE];
                p[..4].copy_from_slice(&[TS_SYNC_BYTE, 0x01, 0x00, 0x10]);
                p[4..8].copy_from_slice(&i.to_be_bytes());
                p
            })
            .collect()
    }

    /// Read until `want` packets came (or 10 s); their sequence numbers.
    fn read(input: &mut HttpInput, want: usize, out: &mut HttpOutput, feed: &mut u32) -> Vec<u32> {
        let mut batch = PacketBatch::with_capacity(64);
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(10);
        while got.len() < want && Instant::now() < end {
            // keep the stream flowing while reading
            out.write(&packets(*feed, 10)).unwrap();
            out.flush().unwrap();
            *feed += 10;
            if let ReadStatus::Packets(_) = input
                .read_batch(&mut batch, Duration::from_millis(20))
                .unwrap()
            {
                got.extend(
                    batch
                        .packets()
                        .iter()
                        .map(|p| u32::from_be_bytes(p[4..8].try_into().unwrap())),
                );
            }
        }
        got
    }

    #[test]
    fn our_input_reads_our_output_and_comes_back_after_it_restarts() {
        let OutputUrl::Http(ou) = OutputUrl::parse("http://127.0.0.1:0/rt").unwrap() else {
            panic!()
        };
        let mut out = HttpOutput::open(&ou, Arc::default()).unwrap();
        let addr = out.local_addr();
        let InputUrl::Http(iu) = InputUrl::parse(&format!("http://{addr}/rt")).unwrap() else {
            panic!()
        };
        let stats = Arc::<IoStats>::default();
        let mut input = HttpInput::open(&iu, stats.clone()).unwrap();
        let mut feed = 0;
        let got = read(&mut input, 200, &mut out, &mut feed);
        assert!(got.len() >= 200, "{} packets", got.len());
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "a gap: {got:?}");
        // the server goes away and comes back on the same address
        drop(out);
        let OutputUrl::Http(again) = OutputUrl::parse(&format!("http://{addr}/rt")).unwrap() else {
            panic!()
        };
        let mut out = HttpOutput::open(&again, Arc::default()).unwrap();
        let got = read(&mut input, 200, &mut out, &mut feed);
        assert!(got.len() >= 200, "{} packets after the restart", got.len());
        assert_eq!(stats.snapshot().reconnects, 1);
        let tail = &got[got.len() - 100..];
        assert!(tail.windows(2).all(|w| w[1] == w[0] + 1), "a gap: {tail:?}");
    }
}
