//! HTTP-TS output: `http://ADDR:PORT/PATH` serves the stream to any number of clients.
//!
//! - One listener per address, shared by every output of the process on it (a registry
//!   keyed by the address): channels serve different paths on one port; the same path
//!   twice is a configuration error; a wrong path gets 404. The listener closes with its
//!   last path. Port 0 binds a free port of its own and logs it (`listen=`); outputs that
//!   name that port later share it.
//! - The data path never waits and never writes a socket: [`HttpOutput::write`] gathers
//!   packets into a chunk (one allocation per [`CHUNK`] bytes, never per packet) and hands
//!   it to a broadcast ring. Each client's task reads the ring at its own pace and writes
//!   its socket: the ring is the client's bounded queue ([`RING_CHUNKS`] chunks). A client
//!   that falls a whole ring behind, or whose socket takes no byte for [`WRITE_STALL`], is
//!   dropped (closed) and counted; the others never notice.
//! - The clients run on one small tokio runtime of the process's own ([`runtime`]), not on
//!   the control plane's: bulk socket writes must not delay SimulCrypt's ECM deadlines.
//! - Connections go through the one accept loop ([`crate::net::AcceptLoop`]): a total cap,
//!   and a request head must come within [`REQUEST_TIMEOUT`] (slowloris). Requests are parsed
//!   by [`super::request`]; garbage gets 400, a head too large 431, then the connection
//!   is closed. Beyond a path's `max_clients`, 503. Every refusal is counted.
//! - Responses are plain HTTP/1.1 with `Connection: close` and no length: the body is the
//!   stream until either side closes, which curl, ffmpeg and VLC read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinSet;

use super::request::{parse_request, Method, MAX_HEAD};
use crate::io::error::{IoError, IoResult};
use crate::io::stats::IoStats;
use crate::io::url::{HttpOutputUrl, MAX_HTTP_CLIENTS};
use crate::io::TS_PACKET_SIZE;
use crate::net::accept::LogGate;
use crate::net::{AcceptLimits, AcceptLoop, AcceptStats, Handshake};

/// Bytes gathered before a chunk goes to the clients: 87 packets, about 16 KiB.
pub const CHUNK: usize = 87 * TS_PACKET_SIZE;
/// The longest a packet waits in a partial chunk (low bitrates, no flush).
pub const MAX_HOLD: Duration = Duration::from_millis(50);
/// Chunks a client may be behind before it is dropped: 256 × 16 KiB = 4 MiB, about 3 s at
/// 10 Mbit/s (besides what its socket buffers hold).
pub const RING_CHUNKS: usize = 256;
/// A client whose socket takes nothing for this long is dropped as slow.
pub const WRITE_STALL: Duration = Duration::from_secs(5);
/// Time from the accept to a complete request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an error answer (400, 404, 503) may take to write before the connection is closed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections one listener holds at once: every path's clients plus room for requests in
/// progress. Beyond, connections are closed at once (the accept loop counts them).
const MAX_CONNECTIONS: usize = MAX_HTTP_CLIENTS + 256;
/// How long closing the last output of a listener waits for its port to be free again.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long closing an output waits for its clients to take what is already queued for
/// them (then they are closed).
const LINGER: Duration = Duration::from_secs(2);
/// SO_SNDBUF of a client's socket: bounds the kernel memory per client (Linux would grow
/// it to 4 MiB each) and lets a client that stops reading show up as stalled quickly.
const CLIENT_SEND_BUFFER: usize = 256 * 1024;
/// Worker threads of the HTTP-TS runtime.
const WORKERS: usize = 1;

/// The runtime every HTTP-TS listener and client runs on (started at the first use).
fn runtime() -> IoResult<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("castmux-http-ts")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| IoError::Thread {
        url: "the HTTP-TS runtime".to_owned(),
        source: std::io::Error::other(e.clone()),
    })
}

