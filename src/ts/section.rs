//! Sections (ISO/IEC 13818-1 §2.4.4) and their reassembly from packets of one PID.

use super::error::TsError;
use super::packet::{Packet, PacketRef};
use super::types::TransportScramblingControl;

/// Largest PSI section (PAT, PMT, CAT): section_length <= 1021.
pub const MAX_PSI_SECTION: usize = 1024;
/// Largest private section (ECM, EMM, SI): section_length <= 4093.
pub const MAX_PRIVATE_SECTION: usize = 4096;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_MPEG_2);

/// CRC_32 as sections use it (ISO/IEC 13818-1 Annex A, CRC-32/MPEG-2).
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    CRC.checksum(data)
}

/// Total section size from its first three bytes (3 + section_length), if present.
pub fn section_total_len(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [_, b1, b2, ..] => Some(3 + ((usize::from(*b1 & 0x0F) << 8) | usize::from(*b2))),
        _ => None,
    }
}

/// Check that `bytes` are whole sections back to back, each with a table_id in
/// `table_ids` (0xFF, stuffing, is never one); returns how many there are.
pub fn check_sections(
    bytes: &[u8],
    table_ids: std::ops::RangeInclusive<u8>,
) -> Result<usize, TsError> {
    let mut n = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest[0] == 0xFF || !table_ids.contains(&rest[0]) {
            return Err(TsError::WrongTableId {
                expected: *table_ids.start(),
                got: rest[0],
            });
        }
        let total = section_total_len(rest).ok_or(TsError::SectionTooShort(rest.len()))?;
        rest = rest.get(total..).ok_or(TsError::SectionTruncated {
            need: total,
            have: rest.len(),
        })?;
        n += 1;
    }
    Ok(n)
}

/// The whole sections of `bytes` (sections back to back), in order; it stops at the first
/// one that is incomplete.
pub fn split_sections(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let total = section_total_len(rest)?;
        let one = rest.get(..total)?;
        rest = &rest[total..];
        Some(one)
    })
}

/// The long-form header fields (section_syntax_indicator = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    /// table_id.
    pub table_id: u8,
    /// table_id_extension (transport_stream_id in a PAT, program_number in a PMT).
    pub table_id_extension: u16,
    /// version_number, 0..=31.
    pub version: u8,
    /// current_next_indicator.
    pub current_next: bool,
    /// section_number.
    pub section_number: u8,
    /// last_section_number.
    pub last_section_number: u8,
}

/// A section checked for length and (when section_syntax_indicator is 1) CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section<'a> {
    bytes: &'a [u8],
}

impl<'a> Section<'a> {
    /// Check the section at the start of `bytes` (trailing bytes ignored) against `max` total bytes.
    pub fn parse(bytes: &'a [u8], max: usize) -> Result<Self, TsError> {
        let total = section_total_len(bytes).ok_or(TsError::SectionTooShort(bytes.len()))?;
        if total > max {
            return Err(TsError::SectionTooLong { len: total, max });
        }
        let bytes = bytes.get(..total).ok_or(TsError::SectionTruncated {
            need: total,
            have: bytes.len(),
        })?;
        if bytes[1] & 0x80 != 0 {
            if total < 12 {
                return Err(TsError::SectionTooShort(total));
            }
            // CRC-32/MPEG-2 over data followed by its CRC is zero
            if crc32_mpeg2(bytes) != 0 {
                return Err(TsError::CrcMismatch);
            }
        }
        Ok(Section { bytes })
    }

    /// The whole section, header to CRC.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// table_id.
    pub fn table_id(&self) -> u8 {
        self.bytes[0]
    }

    /// section_syntax_indicator.
    pub fn syntax_indicator(&self) -> bool {
        self.bytes[1] & 0x80 != 0
    }

