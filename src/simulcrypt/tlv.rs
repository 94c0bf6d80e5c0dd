//! The generic message framing of TS 103 197 (§4.4): a 5-byte header — protocol_version (8),
//! message_type (16), message_length (16) — then parameters as type (16) / length (16) / value.
//!
//! Reading is `frame_len` (is a whole message there? is it too long?) then `parse`, so a
//! reader never allocates for a length it has not bounded. Typed messages check their
//! parameters against a table of (type, length, count) rules: [`check_params`].

use super::types::{EcmgErrorStatus, EmmgErrorStatus};

/// Bytes of the message header.
pub const HEADER_LEN: usize = 5;
/// The longest message_length accepted (an ECM or EMM datagram of 4096 bytes plus the other
/// parameters fits easily). Longer messages are refused before anything is allocated.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;
/// Protocol versions spoken (TS 103 197 v1.3.1 = 2, v1.4.1+ = 3; same message syntax).
pub const SUPPORTED_VERSIONS: [u8; 2] = [2, 3];

/// Why bytes are not a valid message. Each maps to an error_status of either interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// protocol_version other than 2 or 3.
    #[error("unsupported protocol_version {0} (castmux speaks 2 and 3)")]
    UnsupportedVersion(u8),
    /// message_length above [`MAX_MESSAGE_LEN`].
    #[error("message_length {0} is over the {MAX_MESSAGE_LEN}-byte limit")]
    TooLong(usize),
    /// message_type unknown on this interface.
    #[error("unknown message_type {0:#06x}")]
    UnknownMessageType(u16),
    /// parameter_type unknown for this message.
    #[error("unknown parameter_type {0:#06x}")]
    UnknownParameter(u16),
    /// A parameter whose length is wrong for its type, or runs past the message.
    #[error("inconsistent length {len} for parameter {ptype:#06x}")]
    InconsistentLength {
        /// The parameter_type.
        ptype: u16,
        /// The length found.
        len: usize,
    },
    /// A mandatory parameter is missing.
    #[error("missing mandatory parameter {0:#06x}")]
    MissingParameter(u16),
    /// A parameter given more often than the message allows.
    #[error("parameter {0:#06x} repeated")]
    Repeated(u16),
    /// A parameter whose value is not allowed.
    #[error("invalid value for parameter {ptype:#06x}: {reason}")]
    InvalidValue {
        /// The parameter_type.
        ptype: u16,
        /// What is wrong.
        reason: &'static str,
    },
}

impl CodecError {
    /// The ECMG<->SCS error_status for this error.
    pub fn ecmg_status(&self) -> EcmgErrorStatus {
        match self {
            CodecError::UnsupportedVersion(_) => EcmgErrorStatus::UnsupportedProtocolVersion,
            CodecError::TooLong(_) => EcmgErrorStatus::MessageTooLong,
            CodecError::UnknownMessageType(_) => EcmgErrorStatus::UnknownMessageType,
            CodecError::UnknownParameter(_) => EcmgErrorStatus::UnknownParameterType,
            CodecError::InconsistentLength { .. } => EcmgErrorStatus::InconsistentLength,
            CodecError::MissingParameter(_) => EcmgErrorStatus::MissingParameter,
            CodecError::Repeated(_) => EcmgErrorStatus::InvalidMessage,
            CodecError::InvalidValue { .. } => EcmgErrorStatus::InvalidValue,
        }
    }

    /// The EMMG<->MUX error_status for this error.
    pub fn emmg_status(&self) -> EmmgErrorStatus {
        match self {
            CodecError::UnsupportedVersion(_) => EmmgErrorStatus::UnsupportedProtocolVersion,
            CodecError::TooLong(_) => EmmgErrorStatus::MessageTooLong,
            CodecError::UnknownMessageType(_) => EmmgErrorStatus::UnknownMessageType,
            CodecError::UnknownParameter(_) => EmmgErrorStatus::UnknownParameterType,
            CodecError::InconsistentLength { .. } => EmmgErrorStatus::InconsistentLength,
            CodecError::MissingParameter(_) => EmmgErrorStatus::MissingParameter,
            CodecError::Repeated(_) => EmmgErrorStatus::InvalidMessage,
            CodecError::InvalidValue { .. } => EmmgErrorStatus::InvalidValue,
        }
    }

