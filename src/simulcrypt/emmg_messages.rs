//! Typed EMMG<->MUX messages (TS 103 197 §6.2): encode, and decode with every mandatory and
//! optional parameter checked (type, length, count).

use super::tlv::{check_params, CodecError, Encoder, Len, ParamRule, Params, RawMessage};
use super::types::{EmmgParam as P, MessageType as M};

/// The longest datagram parameter accepted: a 4096-byte section, or the 23 TS packets that
/// carry one, with a few packets to spare (25 at most).
pub const MAX_EMM_DATAGRAM: usize = 4096 + 4 * 188;
/// Most datagram parameters in one data_provision.
pub const MAX_DATAGRAMS_PER_MESSAGE: usize = 256;

/// data_type values (TS 103 197 §6.2.4).
pub const DATA_TYPE_EMM: u8 = 0x00;

/// Ids every message of a channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelIds {
    /// client_id.
    pub client_id: u32,
    /// data_channel_id.
    pub channel_id: u16,
}

/// Ids every message of a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamIds {
    /// client_id.
    pub client_id: u32,
    /// data_channel_id.
    pub channel_id: u16,
    /// data_stream_id.
    pub stream_id: u16,
}

/// An EMMG<->MUX message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmmgMessage {
    /// channel_setup.
    ChannelSetup {
        /// Ids.
        ids: ChannelIds,
        /// false: sections; true: TS packets.
        section_tspkt_flag: bool,
    },
    /// channel_test.
    ChannelTest(ChannelIds),
    /// channel_status.
    ChannelStatus {
        /// Ids.
        ids: ChannelIds,
        /// false: sections; true: TS packets.
        section_tspkt_flag: bool,
    },
    /// channel_close.
    ChannelClose(ChannelIds),
    /// channel_error.
    ChannelError {
        /// Ids.
        ids: ChannelIds,
        /// error_status values.
        status: Vec<u16>,
        /// error_information values.
        info: Vec<Vec<u8>>,
    },
    /// stream_setup.
    StreamSetup {
        /// Ids.
        ids: StreamIds,
        /// data_id.
        data_id: u16,
        /// data_type (0 = EMM).
        data_type: u8,
    },
    /// stream_test.
    StreamTest(StreamIds),
    /// stream_status.
    StreamStatus {
        /// Ids.
        ids: StreamIds,
        /// data_id.
        data_id: u16,
        /// data_type.
        data_type: u8,
    },
    /// stream_close_request.
    StreamCloseRequest(StreamIds),
    /// stream_close_response.
    StreamCloseResponse(StreamIds),
    /// stream_error.
    StreamError {
        /// Ids.
        ids: StreamIds,
        /// error_status values.
        status: Vec<u16>,
        /// error_information values.
        info: Vec<Vec<u8>>,
    },
    /// stream_BW_request.
    StreamBwRequest {
        /// Ids.
        ids: StreamIds,
        /// Requested kbit/s (none: just asking what is allocated).
        bandwidth: Option<u16>,
    },
    /// stream_BW_allocation.
    StreamBwAllocation {
        /// Ids.
        ids: StreamIds,
        /// Allocated kbit/s.
        bandwidth: Option<u16>,
    },
    /// data_provision.
    DataProvision {
        /// client_id.
        client_id: u32,
        /// data_channel_id (mandatory over UDP, optional over TCP).
        channel_id: Option<u16>,
        /// data_stream_id (mandatory over UDP, optional over TCP).
        stream_id: Option<u16>,
        /// data_id.
        data_id: u16,
        /// The datagrams (sections or TS packets, per section_TSpkt_flag).
        datagrams: Vec<Vec<u8>>,
    },
}