    /// The long header, if section_syntax_indicator is 1.
    pub fn long_header(&self) -> Option<LongHeader> {
        if !self.syntax_indicator() {
            return None;
        }
        let b = self.bytes;
        Some(LongHeader {
            table_id: b[0],
            table_id_extension: u16::from_be_bytes([b[3], b[4]]),
            version: (b[5] >> 1) & 0x1F,
            current_next: b[5] & 1 != 0,
            section_number: b[6],
            last_section_number: b[7],
        })
    }

    /// The CRC_32 field of a long section (cheap change detection for a repeated table).
    pub fn crc32(&self) -> Option<u32> {
        let b = self.bytes;
        match b.get(b.len().checked_sub(4)?..) {
            Some([c0, c1, c2, c3]) if self.syntax_indicator() => {
                Some(u32::from_be_bytes([*c0, *c1, *c2, *c3]))
            }
            _ => None,
        }
    }

    /// Bytes after the header: after byte 8 and before the CRC (long), after byte 3 (short).
    pub fn payload(&self) -> &'a [u8] {
        if self.syntax_indicator() {
            &self.bytes[8..self.bytes.len() - 4]
        } else {
            &self.bytes[3..]
        }
    }
}

enum CcCheck {
    Next,
    Repeat,
    Jump(TsError),
}

/// Counters kept by a [`SectionAssembler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Packets pushed.
    pub packets: u64,
    /// Sections delivered with a good CRC.
    pub sections: u64,
    /// Sections rejected for a bad CRC.
    pub crc_errors: u64,
    /// Continuity jumps (a partial section was dropped if one was in progress).
    pub cc_errors: u64,
    /// Any other rejected packet or section (sync, TEI, AF, pointer, length, scrambled).
    pub other_errors: u64,
}

/// Reassembles sections from the packets of one PID into one reused buffer (keep one per PID).
///
/// Sections may span packets; several may share one packet; 0xFF after a section ends the packet.
/// A continuity jump, a damaged packet or a bad pointer drops the partial section.
#[derive(Debug)]
pub struct SectionAssembler {
    buf: Vec<u8>,
    max: usize,
    /// Total length of the section being assembled, once its 3 header bytes are in.
    need: Option<usize>,
    in_section: bool,
    last_cc: Option<u8>,
    stats: AssemblerStats,
}

impl SectionAssembler {
    /// An assembler for sections of at most `max` total bytes (allocated once here).
    pub fn new(max: usize) -> Self {
        let max = max.max(3);
        SectionAssembler {
            buf: Vec::with_capacity(max),
            max,
            need: None,
            in_section: false,
            last_cc: None,
            stats: AssemblerStats::default(),
        }
    }

    /// An assembler for PSI (PAT, PMT, CAT): 1024-byte sections.
    pub fn psi() -> Self {
        Self::new(MAX_PSI_SECTION)
    }

    /// An assembler for private sections (ECM, EMM, SI): 4096-byte sections.
    pub fn private() -> Self {
        Self::new(MAX_PRIVATE_SECTION)
    }

    /// Capacity of the reused buffer (tests check it never grows).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The counters so far.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Forget any partial section and the continuity state (e.g. after an input switch).
    pub fn reset(&mut self) {
        self.drop_partial();
        self.last_cc = None;
    }

    fn drop_partial(&mut self) {
        self.buf.clear();
        self.need = None;
        self.in_section = false;
    }

