//! SRT input and output (srt-tokio), bridged to the data path.
//!
//! Each SRT endpoint gets its own thread running a current-thread tokio
//! runtime that owns the socket. An output hands reusable batch buffers to
//! that thread over a bounded channel (a return channel brings them back; at
//! most [`SrtConfig::queue_batches`] exist). An input shares a pair of
//! swapped byte buffers with it (bounded by [`SrtConfig::input_buffer`]).
//! Neither side ever blocks on the other: overflow is dropped and counted.
//!
//! Messages carry 7 TS packets (1316 bytes), as srt-live-transmit and
//! ffmpeg send them. srt-tokio's default send buffer (46,592 bytes, about 32
//! packets) drops data above ~5 Mbit/s; we raise it (and the receive and UDP
//! buffers) through [`SrtConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use srt_tokio::options::ByteCount;
use srt_tokio::{SrtSocket, SrtSocketBuilder};
use tokio::sync::oneshot;

use super::batch::{PacketBatch, TS_PACKET_SIZE};
use super::bridge::{BridgeReader, ByteBridge};
use super::error::{IoError, IoResult};
use super::stats::IoStats;
use super::url::{SrtMode, SrtUrl};
use super::ReadStatus;

/// Payload bytes per SRT message: 7 TS packets.
pub const SRT_MESSAGE: usize = 7 * TS_PACKET_SIZE;
/// Largest SRT live payload (SRTO_PAYLOADSIZE maximum).
pub const SRT_MAX_MESSAGE: usize = 1456;

/// SRT tuning shared by inputs and outputs.
#[derive(Debug, Clone)]
pub struct SrtConfig {
    /// How long a caller waits for the handshake. Default 3 s.
    pub connect_timeout: Duration,
    /// SRT send buffer (SRTO_SNDBUF) in bytes. Default 12 MB (8192 packets),
    /// srt-tokio's own default is far too small for TS.
    pub send_buffer: u64,
    /// SRT receive buffer (SRTO_RCVBUF) in bytes. Default 12 MB.
    pub recv_buffer: u64,
    /// UDP socket buffers under SRT. Default 4 MB.
    pub udp_buffer: u64,
    /// Output: batches in flight between the data path and the SRT thread. Default 256.
    pub queue_batches: usize,
    /// How long a silent peer is kept before the connection counts as lost. Default 5 s.
    pub peer_idle_timeout: Duration,
    /// Input: bytes the SRT thread may gather before the data path reads
    /// them. Default 4 MiB (about 1 s at 30 Mbit/s).
    pub input_buffer: usize,
}

impl Default for SrtConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            send_buffer: 8192 * 1500,
            recv_buffer: 8192 * 1500,
            udp_buffer: 4 * 1024 * 1024,
            queue_batches: 256,
            input_buffer: 4 * 1024 * 1024,
            peer_idle_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the SRT thread stopped, for the data path's error.
type Closed = Arc<Mutex<Option<String>>>;

fn set_closed(closed: &Closed, reason: String) {
    if let Ok(mut c) = closed.lock() {
        c.get_or_insert(reason);
    }
}

fn closed_reason(closed: &Closed) -> String {
    closed
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .unwrap_or_else(|| "connection closed".to_owned())
}

fn builder(u: &SrtUrl, cfg: &SrtConfig) -> SrtSocketBuilder {
    let cfg = cfg.clone();
    let b = SrtSocket::builder().latency(u.latency).set(move |o| {
        o.connect.timeout = cfg.connect_timeout;
        o.session.peer_idle_timeout = cfg.peer_idle_timeout;
        o.sender.buffer_size = ByteCount(cfg.send_buffer);
        o.receiver.buffer_size = ByteCount(cfg.recv_buffer);
        o.connect.udp_send_buffer_size = ByteCount(cfg.udp_buffer);
        o.connect.udp_recv_buffer_size = ByteCount(cfg.udp_buffer);
    });
    match &u.passphrase {
        // Length checked when the URL was parsed, so this cannot panic.
        Some(p) => b.encryption(16, p.clone()),
        None => b,
    }
}