/// Counters of one listener: what no single path can be blamed for.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// The accept loop's: connections accepted, refused over the cap, request timeouts.
    pub accept: Arc<AcceptStats>,
    /// Requests refused as malformed (400, 405, 431, 505).
    pub bad_requests: AtomicU64,
    /// Requests for a path nobody serves (404).
    pub not_found: AtomicU64,
}

/// A listener's counters at one moment, for reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListenerSnapshot {
    /// The address bound.
    pub listen: String,
    pub accepted: u64,
    pub refused_full: u64,
    pub request_timeouts: u64,
    pub bad_requests: u64,
    pub not_found: u64,
}

/// One path's clients: what a client task needs once it streams.
#[derive(Debug)]
struct FeedCounters {
    stats: Arc<IoStats>,
    clients: AtomicUsize,
    max_clients: usize,
    url: String,
}

/// One served path.
#[derive(Debug)]
struct Feed {
    tx: broadcast::Sender<Bytes>,
    counters: Arc<FeedCounters>,
}

/// What a listener's connection tasks share.
#[derive(Debug)]
struct Shared {
    local: SocketAddr,
    paths: Mutex<HashMap<String, Arc<Feed>>>,
    stats: Arc<ListenerStats>,
    log_slow: LogGate,
    log_bad: LogGate,
}

/// A bound address and its accept task; closed when the last output on it goes.
#[derive(Debug)]
struct Listener {
    /// The address bound (the registry key; the free port picked for port 0).
    key: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<std::sync::mpsc::Receiver<()>>,
}

type Registry = Mutex<Vec<(SocketAddr, Weak<Mutex<Listener>>)>>;

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(Registry::default)
}

/// Every open HTTP-TS listener's counters.
pub fn listener_stats() -> Vec<ListenerSnapshot> {
    let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    reg.iter()
        .filter_map(|(_, w)| w.upgrade())
        .map(|l| {
            let l = l.lock().unwrap_or_else(|e| e.into_inner());
            let s = &l.shared.stats;
            let a = s.accept.snapshot();
            ListenerSnapshot {
                listen: l.shared.local.to_string(),
                accepted: a.accepted,
                refused_full: a.refused_full + a.refused_per_address,
                request_timeouts: a.handshake_timeouts,
                bad_requests: s.bad_requests.load(Relaxed),
                not_found: s.not_found.load(Relaxed),
            }
        })
        .collect()
}

impl Listener {
    /// Bind `u.addr` and start serving it.
    fn start(u: &HttpOutputUrl) -> IoResult<Listener> {
        let rt = runtime()?;
        let addr = u.addr;
        let sock_err = |option, source| IoError::SocketOption {
            url: u.url.clone(),
            option,
            source,
        };
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| sock_err("socket()", e))?;
        // a restarted channel binds again at once, past connections in TIME_WAIT
        s.set_reuse_address(true)
            .map_err(|e| sock_err("SO_REUSEADDR", e))?;
        s.set_nonblocking(true)
            .map_err(|e| sock_err("O_NONBLOCK", e))?;
        let bind_err = |source| IoError::Bind {
            url: u.url.clone(),
            addr,
            source,
        };
        s.bind(&SockAddr::from(addr)).map_err(bind_err)?;
        s.listen(1024).map_err(bind_err)?;
        let std_listener: std::net::TcpListener = s.into();
        let local = std_listener.local_addr().unwrap_or(addr);
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?
        };
        let stats = Arc::<ListenerStats>::default();
        let shared = Arc::new(Shared {
            local,
            paths: Mutex::default(),
            stats: stats.clone(),
            log_slow: LogGate::default(),
            log_bad: LogGate::default(),
        });
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped) = std::sync::mpsc::sync_channel::<()>(1);
        let acceptor = AcceptLoop::new(
            "HTTP-TS output",
            AcceptLimits::new(MAX_CONNECTIONS, None, REQUEST_TIMEOUT)
                .unwrap_or(AcceptLimits::with_max(MAX_CONNECTIONS)),
            stats.accept.clone(),
        );
        let task_shared = shared.clone();
        rt.spawn(async move {
            acceptor
                .run(
                    &listener,
                    JoinSet::new(),
                    async move {
                        let _ = stop_rx.await;
                    },
                    |sock, peer, hs| serve(task_shared.clone(), sock, peer, hs),
                )
                .await;
            drop(listener);
            let _ = stopped_tx.send(());
        });
        tracing::info!(listen = %local, "HTTP-TS listener started");
        Ok(Listener {
            key: local,
            shared,
            stop: Some(stop),
            stopped: Some(stopped),
        })
    }

    /// Stop accepting, close every connection, and wait (bounded) until the port is free.
    fn close(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            if stopped.recv_timeout(CLOSE_WAIT).is_err() {
                tracing::warn!(listen = %self.shared.local, "HTTP-TS listener did not stop in time");
            }
        }
        let s = &self.shared.stats;
        let a = s.accept.snapshot();
        tracing::info!(listen = %self.shared.local, accepted = a.accepted,
            refused_full = a.refused_full + a.refused_per_address,
            request_timeouts = a.handshake_timeouts,
            bad_requests = s.bad_requests.load(Relaxed), not_found = s.not_found.load(Relaxed),
            "HTTP-TS listener closed");
    }
}