const fn rule(p: P, len: Len, min: usize, max: usize) -> ParamRule {
    ParamRule {
        ptype: p as u16,
        len,
        min,
        max,
    }
}
const CLIENT: ParamRule = rule(P::ClientId, Len::Fixed(4), 1, 1);
const CH: ParamRule = rule(P::DataChannelId, Len::Fixed(2), 1, 1);
const ST: ParamRule = rule(P::DataStreamId, Len::Fixed(2), 1, 1);
const FLAG: ParamRule = rule(P::SectionTspktFlag, Len::Fixed(1), 1, 1);
const DATA_ID: ParamRule = rule(P::DataId, Len::Fixed(2), 1, 1);
const DATA_TYPE: ParamRule = rule(P::DataType, Len::Fixed(1), 1, 1);
const BW: ParamRule = rule(P::Bandwidth, Len::Fixed(2), 0, 1);
const ERR: ParamRule = rule(P::ErrorStatus, Len::Fixed(2), 1, 0xFFFF);
const INFO: ParamRule = rule(P::ErrorInformation, Len::Range(0, 1024), 0, 0xFFFF);

fn rules(t: M) -> Option<&'static [ParamRule]> {
    Some(match t {
        M::EmmgChannelSetup | M::EmmgChannelStatus => const { &[CLIENT, CH, FLAG] },
        M::EmmgChannelTest | M::EmmgChannelClose => const { &[CLIENT, CH] },
        M::EmmgChannelError => const { &[CLIENT, CH, ERR, INFO] },
        M::EmmgStreamSetup | M::EmmgStreamStatus => const { &[CLIENT, CH, ST, DATA_ID, DATA_TYPE] },
        M::EmmgStreamTest | M::EmmgStreamCloseRequest | M::EmmgStreamCloseResponse => {
            &[CLIENT, CH, ST]
        }
        M::EmmgStreamError => const { &[CLIENT, CH, ST, ERR, INFO] },
        M::EmmgStreamBwRequest | M::EmmgStreamBwAllocation => const { &[CLIENT, CH, ST, BW] },
        M::EmmgDataProvision => {
            const {
                &[
                    CLIENT,
                    rule(P::DataChannelId, Len::Fixed(2), 0, 1),
                    rule(P::DataStreamId, Len::Fixed(2), 0, 1),
                    DATA_ID,
                    rule(
                        P::Datagram,
                        Len::Range(0, MAX_EMM_DATAGRAM),
                        1,
                        MAX_DATAGRAMS_PER_MESSAGE,
                    ),
                ]
            }
        }
        _ => return None,
    })
}

impl EmmgMessage {
    /// The message_type.
    pub fn message_type(&self) -> M {
        match self {
            EmmgMessage::ChannelSetup { .. } => M::EmmgChannelSetup,
            EmmgMessage::ChannelTest(_) => M::EmmgChannelTest,
            EmmgMessage::ChannelStatus { .. } => M::EmmgChannelStatus,
            EmmgMessage::ChannelClose(_) => M::EmmgChannelClose,
            EmmgMessage::ChannelError { .. } => M::EmmgChannelError,
            EmmgMessage::StreamSetup { .. } => M::EmmgStreamSetup,
            EmmgMessage::StreamTest(_) => M::EmmgStreamTest,
            EmmgMessage::StreamStatus { .. } => M::EmmgStreamStatus,
            EmmgMessage::StreamCloseRequest(_) => M::EmmgStreamCloseRequest,
            EmmgMessage::StreamCloseResponse(_) => M::EmmgStreamCloseResponse,
            EmmgMessage::StreamError { .. } => M::EmmgStreamError,
            EmmgMessage::StreamBwRequest { .. } => M::EmmgStreamBwRequest,
            EmmgMessage::StreamBwAllocation { .. } => M::EmmgStreamBwAllocation,
            EmmgMessage::DataProvision { .. } => M::EmmgDataProvision,
        }
    }