fn resolve(u: &SrtUrl) -> IoResult<SocketAddr> {
    let host = if u.host.is_empty() {
        "0.0.0.0"
    } else {
        u.host.as_str()
    };
    (host, u.port)
        .to_socket_addrs()
        .map_err(|e| IoError::Resolve {
            url: u.url.clone(),
            host: u.host.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| IoError::Resolve {
            url: u.url.clone(),
            host: u.host.clone(),
            reason: "no address".to_owned(),
        })
}

/// Bind the listener's UDP socket ourselves so bind errors surface at open
/// and port 0 works; returns a std socket to hand to tokio.
fn bind_listener(u: &SrtUrl, addr: SocketAddr, cfg: &SrtConfig) -> IoResult<std::net::UdpSocket> {
    let sock_err = |option, source| IoError::SocketOption {
        url: u.url.clone(),
        option,
        source,
    };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| sock_err("socket()", e))?;
    let _ = s.set_recv_buffer_size(cfg.udp_buffer as usize);
    let _ = s.set_send_buffer_size(cfg.udp_buffer as usize);
    s.set_nonblocking(true)
        .map_err(|e| sock_err("O_NONBLOCK", e))?;
    s.bind(&SockAddr::from(addr))
        .map_err(|source| IoError::Bind {
            url: u.url.clone(),
            addr,
            source,
        })?;
    Ok(s.into())
}

/// Connect (caller) or accept one caller (listener), honouring `shutdown`.
/// Reports the local address on `ready` as soon as it is known.
async fn establish(
    u: &SrtUrl,
    cfg: &SrtConfig,
    ready: &SyncSender<IoResult<SocketAddr>>,
    shutdown: &mut oneshot::Receiver<()>,
) -> Option<SrtSocket> {
    let fail = |reason: String| IoError::SrtConnect {
        url: u.url.clone(),
        reason,
    };
    let addr = match resolve(u) {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    match u.mode {
        SrtMode::Caller => {
            let call = builder(u, cfg).call(addr, u.stream_id.as_deref());
            tokio::select! {
                _ = &mut *shutdown => None,
                res = call => match res {
                    Ok(sock) => {
                        let _ = ready.send(Ok(addr));
                        Some(sock)
                    }
                    Err(e) => {
                        let _ = ready.send(Err(fail(format!("cannot reach listener {addr}: {e}"))));
                        None
                    }
                },
            }
        }
        SrtMode::Listener => {
            let std_sock = match bind_listener(u, addr, cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return None;
                }
            };
            let local = std_sock.local_addr().unwrap_or(addr);
            let tokio_sock = match tokio::net::UdpSocket::from_std(std_sock) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(fail(e.to_string())));
                    return None;
                }
            };
            let _ = ready.send(Ok(local));
            let listen = builder(u, cfg).local(local).socket(tokio_sock).listen();
            tokio::select! {
                _ = &mut *shutdown => None,
                res = listen => match res {
                    Ok(sock) => Some(sock),
                    Err(e) => {
                        tracing::warn!(url = %u.url, error = %e, "SRT listener failed");
                        None
                    }
                },
            }
        }
    }
}

/// Start the SRT thread and wait until it is bound (listener) or connected (caller).
fn spawn<F>(
    u: &SrtUrl,
    cfg: &SrtConfig,
    what: &str,
    body: F,
) -> IoResult<(JoinHandle<()>, oneshot::Sender<()>, SocketAddr)>
where
    F: FnOnce(
            SrtSocket,
            oneshot::Receiver<()>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
        + Send
        + 'static,
{
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let url = u.clone();
    let config = cfg.clone();
    let thread = std::thread::Builder::new()
        .name(format!("srt-{what}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(IoError::Thread {
                        url: url.url.clone(),
                        source: e,
                    }));
                    return;
                }
            };
            rt.block_on(async move {
                if let Some(sock) = establish(&url, &config, &ready_tx, &mut stop_rx).await {
                    tracing::info!(url = %url.url, "SRT connected");
                    body(sock, stop_rx).await;
                }
            });
        })
        .map_err(|source| IoError::Thread {
            url: u.url.clone(),
            source,
        })?;
    let wait = cfg.connect_timeout + Duration::from_secs(2);
    match ready_rx.recv_timeout(wait) {
        Ok(Ok(addr)) => Ok((thread, stop_tx, addr)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(IoError::SrtConnect {
            url: u.url.clone(),
            reason: format!("no answer within {wait:?}"),
        }),
    }
}

