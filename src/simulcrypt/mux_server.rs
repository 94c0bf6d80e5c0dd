//! The MUX side of EMMG<->MUX: castmux listens (Astra's EMM port, 41000 in TVCAS's guide),
//! an EMMG connects, sets up its channel and stream, asks for bandwidth and sends EMMs with
//! data_provision over TCP or UDP.
//!
//! Each stream is policed at its allocated bandwidth (a token bucket counting the bytes the
//! EMMs take on air): datagrams above it are dropped and counted, and the EMMG is told with a
//! stream_error "exceeded bandwidth" at most once a second. Policing happens once, here at
//! ingest; accepted EMMs then go to every subscribed pipeline ("EMM clone", see
//! [`super::emm_fanout`]), each draining a bounded queue of its own through an
//! [`EmmQueueSource`] onto its EMM PID. A full queue drops and counts too. Nothing here ever
//! waits on the data path.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::conn::{FrameReader, LinkError};
pub use super::emm_fanout::{EmmQueueSource, EmmSubscribers};
use super::emmg_messages::{ChannelIds, EmmgMessage, StreamIds, DATA_TYPE_EMM};
use super::tlv::{
    error_information, frame_len, peek_header, CodecError, RawMessage, SUPPORTED_VERSIONS,
};
use super::types::{EmmgErrorStatus as E, EmmgParam};
use crate::cas::emmg::section_air_bytes;
use crate::net::{AcceptLimits, AcceptLoop, AcceptStats, Handshake};
use crate::scramble::emm::EmmData;
use crate::ts::packet::{is_whole_packets, PACKET_SIZE};
use crate::ts::section::{check_sections, split_sections, MAX_PRIVATE_SECTION};

/// Settings of the EMMG<->MUX server. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct EmmMuxConfig {
    /// Accept only this client_id; None accepts any. Default None.
    pub client_id: Option<u32>,
    /// Most bandwidth a stream gets, kbit/s (allocation = min(request, this)); also the
    /// allocation before any request. Default 1000.
    pub max_bandwidth_kbps: u16,
    /// EMM chunks each subscriber's queue to its pipeline holds. Default 1024.
    pub queue_len: usize,
    /// Also take data_provision over UDP on the same address. Default true.
    pub udp: bool,
    /// Connection bounds: at most 16 connections, 12 from one address, and 5 s from
    /// connect to an accepted channel_setup. Default [`AcceptLimits::with_max`]`(16)`.
    pub accept: AcceptLimits,
    /// Most streams per channel. Default 16.
    pub max_streams: usize,
    /// A connection silent this long is closed. Default 5 minutes.
    pub idle_timeout: Duration,
}

