//! Typed ECMG<->SCS messages (TS 103 197 §5.5): encode, and decode with every mandatory and
//! optional parameter checked (type, length, count).

use super::tlv::{check_params, CodecError, Encoder, Len, ParamRule, Params, RawMessage};
use super::types::{EcmgParam as P, MessageType as M};
use crate::scramble::Cw;

/// The longest ECM_datagram or access_criteria accepted (one 4096-byte private section, or
/// the same in TS packets).
pub const MAX_DATAGRAM: usize = 4096 + 4 * 188;

/// ECMG parameters announced in channel_status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStatus {
    /// ECM_channel_id.
    pub channel_id: u16,
    /// false: ECM_datagram is sections; true: TS packets.
    pub section_tspkt_flag: bool,
    /// AC_delay_start, ms (optional).
    pub ac_delay_start: Option<i16>,
    /// AC_delay_stop, ms (optional).
    pub ac_delay_stop: Option<i16>,
    /// delay_start, ms: when an ECM goes on air relative to its crypto period's start.
    pub delay_start: i16,
    /// delay_stop, ms.
    pub delay_stop: i16,
    /// transition_delay_start, ms (optional).
    pub transition_delay_start: Option<i16>,
    /// transition_delay_stop, ms (optional).
    pub transition_delay_stop: Option<i16>,
    /// ECM_rep_period, ms.
    pub ecm_rep_period: u16,
    /// max_streams.
    pub max_streams: u16,
    /// min_CP_duration, 100 ms units.
    pub min_cp_duration: u16,
    /// lead_CW.
    pub lead_cw: u8,
    /// CW_per_msg.
    pub cw_per_msg: u8,
    /// max_comp_time, ms.
    pub max_comp_time: u16,
}

/// One CP_CW_combination: a crypto period and its CW.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpCw {
    /// CP_number.
    pub cp_number: u16,
    /// The CW (8 or 16 bytes; redacted in Debug).
    pub cw: Cw,
}

/// CW_provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwProvision {
    /// ECM_channel_id.
    pub channel_id: u16,
    /// ECM_stream_id.
    pub stream_id: u16,
    /// CP_number of the period the ECM is for.
    pub cp_number: u16,
    /// CW_encryption (opaque; castmux sends none).
    pub cw_encryption: Option<Vec<u8>>,
    /// CP_CW_combination, current first then the next ones.
    pub cp_cw: Vec<CpCw>,
    /// CP_duration, 100 ms units.
    pub cp_duration: Option<u16>,
    /// access_criteria as the SCS sends them (see docs/simulcrypt.md for how castmux reads them).
    pub access_criteria: Option<Vec<u8>>,
}