    /// The parameter_type at fault, sent back as error_information.
    pub fn parameter(&self) -> Option<u16> {
        match self {
            CodecError::UnknownParameter(p)
            | CodecError::MissingParameter(p)
            | CodecError::Repeated(p)
            | CodecError::InconsistentLength { ptype: p, .. }
            | CodecError::InvalidValue { ptype: p, .. } => Some(*p),
            _ => None,
        }
    }

    /// Whether the stream of bytes can go on after this message (its length was sane).
    pub fn recoverable(&self) -> bool {
        !matches!(self, CodecError::TooLong(_))
    }
}

/// The header of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// protocol_version.
    pub version: u8,
    /// message_type.
    pub message_type: u16,
    /// message_length (bytes after the header).
    pub length: usize,
}

/// Look at the start of `buf`: `Ok(None)` while the header or body is incomplete,
/// `Ok(Some(total))` when a whole message of `total` bytes is there, an error when
/// message_length is over [`MAX_MESSAGE_LEN`] (the stream cannot be trusted after that).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    let Some(h) = peek_header(buf) else {
        return Ok(None);
    };
    if h.length > MAX_MESSAGE_LEN {
        return Err(CodecError::TooLong(h.length));
    }
    let total = HEADER_LEN + h.length;
    Ok((buf.len() >= total).then_some(total))
}

/// The header at the start of `buf`, if 5 bytes are there.
pub fn peek_header(buf: &[u8]) -> Option<Header> {
    let h = buf.get(..HEADER_LEN)?;
    Some(Header {
        version: h[0],
        message_type: u16::from_be_bytes([h[1], h[2]]),
        length: usize::from(u16::from_be_bytes([h[3], h[4]])),
    })
}

/// One parameter, borrowing its value from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// parameter_type.
    pub ptype: u16,
    /// parameter_value.
    pub value: &'a [u8],
}

/// A whole message split into header and parameters (not yet typed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage<'a> {
    /// The header.
    pub header: Header,
    /// The parameters in order.
    pub params: Vec<Param<'a>>,
}

impl<'a> RawMessage<'a> {
    /// Split one whole message (exactly `frame_len` bytes). Checks the version, the length and
    /// that the parameters tile the body exactly.
    pub fn parse(frame: &'a [u8]) -> Result<RawMessage<'a>, CodecError> {
        let header = peek_header(frame).ok_or(CodecError::InconsistentLength {
            ptype: 0,
            len: frame.len(),
        })?;
        if header.length > MAX_MESSAGE_LEN {
            return Err(CodecError::TooLong(header.length));
        }
        if !SUPPORTED_VERSIONS.contains(&header.version) {
            return Err(CodecError::UnsupportedVersion(header.version));
        }
        let body = frame.get(HEADER_LEN..HEADER_LEN + header.length).ok_or(
            CodecError::InconsistentLength {
                ptype: 0,
                len: frame.len(),
            },
        )?;
        // at most one parameter per 4 bytes: bounded by MAX_MESSAGE_LEN
        let mut params = Vec::with_capacity(body.len() / 4);
        let mut rest = body;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(CodecError::InconsistentLength {
                    ptype: 0,
                    len: rest.len(),
                });
            }
            let ptype = u16::from_be_bytes([rest[0], rest[1]]);
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let value = rest
                .get(4..4 + len)
                .ok_or(CodecError::InconsistentLength { ptype, len })?;
            params.push(Param { ptype, value });
            rest = &rest[4 + len..];
        }
        Ok(RawMessage { header, params })
    }

    /// The first value of `ptype` that is exactly two bytes, as u16 (used to find the
    /// channel/stream an erroneous message was about).
    pub fn find_u16(&self, ptype: u16) -> Option<u16> {
        self.params
            .iter()
            .find(|p| p.ptype == ptype && p.value.len() == 2)
            .map(|p| u16::from_be_bytes([p.value[0], p.value[1]]))
    }
}

/// How long a parameter's value may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    /// Exactly this many bytes.
    Fixed(usize),
    /// Between these bounds, inclusive.
    Range(usize, usize),
}

/// One row of a message's parameter table.
#[derive(Debug, Clone, Copy)]
pub struct ParamRule {
    /// parameter_type.
    pub ptype: u16,
    /// Allowed length.
    pub len: Len,
    /// Least number of occurrences (1 = mandatory).
    pub min: usize,
    /// Most occurrences.
    pub max: usize,
}

