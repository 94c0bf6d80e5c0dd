//! The one accept loop of castmux's TCP servers (the ECMG, the EMMG<->MUX port, the newcamd
//! card server), in the mini-redis shape: `run(listener, shutdown)`, a semaphore caps the
//! connections, one task each, and on shutdown every connection task is dropped.
//!
//! A server that keeps a slot for every socket is locked out by peers that connect and say
//! nothing: before these bounds, 64 silent sockets held every ECMG slot for 5 minutes. So:
//!
//! - **max_connections**: at most this many connections at once; one more is refused.
//! - **max_per_address**: at most this many from one IP address, so one host cannot take
//!   every slot. Default three quarters of max_connections (at least 1): the last quarter
//!   always stays for other hosts, while a mux that opens one connection per ECM channel
//!   still gets most of them.
//! - **handshake_timeout**: a connection whose first valid message (the protocol's
//!   channel_setup, or a login) has not come within this long of the accept is closed.
//!   The connection says when it has, through its [`Handshake`]; after that only the
//!   protocol's own idle timeout applies. Default [`DEFAULT_HANDSHAKE_TIMEOUT`].
//!
//! A refused connection is accepted and closed at once (the peer reads EOF), so refused
//! peers never sit in the kernel's backlog in front of real ones. Every refusal, timeout and
//! failed accept is counted in [`AcceptStats`]; each kind is logged at most once a second,
//! with the totals so far, so a flood cannot flood the log.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

/// Time a new connection gets for its first valid message, unless configured: long enough
/// for a peer across a slow link (one or two round trips), short enough that silent sockets
/// give their slots back quickly.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`AcceptLoop::run`] waits after a failed accept (e.g. out of file descriptors),
/// so it does not spin on an error that lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often each kind of refusal is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Limits that do not make a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// No connection could ever be served.
    #[error("the connection limit must be at least 1")]
    NoConnections,
    /// No address could ever connect.
    #[error("the per-address connection limit must be at least 1")]
    NoConnectionsPerAddress,
    /// A per-address cap above the total would let one host take every slot.
    #[error(
        "the per-address connection limit ({per_address}) is above the connection limit ({max})"
    )]
    PerAddressAboveMax {
        /// The per-address cap asked for.
        per_address: usize,
        /// The total cap.
        max: usize,
    },
    /// Every connection would be closed before it could speak.
    #[error("the handshake timeout must be above zero")]
    NoHandshakeTime,
}

/// The bounds of one listening server (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    max_connections: usize,
    max_per_address: usize,
    handshake_timeout: Duration,
}

impl AcceptLimits {
    /// `max_connections` (0 is taken as 1), the default per-address cap and handshake
    /// timeout. For a server's built-in defaults; user input goes through [`AcceptLimits::new`].
    pub const fn with_max(max_connections: usize) -> AcceptLimits {
        let max = if max_connections == 0 {
            1
        } else {
            max_connections
        };
        AcceptLimits {
            max_connections: max,
            max_per_address: AcceptLimits::default_per_address(max),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Checked limits; `max_per_address` None gives [`AcceptLimits::default_per_address`].
    pub fn new(
        max_connections: usize,
        max_per_address: Option<usize>,
        handshake_timeout: Duration,
    ) -> Result<AcceptLimits, LimitsError> {
        if max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        let per_address =
            max_per_address.unwrap_or(AcceptLimits::default_per_address(max_connections));
        if per_address == 0 {
            return Err(LimitsError::NoConnectionsPerAddress);
        }
        if per_address > max_connections {
            return Err(LimitsError::PerAddressAboveMax {
                per_address,
                max: max_connections,
            });
        }
        if handshake_timeout.is_zero() {
            return Err(LimitsError::NoHandshakeTime);
        }
        Ok(AcceptLimits {
            max_connections,
            max_per_address: per_address,
            handshake_timeout,
        })
    }

    /// The per-address cap when none is given: three quarters of `max_connections` (at
    /// least 1), so a quarter of the slots always stays for other hosts.
    pub const fn default_per_address(max_connections: usize) -> usize {
        // max * 3 / 4 without overflowing
        let n = max_connections / 4 * 3 + max_connections % 4 * 3 / 4;
        if n == 0 {
            1
        } else {
            n
        }
    }

    /// Connections at once, at most.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Connections from one IP address at once, at most.
    pub fn max_per_address(&self) -> usize {
        self.max_per_address
    }

    /// Time from the accept to the first valid message.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

/// Counters of one accept loop (live).
#[derive(Debug, Default)]
pub struct AcceptStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections refused because max_connections were open.
    pub refused_full: AtomicU64,
    /// Connections refused because their address had max_per_address open.
    pub refused_per_address: AtomicU64,
    /// Connections closed for sending no valid first message within the handshake timeout.
    pub handshake_timeouts: AtomicU64,
    /// accept() calls that failed (each followed by a short pause).
    pub accept_errors: AtomicU64,
}

/// The counters of [`AcceptStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AcceptSnapshot {
    /// See [`AcceptStats::accepted`].
    pub accepted: u64,
    /// See [`AcceptStats::refused_full`].
    pub refused_full: u64,
    /// See [`AcceptStats::refused_per_address`].
    pub refused_per_address: u64,
    /// See [`AcceptStats::handshake_timeouts`].
    pub handshake_timeouts: u64,
    /// See [`AcceptStats::accept_errors`].
    pub accept_errors: u64,
}

impl AcceptStats {
    /// Read every counter.
    pub fn snapshot(&self) -> AcceptSnapshot {
        AcceptSnapshot {
            accepted: self.accepted.load(Relaxed),
            refused_full: self.refused_full.load(Relaxed),
            refused_per_address: self.refused_per_address.load(Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
        }
    }
}

/// Given to each connection's task. Call [`Handshake::done`] once the peer's first valid
/// message has been taken; until then the accept loop's deadline runs. Dropping it without
/// calling `done` leaves the deadline running (fail closed).
#[derive(Debug)]
pub struct Handshake(Option<oneshot::Sender<()>>);

impl Handshake {
    /// The peer has spoken the protocol: stop the handshake deadline. Later calls do nothing.
    pub fn done(&mut self) {
        if let Some(tx) = self.0.take() {
            // the receiver is gone only when the deadline already closed the connection
            let _ = tx.send(());
        }
    }

