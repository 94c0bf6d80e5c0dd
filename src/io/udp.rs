//! UDP input and output: unicast and multicast (any-source and SSM), IPv4
//! and IPv6, batched with recvmmsg/sendmmsg.
//!
//! Receive: up to [`RECV_DATAGRAMS`] datagrams per syscall land in one
//! preallocated slab; each datagram is unwrapped if it is RTP and fed
//! through the resynchroniser (which copies aligned packets straight into
//! the caller's batch). Send: `pkt` packets per datagram, a write's datagrams
//! in one syscall where it can (UDP GSO: up to [`GSO_SEGMENTS`] datagrams the
//! kernel cuts; else sendmmsg, up to [`SEND_DATAGRAMS`]); a tail of fewer than
//! `pkt` packets waits for the next write or `flush()`.
//!
//! When the kernel (or a seccomp filter) refuses GSO, recvmmsg or sendmmsg,
//! the socket steps down (GSO to sendmmsg, sendmmsg or recvmmsg to one
//! recv/send per datagram) for the rest of its life.
//!
//! nix's `MultiHeaders` holds raw pointers and is not `Send`; it lives in a
//! thread-local, built once per thread, so sockets stay `Send` and nothing
//! is allocated per syscall.

use std::cell::RefCell;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::batch::{PacketBatch, TS_PACKET_SIZE};
use super::error::{IoError, IoResult};
use super::rtp::{parse_rtp_ts, RtpTracker};
use super::stats::IoStats;
use super::sync::Resync;
use super::url::{UdpInputUrl, UdpOutputUrl};
use super::{poll_timeout, ReadStatus};

/// Datagrams per recvmmsg call.
pub const RECV_DATAGRAMS: usize = 64;
/// Bytes reserved per received datagram; longer ones are truncated (and counted).
pub const RECV_SLOT: usize = 2048;
/// Datagrams per sendmmsg call.
pub const SEND_DATAGRAMS: usize = 64;
/// Datagrams per UDP GSO send: the kernel takes at most 64 segments and 64 KB
/// (49 datagrams of 7 packets).
pub const GSO_SEGMENTS: usize = 32;

/// How a UDP output hands datagrams to the kernel; it steps down once when refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendMode {
    /// Several datagrams per sendmsg, cut by the kernel (UDP_SEGMENT, Linux 4.18).
    Gso,
    /// sendmmsg.
    Batched,
    /// One send per datagram.
    Single,
}

thread_local! {
    // Receive headers need real address storage: the kernel writes the
    // source address length back into each header, and nix does not reset
    // it between calls, so a zero-sized placeholder faults on the next call.
    static RECV_HEADERS: RefCell<MultiHeaders<SockaddrStorage>> =
        RefCell::new(MultiHeaders::preallocate(RECV_DATAGRAMS, None));
    static SEND_HEADERS: RefCell<MultiHeaders<()>> =
        RefCell::new(MultiHeaders::preallocate(SEND_DATAGRAMS, None));
}

/// Errors that mean "this syscall is not available here", not "this socket is broken".
fn refused(e: Errno) -> bool {
    matches!(
        e,
        Errno::ENOSYS | Errno::EPERM | Errno::EACCES | Errno::EOPNOTSUPP
    )
}

/// Errors of a UDP GSO send that mean "not on this socket's route": fall back to sendmmsg.
fn gso_refused(e: Errno) -> bool {
    matches!(
        e,
        Errno::EINVAL | Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP | Errno::EMSGSIZE
    ) || refused(e)
}

/// Settings for a UDP input.
#[derive(Debug, Clone)]
pub struct UdpInputConfig {
    /// SO_RCVBUF to ask for; the kernel may cap it at net.core.rmem_max.
    pub recv_buffer: usize,
    /// Use recv instead of recvmmsg (tests; kernels without recvmmsg).
    pub force_single: bool,
}

