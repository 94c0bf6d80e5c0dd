//! Views over one 188-byte transport packet (ISO/IEC 13818-1 §2.4.3.2) and packet builders.

use super::error::TsError;
use super::types::{ContinuityCounter, Pid, TransportScramblingControl};

/// Bytes in a transport packet.
pub const PACKET_SIZE: usize = 188;
/// The sync byte.
pub const SYNC_BYTE: u8 = 0x47;
/// Bytes after the 4-byte header.
pub const MAX_PAYLOAD: usize = PACKET_SIZE - 4;

/// One transport packet.
pub type Packet = [u8; PACKET_SIZE];

/// Read-only view of a packet.
#[derive(Debug, Clone, Copy)]
pub struct PacketRef<'a>(&'a Packet);

/// In-place editor of a packet (TSC, continuity counter, payload).
#[derive(Debug)]
pub struct PacketMut<'a>(&'a mut Packet);

/// Where the payload starts: `Ok(None)` when the packet has no payload.
fn payload_start(p: &Packet) -> Result<Option<usize>, TsError> {
    if p[0] != SYNC_BYTE {
        return Err(TsError::BadSync(p[0]));
    }
    let afc = (p[3] >> 4) & 3;
    let has_af = afc & 2 != 0;
    let has_payload = afc & 1 != 0;
    let mut start = 4;
    if has_af {
        let afl = p[4];
        if afl > 183 {
            return Err(TsError::AdaptationFieldTooLong(afl));
        }
        start += 1 + afl as usize;
    }
    if has_payload && start < PACKET_SIZE {
        Ok(Some(start))
    } else {
        Ok(None)
    }
}

/// Where an ES packet's bytes lie, as a scrambler that must leave none of them clear sees
/// it (the sync byte is checked by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsLayout {
    /// A payload from this offset to the end.
    Payload(usize),
    /// No payload: an adaptation field that fills the packet.
    NoPayload,
    /// An adaptation-only packet whose field ends before the packet does; the bytes from
    /// this offset are no payload (a decoder skips them), and should be stuffing.
    StrayAfter(usize),
    /// The reserved adaptation_field_control 00 (a decoder discards the packet), or an
    /// adaptation field longer than the packet.
    Invalid,
}

/// The layout of `p`'s bytes (ISO/IEC 13818-1 2.4.3.3: adaptation_field_control 00 is
/// reserved; an adaptation field is at most 183 bytes, and exactly 183 without a payload).
pub fn es_layout(p: &Packet) -> EsLayout {
    let afc = (p[3] >> 4) & 3;
    let end = 5 + usize::from(p[4]);
    match afc {
        0b01 => EsLayout::Payload(4),
        0b00 => EsLayout::Invalid,
        _ if end > PACKET_SIZE => EsLayout::Invalid,
        _ if end == PACKET_SIZE => EsLayout::NoPayload,
        0b11 => EsLayout::Payload(end),
        _ => EsLayout::StrayAfter(end),
    }
}

impl<'a> PacketRef<'a> {
    /// A view of `p` (nothing is checked until a method needs it).
    pub fn new(p: &'a Packet) -> Self {
        PacketRef(p)
    }

    /// The underlying bytes.
    pub fn bytes(&self) -> &'a Packet {
        self.0
    }

    /// True if the first byte is 0x47.
    pub fn sync_ok(&self) -> bool {
        self.0[0] == SYNC_BYTE
    }

    /// transport_error_indicator.
    pub fn tei(&self) -> bool {
        self.0[1] & 0x80 != 0
    }

    /// payload_unit_start_indicator.
    pub fn pusi(&self) -> bool {
        self.0[1] & 0x40 != 0
    }

    /// The PID.
    pub fn pid(&self) -> Pid {
        Pid::new(u16::from_be_bytes([self.0[1], self.0[2]]))
    }

    /// transport_scrambling_control.
    pub fn tsc(&self) -> TransportScramblingControl {
        TransportScramblingControl::from_bits(self.0[3] >> 6)
    }

    /// adaptation_field_control (2 bits: 01 payload, 10 AF, 11 both, 00 reserved).
    pub fn adaptation_field_control(&self) -> u8 {
        (self.0[3] >> 4) & 3
    }

    /// True if adaptation_field_control says an adaptation field is present.
    pub fn has_adaptation_field(&self) -> bool {
        self.adaptation_field_control() & 2 != 0
    }

    /// True if adaptation_field_control says a payload is present.
    pub fn has_payload(&self) -> bool {
        self.adaptation_field_control() & 1 != 0
    }

    /// continuity_counter.
    pub fn cc(&self) -> ContinuityCounter {
        ContinuityCounter::new(self.0[3])
    }

    /// Offset of the payload, `None` if there is none; errors on bad sync or AF length > 183.
    pub fn payload_offset(&self) -> Result<Option<usize>, TsError> {
        payload_start(self.0)
    }

    /// The payload bytes (empty if the packet has none).
    pub fn payload(&self) -> Result<&'a [u8], TsError> {
        Ok(match payload_start(self.0)? {
            Some(s) => &self.0[s..],
            None => &[],
        })
    }

    /// The adaptation field after its length byte (empty if absent); errors like `payload`.
    pub fn adaptation_field(&self) -> Result<&'a [u8], TsError> {
        payload_start(self.0)?;
        if !self.has_adaptation_field() {
            return Ok(&[]);
        }
        let len = self.0[4] as usize;
        Ok(&self.0[5..5 + len])
    }

    /// discontinuity_indicator of the adaptation field (false if absent or invalid).
    pub fn discontinuity(&self) -> bool {
        matches!(self.adaptation_field(), Ok([flags, ..]) if flags & 0x80 != 0)
    }

    /// The PCR in 27 MHz units (base * 300 + extension), if the adaptation field carries one.
    pub fn pcr(&self) -> Option<u64> {
        match self.adaptation_field().ok()? {
            [flags, b0, b1, b2, b3, b4, b5, ..] if flags & 0x10 != 0 => {
                let base = (u64::from(*b0) << 25)
                    | (u64::from(*b1) << 17)
                    | (u64::from(*b2) << 9)
                    | (u64::from(*b3) << 1)
                    | (u64::from(*b4) >> 7);
                let ext = (u64::from(*b4 & 1) << 8) | u64::from(*b5);
                Some(base * 300 + ext)
            }
            _ => None,
        }
    }
}