impl Default for EmmMuxConfig {
    fn default() -> Self {
        EmmMuxConfig {
            client_id: None,
            max_bandwidth_kbps: 1000,
            queue_len: 1024,
            udp: true,
            accept: AcceptLimits::with_max(16),
            max_streams: 16,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Counters of the EMMG<->MUX server (live).
#[derive(Debug, Default)]
pub struct EmmMuxStats {
    /// TCP connections accepted, refused and timed out before their channel_setup.
    pub accept: Arc<AcceptStats>,
    /// data_provision messages taken (TCP and UDP).
    pub data_provisions: AtomicU64,
    /// EMM chunks accepted and queued for at least one subscriber (counted once however
    /// many subscribers took it).
    pub queued: AtomicU64,
    /// Bytes of those chunks.
    pub queued_bytes: AtomicU64,
    /// Datagrams dropped for exceeding the allocated bandwidth.
    pub dropped_over_bandwidth: AtomicU64,
    /// Copies of chunks dropped because a subscriber's queue was full (total over all
    /// subscribers; each [`EmmQueueSource::dropped`] has its own share).
    pub dropped_queue_full: AtomicU64,
    /// Accepted chunks dropped because no pipeline was subscribed.
    pub dropped_no_subscriber: AtomicU64,
    /// Datagrams rejected (not EMM sections / whole packets, unknown stream).
    pub rejected: AtomicU64,
    /// channel_error/stream_error sent.
    pub errors_sent: AtomicU64,
    /// UDP datagrams that were not valid messages.
    pub udp_bad: AtomicU64,
    /// UDP receives that failed (each followed by a pause, doubling up to half a second).
    pub udp_recv_errors: AtomicU64,
    /// EMMs taken and dropped per EMMG client (client_id), for as long as the port runs.
    pub clients: Mutex<EmmClients>,
}

/// Most clients counted each under its own client_id; later ones are counted together
/// (a client picks its id, so a hostile one could otherwise grow the table without end).
pub const MAX_COUNTED_CLIENTS: usize = 64;

/// EMM counts of one EMMG client.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EmmClientCounts {
    /// Datagrams taken within the allocated bandwidth.
    pub datagrams: u64,
    /// Bytes those take on air.
    pub bytes: u64,
    /// Datagrams dropped for exceeding the allocated bandwidth.
    pub dropped: u64,
    /// Bytes those would have taken on air.
    pub dropped_bytes: u64,
}

/// [`EmmClientCounts`] per client_id, at most [`MAX_COUNTED_CLIENTS`] of them, and the rest
/// together.
#[derive(Debug, Default, Clone)]
pub struct EmmClients {
    pub by_id: std::collections::BTreeMap<u32, EmmClientCounts>,
    /// Clients past the first [`MAX_COUNTED_CLIENTS`].
    pub others: EmmClientCounts,
}

impl EmmClients {
    fn add(&mut self, client_id: u32, c: EmmClientCounts) {
        let slot = if self.by_id.len() < MAX_COUNTED_CLIENTS || self.by_id.contains_key(&client_id)
        {
            self.by_id.entry(client_id).or_default()
        } else {
            &mut self.others
        };
        slot.datagrams += c.datagrams;
        slot.bytes += c.bytes;
        slot.dropped += c.dropped;
        slot.dropped_bytes += c.dropped_bytes;
    }
}

/// Bytes a chunk takes on air (sections are packetized: 184 payload bytes per 188).
fn air_bytes(kind: EmmData, len: usize) -> u64 {
    match kind {
        EmmData::TsPackets => len as u64,
        EmmData::Sections => section_air_bytes(len),
    }
}

/// A token bucket in bytes.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(kbps: u16) -> Bucket {
        let rate = f64::from(kbps) * 1000.0 / 8.0;
        // half a second of burst, and at least one whole message of EMMs
        let burst = (rate / 2.0).max(8192.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self, bytes: u64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct StreamState {
    data_id: u16,
    tspkt: bool,
    kbps: u16,
    bucket: Bucket,
    last_bw_error: Option<Instant>,
}

type StreamKey = (u32, u16, u16);

struct MuxShared {
    config: EmmMuxConfig,
    stats: Arc<EmmMuxStats>,
    subscribers: EmmSubscribers,
    /// Channels in use: (client_id, channel_id) -> section_TSpkt_flag.
    channels: Mutex<HashMap<(u32, u16), bool>>,
    streams: Mutex<HashMap<StreamKey, StreamState>>,
}

/// What a data_provision led to.
enum Provided {
    Ok,
    UnknownStream,
    OverBandwidth { tell: bool },
}

impl MuxShared {
    /// Police and queue the datagrams of one data_provision.
    fn provide(&self, key: StreamKey, data_id: u16, datagrams: &[Vec<u8>]) -> Provided {
        self.stats.data_provisions.fetch_add(1, Relaxed);
        let now = Instant::now();
        let mut streams = lock(&self.streams);
        let Some(st) = streams.get_mut(&key).filter(|st| st.data_id == data_id) else {
            self.stats
                .rejected
                .fetch_add(datagrams.len() as u64, Relaxed);
            return Provided::UnknownStream;
        };
        let kind = if st.tspkt {
            EmmData::TsPackets
        } else {
            EmmData::Sections
        };
        let mut over = false;
        let mut counts = EmmClientCounts::default();
        for d in datagrams {
            let Some(chunks) = split_chunks(kind, d) else {
                self.stats.rejected.fetch_add(1, Relaxed);
                continue;
            };
            let bytes = air_bytes(kind, d.len());
            if !st.bucket.take(bytes, now) {
                self.stats.dropped_over_bandwidth.fetch_add(1, Relaxed);
                counts.dropped += 1;
                counts.dropped_bytes += bytes;
                over = true;
                continue;
            }
            counts.datagrams += 1;
            counts.bytes += bytes;
            self.subscribers.publish(kind, &chunks);
        }
        lock(&self.stats.clients).add(key.0, counts);
        if over {
            let tell = st
                .last_bw_error
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
            if tell {
                st.last_bw_error = Some(now);
                tracing::warn!(
                    client_id = format_args!("{:08X}", key.0),
                    stream_id = key.2,
                    kbps = st.kbps,
                    "EMMG above its allocated bandwidth; excess EMMs dropped"
                );
            }
            return Provided::OverBandwidth { tell };
        }
        Provided::Ok
    }
}

/// Split a datagram into chunks the EMM inserter takes (whole EMM sections of at most 4096
/// bytes, or at most 21 whole packets); None if it is neither. Each chunk gets a buffer of
/// its own (so a queued chunk never holds a whole datagram), shared by every subscriber.
fn split_chunks(kind: EmmData, d: &[u8]) -> Option<Vec<Bytes>> {
    match kind {
        EmmData::TsPackets => {
            if !is_whole_packets(d) {
                return None;
            }
            Some(
                d.chunks(21 * PACKET_SIZE)
                    .map(Bytes::copy_from_slice)
                    .collect(),
            )
        }
        EmmData::Sections => {
            if d.is_empty() || check_sections(d, 0x82..=0x8F).is_err() {
                return None;
            }
            // one pass: a section over the private-section limit makes the whole datagram None
            split_sections(d)
                .map(|s| (s.len() <= MAX_PRIVATE_SECTION).then(|| Bytes::copy_from_slice(s)))
                .collect()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The EMMG<->MUX server.
pub struct EmmMuxServer {
    listener: TcpListener,
    udp: Option<UdpSocket>,
    shared: Arc<MuxShared>,
}

impl std::fmt::Debug for EmmMuxServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmmMuxServer")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl EmmMuxServer {
    /// Listen on `addr` (TCP, and UDP on the same port when configured); gives the server
    /// and a first subscriber (the single pipeline's end of its EMM queue).
    pub async fn bind(
        addr: SocketAddr,
        config: EmmMuxConfig,
    ) -> std::io::Result<(EmmMuxServer, EmmQueueSource)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let udp = if config.udp {
            Some(UdpSocket::bind(local).await?)
        } else {
            None
        };
        let stats = Arc::<EmmMuxStats>::default();
        let subscribers = EmmSubscribers::new(config.queue_len, stats.clone());
        let first = subscribers.subscribe();
        let shared = Arc::new(MuxShared {
            config,
            stats,
            subscribers,
            channels: Mutex::default(),
            streams: Mutex::default(),
        });
        Ok((
            EmmMuxServer {
                listener,
                udp,
                shared,
            },
            first,
        ))
    }

    /// One more pipeline end getting every EMM accepted from now on (EMM clone); each has
    /// its own queue of `queue_len` chunks.
    pub fn subscribe(&self) -> EmmQueueSource {
        self.shared.subscribers.subscribe()
    }

    /// A handle to subscribe pipelines while the server runs.
    pub fn subscriber_handle(&self) -> EmmSubscribers {
        self.shared.subscribers.clone()
    }

    /// The TCP (and UDP) address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<EmmMuxStats> {
        self.shared.stats.clone()
    }

    /// Serve until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        if let Some(udp) = self.udp {
            let shared = self.shared.clone();
            tasks.spawn(async move { udp_loop(udp, shared).await });
        }
        let acceptor = AcceptLoop::new(
            "EMMG port",
            self.shared.config.accept,
            self.shared.stats.accept.clone(),
        );
        acceptor
            .run(&self.listener, tasks, shutdown, |sock, peer, handshake| {
                let shared = self.shared.clone();
                async move {
                    // debug only: a flood of connections must not flood the log (the
                    // accept loop counts them; the channel_setup is logged)
                    tracing::debug!(%peer, "EMMG connected");
                    let mut c = MuxConnection {
                        shared,
                        channel: None,
                        version: 3,
                        streams: Vec::new(),
                        out: Vec::new(),
                    };
                    match c.serve(sock, handshake).await {
                        Ok(()) => tracing::info!(%peer, "EMMG disconnected"),
                        Err(e) => tracing::warn!(%peer, error = %e, "EMMG connection closed"),
                    }
                }
            })
            .await;
    }
}

/// The first pause after a failed UDP receive; each further failure in a row doubles it up
/// to [`UDP_BACKOFF_MAX`], so an error that lasts costs a couple of wake-ups a second, not a
/// spinning core. A good receive starts over.
const UDP_BACKOFF_FIRST: Duration = Duration::from_millis(1);
/// The longest pause between UDP receives after failures: short enough that EMMs flow again
/// soon after the error clears (the EMMG's data is paced, not lost, while TCP is untouched).
const UDP_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A failing UDP receive is logged at most this often (the counter counts each).
const UDP_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// The pause after one more failed receive, given the last one (zero after a success).
fn next_backoff(last: Duration) -> Duration {
    (last * 2).clamp(UDP_BACKOFF_FIRST, UDP_BACKOFF_MAX)
}

async fn udp_loop(sock: UdpSocket, shared: Arc<MuxShared>) {
    let mut buf = vec![0u8; 65536];
    let mut backoff = Duration::ZERO;
    let mut logged: Option<Instant> = None;
    loop {
        let n = match sock.recv_from(&mut buf).await {
            Ok((n, _peer)) => {
                backoff = Duration::ZERO;
                n
            }
            Err(e) => {
                let errors = shared.stats.udp_recv_errors.fetch_add(1, Relaxed) + 1;
                backoff = next_backoff(backoff);
                if logged.is_none_or(|t| t.elapsed() >= UDP_ERROR_LOG_EVERY) {
                    logged = Some(Instant::now());
                    tracing::warn!(error = %e, udp_recv_errors = errors, pause = ?backoff,
                        "EMMG port: UDP receive failed; pausing before the next");
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let frame = &buf[..n];
        // one message per UDP datagram
        let msg = match frame_len(frame) {
            Ok(Some(len)) if len == n => EmmgMessage::decode(frame).ok(),
            _ => None,
        };
        match msg {
            Some((
                _,
                EmmgMessage::DataProvision {
                    client_id,
                    channel_id: Some(ch),
                    stream_id: Some(st),
                    data_id,
                    datagrams,
                },
            )) => {
                let _ = shared.provide((client_id, ch, st), data_id, &datagrams);
            }
            _ => {
                shared.stats.udp_bad.fetch_add(1, Relaxed);
            }
        }
    }
}

struct MuxConnection {
    shared: Arc<MuxShared>,
    channel: Option<(ChannelIds, bool)>,
    version: u8,
    streams: Vec<u16>,
    out: Vec<u8>,
}

impl MuxConnection {
    /// Free the channel and streams of this connection.
    fn release(&mut self) {
        if let Some((ids, _)) = self.channel.take() {
            lock(&self.shared.channels).remove(&(ids.client_id, ids.channel_id));
            let mut streams = lock(&self.shared.streams);
            for s in self.streams.drain(..) {
                streams.remove(&(ids.client_id, ids.channel_id, s));
            }
        }
    }

    async fn serve(&mut self, sock: TcpStream, mut handshake: Handshake) -> Result<(), LinkError> {
        let (rd, mut wr) = sock.into_split();
        let mut reader = FrameReader::new(rd);
        let res = self.serve_on(&mut reader, &mut wr, &mut handshake).await;
        // free the ids before the socket closes, so a reconnecting EMMG finds them free
        self.release();
        res
    }

    async fn serve_on(
        &mut self,
        reader: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
        handshake: &mut Handshake,
    ) -> Result<(), LinkError> {
        loop {
            let frame =
                match tokio::time::timeout(self.shared.config.idle_timeout, reader.next()).await {
                    Err(_) => return Err(LinkError::Timeout("a message from the EMMG")),
                    Ok(Ok(Some(f))) => f,
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Err(LinkError::Codec(e))) => {
                        self.out.clear();
                        let ids = self.ids_or(0, 0);
                        self.channel_error(ids, e.emmg_status(), e.parameter());
                        let _ = wr.write_all(&self.out).await;
                        return Err(LinkError::Codec(e));
                    }
                    Ok(Err(e)) => return Err(e),
                };
            self.out.clear();
            let close = self.handle(&frame);
            // a channel set up is the EMMG's first valid message: the slot is its to keep
            if self.channel.is_some() {
                handshake.done();
            }
            if !self.out.is_empty() {
                wr.write_all(&self.out).await?;
            }
            if close {
                return Ok(());
            }
        }
    }

    fn ids_or(&self, client_id: u32, channel_id: u16) -> ChannelIds {
        self.channel.map_or(
            ChannelIds {
                client_id,
                channel_id,
            },
            |c| c.0,
        )
    }

    /// Handle one message; true to close.
    fn handle(&mut self, frame: &[u8]) -> bool {
        let msg = match EmmgMessage::decode(frame) {
            Ok((v, m)) => {
                self.version = v;
                m
            }
            Err(e) => {
                self.reply_decode_error(frame, &e);
                return false;
            }
        };
        if let EmmgMessage::ChannelSetup {
            ids,
            section_tspkt_flag,
        } = msg
        {
            self.channel_setup(ids, section_tspkt_flag);
            return false;
        }
        let Some((ch, tspkt)) = self.channel else {
            let ids = msg_channel(&msg, 0);
            self.channel_error(ids, E::UnknownChannelId, None);
            return false;
        };
        let ids = msg_channel(&msg, ch.channel_id);
        if ids.client_id != ch.client_id {
            self.channel_error(ids, E::UnknownClientId, None);
            return false;
        }
        if ids.channel_id != ch.channel_id {
            self.channel_error(ids, E::UnknownChannelId, None);
            return false;
        }
        match msg {
            EmmgMessage::ChannelTest(_) => self.send(&EmmgMessage::ChannelStatus {
                ids: ch,
                section_tspkt_flag: tspkt,
            }),
            EmmgMessage::ChannelClose(_) => return true,
            EmmgMessage::ChannelError { status, .. } | EmmgMessage::StreamError { status, .. } => {
                for s in status {
                    tracing::warn!(error = %super::types::error_status_name(false, s),
                        "the EMMG reported an error");
                }
            }
            EmmgMessage::StreamSetup {
                ids,
                data_id,
                data_type,
            } => self.stream_setup(ids, data_id, data_type, tspkt),
            EmmgMessage::StreamTest(ids) => match self.stream_info(ids) {
                Some((data_id, _)) => self.send(&EmmgMessage::StreamStatus {
                    ids,
                    data_id,
                    data_type: DATA_TYPE_EMM,
                }),
                None => self.stream_error(ids, E::UnknownStreamId, None),
            },
            EmmgMessage::StreamCloseRequest(ids) => {
                if self.streams.contains(&ids.stream_id) {
                    self.streams.retain(|s| *s != ids.stream_id);
                    lock(&self.shared.streams).remove(&(
                        ids.client_id,
                        ids.channel_id,
                        ids.stream_id,
                    ));
                    self.send(&EmmgMessage::StreamCloseResponse(ids));
                } else {
                    self.stream_error(ids, E::UnknownStreamId, None);
                }
            }
            EmmgMessage::StreamBwRequest { ids, bandwidth } => {
                let cap = self.shared.config.max_bandwidth_kbps;
                let mut streams = lock(&self.shared.streams);
                match streams.get_mut(&(ids.client_id, ids.channel_id, ids.stream_id)) {
                    Some(st) => {
                        if let Some(req) = bandwidth {
                            st.kbps = req.min(cap);
                            st.bucket = Bucket::new(st.kbps);
                        }
                        let kbps = st.kbps;
                        drop(streams);
                        tracing::info!(stream_id = ids.stream_id, requested = ?bandwidth,
                            allocated = kbps, "EMMG bandwidth allocated (kbit/s)");
                        self.send(&EmmgMessage::StreamBwAllocation {
                            ids,
                            bandwidth: Some(kbps),
                        });
                    }
                    None => {
                        drop(streams);
                        self.stream_error(ids, E::UnknownStreamId, None);
                    }
                }
            }
            EmmgMessage::DataProvision {
                client_id,
                channel_id,
                stream_id,
                data_id,
                datagrams,
            } => {
                let channel_id = channel_id.unwrap_or(ch.channel_id);
                // over TCP the stream may be left out: find it by data_id
                let stream_id = stream_id.or_else(|| {
                    let streams = lock(&self.shared.streams);
                    self.streams.iter().copied().find(|s| {
                        streams
                            .get(&(client_id, channel_id, *s))
                            .is_some_and(|st| st.data_id == data_id)
                    })
                });
                let ids = StreamIds {
                    client_id,
                    channel_id,
                    stream_id: stream_id.unwrap_or(0),
                };
                match self.shared.provide(
                    (client_id, channel_id, ids.stream_id),
                    data_id,
                    &datagrams,
                ) {
                    Provided::Ok | Provided::OverBandwidth { tell: false } => {}
                    Provided::OverBandwidth { tell: true } => {
                        self.stream_error(ids, E::ExceededBandwidth, None)
                    }
                    Provided::UnknownStream => {
                        self.stream_error(ids, E::UnknownDataId, Some(EmmgParam::DataId.value()))
                    }
                }
            }
            EmmgMessage::ChannelStatus { .. }
            | EmmgMessage::StreamStatus { .. }
            | EmmgMessage::StreamCloseResponse(_)
            | EmmgMessage::StreamBwAllocation { .. }
            | EmmgMessage::ChannelSetup { .. } => {
                self.channel_error(ch, E::InvalidMessage, None);
            }
        }
        false
    }

    fn stream_info(&self, ids: StreamIds) -> Option<(u16, u16)> {
        if !self.streams.contains(&ids.stream_id) {
            return None;
        }
        lock(&self.shared.streams)
            .get(&(ids.client_id, ids.channel_id, ids.stream_id))
            .map(|s| (s.data_id, s.kbps))
    }

    fn channel_setup(&mut self, ids: ChannelIds, tspkt: bool) {
        if self
            .shared
            .config
            .client_id
            .is_some_and(|c| c != ids.client_id)
        {
            self.channel_error(ids, E::UnknownClientId, Some(EmmgParam::ClientId.value()));
            return;
        }
        if self.channel.is_some() {
            self.channel_error(ids, E::ChannelIdInUse, None);
            return;
        }
        {
            let mut chans = lock(&self.shared.channels);
            if chans.contains_key(&(ids.client_id, ids.channel_id)) {
                drop(chans);
                self.channel_error(ids, E::ChannelIdInUse, None);
                return;
            }
            chans.insert((ids.client_id, ids.channel_id), tspkt);
        }
        tracing::info!(
            client_id = format_args!("{:08X}", ids.client_id),
            channel_id = ids.channel_id,
            tspkt,
            version = self.version,
            "EMMG channel set up"
        );
        self.channel = Some((ids, tspkt));
        self.send(&EmmgMessage::ChannelStatus {
            ids,
            section_tspkt_flag: tspkt,
        });
    }

    fn stream_setup(&mut self, ids: StreamIds, data_id: u16, data_type: u8, tspkt: bool) {
        if data_type != DATA_TYPE_EMM {
            // only EMMs go on the EMM PID
            self.stream_error(ids, E::InvalidValue, Some(EmmgParam::DataType.value()));
            return;
        }
        if self.streams.contains(&ids.stream_id) {
            self.stream_error(ids, E::StreamIdInUse, None);
            return;
        }
        if self.streams.len() >= self.shared.config.max_streams {
            self.stream_error(ids, E::TooManyStreamsOnChannel, None);
            return;
        }
        let mut streams = lock(&self.shared.streams);
        if streams
            .iter()
            .any(|(k, s)| k.0 == ids.client_id && s.data_id == data_id)
        {
            drop(streams);
            self.stream_error(ids, E::DataIdInUse, None);
            return;
        }
        let kbps = self.shared.config.max_bandwidth_kbps;
        streams.insert(
            (ids.client_id, ids.channel_id, ids.stream_id),
            StreamState {
                data_id,
                tspkt,
                kbps,
                bucket: Bucket::new(kbps),
                last_bw_error: None,
            },
        );
        drop(streams);
        self.streams.push(ids.stream_id);
        self.send(&EmmgMessage::StreamStatus {
            ids,
            data_id,
            data_type,
        });
    }

    fn reply_decode_error(&mut self, frame: &[u8], e: &CodecError) {
        tracing::warn!(error = %e, "bad message from the EMMG");
        if let CodecError::UnsupportedVersion(_) = e {
            self.version = SUPPORTED_VERSIONS[0];
        }
        let raw = RawMessage::parse(frame).ok();
        let find = |p: EmmgParam| raw.as_ref().and_then(|r| r.find_u16(p.value()));
        let client = raw
            .as_ref()
            .and_then(|r| {
                r.params
                    .iter()
                    .find(|p| p.ptype == EmmgParam::ClientId.value() && p.value.len() == 4)
            })
            .map(|p| u32::from_be_bytes([p.value[0], p.value[1], p.value[2], p.value[3]]));
        let ids = self.ids_or(
            client.unwrap_or(0),
            find(EmmgParam::DataChannelId).unwrap_or(0),
        );
        let stream_level = peek_header(frame).is_some_and(|h| h.message_type >= 0x0100);
        match find(EmmgParam::DataStreamId) {
            Some(st) if stream_level && self.streams.contains(&st) => self.stream_error(
                StreamIds {
                    client_id: ids.client_id,
                    channel_id: ids.channel_id,
                    stream_id: st,
                },
                e.emmg_status(),
                e.parameter(),
            ),
            _ => self.channel_error(ids, e.emmg_status(), e.parameter()),
        }
    }

    fn channel_error(&mut self, ids: ChannelIds, status: E, param: Option<u16>) {
        self.shared.stats.errors_sent.fetch_add(1, Relaxed);
        self.send(&EmmgMessage::ChannelError {
            ids,
            status: vec![status.value()],
            info: error_information(param),
        });
    }

    fn stream_error(&mut self, ids: StreamIds, status: E, param: Option<u16>) {
        self.shared.stats.errors_sent.fetch_add(1, Relaxed);
        self.send(&EmmgMessage::StreamError {
            ids,
            status: vec![status.value()],
            info: error_information(param),
        });
    }

    fn send(&mut self, m: &EmmgMessage) {
        if let Err(e) = m.encode(self.version, &mut self.out) {
            tracing::error!(error = %e, "EMMG port: could not encode a reply");
        }
    }
}

/// The channel ids a message names (data_provision: its client and channel if given).
fn msg_channel(m: &EmmgMessage, own_channel: u16) -> ChannelIds {
    let s = |i: &StreamIds| ChannelIds {
        client_id: i.client_id,
        channel_id: i.channel_id,
    };
    match m {
        EmmgMessage::ChannelSetup { ids, .. }
        | EmmgMessage::ChannelStatus { ids, .. }
        | EmmgMessage::ChannelError { ids, .. } => *ids,
        EmmgMessage::ChannelTest(ids) | EmmgMessage::ChannelClose(ids) => *ids,
        EmmgMessage::StreamSetup { ids, .. }
        | EmmgMessage::StreamStatus { ids, .. }
        | EmmgMessage::StreamError { ids, .. }
        | EmmgMessage::StreamBwRequest { ids, .. }
        | EmmgMessage::StreamBwAllocation { ids, .. } => s(ids),
        EmmgMessage::StreamTest(ids)
        | EmmgMessage::StreamCloseRequest(ids)
        | EmmgMessage::StreamCloseResponse(ids) => s(ids),
        EmmgMessage::DataProvision {
            client_id,
            channel_id,
            ..
        } => ChannelIds {
            client_id: *client_id,
            // over TCP the channel may be left out: it is the connection's
            channel_id: channel_id.unwrap_or(own_channel),
        },
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn clients_are_counted_each_up_to_the_cap_then_together() {
        let one = EmmClientCounts {
            datagrams: 1,
            bytes: 188,
            dropped: 2,
            dropped_bytes: 376,
        };
        let mut c = EmmClients::default();
        for id in 0..(MAX_COUNTED_CLIENTS as u32 + 10) {
            c.add(id, one);
        }
        // a counted client keeps its own row past the cap
        c.add(3, one);
        assert_eq!(c.by_id.len(), MAX_COUNTED_CLIENTS);
        assert_eq!(c.by_id[&3].bytes, 376);
        assert_eq!(c.by_id[&0].dropped, 2);
        assert_eq!(c.others.datagrams, 10);
        assert_eq!(c.others.dropped_bytes, 3760);
    }
    use super::*;

    #[test]
    fn udp_backoff_doubles_from_the_first_pause_to_the_cap_and_stays() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..14 {
            d = next_backoff(d);
            seen.push(d.as_millis());
        }
        assert_eq!(
            seen,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 500, 500, 500, 500, 500]
        );
    }

    fn section(table_id: u8, total: usize) -> Vec<u8> {
        let len = total - 3;
        let mut s = vec![table_id, 0x70 | (len >> 8) as u8, len as u8];
        s.resize(total, 0xAB);
        s
    }

    #[test]
    fn split_chunks_takes_whole_emm_sections_up_to_4096_bytes_and_whole_packets() {
        let mut d = section(0x82, 4096);
        d.extend(section(0x83, 10));
        let chunks = split_chunks(EmmData::Sections, &d).unwrap();
        assert_eq!(
            chunks.iter().map(Bytes::len).collect::<Vec<_>>(),
            [4096, 10]
        );
        let mut over = section(0x82, 10);
        over.extend(section(0x82, 4097));
        assert!(split_chunks(EmmData::Sections, &over).is_none());
        assert!(split_chunks(EmmData::Sections, &section(0x80, 10)).is_none());
        assert!(split_chunks(EmmData::Sections, &[]).is_none());
        let mut pk = vec![0u8; 22 * PACKET_SIZE];
        for p in pk.chunks_mut(PACKET_SIZE) {
            p[0] = 0x47;
        }
        let chunks = split_chunks(EmmData::TsPackets, &pk).unwrap();
        assert_eq!(
            chunks.iter().map(Bytes::len).collect::<Vec<_>>(),
            [21 * PACKET_SIZE, PACKET_SIZE]
        );
        assert!(split_chunks(EmmData::TsPackets, &pk[1..]).is_none());
    }
}