/// A bound (and, for groups, joined) UDP socket with its receive slab.
#[derive(Debug)]
pub struct UdpInput {
    url: String,
    socket: Socket,
    local: SocketAddr,
    slab: Vec<u8>,
    /// Payload range (after RTP unwrapping) of each received datagram.
    ranges: Box<[(usize, usize); RECV_DATAGRAMS]>,
    count: usize,
    next: usize,
    resync: Resync,
    rtp: RtpTracker,
    batched: bool,
    /// Datagrams the next recvmmsg asks for (one of [`RECV_ASK`]), from what the last one
    /// brought: a head-end channel's read brings one or two, and every header asked for
    /// is set up before the call (64 of them cost about a microsecond).
    ask: usize,
    stats: Arc<IoStats>,
}

/// The sizes a recvmmsg asks for, smallest first; the last is [`RECV_DATAGRAMS`].
const RECV_ASK: [usize; 3] = [4, 16, RECV_DATAGRAMS];

/// What to ask for after a call that asked for `asked` and got `got`: more when it filled
/// what it asked for, else the smallest that would have held it.
fn next_ask(asked: usize, got: usize) -> usize {
    let need = if got >= asked { got + 1 } else { got };
    RECV_ASK
        .into_iter()
        .find(|&a| a >= need)
        .unwrap_or(RECV_DATAGRAMS)
}

fn sock_err<'a>(url: &'a str, option: &'static str) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError::SocketOption {
        url: url.to_owned(),
        option,
        source,
    }
}

/// Resolve an IPv6 interface given as a name or an index.
fn ipv6_ifindex(url: &str, iface: Option<&str>) -> IoResult<u32> {
    let Some(name) = iface else { return Ok(0) };
    if let Ok(i) = name.parse::<u32>() {
        return Ok(i);
    }
    nix::net::if_::if_nametoindex(name).map_err(|_| IoError::NoSuchInterface {
        url: url.to_owned(),
        iface: name.to_owned(),
    })
}

fn ipv4_iface(url: &str, iface: Option<&str>) -> IoResult<Ipv4Addr> {
    match iface {
        None => Ok(Ipv4Addr::UNSPECIFIED),
        Some(s) => s.parse().map_err(|_| IoError::NoSuchInterface {
            url: url.to_owned(),
            iface: s.to_owned(),
        }),
    }
}