    /// Whether [`Handshake::done`] has been called.
    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }
}

/// Logs one kind of event at most once per [`LOG_EVERY`] (refusals under a flood).
#[derive(Debug, Default)]
pub(crate) struct LogGate(Mutex<Option<Instant>>);

impl LogGate {
    /// Whether to log now.
    pub(crate) fn due(&self) -> bool {
        let now = Instant::now();
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// What the accept loop and its connection tasks share.
#[derive(Debug)]
struct Shared {
    what: &'static str,
    limits: AcceptLimits,
    stats: Arc<AcceptStats>,
    /// Open connections per peer address (entries removed at zero, so at most
    /// max_connections entries).
    per_address: Mutex<HashMap<IpAddr, usize>>,
    log_full: LogGate,
    log_per_address: LogGate,
    log_timeout: LogGate,
    log_accept_error: LogGate,
}

/// One open connection's share of its address's cap; given back on drop.
struct AddressSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<AddressSlot> {
        let mut map = shared.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= shared.limits.max_per_address {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The accept loop of one server.
#[derive(Debug)]
pub struct AcceptLoop {
    shared: Arc<Shared>,
}

impl AcceptLoop {
    /// A loop under `limits` counting into `stats`; `what` names the server in log lines.
    pub fn new(what: &'static str, limits: AcceptLimits, stats: Arc<AcceptStats>) -> AcceptLoop {
        AcceptLoop {
            shared: Arc::new(Shared {
                what,
                limits,
                stats,
                per_address: Mutex::default(),
                log_full: LogGate::default(),
                log_per_address: LogGate::default(),
                log_timeout: LogGate::default(),
                log_accept_error: LogGate::default(),
            }),
        }
    }

    /// Serve `listener` until `shutdown` completes: each admitted socket (with TCP_NODELAY)
    /// goes to a task made by `serve`, which gets the socket, the peer and the connection's
    /// [`Handshake`]. `tasks` may already hold tasks of the server (a UDP loop); they end
    /// with it. On shutdown every task is dropped, closing its socket.
    pub async fn run<F, Fut>(
        &self,
        listener: &TcpListener,
        mut tasks: JoinSet<()>,
        shutdown: impl Future<Output = ()>,
        mut serve: F,
    ) where
        F: FnMut(TcpStream, SocketAddr, Handshake) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let sh = &self.shared;
        let limit = Arc::new(Semaphore::new(sh.limits.max_connections));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                // reap finished connections so the set does not grow
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => {
                    let (sock, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            let n = sh.stats.accept_errors.fetch_add(1, Relaxed) + 1;
                            if sh.log_accept_error.due() {
                                tracing::warn!(error = %e, accept_errors = n, "{}: accept failed", sh.what);
                            }
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    // dropping `sock` on a refusal closes it: the peer reads EOF
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        let n = sh.stats.refused_full.fetch_add(1, Relaxed) + 1;
                        if sh.log_full.due() {
                            tracing::warn!(%peer, max = sh.limits.max_connections, refused_full = n,
                                "{}: all connection slots taken; refusing", sh.what);
                        }
                        continue;
                    };
                    let Some(slot) = AddressSlot::take(sh, peer.ip().to_canonical()) else {
                        let n = sh.stats.refused_per_address.fetch_add(1, Relaxed) + 1;
                        if sh.log_per_address.due() {
                            tracing::warn!(%peer, max_per_address = sh.limits.max_per_address,
                                refused_per_address = n,
                                "{}: too many connections from this address; refusing", sh.what);
                        }
                        continue;
                    };
                    sh.stats.accepted.fetch_add(1, Relaxed);
                    let _ = sock.set_nodelay(true);
                    let (tx, rx) = oneshot::channel();
                    let conn = serve(sock, peer, Handshake(Some(tx)));
                    let sh = sh.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        let _slot = slot;
                        if let Outcome::HandshakeTimeout = guard(conn, rx, sh.limits.handshake_timeout).await {
                            let n = sh.stats.handshake_timeouts.fetch_add(1, Relaxed) + 1;
                            if sh.log_timeout.due() {
                                tracing::warn!(%peer, timeout = ?sh.limits.handshake_timeout,
                                    handshake_timeouts = n,
                                    "{}: no valid first message in time; connection closed", sh.what);
                            }
                        }
                    });
                }
            }
        }
        tasks.shutdown().await;
    }
}