/// An SRT source of TS.
///
/// The SRT thread appends each message to a [`ByteBridge`] (bounded by
/// [`SrtConfig::input_buffer`]; overflow is dropped and counted); the data path reads it
/// through a [`BridgeReader`].
#[derive(Debug)]
pub struct SrtInput {
    url: String,
    reader: BridgeReader,
    stats: Arc<IoStats>,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    _thread: JoinHandle<()>,
}

impl SrtInput {
    /// The counters this input updates.
    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }

    /// Connect or start listening. A listener returns at once (packets
    /// arrive when a caller connects); a caller returns once connected.
    pub fn open(u: &SrtUrl, cfg: &SrtConfig, stats: Arc<IoStats>) -> IoResult<Self> {
        let bridge = ByteBridge::new(cfg.input_buffer.max(SRT_MAX_MESSAGE)).map_err(|source| {
            IoError::Thread {
                url: u.url.clone(),
                source,
            }
        })?;
        let (thread_bridge, thread_stats) = (bridge.clone(), stats.clone());
        let (thread, stop, addr) = spawn(u, cfg, "in", move |sock, stop| {
            Box::pin(input_task(sock, stop, thread_bridge, thread_stats))
        })?;
        Ok(Self {
            url: u.url.clone(),
            reader: BridgeReader::new(bridge),
            stats,
            addr,
            _stop: stop,
            _thread: thread,
        })
    }

    /// What to wait on for its bytes (the head-end's epoll).
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.reader.wake_fd()
    }

    /// Local address (listener) or peer address (caller).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Fill `batch` (cleared first), waiting up to `timeout` for the first bytes.
    pub fn read_batch(
        &mut self,
        batch: &mut PacketBatch,
        timeout: Duration,
    ) -> IoResult<ReadStatus> {
        self.reader
            .read_batch(batch, timeout, &self.stats)
            .map_err(|reason| IoError::SrtClosed {
                url: self.url.clone(),
                reason,
            })
    }
}

async fn input_task(
    mut sock: SrtSocket,
    mut stop: oneshot::Receiver<()>,
    bridge: Arc<ByteBridge>,
    stats: Arc<IoStats>,
) {
    let reason = loop {
        let item = tokio::select! {
            _ = &mut stop => break "input closed".to_owned(),
            item = sock.next() => item,
        };
        let data = match item {
            Some(Ok((_, data))) => data,
            Some(Err(e)) => break e.to_string(),
            None => break "the SRT peer closed the connection".to_owned(),
        };
        IoStats::add(&stats.datagrams_in, 1);
        IoStats::add(&stats.bytes_in, data.len() as u64);
        bridge.push(&data, &stats);
    };
    bridge.close(reason);
    let _ = sock.close().await;
}