impl UdpInput {
    /// The counters this input updates.
    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }

    /// Bind, size the receive buffer and join the group (if any).
    pub fn open(u: &UdpInputUrl, cfg: &UdpInputConfig, stats: Arc<IoStats>) -> IoResult<Self> {
        let url = u.url.as_str();
        let socket = Socket::new(
            Domain::for_address(u.addr),
            Type::DGRAM,
            Some(Protocol::UDP),
        )
        .map_err(sock_err(url, "socket()"))?;
        let multicast = u.is_multicast();
        if multicast {
            // Several receivers of one group on one host is normal.
            socket
                .set_reuse_address(true)
                .map_err(sock_err(url, "SO_REUSEADDR"))?;
            socket
                .set_reuse_port(true)
                .map_err(sock_err(url, "SO_REUSEPORT"))?;
        }
        if u.addr.is_ipv6() {
            // Keep [::]:PORT from also taking IPv4 traffic meant for another socket.
            let _ = socket.set_only_v6(true);
        }
        if let Err(e) = socket.set_recv_buffer_size(cfg.recv_buffer) {
            tracing::debug!(url, error = %e, "SO_RCVBUF not set");
        }
        // Binding the group address (Linux) keeps other groups on the port out.
        socket
            .bind(&SockAddr::from(u.addr))
            .map_err(|source| IoError::Bind {
                url: url.to_owned(),
                addr: u.addr,
                source,
            })?;
        if multicast {
            join(&socket, u)?;
        }
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(u.addr);
        Ok(Self {
            url: url.to_owned(),
            socket,
            local,
            slab: vec![0u8; RECV_DATAGRAMS * RECV_SLOT],
            ranges: Box::new([(0, 0); RECV_DATAGRAMS]),
            count: 0,
            next: 0,
            resync: Resync::new(),
            rtp: RtpTracker::default(),
            batched: !cfg.force_single,
            ask: RECV_ASK[0],
            stats,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The socket, to wait on (epoll) for datagrams.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Fill `batch` (cleared first). Waits up to `timeout` for the first
    /// datagram, then takes only what is already queued.
    pub fn read_batch(
        &mut self,
        batch: &mut PacketBatch,
        timeout: Duration,
    ) -> IoResult<ReadStatus> {
        batch.clear();
        // no clock read for a non-blocking call (the head-end's, thousands a second)
        let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
        // the last receive of this call found the socket empty (a short recvmmsg): asking
        // again would only get EAGAIN, so a batch with packets is done
        let mut drained = false;
        loop {
            self.drain(batch);
            if batch.is_full() || (drained && !batch.is_empty()) {
                break;
            }
            let wait = match deadline {
                Some(d) if batch.is_empty() => d.saturating_duration_since(Instant::now()),
                _ => Duration::ZERO,
            };
            let (got, asked) = self.receive(wait)?;
            drained = got < asked;
            if got == 0 {
                if !batch.is_empty() {
                    break;
                }
                if deadline.is_none_or(|d| Instant::now() >= d) {
                    return Ok(ReadStatus::TimedOut);
                }
            }
        }
        IoStats::add(&self.stats.packets_in, batch.len() as u64);
        Ok(ReadStatus::Packets(batch.len()))
    }

    /// Move pending datagram payloads into `batch`.
    fn drain(&mut self, batch: &mut PacketBatch) {
        while self.next < self.count && !batch.is_full() {
            let (start, end) = self.ranges[self.next];
            let base = self.next * RECV_SLOT;
            let used = self
                .resync
                .push(&self.slab[base + start..base + end], batch, &self.stats);
            self.ranges[self.next].0 += used;
            if start + used == end {
                self.next += 1;
            }
        }
    }

    /// Receive what is queued (waiting up to `wait` for the first datagram).
    /// Returns the number of datagrams now pending and how many were asked for (fewer
    /// than asked: the socket is empty).
    fn receive(&mut self, wait: Duration) -> IoResult<(usize, usize)> {
        debug_assert!(self.next >= self.count);
        self.count = 0;
        self.next = 0;
        let mut lens = [0usize; RECV_DATAGRAMS];
        let mut truncated = [false; RECV_DATAGRAMS];
        let (mut n, mut asked) = self.recv_nowait(&mut lens, &mut truncated)?;
        if n == 0 && !wait.is_zero() {
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(wait)) {
                Ok(0) | Err(Errno::EINTR) => return Ok((0, asked)),
                Ok(_) => {}
                Err(e) => return Err(self.read_err(e)),
            }
            (n, asked) = self.recv_nowait(&mut lens, &mut truncated)?;
        }
        let mut bytes = 0u64;
        let mut trunc = 0u64;
        let mut gaps = 0u64;
        for i in 0..n {
            let len = lens[i].min(RECV_SLOT);
            bytes += len as u64;
            if truncated[i] || lens[i] > RECV_SLOT {
                trunc += 1;
            }
            let dgram = &self.slab[i * RECV_SLOT..i * RECV_SLOT + len];
            self.ranges[i] = match parse_rtp_ts(dgram) {
                Some(h) => {
                    gaps += u64::from(self.rtp.observe(&h));
                    (h.payload_offset, h.payload_end)
                }
                None => (0, len),
            };
        }
        IoStats::add(&self.stats.datagrams_in, n as u64);
        IoStats::add(&self.stats.bytes_in, bytes);
        IoStats::add(&self.stats.truncated_datagrams, trunc);
        IoStats::add(&self.stats.rtp_gaps, gaps);
        self.count = n;
        Ok((n, asked))
    }

    fn read_err(&self, e: Errno) -> IoError {
        IoError::Read {
            url: self.url.clone(),
            source: std::io::Error::from(e),
        }
    }

    /// One non-blocking receive round into the slab.
    fn recv_nowait(
        &mut self,
        lens: &mut [usize; RECV_DATAGRAMS],
        truncated: &mut [bool; RECV_DATAGRAMS],
    ) -> IoResult<(usize, usize)> {
        let fd = self.socket.as_raw_fd();
        if self.batched {
            let asked = self.ask;
            let slab = &mut self.slab;
            let res = RECV_HEADERS.with(|h| {
                let headers = &mut h.borrow_mut();
                match asked {
                    4 => recv_into::<4>(fd, headers, slab, lens, truncated),
                    16 => recv_into::<16>(fd, headers, slab, lens, truncated),
                    _ => recv_into::<RECV_DATAGRAMS>(fd, headers, slab, lens, truncated),
                }
            });
            match res {
                Ok(n) => {
                    self.ask = next_ask(asked, n);
                    return Ok((n, asked));
                }
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok((0, asked)),
                Err(e) if refused(e) => {
                    tracing::info!(url = %self.url, error = %e, "recvmmsg refused, using recv");
                    self.batched = false;
                }
                Err(Errno::ECONNREFUSED) => return Ok((0, asked)),
                Err(e) => return Err(self.read_err(e)),
            }
        }
        let mut n = 0;
        while n < RECV_DATAGRAMS {
            let slot = &mut self.slab[n * RECV_SLOT..(n + 1) * RECV_SLOT];
            match nix::sys::socket::recv(fd, slot, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC) {
                Ok(len) => {
                    lens[n] = len;
                    truncated[n] = len > RECV_SLOT;
                    n += 1;
                }
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNREFUSED) => break,
                Err(e) => return Err(self.read_err(e)),
            }
        }
        Ok((n, RECV_DATAGRAMS))
    }
}