/// An ECMG<->SCS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcmgMessage {
    /// channel_setup.
    ChannelSetup {
        /// ECM_channel_id.
        channel_id: u16,
        /// Super_CAS_id.
        super_cas_id: u32,
    },
    /// channel_test.
    ChannelTest {
        /// ECM_channel_id.
        channel_id: u16,
    },
    /// channel_status.
    ChannelStatus(ChannelStatus),
    /// channel_close.
    ChannelClose {
        /// ECM_channel_id.
        channel_id: u16,
    },
    /// channel_error.
    ChannelError {
        /// ECM_channel_id.
        channel_id: u16,
        /// error_status values.
        status: Vec<u16>,
        /// error_information values.
        info: Vec<Vec<u8>>,
    },
    /// stream_setup.
    StreamSetup {
        /// ECM_channel_id.
        channel_id: u16,
        /// ECM_stream_id.
        stream_id: u16,
        /// ECM_id.
        ecm_id: u16,
        /// nominal_CP_duration, 100 ms units.
        nominal_cp_duration: u16,
    },
    /// stream_test.
    StreamTest {
        /// ECM_channel_id.
        channel_id: u16,
        /// ECM_stream_id.
        stream_id: u16,
    },
    /// stream_status.
    StreamStatus {
        /// ECM_channel_id.
        channel_id: u16,
        /// ECM_stream_id.
        stream_id: u16,
        /// ECM_id.
        ecm_id: u16,
        /// true: the ECMG wants access_criteria in every CW_provision.
        access_criteria_transfer_mode: bool,
    },
    /// stream_close_request.
    StreamCloseRequest {
        /// ECM_channel_id.
        channel_id: u16,
        /// ECM_stream_id.
        stream_id: u16,
    },
    /// stream_close_response.
    StreamCloseResponse {
        /// ECM_channel_id.
        channel_id: u16,
        /// ECM_stream_id.
        stream_id: u16,
    },
    /// stream_error.
    StreamError {
        /// ECM_channel_id.
        channel_id: u16,
        /// ECM_stream_id.
        stream_id: u16,
        /// error_status values.
        status: Vec<u16>,
        /// error_information values.
        info: Vec<Vec<u8>>,
    },
    /// CW_provision.
    CwProvision(CwProvision),
    /// ECM_response.
    EcmResponse {
        /// ECM_channel_id.
        channel_id: u16,
        /// ECM_stream_id.
        stream_id: u16,
        /// CP_number.
        cp_number: u16,
        /// ECM_datagram.
        datagram: Vec<u8>,
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
const ONE: usize = 1;
const MANY: usize = 0xFFFF;
const CH: ParamRule = rule(P::EcmChannelId, Len::Fixed(2), ONE, ONE);
const ST: ParamRule = rule(P::EcmStreamId, Len::Fixed(2), ONE, ONE);
const ERR: ParamRule = rule(P::ErrorStatus, Len::Fixed(2), ONE, MANY);
const INFO: ParamRule = rule(P::ErrorInformation, Len::Range(0, 1024), 0, MANY);

/// The parameter table of each message type.
fn rules(t: M) -> Option<&'static [ParamRule]> {
    use Len::Fixed;
    Some(match t {
        M::EcmgChannelSetup => const { &[CH, rule(P::SuperCasId, Fixed(4), ONE, ONE)] },
        M::EcmgChannelTest | M::EcmgChannelClose => const { &[CH] },
        M::EcmgChannelStatus => {
            const {
                &[
                    CH,
                    rule(P::SectionTspktFlag, Fixed(1), ONE, ONE),
                    rule(P::AcDelayStart, Fixed(2), 0, ONE),
                    rule(P::AcDelayStop, Fixed(2), 0, ONE),
                    rule(P::DelayStart, Fixed(2), ONE, ONE),
                    rule(P::DelayStop, Fixed(2), ONE, ONE),
                    rule(P::TransitionDelayStart, Fixed(2), 0, ONE),
                    rule(P::TransitionDelayStop, Fixed(2), 0, ONE),
                    rule(P::EcmRepPeriod, Fixed(2), ONE, ONE),
                    rule(P::MaxStreams, Fixed(2), ONE, ONE),
                    rule(P::MinCpDuration, Fixed(2), ONE, ONE),
                    rule(P::LeadCw, Fixed(1), ONE, ONE),
                    rule(P::CwPerMsg, Fixed(1), ONE, ONE),
                    rule(P::MaxCompTime, Fixed(2), ONE, ONE),
                ]
            }
        }
        M::EcmgChannelError => const { &[CH, ERR, INFO] },
        M::EcmgStreamSetup => {
            const {
                &[
                    CH,
                    ST,
                    rule(P::EcmId, Fixed(2), ONE, ONE),
                    rule(P::NominalCpDuration, Fixed(2), ONE, ONE),
                ]
            }
        }
        M::EcmgStreamTest | M::EcmgStreamCloseRequest | M::EcmgStreamCloseResponse => {
            const { &[CH, ST] }
        }
        M::EcmgStreamStatus => {
            const {
                &[
                    CH,
                    ST,
                    rule(P::EcmId, Fixed(2), ONE, ONE),
                    rule(P::AccessCriteriaTransferMode, Fixed(1), ONE, ONE),
                ]
            }
        }
        M::EcmgStreamError => const { &[CH, ST, ERR, INFO] },
        M::EcmgCwProvision => {
            const {
                &[
                    CH,
                    ST,
                    rule(P::CpNumber, Fixed(2), ONE, ONE),
                    rule(P::CwEncryption, Len::Range(0, MAX_DATAGRAM), 0, ONE),
                    // CP (2) + a CW of 8 or 16 bytes; the CW length is checked when decoding
                    rule(P::CpCwCombination, Len::Range(2, 2 + 16), 0, 16),
                    rule(P::CpDuration, Fixed(2), 0, ONE),
                    rule(P::AccessCriteria, Len::Range(0, MAX_DATAGRAM), 0, ONE),
                ]
            }
        }
        M::EcmgEcmResponse => {
            const {
                &[
                    CH,
                    ST,
                    rule(P::CpNumber, Fixed(2), ONE, ONE),
                    rule(P::EcmDatagram, Len::Range(0, MAX_DATAGRAM), ONE, ONE),
                ]
            }
        }
        _ => return None,
    })
}