/// PCRs wrap at 2^33 * 300 ticks of 27 MHz.
pub const PCR_WRAP: u64 = (1 << 33) * 300;

/// The PCR step from `from` to `to`, modulo the wrap.
pub fn pcr_step(from: u64, to: u64) -> u64 {
    (to % PCR_WRAP + PCR_WRAP - from % PCR_WRAP) % PCR_WRAP
}

impl<'a> PacketMut<'a> {
    /// An editor of `p`.
    pub fn new(p: &'a mut Packet) -> Self {
        PacketMut(p)
    }

    /// A read-only view of the same packet.
    pub fn as_ref(&self) -> PacketRef<'_> {
        PacketRef(self.0)
    }

    /// Set transport_scrambling_control.
    pub fn set_tsc(&mut self, tsc: TransportScramblingControl) {
        self.0[3] = (self.0[3] & 0x3F) | (tsc.bits() << 6);
    }

    /// Set continuity_counter.
    pub fn set_cc(&mut self, cc: ContinuityCounter) {
        self.0[3] = (self.0[3] & 0xF0) | cc.value();
    }

    /// Set the PID (keeps TEI, PUSI and priority).
    pub fn set_pid(&mut self, pid: Pid) {
        let [hi, lo] = pid.value().to_be_bytes();
        self.0[1] = (self.0[1] & 0xE0) | hi;
        self.0[2] = lo;
    }

    /// Replace the PCR (27 MHz units, taken modulo the wrap) of a packet whose adaptation
    /// field carries one; false (nothing written) when it carries none.
    pub fn set_pcr(&mut self, pcr: u64) -> bool {
        if self.as_ref().pcr().is_none() {
            return false;
        }
        let pcr = pcr % PCR_WRAP;
        let (base, ext) = (pcr / 300, pcr % 300);
        // bytes 4 (length) and 5 (flags) come first; the PCR field is bytes 6..12
        self.0[6] = (base >> 25) as u8;
        self.0[7] = (base >> 17) as u8;
        self.0[8] = (base >> 9) as u8;
        self.0[9] = (base >> 1) as u8;
        self.0[10] = ((base as u8 & 1) << 7) | 0x7E | (ext >> 8) as u8;
        self.0[11] = ext as u8;
        true
    }

    /// Set the adaptation field's discontinuity_indicator; false when there is no
    /// adaptation field with a flags byte.
    pub fn set_discontinuity(&mut self) -> bool {
        if self
            .as_ref()
            .adaptation_field()
            .is_ok_and(|a| !a.is_empty())
        {
            self.0[5] |= 0x80;
            true
        } else {
            false
        }
    }

    /// The payload for in-place editing (empty if none); errors like `PacketRef::payload`.
    pub fn payload_mut(&mut self) -> Result<&mut [u8], TsError> {
        Ok(match payload_start(self.0)? {
            Some(s) => &mut self.0[s..],
            None => &mut [],
        })
    }
}

/// How a packet whose payload is shorter than 184 bytes is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuffing {
    /// Grow an adaptation field of stuffing bytes before the payload (PES, ISO/IEC 13818-1 §2.4.3.5).
    AdaptationField,
    /// Pad after the payload with 0xFF (sections, §2.4.4).
    Padding,
}

/// Whether `bytes` are one or more whole 188-byte packets, each starting with the sync byte.
pub fn is_whole_packets(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len().is_multiple_of(PACKET_SIZE)
        && bytes.chunks_exact(PACKET_SIZE).all(|p| p[0] == SYNC_BYTE)
}

/// A null packet (PID 0x1FFF, payload only, 0xFF payload).
pub fn null_packet() -> Packet {
    let mut p = [0xFF; PACKET_SIZE];
    p[0] = SYNC_BYTE;
    p[1] = 0x1F;
    p[2] = 0xFF;
    p[3] = 0x10;
    p
}

/// Write a clear packet with `payload` (at most 184 bytes used) into `out`; returns bytes used.
pub fn build_packet(
    out: &mut Packet,
    pid: Pid,
    pusi: bool,
    cc: ContinuityCounter,
    payload: &[u8],
    stuffing: Stuffing,
) -> usize {
    let n = payload.len().min(MAX_PAYLOAD);
    let [hi, lo] = pid.value().to_be_bytes();
    out[0] = SYNC_BYTE;
    out[1] = if pusi { 0x40 } else { 0 } | hi;
    out[2] = lo;
    let gap = MAX_PAYLOAD - n;
    match stuffing {
        Stuffing::AdaptationField if gap > 0 => {
            out[3] = 0x30 | cc.value();
            // gap >= 1: the length byte; gap >= 2: flags byte, then stuffing
            out[4] = (gap - 1) as u8;
            if gap > 1 {
                out[5] = 0;
                out[6..4 + gap].fill(0xFF);
            }
            out[4 + gap..].copy_from_slice(&payload[..n]);
        }
        _ => {
            out[3] = 0x10 | cc.value();
            out[4..4 + n].copy_from_slice(&payload[..n]);
            out[4 + n..].fill(0xFF);
        }
    }
    n
}