/// One recvmmsg of up to `N` datagrams into the first `N` slots of `slab` (only `N`
/// headers are set up).
fn recv_into<const N: usize>(
    fd: std::os::fd::RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    slab: &mut [u8],
    lens: &mut [usize; RECV_DATAGRAMS],
    truncated: &mut [bool; RECV_DATAGRAMS],
) -> nix::Result<usize> {
    let mut slots = slab.chunks_exact_mut(RECV_SLOT);
    let mut iovs: [[IoSliceMut<'_>; 1]; N] = std::array::from_fn(|_| {
        [IoSliceMut::new(
            slots.next().expect("slab holds RECV_DATAGRAMS slots"),
        )]
    });
    let msgs = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
    let mut n = 0;
    for (i, m) in msgs.enumerate() {
        lens[i] = m.bytes;
        truncated[i] = m.flags.contains(MsgFlags::MSG_TRUNC);
        n += 1;
    }
    Ok(n)
}

fn join(socket: &Socket, u: &UdpInputUrl) -> IoResult<()> {
    let url = u.url.as_str();
    let join_err = |source| IoError::Join {
        url: url.to_owned(),
        group: u.addr.ip().to_string(),
        source,
    };
    match (u.addr.ip(), u.source) {
        (IpAddr::V4(group), source) => {
            let iface = ipv4_iface(url, u.iface.as_deref())?;
            // Only this group, even if another socket joined others.
            let _ = socket.set_multicast_all_v4(false);
            match source {
                Some(IpAddr::V4(src)) => socket.join_ssm_v4(&src, &group, &iface).map_err(join_err),
                _ => socket.join_multicast_v4(&group, &iface).map_err(join_err),
            }
        }
        (IpAddr::V6(group), None) => {
            let index = ipv6_ifindex(url, u.iface.as_deref())?;
            socket.join_multicast_v6(&group, index).map_err(join_err)
        }
        (IpAddr::V6(_), Some(_)) => Err(IoError::Unsupported {
            url: url.to_owned(),
            what: "source-specific multicast over IPv6",
            hint: "join the IPv6 group without SOURCE@, or use an IPv4 SSM group",
        }),
    }
}

/// Settings for a UDP output.
#[derive(Debug, Clone)]
pub struct UdpOutputConfig {
    /// SO_SNDBUF to ask for.
    pub send_buffer: usize,
    /// IP_MULTICAST_LOOP: let local receivers of the group see our traffic.
    pub multicast_loop: bool,
    /// Use send instead of sendmmsg (tests; kernels without sendmmsg).
    pub force_single: bool,
}