/// Check `params` against `rules`: every type known, lengths right, counts within bounds.
pub fn check_params(params: &[Param<'_>], rules: &[ParamRule]) -> Result<(), CodecError> {
    // counts per rule; the tables are short (at most 16 rows)
    let mut counts = [0usize; 16];
    debug_assert!(rules.len() <= counts.len());
    for p in params {
        let (i, rule) = rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.ptype == p.ptype)
            .ok_or(CodecError::UnknownParameter(p.ptype))?;
        let ok = match rule.len {
            Len::Fixed(n) => p.value.len() == n,
            Len::Range(lo, hi) => (lo..=hi).contains(&p.value.len()),
        };
        if !ok {
            return Err(CodecError::InconsistentLength {
                ptype: p.ptype,
                len: p.value.len(),
            });
        }
        counts[i] += 1;
        if counts[i] > rule.max {
            return Err(CodecError::Repeated(p.ptype));
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        if counts[i] < rule.min {
            return Err(CodecError::MissingParameter(rule.ptype));
        }
    }
    Ok(())
}

/// Typed access to checked parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params<'m, 'a>(pub &'m [Param<'a>]);

impl<'a> Params<'_, 'a> {
    /// The first value of `ptype`.
    pub fn bytes(&self, ptype: u16) -> Option<&'a [u8]> {
        self.0.iter().find(|p| p.ptype == ptype).map(|p| p.value)
    }

    /// Every value of `ptype`, in order.
    pub fn all(&self, ptype: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.0
            .iter()
            .filter(move |p| p.ptype == ptype)
            .map(|p| p.value)
    }

    /// A mandatory value.
    pub fn need(&self, ptype: u16) -> Result<&'a [u8], CodecError> {
        self.bytes(ptype).ok_or(CodecError::MissingParameter(ptype))
    }

    /// A mandatory u8.
    pub fn u8(&self, ptype: u16) -> Result<u8, CodecError> {
        be(self.need(ptype)?, ptype).map(|v| v as u8)
    }

    /// A mandatory u16.
    pub fn u16(&self, ptype: u16) -> Result<u16, CodecError> {
        be(self.need(ptype)?, ptype).map(|v| v as u16)
    }

    /// A mandatory i16.
    pub fn i16(&self, ptype: u16) -> Result<i16, CodecError> {
        self.u16(ptype).map(|v| v as i16)
    }

    /// A mandatory u32.
    pub fn u32(&self, ptype: u16) -> Result<u32, CodecError> {
        be(self.need(ptype)?, ptype)
    }

    /// An optional u16.
    pub fn opt_u16(&self, ptype: u16) -> Result<Option<u16>, CodecError> {
        self.bytes(ptype)
            .map(|b| be(b, ptype).map(|v| v as u16))
            .transpose()
    }

    /// An optional i16.
    pub fn opt_i16(&self, ptype: u16) -> Result<Option<i16>, CodecError> {
        Ok(self.opt_u16(ptype)?.map(|v| v as i16))
    }

    /// A mandatory boolean flag (0 or 1).
    pub fn flag(&self, ptype: u16) -> Result<bool, CodecError> {
        match self.u8(ptype)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::InvalidValue {
                ptype,
                reason: "a flag is 0 or 1",
            }),
        }
    }

    /// Every error_status (two bytes each, checked by the rules) and error_information value
    /// of a channel_error or stream_error.
    pub fn errors(&self, status_ptype: u16, info_ptype: u16) -> (Vec<u16>, Vec<Vec<u8>>) {
        (
            self.all(status_ptype)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect(),
            self.all(info_ptype).map(<[u8]>::to_vec).collect(),
        )
    }
}

/// The error_information of an error reply: the offending parameter_type, when there is one.
pub fn error_information(param: Option<u16>) -> Vec<Vec<u8>> {
    param
        .map(|p| p.to_be_bytes().to_vec())
        .into_iter()
        .collect()
}

/// Big-endian unsigned value of 1, 2 or 4 bytes (lengths were checked by the rules).
fn be(b: &[u8], ptype: u16) -> Result<u32, CodecError> {
    match b.len() {
        1 | 2 | 4 => Ok(b.iter().fold(0u32, |acc, &x| acc << 8 | u32::from(x))),
        len => Err(CodecError::InconsistentLength { ptype, len }),
    }
}

/// Writes one message: header, then parameters; the length is filled in by [`Encoder::finish`].
#[derive(Debug)]
pub struct Encoder<'b> {
    out: &'b mut Vec<u8>,
    start: usize,
}