impl EcmgMessage {
    /// The message_type.
    pub fn message_type(&self) -> M {
        match self {
            EcmgMessage::ChannelSetup { .. } => M::EcmgChannelSetup,
            EcmgMessage::ChannelTest { .. } => M::EcmgChannelTest,
            EcmgMessage::ChannelStatus(_) => M::EcmgChannelStatus,
            EcmgMessage::ChannelClose { .. } => M::EcmgChannelClose,
            EcmgMessage::ChannelError { .. } => M::EcmgChannelError,
            EcmgMessage::StreamSetup { .. } => M::EcmgStreamSetup,
            EcmgMessage::StreamTest { .. } => M::EcmgStreamTest,
            EcmgMessage::StreamStatus { .. } => M::EcmgStreamStatus,
            EcmgMessage::StreamCloseRequest { .. } => M::EcmgStreamCloseRequest,
            EcmgMessage::StreamCloseResponse { .. } => M::EcmgStreamCloseResponse,
            EcmgMessage::StreamError { .. } => M::EcmgStreamError,
            EcmgMessage::CwProvision(_) => M::EcmgCwProvision,
            EcmgMessage::EcmResponse { .. } => M::EcmgEcmResponse,
        }
    }

    /// ECM_channel_id (every message has one).
    pub fn channel_id(&self) -> u16 {
        match self {
            EcmgMessage::ChannelSetup { channel_id, .. }
            | EcmgMessage::ChannelTest { channel_id }
            | EcmgMessage::ChannelClose { channel_id }
            | EcmgMessage::ChannelError { channel_id, .. }
            | EcmgMessage::StreamSetup { channel_id, .. }
            | EcmgMessage::StreamTest { channel_id, .. }
            | EcmgMessage::StreamStatus { channel_id, .. }
            | EcmgMessage::StreamCloseRequest { channel_id, .. }
            | EcmgMessage::StreamCloseResponse { channel_id, .. }
            | EcmgMessage::StreamError { channel_id, .. }
            | EcmgMessage::EcmResponse { channel_id, .. } => *channel_id,
            EcmgMessage::ChannelStatus(s) => s.channel_id,
            EcmgMessage::CwProvision(c) => c.channel_id,
        }
    }