/// An HTTP-TS destination: one path on a (shared) listener.
#[derive(Debug)]
pub struct HttpOutput {
    url: String,
    path: String,
    listener: Arc<Mutex<Listener>>,
    tx: broadcast::Sender<Bytes>,
    buf: BytesMut,
    /// When the oldest byte of `buf` came.
    held_since: Option<Instant>,
    stats: Arc<IoStats>,
    local: SocketAddr,
}

impl HttpOutput {
    /// Serve `u.path` on `u.addr`, starting the listener unless another output of the
    /// process already has it. The same path twice is [`IoError::HttpPathTaken`].
    pub fn open(u: &HttpOutputUrl, stats: Arc<IoStats>) -> IoResult<HttpOutput> {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|(_, w)| w.strong_count() > 0);
        let shared_one = if u.addr.port() == 0 {
            None
        } else {
            reg.iter()
                .find(|(a, _)| *a == u.addr)
                .and_then(|(_, w)| w.upgrade())
        };
        let listener = match shared_one {
            Some(l) => l,
            None => {
                let started = Listener::start(u)?;
                let key = started.key;
                let l = Arc::new(Mutex::new(started));
                reg.push((key, Arc::downgrade(&l)));
                l
            }
        };
        let (tx, _) = broadcast::channel(RING_CHUNKS);
        let local = {
            let l = listener.lock().unwrap_or_else(|e| e.into_inner());
            let mut paths = l.shared.paths.lock().unwrap_or_else(|e| e.into_inner());
            if paths.contains_key(&u.path) {
                return Err(IoError::HttpPathTaken {
                    url: u.url.clone(),
                    addr: l.shared.local,
                    path: u.path.clone(),
                });
            }
            paths.insert(
                u.path.clone(),
                Arc::new(Feed {
                    tx: tx.clone(),
                    counters: Arc::new(FeedCounters {
                        stats: stats.clone(),
                        clients: AtomicUsize::new(0),
                        max_clients: u.max_clients,
                        url: u.url.clone(),
                    }),
                }),
            );
            l.shared.local
        };
        drop(reg);
        tracing::info!(listen = %local, path = %u.path, max_clients = u.max_clients,
            "HTTP-TS output");
        Ok(HttpOutput {
            url: u.url.clone(),
            path: u.path.clone(),
            listener,
            tx,
            buf: BytesMut::with_capacity(CHUNK),
            held_since: None,
            stats,
            local,
        })
    }

    /// The address the listener is bound to (the free port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Take whole packets for every client; never blocks. A chunk goes out when full or
    /// when its oldest packet has waited [`MAX_HOLD`].
    pub fn write(&mut self, mut bytes: &[u8]) -> IoResult<()> {
        IoStats::add(
            &self.stats.packets_out,
            (bytes.len() / TS_PACKET_SIZE) as u64,
        );
        // the stream itself, as every output counts it (the channel's output bitrate)
        IoStats::add(&self.stats.bytes_out, bytes.len() as u64);
        if bytes.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        self.held_since.get_or_insert(now);
        while !bytes.is_empty() {
            let room = CHUNK - self.buf.len();
            let (now_part, rest) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now_part);
            bytes = rest;
            if self.buf.len() >= CHUNK {
                self.send();
            }
        }
        if self
            .held_since
            .is_some_and(|t| now.saturating_duration_since(t) >= MAX_HOLD)
        {
            self.send();
        }
        Ok(())
    }

    /// Send the partial chunk now.
    pub fn flush(&mut self) -> IoResult<()> {
        self.send();
        Ok(())
    }

    /// Stop feeding this path and wait (at most [`LINGER`]) until its clients have taken
    /// what was queued for them and closed.
    fn linger(&mut self, counters: Option<Arc<FeedCounters>>) {
        self.send();
        // the only sender left: dropping it ends each client once it has read the ring
        drop(std::mem::replace(&mut self.tx, broadcast::channel(1).0));
        let Some(c) = counters else { return };
        let end = Instant::now() + LINGER;
        while c.clients.load(Relaxed) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn send(&mut self) {
        self.held_since = None;
        if self.buf.is_empty() {
            return;
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        // no client: nothing to do (the chunk is dropped with its last reference)
        let _ = self.tx.send(chunk);
    }
}

impl Drop for HttpOutput {
    fn drop(&mut self) {
        let counters = {
            let l = self.listener.lock().unwrap_or_else(|e| e.into_inner());
            let feed = l
                .shared
                .paths
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.path);
            feed.map(|f| f.counters.clone())
        };
        // outside every lock: the clients go on meanwhile (and new ones get 404)
        self.linger(counters);
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        let mut l = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        let last = l
            .shared
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if last {
            // under the registry's lock, so an output opened meanwhile binds a free port
            let key = l.key;
            reg.retain(|(a, w)| !(*a == key && w.ptr_eq(&Arc::downgrade(&self.listener))));
            l.close();
        }
    }
}