    /// Decode one whole message.
    pub fn decode(frame: &[u8]) -> Result<(u8, EmmgMessage), CodecError> {
        let raw = RawMessage::parse(frame)?;
        let t = raw.header.message_type;
        let mt = M::from_u16(t).ok_or(CodecError::UnknownMessageType(t))?;
        let table = rules(mt).ok_or(CodecError::UnknownMessageType(t))?;
        check_params(&raw.params, table)?;
        let p = Params(&raw.params);
        let chan = || -> Result<ChannelIds, CodecError> {
            Ok(ChannelIds {
                client_id: p.u32(P::ClientId as u16)?,
                channel_id: p.u16(P::DataChannelId as u16)?,
            })
        };
        let strm = || -> Result<StreamIds, CodecError> {
            Ok(StreamIds {
                client_id: p.u32(P::ClientId as u16)?,
                channel_id: p.u16(P::DataChannelId as u16)?,
                stream_id: p.u16(P::DataStreamId as u16)?,
            })
        };
        let errs = || p.errors(P::ErrorStatus as u16, P::ErrorInformation as u16);
        let flag = || p.flag(P::SectionTspktFlag as u16);
        let msg = match mt {
            M::EmmgChannelSetup => EmmgMessage::ChannelSetup {
                ids: chan()?,
                section_tspkt_flag: flag()?,
            },
            M::EmmgChannelStatus => EmmgMessage::ChannelStatus {
                ids: chan()?,
                section_tspkt_flag: flag()?,
            },
            M::EmmgChannelTest => EmmgMessage::ChannelTest(chan()?),
            M::EmmgChannelClose => EmmgMessage::ChannelClose(chan()?),
            M::EmmgChannelError => {
                let (status, info) = errs();
                EmmgMessage::ChannelError {
                    ids: chan()?,
                    status,
                    info,
                }
            }
            M::EmmgStreamSetup => EmmgMessage::StreamSetup {
                ids: strm()?,
                data_id: p.u16(P::DataId as u16)?,
                data_type: p.u8(P::DataType as u16)?,
            },
            M::EmmgStreamStatus => EmmgMessage::StreamStatus {
                ids: strm()?,
                data_id: p.u16(P::DataId as u16)?,
                data_type: p.u8(P::DataType as u16)?,
            },
            M::EmmgStreamTest => EmmgMessage::StreamTest(strm()?),
            M::EmmgStreamCloseRequest => EmmgMessage::StreamCloseRequest(strm()?),
            M::EmmgStreamCloseResponse => EmmgMessage::StreamCloseResponse(strm()?),
            M::EmmgStreamError => {
                let (status, info) = errs();
                EmmgMessage::StreamError {
                    ids: strm()?,
                    status,
                    info,
                }
            }
            M::EmmgStreamBwRequest => EmmgMessage::StreamBwRequest {
                ids: strm()?,
                bandwidth: p.opt_u16(P::Bandwidth as u16)?,
            },
            M::EmmgStreamBwAllocation => EmmgMessage::StreamBwAllocation {
                ids: strm()?,
                bandwidth: p.opt_u16(P::Bandwidth as u16)?,
            },
            M::EmmgDataProvision => EmmgMessage::DataProvision {
                client_id: p.u32(P::ClientId as u16)?,
                channel_id: p.opt_u16(P::DataChannelId as u16)?,
                stream_id: p.opt_u16(P::DataStreamId as u16)?,
                data_id: p.u16(P::DataId as u16)?,
                datagrams: p.all(P::Datagram as u16).map(<[u8]>::to_vec).collect(),
            },
            _ => return Err(CodecError::UnknownMessageType(t)),
        };
        Ok((raw.header.version, msg))
    }