/// An SRT destination of TS.
#[derive(Debug)]
pub struct SrtOutput {
    url: String,
    tx: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    empties: Receiver<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    stats: Arc<IoStats>,
    closed: Closed,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SrtOutput {
    /// Connect (caller) or start listening (listener; batches written before
    /// a caller connects are dropped and counted in `queue_drops`).
    pub fn open(u: &SrtUrl, cfg: &SrtConfig, stats: Arc<IoStats>) -> IoResult<Self> {
        let queue = cfg.queue_batches.max(2);
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(queue);
        let (empties_tx, empties_rx) = mpsc::channel::<Vec<u8>>();
        let closed: Closed = Arc::default();
        let (thread_closed, thread_stats) = (closed.clone(), stats.clone());
        // the receiver holds packets for its latency before releasing them, and drops what
        // it holds when the connection closes: linger that long (plus a round trip) first
        let linger = u.latency + Duration::from_millis(200);
        let (thread, stop, addr) = spawn(u, cfg, "out", move |sock, stop| {
            Box::pin(output_task(
                sock,
                stop,
                rx,
                empties_tx,
                thread_stats,
                thread_closed,
                linger,
            ))
        })?;
        Ok(Self {
            url: u.url.clone(),
            tx: Some(tx),
            empties: empties_rx,
            spare: (0..queue).map(|_| Vec::new()).collect(),
            stats,
            closed,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Local address (listener) or peer address (caller).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queue whole packets for sending; never blocks. A full queue drops the
    /// batch (counted); a closed connection is an error.
    pub fn write(&mut self, bytes: &[u8]) -> IoResult<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        while let Ok(buf) = self.empties.try_recv() {
            self.spare.push(buf);
        }
        let Some(tx) = &self.tx else {
            return Err(self.closed_err());
        };
        let Some(mut buf) = self.spare.pop() else {
            IoStats::add(&self.stats.queue_drops, 1);
            return Ok(());
        };
        buf.clear();
        buf.extend_from_slice(bytes);
        match tx.try_send(buf) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(buf)) => {
                IoStats::add(&self.stats.queue_drops, 1);
                self.spare.push(buf);
                Ok(())
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.tx = None;
                Err(self.closed_err())
            }
        }
    }

    fn closed_err(&self) -> IoError {
        IoError::Closed {
            url: self.url.clone(),
            reason: closed_reason(&self.closed),
        }
    }

    /// Send what is queued, close the connection and wait (at most `limit`)
    /// for the SRT thread to finish.
    pub fn close(&mut self, limit: Duration) {
        self.tx = None;
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + limit;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !thread.is_finished() {
            // Stop waiting for a peer or for the send queue; the thread ends by itself.
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            return;
        }
        let _ = thread.join();
    }
}

impl Drop for SrtOutput {
    fn drop(&mut self) {
        // Give queued batches a moment to leave, without holding up shutdown long.
        self.close(Duration::from_millis(500));
    }
}

async fn output_task(
    mut sock: SrtSocket,
    mut stop: oneshot::Receiver<()>,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    empties: mpsc::Sender<Vec<u8>>,
    stats: Arc<IoStats>,
    closed: Closed,
    linger: Duration,
) {
    loop {
        let buf = tokio::select! {
            _ = &mut stop => break,
            buf = rx.recv() => match buf {
                Some(buf) => buf,
                None => {
                    // the data path closed the output: let the last packets be delivered
                    tokio::select! {
                        _ = &mut stop => {}
                        _ = tokio::time::sleep(linger) => {}
                    }
                    break;
                }
            },
            item = sock.next() => match item {
                // A sender ignores what a peer might send back.
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    set_closed(&closed, e.to_string());
                    break;
                }
                None => {
                    set_closed(&closed, "the SRT peer closed the connection".to_owned());
                    break;
                }
            },
        };
        // Feed this batch and any others already queued, then flush once.
        let mut next = Some(buf);
        let mut failed = None;
        let (mut messages, mut bytes) = (0u64, 0u64);
        while let Some(buf) = next.take() {
            // One allocation per batch; messages are slices of it.
            let all = Bytes::copy_from_slice(&buf);
            let _ = empties.send(buf);
            let now = Instant::now();
            for start in (0..all.len()).step_by(SRT_MESSAGE) {
                let end = (start + SRT_MESSAGE).min(all.len());
                if let Err(e) = sock.feed((now, all.slice(start..end))).await {
                    failed = Some(e);
                    break;
                }
                messages += 1;
            }
            bytes += all.len() as u64;
            if failed.is_some() {
                break;
            }
            next = rx.try_recv().ok();
        }
        if failed.is_none() {
            if let Err(e) = sock.flush().await {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            IoStats::add(&stats.send_errors, 1);
            set_closed(&closed, e.to_string());
            break;
        }
        IoStats::add(&stats.datagrams_out, messages);
        IoStats::add(&stats.bytes_out, bytes);
        IoStats::add(&stats.packets_out, bytes / TS_PACKET_SIZE as u64);
    }
    let _ = sock.close().await;
}