/// One connection: read the request head, then answer or stream.
async fn serve(shared: Arc<Shared>, mut sock: TcpStream, peer: SocketAddr, mut hs: Handshake) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let (method, path) = loop {
        match parse_request(&buf[..len]) {
            Ok(Some((head, _))) => break (head.method, head.path.to_owned()),
            Ok(None) => {}
            Err(e) => {
                let n = shared.stats.bad_requests.fetch_add(1, Relaxed) + 1;
                if shared.log_bad.due() {
                    tracing::warn!(%peer, error = %e, bad_requests = n,
                        listen = %shared.local, "HTTP-TS: bad request refused");
                }
                let (code, reason) = e.status();
                answer(&mut sock, code, reason, &e.to_string()).await;
                return;
            }
        }
        match sock.read(&mut buf[len..]).await {
            // gone before asking: nothing to answer
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    };
    hs.done();
    let feed = shared
        .paths
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&path)
        .cloned();
    let Some(feed) = feed else {
        shared.stats.not_found.fetch_add(1, Relaxed);
        answer(&mut sock, 404, "Not Found", "no stream at this path").await;
        return;
    };
    let c = feed.counters.clone();
    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(CLIENT_SEND_BUFFER);
    if c.clients.fetch_add(1, Relaxed) >= c.max_clients {
        c.clients.fetch_sub(1, Relaxed);
        let n = c.stats.clients_refused.fetch_add(1, Relaxed) + 1;
        if shared.log_bad.due() {
            tracing::warn!(%peer, output = %c.url, max_clients = c.max_clients,
                clients_refused = n, "HTTP-TS: max_clients reached; refusing (503)");
        }
        answer(
            &mut sock,
            503,
            "Service Unavailable",
            "too many clients on this stream",
        )
        .await;
        return;
    }
    // subscribe before the head goes out, so the client's first chunk is the next one
    let mut rx = feed.tx.subscribe();
    // the sender lives in the output only: when it closes, recv() ends this stream
    drop(feed);
    let _slot = ClientSlot(c.clone());
    c.stats.clients_accepted.fetch_add(1, Relaxed);
    tracing::debug!(%peer, output = %c.url, "HTTP-TS client");
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache\r\n\
                 Connection: close\r\nServer: castmux\r\n\r\n";
    if !matches!(
        tokio::time::timeout(WRITE_STALL, sock.write_all(head)).await,
        Ok(Ok(()))
    ) || method == Method::Head
    {
        return;
    }
    loop {
        let chunk = match rx.recv().await {
            Ok(chunk) => chunk,
            Err(broadcast::error::RecvError::Closed) => break,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                dropped_slow(&shared, &c, &sock, peer, &format!("{missed} chunks behind"));
                break;
            }
        };
        match tokio::time::timeout(WRITE_STALL, sock.write_all(&chunk)).await {
            Ok(Ok(())) => IoStats::add(&c.stats.clients_bytes_out, chunk.len() as u64),
            // the client went away
            Ok(Err(_)) => break,
            Err(_) => {
                dropped_slow(&shared, &c, &sock, peer, "its socket took nothing for 5 s");
                break;
            }
        }
    }
}

