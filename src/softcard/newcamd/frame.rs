//! newcamd framing (protocol v5.25): a 2-byte clear length, then a 3DES-CBC encrypted
//! block holding a 10-byte header (sequence id, customData: service id, CAID, provider id),
//! the message, random padding and an XOR checksum, then the 8-byte IV in clear.
//!
//! ```text
//! [len:2] | enc( [msg_id:2][sid:2][caid:2][provid:3][0:1] [message] [pad 0..7] [xor:1] ) | [iv:8]
//! ```
//! `len` counts everything after itself. The checksum makes the XOR of all encrypted
//! plaintext bytes zero. Frames are bounded at [`MAX_FRAME_LEN`] bytes on the wire
//! (OSCam's `CWS_NETMSGSIZE`), so a reader never allocates on a peer's say-so.

use super::crypto::FrameKey;
use super::error::NewcamdError;

/// The longest frame on the wire, length prefix included.
pub const MAX_FRAME_LEN: usize = 400;
/// Bytes of the encrypted header before the message.
pub const HEADER_LEN: usize = 10;
/// The longest message (3-byte message header + body) that fits in a frame.
pub const MAX_MESSAGE_LEN: usize = MAX_FRAME_LEN - 2 - HEADER_LEN - 1 - 8 - 7;

/// The shortest legal length prefix: one encrypted block beyond the first, plus the IV.
const MIN_PREFIX: usize = 16 + 8;

/// The encrypted per-frame header. `service_id`, `caid` and `provider_id` are the
/// protocol's customData; a client sets `service_id` on ECM requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameHeader {
    /// Sequence id: the client counts up, the server echoes the request's id.
    pub msg_id: u16,
    /// The service (program number) an ECM is for.
    pub service_id: u16,
    /// CA_system_ID, when a peer sets it (OSCam does on ECM requests).
    pub caid: u16,
    /// 24-bit provider id, when a peer sets it.
    pub provider_id: u32,
}

/// One newcamd message: `[tag][flags:4|len:12][body]`. For ECMs and EMMs the message is
/// the section itself (table id, section length), sent as the demux received it.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Message {
    // Bodies can hold CWs (ECM answers): show the tag and length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Message(tag 0x{:02x}, {} body bytes)",
            self.tag(),
            self.body().len()
        )
    }
}

impl Message {
    /// A message with `tag`, the upper nibble `flags` of byte 2, and `body`.
    pub fn new(tag: u8, flags: u8, body: &[u8]) -> Result<Message, NewcamdError> {
        if body.len() + 3 > MAX_MESSAGE_LEN {
            return Err(NewcamdError::MessageTooLong(body.len() + 3));
        }
        let mut bytes = Vec::with_capacity(3 + body.len());
        bytes.push(tag);
        bytes.push((flags << 4) | ((body.len() >> 8) as u8 & 0x0f));
        bytes.push(body.len() as u8);
        bytes.extend_from_slice(body);
        Ok(Message { bytes })
    }

    /// A message from its encoded bytes (e.g. an ECM section): the 12-bit length
    /// must match the bytes that follow the 3-byte header.
    pub fn from_bytes(bytes: &[u8]) -> Result<Message, NewcamdError> {
        if bytes.len() < 3 {
            return Err(NewcamdError::Frame("a message is at least 3 bytes"));
        }
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(NewcamdError::MessageTooLong(bytes.len()));
        }
        let declared = (usize::from(bytes[1] & 0x0f) << 8) | usize::from(bytes[2]);
        if declared + 3 != bytes.len() {
            return Err(NewcamdError::Frame(
                "the message's 12-bit length does not match its size",
            ));
        }
        Ok(Message {
            bytes: bytes.to_vec(),
        })
    }

    /// The command tag (or table id for ECM/EMM).
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The upper 4 bits of byte 2 (provider nibble on ECM answers, flags on EMM answers).
    pub fn flags(&self) -> u8 {
        self.bytes[1] >> 4
    }

    /// The data after the 3-byte header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[3..]
    }

    /// The whole message, header included (for ECM/EMM: the section).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Encode and encrypt one frame. `iv_pad` supplies the 8 IV bytes and up to 7 padding
/// bytes (random in production; fixed in tests).
pub fn seal(
    header: &FrameHeader,
    msg: &Message,
    key: &FrameKey,
    iv_pad: &[u8; 15],
) -> Result<Vec<u8>, NewcamdError> {
    let plain_len = HEADER_LEN + msg.bytes.len();
    // pad so that header + message + pad + checksum is whole blocks
    let pad = (8 - (plain_len + 1) % 8) % 8;
    let enc_len = plain_len + pad + 1;
    let total = 2 + enc_len + 8;
    if total > MAX_FRAME_LEN {
        return Err(NewcamdError::MessageTooLong(msg.bytes.len()));
    }
    let mut buf = Vec::with_capacity(total);
    let prefix = (total - 2) as u16;
    buf.extend_from_slice(&prefix.to_be_bytes());
    buf.extend_from_slice(&header.msg_id.to_be_bytes());
    buf.extend_from_slice(&header.service_id.to_be_bytes());
    buf.extend_from_slice(&header.caid.to_be_bytes());
    buf.extend_from_slice(&header.provider_id.to_be_bytes()[1..]);
    buf.push(0);
    buf.extend_from_slice(&msg.bytes);
    buf.extend_from_slice(&iv_pad[8..8 + pad]);
    let checksum = buf[2..].iter().fold(0u8, |a, b| a ^ b);
    buf.push(checksum);
    let iv: [u8; 8] = iv_pad[..8].try_into().unwrap_or([0; 8]);
    key.encrypt_cbc(&iv, &mut buf[2..])?;
    buf.extend_from_slice(&iv);
    debug_assert_eq!(buf.len(), total);
    Ok(buf)
}