/// A connected UDP socket that sends `pkt` TS packets per datagram.
#[derive(Debug)]
pub struct UdpOutput {
    url: String,
    socket: Socket,
    dest: SocketAddr,
    datagram: usize,
    tail: Vec<u8>,
    /// Whole datagrams to gather in `tail` before a send (1: send at once); see
    /// [`UdpOutput::set_coalesce`].
    burst: usize,
    /// The longest whole datagrams wait for the burst to fill.
    max_hold: Duration,
    /// When the oldest byte in `tail` came.
    held_since: Option<Instant>,
    mode: SendMode,
    stats: Arc<IoStats>,
    last_warn: Option<Instant>,
    errors_since_warn: u64,
}

impl UdpOutput {
    /// Resolve, connect and set TTL / interface for multicast.
    pub fn open(u: &UdpOutputUrl, cfg: &UdpOutputConfig, stats: Arc<IoStats>) -> IoResult<Self> {
        let url = u.url.as_str();
        let dest = (u.host.as_str(), u.port)
            .to_socket_addrs()
            .map_err(|e| IoError::Resolve {
                url: url.to_owned(),
                host: u.host.clone(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| IoError::Resolve {
                url: url.to_owned(),
                host: u.host.clone(),
                reason: "no address".to_owned(),
            })?;
        let socket = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))
            .map_err(sock_err(url, "socket()"))?;
        if let Err(e) = socket.set_send_buffer_size(cfg.send_buffer) {
            tracing::debug!(url, error = %e, "SO_SNDBUF not set");
        }
        match dest.ip() {
            IpAddr::V4(g) if g.is_multicast() => {
                if let Some(ttl) = u.ttl {
                    socket
                        .set_multicast_ttl_v4(ttl)
                        .map_err(sock_err(url, "IP_MULTICAST_TTL"))?;
                }
                if u.iface.is_some() {
                    let iface = ipv4_iface(url, u.iface.as_deref())?;
                    socket
                        .set_multicast_if_v4(&iface)
                        .map_err(sock_err(url, "IP_MULTICAST_IF"))?;
                }
                socket
                    .set_multicast_loop_v4(cfg.multicast_loop)
                    .map_err(sock_err(url, "IP_MULTICAST_LOOP"))?;
            }
            IpAddr::V6(g) if g.is_multicast() => {
                if let Some(ttl) = u.ttl {
                    socket
                        .set_multicast_hops_v6(ttl)
                        .map_err(sock_err(url, "IPV6_MULTICAST_HOPS"))?;
                }
                if u.iface.is_some() {
                    let index = ipv6_ifindex(url, u.iface.as_deref())?;
                    socket
                        .set_multicast_if_v6(index)
                        .map_err(sock_err(url, "IPV6_MULTICAST_IF"))?;
                }
                socket
                    .set_multicast_loop_v6(cfg.multicast_loop)
                    .map_err(sock_err(url, "IPV6_MULTICAST_LOOP"))?;
            }
            IpAddr::V4(_) => {
                if let Some(ttl) = u.ttl {
                    socket.set_ttl(ttl).map_err(sock_err(url, "IP_TTL"))?;
                }
            }
            IpAddr::V6(_) => {
                if let Some(ttl) = u.ttl {
                    socket
                        .set_unicast_hops_v6(ttl)
                        .map_err(sock_err(url, "IPV6_UNICAST_HOPS"))?;
                }
            }
        }
        socket
            .connect(&SockAddr::from(dest))
            .map_err(|source| IoError::Bind {
                url: url.to_owned(),
                addr: dest,
                source,
            })?;
        let datagram = u.packets_per_datagram.clamp(1, 7) * TS_PACKET_SIZE;
        Ok(Self {
            url: url.to_owned(),
            socket,
            dest,
            datagram,
            tail: Vec::with_capacity(datagram),
            burst: 1,
            max_hold: Duration::ZERO,
            held_since: None,
            mode: if cfg.force_single {
                SendMode::Single
            } else {
                SendMode::Gso
            },
            stats,
            last_warn: None,
            errors_since_warn: 0,
        })
    }