/// Count and log a slow client; its connection is then reset, not closed: what its
/// socket still holds would otherwise trickle out at the client's pace, holding kernel
/// memory, and the client would take the gap for a clean end.
fn dropped_slow(shared: &Shared, c: &FeedCounters, sock: &TcpStream, peer: SocketAddr, why: &str) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
    let n = c.stats.clients_dropped_slow.fetch_add(1, Relaxed) + 1;
    if shared.log_slow.due() {
        tracing::warn!(%peer, output = %c.url, why, clients_dropped_slow = n,
            "HTTP-TS: client reads slower than the stream; dropped");
    }
}

/// A streaming client's place in its path's count, given back when it ends.
struct ClientSlot(Arc<FeedCounters>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Relaxed);
        self.0.stats.clients_gone.fetch_add(1, Relaxed);
    }
}

/// A short answer with a body, then the connection is closed (bounded in time).
async fn answer(sock: &mut TcpStream, code: u16, reason: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\nServer: castmux\r\n\r\n{body}\n",
        body.len() + 1
    );
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        sock.write_all(text.as_bytes()).await?;
        sock.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::OutputUrl;
    use std::io::{Read, Write};

    fn url(s: &str) -> HttpOutputUrl {
        match OutputUrl::parse(s).unwrap() {
            OutputUrl::Http(u) => u,
            other => panic!("{other:?}"),
        }
    }

    fn status(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).unwrap();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[test]
    fn paths_share_a_listener_and_a_path_is_served_once() {
        let a = HttpOutput::open(&url("http://127.0.0.1:0/a"), Arc::default()).unwrap();
        let addr = a.local_addr();
        let b = HttpOutput::open(&url(&format!("http://{addr}/b")), Arc::default()).unwrap();
        assert_eq!(b.local_addr(), addr);
        let e = HttpOutput::open(
            &url(&format!("http://{addr}/a?max_clients=3")),
            Arc::default(),
        )
        .unwrap_err();
        assert!(matches!(e, IoError::HttpPathTaken { .. }), "{e}");
        assert!(e.to_string().contains("/a is already served"), "{e}");
        assert_eq!(status(addr, "/b"), "HTTP/1.1 200");
        assert_eq!(status(addr, "/a?x=1"), "HTTP/1.1 200");
        assert_eq!(status(addr, "/c"), "HTTP/1.1 404");
        drop(a);
        // /a is gone, /b still served: the listener lives while a path does
        assert_eq!(status(addr, "/a"), "HTTP/1.1 404");
        assert_eq!(status(addr, "/b"), "HTTP/1.1 200");
        drop(b);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "closed with its last path"
        );
        // and the address can be served again at once
        let again = HttpOutput::open(&url(&format!("http://{addr}/a")), Arc::default()).unwrap();
        assert_eq!(status(again.local_addr(), "/a"), "HTTP/1.1 200");
    }
}