/// Check a frame's length prefix before reading (and allocating for) its body.
pub fn check_prefix(prefix: [u8; 2]) -> Result<usize, NewcamdError> {
    let len = usize::from(u16::from_be_bytes(prefix));
    if !(MIN_PREFIX..=MAX_FRAME_LEN - 2).contains(&len) || !len.is_multiple_of(8) {
        return Err(NewcamdError::FrameLength(len));
    }
    Ok(len)
}

/// Decrypt and parse a frame body (the `len` bytes after the prefix, checked with
/// [`check_prefix`]). `body` is decrypted in place.
pub fn open(body: &mut [u8], key: &FrameKey) -> Result<(FrameHeader, Message), NewcamdError> {
    let len = body.len();
    if !(MIN_PREFIX..=MAX_FRAME_LEN - 2).contains(&len) || !len.is_multiple_of(8) {
        return Err(NewcamdError::FrameLength(len));
    }
    let (enc, iv) = body.split_at_mut(len - 8);
    let iv: [u8; 8] = (&*iv)
        .try_into()
        .map_err(|_| NewcamdError::Frame("no IV"))?;
    key.decrypt_cbc(&iv, enc)?;
    if enc.iter().fold(0u8, |a, b| a ^ b) != 0 {
        return Err(NewcamdError::Checksum);
    }
    let header = FrameHeader {
        msg_id: u16::from_be_bytes([enc[0], enc[1]]),
        service_id: u16::from_be_bytes([enc[2], enc[3]]),
        caid: u16::from_be_bytes([enc[4], enc[5]]),
        provider_id: u32::from_be_bytes([0, enc[6], enc[7], enc[8]]),
    };
    // message header, then as many body bytes as its 12-bit length says (the rest is padding)
    let m = &enc[HEADER_LEN..enc.len() - 1];
    if m.len() < 3 {
        return Err(NewcamdError::Frame("no message in the frame"));
    }
    let declared = (usize::from(m[1] & 0x0f) << 8) | usize::from(m[2]);
    if declared + 3 > m.len() {
        return Err(NewcamdError::Frame(
            "the message's length runs past the end of the frame",
        ));
    }
    Ok((
        header,
        Message {
            bytes: m[..declared + 3].to_vec(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softcard::newcamd::crypto::DesKey14;

    fn key() -> FrameKey {
        DesKey14::from_hex("0102030405060708091011121314")
            .unwrap()
            .session_key(b"$1$abcdefgh$npSETQsrIm35MQfiUIAdn.")
    }

    #[test]
    fn round_trip_every_message_size() {
        let k = key();
        let h = FrameHeader {
            msg_id: 0x1234,
            service_id: 0x0101,
            caid: 0x4ae1,
            provider_id: 0x00ab_cdef,
        };
        for n in 0..=MAX_MESSAGE_LEN - 3 {
            let body: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let m = Message::new(0x80, 0x7, &body).unwrap();
            let frame = seal(&h, &m, &k, &[0x5a; 15]).unwrap();
            assert!(frame.len() <= MAX_FRAME_LEN);
            let n2 = check_prefix([frame[0], frame[1]]).unwrap();
            assert_eq!(n2 + 2, frame.len());
            let mut b = frame[2..].to_vec();
            let (h2, m2) = open(&mut b, &k).unwrap();
            assert_eq!(h2, h);
            assert_eq!(m2, m);
            assert_eq!(m2.flags(), 7);
        }
        assert!(Message::new(0x80, 0, &[0; MAX_MESSAGE_LEN - 2]).is_err());
    }

    #[test]
    fn rejects_bad_frames() {
        let k = key();
        let m = Message::new(0xe3, 0, &[]).unwrap();
        let frame = seal(&FrameHeader::default(), &m, &k, &[1; 15]).unwrap();
        // any flipped ciphertext bit breaks the checksum (or the message length)
        for i in 2..frame.len() - 8 {
            let mut b = frame[2..].to_vec();
            b[i - 2] ^= 0x01;
            assert!(open(&mut b, &k).is_err(), "byte {i}");
        }
        // another key
        let other = DesKey14::from_hex("1102030405060708091011121314")
            .unwrap()
            .session_key(b"x");
        let mut b = frame[2..].to_vec();
        assert!(open(&mut b, &other).is_err());
        assert!(matches!(
            check_prefix([0xff, 0xff]),
            Err(NewcamdError::FrameLength(65535))
        ));
        assert!(check_prefix([0, 8]).is_err());
        assert!(check_prefix([0, 25]).is_err());
        assert!(check_prefix([0, 24]).is_ok());
        assert!(Message::from_bytes(&[0x80, 0x00, 0x02, 1]).is_err());
        assert!(Message::from_bytes(&[0x80, 0x70, 0x01, 1]).is_ok());
    }
}