    /// Where datagrams go.
    pub fn peer_addr(&self) -> SocketAddr {
        self.dest
    }

    /// Gather `burst` whole datagrams before sending them together (one GSO send where the
    /// kernel offers it: one pass through the send path instead of `burst`), but never hold
    /// a datagram past `max_hold` when the next write comes; `flush()` sends everything.
    /// `burst` 1 (the default) sends whole datagrams at once. The shared data plane sets
    /// this: many channels at a few Mbit/s each bring a datagram per wake-up.
    pub fn set_coalesce(&mut self, burst: usize, max_hold: Duration) {
        self.burst = burst.clamp(1, GSO_SEGMENTS);
        self.max_hold = max_hold;
        self.tail.reserve((self.burst + 1) * self.datagram);
        // what is held whole goes now when no longer coalescing
        if self.burst == 1 {
            self.write(&[]).ok();
        }
    }

    /// Send whole datagrams now (coalescing: once `burst` of them are held, or the oldest
    /// held is due); keep the rest for the next write. Held bytes are sent from where
    /// they are, with the write's own bytes, in one syscall: no copy of what goes now.
    pub fn write(&mut self, bytes: &[u8]) -> IoResult<()> {
        let held = self.tail.len();
        let whole = (held + bytes.len()) / self.datagram;
        let send = whole >= self.burst
            || (whole > 0 && {
                let now = Instant::now();
                let since = *self.held_since.get_or_insert(now);
                now.duration_since(since) >= self.max_hold
            });
        if !send {
            if held == 0 && !bytes.is_empty() && self.burst > 1 {
                self.held_since = Some(Instant::now());
            }
            self.tail.extend_from_slice(bytes);
            return Ok(());
        }
        let end = whole * self.datagram;
        let mut tail = std::mem::take(&mut self.tail);
        if end <= held {
            self.send_all(&tail[..end], &[]);
            tail.drain(..end);
            tail.extend_from_slice(bytes);
        } else {
            self.send_all(&tail, &bytes[..end - held]);
            tail.clear();
            tail.extend_from_slice(&bytes[end - held..]);
        }
        self.tail = tail;
        self.held_since = (self.burst > 1 && !self.tail.is_empty()).then(Instant::now);
        Ok(())
    }

    /// Send what is held: whole datagrams, then the tail as a short datagram.
    pub fn flush(&mut self) -> IoResult<()> {
        if !self.tail.is_empty() {
            let mut held = std::mem::take(&mut self.tail);
            self.send_all(&held, &[]);
            held.clear();
            self.tail = held;
        }
        self.held_since = None;
        Ok(())
    }

    /// Send `head` then `data` as datagrams of `self.datagram` bytes cut from the two
    /// together (the last may be short), in as few syscalls as the socket allows: one
    /// UDP GSO send for up to [`GSO_SEGMENTS`] datagrams where the kernel offers it, else
    /// sendmmsg, else send. Failures are counted and logged at most once a minute; UDP
    /// has no "closed" to report, so they never stop the stream.
    fn send_all(&mut self, head: &[u8], data: &[u8]) {
        let total = (head.len() + data.len()).div_ceil(self.datagram);
        let mut done = 0;
        while done < total {
            let parts = DatagramParts::new(head, data, self.datagram, done);
            let res = match self.mode {
                SendMode::Gso if total - done > 1 => self.send_gso(parts.take(GSO_SEGMENTS)),
                SendMode::Batched if total - done > 1 => self.send_mmsg(parts.take(SEND_DATAGRAMS)),
                // one datagram: a plain sendmsg, without sendmmsg's headers to build
                _ => self.send_one(parts),
            };
            match res {
                Ok((sent, bytes)) => {
                    IoStats::add(&self.stats.datagrams_out, sent as u64);
                    IoStats::add(&self.stats.bytes_out, bytes as u64);
                    IoStats::add(&self.stats.packets_out, (bytes / TS_PACKET_SIZE) as u64);
                    done += sent;
                }
                Err(Errno::EINTR) => {}
                Err(e) if self.mode == SendMode::Gso && gso_refused(e) => {
                    // this socket's route cannot segment (no checksum offload, an MTU
                    // under the datagram, an old kernel): batch without it from now on
                    tracing::info!(url = %self.url, error = %e, "UDP GSO refused, using sendmmsg");
                    self.mode = SendMode::Batched;
                }
                Err(e) if self.mode != SendMode::Single && refused(e) => {
                    tracing::info!(url = %self.url, error = %e, "sendmmsg refused, using send");
                    self.mode = SendMode::Single;
                }
                Err(e) => {
                    // Drop one datagram and go on with the rest.
                    done += 1;
                    self.send_error(e);
                }
            }
        }
    }

