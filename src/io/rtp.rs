//! RTP-wrapped TS (RFC 3550 header, RFC 2250 payload type 33).
//!
//! A datagram is taken as RTP when its version is 2, its payload type is 33
//! (MP2T) or dynamic (96..=127), the header (12 bytes + CSRCs + extension)
//! fits, and the payload starts with the TS sync byte. Raw TS datagrams start
//! with 0x47, whose top two bits are 01, so they can never pass as RTP v2.

use super::batch::TS_SYNC_BYTE;

/// Payload type for MPEG-2 TS (RFC 3551).
pub const RTP_PT_MP2T: u8 = 33;

/// The parts of an RTP header the input needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Offset of the payload in the datagram.
    pub payload_offset: usize,
    /// End of the payload (padding removed).
    pub payload_end: usize,
}

/// Parse the RTP header of `datagram` if it carries TS; `None` means "not RTP-wrapped TS".
pub fn parse_rtp_ts(datagram: &[u8]) -> Option<RtpHeader> {
    if datagram.len() < 12 || datagram[0] >> 6 != 2 {
        return None;
    }
    let padding = datagram[0] & 0x20 != 0;
    let extension = datagram[0] & 0x10 != 0;
    let csrc_count = usize::from(datagram[0] & 0x0f);
    let payload_type = datagram[1] & 0x7f;
    if payload_type != RTP_PT_MP2T && !(96..=127).contains(&payload_type) {
        return None;
    }
    let mut offset = 12 + 4 * csrc_count;
    if extension {
        let ext = datagram.get(offset..offset + 4)?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        offset += 4 + 4 * words;
    }
    let mut end = datagram.len();
    if padding {
        let pad = usize::from(*datagram.last()?);
        end = end.checked_sub(pad)?;
    }
    if offset >= end || datagram[offset] != TS_SYNC_BYTE {
        return None;
    }
    Some(RtpHeader {
        payload_type,
        sequence: u16::from_be_bytes([datagram[2], datagram[3]]),
        timestamp: u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]),
        ssrc: u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]),
        payload_offset: offset,
        payload_end: end,
    })
}

/// Tracks RTP sequence numbers and counts gaps.
#[derive(Debug, Default, Clone)]
pub struct RtpTracker {
    last: Option<(u32, u16)>,
}

impl RtpTracker {
    /// Note one RTP header; returns `true` if its sequence number is not the
    /// one expected (a loss, a reorder or a new sender).
    pub fn observe(&mut self, h: &RtpHeader) -> bool {
        let gap = match self.last {
            Some((ssrc, seq)) => ssrc == h.ssrc && h.sequence != seq.wrapping_add(1),
            None => false,
        };
        self.last = Some((h.ssrc, h.sequence));
        gap
    }
}

/// Build an RTP header (no CSRC, no extension) in front of a payload; for tests and tools.
pub fn write_rtp_header(
    out: &mut [u8; 12],
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
) {
    out[0] = 0x80;
    out[1] = payload_type & 0x7f;
    out[2..4].copy_from_slice(&sequence.to_be_bytes());
    out[4..8].copy_from_slice(&timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dgram(extra: &[u8], first: u8, pt: u8, seq: u16) -> Vec<u8> {
        let mut h = [0u8; 12];
        write_rtp_header(&mut h, pt, seq, 90_000, 7);
        let mut v = h.to_vec();
        v.extend_from_slice(extra);
        v.push(first);
        v.extend_from_slice(&[0u8; 187]);
        v
    }

    #[test]
    fn plain_header() {
        let d = dgram(&[], 0x47, 33, 5);
        let h = parse_rtp_ts(&d).unwrap();
        assert_eq!(
            (h.payload_offset, h.payload_end, h.sequence, h.ssrc),
            (12, 200, 5, 7)
        );
        assert!(parse_rtp_ts(&dgram(&[], 0x00, 33, 5)).is_none());
        assert!(parse_rtp_ts(&dgram(&[], 0x47, 14, 5)).is_none());
        assert!(parse_rtp_ts(&dgram(&[], 0x47, 96, 5)).is_some());
        // Raw TS is never RTP.
        let mut ts = vec![0u8; 188];
        ts[0] = 0x47;
        assert!(parse_rtp_ts(&ts).is_none());
        assert!(parse_rtp_ts(&[0x80, 33]).is_none());
    }

    #[test]
    fn csrc_extension_padding() {
        let mut d = dgram(
            &[1, 2, 3, 4, 5, 6, 7, 8, 0xbe, 0xde, 0, 1, 9, 9, 9, 9],
            0x47,
            33,
            1,
        );
        // Two CSRCs (bytes 12..20), then an extension header (profile 0xbede, one word).
        d[0] |= 0x02 | 0x10;
        let h = parse_rtp_ts(&d).unwrap();
        assert_eq!(h.payload_offset, 12 + 8 + 4 + 4);
        // Padding: append 4 bytes, the last says 4.
        d.extend_from_slice(&[0, 0, 0, 4]);
        d[0] |= 0x20;
        let h = parse_rtp_ts(&d).unwrap();
        assert_eq!(h.payload_end, d.len() - 4);
        // Truncated extension.
        let mut t = dgram(&[], 0x47, 33, 1);
        t[0] |= 0x10;
        t.truncate(14);
        assert!(parse_rtp_ts(&t).is_none());
        // Padding longer than the datagram.
        let mut p = dgram(&[], 0x47, 33, 1);
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 255;
        assert!(parse_rtp_ts(&p).is_none());
    }

    #[test]
    fn gaps() {
        let mut t = RtpTracker::default();
        let seqs = [65534u16, 65535, 0, 1, 3, 4, 10];
        let gaps: Vec<bool> = seqs
            .iter()
            .map(|&s| t.observe(&parse_rtp_ts(&dgram(&[], 0x47, 33, s)).unwrap()))
            .collect();
        assert_eq!(gaps, [false, false, false, false, true, false, true]);
    }
}