    /// Decode one whole message (exactly the bytes [`super::tlv::frame_len`] gave).
    pub fn decode(frame: &[u8]) -> Result<(u8, EcmgMessage), CodecError> {
        let raw = RawMessage::parse(frame)?;
        let t = raw.header.message_type;
        let mt = M::from_u16(t).ok_or(CodecError::UnknownMessageType(t))?;
        let table = rules(mt).ok_or(CodecError::UnknownMessageType(t))?;
        check_params(&raw.params, table)?;
        let p = Params(&raw.params);
        let ch = || p.u16(P::EcmChannelId as u16);
        let st = || p.u16(P::EcmStreamId as u16);
        let errs = || p.errors(P::ErrorStatus as u16, P::ErrorInformation as u16);
        let msg = match mt {
            M::EcmgChannelSetup => EcmgMessage::ChannelSetup {
                channel_id: ch()?,
                super_cas_id: p.u32(P::SuperCasId as u16)?,
            },
            M::EcmgChannelTest => EcmgMessage::ChannelTest { channel_id: ch()? },
            M::EcmgChannelClose => EcmgMessage::ChannelClose { channel_id: ch()? },
            M::EcmgChannelStatus => EcmgMessage::ChannelStatus(ChannelStatus {
                channel_id: ch()?,
                section_tspkt_flag: p.flag(P::SectionTspktFlag as u16)?,
                ac_delay_start: p.opt_i16(P::AcDelayStart as u16)?,
                ac_delay_stop: p.opt_i16(P::AcDelayStop as u16)?,
                delay_start: p.i16(P::DelayStart as u16)?,
                delay_stop: p.i16(P::DelayStop as u16)?,
                transition_delay_start: p.opt_i16(P::TransitionDelayStart as u16)?,
                transition_delay_stop: p.opt_i16(P::TransitionDelayStop as u16)?,
                ecm_rep_period: p.u16(P::EcmRepPeriod as u16)?,
                max_streams: p.u16(P::MaxStreams as u16)?,
                min_cp_duration: p.u16(P::MinCpDuration as u16)?,
                lead_cw: p.u8(P::LeadCw as u16)?,
                cw_per_msg: p.u8(P::CwPerMsg as u16)?,
                max_comp_time: p.u16(P::MaxCompTime as u16)?,
            }),
            M::EcmgChannelError => {
                let (status, info) = errs();
                EcmgMessage::ChannelError {
                    channel_id: ch()?,
                    status,
                    info,
                }
            }
            M::EcmgStreamSetup => EcmgMessage::StreamSetup {
                channel_id: ch()?,
                stream_id: st()?,
                ecm_id: p.u16(P::EcmId as u16)?,
                nominal_cp_duration: p.u16(P::NominalCpDuration as u16)?,
            },
            M::EcmgStreamTest => EcmgMessage::StreamTest {
                channel_id: ch()?,
                stream_id: st()?,
            },
            M::EcmgStreamStatus => EcmgMessage::StreamStatus {
                channel_id: ch()?,
                stream_id: st()?,
                ecm_id: p.u16(P::EcmId as u16)?,
                access_criteria_transfer_mode: p.flag(P::AccessCriteriaTransferMode as u16)?,
            },
            M::EcmgStreamCloseRequest => EcmgMessage::StreamCloseRequest {
                channel_id: ch()?,
                stream_id: st()?,
            },
            M::EcmgStreamCloseResponse => EcmgMessage::StreamCloseResponse {
                channel_id: ch()?,
                stream_id: st()?,
            },
            M::EcmgStreamError => {
                let (status, info) = errs();
                EcmgMessage::StreamError {
                    channel_id: ch()?,
                    stream_id: st()?,
                    status,
                    info,
                }
            }
            M::EcmgCwProvision => {
                let mut cp_cw = Vec::new();
                for b in p.all(P::CpCwCombination as u16) {
                    let cw = Cw::from_slice(&b[2..]).map_err(|_| CodecError::InvalidValue {
                        ptype: P::CpCwCombination as u16,
                        reason: "a CW is 8 or 16 bytes",
                    })?;
                    cp_cw.push(CpCw {
                        cp_number: u16::from_be_bytes([b[0], b[1]]),
                        cw,
                    });
                }
                EcmgMessage::CwProvision(CwProvision {
                    channel_id: ch()?,
                    stream_id: st()?,
                    cp_number: p.u16(P::CpNumber as u16)?,
                    cw_encryption: p.bytes(P::CwEncryption as u16).map(<[u8]>::to_vec),
                    cp_cw,
                    cp_duration: p.opt_u16(P::CpDuration as u16)?,
                    access_criteria: p.bytes(P::AccessCriteria as u16).map(<[u8]>::to_vec),
                })
            }
            M::EcmgEcmResponse => EcmgMessage::EcmResponse {
                channel_id: ch()?,
                stream_id: st()?,
                cp_number: p.u16(P::CpNumber as u16)?,
                datagram: p.need(P::EcmDatagram as u16)?.to_vec(),
            },
            _ => return Err(CodecError::UnknownMessageType(t)),
        };
        Ok((raw.header.version, msg))
    }