    fn send_error(&mut self, e: Errno) {
        IoStats::add(&self.stats.send_errors, 1);
        self.errors_since_warn += 1;
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            tracing::warn!(url = %self.url, error = %e, dropped = self.errors_since_warn,
                "UDP send failed; datagrams dropped (logged at most once a minute)");
            self.last_warn = Some(now);
            self.errors_since_warn = 0;
        }
    }

    /// One sendmmsg; gives the datagrams and bytes the kernel took.
    fn send_mmsg<'a>(
        &self,
        parts: impl Iterator<Item = [&'a [u8]; 2]>,
    ) -> nix::Result<(usize, usize)> {
        let fd = self.socket.as_raw_fd();
        SEND_HEADERS.with(|h| {
            let mut headers = h.borrow_mut();
            let mut lens = [0usize; SEND_DATAGRAMS];
            let mut n = 0;
            let mut parts = parts.inspect(|[a, b]| {
                lens[n] = a.len() + b.len();
                n += 1;
            });
            let iovs: [[IoSlice<'_>; 2]; SEND_DATAGRAMS] = std::array::from_fn(|_| {
                let [a, b] = parts.next().unwrap_or([&[], &[]]);
                [IoSlice::new(a), IoSlice::new(b)]
            });
            let addrs = [None::<()>; SEND_DATAGRAMS];
            let none: [ControlMessage<'_>; 0] = [];
            let sent = sendmmsg(
                fd,
                &mut headers,
                iovs[..n].iter(),
                addrs,
                none,
                MsgFlags::empty(),
            )?
            .count();
            Ok((sent, lens[..sent].iter().sum()))
        })
    }

    /// One sendmsg of several datagrams that the kernel (or the NIC) cuts at
    /// `self.datagram` bytes (UDP_SEGMENT): one pass through the stack for them all.
    fn send_gso<'a>(
        &self,
        parts: impl Iterator<Item = [&'a [u8]; 2]>,
    ) -> nix::Result<(usize, usize)> {
        let mut iovs = [IoSlice::new(&[]); 2 * GSO_SEGMENTS];
        let (mut n, mut slices, mut bytes) = (0, 0, 0);
        for part in parts {
            for p in part.into_iter().filter(|p| !p.is_empty()) {
                iovs[slices] = IoSlice::new(p);
                slices += 1;
                bytes += p.len();
            }
            n += 1;
        }
        let size = self.datagram as u16;
        let cmsg = [ControlMessage::UdpGsoSegments(&size)];
        let sent = nix::sys::socket::sendmsg::<()>(
            self.socket.as_raw_fd(),
            &iovs[..slices],
            &cmsg,
            MsgFlags::empty(),
            None,
        )?;
        // a datagram socket takes all of it or nothing
        Ok((n, sent.min(bytes)))
    }

    fn send_one<'a>(
        &self,
        mut parts: impl Iterator<Item = [&'a [u8]; 2]>,
    ) -> nix::Result<(usize, usize)> {
        let Some([a, b]) = parts.next() else {
            return Ok((0, 0));
        };
        let iov = [IoSlice::new(a), IoSlice::new(b)];
        let none: [ControlMessage<'_>; 0] = [];
        nix::sys::socket::sendmsg::<()>(
            self.socket.as_raw_fd(),
            &iov,
            &none,
            MsgFlags::empty(),
            None,
        )?;
        Ok((1, a.len() + b.len()))
    }
}

/// The datagrams of `head` followed by `data`, cut every `size` bytes, from the `skip`th
/// on: each as its part in `head` and its part in `data` (either may be empty).
struct DatagramParts<'a> {
    head: &'a [u8],
    data: &'a [u8],
    size: usize,
    next: usize,
    total: usize,
}