    /// Feed one packet; `on_section` gets each complete section or the error that lost one.
    ///
    /// Errors about the packet itself (sync, TEI, AF length, pointer, scrambled, continuity)
    /// are passed to `on_section` too, so the caller can count or log them once per PID.
    pub fn push<F>(&mut self, packet: &Packet, mut on_section: F)
    where
        F: FnMut(Result<Section<'_>, TsError>),
    {
        self.stats.packets += 1;
        let pkt = PacketRef::new(packet);
        let payload = match self.check_packet(&pkt) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                self.drop_partial();
                self.count(&e);
                on_section(Err(e));
                return;
            }
        };
        match self.check_cc(&pkt) {
            CcCheck::Next => {}
            CcCheck::Repeat => return,
            CcCheck::Jump(e) => {
                self.drop_partial();
                self.count(&e);
                on_section(Err(e));
            }
        }
        if pkt.tsc() != TransportScramblingControl::Clear {
            self.drop_partial();
            let e = TsError::Scrambled;
            self.count(&e);
            on_section(Err(e));
            return;
        }
        if pkt.pusi() {
            let Some((&pointer, rest)) = payload.split_first() else {
                self.drop_partial();
                let e = TsError::PointerTooLong(0);
                self.count(&e);
                on_section(Err(e));
                return;
            };
            let Some((tail, starts)) = rest.split_at_checked(usize::from(pointer)) else {
                self.drop_partial();
                let e = TsError::PointerTooLong(pointer);
                self.count(&e);
                on_section(Err(e));
                return;
            };
            if self.in_section {
                self.feed(tail, false, &mut on_section);
                if self.in_section {
                    // the previous section did not end where the pointer says the next begins
                    let e = TsError::SectionTruncated {
                        need: self.need.unwrap_or(3),
                        have: self.buf.len(),
                    };
                    self.drop_partial();
                    self.count(&e);
                    on_section(Err(e));
                }
            }
            self.feed(starts, true, &mut on_section);
        } else if self.in_section {
            self.feed(payload, false, &mut on_section);
        }
    }

    /// Sync, TEI, AF length; the payload if adaptation_field_control announces one.
    fn check_packet<'p>(&self, pkt: &PacketRef<'p>) -> Result<Option<&'p [u8]>, TsError> {
        if !pkt.sync_ok() {
            return Err(TsError::BadSync(pkt.bytes()[0]));
        }
        if pkt.tei() {
            return Err(TsError::TransportError);
        }
        if !pkt.has_payload() {
            return Ok(None);
        }
        pkt.payload().map(Some)
    }

    /// Continuity of a payload-carrying packet (§2.4.3.3); updates the last counter.
    fn check_cc(&mut self, pkt: &PacketRef<'_>) -> CcCheck {
        let cc = pkt.cc().value();
        let last = self.last_cc.replace(cc);
        match last {
            Some(last) if !pkt.discontinuity() => {
                let expected = (last + 1) & 0x0F;
                if cc == expected {
                    CcCheck::Next
                } else if cc == last {
                    CcCheck::Repeat
                } else {
                    CcCheck::Jump(TsError::Discontinuity { expected, got: cc })
                }
            }
            _ => CcCheck::Next,
        }
    }

    fn count(&mut self, e: &TsError) {
        match e {
            TsError::CrcMismatch => self.stats.crc_errors += 1,
            TsError::Discontinuity { .. } => self.stats.cc_errors += 1,
            _ => self.stats.other_errors += 1,
        }
    }

    /// Append `data` to the partial section and, if `may_start`, start the sections that follow.
    fn feed<F>(&mut self, mut data: &[u8], may_start: bool, on_section: &mut F)
    where
        F: FnMut(Result<Section<'_>, TsError>),
    {
        loop {
            if !self.in_section {
                match data.first() {
                    Some(&b) if may_start && b != 0xFF => self.in_section = true,
                    _ => return, // stuffing, the end, or bytes with no section start
                }
            }
            // fill the 3-byte header, then the rest of the section
            let want = self.need.unwrap_or(3);
            let take = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < want {
                return; // wait for the next packet
            }
            if self.need.is_none() {
                let total = section_total_len(&self.buf).unwrap_or(3);
                if total > self.max {
                    self.drop_partial();
                    let e = TsError::SectionTooLong {
                        len: total,
                        max: self.max,
                    };
                    self.count(&e);
                    on_section(Err(e));
                    return; // the rest of this packet cannot be framed
                }
                self.need = Some(total);
                continue;
            }
            match Section::parse(&self.buf, self.max) {
                Ok(s) => {
                    self.stats.sections += 1;
                    on_section(Ok(s));
                }
                Err(e) => {
                    self.count(&e);
                    on_section(Err(e));
                }
            }
            self.drop_partial();
        }
    }
}