impl<'b> Encoder<'b> {
    /// Start a message of `message_type` appended to `out`.
    pub fn new(out: &'b mut Vec<u8>, version: u8, message_type: u16) -> Self {
        let start = out.len();
        out.push(version);
        out.extend_from_slice(&message_type.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        Encoder { out, start }
    }

    /// A parameter with raw bytes. Values over 65535 bytes are cut (callers bound them).
    pub fn bytes(&mut self, ptype: u16, value: &[u8]) -> &mut Self {
        let v = &value[..value.len().min(usize::from(u16::MAX))];
        self.out.extend_from_slice(&ptype.to_be_bytes());
        self.out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.out.extend_from_slice(v);
        self
    }

    /// A one-byte parameter.
    pub fn u8(&mut self, ptype: u16, v: u8) -> &mut Self {
        self.bytes(ptype, &[v])
    }

    /// A two-byte parameter.
    pub fn u16(&mut self, ptype: u16, v: u16) -> &mut Self {
        self.bytes(ptype, &v.to_be_bytes())
    }

    /// A signed two-byte parameter.
    pub fn i16(&mut self, ptype: u16, v: i16) -> &mut Self {
        self.bytes(ptype, &v.to_be_bytes())
    }

    /// A four-byte parameter.
    pub fn u32(&mut self, ptype: u16, v: u32) -> &mut Self {
        self.bytes(ptype, &v.to_be_bytes())
    }

    /// The error_status and error_information parameters of a channel_error or stream_error.
    pub fn errors(
        &mut self,
        status_ptype: u16,
        info_ptype: u16,
        status: &[u16],
        info: &[Vec<u8>],
    ) -> &mut Self {
        for s in status {
            self.u16(status_ptype, *s);
        }
        for i in info {
            self.bytes(info_ptype, i);
        }
        self
    }

    /// Fill in message_length. Fails if the body is over [`MAX_MESSAGE_LEN`] (the message is
    /// removed from the buffer then).
    pub fn finish(self) -> Result<(), CodecError> {
        let body = self.out.len() - self.start - HEADER_LEN;
        if body > MAX_MESSAGE_LEN {
            self.out.truncate(self.start);
            return Err(CodecError::TooLong(body));
        }
        let len = (body as u16).to_be_bytes();
        self.out[self.start + 3] = len[0];
        self.out[self.start + 4] = len[1];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_parse() {
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf, 3, 0x0002);
        e.u16(0x000E, 7).bytes(0x000D, &[1, 2, 3]);
        e.finish().unwrap();
        assert_eq!(
            buf,
            [3, 0, 2, 0, 13, 0, 0x0E, 0, 2, 0, 7, 0, 0x0D, 0, 3, 1, 2, 3]
        );
        assert_eq!(frame_len(&buf[..4]).unwrap(), None);
        assert_eq!(frame_len(&buf[..17]).unwrap(), None);
        assert_eq!(frame_len(&buf).unwrap(), Some(18));
        let m = RawMessage::parse(&buf).unwrap();
        assert_eq!(m.header.message_type, 2);
        assert_eq!(m.params.len(), 2);
        assert_eq!(m.find_u16(0x000E), Some(7));
        let mut bad = buf.clone();
        bad[0] = 1;
        assert_eq!(
            RawMessage::parse(&bad),
            Err(CodecError::UnsupportedVersion(1))
        );
        let too_long = [2u8, 0, 1, 0xFF, 0xFF];
        assert_eq!(frame_len(&too_long), Err(CodecError::TooLong(65535)));
    }

    #[test]
    fn rules() {
        let rules = [
            ParamRule {
                ptype: 1,
                len: Len::Fixed(2),
                min: 1,
                max: 1,
            },
            ParamRule {
                ptype: 2,
                len: Len::Range(0, 4),
                min: 0,
                max: 2,
            },
        ];
        let p = |ptype, value: &'static [u8]| Param { ptype, value };
        assert!(check_params(&[p(1, &[0, 1])], &rules).is_ok());
        assert_eq!(
            check_params(&[p(2, &[])], &rules),
            Err(CodecError::MissingParameter(1))
        );
        assert_eq!(
            check_params(&[p(1, &[0])], &rules),
            Err(CodecError::InconsistentLength { ptype: 1, len: 1 })
        );
        assert_eq!(
            check_params(&[p(1, &[0, 1]), p(1, &[0, 1])], &rules),
            Err(CodecError::Repeated(1))
        );
        assert_eq!(
            check_params(&[p(3, &[])], &rules),
            Err(CodecError::UnknownParameter(3))
        );
    }
}