impl<'a> DatagramParts<'a> {
    fn new(head: &'a [u8], data: &'a [u8], size: usize, skip: usize) -> Self {
        let total = (head.len() + data.len()).div_ceil(size);
        DatagramParts {
            head,
            data,
            size,
            next: skip,
            total,
        }
    }
}

impl<'a> Iterator for DatagramParts<'a> {
    type Item = [&'a [u8]; 2];

    fn next(&mut self) -> Option<[&'a [u8]; 2]> {
        if self.next >= self.total {
            return None;
        }
        let h = self.head.len();
        let start = self.next * self.size;
        let end = (start + self.size).min(h + self.data.len());
        self.next += 1;
        Some([
            &self.head[start.min(h)..end.min(h)],
            &self.data[start.saturating_sub(h)..end.saturating_sub(h)],
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::batch::PacketBatch;

    #[test]
    fn a_receive_asks_for_more_after_a_full_one_and_for_little_after_a_short_one() {
        assert_eq!(next_ask(4, 0), 4);
        assert_eq!(next_ask(4, 2), 4);
        assert_eq!(next_ask(4, 4), 16);
        assert_eq!(next_ask(16, 16), 64);
        assert_eq!(next_ask(16, 5), 16);
        assert_eq!(next_ask(64, 64), 64);
        assert_eq!(next_ask(64, 20), 64);
        assert_eq!(next_ask(64, 3), 4);
    }

    /// 7 packets whose bytes say which datagram and packet they are.
    fn datagram(k: u32) -> Vec<u8> {
        let mut d = Vec::with_capacity(7 * 188);
        for j in 0..7u8 {
            let mut p = [0u8; 188];
            p[0] = 0x47;
            p[1] = 0x01;
            p[3] = 0x10;
            p[4..8].copy_from_slice(&k.to_be_bytes());
            p[8] = j;
            d.extend_from_slice(&p);
        }
        d
    }

    #[test]
    fn every_datagram_queued_comes_out_in_order_whatever_a_receive_asks_for() {
        let url = UdpInputUrl {
            url: "udp://127.0.0.1:0".to_owned(),
            addr: "127.0.0.1:0".parse().unwrap(),
            source: None,
            iface: None,
        };
        let cfg = UdpInputConfig {
            recv_buffer: 4 << 20,
            force_single: false,
        };
        let mut input = UdpInput::open(&url, &cfg, Arc::default()).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = input.local_addr();
        let mut batch = PacketBatch::with_capacity(70);
        let mut next = 0u32;
        // bursts of 1, 3, 5, 40, 150, 2: reads that ask for 4, 16 and 64 datagrams,
        // and batches that fill before the socket is empty
        let mut sent = 0u32;
        for burst in [1u32, 3, 5, 40, 150, 2] {
            for k in sent..sent + burst {
                tx.send_to(&datagram(k), to).unwrap();
            }
            sent += burst;
            while next < sent {
                match input
                    .read_batch(&mut batch, Duration::from_secs(2))
                    .unwrap()
                {
                    ReadStatus::Packets(n) => assert!(n > 0),
                    other => panic!("datagram {next} of {sent} not read: {other:?}"),
                }
                for (i, p) in batch.packets().iter().enumerate() {
                    let k = u32::from_be_bytes(p[4..8].try_into().unwrap());
                    assert_eq!((k, p[8]), (next, (i % 7) as u8), "packet {i} of a batch");
                    if p[8] == 6 {
                        next += 1;
                    }
                }
            }
            assert!(RECV_ASK.contains(&input.ask));
        }
        // after the small bursts the next receive asks for little again
        assert_eq!(input.ask, 4);
        let s = input.stats().snapshot();
        assert_eq!(s.datagrams_in, u64::from(sent));
        assert_eq!(s.packets_in, u64::from(sent) * 7);
    }
}