enum Outcome {
    Finished,
    HandshakeTimeout,
}

/// Run `conn` to its end, unless its handshake is not done within `timeout`: then drop it
/// (closing its socket).
async fn guard(
    conn: impl Future<Output = ()>,
    mut done: oneshot::Receiver<()>,
    timeout: Duration,
) -> Outcome {
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut waiting = true;
    loop {
        tokio::select! {
            () = &mut conn => return Outcome::Finished,
            r = &mut done, if waiting => match r {
                Ok(()) => break,
                // the Handshake was dropped undone: the deadline still holds
                Err(_) => waiting = false,
            },
            () = &mut deadline => return Outcome::HandshakeTimeout,
        }
    }
    conn.await;
    Outcome::Finished
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    #[test]
    fn limits_are_checked_and_the_default_keeps_a_quarter_for_others() {
        let t = DEFAULT_HANDSHAKE_TIMEOUT;
        assert_eq!(
            AcceptLimits::new(0, None, t),
            Err(LimitsError::NoConnections)
        );
        assert_eq!(
            AcceptLimits::new(4, Some(0), t),
            Err(LimitsError::NoConnectionsPerAddress)
        );
        assert_eq!(
            AcceptLimits::new(4, Some(5), t),
            Err(LimitsError::PerAddressAboveMax {
                per_address: 5,
                max: 4
            })
        );
        assert_eq!(
            AcceptLimits::new(4, None, Duration::ZERO),
            Err(LimitsError::NoHandshakeTime)
        );
        let l = AcceptLimits::new(64, None, t).unwrap();
        assert_eq!((l.max_connections(), l.max_per_address()), (64, 48));
        assert_eq!(l, AcceptLimits::with_max(64));
        for (max, per) in [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3), (16, 12), (256, 192)] {
            assert_eq!(AcceptLimits::default_per_address(max), per, "max {max}");
        }
        assert_eq!(AcceptLimits::with_max(0).max_connections(), 1);
        assert_eq!(
            AcceptLimits::default_per_address(usize::MAX),
            usize::MAX / 4 * 3 + 2
        );
    }

    /// A server whose connections echo one line after a handshake byte `H`; anything else
    /// first is read and ignored (it is not a valid first message).
    async fn start(limits: AcceptLimits) -> (SocketAddr, Arc<AcceptStats>, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::<AcceptStats>::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let acceptor = AcceptLoop::new("test", limits, stats.clone());
        tokio::spawn(async move {
            acceptor
                .run(
                    &listener,
                    JoinSet::new(),
                    async move {
                        let _ = stopped.await;
                    },
                    |mut sock, _peer, mut hs| async move {
                        let mut b = [0u8; 1];
                        while sock.read_exact(&mut b).await.is_ok() {
                            if b[0] == b'H' {
                                hs.done();
                            }
                            if hs.is_done() {
                                let _ = sock.write_all(&b).await;
                            }
                        }
                    },
                )
                .await;
        });
        (addr, stats, stop)
    }

    async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(format!("{src}:0").parse().unwrap()).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Whether the server closes `s` within `within` (EOF or reset).
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut b = [0u8; 16];
        matches!(
            tokio::time::timeout(within, s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    async fn wait_for(what: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !what() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_flood_from_one_address_leaves_room_and_times_out() {
        let timeout = Duration::from_millis(600);
        let limits = AcceptLimits::new(4, Some(2), timeout).unwrap();
        let (addr, stats, _stop) = start(limits).await;
        let t0 = Instant::now();
        // two silent connections from 127.0.0.2 fill its share; the third is refused
        let mut silent = vec![
            connect_from("127.0.0.2", addr).await,
            connect_from("127.0.0.2", addr).await,
        ];
        wait_for(|| stats.accepted.load(Relaxed) == 2).await;
        let mut third = connect_from("127.0.0.2", addr).await;
        assert!(closed(&mut third, Duration::from_secs(5)).await);
        assert_eq!(stats.snapshot().refused_per_address, 1);
        // another host is served meanwhile, and once past its handshake stays served
        let mut real = connect_from("127.0.0.3", addr).await;
        real.write_all(b"Hx").await.unwrap();
        let mut echo = [0u8; 2];
        real.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"Hx");
        // the silent ones go after the timeout, not before
        for s in &mut silent {
            assert!(closed(s, Duration::from_secs(5)).await);
        }
        assert!(t0.elapsed() >= timeout);
        wait_for(|| stats.handshake_timeouts.load(Relaxed) == 2).await;
        tokio::time::sleep(timeout).await;
        real.write_all(b"y").await.unwrap();
        real.read_exact(&mut echo[..1]).await.unwrap();
        assert_eq!(echo[0], b'y');
        let s = stats.snapshot();
        assert_eq!(
            s,
            AcceptSnapshot {
                accepted: 3,
                refused_full: 0,
                refused_per_address: 1,
                handshake_timeouts: 2,
                accept_errors: 0
            }
        );
        // the address's slots came back: it may connect again
        let mut again = connect_from("127.0.0.2", addr).await;
        again.write_all(b"H").await.unwrap();
        again.read_exact(&mut echo[..1]).await.unwrap();
        assert_eq!(stats.snapshot().accepted, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_that_are_not_a_valid_first_message_do_not_hold_a_slot() {
        let timeout = Duration::from_millis(400);
        let (addr, stats, _stop) = start(AcceptLimits::new(2, None, timeout).unwrap()).await;
        let mut chatty = connect_from("127.0.0.2", addr).await;
        chatty.write_all(b"xyz").await.unwrap();
        assert!(closed(&mut chatty, Duration::from_secs(5)).await);
        wait_for(|| stats.handshake_timeouts.load(Relaxed) == 1).await;
        assert_eq!(stats.snapshot().handshake_timeouts, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_the_total_is_refused_and_counted() {
        let timeout = Duration::from_secs(30);
        let (addr, stats, stop) = start(AcceptLimits::new(2, Some(1), timeout).unwrap()).await;
        let mut a = connect_from("127.0.0.2", addr).await;
        let mut b = connect_from("127.0.0.3", addr).await;
        a.write_all(b"H").await.unwrap();
        b.write_all(b"H").await.unwrap();
        let mut one = [0u8; 1];
        a.read_exact(&mut one).await.unwrap();
        b.read_exact(&mut one).await.unwrap();
        let mut c = connect_from("127.0.0.4", addr).await;
        assert!(closed(&mut c, Duration::from_secs(5)).await);
        let s = stats.snapshot();
        assert_eq!((s.accepted, s.refused_full), (2, 1));
        // a slot freed is a slot for the next peer (once the server has seen the close)
        drop(a);
        let end = Instant::now() + Duration::from_secs(10);
        let mut d = loop {
            let mut d = connect_from("127.0.0.4", addr).await;
            if d.write_all(b"H").await.is_ok() && d.read_exact(&mut one).await.is_ok() {
                break d;
            }
            assert!(Instant::now() < end, "the freed slot never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(stats.snapshot().accepted, 3);
        d.write_all(b"z").await.unwrap();
        d.read_exact(&mut one).await.unwrap();
        // shutdown closes every connection
        stop.send(()).unwrap();
        assert!(closed(&mut b, Duration::from_secs(5)).await);
        assert!(closed(&mut d, Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_handshake_keeps_the_deadline() {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        drop(Handshake(Some(done_tx)));
        let t0 = Instant::now();
        // bounded, so a guard that ignores its deadline fails here instead of hanging
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            guard(
                std::future::pending::<()>(),
                done_rx,
                Duration::from_millis(200),
            ),
        )
        .await
        .expect("the deadline ends a connection whose handshake was dropped");
        assert!(matches!(out, Outcome::HandshakeTimeout));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        // done in time: the connection runs past the deadline
        let (tx, rx) = oneshot::channel::<()>();
        let mut hs = Handshake(Some(tx));
        hs.done();
        let out = guard(
            tokio::time::sleep(Duration::from_millis(400)),
            rx,
            Duration::from_millis(100),
        )
        .await;
        assert!(matches!(out, Outcome::Finished));
    }
}
