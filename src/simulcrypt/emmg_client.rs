//! The EMMG side of EMMG<->MUX (`castmux emmg --mux HOST:PORT [--udp]`): connect to a mux's
//! EMMG port, set up channel and stream, ask for bandwidth, then feed EMMs from an
//! [`EmmSource`] (the built-in EMM carousel) at the allocated bandwidth with data_provision,
//! over TCP or UDP. Keepalive with channel_test; reconnect with backoff.
//!
//! [`EmmgPace`] can also set it to send above its allocation on purpose: a load test's
//! EMMG flood, which the mux must police.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpStream, UdpSocket};

use super::conn::{FrameReader, LinkError};
use super::datagram::packets_to_sections;
use super::emmg_messages::{ChannelIds, EmmgMessage, StreamIds, DATA_TYPE_EMM};
use super::types::{error_status_names, EmmgErrorStatus};
use crate::cas::emmg::section_air_bytes;
use crate::scramble::emm::{EmmData, EmmSource};

/// Settings of the EMMG client. [`EmmgConfig::new`] fills the documented defaults.
#[derive(Debug, Clone)]
pub struct EmmgConfig {
    /// The mux's EMMG port, `host:port`.
    pub mux: String,
    /// Send data_provision over UDP (to the same host:port) instead of the TCP connection.
    pub udp: bool,
    /// Protocol version (2 or 3). Default 3.
    pub version: u8,
    /// client_id (TVCAS uses its Super_CAS_id, e.g. 0x0B000001).
    pub client_id: u32,
    /// data_channel_id. Default 1.
    pub channel_id: u16,
    /// data_stream_id. Default 1.
    pub stream_id: u16,
    /// data_id. Default 1.
    pub data_id: u16,
    /// Bandwidth asked for, kbit/s. Default 64.
    pub bandwidth_kbps: u16,
    /// channel_test interval. Default 10 s.
    pub keepalive: Duration,
    /// Time allowed for connecting and each setup answer. Default 5 s.
    pub setup_timeout: Duration,
    /// First reconnect delay (doubles up to 10 s). Default 500 ms.
    pub backoff_min: Duration,
    /// How fast EMMs are sent. Default [`EmmgPace::Allocation`].
    pub pace: EmmgPace,
}

/// How fast the client sends, counted in the bytes the EMMs take on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmmgPace {
    /// A little under the allocated bandwidth, so the mux never has to drop: what an EMMG
    /// does.
    Allocation,
    /// This many bit/s whatever the allocation: a flood when it is above it.
    Fixed(u64),
    /// As much as the link takes: up to [`UNPACED_PER_TICK`] bytes every 10 ms tick, the
    /// writes waiting on TCP's flow control.
    Unpaced,
}

/// The most an unpaced client queues in one 10 ms tick (about 800 Mbit/s), so the tick
/// still ends and the mux's messages (errors, channel_test) are read between bursts.
pub const UNPACED_PER_TICK: usize = 1 << 20;

impl EmmgConfig {
    /// Settings for `mux` and `client_id` with the defaults above.
    pub fn new(mux: impl Into<String>, client_id: u32) -> Self {
        EmmgConfig {
            mux: mux.into(),
            udp: false,
            version: 3,
            client_id,
            channel_id: 1,
            stream_id: 1,
            data_id: 1,
            bandwidth_kbps: 64,
            keepalive: Duration::from_secs(10),
            setup_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            pace: EmmgPace::Allocation,
        }
    }

    fn ids(&self) -> StreamIds {
        StreamIds {
            client_id: self.client_id,
            channel_id: self.channel_id,
            stream_id: self.stream_id,
        }
    }

    fn chan(&self) -> ChannelIds {
        ChannelIds {
            client_id: self.client_id,
            channel_id: self.channel_id,
        }
    }
}

/// Counters of the EMMG client (live).
#[derive(Debug, Default)]
pub struct EmmgStats {
    /// Successful setups.
    pub setups: AtomicU64,
    /// Links lost or refused.
    pub link_failures: AtomicU64,
    /// Bandwidth allocated by the mux, kbit/s.
    pub allocated_kbps: AtomicU64,
    /// data_provision messages sent.
    pub messages_sent: AtomicU64,
    /// EMM datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Bytes of datagrams sent.
    pub bytes_sent: AtomicU64,
    /// EMM chunks from the source that could not be sent (bad packets).
    pub rejected: AtomicU64,
    /// channel_error/stream_error from the mux.
    pub errors_received: AtomicU64,
}