    /// Append the message to `out` in protocol `version`.
    pub fn encode(&self, version: u8, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let mut e = Encoder::new(out, version, self.message_type().value());
        let ch = P::EcmChannelId as u16;
        let st = P::EcmStreamId as u16;
        e.u16(ch, self.channel_id());
        match self {
            EcmgMessage::ChannelSetup { super_cas_id, .. } => {
                e.u32(P::SuperCasId as u16, *super_cas_id);
            }
            EcmgMessage::ChannelTest { .. } | EcmgMessage::ChannelClose { .. } => {}
            EcmgMessage::ChannelStatus(s) => {
                e.u8(P::SectionTspktFlag as u16, u8::from(s.section_tspkt_flag));
                if let Some(v) = s.ac_delay_start {
                    e.i16(P::AcDelayStart as u16, v);
                }
                if let Some(v) = s.ac_delay_stop {
                    e.i16(P::AcDelayStop as u16, v);
                }
                e.i16(P::DelayStart as u16, s.delay_start)
                    .i16(P::DelayStop as u16, s.delay_stop);
                if let Some(v) = s.transition_delay_start {
                    e.i16(P::TransitionDelayStart as u16, v);
                }
                if let Some(v) = s.transition_delay_stop {
                    e.i16(P::TransitionDelayStop as u16, v);
                }
                e.u16(P::EcmRepPeriod as u16, s.ecm_rep_period)
                    .u16(P::MaxStreams as u16, s.max_streams)
                    .u16(P::MinCpDuration as u16, s.min_cp_duration)
                    .u8(P::LeadCw as u16, s.lead_cw)
                    .u8(P::CwPerMsg as u16, s.cw_per_msg)
                    .u16(P::MaxCompTime as u16, s.max_comp_time);
            }
            EcmgMessage::ChannelError { status, info, .. } => {
                put_errors(&mut e, status, info);
            }
            EcmgMessage::StreamSetup {
                stream_id,
                ecm_id,
                nominal_cp_duration,
                ..
            } => {
                e.u16(st, *stream_id)
                    .u16(P::EcmId as u16, *ecm_id)
                    .u16(P::NominalCpDuration as u16, *nominal_cp_duration);
            }
            EcmgMessage::StreamTest { stream_id, .. }
            | EcmgMessage::StreamCloseRequest { stream_id, .. }
            | EcmgMessage::StreamCloseResponse { stream_id, .. } => {
                e.u16(st, *stream_id);
            }
            EcmgMessage::StreamStatus {
                stream_id,
                ecm_id,
                access_criteria_transfer_mode,
                ..
            } => {
                e.u16(st, *stream_id).u16(P::EcmId as u16, *ecm_id).u8(
                    P::AccessCriteriaTransferMode as u16,
                    u8::from(*access_criteria_transfer_mode),
                );
            }
            EcmgMessage::StreamError {
                stream_id,
                status,
                info,
                ..
            } => {
                e.u16(st, *stream_id);
                put_errors(&mut e, status, info);
            }
            EcmgMessage::CwProvision(c) => {
                e.u16(st, c.stream_id).u16(P::CpNumber as u16, c.cp_number);
                if let Some(enc) = &c.cw_encryption {
                    e.bytes(P::CwEncryption as u16, enc);
                }
                let mut buf = [0u8; 18];
                for x in &c.cp_cw {
                    let cw = x.cw.as_bytes();
                    buf[..2].copy_from_slice(&x.cp_number.to_be_bytes());
                    buf[2..2 + cw.len()].copy_from_slice(cw);
                    e.bytes(P::CpCwCombination as u16, &buf[..2 + cw.len()]);
                }
                buf.fill(0);
                if let Some(d) = c.cp_duration {
                    e.u16(P::CpDuration as u16, d);
                }
                if let Some(ac) = &c.access_criteria {
                    e.bytes(P::AccessCriteria as u16, ac);
                }
            }
            EcmgMessage::EcmResponse {
                stream_id,
                cp_number,
                datagram,
                ..
            } => {
                e.u16(st, *stream_id)
                    .u16(P::CpNumber as u16, *cp_number)
                    .bytes(P::EcmDatagram as u16, datagram);
            }
        }
        e.finish()
    }
}

