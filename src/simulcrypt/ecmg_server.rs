//! The ECMG side of ECMG<->SCS: `castmux ecmg --listen`, so a mux (Astra, TSDuck, castmux)
//! gets ECMs from castmux's CAS.
//!
//! One TCP connection is one channel (TS 103 197 §5.1): channel_setup -> channel_status with
//! this ECMG's parameters, stream_setup -> stream_status, CW_provision -> ECM_response built
//! by an [`EcmBuilder`], channel_test/stream_test -> status, stream_close_request ->
//! stream_close_response, channel_close ends the connection. Anything wrong gets a
//! channel_error or stream_error with the spec's error_status; a message that cannot be
//! framed (too long) gets a channel_error and the connection is closed.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::access::access_criteria_from_bytes;
use super::conn::{FrameReader, LinkError};
use super::datagram::sections_to_packets;
use super::ecmg_messages::{ChannelStatus, CwProvision, EcmgMessage};
use super::tlv::{error_information, peek_header, CodecError, RawMessage, SUPPORTED_VERSIONS};
use super::types::{EcmgErrorStatus as E, EcmgParam};
use crate::cas::ecm::ecm_table_id;
use crate::cas::AccessCriteria;
use crate::net::{AcceptLimits, AcceptLoop, AcceptStats, Handshake};
use crate::scramble::Cw;

/// What an ECM is built from: one crypto period's CWs and the stream's access criteria.
#[derive(Debug)]
pub struct EcmBuildRequest<'a> {
    /// Super_CAS_id of the channel.
    pub super_cas_id: u32,
    /// ECM_id of the stream.
    pub ecm_id: u16,
    /// CP_number the ECM is for (its parity gives the table_id).
    pub cp_number: u16,
    /// The even CW (of `cp_number` if even, else of `cp_number + 1`).
    pub even: &'a Cw,
    /// The odd CW.
    pub odd: &'a Cw,
    /// The access criteria as sent by the SCS.
    pub access_criteria_bytes: &'a [u8],
    /// The same read as a package mask (see [`super::access`]).
    pub access_criteria: AccessCriteria,
    /// CP_duration, if the SCS sent it.
    pub cp_duration: Option<Duration>,
}

impl EcmBuildRequest<'_> {
    /// table_id of the ECM section: 0x80 for an even CP, 0x81 for an odd one.
    pub fn table_id(&self) -> u8 {
        ecm_table_id(u64::from(self.cp_number))
    }
}

/// Why an ECM could not be built.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EcmBuildError(pub String);

/// Makes ECM sections; implemented by the built-in ECMG. Called on the tokio worker, so it
/// must be quick (an AES operation, no I/O).
pub trait EcmBuilder: Send + Sync + 'static {
    /// Append the complete ECM section(s) for `req` to `out` (table_id [`EcmBuildRequest::table_id`]).
    fn build(&self, req: &EcmBuildRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmBuildError>;
}

/// Settings of the ECMG server, announced in channel_status. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct EcmgServerConfig {
    /// Accept only this Super_CAS_id; None accepts any. Default None.
    pub super_cas_id: Option<u32>,
    /// Accept only Super_CAS_ids whose CA_system_ID (top 16 bits) is this, whatever their
    /// CA_subsystem_ID; None accepts any. Default None. An ECMG that can only seal ECMs for
    /// one CA system sets it, so a wrong id is refused at channel_setup rather than with an
    /// error for every CW_provision.
    pub ca_system_id: Option<u16>,
    /// ECM_datagram as TS packets instead of sections. Default false (sections).
    pub section_tspkt_flag: bool,
    /// delay_start, ms. Default 0 (the ECM of period N carries CW(N+1) already).
    pub delay_start: i16,
    /// delay_stop, ms. Default 0.
    pub delay_stop: i16,
    /// ECM_rep_period, ms. Default 100.
    pub ecm_rep_period: u16,
    /// max_streams per channel. Default 128.
    pub max_streams: u16,
    /// min_CP_duration, 100 ms units. Default 10 (1 s).
    pub min_cp_duration: u16,
    /// max_comp_time, ms. Default 100.
    pub max_comp_time: u16,
    /// Connection bounds: at most 64 connections (channels), 48 from one address, and 5 s
    /// from connect to an accepted channel_setup. Default [`AcceptLimits::with_max`]`(64)`.
    pub accept: AcceptLimits,
    /// A channel silent this long is closed. Default 5 minutes.
    pub idle_timeout: Duration,
}