    /// Append the message to `out` in protocol `version`.
    pub fn encode(&self, version: u8, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let mut e = Encoder::new(out, version, self.message_type().value());
        let chan = |e: &mut Encoder<'_>, ids: &ChannelIds| {
            e.u32(P::ClientId as u16, ids.client_id)
                .u16(P::DataChannelId as u16, ids.channel_id);
        };
        let strm = |e: &mut Encoder<'_>, ids: &StreamIds| {
            e.u32(P::ClientId as u16, ids.client_id)
                .u16(P::DataChannelId as u16, ids.channel_id)
                .u16(P::DataStreamId as u16, ids.stream_id);
        };
        let errs = |e: &mut Encoder<'_>, status: &[u16], info: &[Vec<u8>]| {
            e.errors(
                P::ErrorStatus as u16,
                P::ErrorInformation as u16,
                status,
                info,
            );
        };
        match self {
            EmmgMessage::ChannelSetup {
                ids,
                section_tspkt_flag,
            }
            | EmmgMessage::ChannelStatus {
                ids,
                section_tspkt_flag,
            } => {
                chan(&mut e, ids);
                e.u8(P::SectionTspktFlag as u16, u8::from(*section_tspkt_flag));
            }
            EmmgMessage::ChannelTest(ids) | EmmgMessage::ChannelClose(ids) => chan(&mut e, ids),
            EmmgMessage::ChannelError { ids, status, info } => {
                chan(&mut e, ids);
                errs(&mut e, status, info);
            }
            EmmgMessage::StreamSetup {
                ids,
                data_id,
                data_type,
            }
            | EmmgMessage::StreamStatus {
                ids,
                data_id,
                data_type,
            } => {
                strm(&mut e, ids);
                e.u16(P::DataId as u16, *data_id)
                    .u8(P::DataType as u16, *data_type);
            }
            EmmgMessage::StreamTest(ids)
            | EmmgMessage::StreamCloseRequest(ids)
            | EmmgMessage::StreamCloseResponse(ids) => strm(&mut e, ids),
            EmmgMessage::StreamError { ids, status, info } => {
                strm(&mut e, ids);
                errs(&mut e, status, info);
            }
            EmmgMessage::StreamBwRequest { ids, bandwidth }
            | EmmgMessage::StreamBwAllocation { ids, bandwidth } => {
                strm(&mut e, ids);
                if let Some(bw) = bandwidth {
                    e.u16(P::Bandwidth as u16, *bw);
                }
            }
            EmmgMessage::DataProvision {
                client_id,
                channel_id,
                stream_id,
                data_id,
                datagrams,
            } => {
                e.u32(P::ClientId as u16, *client_id);
                if let Some(c) = channel_id {
                    e.u16(P::DataChannelId as u16, *c);
                }
                if let Some(s) = stream_id {
                    e.u16(P::DataStreamId as u16, *s);
                }
                e.u16(P::DataId as u16, *data_id);
                for d in datagrams {
                    e.bytes(P::Datagram as u16, d);
                }
            }
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<EmmgMessage> {
        let c = ChannelIds {
            client_id: 0x0B00_0001,
            channel_id: 1,
        };
        let s = StreamIds {
            client_id: 0x0B00_0001,
            channel_id: 1,
            stream_id: 2,
        };
        vec![
            EmmgMessage::ChannelSetup {
                ids: c,
                section_tspkt_flag: false,
            },
            EmmgMessage::ChannelTest(c),
            EmmgMessage::ChannelStatus {
                ids: c,
                section_tspkt_flag: true,
            },
            EmmgMessage::ChannelClose(c),
            EmmgMessage::ChannelError {
                ids: c,
                status: vec![0x0E],
                info: vec![vec![0, 1]],
            },
            EmmgMessage::StreamSetup {
                ids: s,
                data_id: 5,
                data_type: 0,
            },
            EmmgMessage::StreamTest(s),
            EmmgMessage::StreamStatus {
                ids: s,
                data_id: 5,
                data_type: 0,
            },
            EmmgMessage::StreamCloseRequest(s),
            EmmgMessage::StreamCloseResponse(s),
            EmmgMessage::StreamError {
                ids: s,
                status: vec![0x0F],
                info: vec![],
            },
            EmmgMessage::StreamBwRequest {
                ids: s,
                bandwidth: Some(100),
            },
            EmmgMessage::StreamBwAllocation {
                ids: s,
                bandwidth: None,
            },
            EmmgMessage::DataProvision {
                client_id: 0x0B00_0001,
                channel_id: Some(1),
                stream_id: Some(2),
                data_id: 5,
                datagrams: vec![vec![0x82, 0x70, 0], vec![0x83, 0x70, 1, 9]],
            },
        ]
    }

    #[test]
    fn round_trip_every_message_both_versions() {
        for version in [2, 3] {
            for m in samples() {
                let mut buf = Vec::new();
                m.encode(version, &mut buf).unwrap();
                let (v, back) = EmmgMessage::decode(&buf).unwrap();
                assert_eq!((v, back), (version, m));
            }
        }
    }

    #[test]
    fn data_provision_needs_a_datagram() {
        let mut buf = Vec::new();
        EmmgMessage::DataProvision {
            client_id: 1,
            channel_id: None,
            stream_id: None,
            data_id: 1,
            datagrams: vec![],
        }
        .encode(3, &mut buf)
        .unwrap();
        assert_eq!(
            EmmgMessage::decode(&buf),
            Err(CodecError::MissingParameter(0x0005))
        );
    }
}