fn put_errors(e: &mut Encoder<'_>, status: &[u16], info: &[Vec<u8>]) {
    e.errors(
        P::ErrorStatus as u16,
        P::ErrorInformation as u16,
        status,
        info,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ChannelStatus {
        ChannelStatus {
            channel_id: 1,
            section_tspkt_flag: false,
            ac_delay_start: None,
            ac_delay_stop: Some(-5),
            delay_start: -200,
            delay_stop: 0,
            transition_delay_start: None,
            transition_delay_stop: None,
            ecm_rep_period: 100,
            max_streams: 100,
            min_cp_duration: 10,
            lead_cw: 1,
            cw_per_msg: 2,
            max_comp_time: 100,
        }
    }

    pub(crate) fn samples() -> Vec<EcmgMessage> {
        let cw = |b: u8| Cw::from_slice(&[b; 8]).unwrap();
        vec![
            EcmgMessage::ChannelSetup {
                channel_id: 1,
                super_cas_id: 0x0B00_0001,
            },
            EcmgMessage::ChannelTest { channel_id: 1 },
            EcmgMessage::ChannelStatus(status()),
            EcmgMessage::ChannelClose { channel_id: 1 },
            EcmgMessage::ChannelError {
                channel_id: 1,
                status: vec![6, 0x7000],
                info: vec![vec![0, 0x0E]],
            },
            EcmgMessage::StreamSetup {
                channel_id: 1,
                stream_id: 2,
                ecm_id: 3,
                nominal_cp_duration: 100,
            },
            EcmgMessage::StreamTest {
                channel_id: 1,
                stream_id: 2,
            },
            EcmgMessage::StreamStatus {
                channel_id: 1,
                stream_id: 2,
                ecm_id: 3,
                access_criteria_transfer_mode: true,
            },
            EcmgMessage::StreamCloseRequest {
                channel_id: 1,
                stream_id: 2,
            },
            EcmgMessage::StreamCloseResponse {
                channel_id: 1,
                stream_id: 2,
            },
            EcmgMessage::StreamError {
                channel_id: 1,
                stream_id: 2,
                status: vec![7],
                info: vec![],
            },
            EcmgMessage::CwProvision(CwProvision {
                channel_id: 1,
                stream_id: 2,
                cp_number: 9,
                cw_encryption: None,
                cp_cw: vec![
                    CpCw {
                        cp_number: 9,
                        cw: cw(1),
                    },
                    CpCw {
                        cp_number: 10,
                        cw: cw(2),
                    },
                ],
                cp_duration: Some(100),
                access_criteria: Some(vec![0, 0, 0, 1]),
            }),
            EcmgMessage::EcmResponse {
                channel_id: 1,
                stream_id: 2,
                cp_number: 9,
                datagram: vec![0x80, 0x70, 1, 0xAA],
            },
        ]
    }

    #[test]
    fn round_trip_every_message_both_versions() {
        for version in [2, 3] {
            for m in samples() {
                let mut buf = Vec::new();
                m.encode(version, &mut buf).unwrap();
                let (v, back) = EcmgMessage::decode(&buf).unwrap();
                assert_eq!(v, version);
                assert_eq!(back, m);
            }
        }
    }

    #[test]
    fn checks_parameters() {
        let mut buf = Vec::new();
        EcmgMessage::ChannelTest { channel_id: 1 }
            .encode(2, &mut buf)
            .unwrap();
        // wrong length of ECM_channel_id
        let mut bad = buf.clone();
        bad[8] = 3;
        bad[4] += 1;
        bad.push(0);
        assert_eq!(
            EcmgMessage::decode(&bad).unwrap_err().ecmg_status(),
            crate::simulcrypt::types::EcmgErrorStatus::InconsistentLength
        );
        // EMMG message type on the ECMG interface
        let mut other = buf.clone();
        other[2] = 0x12;
        assert_eq!(
            EcmgMessage::decode(&other),
            Err(CodecError::UnknownMessageType(0x0012))
        );
        // missing mandatory parameter
        let empty = [2u8, 0, 2, 0, 0];
        assert_eq!(
            EcmgMessage::decode(&empty),
            Err(CodecError::MissingParameter(0x000E))
        );
        // a CW of 5 bytes
        let mut e = Vec::new();
        let mut enc = Encoder::new(&mut e, 2, 0x0201);
        enc.u16(0x0E, 1)
            .u16(0x0F, 1)
            .u16(0x12, 0)
            .bytes(0x14, &[0, 0, 1, 2, 3, 4, 5]);
        enc.finish().unwrap();
        assert!(matches!(
            EcmgMessage::decode(&e),
            Err(CodecError::InvalidValue { ptype: 0x14, .. })
        ));
    }
}