/// Largest data_provision body built (several datagrams per message up to this).
const MESSAGE_BUDGET: usize = 8 * 1024;

/// Run the EMMG until `shutdown`; reconnects on its own.
pub async fn run_emmg(
    config: EmmgConfig,
    source: &mut dyn EmmSource,
    stats: Arc<EmmgStats>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let start = Instant::now();
    let mut backoff = config.backoff_min;
    loop {
        let mut established = false;
        let res = tokio::select! {
            _ = &mut shutdown => return,
            r = session(&config, source, &stats, start, &mut established) => r,
        };
        stats.link_failures.fetch_add(1, Relaxed);
        if established {
            backoff = config.backoff_min;
        }
        if let Err(e) = res {
            tracing::warn!(mux = %config.mux, error = %e, retry_in = ?backoff, "EMMG link down");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn send(
    wr: &mut OwnedWriteHalf,
    version: u8,
    m: &EmmgMessage,
    buf: &mut Vec<u8>,
) -> Result<(), LinkError> {
    buf.clear();
    m.encode(version, buf)?;
    wr.write_all(buf).await?;
    Ok(())
}

async fn expect<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    timeout: Duration,
    what: &'static str,
) -> Result<EmmgMessage, LinkError> {
    let frame = tokio::time::timeout(timeout, reader.next())
        .await
        .map_err(|_| LinkError::Timeout(what))??
        .ok_or_else(|| LinkError::Peer(format!("the mux closed before sending {what}")))?;
    match EmmgMessage::decode(&frame)?.1 {
        EmmgMessage::ChannelError { status, .. } | EmmgMessage::StreamError { status, .. } => Err(
            LinkError::Peer(format!("the mux refused: {}", describe(&status))),
        ),
        m => Ok(m),
    }
}

fn describe(status: &[u16]) -> String {
    error_status_names(false, status)
}

async fn session(
    c: &EmmgConfig,
    source: &mut dyn EmmSource,
    stats: &EmmgStats,
    start: Instant,
    established: &mut bool,
) -> Result<(), LinkError> {
    let sock = tokio::time::timeout(c.setup_timeout, TcpStream::connect(&c.mux))
        .await
        .map_err(|_| LinkError::Timeout("the TCP connection to the mux"))??;
    let _ = sock.set_nodelay(true);
    let peer = sock.peer_addr()?;
    let (rd, mut wr) = sock.into_split();
    let mut reader = FrameReader::new(rd);
    let mut buf = Vec::with_capacity(MESSAGE_BUDGET + 64);
    let v = c.version;

    send(
        &mut wr,
        v,
        &EmmgMessage::ChannelSetup {
            ids: c.chan(),
            section_tspkt_flag: false,
        },
        &mut buf,
    )
    .await?;
    loop {
        if let EmmgMessage::ChannelStatus { .. } =
            expect(&mut reader, c.setup_timeout, "channel_status").await?
        {
            break;
        }
    }
    send(
        &mut wr,
        v,
        &EmmgMessage::StreamSetup {
            ids: c.ids(),
            data_id: c.data_id,
            data_type: DATA_TYPE_EMM,
        },
        &mut buf,
    )
    .await?;
    loop {
        if let EmmgMessage::StreamStatus { .. } =
            expect(&mut reader, c.setup_timeout, "stream_status").await?
        {
            break;
        }
    }
    send(
        &mut wr,
        v,
        &EmmgMessage::StreamBwRequest {
            ids: c.ids(),
            bandwidth: Some(c.bandwidth_kbps),
        },
        &mut buf,
    )
    .await?;
    let kbps = loop {
        if let EmmgMessage::StreamBwAllocation { bandwidth, .. } =
            expect(&mut reader, c.setup_timeout, "stream_BW_allocation").await?
        {
            break bandwidth.unwrap_or(c.bandwidth_kbps);
        }
    };
    *established = true;
    stats.setups.fetch_add(1, Relaxed);
    stats.allocated_kbps.store(u64::from(kbps), Relaxed);
    tracing::info!(mux = %c.mux, allocated_kbps = kbps, udp = c.udp, "EMMG stream set up");
    let udp = if c.udp {
        let local = if peer.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let u = UdpSocket::bind(local).await?;
        u.connect(peer).await?;
        Some(u)
    } else {
        None
    };

    // bytes a second and the most sent in one tick
    let (rate, burst) = match c.pace {
        // a little under the allocation, so the mux's policer never has to drop
        EmmgPace::Allocation => {
            let rate = f64::from(kbps) * 1000.0 / 8.0 * 0.95;
            (rate, (rate * 0.05).max(4096.0))
        }
        EmmgPace::Fixed(bps) => {
            let rate = bps as f64 / 8.0;
            (rate, (rate * 0.05).max(4096.0))
        }
        EmmgPace::Unpaced => (f64::INFINITY, UNPACED_PER_TICK as f64),
    };
    // a flood is told off by the mux every second; that is what it is for
    let over_on_purpose = c.pace != EmmgPace::Allocation;
    let mut tokens = burst;
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_test = Instant::now();
    let mut last_rx = Instant::now();
    let mut chunk = Vec::with_capacity(4096);
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    loop {
        tokio::select! {
            frame = reader.next() => {
                let frame = frame?.ok_or_else(|| LinkError::Peer("the mux closed the connection".to_owned()))?;
                last_rx = Instant::now();
                match EmmgMessage::decode(&frame) {
                    Ok((_, EmmgMessage::ChannelError { status, .. } | EmmgMessage::StreamError { status, .. })) => {
                        stats.errors_received.fetch_add(1, Relaxed);
                        if over_on_purpose && status == [EmmgErrorStatus::ExceededBandwidth as u16] {
                            tracing::debug!("the mux reports the flood above the allocation");
                        } else {
                            tracing::warn!(error = %describe(&status), "the mux reported an error");
                        }
                    }
                    Ok((_, EmmgMessage::ChannelClose(_) | EmmgMessage::StreamCloseRequest(_))) => {
                        return Err(LinkError::Peer("the mux closed the channel".to_owned()));
                    }
                    Ok((_, EmmgMessage::StreamBwAllocation { bandwidth: Some(bw), .. })) => {
                        stats.allocated_kbps.store(u64::from(bw), Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "bad message from the mux"),
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if now.duration_since(last_rx) > c.keepalive * 3 {
                    return Err(LinkError::Timeout("any message from the mux (keepalive)"));
                }
                if now.duration_since(last_test) >= c.keepalive {
                    last_test = now;
                    send(&mut wr, v, &EmmgMessage::ChannelTest(c.chan()), &mut buf).await?;
                }
                tokens = if rate.is_finite() {
                    (tokens + now.duration_since(last).as_secs_f64() * rate).min(burst)
                } else {
                    burst
                };
                last = now;
                let mut size = 0;
                while tokens > 0.0 {
                    chunk.clear();
                    let Some(kind) = source.poll(now.duration_since(start), &mut chunk) else {
                        break;
                    };
                    let bytes = match kind {
                        EmmData::Sections => std::mem::take(&mut chunk),
                        EmmData::TsPackets => {
                            let mut s = Vec::with_capacity(chunk.len());
                            if packets_to_sections(&chunk, &mut s).is_err() {
                                stats.rejected.fetch_add(1, Relaxed);
                                continue;
                            }
                            s
                        }
                    };
                    // the bytes the EMM takes on air once packetized
                    tokens -= section_air_bytes(bytes.len()) as f64;
                    size += bytes.len() + 4;
                    datagrams.push(bytes);
                    if size >= MESSAGE_BUDGET {
                        flush(c, &mut wr, udp.as_ref(), &mut datagrams, &mut buf, stats).await?;
                        size = 0;
                    }
                }
                flush(c, &mut wr, udp.as_ref(), &mut datagrams, &mut buf, stats).await?;
            }
        }
    }
}

async fn flush(
    c: &EmmgConfig,
    wr: &mut OwnedWriteHalf,
    udp: Option<&UdpSocket>,
    datagrams: &mut Vec<Vec<u8>>,
    buf: &mut Vec<u8>,
    stats: &EmmgStats,
) -> Result<(), LinkError> {
    if datagrams.is_empty() {
        return Ok(());
    }
    let n = datagrams.len() as u64;
    let bytes: usize = datagrams.iter().map(Vec::len).sum();
    let m = EmmgMessage::DataProvision {
        client_id: c.client_id,
        channel_id: Some(c.channel_id),
        stream_id: Some(c.stream_id),
        data_id: c.data_id,
        datagrams: std::mem::take(datagrams),
    };
    buf.clear();
    m.encode(c.version, buf)?;
    match udp {
        Some(u) => {
            u.send(buf).await?;
        }
        None => wr.write_all(buf).await?,
    }
    stats.messages_sent.fetch_add(1, Relaxed);
    stats.datagrams_sent.fetch_add(n, Relaxed);
    stats.bytes_sent.fetch_add(bytes as u64, Relaxed);
    Ok(())
}