impl Default for EcmgServerConfig {
    fn default() -> Self {
        EcmgServerConfig {
            super_cas_id: None,
            ca_system_id: None,
            section_tspkt_flag: false,
            delay_start: 0,
            delay_stop: 0,
            ecm_rep_period: 100,
            max_streams: 128,
            min_cp_duration: 10,
            max_comp_time: 100,
            accept: AcceptLimits::with_max(64),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Counters of the ECMG server.
#[derive(Debug, Default)]
pub struct EcmgServerStats {
    /// Connections accepted, refused and timed out before their channel_setup.
    pub accept: Arc<AcceptStats>,
    /// Messages received.
    pub messages: AtomicU64,
    /// ECM_responses sent.
    pub ecms: AtomicU64,
    /// channel_error/stream_error sent.
    pub errors_sent: AtomicU64,
    /// channel_error/stream_error received from SCSs.
    pub errors_received: AtomicU64,
    /// ECMs the builder failed to make.
    pub build_failures: AtomicU64,
    /// channel_setups refused for a Super_CAS_id not served (also in `errors_sent`).
    pub setups_refused: AtomicU64,
}

/// The ECMG<->SCS server.
pub struct EcmgServer {
    listener: TcpListener,
    config: Arc<EcmgServerConfig>,
    builder: Arc<dyn EcmBuilder>,
    stats: Arc<EcmgServerStats>,
}

impl std::fmt::Debug for EcmgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcmgServer")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl EcmgServer {
    /// Listen on `addr` (port 0 picks one).
    pub async fn bind(
        addr: SocketAddr,
        config: EcmgServerConfig,
        builder: Arc<dyn EcmBuilder>,
    ) -> std::io::Result<EcmgServer> {
        Ok(EcmgServer {
            listener: TcpListener::bind(addr).await?,
            config: Arc::new(config),
            builder,
            stats: Arc::default(),
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The counters (shared, live).
    pub fn stats(&self) -> Arc<EcmgServerStats> {
        self.stats.clone()
    }

    /// Serve until `shutdown` completes; connections are dropped then.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let acceptor = AcceptLoop::new("ECMG", self.config.accept, self.stats.accept.clone());
        acceptor
            .run(
                &self.listener,
                JoinSet::new(),
                shutdown,
                |sock, peer, handshake| {
                    let mut conn = Connection {
                        config: self.config.clone(),
                        builder: self.builder.clone(),
                        stats: self.stats.clone(),
                        channel: None,
                        version: SUPPORTED_VERSIONS[1],
                        streams: HashMap::new(),
                        out: Vec::with_capacity(1024),
                        scratch: Vec::with_capacity(1024),
                    };
                    async move {
                        // debug only: a flood of connections must not flood the log (the
                        // accept loop counts them; the channel_setup is logged)
                        tracing::debug!(%peer, "ECMG: SCS connected");
                        match conn.serve(sock, handshake).await {
                            Ok(()) => tracing::info!(%peer, "ECMG: SCS disconnected"),
                            Err(e) => tracing::warn!(%peer, error = %e, "ECMG: connection closed"),
                        }
                    }
                },
            )
            .await;
    }
}

struct StreamState {
    ecm_id: u16,
    access_criteria: Vec<u8>,
}

/// One SCS connection = one channel.
struct Connection {
    config: Arc<EcmgServerConfig>,
    builder: Arc<dyn EcmBuilder>,
    stats: Arc<EcmgServerStats>,
    /// (ECM_channel_id, Super_CAS_id) once set up.
    channel: Option<(u16, u32)>,
    /// The version the SCS speaks (answers use it).
    version: u8,
    streams: HashMap<u16, StreamState>,
    out: Vec<u8>,
    scratch: Vec<u8>,
}

enum Next {
    Continue,
    Close,
}

impl Connection {
    async fn serve(&mut self, sock: TcpStream, mut handshake: Handshake) -> Result<(), LinkError> {
        let (rd, mut wr) = sock.into_split();
        let mut reader = FrameReader::new(rd);
        loop {
            let frame = match tokio::time::timeout(self.config.idle_timeout, reader.next()).await {
                Err(_) => return Err(LinkError::Timeout("a message from the SCS")),
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(LinkError::Codec(e))) => {
                    // cannot resync after an unbounded length: say why, then close
                    self.out.clear();
                    self.channel_error(self.channel_id_or(0), e.ecmg_status(), e.parameter());
                    let _ = wr.write_all(&self.out).await;
                    return Err(LinkError::Codec(e));
                }
                Ok(Err(e)) => return Err(e),
            };
            self.stats.messages.fetch_add(1, Relaxed);
            self.out.clear();
            let next = self.handle(&frame);
            // a channel set up is the SCS's first valid message: the slot is its to keep
            if self.channel.is_some() {
                handshake.done();
            }
            if !self.out.is_empty() {
                wr.write_all(&self.out).await?;
            }
            if let Next::Close = next {
                return Ok(());
            }
        }
    }

    fn channel_id_or(&self, default: u16) -> u16 {
        self.channel.map_or(default, |c| c.0)
    }

    fn handle(&mut self, frame: &[u8]) -> Next {
        let msg = match EcmgMessage::decode(frame) {
            Ok((v, m)) => {
                self.version = v;
                m
            }
            Err(e) => {
                self.reply_decode_error(frame, &e);
                return Next::Continue;
            }
        };
        if let EcmgMessage::ChannelSetup {
            channel_id,
            super_cas_id,
        } = msg
        {
            return self.channel_setup(channel_id, super_cas_id);
        }
        let Some((channel_id, super_cas_id)) = self.channel else {
            self.channel_error(msg.channel_id(), E::UnknownChannelId, None);
            return Next::Continue;
        };
        if msg.channel_id() != channel_id {
            self.channel_error(msg.channel_id(), E::UnknownChannelId, None);
            return Next::Continue;
        }
        match msg {
            EcmgMessage::ChannelTest { .. } => self.channel_status(),
            EcmgMessage::ChannelClose { .. } => return Next::Close,
            EcmgMessage::ChannelError { status, .. } | EcmgMessage::StreamError { status, .. } => {
                self.stats.errors_received.fetch_add(1, Relaxed);
                for s in status {
                    tracing::warn!(
                        error = %super::types::error_status_name(true, s),
                        "ECMG: the SCS reported an error"
                    );
                }
            }
            EcmgMessage::StreamSetup {
                stream_id, ecm_id, ..
            } => self.stream_setup(channel_id, stream_id, ecm_id),
            EcmgMessage::StreamTest { stream_id, .. } => {
                if self.streams.contains_key(&stream_id) {
                    self.stream_status(channel_id, stream_id);
                } else {
                    self.stream_error(channel_id, stream_id, E::UnknownStreamId, None);
                }
            }
            EcmgMessage::StreamCloseRequest { stream_id, .. } => {
                if self.streams.remove(&stream_id).is_some() {
                    self.send(&EcmgMessage::StreamCloseResponse {
                        channel_id,
                        stream_id,
                    });
                } else {
                    self.stream_error(channel_id, stream_id, E::UnknownStreamId, None);
                }
            }
            EcmgMessage::CwProvision(cp) => self.cw_provision(super_cas_id, cp),
            // messages an ECMG sends, not receives
            EcmgMessage::ChannelStatus(_)
            | EcmgMessage::StreamStatus { .. }
            | EcmgMessage::StreamCloseResponse { .. }
            | EcmgMessage::EcmResponse { .. }
            | EcmgMessage::ChannelSetup { .. } => {
                self.channel_error(channel_id, E::InvalidMessage, None);
            }
        }
        Next::Continue
    }

    fn channel_setup(&mut self, channel_id: u16, super_cas_id: u32) -> Next {
        if self.channel.is_some() {
            self.channel_error(channel_id, E::ChannelIdInUse, None);
            return Next::Continue;
        }
        let ca_system_id = (super_cas_id >> 16) as u16;
        if self.config.super_cas_id.is_some_and(|s| s != super_cas_id)
            || self.config.ca_system_id.is_some_and(|c| c != ca_system_id)
        {
            self.stats.setups_refused.fetch_add(1, Relaxed);
            tracing::warn!(
                super_cas_id = format_args!("{super_cas_id:08X}"),
                "ECMG: channel_setup for a Super_CAS_id this ECMG does not serve; refused"
            );
            self.channel_error(
                channel_id,
                E::UnknownSuperCasId,
                Some(EcmgParam::SuperCasId.value()),
            );
            return Next::Continue;
        }
        tracing::info!(
            channel_id,
            super_cas_id = format_args!("{super_cas_id:08X}"),
            version = self.version,
            "ECMG: channel set up"
        );
        self.channel = Some((channel_id, super_cas_id));
        self.channel_status();
        Next::Continue
    }

    fn channel_status(&mut self) {
        let c = &self.config;
        let status = ChannelStatus {
            channel_id: self.channel_id_or(0),
            section_tspkt_flag: c.section_tspkt_flag,
            ac_delay_start: None,
            ac_delay_stop: None,
            delay_start: c.delay_start,
            delay_stop: c.delay_stop,
            transition_delay_start: None,
            transition_delay_stop: None,
            ecm_rep_period: c.ecm_rep_period,
            max_streams: c.max_streams,
            min_cp_duration: c.min_cp_duration,
            // the ECM of period N carries CW(N) and CW(N+1)
            lead_cw: 1,
            cw_per_msg: 2,
            max_comp_time: c.max_comp_time,
        };
        self.send(&EcmgMessage::ChannelStatus(status));
    }

    fn stream_setup(&mut self, channel_id: u16, stream_id: u16, ecm_id: u16) {
        if self.streams.contains_key(&stream_id) {
            self.stream_error(channel_id, stream_id, E::StreamIdInUse, None);
        } else if self.streams.values().any(|s| s.ecm_id == ecm_id) {
            self.stream_error(channel_id, stream_id, E::EcmIdInUse, None);
        } else if self.streams.len() >= usize::from(self.config.max_streams) {
            self.stream_error(channel_id, stream_id, E::TooManyStreamsOnChannel, None);
        } else {
            self.streams.insert(
                stream_id,
                StreamState {
                    ecm_id,
                    access_criteria: Vec::new(),
                },
            );
            self.stream_status(channel_id, stream_id);
        }
    }

    fn stream_status(&mut self, channel_id: u16, stream_id: u16) {
        let ecm_id = self.streams.get(&stream_id).map_or(0, |s| s.ecm_id);
        self.send(&EcmgMessage::StreamStatus {
            channel_id,
            stream_id,
            ecm_id,
            // access criteria are kept per stream: the SCS sends them when they change
            access_criteria_transfer_mode: false,
        });
    }

    fn cw_provision(&mut self, super_cas_id: u32, cp: CwProvision) {
        let (ch, st) = (cp.channel_id, cp.stream_id);
        let Some(stream) = self.streams.get_mut(&st) else {
            self.stream_error(ch, st, E::UnknownStreamId, None);
            return;
        };
        if let Some(ac) = cp.access_criteria {
            stream.access_criteria = ac;
        }
        let cw_of = |n: u16| cp.cp_cw.iter().find(|x| x.cp_number == n).map(|x| &x.cw);
        let (Some(current), Some(next)) =
            (cw_of(cp.cp_number), cw_of(cp.cp_number.wrapping_add(1)))
        else {
            self.stream_error(
                ch,
                st,
                E::NotEnoughCws,
                Some(EcmgParam::CpCwCombination.value()),
            );
            return;
        };
        let Some(ac) = access_criteria_from_bytes(&stream.access_criteria) else {
            self.stream_error(
                ch,
                st,
                E::InvalidValue,
                Some(EcmgParam::AccessCriteria.value()),
            );
            return;
        };
        let (even, odd) = if cp.cp_number.is_multiple_of(2) {
            (current, next)
        } else {
            (next, current)
        };
        let req = EcmBuildRequest {
            super_cas_id,
            ecm_id: stream.ecm_id,
            cp_number: cp.cp_number,
            even,
            odd,
            access_criteria_bytes: &stream.access_criteria,
            access_criteria: ac,
            cp_duration: cp
                .cp_duration
                .map(|d| Duration::from_millis(u64::from(d) * 100)),
        };
        self.scratch.clear();
        let built = self
            .builder
            .build(&req, &mut self.scratch)
            .map_err(|e| e.0)
            .and_then(|()| {
                super::datagram::check_sections(&self.scratch).map_err(|e| e.to_string())
            });
        if let Err(e) = built {
            self.stats.build_failures.fetch_add(1, Relaxed);
            tracing::warn!(stream_id = st, cp = cp.cp_number, error = %e, "ECMG: ECM build failed");
            self.stream_error(ch, st, E::UnknownError, None);
            return;
        }
        let datagram = if self.config.section_tspkt_flag {
            let mut pk = Vec::with_capacity(self.scratch.len() / 184 * 188 + 188);
            if sections_to_packets(&self.scratch, &mut pk).is_err() {
                self.stream_error(ch, st, E::UnknownError, None);
                return;
            }
            pk
        } else {
            self.scratch.clone()
        };
        self.stats.ecms.fetch_add(1, Relaxed);
        self.send(&EcmgMessage::EcmResponse {
            channel_id: ch,
            stream_id: st,
            cp_number: cp.cp_number,
            datagram,
        });
    }

    /// Answer a message that could not be decoded: stream_error when it names a known
    /// stream, else channel_error.
    fn reply_decode_error(&mut self, frame: &[u8], e: &CodecError) {
        tracing::warn!(error = %e, "ECMG: bad message from the SCS");
        if let CodecError::UnsupportedVersion(_) = e {
            // answer in a version the SCS may understand
            self.version = SUPPORTED_VERSIONS[0];
        }
        let raw = RawMessage::parse(frame).ok();
        let ch = raw
            .as_ref()
            .and_then(|r| r.find_u16(EcmgParam::EcmChannelId.value()))
            .unwrap_or(self.channel_id_or(0));
        let st = raw
            .as_ref()
            .and_then(|r| r.find_u16(EcmgParam::EcmStreamId.value()));
        let stream_level = peek_header(frame).is_some_and(|h| h.message_type >= 0x0100);
        match st {
            Some(st) if stream_level && self.streams.contains_key(&st) => {
                self.stream_error(ch, st, e.ecmg_status(), e.parameter());
            }
            _ => self.channel_error(ch, e.ecmg_status(), e.parameter()),
        }
    }

    fn channel_error(&mut self, channel_id: u16, status: E, param: Option<u16>) {
        self.stats.errors_sent.fetch_add(1, Relaxed);
        self.send(&EcmgMessage::ChannelError {
            channel_id,
            status: vec![status.value()],
            info: error_information(param),
        });
    }

    fn stream_error(&mut self, channel_id: u16, stream_id: u16, status: E, param: Option<u16>) {
        self.stats.errors_sent.fetch_add(1, Relaxed);
        self.send(&EcmgMessage::StreamError {
            channel_id,
            stream_id,
            status: vec![status.value()],
            info: error_information(param),
        });
    }

    fn send(&mut self, m: &EcmgMessage) {
        // our own messages are bounded (ECM datagrams were checked); a failure is a bug
        if let Err(e) = m.encode(self.version, &mut self.out) {
            tracing::error!(error = %e, "ECMG: could not encode a reply");
        }
    }
}
